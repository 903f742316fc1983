"""The background worker: periodic jobs that keep the system moving.

Two kinds of job. Database jobs run in one transaction each: voiding pending ledger
transfers past their timeout, forgetting idempotency keys, nonces and rate-limit counters
past their windows, marking overdue approvals expired. Runtime jobs talk to the outside
and open their own short transactions around each call: asking channels about payments and
refunds we never heard back from, releasing expired authorizations, delivering webhooks,
and (for the sandbox channels) sending their queued notifications. A failing job is
logged and retried on the next tick, never fatal.

The jobs that send over HTTP to others (``SENDING``: merchants' webhook endpoints, the sandbox
channels' notifications) run on a thread of their own, on the same interval: an endpoint that
is slow or dead holds up its own deliveries (each up to the webhook timeout), never the payment
jobs, which settle payments and refunds on time whatever the endpoints do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from clearhouse.identity import approvals, ratelimit
from clearhouse.identity import service as identity
from clearhouse.kit import idempotency
from clearhouse.kit.db import transact
from clearhouse.kit.settings import Settings, get_settings
from clearhouse.ledger import service as ledger

log = structlog.get_logger(__name__)

JOBS: list[tuple[str, Callable[[Session], int]]] = [
    ("ledger.void_expired", ledger.void_expired),
    ("idempotency.purge_expired", idempotency.purge_expired),
    ("identity.purge_nonces", lambda session: identity.purge_nonces(session, get_settings().nonce_ttl_seconds)),
    ("identity.purge_rate_limits", ratelimit.purge),
    ("identity.expire_approvals", approvals.expire_overdue),
]


def runtime_jobs() -> list[tuple[str, Callable[[Any], int]]]:
    """Jobs that need the channels, the router and the cipher (a ``payments.service.Runtime``)."""
    from clearhouse.channels.connectors import sandbox
    from clearhouse.payments import service as payments
    from clearhouse.payments.orders import tasks as orders
    from clearhouse.webhooks import delivery

    return [
        *payments.JOBS,
        ("orders.advance", orders.advance_orders),
        ("webhooks.deliver_due", lambda rt: delivery.deliver_due(rt.engine, rt.settings, rt.cipher)),
        ("sandbox.deliver_notifications", lambda rt: sandbox.deliver_due_over_http(rt.settings)),
    ]


SENDING = frozenset({"webhooks.deliver_due", "sandbox.deliver_notifications"})
"""The runtime jobs that wait on others' HTTP servers: ``run_forever`` runs them on their own thread."""


def build_runtime(settings: Settings, engine: Engine) -> Any:
    """A runtime for a worker process of its own (``clearhouse worker``). It opens the master keys
    (``webhooks.deliver_due`` decrypts endpoint secrets, ``orders.advance`` delivered codes), so a
    missing key or an unusable database raises here, at start-up, not in every job."""
    from clearhouse.channels import connectors  # noqa: F401  (registers the built-in channels)
    from clearhouse.channels.protocol import ChannelSet
    from clearhouse.channels.routing import Router
    from clearhouse.kit.crypto import FieldCipher, load_master_keys
    from clearhouse.payments.service import Runtime

    channels = ChannelSet(settings)
    return Runtime(engine=engine, channels=channels, router=Router(channels),
                   cipher=FieldCipher.open(engine, load_master_keys(settings)), settings=settings)


def _run(name: str, job: Callable[[], int], done: dict[str, int]) -> None:
    try:
        done[name] = job()
    except Exception:
        log.exception("worker_job_failed", job=name)
        done[name] = -1
    if done[name] > 0:
        log.info("worker_job", job=name, count=done[name])


def run_once(engine: Engine, runtime: Any = None, *, sending: bool = True, others: bool = True) -> dict[str, int]:
    """Every job once, in order (``clearhouse worker --once``). ``sending``/``others``: whether to run the jobs
    in ``SENDING`` and the rest (``run_forever`` runs each kind on its own thread)."""
    done: dict[str, int] = {}
    if others:
        for name, job in JOBS:
            _run(name, lambda j=job: transact(engine, j, retry_integrity=True), done)
    if runtime is not None:
        for name, job in runtime_jobs():
            if (name in SENDING and sending) or (name not in SENDING and others):
                _run(name, lambda j=job: j(runtime), done)
    return done


def run_forever(engine: Engine, interval: float, stop: threading.Event, runtime: Any = None) -> None:
    log.info("worker_started", interval=interval)
    sender = None
    if runtime is not None:
        sender = threading.Thread(target=_every, args=(interval, stop, lambda: run_once(engine, runtime, others=False)),
                                  name="worker-sending", daemon=True)
        sender.start()
    _every(interval, stop, lambda: run_once(engine, runtime, sending=False))
    if sender is not None:
        sender.join()
    log.info("worker_stopped")


def _every(interval: float, stop: threading.Event, tick: Callable[[], Any]) -> None:
    while not stop.is_set():
        tick()
        stop.wait(interval)


def start_in_thread(engine: Engine, interval: float, runtime: Any = None) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=run_forever, args=(engine, interval, stop, runtime), name="worker", daemon=True)
    thread.start()
    return thread, stop
