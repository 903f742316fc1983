"""Defects an exploratory test of the payment channels found (session 13, 2026-11-24), each held by a
test through the HTTP API: notifications applied across channels, channel costs the ledger booked
differently from the channel's own statement, the fee of a partial capture, misleading answers after a
capture whose answer was lost, and error codes and texts that did not say what happened."""

from __future__ import annotations

import io
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from clearhouse.channels.connectors import sandbox
from clearhouse.channels.protocol import ChannelTimeout, ChannelUnavailable
from clearhouse.kit import clock
from clearhouse.kit.db import transact
from clearhouse.payments import service as payments
from clearhouse.payments.models import ChannelNotification
from tests.channels import notification_wire as wire
from tests.payments.support import (
    balances,
    card_body,
    deliver_notifications,
    ledger_verifies,
    paid_by_customer,
    set_plan,
)

NOON = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)  # one UTC day for the card and the bank
NOON_IN_CHINA = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)  # one day in China and in UTC alike


def _reconcile(client: Any, app: Any, channel: str, day: Any) -> dict[str, Any]:
    """The channel's own statement of ``day`` reconciled against our books, through the API."""
    statement = app.state.channels[channel].statement(day)
    assert client.put(f"/v1/recon_rules/{channel}", json={"rules": {"timing_cutoff_minutes": 0}}).status_code == 200
    run = client.post("/v1/reconciliations", data={
        "format": "csv", "channel": channel, "mapping": statement.layout, "statement_date": day.isoformat(),
    }, files={"file": (statement.filename, io.BytesIO(statement.content), "text/csv")})
    assert run.status_code == 201, run.text
    return run.json()


def _outcomes(app: Any, reference: str) -> list[tuple[str, str]]:
    """(channel, outcome) of every notification stored about ``reference``."""
    table = ChannelNotification.__table__
    return transact(app.state.engine, lambda s: [tuple(r) for r in s.execute(
        select(table.c.channel, table.c.outcome).where(table.c.reference == reference)).all()])


def _card_says_approved(app: Any, reference: str, amount: int) -> tuple[dict[str, str], bytes]:
    """A notification correctly signed with the card channel's own key, saying ``reference`` was paid."""
    now = clock.now()
    event = {"id": f"evt_{secrets.token_hex(8)}", "type": "payment.approved", "created": int(now.timestamp()),
             "data": {"reference": reference, "external_id": "ch_forged", "status": "approved", "amount": amount,
                      "currency": "CNY", "decline_code": None, "occurred_at": clock.rfc3339(now)}}
    return wire.encode("sandbox_card", app.state.channels["sandbox_card"], {"body": event})


def _bank_says_refunded(app: Any, refund_id: str, payment_reference: str, amount: str) -> tuple[dict, bytes]:
    """A return-transfer notification correctly signed with the bank's own key, about ``refund_id``."""
    today = clock.now().date().isoformat()
    body = {"notification_id": f"bn_{secrets.token_hex(8)}", "event": "return_transfer.booked",
            "end_to_end_id": refund_id, "bank_reference": "RT-forged", "reference_code": None,
            "amount": {"value": amount, "currency": "CNY"}, "booking_date": today, "value_date": today,
            "original_end_to_end_id": payment_reference}
    return wire.encode("sandbox_bank", app.state.channels["sandbox_bank"], {"body": body})


class TestANotificationSpeaksOnlyForItsOwnChannel:
    """Finding 1: a message verified with one channel's key settled another channel's payment or refund."""

    def test_a_card_notification_naming_an_alipay_payment_is_acknowledged_and_not_applied(
            self, app, anonymous_client, merchant_client_factory):
        shop, merchant_id = merchant_client_factory()
        payment = shop.post("/v1/payments", json={"amount": 7300, "currency": "CNY", "method": "alipay"}).json()
        assert payment["status"] == "requires_action"
        reference = payment["attempts"][0]["id"]
        headers, body = _card_says_approved(app, reference, 7300)
        answer = anonymous_client.post("/v1/channels/sandbox_card/notifications", headers=headers, content=body)
        assert answer.status_code == 200 and answer.json() == {"received": True}  # acknowledged: not resent

        view = shop.get(f"/v1/payments/{payment['id']}").json()
        assert (view["status"], view["amount_captured"], view["ledger_transfer_id"]) == ("requires_action", 0, None)
        assert [a["status"] for a in view["attempts"]] == ["requires_action"]
        assert balances(app, merchant_id, channel="sandbox_alipay") == {"clearing": 0, "cost": 0, "merchant": 0,
                                                                         "fees": 0}
        assert _outcomes(app, reference) == [("sandbox_card", "wrong_channel")]  # recorded

        # Alipay's own word still counts: the QR code expires unpaid, and the payment fails.
        with clock.frozen(clock.now() + timedelta(minutes=16)):
            alipay = app.state.channels["sandbox_alipay"]
            alipay.sweep()
            headers, body = wire.sent(alipay)
            assert anonymous_client.post("/v1/channels/sandbox_alipay/notifications", headers=headers,
                                         content=body).status_code == 200
        view = shop.get(f"/v1/payments/{payment['id']}").json()
        assert (view["status"], view["failure_code"]) == ("failed", "expired")
        assert balances(app, merchant_id, channel="sandbox_alipay")["merchant"] == 0
        ledger_verifies(app)

    def test_a_bank_notification_naming_a_wechat_refund_leaves_it_pending(
            self, app, anonymous_client, merchant_client_factory):
        shop, merchant_id = merchant_client_factory()
        payment = paid_by_customer(app, shop, anonymous_client, "sandbox_wechat", 8800)
        owed = balances(app, merchant_id, channel="sandbox_wechat")
        refund = shop.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 3000}).json()
        assert refund["status"] == "pending"  # WeChat Pay completes refunds later
        headers, body = _bank_says_refunded(app, refund["id"], payment["attempts"][0]["id"], "30.00")
        answer = anonymous_client.post("/v1/channels/sandbox_bank/notifications", headers=headers, content=body)
        assert answer.status_code == 200

        assert shop.get(f"/v1/refunds/{refund['id']}").json()["status"] == "pending"
        assert shop.get(f"/v1/payments/{payment['id']}").json()["amount_refunded"] == 0
        assert balances(app, merchant_id, channel="sandbox_wechat") == owed  # nothing posted
        assert _outcomes(app, refund["id"]) == [("sandbox_bank", "wrong_channel")]

        deliver_notifications(app, anonymous_client)  # WeChat Pay's own notification completes it
        assert shop.get(f"/v1/refunds/{refund['id']}").json()["status"] == "succeeded"
        assert shop.get(f"/v1/payments/{payment['id']}").json()["amount_refunded"] == 3000
        ledger_verifies(app)

    def test_an_orders_alipay_payment_is_not_paid_by_a_card_notification(
            self, app, anonymous_client, merchant_client_factory):
        from clearhouse.payments.orders.tasks import advance_orders
        from tests.payments.orders.support import make_product, order_body

        shop, merchant_id = merchant_client_factory()
        product = make_product(shop, ["K-1"], amount=5000)
        order = shop.post("/v1/orders", json=order_body(product["id"], method="alipay"))
        assert order.status_code == 201, order.text
        payment = shop.get(f"/v1/payments/{order.json()['payment_id']}").json()
        headers, body = _card_says_approved(app, payment["attempts"][0]["id"], 5000)
        assert anonymous_client.post("/v1/channels/sandbox_card/notifications", headers=headers,
                                     content=body).status_code == 200
        advance_orders(payments.Runtime.of(app), older_than_seconds=-1)
        assert shop.get(f"/v1/orders/{order.json()['id']}").json()["status"] == "awaiting_payment"
        assert shop.get(f"/v1/orders/{order.json()['id']}/codes").status_code == 409  # nothing delivered
        assert shop.get(f"/v1/payments/{payment['id']}").json()["status"] == "requires_action"
        ledger_verifies(app)


class TestTheChannelCostIsWhatTheChannelCharges:
    """Findings 2, 3 and 4: the ledger's channel cost is the channel's own statement, cent for cent."""

    def test_a_bank_transfer_below_the_banks_fixed_charge_books_the_whole_charge(
            self, app, client, anonymous_client, merchant_client_factory):
        shop, merchant_id = merchant_client_factory()
        with clock.frozen(NOON):
            payment = paid_by_customer(app, shop, anonymous_client, "sandbox_bank", 30)
        # A 0.30 transfer: the bank keeps its 0.50, so it nets 0.20 against what else it holds for us.
        # The merchant is owed 0.30 (0.6 % of 0.30 rounds to no fee); the platform's loss shows.
        assert balances(app, merchant_id, channel="sandbox_bank") == {"clearing": -20, "cost": 50, "merchant": 30,
                                                                       "fees": 0}
        entry = client.get(f"/v1/ledger/transfers/{payment['ledger_transfer_id']}").json()
        assert sorted((p["direction"], p["amount"]) for p in entry["postings"]) == [
            ("credit", 20), ("credit", 30), ("debit", 50)]
        answer = _reconcile(client, app, "sandbox_bank", NOON.date())
        assert answer["case_count"] == 0, answer["classes"]
        assert answer["classes"]["matched"]["count"] == 1
        ledger_verifies(app)

    @pytest.mark.parametrize(("channel", "amount", "parts", "fee_charged", "fee_back"), [
        # 0.55 % of 66.00 is 0.363: 0.36 charged. Per refund, half-up, 10.01 and 55.99 would get 0.06 + 0.31.
        ("sandbox_alipay", 6600, [1001, 5599], 36, [5, 31]),
        # 0.6 % of 25.00 is 0.15. Per refund, 12.50 and 12.50 would get 0.08 + 0.08.
        ("sandbox_wechat", 2500, [1250, 1250], 15, [8, 7]),
    ])
    @pytest.mark.parametrize("bearer", ["platform", "merchant"])
    def test_partial_qr_refunds_that_add_up_to_the_payment_give_back_exactly_the_fee_charged(
            self, app, client, anonymous_client, merchant_client_factory, channel, amount, parts, fee_charged,
            fee_back, bearer):
        shop, merchant_id = merchant_client_factory()
        set_plan(client, merchant_id, [{"percent": "0.6", "refund_cost_bearer": bearer}])
        with clock.frozen(NOON_IN_CHINA):
            payment = paid_by_customer(app, shop, anonymous_client, channel, amount)
            assert balances(app, merchant_id, channel=channel)["cost"] == fee_charged
            for part in parts:
                refund = shop.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": part})
                assert refund.status_code == 201, refund.text
            deliver_notifications(app, anonymous_client)
            view = shop.get(f"/v1/payments/{payment['id']}").json()
            assert view["amount_refunded"] == amount
            movements = app.state.channels[channel].movements_of(NOON_IN_CHINA.date())
        # The channel's statement: the fee it charged, and what each refund gets back, adding up to it.
        assert sorted(m["fee"] for m in movements) == sorted([fee_charged, *(-back for back in fee_back)])
        # Refunded in full: every account the payment touched is back where it started.
        assert balances(app, merchant_id, channel=channel) == {"clearing": 0, "cost": 0, "merchant": 0, "fees": 0}
        answer = _reconcile(client, app, channel, NOON_IN_CHINA.date())
        assert answer["case_count"] == 0, answer["classes"]
        ledger_verifies(app)

    def test_a_partial_capture_books_the_channels_cost_of_the_captured_amount(
            self, app, client, merchant_client_factory):
        shop, merchant_id = merchant_client_factory()
        with clock.frozen(NOON):
            held = shop.post("/v1/payments", json=card_body(132, capture_method="manual")).json()
            captured = shop.post(f"/v1/payments/{held['id']}/capture", json={"amount": 131})
            assert captured.status_code == 200, captured.text
        # 0.38 % of 1.31 is 0.004978: the acquirer charges nothing on it (scaling the hold's 0.01 of 1.32
        # down to 1.31 gave 0.01). The plan's 0.6 % of 1.31 is 0.01.
        assert balances(app, merchant_id) == {"clearing": 131, "cost": 0, "merchant": 130, "fees": 1}
        entry = client.get(f"/v1/ledger/transfers/{captured.json()['ledger_transfer_id']}").json()
        assert entry["status"] == "posted"
        answer = _reconcile(client, app, "sandbox_card", NOON.date())
        assert answer["case_count"] == 0, answer["classes"]
        assert answer["classes"]["matched"]["count"] == 1
        ledger_verifies(app)


class TestAPartialCaptureIsPricedAsAPaymentOfWhatWasCaptured:
    """Finding 5: the plan's minimum and fixed part apply to a partial capture as to any payment."""

    def test_capturing_10_00_of_a_100_00_hold_costs_what_a_10_00_payment_costs(
            self, app, client, merchant_client_factory):
        shop, merchant_id = merchant_client_factory()
        set_plan(client, merchant_id, [{"method": "card", "currency": "CNY", "percent": "2.9", "fixed": 30,
                                        "minimum": 50}])
        direct = shop.post("/v1/payments", json=card_body(1000)).json()
        assert direct["fees"][0]["amount"] == 59  # 2.9 % of 10.00 + 0.30
        held = shop.post("/v1/payments", json=card_body(10000, capture_method="manual")).json()
        assert held["fees"][0]["amount"] == 320
        captured = shop.post(f"/v1/payments/{held['id']}/capture", json={"amount": 1000}).json()
        assert captured["fees"][0] == {**direct["fees"][0], "amount": 59}
        assert captured["net_amount"] == direct["net_amount"] == 941
        assert balances(app, merchant_id)["fees"] == 59 + 59
        assert balances(app, merchant_id)["merchant"] == 941 + 941
        ledger_verifies(app)


class TestADeclineSaysWhatWasDeclined:
    """Finding 7: a QR or bank payment's decline does not say a card was declined."""

    @pytest.mark.parametrize("method", ["alipay", "wechat_pay", "bank_transfer"])
    def test_a_declined_qr_or_bank_payment_does_not_speak_of_a_card(self, merchant_client_factory, method):
        shop, _ = merchant_client_factory()
        payment = shop.post("/v1/payments", json={"amount": 40201, "currency": "CNY", "method": method}).json()
        assert (payment["status"], payment["failure_code"]) == ("failed", "do_not_honor")
        for message in (payment["failure_message"], payment["attempts"][0]["message"]):
            assert "card" not in message.lower() and "declined" in message, message
        card = shop.post("/v1/payments", json=card_body(40201)).json()  # a declined card still says so
        assert card["failure_message"] == "The card was declined (card_declined)"


class TestFeePlanDecimals:
    """Finding 8: errors.md's code for a percentage with more than 6 decimals."""

    def test_a_percentage_with_seven_decimals_is_invalid_fee_plan(self, client, merchant_client_factory):
        _, merchant_id = merchant_client_factory()
        answer = client.put(f"/v1/fee_plans/{merchant_id}", json={"rules": [{"percent": "0.1234567"}]})
        assert answer.status_code == 422 and answer.json()["code"] == "invalid_fee_plan", answer.text
        assert client.get(f"/v1/fee_plans/{merchant_id}").json()["rules"] == []
        assert client.put(f"/v1/fee_plans/{merchant_id}", json={"rules": [{"percent": "0.123456"}]}).status_code == 200


class TestARefundWithNothingLeft:
    """Finding 10."""

    def test_says_nothing_is_left_to_refund(self, app, merchant_client_factory):
        shop, _ = merchant_client_factory()
        payment = shop.post("/v1/payments", json=card_body(500)).json()
        assert shop.post(f"/v1/payments/{payment['id']}/refunds", json={}).json()["status"] == "succeeded"
        again = shop.post(f"/v1/payments/{payment['id']}/refunds", json={})
        assert again.status_code == 409 and again.json()["code"] == "refund_exceeds_captured"
        assert again.json()["detail"].startswith("nothing is left to refund"), again.json()["detail"]
        ledger_verifies(app)


def _held(shop: Any, amount: int = 8002) -> dict[str, Any]:
    payment = shop.post("/v1/payments", json=card_body(amount, capture_method="manual")).json()
    assert payment["status"] == "requires_capture", payment
    return payment


def _unanswerable(monkeypatch: Any, card: Any) -> None:
    """The card channel acts on every call and then times out, and its status cannot be read."""
    card.faults = sandbox.FaultProfile(timeout_rate=1.0)
    monkeypatch.setattr(card, "query", lambda reference: (_ for _ in ()).throw(ChannelUnavailable("down")))


class TestAfterACaptureWhoseAnswerWasLost:
    """Finding 11: every answer tells the truth about what the channel did."""

    def test_a_capture_that_times_out_is_confirmed_by_asking_the_channel(self, app, merchant_client_factory):
        shop, merchant_id = merchant_client_factory()
        payment = _held(shop)
        card = app.state.channels["sandbox_card"]
        card.faults = sandbox.FaultProfile(timeout_rate=1.0)  # it captures, then its answer is lost
        captured = shop.post(f"/v1/payments/{payment['id']}/capture", json={"amount": 5000})
        assert captured.status_code == 200, captured.text
        assert (captured.json()["status"], captured.json()["amount_captured"]) == ("succeeded", 5000)
        rest = shop.post(f"/v1/payments/{payment['id']}/capture", json={})
        assert rest.status_code == 409 and "succeeded" in rest.json()["detail"]
        assert card.query(payment["attempts"][0]["id"]).captured_amount == 5000  # taken once
        assert balances(app, merchant_id)["merchant"] == 5000 - 30
        ledger_verifies(app)

    def test_an_unconfirmed_capture_says_so_and_a_later_capture_records_what_the_channel_took(
            self, app, merchant_client_factory, monkeypatch):
        shop, merchant_id = merchant_client_factory()
        payment = _held(shop)
        card = app.state.channels["sandbox_card"]
        _unanswerable(monkeypatch, card)
        lost = shop.post(f"/v1/payments/{payment['id']}/capture", json={"amount": 5000})
        assert lost.status_code == 409 and lost.json()["code"] == "outcome_unconfirmed", lost.text
        assert lost.headers["Retry-After"] == "5"
        assert "nothing changed" not in lost.json()["detail"]
        view = shop.get(f"/v1/payments/{payment['id']}").json()
        assert (view["status"], view["amount_captured"]) == ("requires_capture", 0)
        assert "capture_unconfirmed" in [event["type"] for event in view["timeline"]]
        monkeypatch.undo()
        card.faults = sandbox.FaultProfile()

        # The integrator asks for the whole hold: the channel captured 50.00 already and captures once.
        whole = shop.post(f"/v1/payments/{payment['id']}/capture", json={})
        assert whole.status_code == 409 and whole.json()["code"] == "payment_state_conflict"
        assert "already captured 5000" in whole.json()["detail"], whole.json()["detail"]
        view = shop.get(f"/v1/payments/{payment['id']}").json()
        assert (view["status"], view["amount_captured"], view["fees"][0]["amount"]) == ("succeeded", 5000, 30)
        assert balances(app, merchant_id) == {"clearing": 5000 - 19, "cost": 19, "merchant": 5000 - 30, "fees": 30}
        ledger_verifies(app)

    def test_a_cancel_after_an_unconfirmed_capture_says_the_hold_was_captured(
            self, app, merchant_client_factory, monkeypatch):
        shop, merchant_id = merchant_client_factory()
        payment = _held(shop)
        card = app.state.channels["sandbox_card"]
        _unanswerable(monkeypatch, card)
        assert shop.post(f"/v1/payments/{payment['id']}/capture", json={"amount": 5000}).status_code == 409
        monkeypatch.undo()
        card.faults = sandbox.FaultProfile()
        refused = shop.post(f"/v1/payments/{payment['id']}/cancel", json={})
        assert refused.status_code == 409 and refused.json()["code"] == "payment_state_conflict"
        detail = refused.json()["detail"]
        assert "captured 5000" in detail and "customer" not in detail, detail
        view = shop.get(f"/v1/payments/{payment['id']}").json()
        assert (view["status"], view["amount_captured"]) == ("succeeded", 5000)
        ledger_verifies(app)

    def test_an_attempt_settled_by_the_worker_says_how_it_was_settled(self, app, merchant_client_factory, monkeypatch):
        """No longer that the worker will ask (session 13), and still that the call had timed out (session 20)."""
        shop, _ = merchant_client_factory()
        card = app.state.channels["sandbox_card"]
        real_query = card.query
        monkeypatch.setattr(card, "query", lambda reference: (_ for _ in ()).throw(ChannelTimeout("slow")))
        payment = shop.post("/v1/payments", json=card_body(40801)).json()  # charged, then the answer is lost
        assert payment["status"] == "processing"
        assert "did not answer" in payment["attempts"][0]["message"]
        monkeypatch.setattr(card, "query", real_query)
        payments.resolve_stuck(payments.Runtime.of(app), older_than_seconds=-1)
        view = shop.get(f"/v1/payments/{payment['id']}").json()
        assert view["status"] == "succeeded"
        assert (view["attempts"][0]["status"], view["attempts"][0]["message"]) == (
            "approved", "the channel did not answer in time; the worker's query answered approved")
        ledger_verifies(app)


class TestAWalletPaymentsErrors:
    """The docs tester's finding 15: the documented codes, and no hint at a field the API refuses."""

    def test_each_case_has_its_documented_code(self, app, merchant_client_factory):
        shop, _ = merchant_client_factory()
        opened = shop.post("/v1/wallets", json={"customer_id": "cus_w1", "currency": "CNY"})
        assert opened.status_code == 201, opened.text
        nobody = shop.post("/v1/payments", json={"amount": 1000, "currency": "CNY", "method": "wallet"})
        assert nobody.status_code == 422 and nobody.json()["code"] == "payment_details_required"
        assert "wallet_id" not in nobody.json()["detail"]
        other = shop.post("/v1/payments", json={"amount": 600, "currency": "USD", "method": "wallet",
                                                "customer": {"id": "cus_w1"}})
        assert other.status_code == 422 and other.json()["code"] == "currency_not_supported", other.text
        assert "CNY" in other.json()["detail"]
        stranger = shop.post("/v1/payments", json={"amount": 600, "currency": "CNY", "method": "wallet",
                                                   "customer": {"id": "cus_none"}})
        assert stranger.status_code == 404 and stranger.json()["code"] == "wallet_not_found"
        assert shop.get("/v1/payments").json()["data"] == []  # nothing stored
