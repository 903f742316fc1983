"""The background worker: periodic jobs that keep the system moving.

Today: voiding pending ledger transfers past their timeout, forgetting idempotency
keys past their 24 h window, request nonces past their window and old rate-limit
counters, and marking overdue approvals expired. Each job runs in its own
transaction; a failing job is logged and retried on the next tick, never fatal.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from clearhouse.identity import approvals, ratelimit
from clearhouse.identity import service as identity
from clearhouse.kit import idempotency
from clearhouse.kit.db import transact
from clearhouse.kit.settings import get_settings
from clearhouse.ledger import service as ledger

log = structlog.get_logger(__name__)

JOBS: list[tuple[str, Callable[[Session], int]]] = [
    ("ledger.void_expired", ledger.void_expired),
    ("idempotency.purge_expired", idempotency.purge_expired),
    ("identity.purge_nonces", lambda session: identity.purge_nonces(session, get_settings().nonce_ttl_seconds)),
    ("identity.purge_rate_limits", ratelimit.purge),
    ("identity.expire_approvals", approvals.expire_overdue),
]


def run_once(engine: Engine) -> dict[str, int]:
    done: dict[str, int] = {}
    for name, job in JOBS:
        try:
            done[name] = transact(engine, job, retry_integrity=True)
        except Exception:
            log.exception("worker_job_failed", job=name)
            done[name] = -1
        if done[name] > 0:
            log.info("worker_job", job=name, count=done[name])
    return done


def run_forever(engine: Engine, interval: float, stop: threading.Event) -> None:
    log.info("worker_started", interval=interval)
    while not stop.is_set():
        run_once(engine)
        stop.wait(interval)
    log.info("worker_stopped")


def start_in_thread(engine: Engine, interval: float) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=run_forever, args=(engine, interval, stop), name="worker", daemon=True)
    thread.start()
    return thread, stop
