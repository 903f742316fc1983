"""The order saga restarted by the worker after a crash between any two steps (the step
functions are called directly, up to the crash, then ``advance_orders`` takes over), and
orders waiting for a QR payment: delivered once the customer pays, released when the
payment times out. Each ends consistent: stock, payment, ledger."""

from __future__ import annotations

from clearhouse.audit.service import Actor
from clearhouse.channels.connectors.sandbox import deliver_due
from clearhouse.identity.permissions import MERCHANT_KEY_SCOPES, Principal
from clearhouse.kit.db import transact
from clearhouse.payments import service as payments
from clearhouse.payments.orders import service as orders
from clearhouse.payments.orders.tasks import advance_orders
from tests.payments.orders.support import CARD, events_of, make_product, order_body, order_row, step_count
from tests.payments.support import balances, ledger_verifies


def merchant(merchant_id: str) -> tuple[Principal, Actor]:
    principal = Principal(kind="api_key", id="key_tests", role="merchant_key", merchant_id=merchant_id,
                          permissions=MERCHANT_KEY_SCOPES, mode="test")
    return principal, Actor(type="api_key", id="key_tests", role="merchant_key", merchant_id=merchant_id)


def reserved(app, merchant_id: str, product_id: str, quantity: int = 1) -> str:
    """Step 1 committed, then the request "crashes"."""
    principal, _ = merchant(merchant_id)
    order_id = orders.new_id("ord")
    request = orders.OrderRequest(product_id=product_id, quantity=quantity, method="card", card=CARD["card"])
    transact(app.state.engine, lambda s: orders.reserve(s, principal, request, order_id=order_id,
                                                        delivery_token="token"))
    return order_id


def paid(app, merchant_id: str, order_id: str) -> dict:
    """Step 2 completed (the channel approved), then the request "crashes" before settling."""
    principal, actor = merchant(merchant_id)
    payment = orders.pay(payments.Runtime.of(app), principal, actor, order_id, dict(CARD["card"]))
    assert payment is not None and payment["status"] == "succeeded"
    return payment


def worker(app, **options) -> int:
    return advance_orders(payments.Runtime.of(app), older_than_seconds=0, **options)


def stock(client, product_id: str) -> dict:
    return client.get(f"/v1/products/{product_id}").json()["stock"]


class TestCrashRecovery:
    def test_a_crash_after_the_reservation_releases_the_codes(self, app, merchant_client_factory):
        client, merchant_id = merchant_client_factory()
        product = make_product(client, ["K-1", "K-2"])
        order_id = reserved(app, merchant_id, product["id"], 2)
        assert stock(client, product["id"])["reserved"] == 2
        assert worker(app) == 1
        order = client.get(f"/v1/orders/{order_id}").json()
        assert order["status"] == "failed"
        assert order["failure_code"] == "payment_not_started"
        assert stock(client, product["id"]) == {"available": 2, "reserved": 0, "delivered": 0, "defective": 0}
        assert client.get("/v1/payments").json()["data"] == []
        ledger_verifies(app)

    def test_a_crash_after_the_payment_ends_delivered_exactly_once(self, app, merchant_client_factory):
        client, merchant_id = merchant_client_factory()
        product = make_product(client, ["K-1", "K-2"], amount=2500)
        order_id = reserved(app, merchant_id, product["id"], 2)
        paid(app, merchant_id, order_id)
        assert order_row(app, order_id).status == "awaiting_payment"
        assert worker(app) == 1
        assert worker(app) == 0  # nothing left to do
        order = client.get(f"/v1/orders/{order_id}").json()
        assert order["status"] == "delivered"
        assert [(s["step"], s["status"]) for s in order["steps"]] == [
            ("reserve", "done"), ("pay", "started"), ("pay", "done"), ("deliver", "done")]
        assert sorted(client.get(f"/v1/orders/{order_id}/codes").json()["codes"]) == ["K-1", "K-2"]
        assert stock(client, product["id"])["delivered"] == 2
        assert len(events_of(app, merchant_id, "order.delivered")) == 1
        assert balances(app, merchant_id)["merchant"] == 5000 - 30  # 0.6 % of 50.00
        ledger_verifies(app)

    def test_a_crash_between_paid_and_delivered_ends_delivered(self, app, merchant_client_factory):
        client, merchant_id = merchant_client_factory()
        product = make_product(client, ["K-1"])
        order_id = reserved(app, merchant_id, product["id"])
        payment = paid(app, merchant_id, order_id)
        assert transact(app.state.engine, lambda s: orders.mark_paid(s, order_id, payment["id"]))
        assert worker(app) == 1
        assert order_row(app, order_id).status == "delivered"
        # the step that already happened is not repeated by a second run of any step
        assert not transact(app.state.engine, lambda s: orders.deliver(s, app.state.cipher, order_id))
        assert orders.settle(payments.Runtime.of(app), order_id) == "delivered"
        assert step_count(app, order_id, "deliver", "done") == 1
        assert step_count(app, order_id, "pay", "done") == 1
        assert len(events_of(app, merchant_id, "order.delivered")) == 1
        ledger_verifies(app)

    def test_a_payment_started_after_the_worker_released_the_order_is_refunded(self, app, merchant_client_factory):
        client, merchant_id = merchant_client_factory()
        product = make_product(client, ["K-1"], amount=1000)
        order_id = reserved(app, merchant_id, product["id"])
        # the request claimed the order for payment, then stalled before the payment existed
        assert transact(app.state.engine, lambda s: orders._transition(s, order_id, ("reserved",),
                                                                      "awaiting_payment"))
        assert worker(app) == 1
        assert order_row(app, order_id).status == "failed"
        assert stock(client, product["id"])["available"] == 1
        # ... and now its payment goes through after all: the money goes back
        principal, actor = merchant(merchant_id)
        row = order_row(app, order_id)
        rt = payments.Runtime.of(app)
        payments.create_payment(rt, principal, actor, payments.NewPayment(
            amount=row.amount, currency=row.currency, method="card", merchant_id=merchant_id,
            merchant_order_id=order_id, card=dict(CARD["card"])), payment_id=row.payment_id)
        assert orders.settle(rt, order_id) == "refunded"
        assert client.get(f"/v1/payments/{row.payment_id}").json()["amount_refunded"] == 1000
        assert stock(client, product["id"]) == {"available": 1, "reserved": 0, "delivered": 0, "defective": 0}
        assert balances(app, merchant_id)["merchant"] == 0
        ledger_verifies(app)


class TestRefundAfterPayment:
    def test_a_product_deactivated_before_delivery_refunds_the_order(self, app, merchant_client_factory):
        client, merchant_id = merchant_client_factory()
        product = make_product(client, ["K-1", "K-2"], amount=4000)
        order_id = reserved(app, merchant_id, product["id"], 2)
        paid(app, merchant_id, order_id)
        assert client.patch(f"/v1/products/{product['id']}", json={"active": False}).status_code == 200
        assert worker(app) == 1
        order = client.get(f"/v1/orders/{order_id}").json()
        assert order["status"] == "refunded"
        assert order["failure_code"] == "product_inactive"
        assert order["refund_id"].startswith("re_")
        refund = client.get(f"/v1/refunds/{order['refund_id']}").json()
        assert (refund["status"], refund["amount"]) == ("succeeded", 8000)
        assert stock(client, product["id"]) == {"available": 2, "reserved": 0, "delivered": 0, "defective": 0}
        assert len(events_of(app, merchant_id, "order.refunded")) == 1
        # refunding again is not refunding twice
        assert orders.refund(payments.Runtime.of(app), order_id) == "not_refunding"
        assert client.get(f"/v1/payments/{order['payment_id']}").json()["amount_refunded"] == 8000
        assert balances(app, merchant_id)["merchant"] == 0
        ledger_verifies(app)


class TestQrPayment:
    def _qr_order(self, client, product_id: str) -> dict:
        response = client.post("/v1/orders", json=order_body(product_id, method="alipay"))
        assert response.status_code == 201, response.text
        order = response.json()
        assert order["status"] == "awaiting_payment"
        assert order["payment_status"] == "requires_action"
        assert order["next_action"]["type"] == "qr_code"
        assert order["codes"] is None
        return order

    def test_the_order_waits_then_delivers_after_the_customer_pays(self, app, anonymous_client,
                                                                   merchant_client_factory):
        client, merchant_id = merchant_client_factory()
        product = make_product(client, ["QR-1", "QR-2"], amount=1200)
        order = self._qr_order(client, product["id"])
        assert stock(client, product["id"])["reserved"] == 1
        assert worker(app) == 0  # the payment is still pending: the order keeps waiting
        assert "waiting for your payment" in anonymous_client.get(
            order["delivery_url"].split("8000", 1)[1]).text
        payment = client.get(f"/v1/payments/{order['payment_id']}").json()
        channel = app.state.channels[payment["channel"]]
        channel.pay(payment["attempts"][-1]["id"])  # the customer scans the code and pays
        sent = deliver_due(app.state.settings, lambda path, headers, body: anonymous_client.post(
            path, headers=headers, content=body).status_code)
        assert sent >= 1
        assert client.get(f"/v1/payments/{order['payment_id']}").json()["status"] == "succeeded"
        assert worker(app) == 1
        done = client.get(f"/v1/orders/{order['id']}").json()
        assert done["status"] == "delivered"
        codes = client.get(f"/v1/orders/{order['id']}/codes").json()["codes"]
        assert len(codes) == 1 and codes[0] in {"QR-1", "QR-2"}
        assert codes[0] in anonymous_client.get(order["delivery_url"].split("8000", 1)[1]).text
        assert stock(client, product["id"]) == {"available": 1, "reserved": 0, "delivered": 1, "defective": 0}
        ledger_verifies(app)

    def test_a_payment_past_the_timeout_is_canceled_and_the_codes_released(self, app, merchant_client_factory):
        client, merchant_id = merchant_client_factory()
        product = make_product(client, ["QR-1"])
        order = self._qr_order(client, product["id"])
        assert worker(app, payment_timeout_seconds=0) == 1
        done = client.get(f"/v1/orders/{order['id']}").json()
        assert done["status"] == "failed"
        assert client.get(f"/v1/payments/{order['payment_id']}").json()["status"] == "canceled"
        assert [(s["step"], s["status"]) for s in done["steps"]][-1] == ("release", "done")
        assert stock(client, product["id"]) == {"available": 1, "reserved": 0, "delivered": 0, "defective": 0}
        ledger_verifies(app)
