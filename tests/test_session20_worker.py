"""A slow or dead webhook endpoint never holds up the worker's payment jobs (issue #4: "A dead endpoint never
slows payments"). The fault tester (session 20) measured a WeChat payment taking 5.0 s to settle, against 1.1 s,
behind three slow endpoints: the worker ran every job one after another, deliveries included. The jobs that
send over HTTP now run on a thread of their own."""

from __future__ import annotations

import threading
import time

from clearhouse import worker
from clearhouse.payments import service as payments
from clearhouse.webhooks import delivery


def test_payment_jobs_keep_their_pace_while_a_delivery_hangs(app, monkeypatch):
    release, delivering = threading.Event(), threading.Event()
    settled: list[float] = []

    def hanging_delivery(*_args, **_kwargs) -> int:
        delivering.set()
        release.wait(10)  # an endpoint that does not answer
        return 1

    monkeypatch.setattr(delivery, "deliver_due", hanging_delivery)
    monkeypatch.setattr(payments, "JOBS", [("payments.resolve_stuck",
                                            lambda rt: settled.append(time.monotonic()) or 0)])
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever,
                              args=(app.state.engine, 0.02, stop, payments.Runtime.of(app)), daemon=True)
    thread.start()
    try:
        assert delivering.wait(5), "the delivery job never ran"
        started = len(settled)
        time.sleep(0.5)
        # The delivery is still hanging, and the payment job ran on its interval all the while.
        assert not release.is_set() and len(settled) - started >= 5, settled
    finally:
        release.set()
        stop.set()
        thread.join(5)
    assert not thread.is_alive()


def test_once_runs_every_job_in_order(app, monkeypatch):
    ran: list[str] = []
    monkeypatch.setattr(delivery, "deliver_due", lambda *_a, **_k: ran.append("deliver") or 0)
    monkeypatch.setattr(payments, "JOBS", [("payments.resolve_stuck", lambda rt: ran.append("stuck") or 0)])
    done = worker.run_once(app.state.engine, payments.Runtime.of(app))
    assert ran == ["stuck", "deliver"]
    assert {"payments.resolve_stuck", "webhooks.deliver_due", "sandbox.deliver_notifications",
            "ledger.void_expired"} <= set(done)
