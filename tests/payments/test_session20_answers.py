"""Answers that say what happened (the session 20 testers): two captures of ours racing, and a retry during an
outage after a capture that timed out unanswered. Through the HTTP API, the money checked."""

from __future__ import annotations

import pytest

from clearhouse.channels.protocol import ChannelTimeout, ChannelUnavailable
from clearhouse.kit.db import transact
from clearhouse.payments import service as payments
from tests.payments.support import ledger_verifies
from tests.payments.test_capture_and_cancel import _authorize

CARD = "sandbox_card"


def test_a_capture_racing_another_of_ours_says_the_other_was_recorded_first(app, merchant_client_factory,
                                                                            monkeypatch):
    shop, _ = merchant_client_factory()
    payment = _authorize(shop)
    connector, runtime = app.state.channels[CARD], payments.Runtime.of(app)
    real, raced = connector.capture, []

    def other_capture_first(reference, amount, currency):
        if not raced:  # the other capture (3000) reaches the channel and is recorded before ours (7000)
            raced.append(real(reference, 3000, currency))
            assert transact(app.state.engine, lambda s: payments._captured(s, runtime, payment["id"], 3000))
        return real(reference, amount, currency)

    monkeypatch.setattr(connector, "capture", other_capture_first)
    answer = shop.post(f"/v1/payments/{payment['id']}/capture", json={"amount": 7000})
    assert answer.status_code == 409, answer.text
    assert answer.json()["code"] == "payment_state_conflict"
    assert answer.json()["detail"] == ("the payment was captured (3000 of 10000) by another capture recorded before "
                                       "this one reached the channel, which captures an authorization once; it is "
                                       "succeeded")
    assert "lost" not in answer.json()["detail"]
    after = shop.get(f"/v1/payments/{payment['id']}").json()
    assert (after["status"], after["amount_captured"]) == ("succeeded", 3000)
    ledger_verifies(app)


def test_a_retry_during_an_outage_after_an_unconfirmed_capture_does_not_say_nothing_changed(
        app, merchant_client_factory, monkeypatch):
    shop, _ = merchant_client_factory()
    payment = _authorize(shop)
    connector = app.state.channels[CARD]

    def timed_out(*_args):
        raise ChannelTimeout("no answer in 10 s")

    def down(*_args):
        raise ChannelUnavailable("outage")

    monkeypatch.setattr(connector, "capture", timed_out)
    monkeypatch.setattr(connector, "query", down)
    first = shop.post(f"/v1/payments/{payment['id']}/capture", json={})
    assert (first.status_code, first.json()["code"]) == (409, "outcome_unconfirmed"), first.text
    monkeypatch.setattr(connector, "capture", down)
    retry = shop.post(f"/v1/payments/{payment['id']}/capture", json={})
    assert (retry.status_code, retry.json()["code"]) == (409, "channel_not_answering"), retry.text
    detail = retry.json()["detail"]
    assert "nothing changed" not in detail and "the earlier capture is still unconfirmed and may have acted" in detail
    # With the channel back, the retry says what happened: the first capture had not been made, this one is.
    monkeypatch.undo()
    done = shop.post(f"/v1/payments/{payment['id']}/capture", json={})
    assert (done.status_code, done.json()["status"]) == (200, "succeeded"), done.text
    ledger_verifies(app)


def test_a_suspended_merchant_takes_no_payment_through_the_platform_either(client, merchant_client_factory):
    """Its own keys are refused; a platform key took payments for it all the same (the integrator tester, L4).
    Money going back (a refund of an earlier payment) still goes."""
    from tests.payments.orders.support import CARD, make_product, order_body
    from tests.payments.support import card_body

    shop, merchant_id = merchant_client_factory()
    earlier = shop.post("/v1/payments", json=card_body(5000)).json()
    product = make_product(shop, ["SUSP-1"])
    assert client.patch(f"/v1/merchants/{merchant_id}", json={"status": "suspended"}).status_code == 200
    for path, body in (("/v1/payments", {**card_body(1000), "merchant_id": merchant_id}),
                       ("/v1/orders", order_body(product["id"], details=CARD))):
        refused = client.post(path, json=body)
        assert (refused.status_code, refused.json()["code"]) == (403, "merchant_suspended"), refused.text
        assert f"merchant {merchant_id} is suspended" in refused.json()["detail"]
    back = client.post(f"/v1/payments/{earlier['id']}/refunds", json={})
    assert (back.status_code, back.json()["status"]) == (201, "succeeded"), back.text
    assert client.patch(f"/v1/merchants/{merchant_id}", json={"status": "active"}).status_code == 200
    assert [p["id"] for p in shop.get("/v1/payments").json()["data"]] == [earlier["id"]]
    assert shop.get("/v1/orders").json()["data"] == []


def test_the_worker_keeps_the_timeout_on_the_attempt_it_settles(app, merchant_client_factory, monkeypatch):
    """The attempt of a call that timed out lost its message and latency when the worker settled it (the fault
    tester, L1): the timeline never said the call had timed out."""
    from clearhouse.channels.connectors import sandbox
    from tests.payments.support import card_body

    shop, _ = merchant_client_factory()
    connector = app.state.channels[CARD]

    def down(*_args):
        raise ChannelUnavailable("outage")

    monkeypatch.setattr(connector, "query", down)  # the question after the timeout goes unanswered
    payment = shop.post("/v1/payments", json=card_body(sandbox.AMOUNT_TIMEOUT_AFTER_ACTING)).json()
    (attempt,) = payment["attempts"]
    assert (payment["status"], attempt["status"]) == ("processing", "timeout")
    assert attempt["latency_ms"] is not None
    monkeypatch.undo()
    assert payments.resolve_stuck(payments.Runtime.of(app), older_than_seconds=0) == 1
    settled = shop.get(f"/v1/payments/{payment['id']}").json()
    (attempt,) = settled["attempts"]
    assert (settled["status"], attempt["status"]) == ("succeeded", "approved")
    assert attempt["message"].startswith("the channel did not answer in time; the worker's query answered approved")
    assert attempt["latency_ms"] is not None
    ledger_verifies(app)


def test_an_approval_of_another_sum_on_a_hold_is_an_amount_mismatch(app, merchant_client_factory):
    """A channel's "approved" for 999.99 on a hold of 100.00 was taken as a capture of unknown amount (the fault
    tester, L5); it is an ``amount_mismatch``, as for any other payment: nothing posted, the hold kept."""
    from clearhouse.channels.protocol import APPROVED, ChannelResult

    shop, _ = merchant_client_factory()
    payment = _authorize(shop)
    reference = payment["attempts"][0]["id"]
    runtime = payments.Runtime.of(app)
    answer = ChannelResult(APPROVED, reference, amount=99_999, currency="CNY", captured_amount=99_999)
    outcome = transact(app.state.engine, lambda s: payments.apply_result(s, runtime, reference, answer,
                                                                        channel=CARD, source="notification"))
    assert outcome == "amount_mismatch"
    after = shop.get(f"/v1/payments/{payment['id']}").json()
    assert (after["status"], after["amount_captured"]) == ("requires_capture", 0)
    (event,) = [e for e in after["timeline"] if e["type"] == "amount_mismatch"]
    assert (event["detail"]["expected"], event["detail"]["received"]) == (10_000, 99_999)
    ledger_verifies(app)


class TestACaptureWhoseServerDied:
    """The fault tester's M4: the server died between the capture call and its answer; the customer was charged
    and the payment stayed ``requires_capture``, with nothing on its timeline, until a retry or the hold's expiry
    (up to 168 h). The request is now written first, and the worker asks the channel about it."""

    def _requested_and_lost(self, app, shop, monkeypatch, *, captured: bool):
        payment = _authorize(shop)
        connector = app.state.channels[CARD]
        real = connector.capture

        def dies(reference, amount, currency):
            if captured:
                real(reference, amount, currency)  # the channel captures...
            raise SystemExit("the server died")  # ...and the process never hears of it

        monkeypatch.setattr(connector, "capture", dies)
        runtime = payments.Runtime.of(app)
        from clearhouse.identity.permissions import Principal

        principal = Principal(kind="api_key", id="ck_x", role="platform", merchant_id=None,
                              permissions=frozenset({"payments:write"}), mode="test")
        with pytest.raises(SystemExit):
            payments.capture(runtime, principal, payment["id"], 4000)
        monkeypatch.undo()
        return payment, runtime

    def test_the_worker_posts_a_capture_the_channel_made(self, app, merchant_client_factory, monkeypatch):
        shop, _ = merchant_client_factory()
        payment, runtime = self._requested_and_lost(app, shop, monkeypatch, captured=True)
        assert shop.get(f"/v1/payments/{payment['id']}").json()["status"] == "requires_capture"
        assert payments.resolve_captures(runtime) == 0  # not before the in-flight window
        assert payments.resolve_captures(runtime, older_than_seconds=-1) == 1
        after = shop.get(f"/v1/payments/{payment['id']}").json()
        assert (after["status"], after["amount_captured"]) == ("succeeded", 4000)
        types = [e["type"] for e in after["timeline"]]
        assert types[-2:] == ["capture_requested", "status_changed"], types
        assert payments.resolve_captures(runtime, older_than_seconds=-1) == 0
        ledger_verifies(app)

    def test_a_hold_the_channel_still_holds_is_checked_once(self, app, merchant_client_factory, monkeypatch):
        shop, _ = merchant_client_factory()
        payment, runtime = self._requested_and_lost(app, shop, monkeypatch, captured=False)
        assert payments.resolve_captures(runtime, older_than_seconds=-1) == 1
        after = shop.get(f"/v1/payments/{payment['id']}").json()
        assert after["status"] == "requires_capture"
        assert [(e["type"], e["detail"].get("status")) for e in after["timeline"]][-1] == ("capture_checked",
                                                                                           "authorized")
        assert payments.resolve_captures(runtime, older_than_seconds=-1) == 0  # asked once, not on every pass
        ledger_verifies(app)
