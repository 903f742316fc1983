"""Session 15: an order paid by QR code is delivered at the worker's next pass, not after
the 30-second sweep for stuck orders (found by the browser tests, tests/browser)."""

from __future__ import annotations

from clearhouse.channels.connectors.sandbox import deliver_due
from clearhouse.payments import service as payments
from clearhouse.payments.orders.tasks import advance_orders
from tests.payments.orders.support import make_product, order_body
from tests.payments.support import ledger_verifies


def test_a_paid_qr_order_is_delivered_at_the_next_pass_and_an_unpaid_one_keeps_waiting(
        app, anonymous_client, merchant_client_factory):
    client, _ = merchant_client_factory()
    product = make_product(client, ["QR-1", "QR-2", "QR-3"], amount=1200)
    paid, unpaid = (client.post("/v1/orders", json=order_body(product["id"], method="alipay")).json()
                    for _ in range(2))
    assert paid["status"] == unpaid["status"] == "awaiting_payment"
    runtime = payments.Runtime.of(app)
    assert advance_orders(runtime) == 0  # the default window: nothing is 30 s old

    payment = client.get(f"/v1/payments/{paid['payment_id']}").json()
    app.state.channels[payment["channel"]].pay(payment["attempts"][-1]["id"])
    deliver_due(app.state.settings, lambda path, headers, body: anonymous_client.post(
        path, headers=headers, content=body).status_code)
    assert client.get(f"/v1/payments/{paid['payment_id']}").json()["status"] == "succeeded"

    assert advance_orders(runtime) == 1  # still the default window
    assert client.get(f"/v1/orders/{paid['id']}").json()["status"] == "delivered"
    assert client.get(f"/v1/orders/{unpaid['id']}").json()["status"] == "awaiting_payment"
    assert client.get(f"/v1/products/{product['id']}").json()["stock"] == {
        "available": 1, "reserved": 1, "delivered": 1, "defective": 0}
    ledger_verifies(app)
