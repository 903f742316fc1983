"""Defects an exploratory test found (session 15): the worker and a cancel acting on a payment whose
channel call was still in flight, an approval for a payment already given up dropped in silence, a
timeout the status query resolved counted as a success, and a misleading answer to a cancel that lost
a race with a capture. Each is held by a test through the HTTP API; the channel's timing is simulated
by wrapping the sandbox card's calls and freezing the clock."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from structlog.testing import capture_logs

from clearhouse.channels.connectors import sandbox
from clearhouse.kit import clock
from clearhouse.payments import service as payments
from tests.payments.support import balances, card_body, ledger_verifies


def _in_flight(app: Any, monkeypatch: Any, while_in_flight: Any) -> dict[str, Any]:
    """The card channel's authorize runs ``while_in_flight(payment_id)`` before it reaches the channel
    (the call is on its way: the channel has not seen the reference yet); returns what it gave back."""
    connector = app.state.channels["sandbox_card"]
    real = connector.authorize
    seen: dict[str, Any] = {}

    def authorize(request: Any) -> Any:
        seen["during"] = while_in_flight(request.payment_id)
        return real(request)

    monkeypatch.setattr(connector, "authorize", authorize)
    return seen


def _worker_at(app: Any, seconds: float, **kwargs: Any) -> int:
    """``payments.resolve_stuck`` as a worker process runs it, ``seconds`` from now."""
    with clock.frozen(clock.now() + timedelta(seconds=seconds)):
        return payments.resolve_stuck(payments.Runtime.of(app), **kwargs)


class TestTheWorkerLeavesACallInFlightAlone:
    """Finding 1: at 30 s the worker asked the channel about an authorize still in flight, took its
    "not found" for "never sent" and failed the payment; the approval that landed then was dropped."""

    def test_an_authorize_in_flight_past_30_s_is_not_failed_by_the_worker(self, app, merchant_client_factory,
                                                                          monkeypatch):
        app.state.settings.channel_timeout_seconds = 60
        shop, merchant_id = merchant_client_factory()
        seen = _in_flight(app, monkeypatch, lambda _pid: _worker_at(app, 45))
        payment = shop.post("/v1/payments", json=card_body(10000))
        assert payment.status_code == 201, payment.text
        assert seen["during"] == 0  # not stuck: our call may still reach the channel
        view = shop.get(f"/v1/payments/{payment.json()['id']}").json()
        assert (view["status"], view["failure_code"]) == ("succeeded", None)
        assert [a["status"] for a in view["attempts"]] == ["approved"]
        assert balances(app, merchant_id)["merchant"] == 10000 - 60
        ledger_verifies(app)

    def test_a_call_that_never_left_is_failed_once_the_window_derived_from_the_timeout_has_passed(
            self, app, merchant_client_factory, monkeypatch):
        app.state.settings.channel_timeout_seconds = 60  # in flight for at most 2 x 60 s + 30 s

        def dies(_request: Any) -> Any:
            raise RuntimeError("the process died before the call left")

        monkeypatch.setattr(app.state.channels["sandbox_card"], "authorize", dies)
        shop, _ = merchant_client_factory()
        assert shop.post("/v1/payments", json=card_body(10000)).status_code == 500
        payment = shop.get("/v1/payments").json()["data"][0]
        assert payment["status"] == "processing"
        assert _worker_at(app, 31) == 0
        assert _worker_at(app, 149) == 0
        assert shop.get(f"/v1/payments/{payment['id']}").json()["status"] == "processing"
        assert _worker_at(app, 151) == 1
        view = shop.get(f"/v1/payments/{payment['id']}").json()
        assert (view["status"], view["failure_code"]) == ("failed", "channel_not_reached")

    def test_an_approval_for_a_failed_payment_is_logged_and_on_the_timeline(self, app, merchant_client_factory,
                                                                            monkeypatch):
        shop, merchant_id = merchant_client_factory()
        # An operator forces the worker (every payment "stuck" now) while the call is in flight.
        _in_flight(app, monkeypatch, lambda _pid: _worker_at(app, 0, older_than_seconds=-1))
        with capture_logs() as logs:
            payment = shop.post("/v1/payments", json=card_body(10000)).json()
        assert (payment["status"], payment["failure_code"]) == ("failed", "channel_not_reached")
        attempt = payment["attempts"][0]["id"]
        said = [e for e in logs if e["event"] == "channel_approved_final_payment"]
        assert len(said) == 1 and said[0]["log_level"] == "error"
        assert {k: said[0][k] for k in ("payment", "attempt", "amount", "currency", "status")} == {
            "payment": payment["id"], "attempt": attempt, "amount": 10000, "currency": "CNY", "status": "approved"}
        timeline = shop.get(f"/v1/payments/{payment['id']}").json()["timeline"]
        events = [e for e in timeline if e["type"] == "channel_approved_final_payment"]
        assert len(events) == 1
        assert {k: events[0]["detail"][k] for k in ("attempt", "amount", "currency", "current", "source")} == {
            "attempt": attempt, "amount": 10000, "currency": "CNY", "current": "failed", "source": "authorize"}
        assert balances(app, merchant_id)["merchant"] == 0  # nothing booked: an operator settles it
        ledger_verifies(app)


class TestACancelWhileTheAuthorizeIsInFlight:
    """Finding 2: the channel's "not found" to a cancel sent while the authorize was in flight was taken
    for "nothing to cancel": the payment said canceled, and the customer was charged."""

    def test_the_cancel_is_refused_and_changes_nothing(self, app, merchant_client_factory, monkeypatch):
        shop, merchant_id = merchant_client_factory()
        seen = _in_flight(app, monkeypatch, lambda pid: shop.post(f"/v1/payments/{pid}/cancel", json={}))
        payment = shop.post("/v1/payments", json=card_body(10000)).json()
        canceled = seen["during"]
        assert canceled.status_code == 409, canceled.text
        assert canceled.json()["code"] == "channel_not_answering"
        assert canceled.headers["Retry-After"] == "5"
        view = shop.get(f"/v1/payments/{payment['id']}").json()
        assert (view["status"], view["amount_captured"]) == ("succeeded", 10000)
        assert [a["status"] for a in view["attempts"]] == ["approved"]
        assert not [e for e in view["timeline"] if e["to_status"] == "canceled"]
        assert balances(app, merchant_id)["merchant"] == 10000 - 60
        ledger_verifies(app)

    def test_a_payment_whose_call_never_left_is_still_canceled_after_the_window(self, app, merchant_client_factory,
                                                                               monkeypatch):
        def dies(_request: Any) -> Any:
            raise RuntimeError("the process died before the call left")

        monkeypatch.setattr(app.state.channels["sandbox_card"], "authorize", dies)
        shop, _ = merchant_client_factory()
        assert shop.post("/v1/payments", json=card_body(10000)).status_code == 500
        payment = shop.get("/v1/payments").json()["data"][0]
        assert shop.post(f"/v1/payments/{payment['id']}/cancel", json={}).status_code == 409  # may be in flight
        window = payments.in_flight_window(payments.Runtime.of(app))
        with clock.frozen(clock.now() + window + timedelta(seconds=1)):
            canceled = shop.post(f"/v1/payments/{payment['id']}/cancel", json={})
        assert canceled.status_code == 200, canceled.text
        assert canceled.json()["status"] == "canceled"


class TestATimeoutTheQueryResolves:
    """Finding 3: a timeout the status query resolved counted as a success for the breaker, and the
    attempt and the timeline did not say it had timed out."""

    def test_it_counts_as_a_timeout_and_says_so(self, app, client, merchant_client_factory):
        shop, _ = merchant_client_factory()
        app.state.channels["sandbox_card"].faults = sandbox.FaultProfile(timeout_rate=1.0, seed=1)
        for _ in range(5):
            payment = shop.post("/v1/payments", json=card_body(1000)).json()
            assert payment["status"] == "succeeded"  # the query found the approval
            (attempt,) = payment["attempts"]
            assert attempt["status"] == "approved"
            assert "did not answer in time" in attempt["message"]
            assert "query answered approved" in attempt["message"]
            assert attempt["latency_ms"] is not None
            timeline = shop.get(f"/v1/payments/{payment['id']}").json()["timeline"]
            changed = [e for e in timeline if e["type"] == "status_changed"]
            assert changed[-1]["detail"]["source"] == "query"
        card = shop.get("/v1/channels/sandbox_card").json()  # a test key sees its own mode's circuit
        assert card["breaker"]["state"] == "open"
        assert card["breaker"]["consecutive_failures"] == 5
        assert card["breaker"]["opened_because"] == "5 failures in a row"
        assert card["success_rate"] == 0.0
        refused = shop.post("/v1/payments", json=card_body(1000)).json()
        assert (refused["status"], refused["failure_code"]) == ("failed", "no_channel_available")
        ledger_verifies(app)


class TestACancelThatLosesTheRaceWithACapture:
    """Finding 4: a cancel that reached the channel after our own capture said the capture's answer had
    been lost."""

    def test_the_answer_says_the_payment_was_captured_by_a_recorded_capture(self, app, merchant_client_factory,
                                                                          monkeypatch):
        shop, merchant_id = merchant_client_factory()
        payment = shop.post("/v1/payments", json=card_body(10000, capture_method="manual")).json()
        assert payment["status"] == "requires_capture"
        connector = app.state.channels["sandbox_card"]
        real = connector.cancel
        captured: dict[str, Any] = {}

        def cancel(reference: str) -> Any:
            captured["answer"] = shop.post(f"/v1/payments/{payment['id']}/capture", json={})  # got there first
            return real(reference)

        monkeypatch.setattr(connector, "cancel", cancel)
        canceled = shop.post(f"/v1/payments/{payment['id']}/cancel", json={})
        assert captured["answer"].status_code == 200, captured["answer"].text
        assert canceled.status_code == 409
        message = canceled.json()["detail"]
        assert canceled.json()["code"] == "payment_state_conflict"
        assert "the payment was captured (10000 of 10000) by a capture recorded before this cancel" in message
        assert "answer was lost" not in message
        view = shop.get(f"/v1/payments/{payment['id']}").json()
        assert (view["status"], view["amount_captured"]) == ("succeeded", 10000)
        assert balances(app, merchant_id)["merchant"] == 10000 - 60
        ledger_verifies(app)
