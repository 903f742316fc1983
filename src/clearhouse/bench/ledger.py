"""``clearhouse bench ledger``: how fast the ledger writes, against what the database can do.

Three parts, each beside a baseline measured in the same run:

- SQLite and PostgreSQL: transfers (two legs each, stored on one row) between 10,000 accounts, in
  batches of 8190 through ``ledger.service.create_transfers`` inside ``kit.db.transact``,
  one transaction per batch, with client-chosen ids. The baseline ("raw ceiling") writes
  the same rows into identically migrated tables of a second database with plain
  ``executemany`` (SQLite) or ``COPY`` (PostgreSQL), plus one aggregated balance
  ``UPDATE`` per batch, no checks, no hashing. Ledger and raw batches alternate, so
  both see the same machine at the same moment, and both rates are in transfers/s.
- HTTP: single ``POST /v1/ledger/transfers``, one at a time, against ``clearhouse serve``
  in its own process on SQLite; the baseline is ``GET /healthz`` on the same server,
  interleaved with the transfers.

The answer is checked: row counts, every entry balanced, every account's balances and
the sums of its postings against the totals this module computed from the workload,
total debits = total credits, and (at full size) ``ledger.verify`` over the whole
journal, hash chain included. A wrong answer fails the run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from clearhouse.bench import (
    POSTGRES_URL_ENV,
    PostgresServer,
    ProgressFn,
    Report,
    emit,
    free_port,
    no_progress,
    percentile,
    progress_bar,
    rate_figure,
    time_figure,
)
from clearhouse.kit import clock
from clearhouse.kit.db import bulk_insert, make_engine, transact, upgrade
from clearhouse.ledger import service
from clearhouse.ledger.models import accounts as accounts_table
from clearhouse.ledger.service import EntryRequest
from clearhouse.ledger.verify import verify

CURRENCY = "USD"
SEED = 20261123
MAX_AMOUNT_PER_TRANSFER = 1_000_000
HTTP_WARMUP = 50
PARTS = ("sqlite", "postgresql", "http")

# The goals, reported beside the figures (met or not), never used to pass or fail.
RATE_GOALS = {"sqlite": (100_000, 0.15), "postgresql": (50_000, 0.2)}  # transfers/s, ratio
HTTP_P99_GOAL_MS = 10.0


@dataclass(frozen=True, slots=True)
class Sizes:
    transfers: int
    accounts: int = 10_000
    http_requests: int = 2_000
    batch: int = service.MAX_BATCH
    # Also run ledger.verify (every hash, in Python) after loading, not only the SQL checks.
    verify_chain: bool = True

    def as_dict(self) -> dict[str, int]:
        return {
            "transfers": self.transfers,
            "accounts": self.accounts,
            "batch": self.batch,
            "http_requests": self.http_requests,
        }


FULL = Sizes(transfers=1_000_000)
QUICK = Sizes(transfers=100_000, http_requests=500, verify_chain=False)


# ---------------------------------------------------------------- the workload


class Workload:
    """Transfers between random pairs of accounts, fixed by a seed, and the balances they leave.

    Every backend loads the very same transfers: transfer ``n`` (from 0) gets seq ``n + 1``
    and the client-chosen id ``tr_bench_<n+1>``.
    """

    def __init__(self, transfers: int, accounts: int, seed: int = SEED):
        if accounts < 2:
            raise ValueError("a transfer needs two accounts")
        rng = random.Random(seed)
        self.count = transfers
        self.account_ids = [f"acct_bench_{i:05d}" for i in range(accounts)]
        self.debit = array("l", bytes(8 * transfers))
        self.credit = array("l", bytes(8 * transfers))
        self.amount = array("q", bytes(8 * transfers))
        self.expected_debits = [0] * accounts
        self.expected_credits = [0] * accounts
        for n in range(transfers):
            debit = rng.randrange(accounts)
            credit = rng.randrange(accounts - 1)
            credit += credit >= debit  # any account but the debited one
            amount = rng.randint(1, MAX_AMOUNT_PER_TRANSFER)
            self.debit[n], self.credit[n], self.amount[n] = debit, credit, amount
            self.expected_debits[debit] += amount
            self.expected_credits[credit] += amount

    @staticmethod
    def transfer_id(seq: int) -> str:
        return f"tr_bench_{seq:09d}"

    def batches(self, size: int) -> Iterator[range]:
        for start in range(0, self.count, size):
            yield range(start, min(start + size, self.count))

    def requests(self, batch: range) -> list[EntryRequest]:
        ids, debit, credit, amount = self.account_ids, self.debit, self.credit, self.amount
        return [
            EntryRequest.transfer(
                ids[debit[n]], ids[credit[n]], amount[n], CURRENCY, id=self.transfer_id(n + 1)
            )
            for n in batch
        ]

    def expected_balances(self) -> dict[str, tuple[int, int]]:
        return {
            account_id: (self.expected_debits[i], self.expected_credits[i])
            for i, account_id in enumerate(self.account_ids)
        }


def open_accounts(engine: Engine, account_ids: list[str]) -> None:
    """Open the accounts in one bulk insert.

    Set-up, not measured: ``service.create_account`` takes about 0.65 ms an account
    (three queries), 6.5 s for 10,000, which alone would be a seventh of ``--quick``.
    The rows are the ones ``create_account`` writes for an asset account with no limits.
    """
    fields = {
        "type": "asset", "currency": CURRENCY, "code": "bench", "owner_id": None,
        "metadata_json": "{}",
        "debits_must_not_exceed_credits": False, "credits_must_not_exceed_debits": False,
        "overdraft_limit": None, "closed": False, "debits_posted": 0, "credits_posted": 0,
        "debits_pending": 0, "credits_pending": 0, "created_at": clock.now(),
    }  # fmt: skip
    columns: tuple[str, ...] = ("id", *fields)
    rows = [(account_id, *fields.values()) for account_id in account_ids]
    if engine.dialect.name != "postgresql":  # PostgreSQL numbers them itself (an identity column)
        columns = ("num", *columns)
        rows = [(n, *row) for n, row in enumerate(rows, start=1)]
    transact(engine, lambda session: bulk_insert(session, accounts_table, columns, rows))


def account_numbers(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {account_id: num for account_id, num in connection.execute(text("SELECT id, num FROM ledger_accounts"))}


# ---------------------------------------------------------------- the raw ceiling


_ENTRY_COLUMNS = (
    "seq, id, pending, pending_id, resolution, timeout_seconds, timeout_at, code, reference, "
    "metadata_json, created_at, hash, debit_account, credit_account, amount, currency, kind"
)
_PLACEHOLDER_HASH = "f" * 64  # the same size as a real SHA-256 hex digest; nothing is hashed


class RawWriter:
    """The same rows the ledger writes, written the plainest fast way: the ceiling.

    Rows are built before the clock starts; what is timed is one transaction per
    batch: one ``ledger_transfers`` row per transfer (both legs on the row, as the
    ledger stores a plain transfer), then one aggregated update of the touched
    accounts' posted balances. No locks, checks or hashing.
    """

    def __init__(self, engine: Engine, workload: Workload):
        self.engine = engine
        self.workload = workload
        self.postgresql = engine.dialect.name == "postgresql"
        numbers = account_numbers(engine)
        self.numbers = [numbers[account_id] for account_id in workload.account_ids]
        self.connection = engine.connect()

    def close(self) -> None:
        self.connection.close()

    def rows(self, batch: range) -> tuple[list[tuple], list[tuple], list[tuple]]:
        w = self.workload
        ids = w.account_ids
        created_at: Any = clock.now()
        if not self.postgresql:
            # The text form SQLAlchemy stores for a SQLite DATETIME.
            created_at = created_at.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
        false = False if self.postgresql else 0
        numbers = self.numbers
        # pending_id, resolution, timeout_seconds, timeout_at, code, reference, metadata, ...
        plain_transfer = (None, None, None, None, None, None, "{}", created_at, _PLACEHOLDER_HASH)
        entries = []
        deltas: dict[int, list[int]] = {}
        for n in batch:
            seq, debit, credit, amount = n + 1, w.debit[n], w.credit[n], w.amount[n]
            entries.append((seq, w.transfer_id(seq), false, *plain_transfer, numbers[debit], numbers[credit],
                            amount, CURRENCY, "posted"))
            deltas.setdefault(debit, [0, 0])[0] += amount
            deltas.setdefault(credit, [0, 0])[1] += amount
        balance_rows = [(ids[i], d, c) for i, (d, c) in sorted(deltas.items())]
        return entries, balance_rows

    def write(self, entries: list[tuple], balances: list[tuple]) -> float:
        """Write one batch in one transaction; the seconds it took."""
        started = time.perf_counter()
        with self.connection.begin():  # BEGIN IMMEDIATE on SQLite (make_engine)
            dbapi = self.connection.connection.driver_connection
            if self.postgresql:
                with dbapi.cursor() as cursor:
                    with cursor.copy(
                        f"COPY ledger_transfers ({_ENTRY_COLUMNS}) FROM STDIN"
                    ) as copy:
                        for row in entries:
                            copy.write_row(row)
                    ids, debits, credits = (list(column) for column in zip(*balances, strict=True))
                    cursor.execute(
                        "UPDATE ledger_accounts AS t SET debits_posted = t.debits_posted + v.d, "
                        "credits_posted = t.credits_posted + v.c "
                        "FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) AS v(id, d, c) "
                        "WHERE t.id = v.id",
                        [ids, debits, credits],
                    )
            else:
                cursor = dbapi.cursor()
                try:
                    cursor.executemany(
                        f"INSERT INTO ledger_transfers ({_ENTRY_COLUMNS}) "
                        f"VALUES ({', '.join('?' * 17)})",
                        entries,
                    )
                    cursor.executemany(
                        "UPDATE ledger_accounts SET debits_posted = debits_posted + ?, "
                        "credits_posted = credits_posted + ? WHERE id = ?",
                        [(d, c, account_id) for account_id, d, c in balances],
                    )
                finally:
                    cursor.close()
        return time.perf_counter() - started


# ---------------------------------------------------------------- checking the answer


def check_ledger(
    engine: Engine, expected: dict[str, tuple[int, int]], transfers: int, where: str, *, chain: bool
) -> list[str]:
    """Everything that must hold after loading; one line per problem (none: the answer is right).

    Always, and cheap even at a million transfers: the row counts, every entry's debits
    equal to its credits, every account's stored balances and the sums of its postings
    equal to what the workload says, total debits equal to total credits. With
    ``chain``, also ``ledger.verify`` over the whole journal, which recomputes every
    hash in Python (about 70 s per million entries, so ``--quick`` leaves it out).
    """
    failures: list[str] = []
    with engine.connect() as connection:
        entries = connection.execute(text("SELECT count(*) FROM ledger_transfers")).scalar_one()
        on_rows = connection.execute(
            text("SELECT count(*) FROM ledger_transfers WHERE kind IS NOT NULL")
        ).scalar_one()
        postings = connection.execute(text("SELECT count(*) FROM ledger_postings")).scalar_one()
        head = connection.execute(text("SELECT seq FROM ledger_chain")).scalar_one()
        unbalanced = connection.execute(
            text(
                "SELECT count(*) FROM (SELECT seq FROM ledger_postings GROUP BY seq "
                "HAVING sum(CASE WHEN direction = 'debit' THEN amount ELSE -amount END) <> 0) AS t"
            )
        ).scalar_one()
        # A plain transfer's two legs are on its row (one amount: balanced by construction).
        sums = connection.execute(
            text(
                "SELECT account_id, direction, kind, sum(amount) FROM ledger_postings "
                "GROUP BY account_id, direction, kind "
                "UNION ALL SELECT a.id, 'debit', t.kind, sum(t.amount) FROM ledger_transfers t "
                "JOIN ledger_accounts a ON a.num = t.debit_account GROUP BY a.id, t.kind "
                "UNION ALL SELECT a.id, 'credit', t.kind, sum(t.amount) FROM ledger_transfers t "
                "JOIN ledger_accounts a ON a.num = t.credit_account GROUP BY a.id, t.kind"
            )
        ).all()
    if (entries, on_rows, postings, head) != (transfers, transfers, 0, transfers):
        failures.append(
            f"{where}: {entries} entries ({on_rows} with their legs on the row), {postings} posting rows, "
            f"chain head at {head}; expected {transfers} ({transfers}), 0, {transfers}"
        )
    if unbalanced:
        failures.append(f"{where}: {unbalanced} entries whose debits differ from their credits")
    from_postings: dict[str, list[int]] = {}
    for account_id, direction, kind, amount in sums:
        if kind != "posted":
            failures.append(
                f"{where}: account {account_id} has {kind} postings; the workload has none"
            )
        from_postings.setdefault(account_id, [0, 0])[direction != "debit"] += int(amount)  # legs, either form
    rows, _more = transact(engine, lambda s: service.list_accounts(s, limit=len(expected) + 1))
    stored = {row.id: row for row in rows}
    if len(stored) != len(expected):
        failures.append(f"{where}: {len(stored)} accounts stored, expected {len(expected)}")
    total_debits = total_credits = 0
    for account_id, (debits, credits) in expected.items():
        row = stored.get(account_id)
        if row is None:
            failures.append(f"{where}: account {account_id} is missing")
            continue
        total_debits += row.debits_posted
        total_credits += row.credits_posted
        found = (row.debits_posted, row.credits_posted, row.debits_pending, row.credits_pending)
        if found != (debits, credits, 0, 0):
            failures.append(
                f"{where}: account {account_id} has balances {found}, "
                f"expected {(debits, credits, 0, 0)}"
            )
        posted = tuple(from_postings.get(account_id, (0, 0)))
        if posted != (debits, credits):
            failures.append(
                f"{where}: account {account_id}'s postings sum to {posted}, "
                f"expected {(debits, credits)}"
            )
    expected_total = sum(debits for debits, _credits in expected.values())
    if not total_debits == total_credits == expected_total:
        failures.append(
            f"{where}: total debits {total_debits}, total credits {total_credits}, "
            f"expected both {expected_total}"
        )
    if chain:
        report = transact(engine, verify)
        if not report.ok:
            failures.extend(f"{where}: verify: {failure}" for failure in report.failures[:10])
        if report.entries_checked != transfers:
            failures.append(
                f"{where}: verify checked {report.entries_checked} entries, expected {transfers}"
            )
    return failures[:50]


def check_raw(engine: Engine, workload: Workload, where: str) -> list[str]:
    """The baseline must have written the same rows, or its rate means nothing."""
    with engine.connect() as connection:
        entries = connection.execute(text("SELECT count(*) FROM ledger_transfers")).scalar_one()
        postings, amount = connection.execute(
            text("SELECT count(*), coalesce(2 * sum(amount), 0) FROM ledger_transfers WHERE kind = 'posted'")
        ).one()
        postings *= 2  # legs
        debits, credits = connection.execute(
            text(
                "SELECT coalesce(sum(debits_posted), 0), coalesce(sum(credits_posted), 0) "
                "FROM ledger_accounts"
            )
        ).one()
    total = sum(workload.amount)
    found = (entries, postings, int(amount), int(debits), int(credits))
    wanted = (workload.count, 2 * workload.count, 2 * total, total, total)
    if found != wanted:
        return [
            f"{where}: raw ceiling wrote (entries, postings, posted amount, debits, credits) = "
            f"{found}, expected {wanted}"
        ]
    return []


# ---------------------------------------------------------------- one database


@dataclass
class LoadResult:
    ledger_seconds: float = 0.0
    raw_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


def load(
    backend: str,
    ledger_url: str,
    raw_url: str,
    workload: Workload,
    batch_size: int,
    progress: ProgressFn = no_progress,
    *,
    chain: bool = True,
) -> LoadResult:
    """Load the workload through the ledger and through the raw path, alternating by batch."""
    result = LoadResult()
    upgrade(ledger_url)
    upgrade(raw_url)
    ledger_engine = make_engine(ledger_url, pool_size=1)
    raw_engine = make_engine(raw_url, pool_size=1)
    raw: RawWriter | None = None
    task = f"{backend}: ledger + raw ceiling"
    try:
        open_accounts(ledger_engine, workload.account_ids)
        open_accounts(raw_engine, workload.account_ids)
        raw = RawWriter(raw_engine, workload)
        done = 0
        progress(task, 0, workload.count)
        for batch in workload.batches(batch_size):
            requests = workload.requests(batch)
            started = time.perf_counter()
            outcomes = transact(
                ledger_engine,
                lambda session, requests=requests: service.create_transfers(session, requests),
            )
            result.ledger_seconds += time.perf_counter() - started
            refused = [o for o in outcomes if o.status != "created"]
            if refused:
                result.failures.append(
                    f"{backend}: {len(refused)} transfers not created in batch from seq "
                    f"{batch.start + 1}, first: {refused[0]}"
                )
            result.raw_seconds += raw.write(*raw.rows(batch))
            done += len(batch)
            progress(task, done, workload.count)
        check_task = f"{backend}: checking the answer"
        progress(check_task, 0, 1)
        result.failures += check_ledger(
            ledger_engine, workload.expected_balances(), workload.count, backend, chain=chain
        )
        result.failures += check_raw(raw_engine, workload, backend)
        progress(check_task, 1, 1)
    finally:
        if raw is not None:
            raw.close()
        ledger_engine.dispose()
        raw_engine.dispose()
    return result


# ---------------------------------------------------------------- HTTP


@dataclass
class HttpResult:
    transfer_ms: list[float] = field(default_factory=list)
    trivial_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def serve(database_url: str, port: int, log: Path, master_key: str) -> subprocess.Popen[bytes]:
    """``clearhouse serve`` in its own process, as an operator would run it."""
    env = {**os.environ, "CLEARHOUSE_DATABASE_URL": database_url, "CLEARHOUSE_LOG_LEVEL": "WARNING",
           "CLEARHOUSE_MASTER_KEY": master_key, "CLEARHOUSE_API_KEY_RATE_LIMIT_PER_MINUTE": "0"}
    command = [
        sys.executable,
        "-c",
        "from clearhouse.cli import main; main()",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def bench_credentials(engine: Engine) -> tuple[str, Any]:
    """A fresh master key and a platform key signed with it: the benchmark's client signs
    every request, as real clients do."""
    import base64

    from clearhouse.audit.service import Actor
    from clearhouse.identity import service as identity
    from clearhouse.identity.signing import ClearhouseAuth
    from clearhouse.kit.crypto import FieldCipher, load_master_keys
    from clearhouse.kit.settings import Settings

    master_key = "mk_bench:" + base64.b64encode(os.urandom(32)).decode()
    cipher = FieldCipher.open(engine, load_master_keys(Settings(master_key=master_key, master_key_file=None)))
    row, secret = transact(engine, lambda s: identity.create_api_key(
        s, cipher, Actor(type="system", id="bench"), merchant_id=None, mode="platform", created_by="bench"))
    return master_key, ClearhouseAuth(row.id, secret)


def wait_until_up(
    client: Any, process: subprocess.Popen[bytes], log: Path, timeout: float = 60
) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"server exited with {process.returncode}: {log.read_text()[-1000:]}"
            )
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server not up after {timeout:.0f} s: {log.read_text()[-1000:]}")


def http_part(directory: Path, sizes: Sizes, progress: ProgressFn = no_progress) -> HttpResult:
    """Sequential single transfers over HTTP, each followed by a ``/healthz`` on one connection."""
    import httpx

    logging.getLogger("httpx").setLevel(logging.WARNING)  # it narrates every request at INFO
    result = HttpResult()
    database_url = f"sqlite:///{directory / 'http.db'}"
    upgrade(database_url)
    engine = make_engine(database_url, pool_size=1)
    account_ids = [f"acct_bench_{i:05d}" for i in range(sizes.accounts)]
    open_accounts(engine, account_ids)
    master_key, auth = bench_credentials(engine)
    engine.dispose()

    rng = random.Random(SEED + 1)
    expected = {account_id: [0, 0] for account_id in account_ids}
    total = HTTP_WARMUP + sizes.http_requests
    created = 0
    task = "http: single transfers"
    port = free_port()
    log = directory / "serve.log"
    process = serve(database_url, port, log, master_key)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, auth=auth) as client:
            wait_until_up(client, process, log)
            progress(task, 0, total)
            for n in range(total):
                debit, credit = rng.sample(account_ids, 2)
                amount = rng.randint(1, MAX_AMOUNT_PER_TRANSFER)
                body = {
                    "id": f"tr_http_{n:06d}",
                    "debit_account_id": debit,
                    "credit_account_id": credit,
                    "amount": amount,
                    "currency": CURRENCY,
                }
                started = time.perf_counter()
                response = client.post("/v1/ledger/transfers", json=body)
                transfer_ms = (time.perf_counter() - started) * 1000
                started = time.perf_counter()
                health = client.get("/healthz")
                trivial_ms = (time.perf_counter() - started) * 1000
                if response.status_code != 201 or response.json().get("amount") != amount:
                    result.failures.append(
                        f"http: transfer {n} answered {response.status_code}: {response.text[:200]}"
                    )
                    if len(result.failures) > 10:
                        break
                    continue
                expected[debit][0] += amount
                expected[credit][1] += amount
                created += 1
                if health.status_code != 200:
                    result.failures.append(f"http: /healthz answered {health.status_code}")
                if n >= HTTP_WARMUP:
                    result.transfer_ms.append(transfer_ms)
                    result.trivial_ms.append(trivial_ms)
                if n % 50 == 0 or n == total - 1:
                    progress(task, n + 1, total)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # The server has stopped, so its last writes are in the file we now read.
    engine = make_engine(database_url, pool_size=1)
    try:
        answered = {
            account_id: (debits, credits) for account_id, (debits, credits) in expected.items()
        }
        result.failures += check_ledger(engine, answered, created, "http", chain=True)
    finally:
        engine.dispose()
    return result


# ---------------------------------------------------------------- the whole run


def run(
    sizes: Sizes,
    *,
    parts: tuple[str, ...] = PARTS,
    postgres_url: str | None = None,
    progress: ProgressFn = no_progress,
    workdir: Path | None = None,
) -> Report:
    """Run the benchmark; the report says the figures and whether the answer was right."""
    started = time.perf_counter()
    report = Report("ledger", sizes.as_dict())
    report.notes["checks"] = (
        "row counts, chain head, every entry balanced, every account's balances and posting sums "
        "equal to the workload's totals, total debits = total credits"
        + (
            "; ledger.verify over the whole journal (hash chain)"
            if sizes.verify_chain
            else "; --quick leaves out ledger.verify of the loaded journals (HTTP's is verified)"
        )
    )
    load_at_start = os.getloadavg()[0]
    report.notes["timing"] = (
        "transfers/s = transfers / seconds inside the timed transactions; building the "
        "requests or raw rows is not timed; ledger and raw batches alternate"
    )
    with tempfile.TemporaryDirectory(prefix="clearhouse-bench-", dir=workdir) as tmp:
        directory = Path(tmp)
        workload = (
            Workload(sizes.transfers, sizes.accounts)
            if {"sqlite", "postgresql"} & set(parts)
            else None
        )
        if "sqlite" in parts:
            assert workload is not None
            _guard(report, "sqlite", lambda: _sqlite(report, directory, workload, sizes, progress))
        if "postgresql" in parts:
            assert workload is not None
            _guard(
                report,
                "postgresql",
                lambda: _postgresql(report, directory, workload, sizes, progress, postgres_url),
            )
        if "http" in parts:
            _guard(report, "http", lambda: _http(report, directory, sizes, progress))
    report.seconds = time.perf_counter() - started
    report.notes["machine"] = (
        f"{os.cpu_count()} CPUs; 1-minute load average {load_at_start:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end (other work on the machine moves the absolute "
        "figures; the ratios, measured side by side, move less)"
    )
    return report


def _guard(report: Report, part: str, work: Callable[[], None]) -> None:
    """A part that crashes is a failed run, reported; the other parts still run."""
    started = time.perf_counter()
    try:
        work()
    except Exception as error:  # noqa: BLE001 - reported as a failure, never swallowed
        report.failures.append(f"{part}: {type(error).__name__}: {error}")
    seconds = f"{part} {time.perf_counter() - started:.1f}"
    wall = report.notes.get("wall_seconds")
    report.notes["wall_seconds"] = f"{wall}, {seconds}" if wall else seconds


def _ledger_figures(report: Report, backend: str, result: LoadResult, transfers: int) -> None:
    value = transfers / result.ledger_seconds
    ceiling = transfers / result.raw_seconds
    floor, share = RATE_GOALS[backend]
    figure = rate_figure(
        f"{backend}_transfers_per_s",
        value,
        f"{backend}_raw_ceiling_transfers_per_s",
        ceiling,
        goal=f">= {floor:,}/s, ratio >= {share}",
    )
    figure = dataclasses.replace(figure, met=value >= floor and figure.ratio >= share)
    report.figures.append(figure)
    how = "plain executemany" if backend == "sqlite" else "COPY"
    report.notes[figure.baseline] = (
        f"raw ceiling in transfers/s: the same {transfers:,} ledger_transfers rows (both legs "
        f"on the row, as the ledger stores a plain transfer) inserted with {how} into an "
        f"identically migrated database, plus one aggregated balance UPDATE per batch, one "
        f"transaction per batch, no checks, no hashing"
    )
    report.failures.extend(result.failures)


def _sqlite(
    report: Report, directory: Path, workload: Workload, sizes: Sizes, progress: ProgressFn
) -> None:
    result = load(
        "sqlite",
        f"sqlite:///{directory / 'ledger.db'}",
        f"sqlite:///{directory / 'raw.db'}",
        workload,
        sizes.batch,
        progress,
        chain=sizes.verify_chain,
    )
    report.notes["sqlite"] = (
        "file databases in a temporary directory, WAL, synchronous=FULL (make_engine)"
    )
    _ledger_figures(report, "sqlite", result, workload.count)


def _postgresql(
    report: Report,
    directory: Path,
    workload: Workload,
    sizes: Sizes,
    progress: ProgressFn,
    postgres_url: str | None,
) -> None:
    if postgres_url:
        server = PostgresServer(
            postgres_url, f"given by {POSTGRES_URL_ENV} (fresh databases made on it)"
        )
    else:
        progress("postgresql: starting server", 0, 1)
        server = PostgresServer.start(directory / "postgresql")
        progress("postgresql: starting server", 1, 1)
    try:
        with server.fresh_database("ledger") as ledger_url, server.fresh_database("raw") as raw_url:
            result = load(
                "postgresql",
                ledger_url,
                raw_url,
                workload,
                sizes.batch,
                progress,
                chain=sizes.verify_chain,
            )
    finally:
        server.stop()
    report.notes["postgresql"] = f"server {server.description}"
    _ledger_figures(report, "postgresql", result, workload.count)


def _http(report: Report, directory: Path, sizes: Sizes, progress: ProgressFn) -> None:
    result = http_part(directory, sizes, progress)
    report.failures.extend(result.failures)
    if not result.transfer_ms:
        return
    value = percentile(result.transfer_ms, 99)
    baseline = percentile(result.trivial_ms, 99)
    limit = HTTP_P99_GOAL_MS
    report.figures.append(
        time_figure(
            "http_transfer_p99_ms",
            value,
            "http_trivial_p99_ms",
            baseline,
            goal=f"< {limit:g} ms",
            met=value < limit,
        )
    )
    report.notes["http_transfer_p99_ms"] = (
        f"p99 of {len(result.transfer_ms):,} sequential single POST /v1/ledger/transfers (after "
        f"{HTTP_WARMUP} warm-up) to `clearhouse serve` on SQLite in its own process, "
        "client httpx with keep-alive"
    )
    report.notes["http_trivial_p99_ms"] = (
        "p99 of GET /healthz on the same server, one after each transfer"
    )


def main(*, quick: bool, as_json: bool, transfers: int | None = None) -> int:
    """``clearhouse bench ledger``: run, print the table (and the JSON line); the exit code."""
    from rich.console import Console

    sizes = QUICK if quick else FULL
    if transfers is not None:
        sizes = dataclasses.replace(sizes, transfers=transfers)
    with progress_bar(Console(stderr=True)) as progress:
        report = run(
            sizes, postgres_url=os.environ.get(POSTGRES_URL_ENV) or None, progress=progress
        )
    return emit(report, as_json=as_json)
