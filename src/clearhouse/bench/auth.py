"""``clearhouse bench auth``: what request signing and permission checks add per request.

In process, no network: the same request is sent N times straight into an ASGI app.

- measured: the real ``AuthenticationMiddleware`` (key lookup, HMAC check, nonce
  recorded, rate-limit counter) in front of a FastAPI route that declares
  ``requires("ledger:read")``; every request freshly signed (new nonce) by the client
  code real clients use (``signing.signed_headers``), signing not timed.
- baseline: the same FastAPI route without the middleware or the dependency,
  the same request unsigned.

Figures: p99 of the measured minus p99 of the baseline, in milliseconds (goal < 0.5 ms),
on SQLite and on PostgreSQL, for a GET and for the same route as a POST (whose nonce is
recorded before it runs, where a GET's write overlaps the route on PostgreSQL).
"""

from __future__ import annotations

import base64
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from clearhouse.bench import (
    POSTGRES_URL_ENV,
    PostgresServer,
    ProgressFn,
    Report,
    emit,
    no_progress,
    percentile,
    progress_bar,
    time_figure,
)

GOAL_MS = 0.5
FULL_REQUESTS = 100_000
QUICK_REQUESTS = 10_000
WARMUP = 500
PATH = "/v1/ledger/accounts/acct_bench/balance"
QUERY = "as_of=2026-11-23T00%3A00%3A00Z"


def _apps(database_url: str) -> tuple[Any, Any, str, str, Any]:
    """(protected app, baseline app, key id, secret, engines to dispose)."""
    from fastapi import FastAPI

    from clearhouse.audit.service import Actor
    from clearhouse.identity import service as identity
    from clearhouse.identity.middleware import AuthenticationMiddleware
    from clearhouse.identity.permissions import requires
    from clearhouse.kit.crypto import FieldCipher, load_master_keys
    from clearhouse.kit.db import make_engine, transact, upgrade
    from clearhouse.kit.settings import Settings

    upgrade(database_url)
    master_key = "mk_bench:" + base64.b64encode(os.urandom(32)).decode()
    # A limit that is counted on every request but never reached: its cost is part of the figure.
    settings = Settings(database_url=database_url, master_key=master_key, master_key_file=None,
                        api_key_rate_limit_per_minute=1_000_000_000)
    engine = make_engine(database_url, pool_size=2)
    bookkeeping = make_engine(database_url, pool_size=4, durable=False)
    cipher = FieldCipher.open(engine, load_master_keys(settings))
    row, secret = transact(engine, lambda s: identity.create_api_key(
        s, cipher, Actor(type="system", id="bench"), merchant_id=None, mode="platform", scopes=["ledger:read"],
        created_by="bench"))

    def balance() -> dict[str, int]:
        return {"posted": 0}

    protected = FastAPI()
    protected.get(PATH, dependencies=[requires("ledger:read")])(balance)
    # The same route as a POST: an unsafe method records its nonce before it runs.
    protected.post(PATH, dependencies=[requires("ledger:read")])(balance)
    protected.add_middleware(AuthenticationMiddleware, fastapi_app=protected, engine=bookkeeping, cipher=cipher,
                             settings=settings)
    baseline = FastAPI()
    baseline.get(PATH)(balance)
    baseline.post(PATH)(balance)
    return protected, baseline, row.id, secret, (engine, bookkeeping)


async def _call(app: Any, headers: list[tuple[bytes, bytes]], method: str = "GET") -> tuple[int, float]:
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": PATH, "raw_path": PATH.encode(), "query_string": QUERY.encode(), "root_path": "",
        "headers": headers, "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
    }
    started = time.perf_counter()
    await app(scope, receive, send)
    return status, (time.perf_counter() - started) * 1000


async def _measure(protected: Any, baseline: Any, key_id: str, secret: str, count: int, label: str,
                   progress: ProgressFn, failures: list[str], method: str = "GET") -> tuple[list[float], list[float]]:
    from clearhouse.identity.signing import signed_headers

    signed_ms: list[float] = []
    plain_ms: list[float] = []
    plain_headers = [(b"host", b"bench")]
    task = f"{label}: signed vs unsigned {method}s"
    # Interleaved, so the machine's background noise falls on both alike.
    for n in range(WARMUP + count):
        headers = signed_headers(key_id, secret, method, PATH, QUERY)
        raw = plain_headers + [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        status, ms = await _call(protected, raw, method)
        if status != 200:
            failures.append(f"{label}: signed request {n} answered {status}")
            if len(failures) > 10:
                break
        status_plain, ms_plain = await _call(baseline, plain_headers, method)
        if status_plain != 200:
            failures.append(f"{label}: baseline request {n} answered {status_plain}")
        if n >= WARMUP:
            signed_ms.append(ms)
            plain_ms.append(ms_plain)
        if n % 1000 == 0:
            progress(task, n, WARMUP + count)
    progress(task, WARMUP + count, WARMUP + count)
    # The refusal path works too: a replayed nonce is refused.
    headers = signed_headers(key_id, secret, method, PATH, QUERY)
    raw = plain_headers + [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    first, _ = await _call(protected, raw, method)
    again, _ = await _call(protected, raw, method)
    if (first, again) != (200, 401):
        failures.append(f"{label}: a replayed request answered {again} (first {first})")
    return signed_ms, plain_ms


def _figure(report: Report, label: str, signed_ms: list[float], plain_ms: list[float], method: str) -> None:
    if not signed_ms:
        return
    infix = "" if method == "GET" else f"{method.lower()}_"
    name = f"{label}_{infix}auth_added_p99_ms"
    signed_p99 = percentile(signed_ms, 99)
    plain_p99 = percentile(plain_ms, 99)
    added = signed_p99 - plain_p99
    report.figures.append(time_figure(
        name, added, f"{label}_unsigned_{infix}p99_ms", plain_p99, goal=f"< {GOAL_MS} ms", met=added < GOAL_MS,
    ))
    report.notes[name] = (
        f"p99 of {len(signed_ms):,} signed {method}s ({signed_p99:.3f} ms) minus p99 of the same requests "
        f"unsigned ({plain_p99:.3f} ms); median added {percentile(signed_ms, 50) - percentile(plain_ms, 50):.3f} ms"
    )


def _backend(report: Report, label: str, database_url: str, count: int, progress: ProgressFn) -> None:
    protected, baseline, key_id, secret, engines = _apps(database_url)
    try:
        # uvloop, as `clearhouse serve` runs (uvicorn picks it when installed). A GET's nonce write
        # overlaps the route on PostgreSQL; a POST's is done before the route runs: both are figures.
        for method in ("GET", "POST"):
            signed_ms, plain_ms = uvloop.run(_measure(protected, baseline, key_id, secret, count, label, progress,
                                                      report.failures, method=method))
            _figure(report, label, signed_ms, plain_ms, method)
    finally:
        for engine in engines:
            engine.dispose()


def run(count: int, *, postgres_url: str | None = None, progress: ProgressFn = no_progress) -> Report:
    started = time.perf_counter()
    report = Report("auth", {"requests": count, "warmup": WARMUP})
    report.notes["measured"] = (
        "AuthenticationMiddleware (key read, HMAC-SHA256 check, nonce insert, rate-limit counter, on the "
        "non-durable bookkeeping engine) + requires('ledger:read'), called in process as ASGI on uvloop"
    )
    with tempfile.TemporaryDirectory(prefix="clearhouse-bench-auth-") as tmp:
        directory = Path(tmp)
        try:
            _backend(report, "sqlite", f"sqlite:///{directory / 'auth.db'}", count, progress)
        except Exception as error:  # noqa: BLE001 - reported as a failure, never swallowed
            report.failures.append(f"sqlite: {type(error).__name__}: {error}")
        server = None
        try:
            if postgres_url:
                server = PostgresServer(postgres_url, "given")
            else:
                progress("postgresql: starting server", 0, 1)
                server = PostgresServer.start(directory / "postgresql")
                progress("postgresql: starting server", 1, 1)
            with server.fresh_database("auth") as url:
                _backend(report, "postgresql", url, count, progress)
            report.notes["postgresql"] = f"server {server.description}"
        except Exception as error:  # noqa: BLE001
            report.failures.append(f"postgresql: {type(error).__name__}: {error}")
        finally:
            if server is not None:
                server.stop()
    report.seconds = time.perf_counter() - started
    return report


def main(*, quick: bool, as_json: bool) -> int:
    from rich.console import Console

    count = QUICK_REQUESTS if quick else FULL_REQUESTS
    with progress_bar(Console(stderr=True)) as progress:
        report = run(count, postgres_url=os.environ.get(POSTGRES_URL_ENV) or None, progress=progress)
    return emit(report, as_json=as_json)
