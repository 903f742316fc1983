"""The ``clearhouse`` command, run as an operator runs it: a real process, a real database file.

Every test starts ``.venv/bin/clearhouse`` as a subprocess with ``CLEARHOUSE_DATABASE_URL``
pointing at a fresh SQLite file, and talks to ``serve`` over real HTTP.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from clearhouse.identity.signing import ClearhouseAuth
from clearhouse.kit import clock
from clearhouse.kit.db import head_revision, make_engine, transact, upgrade
from clearhouse.ledger import service

# Each test starts the CLI (or a server) in its own process, about 4 s of CPU apiece: in the slow run.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / ".venv" / "bin" / "clearhouse"
if not CLI.exists():  # a venv somewhere else: the console script sits beside this interpreter
    CLI = Path(sys.executable).parent / "clearhouse"


def environment(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARHOUSE_")}
    env["CLEARHOUSE_DATABASE_URL"] = url
    env.update(extra)
    return env


def clearhouse(*args: str, url: str, cwd: Path, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *args],
        env=environment(url, **extra),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr
    return result


def json_object(text: str, key: str) -> dict:
    """The JSON object in ``text`` that has ``key`` (log lines may surround it)."""
    for match in re.finditer(r"\{[^{}]*\}", text, re.S):
        try:
            value = json.loads(match.group(0))
        except ValueError:
            continue
        if key in value:
            return value
    raise AssertionError(f"no JSON object with {key!r} in:\n{text}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(base: str, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Until ``base``/readyz answers 200; fails with the server's log if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"serve exited early:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"serve not ready in {timeout} s:\n{log.read_text()}"
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)


def stop(process: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def db(tmp_path: Path) -> tuple[str, Path]:
    """A database URL for a file that does not exist yet, and a working directory."""
    work = tmp_path / "work"
    work.mkdir()
    return f"sqlite:///{tmp_path / 'data' / 'clearhouse.db'}", work


@pytest.fixture
def demo_db(db: tuple[str, Path]) -> tuple[str, Path, int]:
    url, cwd = db
    result = ok(clearhouse("demo", url=url, cwd=cwd))
    created = int(re.search(r"\((\d+) new entries\)", result.stderr).group(1))
    return url, cwd, created


def sqlite_file(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


def count(url: str, table: str) -> int:
    with sqlite3.connect(sqlite_file(url)) as connection:
        return connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def expired_pending_transfer(url: str, transfer_id: str) -> None:
    """A pending transfer whose one-second timeout passed an hour ago, written from this process."""
    engine = make_engine(url, pool_size=1)
    try:

        def work(session) -> None:
            for account_id, account_type in (("acct_cli_a", "asset"), ("acct_cli_b", "liability")):
                service.create_account(session, id=account_id, type=account_type, currency="CNY", code=account_id)
            service.create_transfer(
                session,
                service.EntryRequest.transfer(
                    "acct_cli_a",
                    "acct_cli_b",
                    700,
                    "CNY",
                    id=transfer_id,
                    pending=True,
                    timeout_seconds=1,
                ),
            )

        with clock.frozen(clock.now() - timedelta(hours=1)):
            transact(engine, work)
    finally:
        engine.dispose()


def transfer_status(url: str, transfer_id: str) -> str:
    engine = make_engine(url, pool_size=1)
    try:
        return transact(engine, lambda s: service.get_transfer(s, transfer_id))["status"]
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------------ db


class TestDb:
    def test_upgrade_then_current_prints_the_head_revision_and_upgrade_repeats(self, db):
        url, cwd = db
        fresh = ok(clearhouse("db", "current", url=url, cwd=cwd))
        assert head_revision() not in fresh.stdout
        upgraded = ok(clearhouse("db", "upgrade", url=url, cwd=cwd))
        assert "database at head" in upgraded.stderr
        current = ok(clearhouse("db", "current", url=url, cwd=cwd))
        assert current.stdout.strip() == head_revision()
        assert sqlite_file(url).exists()
        assert list(cwd.iterdir()) == []  # nothing lands in the working directory
        ok(clearhouse("db", "upgrade", url=url, cwd=cwd))  # nothing to do, no error
        assert ok(clearhouse("db", "current", url=url, cwd=cwd)).stdout.strip() == head_revision()


# ------------------------------------------------------------------------------------ demo


class TestDemo:
    def test_demo_migrates_loads_once_and_is_idempotent(self, db):
        url, cwd = db
        first = ok(clearhouse("demo", url=url, cwd=cwd))
        created = int(re.search(r"\((\d+) new entries\)", first.stderr).group(1))
        assert created > 0
        tables = ("ledger_transfers", "ledger_postings", "ledger_accounts")
        before = tuple(count(url, t) for t in tables)
        assert before[0] > created  # the demo's own entries, then its payments' entries
        second = ok(clearhouse("demo", url=url, cwd=cwd))
        assert "(0 new entries)" in second.stderr
        assert tuple(count(url, t) for t in tables) == before
        assert ok(clearhouse("db", "current", url=url, cwd=cwd)).stdout.strip() == head_revision()


# ------------------------------------------------------------------------------------ verify


class TestLedgerVerify:
    def test_verify_passes_on_the_demo_ledger(self, demo_db):
        url, cwd, created = demo_db
        result = ok(clearhouse("ledger", "verify", url=url, cwd=cwd))
        # The demo's ledger entries, then its payments' (each succeeded payment, refund and hold).
        verified = int(result.stderr.split("ledger verified: ")[1].split(" entries")[0])
        assert verified > created

    def test_verify_json_is_one_parseable_object_on_stdout(self, demo_db):
        url, cwd, created = demo_db
        report = json.loads(ok(clearhouse("ledger", "verify", "--json", url=url, cwd=cwd)).stdout)
        assert report["ok"] is True
        assert report["entries_checked"] == count(url, "ledger_transfers") > created
        assert report["accounts_checked"] == count(url, "ledger_accounts")
        # A plain transfer carries its two legs on its own row; other entries have posting rows.
        row_legs = 2 * count(url, "ledger_transfers WHERE debit_account IS NOT NULL")
        assert report["postings_checked"] == count(url, "ledger_postings") + row_legs
        assert report["chain_head"]["seq"] == report["entries_checked"]
        assert re.fullmatch(r"[0-9a-f]{64}", report["chain_head"]["hash"])
        assert report["first_failure"] is None and report["failures"] == []

    def test_verify_fails_with_exit_1_when_a_balance_was_tampered_with(self, demo_db):
        url, cwd, _ = demo_db
        with sqlite3.connect(sqlite_file(url)) as connection:
            connection.execute(
                "UPDATE ledger_accounts SET credits_posted = credits_posted + 1 WHERE id = 'acct_demo_fee_revenue'"
            )
        text_result = clearhouse("ledger", "verify", url=url, cwd=cwd)
        assert text_result.returncode == 1
        assert "ledger verification failed" in text_result.stderr
        assert "Traceback" not in text_result.stderr
        json_result = clearhouse("ledger", "verify", "--json", url=url, cwd=cwd)
        assert json_result.returncode == 1
        report = json.loads(json_result.stdout)
        assert report["ok"] is False
        assert report["first_failure"]["check"] == "balance_mismatch"
        assert report["first_failure"]["account_id"] == "acct_demo_fee_revenue"

    def test_verify_catches_a_rewritten_posting_through_the_hash_chain(self, demo_db):
        url, cwd, _ = demo_db
        with sqlite3.connect(sqlite_file(url)) as connection:
            # The database refuses the rewrite...
            with pytest.raises(sqlite3.IntegrityError, match="immutable"):
                connection.execute("UPDATE ledger_postings SET amount = amount + 1 WHERE seq = 1 AND idx = 0")
            # ...so an attacker with file access drops the trigger first.
            triggers = [
                row[0]
                for row in connection.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'ledger_postings'"
                )
            ]
            for trigger in triggers:
                connection.execute(f"DROP TRIGGER {trigger}")
            connection.execute("UPDATE ledger_postings SET amount = amount + 1 WHERE seq = 1")
        result = clearhouse("ledger", "verify", "--json", url=url, cwd=cwd)
        assert result.returncode == 1
        checks = {f["check"] for f in json.loads(result.stdout)["failures"]}
        assert "hash_mismatch" in checks


@pytest.mark.slow  # writers run for tens of seconds while verify reads
class TestLedgerVerifyUnderLoad:
    def test_verify_reports_a_healthy_ledger_while_transfers_commit(self, database_url, backend, request, tmp_path):
        """verify must read one consistent state, whatever commits while it runs."""
        engine = make_engine(database_url)
        try:

            def accounts(session) -> None:
                service.create_account(session, id="acct_load_a", type="asset", currency="CNY", code="a")
                service.create_account(session, id="acct_load_b", type="liability", currency="CNY", code="b")

            transact(engine, accounts)
            one = service.EntryRequest.transfer
            for _ in range(10):  # a journal long enough that verify takes a while
                transact(
                    engine,
                    lambda s: service.create_transfers(
                        s, [one("acct_load_a", "acct_load_b", 1, "CNY") for _ in range(500)]
                    ),
                )
            stop, writing = threading.Event(), threading.Event()

            def writer() -> None:
                while not stop.is_set():
                    transact(engine, lambda s: service.create_transfer(s, one("acct_load_a", "acct_load_b", 1, "CNY")))
                    writing.set()

            thread = threading.Thread(target=writer, daemon=True)
            thread.start()
            try:
                assert writing.wait(30)
                reports = [clearhouse("ledger", "verify", "--json", url=database_url, cwd=tmp_path) for _ in range(5)]
            finally:
                stop.set()
                thread.join(timeout=30)
        finally:
            engine.dispose()
        failures = [json.loads(r.stdout)["first_failure"] for r in reports if r.returncode != 0]
        assert failures == []


# ------------------------------------------------------------------------------------ worker


class TestWorker:
    def test_once_runs_each_job_and_reports_counts(self, demo_db):
        url, cwd, _ = demo_db
        result = ok(clearhouse("worker", "--once", url=url, cwd=cwd))
        counts = json_object(result.stdout, "ledger.void_expired")
        assert {k: counts[k] for k in ("ledger.void_expired", "idempotency.purge_expired", "identity.purge_nonces",
                                       "identity.purge_rate_limits", "identity.expire_approvals")} == {
            "ledger.void_expired": 0,
            "idempotency.purge_expired": 0,
            "identity.purge_nonces": 0,
            "identity.purge_rate_limits": 0,
            "identity.expire_approvals": 0,
        }
        # The payments jobs ran too, and none failed (-1).
        assert {"payments.resolve_stuck", "webhooks.deliver_due", "orders.advance"} <= set(counts)
        assert all(value >= 0 for value in counts.values()), counts

    def test_once_voids_an_expired_pending_transfer(self, demo_db):
        url, cwd, _ = demo_db
        expired_pending_transfer(url, "tr_cli_expired")
        assert transfer_status(url, "tr_cli_expired") == "pending"
        result = ok(clearhouse("worker", "--once", url=url, cwd=cwd))
        assert json_object(result.stdout, "ledger.void_expired")["ledger.void_expired"] == 1
        assert transfer_status(url, "tr_cli_expired") == "voided"
        # The demo's own pending hold has an hour to go and is left alone.
        assert transfer_status(url, "tr_demo_hold_001") == "pending"
        ok(clearhouse("ledger", "verify", url=url, cwd=cwd))
        again = ok(clearhouse("worker", "--once", url=url, cwd=cwd))
        assert json_object(again.stdout, "ledger.void_expired")["ledger.void_expired"] == 0

    def test_long_running_worker_voids_and_stops_on_interrupt(self, demo_db):
        url, cwd, _ = demo_db
        log = cwd / "worker.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [str(CLI), "worker"],
                env=environment(url, CLEARHOUSE_WORKER_INTERVAL_SECONDS="0.2"),
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            expired_pending_transfer(url, "tr_cli_loop")
            deadline = time.monotonic() + 30
            while transfer_status(url, "tr_cli_loop") != "voided":
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the worker did not void the expired transfer"
                time.sleep(0.2)
            process.send_signal(signal.SIGINT)
            process.wait(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert process.returncode in (0, 130), log.read_text()
        assert "Traceback" not in log.read_text()


# ------------------------------------------------------------------------------------ serve


@pytest.fixture
def server(db) -> Iterator[tuple[str, str, Path, subprocess.Popen]]:
    """``clearhouse serve --demo --port <free>`` as a child process; yields its base URL."""
    url, cwd = db
    port = free_port()
    log = cwd / "serve.log"
    # Written before the server starts: the in-process worker must void it.
    upgrade(url)
    expired_pending_transfer(url, "tr_cli_serve_expired")
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(CLI), "serve", "--demo", "--port", str(port)],
            env=environment(url, CLEARHOUSE_WORKER_INTERVAL_SECONDS="0.2"),
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, process, log)
        yield base, url, log, process
    finally:
        stop(process)


def demo_client(base: str, url: str, who: str = "platform") -> httpx.Client:
    """A client signed with the key ``serve --demo`` wrote to demo-credentials.json."""
    credentials = json.loads((sqlite_file(url).parent / "demo-credentials.json").read_text())[who]
    return httpx.Client(base_url=base, timeout=30,
                        auth=ClearhouseAuth(credentials["api_key_id"], credentials["api_secret"]))


class TestServe:
    def test_serve_demo_is_ready_over_real_http_and_stops_on_sigterm(self, server):
        base, url, log, process = server
        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert ready.json() == {"status": "ready", "schema": head_revision()}
        assert httpx.get(f"{base}/healthz", timeout=10).json() == {"status": "ok"}
        assert httpx.get(f"{base}/v1/ledger/accounts/acct_demo_bank_main", timeout=10).status_code == 401
        with demo_client(base, url) as signed:
            account = signed.get("/v1/ledger/accounts/acct_demo_bank_main")
            assert account.status_code == 200
            assert account.json()["currency"] == "CNY"
            assert signed.get("/v1/ledger/verify").json()["ok"] is True
            assert signed.get("/v1/merchants/mch_demo").json()["name"] == "Demo Shop"
        with demo_client(base, url, "merchant") as merchant:
            assert merchant.get("/v1/merchants/mch_demo").status_code == 200
            assert merchant.get("/v1/ledger/accounts/acct_demo_bank_main").json()["code"] == "forbidden"
        assert "clearhouse_http_requests_total" in httpx.get(f"{base}/metrics", timeout=10).text
        process.terminate()
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert process.wait(timeout=20) in (0, -signal.SIGTERM), log.read_text()
        assert "Traceback" not in log.read_text()

    def test_serve_demo_runs_the_worker_in_process(self, server):
        base, url, log, process = server
        deadline = time.monotonic() + 30
        signed = demo_client(base, url)
        while True:
            status = signed.get("/v1/ledger/transfers/tr_cli_serve_expired").json()["status"]
            if status == "voided":
                break
            assert time.monotonic() < deadline, f"still {status}:\n{log.read_text()}"
            time.sleep(0.2)

    def test_serve_announces_where_it_listens(self, server):
        base, url, log, process = server
        assert f"Clearhouse on {base}" in log.read_text()


# ------------------------------------------------------------------------------------ misuse


class TestBadUsage:
    @pytest.mark.parametrize(
        "args",
        [
            ("nosuchcommand",),
            ("db", "downgrade"),
            ("db", "upgrade", "--nope"),
            ("serve", "--port", "eighty"),
        ],
        ids=["unknown-command", "unknown-subcommand", "unknown-option", "bad-port"],
    )
    def test_bad_usage_exits_2_with_a_message_and_no_traceback(self, db, args):
        url, cwd = db
        result = clearhouse(*args, url=url, cwd=cwd)
        assert result.returncode == 2
        assert "Traceback" not in result.stdout + result.stderr
        assert "Usage:" in result.stderr
        assert not sqlite_file(url).exists()  # misuse touches no database

    def test_no_arguments_shows_help_without_a_traceback(self, db):
        url, cwd = db
        result = clearhouse(url=url, cwd=cwd)
        assert result.returncode != 0 or "Usage:" in result.stdout
        assert "Usage:" in result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr

    @pytest.mark.parametrize(
        "bad_url", ["mysql://user@127.0.0.1/clearhouse", "postgresql://user:hunter2-secret@127.0.0.1:1/clearhouse"]
    )
    def test_misconfigured_database_exits_2_with_one_line_and_no_secret(self, tmp_path, bad_url):
        result = clearhouse("db", "upgrade", url=bad_url, cwd=tmp_path, timeout=60)
        output = result.stdout + result.stderr
        assert result.returncode == 2, output
        assert "Traceback" not in output
        assert "check CLEARHOUSE_DATABASE_URL" in output
        assert "hunter2-secret" not in output  # the password is never echoed


def test_recon_run_takes_only_the_channel_names_the_api_takes(db) -> None:
    url, cwd = db
    statement = cwd / "statement.csv"
    statement.write_text("our_ref,amount\n")
    result = clearhouse("recon", "run", "--channel", "BAD CHANNEL!", "--file", str(statement), "--date", "2026-11-23",
                        url=url, cwd=cwd)
    assert result.returncode == 2
    assert "is not a channel name" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not sqlite_file(url).exists()  # refused before anything was opened
