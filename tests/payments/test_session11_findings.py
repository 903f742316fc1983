"""Defects an exploratory test of orders, wallets and channel notifications found (2026-11-24, session
11), each held by a test through the API."""

from __future__ import annotations

import pytest

from clearhouse.payments.schemas import MAX_PAYMENT_AMOUNT
from tests.payments.orders.support import CARD, undeliverable_order
from tests.payments.support import ledger_verifies


class TestProducts:
    def test_a_price_no_payment_could_take_is_refused(self, merchant_client_factory):
        shop, _ = merchant_client_factory()
        for amount in (MAX_PAYMENT_AMOUNT + 1, 2**63 - 1):
            refused = shop.post("/v1/products", json={"name": "a", "price": {"amount": amount, "currency": "CNY"}})
            assert refused.status_code == 422, refused.text
            assert refused.json()["code"] == "validation_error"
        assert shop.get("/v1/products").json()["data"] == []
        product = shop.post("/v1/products", json={"name": "a", "price": {"amount": MAX_PAYMENT_AMOUNT,
                                                                         "currency": "CNY"}}).json()
        patched = shop.patch(f"/v1/products/{product['id']}",
                             json={"price": {"amount": MAX_PAYMENT_AMOUNT + 1, "currency": "CNY"}})
        assert patched.status_code == 422
        assert shop.get(f"/v1/products/{product['id']}").json()["price"]["amount"] == MAX_PAYMENT_AMOUNT

    @pytest.mark.parametrize("active", ["no", "off", 0, "false", 1, "true", None])
    def test_active_must_be_a_json_boolean(self, merchant_client_factory, active):
        shop, _ = merchant_client_factory()
        refused = shop.post("/v1/products", json={"name": "a", "price": {"amount": 100, "currency": "CNY"},
                                                  "active": active})
        assert refused.status_code == 422, refused.text
        product = shop.post("/v1/products", json={"name": "a", "price": {"amount": 100, "currency": "CNY"}}).json()
        if active is not None:  # null in a PATCH means "leave it"
            assert shop.patch(f"/v1/products/{product['id']}", json={"active": active}).status_code == 422
        assert shop.get(f"/v1/products/{product['id']}").json()["active"] is True

    def test_a_webhook_endpoints_enabled_must_be_a_json_boolean(self, merchant_client_factory):
        shop, _ = merchant_client_factory()
        refused = shop.post("/v1/webhook_endpoints", json={"url": "https://example.com/hook", "event_types": ["*"],
                                                           "enabled": "no"})
        assert refused.status_code == 422, refused.text
        assert shop.get("/v1/webhook_endpoints").json()["data"] == []


class TestWalletList:
    def test_wallets_are_a_page_newest_first_with_limit_and_cursor(self, merchant_client_factory):
        shop, _ = merchant_client_factory()
        other, _ = merchant_client_factory("Other")
        made = [shop.post("/v1/wallets", json={"customer_id": f"cus_{n}", "currency": "CNY"}).json()["id"]
                for n in range(5)]
        theirs = other.post("/v1/wallets", json={"customer_id": "cus_0", "currency": "CNY"}).json()["id"]
        seen, cursor = [], None
        while True:
            page = shop.get("/v1/wallets", params={"limit": 2, **({"starting_after": cursor} if cursor else {})})
            assert page.status_code == 200, page.text
            body = page.json()
            seen += [wallet["id"] for wallet in body["data"]]
            if not body["has_more"]:
                assert body["next_cursor"] is None
                break
            cursor = body["next_cursor"]
        assert seen == made[::-1]
        one = shop.get("/v1/wallets", params={"customer_id": "cus_3"}).json()["data"]
        assert [w["id"] for w in one] == [made[3]] and one[0]["balance"] == 0
        assert shop.get("/v1/wallets", params={"starting_after": theirs}).json() == {
            "data": [], "has_more": False, "next_cursor": None}
        for bad in (0, 501, "x"):
            refused = shop.get("/v1/wallets", params={"limit": bad})
            assert refused.status_code == 422 and refused.json()["code"] == "validation_error"


class TestWorkerQueries:
    def test_asking_about_a_pending_transfer_again_and_again_adds_nothing_to_its_timeline(
            self, app, merchant_client_factory):
        from clearhouse.payments import service as payments

        shop, _ = merchant_client_factory()
        payment = shop.post("/v1/payments", json={"amount": 250000, "currency": "CNY",
                                                  "method": "bank_transfer"}).json()
        assert payment["status"] == "processing"
        before = shop.get(f"/v1/payments/{payment['id']}").json()["timeline"]
        runtime = payments.Runtime.of(app)
        for _ in range(3):
            assert payments.resolve_stuck(runtime, older_than_seconds=-1) == 1  # asked; still pending
        after = shop.get(f"/v1/payments/{payment['id']}").json()
        assert after["status"] == "processing"
        assert after["timeline"] == before
        ledger_verifies(app)


class TestAnOrderThatRefundsItself:
    def test_a_refund_the_channel_failed_to_take_is_sent_again_and_the_order_ends_refunded(
            self, app, merchant_client_factory, monkeypatch):
        from clearhouse.channels.protocol import ChannelError
        from clearhouse.payments import service as payments
        from clearhouse.payments.orders import tasks
        from tests.payments.support import balances

        shop, merchant_id = merchant_client_factory()
        card = app.state.channels["sandbox_card"]
        real_refund = card.refund

        def down(*args, **kwargs):
            raise ChannelError("the channel failed and did not act")

        monkeypatch.setattr(card, "refund", down)
        order = undeliverable_order(app, shop)
        assert order["status"] == "refunding"
        payment = shop.get(f"/v1/payments/{order['payment_id']}").json()
        assert payment["amount_refunded"] == 0
        (refund,) = shop.get(f"/v1/payments/{order['payment_id']}/refunds").json()["data"]
        assert refund["status"] == "pending"  # still owed, not given up
        assert "refund_not_sent" in [event["type"] for event in payment["timeline"]]

        monkeypatch.setattr(card, "refund", real_refund)  # the channel is back
        runtime = payments.Runtime.of(app)
        assert payments.resolve_pending_refunds(runtime, older_than_seconds=-1) == 1
        assert shop.get(f"/v1/refunds/{refund['id']}").json()["status"] == "succeeded"
        tasks.advance_orders(runtime, older_than_seconds=-1)
        after = shop.get(f"/v1/orders/{order['id']}").json()
        assert after["status"] == "refunded"
        assert shop.get(f"/v1/payments/{order['payment_id']}").json()["amount_refunded"] == 600
        assert balances(app, merchant_id)["merchant"] == 0
        ledger_verifies(app)

    def test_a_refund_no_channel_ever_takes_is_given_up_after_three_days(self, app, merchant_client_factory,
                                                                          monkeypatch):
        from datetime import timedelta

        from clearhouse.channels.protocol import ChannelError
        from clearhouse.kit import clock
        from clearhouse.payments import service as payments

        shop, _ = merchant_client_factory()
        payment = shop.post("/v1/payments", json={"amount": 1000, "currency": "CNY", "method": "card",
                                                  "payment_details": CARD}).json()
        card = app.state.channels["sandbox_card"]
        monkeypatch.setattr(card, "refund", lambda *a, **k: (_ for _ in ()).throw(ChannelError("down")))
        refund = shop.post(f"/v1/payments/{payment['id']}/refunds", json={}).json()
        assert refund["status"] == "pending"
        runtime = payments.Runtime.of(app)
        for hours in (24, 48):
            with clock.frozen(clock.now() + timedelta(hours=hours)):
                payments.resolve_pending_refunds(runtime, older_than_seconds=-1)
        assert shop.get(f"/v1/refunds/{refund['id']}").json()["status"] == "pending"
        timeline = shop.get(f"/v1/payments/{payment['id']}").json()["timeline"]
        assert [e["type"] for e in timeline].count("refund_not_sent") == 1  # not once per pass
        with clock.frozen(clock.now() + timedelta(days=3, minutes=1)):
            payments.resolve_pending_refunds(runtime, older_than_seconds=-1)
        gone = shop.get(f"/v1/refunds/{refund['id']}").json()
        assert (gone["status"], gone["failure_code"]) == ("failed", "channel_never_accepted")
        after = shop.get(f"/v1/payments/{payment['id']}").json()
        assert after["amount_refunded"] == 0
        assert shop.post(f"/v1/payments/{payment['id']}/refunds", json={}).status_code == 201  # may be asked again
        ledger_verifies(app)

    def test_an_order_refunded_by_hand_in_full_ends_refunded(self, app, merchant_client_factory, monkeypatch):
        from clearhouse.payments import service as payments
        from clearhouse.payments.orders import service as orders
        from clearhouse.payments.orders import tasks

        shop, _ = merchant_client_factory()
        real = orders.refund
        monkeypatch.setattr(orders, "refund", lambda rt, order_id: "crashed")  # the request dies before it
        order = undeliverable_order(app, shop)
        monkeypatch.setattr(orders, "refund", real)
        assert order["status"] == "refunding"
        by_hand = shop.post(f"/v1/payments/{order['payment_id']}/refunds", json={"amount": 600})
        assert by_hand.status_code == 201 and by_hand.json()["status"] == "succeeded"
        tasks.advance_orders(payments.Runtime.of(app), older_than_seconds=-1)
        after = shop.get(f"/v1/orders/{order['id']}").json()
        assert after["status"] == "refunded"
        assert after["steps"][-1]["status"] == "done"
        assert len(shop.get(f"/v1/payments/{order['payment_id']}/refunds").json()["data"]) == 1  # not twice
        ledger_verifies(app)


class TestRefundList:
    def test_a_payments_refunds_are_a_page_newest_first(self, merchant_client_factory):
        shop, _ = merchant_client_factory()
        payment = shop.post("/v1/payments", json={"amount": 3000, "currency": "CNY", "method": "card",
                                                  "payment_details": CARD}).json()
        made = [shop.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 1000}).json()["id"]
                for _ in range(3)]
        first = shop.get(f"/v1/payments/{payment['id']}/refunds", params={"limit": 2}).json()
        assert [r["id"] for r in first["data"]] == made[:0:-1] and first["has_more"] is True
        rest = shop.get(f"/v1/payments/{payment['id']}/refunds",
                        params={"limit": 2, "starting_after": first["next_cursor"]}).json()
        assert [r["id"] for r in rest["data"]] == made[:1] and rest == {**rest, "has_more": False, "next_cursor": None}
        assert shop.get(f"/v1/payments/{payment['id']}/refunds", params={"limit": 501}).status_code == 422


class TestANotificationOfAnotherSum:
    def test_a_transfer_that_arrived_short_or_in_another_currency_is_not_booked_as_the_payment(
            self, app, anonymous_client, merchant_client_factory):
        import json

        from clearhouse.channels.connectors import sandbox
        from clearhouse.channels.connectors.sandbox_bank import SIGNATURE_HEADER, TIMESTAMP_HEADER, bank_signature
        from tests.payments.support import balances

        shop, merchant_id = merchant_client_factory()
        payment = shop.post("/v1/payments", json={"amount": 250000, "currency": "CNY",
                                                  "method": "bank_transfer"}).json()
        bank = app.state.channels["sandbox_bank"]
        bank.pay(payment["attempts"][0]["id"])
        sent: list[tuple[str, dict, bytes]] = []
        sandbox.deliver_due(app.state.settings, lambda path, headers, body: sent.append((path, headers, body)) or 200)
        (path, genuine_headers, genuine), = sent
        for n, amount in enumerate(({"value": "0.01", "currency": "USD"}, {"value": "2499.99", "currency": "CNY"},
                                    {"value": "2500.00", "currency": "USD"})):
            message = {**json.loads(genuine), "amount": amount, "notification_id": f"forged-{n}"}
            body = json.dumps(message).encode()
            stamp = genuine_headers[TIMESTAMP_HEADER]
            headers = {**genuine_headers, SIGNATURE_HEADER: bank_signature(bank.notification_secret, stamp, body)}
            assert anonymous_client.post(path, content=body, headers=headers).status_code == 200  # acknowledged
        view = shop.get(f"/v1/payments/{payment['id']}").json()
        assert view["status"] == "processing" and view["amount_captured"] == 0
        assert [e["type"] for e in view["timeline"]].count("amount_mismatch") == 3
        assert balances(app, merchant_id, channel="sandbox_bank")["merchant"] == 0
        # The bank's own notification, of the sum asked, completes it.
        assert anonymous_client.post(path, content=genuine, headers=genuine_headers).status_code == 200
        assert shop.get(f"/v1/payments/{payment['id']}").json()["status"] == "succeeded"
        ledger_verifies(app)


class TestARefundThatFailsByNotification:
    def test_the_channels_reason_is_the_refunds_failure_code(self, app, anonymous_client, merchant_client_factory):
        from tests.channels import notification_wire as wire

        shop, _ = merchant_client_factory()
        wechat = app.state.channels["sandbox_wechat"]
        path = "/v1/channels/sandbox_wechat/notifications"

        payment = shop.post("/v1/payments", json={"amount": 8800, "currency": "CNY", "method": "wechat_pay"}).json()
        wechat.pay(payment["attempts"][0]["id"])
        headers, body = wire.sent(wechat)
        assert anonymous_client.post(path, headers=headers, content=body).is_success
        refund = shop.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 3000}).json()
        assert refund["status"] == "pending"
        wechat.sweep()  # the channel completes it: its genuine notification, turned into a failure below
        document = wire.decode("sandbox_wechat", wechat, *wire.sent(wechat))
        document["resource"]["refund_status"] = "ABNORMAL"
        document["resource"].pop("success_time", None)
        document["body"]["event_type"] = "REFUND.ABNORMAL"
        headers, body = wire.encode("sandbox_wechat", wechat, document)
        assert anonymous_client.post(path, headers=headers, content=body).is_success
        failed = shop.get(f"/v1/refunds/{refund['id']}").json()
        assert (failed["status"], failed["failure_code"]) == ("failed", "refund_abnormal")
        assert shop.get(f"/v1/payments/{payment['id']}").json()["amount_refunded"] == 0
        ledger_verifies(app)


class TestBodiesAreReadStrictly:
    @pytest.mark.parametrize("path, body", [
        ("/v1/payments", b'{"amount": 100, "amount": 100000, "currency": "CNY", "method": "alipay"}'),
        ("/v1/products", b'{"name": "a", "price": {"amount": 1, "currency": "CNY", "amount": 9}}'),
        ("/v1/wallets", b'{"customer_id": "c", "currency": "CNY", "currency": "USD"}'),
    ])
    def test_a_key_named_twice_is_refused_and_nothing_is_made(self, merchant_client_factory, path, body):
        shop, _ = merchant_client_factory()
        response = shop.post(path, content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "malformed_request" and "more than once" in response.json()["detail"]
        assert shop.get(path).json()["data"] == []

    def test_a_number_with_thousands_of_digits_is_a_clear_400(self, merchant_client_factory):
        shop, _ = merchant_client_factory()
        body = b'{"amount": ' + b"9" * 5000 + b', "currency": "CNY", "method": "alipay"}'
        response = shop.post("/v1/payments", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400
        assert response.json()["detail"] == "a number in the body has too many digits"


class TestReviewOfTheseFixes:
    def test_an_expiry_keeps_a_hold_the_channel_says_it_captured_when_its_status_cannot_be_had(
            self, app, merchant_client_factory, monkeypatch):
        from datetime import timedelta

        from clearhouse.channels import protocol
        from clearhouse.channels.protocol import ChannelTimeout
        from clearhouse.kit import clock
        from clearhouse.payments import service as payments

        shop, merchant_id = merchant_client_factory()
        held = shop.post("/v1/payments", json={"amount": 10000, "currency": "CNY", "method": "card",
                                               "capture_method": "manual", "payment_details": CARD}).json()
        assert held["status"] == "requires_capture"
        card = app.state.channels["sandbox_card"]
        monkeypatch.setattr(card, "cancel", lambda reference: protocol.ChannelResult(protocol.APPROVED, reference))

        def no_answer(reference):
            raise ChannelTimeout("no answer")

        monkeypatch.setattr(card, "query", no_answer)
        with clock.frozen(clock.now() + timedelta(days=8)):
            assert payments.expire_authorizations(payments.Runtime.of(app)) == 1
        kept = shop.get(f"/v1/payments/{held['id']}").json()
        assert kept["status"] == "requires_capture"  # not voided: the channel said it took the money
        assert "channel_reports_captured" in [e["type"] for e in kept["timeline"]]
        ledger_verifies(app)

    def test_a_short_transfer_is_recorded_once_however_often_the_worker_asks(self, app, merchant_client_factory,
                                                                            monkeypatch):
        from clearhouse.channels import protocol
        from clearhouse.payments import service as payments

        shop, _ = merchant_client_factory()
        payment = shop.post("/v1/payments", json={"amount": 10000, "currency": "CNY",
                                                  "method": "bank_transfer"}).json()
        attempt = payment["attempts"][0]["id"]
        bank = app.state.channels["sandbox_bank"]
        monkeypatch.setattr(bank, "query", lambda reference: protocol.ChannelResult(
            protocol.APPROVED, reference, amount=9000, currency="CNY"))
        runtime = payments.Runtime.of(app)
        for _ in range(3):
            payments.resolve_stuck(runtime, older_than_seconds=-1)
        view = shop.get(f"/v1/payments/{payment['id']}").json()
        assert view["status"] == "processing"
        assert [e["type"] for e in view["timeline"]].count("amount_mismatch") == 1
        assert view["attempts"][0]["id"] == attempt and view["attempts"][0]["status"] != "approved"
        ledger_verifies(app)
