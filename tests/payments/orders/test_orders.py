"""Buying card codes over HTTP with signed merchant requests: reserve, pay, deliver exactly
once (API and the buyer's page), release on a failed payment, refuse when out of stock,
refund when delivery cannot complete; the ledger verifies after each."""

from __future__ import annotations

from urllib.parse import urlsplit

from sqlalchemy import update

from clearhouse.kit.db import transact
from clearhouse.payments.orders.models import ProductCode
from tests.payments.orders.support import (
    DECLINED_CARD,
    code_rows,
    events_of,
    make_product,
    order_body,
    step_count,
)
from tests.payments.support import balances, ledger_verifies


def page_path(order: dict) -> str:
    url = urlsplit(order["delivery_url"])
    return f"{url.path}?{url.query}"


class TestBuying:
    def test_a_paid_order_delivers_its_codes_in_the_answer(self, app, merchant_client_factory):
        client, merchant_id = merchant_client_factory()
        product = make_product(client, ["K-1", "K-2", "K-3"], amount=5000)
        response = client.post("/v1/orders", json=order_body(product["id"], 2))
        assert response.status_code == 201, response.text
        order = response.json()
        assert order["status"] == "delivered"
        assert order["amount"] == 10000 and order["currency"] == "CNY"
        assert len(order["codes"]) == 2 and set(order["codes"]) <= {"K-1", "K-2", "K-3"}
        assert [(s["step"], s["status"]) for s in order["steps"]] == [
            ("reserve", "done"), ("pay", "started"), ("pay", "done"), ("deliver", "done")]
        payment = client.get(f"/v1/payments/{order['payment_id']}").json()
        assert payment["status"] == "succeeded"
        assert payment["amount"] == 10000
        assert payment["merchant_order_id"] == order["id"]
        stock = client.get(f"/v1/products/{product['id']}").json()["stock"]
        assert stock == {"available": 1, "reserved": 0, "delivered": 2, "defective": 0}
        # 0.6 % of 100.00 to the platform; the merchant is owed the rest
        assert balances(app, merchant_id)["merchant"] == 9940
        assert len(events_of(app, merchant_id, "order.delivered")) == 1
        ledger_verifies(app)

    def test_reading_the_codes_again_shows_the_same_codes(self, app, merchant_client_factory):
        client, _ = merchant_client_factory()
        product = make_product(client, ["K-1", "K-2"])
        order = client.post("/v1/orders", json=order_body(product["id"], 2)).json()
        first = client.get(f"/v1/orders/{order['id']}/codes")
        assert first.status_code == 200
        assert sorted(first.json()["codes"]) == sorted(order["codes"])
        assert client.get(f"/v1/orders/{order['id']}/codes").json() == first.json()
        fetched = client.get(f"/v1/orders/{order['id']}").json()
        assert fetched["status"] == "delivered"
        assert fetched["codes"] is None and fetched["delivery_url"] is None
        assert step_count(app, order["id"], "deliver", "done") == 1

    def test_the_buyers_page_shows_the_codes_escaped_and_uncached(self, app, anonymous_client,
                                                                   merchant_client_factory):
        client, _ = merchant_client_factory()
        product = make_product(client, ["<script>alert(1)</script>&"], name="Key <b>bold</b>")
        order = client.post("/v1/orders", json=order_body(product["id"])).json()
        page = anonymous_client.get(page_path(order))
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-store"
        assert "&lt;script&gt;alert(1)&lt;/script&gt;&amp;" in page.text
        assert "<script>" not in page.text and "<b>" not in page.text
        assert anonymous_client.get(page_path(order)).text == page.text

    def test_the_buyers_page_needs_the_orders_token(self, app, anonymous_client, merchant_client_factory):
        client, _ = merchant_client_factory()
        product = make_product(client, ["K-1", "K-2"])
        order = client.post("/v1/orders", json=order_body(product["id"])).json()
        other = client.post("/v1/orders", json=order_body(product["id"])).json()
        token = urlsplit(order["delivery_url"]).query.removeprefix("token=")
        for path in (f"/orders/{order['id']}/delivery", f"/orders/{order['id']}/delivery?token=wrong",
                     f"/orders/{other['id']}/delivery?token={token}", f"/orders/ord_nope/delivery?token={token}"):
            response = anonymous_client.get(path)
            assert response.status_code == 404, path
            assert response.json()["code"] == "order_not_found"

    def test_one_idempotency_key_buys_once(self, app, merchant_client_factory):
        client, _ = merchant_client_factory()
        product = make_product(client, ["K-1", "K-2"])
        headers = {"Idempotency-Key": "buy-once-1"}
        first = client.post("/v1/orders", json=order_body(product["id"]), headers=headers)
        again = client.post("/v1/orders", json=order_body(product["id"]), headers=headers)
        assert first.status_code == again.status_code == 201
        assert again.headers.get("Idempotent-Replayed") == "true"
        assert again.json()["id"] == first.json()["id"]
        assert first.json()["id"].startswith("ord_")
        stock = client.get(f"/v1/products/{product['id']}").json()["stock"]
        assert (stock["available"], stock["delivered"]) == (1, 1)


class TestRefusals:
    def test_out_of_stock_reserves_nothing_and_takes_no_payment(self, app, merchant_client_factory):
        client, _ = merchant_client_factory()
        product = make_product(client, ["K-1", "K-2", "K-3"])
        response = client.post("/v1/orders", json=order_body(product["id"], 4))
        assert response.status_code == 409
        assert response.json()["code"] == "out_of_stock"
        assert client.get("/v1/orders").json()["data"] == []
        assert client.get("/v1/payments").json()["data"] == []
        assert client.get(f"/v1/products/{product['id']}").json()["stock"]["available"] == 3
        assert all(row.status == "available" for row in code_rows(app, product["id"]))
        ledger_verifies(app)

    def test_a_declined_card_fails_the_order_and_releases_the_codes(self, app, merchant_client_factory):
        client, merchant_id = merchant_client_factory()
        product = make_product(client, ["K-1", "K-2"])
        response = client.post("/v1/orders", json=order_body(product["id"], 2, details=DECLINED_CARD))
        assert response.status_code == 201, response.text
        order = response.json()
        assert order["status"] == "failed"
        assert order["failure_code"] == "do_not_honor"
        assert order["codes"] is None
        assert [(s["step"], s["status"]) for s in order["steps"]][-1] == ("release", "done")
        assert client.get(f"/v1/products/{product['id']}").json()["stock"]["available"] == 2
        assert client.get(f"/v1/orders/{order['id']}/codes").json()["code"] == "order_not_delivered"
        assert balances(app, merchant_id)["merchant"] == 0
        ledger_verifies(app)

    def test_a_refused_payment_request_releases_the_codes(self, app, merchant_client_factory):
        client, _ = merchant_client_factory()
        product = make_product(client, ["K-1"])
        response = client.post("/v1/orders", json={**order_body(product["id"]), "payment": {"method": "card"}})
        assert response.status_code == 422
        assert response.json()["code"] == "payment_details_required"
        orders = client.get("/v1/orders").json()["data"]
        assert [(o["status"], o["failure_code"]) for o in orders] == [("failed", "payment_details_required")]
        assert client.get(f"/v1/products/{product['id']}").json()["stock"]["available"] == 1

    def test_quantity_is_between_1_and_100(self, merchant_client_factory):
        client, _ = merchant_client_factory()
        product = make_product(client, ["K-1"])
        for quantity in (0, 101, "1", 1.5):
            response = client.post("/v1/orders", json=order_body(product["id"], quantity))
            assert response.status_code == 422, quantity


class TestRefundWhenDeliveryFails:
    def test_a_code_that_does_not_decrypt_refunds_the_order(self, app, merchant_client_factory):
        client, merchant_id = merchant_client_factory()
        product = make_product(client, ["K-1", "K-2"], amount=3000)
        first, second = code_rows(app, product["id"])
        table = ProductCode.__table__

        def swap(session):
            # Each ciphertext is bound to its row: swapped, neither decrypts any more.
            session.execute(update(table).where(table.c.id == first.id).values(code_encrypted=second.code_encrypted))
            session.execute(update(table).where(table.c.id == second.id).values(code_encrypted=first.code_encrypted))

        transact(app.state.engine, swap)
        response = client.post("/v1/orders", json=order_body(product["id"]))
        assert response.status_code == 201, response.text
        order = response.json()
        assert order["status"] == "refunded"
        assert order["failure_code"] == "code_unreadable"
        assert order["codes"] is None
        assert [(s["step"], s["status"]) for s in order["steps"]][-3:] == [
            ("deliver", "failed"), ("refund", "started"), ("refund", "done")]
        payment = client.get(f"/v1/payments/{order['payment_id']}").json()
        assert payment["amount_refunded"] == 3000
        stock = client.get(f"/v1/products/{product['id']}").json()["stock"]
        assert stock == {"available": 1, "reserved": 0, "delivered": 0, "defective": 1}
        assert len(events_of(app, merchant_id, "order.refunded")) == 1
        assert events_of(app, merchant_id, "order.delivered") == []
        assert balances(app, merchant_id)["merchant"] == 0
        ledger_verifies(app)


class TestListsAndTenancy:
    def test_orders_are_listed_newest_first_and_filtered(self, merchant_client_factory):
        client, _ = merchant_client_factory()
        product = make_product(client, ["K-1", "K-2"])
        delivered = client.post("/v1/orders", json=order_body(product["id"])).json()
        failed = client.post("/v1/orders", json=order_body(product["id"], details=DECLINED_CARD)).json()
        listed = client.get("/v1/orders").json()
        assert [o["id"] for o in listed["data"]] == [failed["id"], delivered["id"]]
        assert [o["id"] for o in client.get("/v1/orders?status=delivered").json()["data"]] == [delivered["id"]]
        page = client.get("/v1/orders?limit=1").json()
        assert page["has_more"] is True and page["next_cursor"] == failed["id"]

    def test_another_merchants_order_is_not_found(self, merchant_client_factory):
        mine, _ = merchant_client_factory("Mine")
        theirs, _ = merchant_client_factory("Theirs")
        product = make_product(mine, ["K-1"])
        order = mine.post("/v1/orders", json=order_body(product["id"])).json()
        assert theirs.get(f"/v1/orders/{order['id']}").status_code == 404
        assert theirs.get(f"/v1/orders/{order['id']}/codes").status_code == 404
        assert theirs.get(f"/v1/orders/{order['id']}/codes").json()["code"] == "order_not_found"
        assert theirs.get("/v1/orders").json()["data"] == []
