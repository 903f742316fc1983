"""An acknowledged write survives the writer being killed at any moment.

A child process (``crash_writer.py``) writes batches of 200 transfers, linked and unlinked,
each batch in its own transaction, and prints each batch's outcome once it has committed.
It is killed with SIGKILL at a random moment, twenty times over the same database. After
every kill the ledger must verify (in process and through ``clearhouse ledger verify``),
every acknowledged transfer must be stored with its exact amounts, nothing refused or
unacknowledged may have appeared, and a linked batch in flight is all there or not at all.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from clearhouse.kit.db import transact
from clearhouse.ledger import repository
from clearhouse.ledger.verify import verify
from tests.ledger import crash_writer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WRITER = Path(crash_writer.__file__)
KILLS = 20
# Seconds per backend. The run is sized to take about half of it (the writer pauses between
# batches so the ledger stays small enough to verify forty times); the check allows a busy
# machine twice the budget, and catches a run gone pathologically slow.
TIME_BUDGET = 60
CLEARHOUSE = Path(sys.executable).with_name("clearhouse")


class Zygote:
    """One pre-loaded interpreter that forks the writers and the verify runs (see crash_writer)."""

    def __init__(self, database_url: str):
        env = {**os.environ, "CLEARHOUSE_DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, str(WRITER), "zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )

    def ask(self, command: str, timeout: float = 60) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        assert ready, f"zygote did not answer {command!r} within {timeout} s"
        answer = self.process.stdout.readline()
        assert answer, f"zygote exited on {command!r} with {self.process.poll()}"
        return int(answer)

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write("exit\n")
                self.process.stdin.close()
                self.process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


def read_output(path: Path) -> list[dict]:
    """The writer's lines; only the last may be cut short by the kill."""
    lines = path.read_text().splitlines()
    messages = []
    for number, line in enumerate(lines):
        try:
            messages.append(json.loads(line))
        except json.JSONDecodeError:
            assert number == len(lines) - 1, f"line {number} of {path} is not JSON: {line[:200]!r}"
    return messages


def wait_for_first_batch(path: Path, timeout: float = 30) -> None:
    """The kill is timed from the first batch, not from the fork (connecting takes a while)."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size):
        assert time.monotonic() < deadline, f"the writer did not start a batch within {timeout} s"
        time.sleep(0.002)


def stored_transfers(engine: Engine) -> dict[str, list[tuple]]:
    """Every stored entry's legs, read straight from the journal (row legs and posting rows)."""

    def read(session: Session) -> dict[str, list[tuple]]:
        return {
            entry.id: [(leg.account_id, leg.direction, leg.kind, leg.amount) for leg in legs]
            for entry, legs in repository.journal(session)
            if entry is not None
        }

    return transact(engine, read)


class TestAcknowledgedWritesSurviveKill:
    def test_sigkill_at_random_moments_never_loses_or_corrupts(
        self, backend: str, database_url: str, engine: Engine, tmp_path: Path
    ) -> None:
        started = time.monotonic()
        rng = random.Random(20261123)
        crash_writer.open_accounts(engine)
        funding = set(stored_transfers(engine))

        acknowledged: dict[str, list[tuple]] = {}  # id -> its postings as the writer was told
        refused: set[str] = set()
        in_flight: set[str] = set()  # begun but never acknowledged, from every run so far
        kills_mid_batch = 0
        zygote = Zygote(database_url)
        try:
            for run in range(KILLS):
                out = tmp_path / f"writer-{run}.jsonl"
                pid = zygote.ask(f"writer {run} {rng.randrange(2**32)} {out}")
                wait_for_first_batch(out)
                time.sleep(rng.uniform(0, 0.3))
                os.kill(pid, signal.SIGKILL)
                status = zygote.ask(f"wait {pid}")
                assert status == -signal.SIGKILL, f"the writer ended by itself ({status}):\n{out.read_text()[-3000:]}"

                # The CLI verifies in a forked process while this one checks the acknowledgements.
                cli_out = tmp_path / f"verify-{run}.txt"
                cli_pid = zygote.ask(f"cli {cli_out}")

                begun: dict[int, dict] = {}
                for message in read_output(out):
                    if "begin" in message:
                        begun[message["begin"]] = message
                        continue
                    batch = begun.pop(message["ack"])
                    for transfer_id, debit, credit, amount, pending in message["created"]:
                        kind = "pending" if pending else "posted"
                        acknowledged[transfer_id] = [(debit, "debit", kind, amount), (credit, "credit", kind, amount)]
                    refused.update(message["refused"])
                    if batch["linked"]:
                        assert not message["created"] or not message["refused"]
                assert len(begun) <= 1, "the writer began a batch before acknowledging the last"
                kills_mid_batch += len(begun)

                stored = stored_transfers(engine)
                report = transact(engine, verify)
                assert report.ok, f"after kill {run}: {report.first_failure}"
                missing = [i for i in acknowledged if i not in stored]
                assert not missing, f"after kill {run}: {len(missing)} acknowledged transfers lost, e.g. {missing[:3]}"
                changed = [i for i, rows in acknowledged.items() if stored[i] != rows]
                assert not changed, f"after kill {run}: {changed[0]} stored as {stored[changed[0]]}"
                assert not refused & set(stored), f"after kill {run}: refused transfers were written"
                for batch in begun.values():
                    present = [i for i in batch["ids"] if i in stored]
                    if batch["linked"]:
                        assert len(present) in (0, len(batch["ids"])), f"linked batch half written: {len(present)}"
                    in_flight.update(batch["ids"])
                unexplained = set(stored) - set(acknowledged) - in_flight - funding
                assert not unexplained, f"after kill {run}: never requested: {sorted(unexplained)[:3]}"

                cli_status = zygote.ask(f"wait {cli_pid}")
                assert cli_status == 0, f"clearhouse ledger verify after kill {run}:\n{cli_out.read_text()[-3000:]}"
        finally:
            zygote.close()

        assert kills_mid_batch > 0, "no kill landed inside a batch"
        assert len(acknowledged) > 0
        # The installed console script itself, once, on the final state.
        result = subprocess.run(
            [str(CLEARHOUSE), "ledger", "verify"],
            env={**os.environ, "CLEARHOUSE_DATABASE_URL": database_url},
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        elapsed = time.monotonic() - started
        assert elapsed < 2 * TIME_BUDGET, f"{KILLS} kills on {backend} took {elapsed:.0f} s"
