"""``clearhouse bench payments``: card payments end to end over HTTP, against the same server's trivial endpoint.

For each database (SQLite in a temporary directory; PostgreSQL too when one is given) the
bench makes a fresh, migrated database, a merchant and its test API key through the
identity services, and starts ``clearhouse serve --workers <cores>`` as an operator
would, with the sandbox channels' fault profile empty (no added latency, no declines).
A second process, the client, then sends requests over loopback, each signed by
``identity.signing.signed_headers`` (what ``ClearhouseAuth`` signs with), from a lean
keep-alive HTTP/1.1 client on uvloop (``SignedHttp`` says why not httpx):

- ``payments_per_s``: ``POST /v1/payments`` (a ``card`` payment in CNY through the
  sandbox, each with a fresh ``Idempotency-Key``), closed loop with C connections;
  baseline ``healthz_per_s``, the same loop against ``GET /healthz``. The two loops
  alternate in rounds, so both see the same machine at the same moment.
- ``p99_ms_at_500_per_s``: payments sent open loop on a fixed schedule of 500 a second;
  each latency is counted from the scheduled send time, so time spent queueing (in the
  client or the server) counts. Baseline: ``/healthz`` on the same schedule.

The answer is checked: every payment answered 201 with status ``succeeded`` and the
amount sent, the ids the server returned are exactly the payments in the database, and
``ledger.verify`` over the whole journal is clean. Otherwise ``ok`` is false (exit 1).

The client runs in its own process because a load generator in the benchmark's own
process would share its interpreter lock; on a small machine the client still shares the
CPUs with the server, so its CPU use is reported beside the figures.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from clearhouse.channels.connectors.sandbox_card import sandbox_card

CURRENCY = "CNY"
CARD = sandbox_card()
OPEN_LOOP_RATE = 500
"""Requests a second on the open-loop schedule (the issue's "p99 at 500 payments/s")."""

# The goals, reported beside the figures (met or not), never used to pass or fail.
RATE_GOAL = 1_000.0
RATIO_GOAL = 0.25
P99_GOAL_MS = 50.0

MAX_FAILURE_EXAMPLES = 5


@dataclass(frozen=True, slots=True)
class Sizes:
    concurrency: int = 32
    """Connections kept busy by the closed loops."""
    rounds: int = 3
    """Alternating (healthz, payments) closed-loop rounds."""
    round_seconds: float = 5.0
    open_loop_seconds: float = 10.0
    warmup_seconds: float = 1.0
    workers: int = 0
    """Server processes; 0: one per CPU."""

    def server_workers(self) -> int:
        return self.workers or os.cpu_count() or 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "rounds": self.rounds,
            "round_seconds": self.round_seconds,
            "open_loop_rate": OPEN_LOOP_RATE,
            "open_loop_seconds": self.open_loop_seconds,
            "warmup_seconds": self.warmup_seconds,
            "server_workers": self.server_workers(),
        }


FULL = Sizes()
QUICK = Sizes(rounds=2, round_seconds=1.0, open_loop_seconds=2.0, warmup_seconds=0.5)


# ---------------------------------------------------------------- the client process


def payment_body(n: int) -> bytes:
    """The n-th payment: amounts vary, so a mixed-up answer is caught by its amount."""
    import orjson

    return orjson.dumps({
        "amount": payment_amount(n), "currency": CURRENCY, "method": "card", "payment_details": {"card": CARD},
        "merchant_order_id": f"bench_{n:08d}",
    })


def payment_amount(n: int) -> int:
    return 100 + (n * 7919) % 99_900


class ConnectionFailed(OSError):
    """A request got no complete answer: the connection was refused, reset or closed early."""


def _failure_kind(error: BaseException) -> str:
    return type(error.__cause__ or error).__name__


class SignedHttp:
    """A lean HTTP/1.1 keep-alive client for loopback load: every request signed with
    ``identity.signing.signed_headers``, the code ``ClearhouseAuth`` signs with.

    Why not httpx's AsyncClient: on this project's 2-core machine it spends 1.3 to 4 ms of
    CPU per request (its connection pool is worse the more connections it holds), so one
    client process tops out at 250-600 requests/s, below the goal being measured, and it
    takes a core away from the server while doing so. This client spends about 0.1 ms.
    It speaks only what the bench needs: requests with a body length, answers with a
    ``content-length`` or chunked body.
    """

    KEEP_ALIVE_SECONDS = 2.0
    """Reuse an idle connection only this soon after its last answer (uvicorn closes them after 5 s)."""

    def __init__(self, host: str, port: int, key_id: str, secret: str, max_connections: int = 512):
        self.host, self.port = host, port
        self.key_id, self.secret = key_id, secret
        self.slots = asyncio.Semaphore(max_connections)
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float, int]] = []

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """(status, body); ``ConnectionFailed`` (saying which connection) when the connection fails."""
        from clearhouse.identity.signing import signed_headers

        fields = {"host": f"{self.host}:{self.port}", "content-length": str(len(body)), **(headers or {}),
                  **signed_headers(self.key_id, self.secret, method, path, "", body)}
        message = (f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
                   + "\r\n").encode("latin-1") + body
        async with self.slots:
            started = time.monotonic()
            try:
                reader, writer, idle_since, answered = await self._connection()
            except OSError as error:
                raise ConnectionFailed(f"{type(error).__name__}: {error} (opening a connection)") from error
            try:
                writer.write(message)
                status, answer, close = await self._answer(reader)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as error:
                writer.close()
                # Which connection failed tells a server that drops connections from a client that
                # reuses stale ones: both were seen while this bench was written.
                used = (f"kept alive, idle {(started - idle_since) * 1000:.0f} ms, {answered} answers before"
                        if answered else "new")
                raise ConnectionFailed(f"{type(error).__name__}: {error} (on a {used} connection, after "
                                       f"{(time.monotonic() - started) * 1000:.0f} ms)") from error
            except BaseException:
                writer.close()
                raise
            if close:
                writer.close()
            else:
                self.idle.append((reader, writer, time.monotonic(), answered + 1))
        return status, answer

    async def close(self) -> None:
        for _reader, writer, _at, _answered in self.idle:
            writer.close()
        self.idle.clear()

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, float, int]:
        now = time.monotonic()
        while self.idle:
            reader, writer, at, answered = self.idle.pop()
            if now - at < self.KEEP_ALIVE_SECONDS and not reader.at_eof():
                return reader, writer, at, answered
            writer.close()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return reader, writer, now, 0

    @staticmethod
    async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        fields = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        close = fields.get("connection", "").lower() == "close"
        if fields.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while size := int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16):
                parts.append(await reader.readexactly(size + 2))
            await reader.readuntil(b"\r\n")  # the empty trailer
            return status, b"".join(part[:-2] for part in parts), close
        return status, await reader.readexactly(int(fields.get("content-length", "0"))), close


class Load:
    """The client's side of one run: sends, times and checks every request."""

    def __init__(self, http: Any, emit_line: Callable[[dict[str, Any]], None]):
        self.http = http
        self.emit_line = emit_line
        self.sent_payments = 0
        self.payment_ids: list[str] = []
        self.failures: collections.Counter[str] = collections.Counter()
        self.examples: list[str] = []

    def _failed(self, kind: str, detail: str) -> None:
        self.failures[kind] += 1
        if len(self.examples) < MAX_FAILURE_EXAMPLES:
            self.examples.append(detail[:400])

    async def healthz(self) -> bool:
        try:
            status, _answer = await self.http.request("GET", "/healthz")
        except ConnectionFailed as error:
            self._failed(f"healthz {_failure_kind(error)}", f"GET /healthz: {error}")
            return False
        if status != 200:
            self._failed(f"healthz {status}", f"GET /healthz answered {status}")
            return False
        return True

    async def payment(self) -> bool:
        import orjson

        n = self.sent_payments
        self.sent_payments += 1
        headers = {"content-type": "application/json", "idempotency-key": f"bench-{secrets.token_hex(12)}"}
        try:
            status, content = await self.http.request("POST", "/v1/payments", payment_body(n), headers)
        except ConnectionFailed as error:
            self._failed(f"payment {_failure_kind(error)}", f"POST /v1/payments: {error}")
            return False
        try:
            answer = orjson.loads(content)
        except orjson.JSONDecodeError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        text = content[:300].decode("utf-8", "replace")
        if status != 201 or answer.get("status") != "succeeded":
            kind = f"payment {status} {answer.get('code') or answer.get('status') or ''}".strip()
            self._failed(kind, f"POST /v1/payments answered {status}: {text}")
            return False
        if answer.get("amount") != payment_amount(n) or answer.get("currency") != CURRENCY:
            self._failed("payment answer for another amount",
                         f"payment {n} sent {payment_amount(n)} {CURRENCY}, answered {text}")
            return False
        self.payment_ids.append(str(answer.get("id")))
        return True

    async def closed_loop(self, send: Callable[[], Any], seconds: float, concurrency: int,
                          task: str) -> dict[str, float]:
        """``concurrency`` senders, each sending its next request when its last is answered."""
        done = 0
        started = time.perf_counter()
        deadline = started + seconds

        async def sender() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await send()
                done += 1

        watcher = asyncio.create_task(self._report_progress(task, started, seconds))
        try:
            await asyncio.gather(*(sender() for _ in range(concurrency)))
        finally:
            watcher.cancel()
        elapsed = time.perf_counter() - started
        self.emit_line({"progress": [task, 1, 1]})
        return {"requests": done, "seconds": elapsed}

    async def open_loop(self, send: Callable[[], Any], seconds: float, rate: int, task: str,
                        give_up_ms: float = 10 * P99_GOAL_MS) -> dict[str, Any]:
        """Requests on a fixed schedule, whatever the answers; latency from the scheduled time.

        A server that cannot keep up builds a backlog that takes longer to drain than the run
        may last. Once the oldest unanswered request has waited ``give_up_ms`` (ten times the
        goal: the p99 is far past it already) no further request is sent; every request sent
        is still waited for, so the stored payments match the answered ones.
        """
        count = int(seconds * rate)
        latencies: list[float] = []
        late_starts = 0
        clock = time.perf_counter  # not loop.time(): uvloop's clock counts whole milliseconds
        start = clock() + 0.05
        outstanding: collections.deque[tuple[float, asyncio.Task[None]]] = collections.deque()

        async def one(scheduled: float) -> None:
            if await send():
                latencies.append((clock() - scheduled) * 1000)

        tasks = []
        stopped_at = None
        for n in range(count):
            scheduled = start + n / rate
            delay = scheduled - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.001:
                late_starts += 1  # the client itself fell behind: still timed from the schedule
            while outstanding and outstanding[0][1].done():
                outstanding.popleft()
            if outstanding and (clock() - outstanding[0][0]) * 1000 > give_up_ms:
                stopped_at = n
                break
            tasks.append(asyncio.create_task(one(scheduled)))
            outstanding.append((scheduled, tasks[-1]))
            if n % rate == 0:
                self.emit_line({"progress": [task, n, count]})
        await asyncio.gather(*tasks)
        self.emit_line({"progress": [task, count, count]})
        return {"requests": len(tasks), "scheduled": count, "stopped_at": stopped_at,
                "latencies_ms": latencies, "late_starts": late_starts, "seconds": clock() - start}

    async def _report_progress(self, task: str, started: float, seconds: float) -> None:
        total = max(1, int(seconds * 10))
        while True:
            self.emit_line({"progress": [task, min(total, int((time.perf_counter() - started) * 10)), total]})
            await asyncio.sleep(0.25)


async def drive(spec: dict[str, Any], emit_line: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """The whole client run: a probe, warm-up, alternating closed-loop rounds, then the open loops."""
    sizes = Sizes(**spec["sizes"])
    label = spec["label"]
    http = SignedHttp("127.0.0.1", spec["port"], spec["key_id"], spec["secret"])
    result: dict[str, Any] = {"healthz_rounds": [], "payment_rounds": []}
    load = Load(http, emit_line)
    try:
        # One payment first: when the endpoint is missing or broken, say so once and measure
        # only what works instead of sending thousands of failing requests.
        payments_work = await load.payment()
        result["payments_work"] = payments_work
        await load.closed_loop(load.healthz, sizes.warmup_seconds, sizes.concurrency, f"{label}: warm-up healthz")
        if payments_work:
            await load.closed_loop(load.payment, sizes.warmup_seconds, sizes.concurrency,
                                   f"{label}: warm-up payments")
        for n in range(sizes.rounds):
            result["healthz_rounds"].append(await load.closed_loop(
                load.healthz, sizes.round_seconds, sizes.concurrency, f"{label}: healthz round {n + 1}"))
            if payments_work:
                result["payment_rounds"].append(await load.closed_loop(
                    load.payment, sizes.round_seconds, sizes.concurrency, f"{label}: payments round {n + 1}"))
        result["healthz_open"] = await load.open_loop(
            load.healthz, sizes.open_loop_seconds, OPEN_LOOP_RATE, f"{label}: healthz at {OPEN_LOOP_RATE}/s")
        if payments_work:
            result["payments_open"] = await load.open_loop(
                load.payment, sizes.open_loop_seconds, OPEN_LOOP_RATE, f"{label}: payments at {OPEN_LOOP_RATE}/s")
    finally:
        await http.close()
    result["sent_payments"] = load.sent_payments
    result["payment_ids"] = load.payment_ids
    result["failures"] = dict(load.failures)
    result["failure_examples"] = load.examples
    return result


def client_main() -> None:
    """Entry of the client process: the spec as JSON on stdin; progress lines, then the result line, on stdout."""
    import uvloop

    spec = json.loads(sys.stdin.read())

    def emit_line(line: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    cpu_started, wall_started = time.process_time(), time.perf_counter()
    result = uvloop.run(drive(spec, emit_line))
    result["client_cpu_seconds"] = time.process_time() - cpu_started
    result["client_wall_seconds"] = time.perf_counter() - wall_started
    emit_line({"result": result})


def run_client(spec: dict[str, Any], log: Path, progress: ProgressFn) -> dict[str, Any]:
    """The client in its own process; its result (progress is passed on as it comes)."""
    command = [sys.executable, "-c", "from clearhouse.bench.payments import client_main; client_main()"]
    with log.open("wb") as errors:
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True)
        try:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(json.dumps(spec))
            process.stdin.close()
            result: dict[str, Any] | None = None
            for line in process.stdout:
                message = json.loads(line)
                if "progress" in message:
                    progress(*message["progress"])
                elif "result" in message:
                    result = message["result"]
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    if result is None:
        raise RuntimeError(f"the client exited with {process.returncode}: {log.read_text()[-1500:]}")
    return result


# ---------------------------------------------------------------- the server


@dataclass
class Merchant:
    merchant_id: str
    key_id: str
    secret: str
    master_key: str


def prepare(database_url: str) -> Merchant:
    """Migrate a fresh database; a merchant and its test key, made through the identity services."""
    from clearhouse.audit.service import Actor
    from clearhouse.identity import service as identity
    from clearhouse.kit.crypto import FieldCipher, load_master_keys
    from clearhouse.kit.db import make_engine, transact, upgrade
    from clearhouse.kit.settings import Settings

    upgrade(database_url)
    master_key = "mk_bench:" + base64.b64encode(os.urandom(32)).decode()
    engine = make_engine(database_url, pool_size=1)
    try:
        cipher = FieldCipher.open(engine, load_master_keys(Settings(master_key=master_key, master_key_file=None)))
        actor = Actor(type="system", id="bench")
        merchant = transact(engine, lambda s: identity.create_merchant(s, actor, name="Bench Shop",
                                                                        default_currency=CURRENCY))
        row, secret = transact(engine, lambda s: identity.create_api_key(
            s, cipher, actor, merchant_id=merchant.id, mode="test", name="bench", created_by="bench"))
    finally:
        engine.dispose()
    return Merchant(merchant.id, row.id, secret, master_key)


def serve(database_url: str, port: int, workers: int, master_key: str, directory: Path,
          log: Path) -> subprocess.Popen[bytes]:
    """``clearhouse serve --workers N`` in its own process group, as an operator would run it."""
    env = {
        **os.environ,
        "CLEARHOUSE_DATABASE_URL": database_url,
        "CLEARHOUSE_MASTER_KEY": master_key,
        "CLEARHOUSE_LOG_LEVEL": "WARNING",
        "CLEARHOUSE_API_KEY_RATE_LIMIT_PER_MINUTE": "0",  # the bench measures the server, not the limit
        "CLEARHOUSE_SANDBOX_DIR": str(directory / "sandbox"),
        "CLEARHOUSE_SANDBOX_FAULTS": "{}",  # no added latency, no declines, no outages
        "CLEARHOUSE_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
    }
    command = [sys.executable, "-c", "from clearhouse.cli import main; main()", "serve",
               "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (uvicorn stops its workers), then SIGKILL to the server's own process group."""
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # workers left behind, if any: the group is the server's own
    if process.poll() is None:
        process.wait()


def wait_until_ready(base_url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base_url, timeout=5) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}: {log.read_text()[-1000:]}")
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"server not ready after {timeout:.0f} s: {log.read_text()[-1000:]}")


# ---------------------------------------------------------------- checking the answer


def check_database(database_url: str, merchant_id: str, answered_ids: list[str], sent: int,
                   where: str) -> list[str]:
    """The payments the server said it made are exactly the ones stored, and the ledger verifies."""
    from sqlalchemy import text

    from clearhouse.kit.db import make_engine, transact
    from clearhouse.ledger.verify import verify

    failures: list[str] = []
    engine = make_engine(database_url, pool_size=1)
    try:
        try:
            with engine.connect() as connection:
                stored = set(connection.execute(
                    text("SELECT id FROM payments WHERE merchant_id = :merchant"), {"merchant": merchant_id}
                ).scalars())
        except Exception as error:  # noqa: BLE001 - reported as a failure, never swallowed
            failures.append(f"{where}: could not count the stored payments: {type(error).__name__}: "
                            f"{str(error).splitlines()[0][:200]}")
        else:
            answered = set(answered_ids)
            if len(answered) != len(answered_ids):
                failures.append(f"{where}: {len(answered_ids) - len(answered)} payment ids answered twice")
            if len(stored) != sent:
                failures.append(f"{where}: {len(stored)} payments stored, {sent} sent")
            missing, extra = answered - stored, stored - answered
            if missing:
                failures.append(f"{where}: {len(missing)} answered payments not stored, e.g. {sorted(missing)[:3]}")
            if extra:
                failures.append(f"{where}: {len(extra)} stored payments never answered as succeeded, "
                                f"e.g. {sorted(extra)[:3]}")
        report = transact(engine, verify)
        if not report.ok:
            failures.extend(f"{where}: ledger verify: {failure}" for failure in report.failures[:10])
    finally:
        engine.dispose()
    return failures


# ---------------------------------------------------------------- one database


@dataclass
class BackendResult:
    client: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    server_log_tail: str = ""


def measure(label: str, database_url: str, sizes: Sizes, directory: Path,
            progress: ProgressFn = no_progress) -> BackendResult:
    """Prepare the database, serve it, drive the load from a client process, stop, check."""
    result = BackendResult()
    progress(f"{label}: migrate, merchant, key", 0, 1)
    merchant = prepare(database_url)
    progress(f"{label}: migrate, merchant, key", 1, 1)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    server_log = directory / f"{label}-serve.log"
    process = serve(database_url, port, sizes.server_workers(), merchant.master_key, directory / label, server_log)
    try:
        progress(f"{label}: server starting", 0, 1)
        wait_until_ready(base_url, process, server_log)
        progress(f"{label}: server starting", 1, 1)
        spec = {"label": label, "port": port, "key_id": merchant.key_id, "secret": merchant.secret,
                "sizes": dataclasses.asdict(sizes)}
        result.client = run_client(spec, directory / f"{label}-client.log", progress)
    finally:
        stop(process)
    client = result.client
    for kind, count in sorted(client["failures"].items()):
        result.failures.append(f"{label}: {count} x {kind}")
    result.failures.extend(f"{label}: e.g. {example}" for example in client["failure_examples"])
    if not client["payments_work"]:
        result.failures.append(f"{label}: the first payment failed, so payments were not measured")
    if process.returncode not in (0, -signal.SIGTERM):
        result.failures.append(f"{label}: server exited with {process.returncode}: "
                               f"{server_log.read_text()[-500:]}")
    if client["failures"]:
        # The log goes with the temporary directory: keep its end, where the tracebacks are.
        result.server_log_tail = server_log.read_text(errors="replace")[-4000:]
    progress(f"{label}: checking the answer", 0, 1)
    result.failures += check_database(database_url, merchant.merchant_id, client["payment_ids"],
                                      client["sent_payments"], label)
    progress(f"{label}: checking the answer", 1, 1)
    return result


def add_figures(report: Report, label: str, sizes: Sizes, result: BackendResult) -> None:
    client = result.client
    healthz_rate = _rate(client.get("healthz_rounds", []))
    payment_rate = _rate(client.get("payment_rounds", []))
    if payment_rate and healthz_rate:
        figure = rate_figure(f"{label}_payments_per_s", payment_rate, f"{label}_healthz_per_s", healthz_rate,
                             goal=f">= {RATE_GOAL:,.0f}/s, ratio >= {RATIO_GOAL}")
        report.figures.append(dataclasses.replace(
            figure, met=payment_rate >= RATE_GOAL and figure.ratio >= RATIO_GOAL))
        report.notes[figure.figure] = (
            f"closed loop, {sizes.concurrency} connections, {len(client['payment_rounds'])} rounds of "
            f"{sizes.round_seconds:g} s alternating with GET /healthz rounds ({figure.baseline}); "
            f"{sum(r['requests'] for r in client['payment_rounds']):,} payments timed")
    healthz_open = client.get("healthz_open") or {}
    payments_open = client.get("payments_open") or {}
    if healthz_rate and healthz_open.get("latencies_ms"):
        # Said even when payments could not be measured: the server and the client worked.
        report.notes[f"{label}_healthz"] = (
            f"GET /healthz: {healthz_rate:,.0f}/s closed loop; p99 "
            f"{percentile(healthz_open['latencies_ms'], 99):.1f} ms at {OPEN_LOOP_RATE}/s open loop"
            + (f" (STOPPED after {healthz_open['stopped_at']:,} sends: over {10 * P99_GOAL_MS:g} ms behind)"
               if healthz_open.get("stopped_at") is not None else ""))
    if healthz_open.get("latencies_ms") and payments_open.get("latencies_ms"):
        value = percentile(payments_open["latencies_ms"], 99)
        baseline = percentile(healthz_open["latencies_ms"], 99)
        figure = time_figure(f"{label}_p99_ms_at_{OPEN_LOOP_RATE}_per_s", value,
                             f"{label}_healthz_p99_ms_at_{OPEN_LOOP_RATE}_per_s", baseline,
                             goal=f"< {P99_GOAL_MS:g} ms",
                             # A schedule given up on is a goal missed, whatever the p99 of what was sent.
                             met=value < P99_GOAL_MS and payments_open.get("stopped_at") is None)
        report.figures.append(figure)
        report.notes[figure.figure] = (
            f"open loop, {payments_open['requests']:,} payments sent on a schedule of {OPEN_LOOP_RATE}/s, latency "
            f"from the scheduled send time; median {percentile(payments_open['latencies_ms'], 50):.1f} ms, max "
            f"{max(payments_open['latencies_ms']):.1f} ms; {payments_open['late_starts']} sends started late "
            f"by the client (their wait counts)"
            + (f"; STOPPED after {payments_open['stopped_at']:,} of {payments_open['scheduled']:,} sends: the oldest "
               f"unanswered payment had waited over {10 * P99_GOAL_MS:g} ms (the server cannot keep up), so the p99 is "
               "of those sent"
               if payments_open.get("stopped_at") is not None else ""))
    if client:
        cpu, wall = client.get("client_cpu_seconds", 0.0), client.get("client_wall_seconds", 0.0)
        report.notes[f"{label}_client"] = (
            f"one client process (SignedHttp on uvloop, every request signed) used {cpu:.1f} s of CPU in {wall:.1f} s "
            f"({cpu / wall if wall else 0:.0%} of one core): near 100% means the client, not the server, set the "
            f"closed-loop rates; {client['sent_payments']:,} payments sent in all")


def _rate(rounds: list[dict[str, float]]) -> float:
    seconds = sum(r["seconds"] for r in rounds)
    return sum(r["requests"] for r in rounds) / seconds if seconds else 0.0


# ---------------------------------------------------------------- the whole run


def run(sizes: Sizes, *, postgres_url: str | None = None, progress: ProgressFn = no_progress,
        workdir: Path | None = None) -> Report:
    """SQLite always, PostgreSQL when a server is given: the figures, and whether the answer was right."""
    started = time.perf_counter()
    report = Report("payments", sizes.as_dict())
    report.notes["server"] = (
        f"clearhouse serve --workers {sizes.server_workers()} in its own process, sandbox_card with an empty "
        "fault profile (no added latency); client in another process over loopback")
    report.notes["checks"] = (
        "every payment answered 201 'succeeded' with the amount sent; the answered payment ids are exactly the "
        "payments stored for the merchant, as many as were sent; ledger.verify over the whole journal")
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="clearhouse-bench-payments-", dir=workdir) as tmp:
        directory = Path(tmp)
        _guard(report, "sqlite", lambda: _backend(report, "sqlite", f"sqlite:///{directory / 'payments.db'}",
                                                  sizes, directory, progress))
        if postgres_url:
            server = PostgresServer(postgres_url, "given (a fresh database made on it)")

            def on_postgresql() -> None:
                with server.fresh_database("payments") as url:
                    _backend(report, "postgresql", url, sizes, directory, progress)
                report.notes["postgresql"] = f"server {server.description}"

            _guard(report, "postgresql", on_postgresql)
    report.seconds = time.perf_counter() - started
    report.notes["machine"] = (
        f"{os.cpu_count()} CPUs shared by server and client; 1-minute load average {load_at_start:.2f} at the "
        f"start, {os.getloadavg()[0]:.2f} at the end")
    return report


def _backend(report: Report, label: str, database_url: str, sizes: Sizes, directory: Path,
             progress: ProgressFn) -> None:
    (directory / label).mkdir(exist_ok=True)
    result = measure(label, database_url, sizes, directory, progress)
    report.failures.extend(result.failures)
    if result.server_log_tail:
        report.notes[f"{label}_server_log"] = result.server_log_tail
    add_figures(report, label, sizes, result)


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


def main(*, quick: bool, as_json: bool, postgres_url: str | None = None) -> int:
    """``clearhouse bench payments``: run, print the table (and the JSON line); the exit code."""
    from rich.console import Console

    sizes = QUICK if quick else FULL
    postgres_url = postgres_url or os.environ.get(POSTGRES_URL_ENV) or None
    with progress_bar(Console(stderr=True)) as progress:
        report = run(sizes, postgres_url=postgres_url, progress=progress)
    return emit(report, as_json=as_json)
