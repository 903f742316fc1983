"""Defects found in session 12 (2026-11-24), each held by a test through the API."""

from __future__ import annotations

from datetime import timedelta

import pytest

from clearhouse.channels.connectors import sandbox
from clearhouse.channels.protocol import REFUNDED, ChannelResult
from clearhouse.kit import clock
from clearhouse.payments import service as payments
from tests.channels import notification_wire as wire
from tests.payments.orders.support import CARD
from tests.payments.support import balances, ledger_verifies, set_plan

WECHAT_PATH = "/v1/channels/sandbox_wechat/notifications"


def _paid_wechat(app, shop, anonymous_client, amount: int) -> dict:
    wechat = app.state.channels["sandbox_wechat"]
    payment = shop.post("/v1/payments", json={"amount": amount, "currency": "CNY", "method": "wechat_pay"}).json()
    wechat.pay(payment["attempts"][0]["id"])
    headers, body = wire.sent(wechat)
    assert anonymous_client.post(WECHAT_PATH, headers=headers, content=body).is_success
    return payment


def _timeline(shop, payment_id: str) -> list[str]:
    return [event["type"] for event in shop.get(f"/v1/payments/{payment_id}").json()["timeline"]]


class TestARefundOfAnotherSum:
    def test_a_refund_notification_of_another_sum_or_currency_is_not_booked(
            self, app, anonymous_client, merchant_client_factory):
        shop, merchant_id = merchant_client_factory()
        wechat = app.state.channels["sandbox_wechat"]
        payment = _paid_wechat(app, shop, anonymous_client, 8800)
        owed = balances(app, merchant_id, channel="sandbox_wechat")["merchant"]
        refund = shop.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 3000}).json()
        assert refund["status"] == "pending"
        wechat.sweep()  # the channel completes it: its genuine notification, changed below
        genuine = wire.sent(wechat)
        for n, (amount, currency) in enumerate(((2999, "CNY"), (3000, "USD"), (2999, "CNY"))):
            document = wire.decode("sandbox_wechat", wechat, *genuine)
            document["body"]["id"] = f"forged-{n}"  # another message each time, not a duplicate
            document["resource"]["amount"].update(refund=amount, payer_refund=amount, currency=currency)
            headers, body = wire.encode("sandbox_wechat", wechat, document)
            assert anonymous_client.post(WECHAT_PATH, headers=headers, content=body).is_success  # acknowledged

        assert shop.get(f"/v1/refunds/{refund['id']}").json()["status"] == "pending"
        view = shop.get(f"/v1/payments/{payment['id']}").json()
        assert view["amount_refunded"] == 0
        too_much = shop.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 5801})
        assert too_much.json()["code"] == "refund_exceeds_captured"  # its 3000 are still reserved
        mismatches = [e for e in view["timeline"] if e["type"] == "refund_amount_mismatch"]
        assert [(e["detail"]["received"], e["detail"]["received_currency"]) for e in mismatches] == [
            (2999, "CNY"), (3000, "USD")]  # once per sum
        assert balances(app, merchant_id, channel="sandbox_wechat")["merchant"] == owed  # nothing posted
        ledger_verifies(app)

        # The channel's own notification, of the refund's sum, completes it.
        assert anonymous_client.post(WECHAT_PATH, headers=genuine[0], content=genuine[1]).is_success
        assert shop.get(f"/v1/refunds/{refund['id']}").json()["status"] == "succeeded"
        assert shop.get(f"/v1/payments/{payment['id']}").json()["amount_refunded"] == 3000
        ledger_verifies(app)

    def test_a_refund_the_channel_answers_with_another_sum_stays_pending(self, app, merchant_client_factory,
                                                                         monkeypatch):
        shop, merchant_id = merchant_client_factory()
        payment = shop.post("/v1/payments", json={"amount": 10000, "currency": "CNY", "method": "card",
                                                  "payment_details": CARD}).json()
        assert payment["status"] == "succeeded"
        owed = balances(app, merchant_id)["merchant"]
        card = app.state.channels["sandbox_card"]
        monkeypatch.setattr(card, "refund", lambda reference, refund_id, amount, currency: ChannelResult(
            REFUNDED, refund_id, external_id="r-1", amount=amount * 10, currency=currency))
        monkeypatch.setattr(card, "query", lambda reference: ChannelResult(
            REFUNDED, reference, external_id="r-1", amount=25000, currency="CNY"))

        refund = shop.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 2500})
        assert refund.status_code == 201, refund.text
        assert refund.json()["status"] == "pending"
        payments.resolve_pending_refunds(payments.Runtime.of(app), older_than_seconds=-1)  # asks: the same answer
        assert shop.get(f"/v1/refunds/{refund.json()['id']}").json()["status"] == "pending"
        assert _timeline(shop, payment["id"]).count("refund_amount_mismatch") == 1
        assert balances(app, merchant_id)["merchant"] == owed
        ledger_verifies(app)


class TestARefundPastItsDeadline:
    def test_is_sent_once_more_and_succeeds_when_the_channel_is_back(self, app, merchant_client_factory):
        shop, merchant_id = merchant_client_factory()
        payment = shop.post("/v1/payments", json={"amount": 10000, "currency": "CNY", "method": "card",
                                                  "payment_details": CARD}).json()
        card = app.state.channels["sandbox_card"]
        card.faults = sandbox.FaultProfile(error_rate=1.0)  # fails without acting
        refund = shop.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 2500}).json()
        assert refund["status"] == "pending"
        card.faults = sandbox.FaultProfile()  # back, just after the deadline
        with clock.frozen(clock.now() + payments.REFUND_RESEND_FOR + timedelta(minutes=1)):
            assert payments.resolve_pending_refunds(payments.Runtime.of(app), older_than_seconds=-1) == 1
        assert shop.get(f"/v1/refunds/{refund['id']}").json()["status"] == "succeeded"
        assert shop.get(f"/v1/payments/{payment['id']}").json()["amount_refunded"] == 2500
        ledger_verifies(app)


class TestARefundTheMerchantCannotCover:
    def test_a_full_refund_under_a_kept_fee_is_a_receivable_reported_on_the_timeline(
            self, app, client, merchant_client_factory):
        shop, merchant_id = merchant_client_factory()
        set_plan(client, merchant_id, [{"percent": "2.9", "fixed": 30, "refund_fee_policy": "none"}])
        payment = shop.post("/v1/payments", json={"amount": 10000, "currency": "CNY", "method": "card",
                                                  "payment_details": CARD}).json()
        part = shop.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 5000}).json()
        assert part["status"] == "succeeded"
        assert "merchant_balance_negative" not in _timeline(shop, payment["id"])  # 46.80 still owed to it
        rest = shop.post(f"/v1/payments/{payment['id']}/refunds", json={}).json()
        assert rest["status"] == "succeeded"
        # The platform keeps its 3.20 fee: the merchant gave back 100.00 of the 96.80 it was owed.
        assert balances(app, merchant_id)["merchant"] == -320
        [event] = [e for e in shop.get(f"/v1/payments/{payment['id']}").json()["timeline"]
                   if e["type"] == "merchant_balance_negative"]
        assert (event["detail"]["refund"], event["detail"]["balance"]) == (rest["id"], -320)
        ledger_verifies(app)


class TestAnOrderRefundedByHandInPart:
    def test_is_refunded_only_when_every_refund_has_succeeded(self, app, merchant_client_factory, monkeypatch):
        from clearhouse.channels.protocol import DECLINED, NOT_FOUND, ChannelError
        from clearhouse.payments.orders import service as orders
        from clearhouse.payments.orders.tasks import advance_orders
        from tests.payments.orders.support import undeliverable_order

        shop, merchant_id = merchant_client_factory()
        runtime = payments.Runtime.of(app)
        real_order_refund = orders.refund
        monkeypatch.setattr(orders, "refund", lambda rt, order_id: "crashed")  # the request dies before it
        order = undeliverable_order(app, shop)
        monkeypatch.setattr(orders, "refund", real_order_refund)
        card = app.state.channels["sandbox_card"]
        real_refund, real_query = card.refund, card.query

        def down(*args, **kwargs):
            raise ChannelError("the channel failed and did not act")

        monkeypatch.setattr(card, "refund", down)
        by_hand = shop.post(f"/v1/payments/{order['payment_id']}/refunds", json={"amount": 200}).json()
        assert by_hand["status"] == "pending"
        monkeypatch.setattr(card, "refund", real_refund)
        advance_orders(runtime, older_than_seconds=-1)  # the order's own refund takes the other 400
        assert shop.get(f"/v1/payments/{order['payment_id']}").json()["amount_refunded"] == 400
        assert shop.get(f"/v1/orders/{order['id']}").json()["status"] == "refunding"  # 200 still on its way

        # The channel never had the one by hand, and now refuses it: the buyer is 200 short.
        monkeypatch.setattr(card, "query", lambda reference: ChannelResult(NOT_FOUND, reference))
        monkeypatch.setattr(card, "refund", lambda reference, refund_id, amount, currency: ChannelResult(
            DECLINED, refund_id, decline_code="refund_refused"))
        payments.resolve_pending_refunds(runtime, older_than_seconds=-1)
        assert shop.get(f"/v1/refunds/{by_hand['id']}").json()["status"] == "failed"
        for _ in range(2):
            advance_orders(runtime, older_than_seconds=-1)
        view = shop.get(f"/v1/orders/{order['id']}").json()
        assert view["status"] == "refunding"  # not refunded: the buyer is owed 200
        short = [s for s in view["steps"] if s["step"] == "refund" and s["status"] == "failed"]
        assert [s["detail"]["code"] for s in short] == ["refunded_short"]  # once, however many passes
        assert short[0]["detail"]["short"] == 200

        # An operator refunds the rest by hand: the order is done.
        monkeypatch.setattr(card, "refund", real_refund)
        monkeypatch.setattr(card, "query", real_query)
        rest = shop.post(f"/v1/payments/{order['payment_id']}/refunds", json={}).json()
        assert (rest["status"], rest["amount"]) == ("succeeded", 200)
        advance_orders(runtime, older_than_seconds=-1)
        assert shop.get(f"/v1/orders/{order['id']}").json()["status"] == "refunded"
        assert balances(app, merchant_id)["merchant"] == 0
        ledger_verifies(app)


def _held(shop, amount: int = 2004) -> dict:
    payment = shop.post("/v1/payments", json={"amount": amount, "currency": "CNY", "method": "card",
                                              "capture_method": "manual", "payment_details": CARD}).json()
    assert payment["status"] == "requires_capture", payment
    return payment


class TestACaptureTheChannelDidNotAnswer:
    def test_its_409_is_not_kept_against_the_key_and_the_retry_finds_the_capture(
            self, app, merchant_client_factory, monkeypatch):
        from clearhouse.channels.protocol import ChannelTimeout

        shop, merchant_id = merchant_client_factory()
        payment = _held(shop)
        card = app.state.channels["sandbox_card"]
        real_capture = card.capture

        def captured_but_silent(*args, **kwargs):
            real_capture(*args, **kwargs)  # the channel takes the money; its answer is lost
            raise ChannelTimeout("no answer in time")

        monkeypatch.setattr(card, "capture", captured_but_silent)
        real_query = card.query
        monkeypatch.setattr(card, "query", lambda reference: (_ for _ in ()).throw(ChannelTimeout("no answer")))
        headers = {"Idempotency-Key": "capture-1"}
        first = shop.post(f"/v1/payments/{payment['id']}/capture", json={"amount": 1500}, headers=headers)
        assert first.status_code == 409 and first.json()["code"] == "outcome_unconfirmed"
        assert first.headers["Retry-After"] == "5"
        monkeypatch.setattr(card, "capture", real_capture)
        monkeypatch.setattr(card, "query", real_query)
        again = shop.post(f"/v1/payments/{payment['id']}/capture", json={"amount": 1500}, headers=headers)
        assert again.status_code == 200, again.text
        assert "Idempotent-Replayed" not in again.headers
        assert (again.json()["status"], again.json()["amount_captured"]) == ("succeeded", 1500)
        replayed = shop.post(f"/v1/payments/{payment['id']}/capture", json={"amount": 1500}, headers=headers)
        assert replayed.headers["Idempotent-Replayed"] == "true" and replayed.json() == again.json()
        assert card.query(payment["attempts"][0]["id"]).captured_amount == 1500  # captured once
        ledger_verifies(app)


class TestAnExpiredHoldTheChannelCannotBeAskedAbout:
    def test_is_kept_until_the_channel_answers_and_then_posted_for_what_it_took(
            self, app, merchant_client_factory, monkeypatch):
        from clearhouse.channels.protocol import ChannelUnavailable

        shop, merchant_id = merchant_client_factory()
        payment = _held(shop)
        reference = payment["attempts"][0]["id"]
        card = app.state.channels["sandbox_card"]
        card.capture(reference, 1500, "CNY")  # a capture whose answer we never had
        real_cancel, real_query = card.cancel, card.query

        def down(*args, **kwargs):
            raise ChannelUnavailable("scheduled outage")

        monkeypatch.setattr(card, "cancel", down)
        monkeypatch.setattr(card, "query", down)
        runtime = payments.Runtime.of(app)
        later = clock.now() + timedelta(hours=169)
        with clock.frozen(later):
            assert payments.expire_authorizations(runtime) == 1
        view = shop.get(f"/v1/payments/{payment['id']}").json()
        assert view["status"] == "requires_capture"  # not released blind
        assert view["authorization_expires_at"] == clock.rfc3339(later + payments.RECHECK_UNREACHABLE)
        with clock.frozen(later + timedelta(minutes=5)):
            assert payments.expire_authorizations(runtime) == 0  # not before its time

        monkeypatch.setattr(card, "cancel", real_cancel)
        monkeypatch.setattr(card, "query", real_query)
        with clock.frozen(later + timedelta(minutes=16)):
            assert payments.expire_authorizations(runtime) == 1
        view = shop.get(f"/v1/payments/{payment['id']}").json()
        assert (view["status"], view["amount_captured"]) == ("succeeded", 1500)
        ledger_verifies(app)

    def test_a_hold_the_channel_still_holds_is_cancelled_again_not_forgotten(
            self, app, merchant_client_factory, monkeypatch):
        from clearhouse.channels.protocol import ChannelError

        shop, merchant_id = merchant_client_factory()
        payment = _held(shop)
        reference = payment["attempts"][0]["id"]
        card = app.state.channels["sandbox_card"]
        real_cancel, real_query = card.cancel, card.query
        monkeypatch.setattr(card, "cancel", lambda reference: (_ for _ in ()).throw(ChannelError("failed")))
        # The channel's status: the customer's funds are still blocked there.
        monkeypatch.setattr(card, "query", lambda reference: ChannelResult("authorized", reference))
        runtime = payments.Runtime.of(app)
        later = clock.now() + timedelta(hours=169)
        with clock.frozen(later):
            assert payments.expire_authorizations(runtime) == 1
        assert shop.get(f"/v1/payments/{payment['id']}").json()["status"] == "requires_capture"
        monkeypatch.setattr(card, "cancel", real_cancel)
        monkeypatch.setattr(card, "query", real_query)
        with clock.frozen(later + timedelta(minutes=16)):
            assert payments.expire_authorizations(runtime) == 1
        assert shop.get(f"/v1/payments/{payment['id']}").json()["status"] == "canceled"
        assert card.query(reference).status == "canceled"  # released at the channel too
        assert balances(app, merchant_id)["merchant"] == 0
        ledger_verifies(app)


class TestTheMerchantIsToldAPaymentIsProcessing:
    def test_a_transfer_awaiting_its_funds_emits_payment_processing_once(self, app, merchant_client_factory):
        from tests.payments.support import events_of

        shop, _ = merchant_client_factory()
        payment = shop.post("/v1/payments", json={"amount": 2500, "currency": "EUR",
                                                  "method": "bank_transfer"}).json()
        assert payment["status"] == "processing" and payment["next_action"] is not None
        [event] = events_of(shop, "payment.processing")
        assert event["data"]["id"] == payment["id"]
        assert event["data"]["next_action"] == payment["next_action"]  # the instructions, for the buyer
        payments.resolve_stuck(payments.Runtime.of(app), older_than_seconds=-1)  # asked: still pending
        assert len(events_of(shop, "payment.processing")) == 1

    def test_a_card_payment_whose_channel_timed_out_emits_payment_processing(self, app, merchant_client_factory,
                                                                           monkeypatch):
        from clearhouse.channels.protocol import ChannelTimeout
        from tests.payments.support import events_of

        shop, _ = merchant_client_factory()
        card = app.state.channels["sandbox_card"]
        monkeypatch.setattr(card, "authorize", lambda request: (_ for _ in ()).throw(ChannelTimeout("slow")))
        monkeypatch.setattr(card, "query", lambda reference: (_ for _ in ()).throw(ChannelTimeout("slow")))
        payment = shop.post("/v1/payments", json={"amount": 1000, "currency": "CNY", "method": "card",
                                                  "payment_details": CARD}).json()
        assert payment["status"] == "processing"
        assert [e["data"]["id"] for e in events_of(shop, "payment.processing")] == [payment["id"]]

    def test_a_payment_that_succeeds_at_once_emits_no_processing(self, merchant_client_factory):
        from tests.payments.support import events_of

        shop, _ = merchant_client_factory()
        shop.post("/v1/payments", json={"amount": 1000, "currency": "CNY", "method": "card", "payment_details": CARD})
        assert events_of(shop, "payment.processing") == []
        assert len(events_of(shop, "*")) == len(events_of(shop, "payment.succeeded")) == 1  # "*" is every type


class TestADeletedEndpointsLog:
    def test_is_kept_and_readable(self, merchant_client_factory):
        from tests.payments.support import add_endpoint, deliveries_of

        shop, _ = merchant_client_factory()
        endpoint = add_endpoint(shop, ["payment.succeeded"])
        shop.post("/v1/payments", json={"amount": 1000, "currency": "CNY", "method": "card", "payment_details": CARD})
        [pending] = deliveries_of(shop, endpoint)
        assert shop.delete(f"/v1/webhook_endpoints/{endpoint}").status_code == 200
        [kept] = deliveries_of(shop, endpoint)
        assert (kept["id"], kept["status"]) == (pending["id"], "canceled")
        assert shop.get(f"/v1/webhook_endpoints/{endpoint}").status_code == 404  # the endpoint itself is gone
        other, _ = merchant_client_factory("Other")
        assert other.get(f"/v1/webhook_endpoints/{endpoint}/deliveries").status_code == 404  # still not theirs


class TestARoutePreviewIsAskedAsAPaymentWouldBe:
    @pytest.mark.parametrize(("change", "code"), [
        ({"currency": "XAU"}, "unknown_currency"), ({"currency": "cny"}, "unknown_currency"),
        ({"country": "cn"}, "invalid_country"), ({"amount": 10**15 + 1}, "validation_error"),
    ])
    def test_what_no_payment_could_be_is_refused(self, client, change, code):
        answer = client.post("/v1/routing/preview", json={"method": "card", "currency": "CNY", "amount": 100,
                                                          **change})
        assert answer.status_code == 422 and answer.json()["code"] == code, answer.text
        assert client.post("/v1/routing/preview", json={"method": "card", "currency": "CNY",
                                                        "amount": 10**15}).status_code == 200


class TestFeePlanRanges:
    @pytest.mark.parametrize("rule", [{"percent": "101"}, {"percent": "-1"}, {"percent": "1000"},
                                      {"percent": "1", "fixed": -1}, {"percent": "1", "minimum": -5},
                                      {"percent": "1", "minimum": 2**53}, {"percent": "1", "fixed": 10**30}])
    def test_a_value_out_of_range_is_invalid_fee_plan(self, client, merchant_client_factory, rule):
        _, merchant_id = merchant_client_factory()
        answer = client.put(f"/v1/fee_plans/{merchant_id}", json={"rules": [rule]})
        assert answer.status_code == 422 and answer.json()["code"] == "invalid_fee_plan", answer.text
        assert client.get(f"/v1/fee_plans/{merchant_id}").json()["rules"] == []

    @pytest.mark.parametrize("rule", [{"percent": 1}, {"percent": "1%"}, {"percent": "1", "fixed": "5"}])
    def test_a_value_of_the_wrong_shape_is_a_validation_error(self, client, merchant_client_factory, rule):
        _, merchant_id = merchant_client_factory()
        answer = client.put(f"/v1/fee_plans/{merchant_id}", json={"rules": [rule]})
        assert answer.status_code == 422 and answer.json()["code"] == "validation_error", answer.text
