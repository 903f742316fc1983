"""Session 14: card-code orders. A retried order after a crash answers what orders.md promises
(the buyer's page, the codes); a bank-transfer order tells the buyer its own deadline, the one the
worker keeps; the product list's cursor, the order list's status filter and HEAD on the buyer's page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from clearhouse.kit import clock
from clearhouse.payments import service as payments
from clearhouse.payments.orders.tasks import PAYMENT_TIMEOUT_SECONDS, advance_orders
from tests.payments.orders.support import make_product, order_body, order_row
from tests.payments.orders.test_orders import page_path

T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def crashed_before_its_answer_was_stored(app, key: str) -> None:
    """As a process killed after the order committed and before the idempotency layer stored the
    answer leaves the key: claimed, no answer (its lease runs out by itself)."""
    with app.state.engine.begin() as connection:
        connection.execute(text("UPDATE idempotency_keys SET state = 'in_progress', response_status = NULL, "
                                "response_body = NULL WHERE key = :key"), {"key": key})


class TestRetryAfterACrash:
    def test_the_retry_answers_the_codes_and_a_working_buyers_page(self, app, anonymous_client,
                                                                     merchant_client_factory):
        client, _ = merchant_client_factory()
        product = make_product(client, ["GIFT-1", "GIFT-2"])
        headers = {"Idempotency-Key": "crash-order-1"}
        with clock.frozen(T0) as frozen:
            first = client.post("/v1/orders", json=order_body(product["id"]), headers=headers)
            assert first.status_code == 201, first.text
            crashed_before_its_answer_was_stored(app, "crash-order-1")
            frozen.tick(minutes=2)  # past the key's lease: the retry takes the key over
            retry = client.post("/v1/orders", json=order_body(product["id"]), headers=headers)
        assert retry.status_code == 201, retry.text
        assert retry.headers.get("Idempotent-Replayed") is None  # answered afresh, not replayed
        order = retry.json()
        assert order["id"] == first.json()["id"]
        assert order["status"] == "delivered"
        assert order["codes"] == first.json()["codes"]
        assert order["delivery_url"] and order["delivery_url"] != first.json()["delivery_url"]
        page = anonymous_client.get(page_path(order))
        assert page.status_code == 200 and order["codes"][0] in page.text
        # The lost answer's link stops working: the token is stored only as the new one's digest.
        assert anonymous_client.get(page_path(first.json())).status_code == 404
        stock = client.get(f"/v1/products/{product['id']}").json()["stock"]
        assert (stock["available"], stock["delivered"]) == (1, 1)  # bought once

    def test_a_waiting_order_retried_gets_its_page_and_no_codes(self, app, anonymous_client,
                                                                merchant_client_factory):
        client, _ = merchant_client_factory()
        product = make_product(client, ["QR-1"])
        headers = {"Idempotency-Key": "crash-order-2"}
        with clock.frozen(T0) as frozen:
            first = client.post("/v1/orders", json=order_body(product["id"], method="alipay"), headers=headers)
            assert first.status_code == 201, first.text
            crashed_before_its_answer_was_stored(app, "crash-order-2")
            frozen.tick(minutes=2)
            retry = client.post("/v1/orders", json=order_body(product["id"], method="alipay"), headers=headers)
        order = retry.json()
        assert retry.status_code == 201 and order["status"] == "awaiting_payment"
        assert order["codes"] is None
        assert "waiting for your payment" in anonymous_client.get(page_path(order)).text


class TestBankTransferDeadline:
    def test_the_buyer_is_told_the_deadline_the_worker_keeps(self, app, anonymous_client, merchant_client_factory):
        client, _ = merchant_client_factory()
        product = make_product(client, ["BANK-1"], amount=4100)
        deadline = T0 + timedelta(seconds=PAYMENT_TIMEOUT_SECONDS)
        rt = payments.Runtime.of(app)
        with clock.frozen(T0) as frozen:
            created = client.post("/v1/orders", json=order_body(product["id"], method="bank_transfer"))
            assert created.status_code == 201, created.text
            order = created.json()
            assert order["status"] == "awaiting_payment"
            assert order["next_action"]["type"] == "bank_transfer_instructions"
            # Not the channel's seven days: the order holds its code for 30 minutes only.
            assert order["next_action"]["expires_at"] == clock.rfc3339(deadline)
            assert client.get(f"/v1/orders/{order['id']}").json()["next_action"]["expires_at"] == \
                clock.rfc3339(deadline)
            assert f"Pay before {clock.rfc3339(deadline)}" in anonymous_client.get(page_path(order)).text

            frozen.tick(seconds=PAYMENT_TIMEOUT_SECONDS - 60)  # a minute before the deadline: still waiting
            assert advance_orders(rt) == 0
            assert order_row(app, order["id"]).status == "awaiting_payment"

            frozen.tick(seconds=61)  # past it: the payment is canceled and the code back in stock
            assert advance_orders(rt) == 1
        done = client.get(f"/v1/orders/{order['id']}").json()
        assert done["status"] == "failed"
        assert client.get(f"/v1/payments/{order['payment_id']}").json()["status"] == "canceled"
        assert client.get(f"/v1/products/{product['id']}").json()["stock"]["available"] == 1


class TestListsAndThePublicPage:
    def test_an_unknown_product_cursor_gives_an_empty_page(self, merchant_client_factory):
        client, _ = merchant_client_factory()
        other, _ = merchant_client_factory()
        make_product(client, [])
        theirs = make_product(other, [])
        for cursor in ("prod_does_not_exist", theirs["id"]):
            page = client.get("/v1/products", params={"starting_after": cursor})
            assert page.status_code == 200
            assert page.json()["data"] == [] and page.json()["has_more"] is False

    def test_products_page_newest_first(self, merchant_client_factory):
        client, _ = merchant_client_factory()
        with clock.frozen(T0) as frozen:
            made = []
            for name in ("A", "B", "C"):
                made.append(make_product(client, [], name=name)["id"])
                frozen.tick(seconds=1)
        first = client.get("/v1/products", params={"limit": 2}).json()
        assert [p["id"] for p in first["data"]] == made[::-1][:2] and first["has_more"] is True
        rest = client.get("/v1/products", params={"limit": 2, "starting_after": first["next_cursor"]}).json()
        assert [p["id"] for p in rest["data"]] == made[:1] and rest["has_more"] is False

    def test_an_order_status_filter_naming_no_state_is_refused(self, merchant_client_factory):
        client, _ = merchant_client_factory()
        response = client.get("/v1/orders", params={"status": "deliverd"})
        assert response.status_code == 422
        assert response.json()["code"] == "validation_error"
        assert client.get("/v1/orders", params={"status": "delivered"}).status_code == 200

    def test_head_on_the_buyers_page_is_answered_like_get_without_the_page(self, anonymous_client,
                                                                            merchant_client_factory):
        client, _ = merchant_client_factory()
        product = make_product(client, ["HEAD-1"])
        order = client.post("/v1/orders", json=order_body(product["id"])).json()
        page = anonymous_client.get(page_path(order))
        head = anonymous_client.head(page_path(order))
        assert (head.status_code, head.content) == (200, b""), head.text
        for header in ("cache-control", "referrer-policy", "content-type"):
            assert head.headers[header] == page.headers[header]
        assert anonymous_client.head(page_path(order)[:-3] + "abc").status_code == 404  # a wrong token

    def test_head_on_any_public_get_route_needs_no_credentials(self, anonymous_client):
        """HEAD on a public GET route is answered as its GET, without credentials (it was 401 for a caller
        without credentials, as if the page needed some, then 405). A private route stays 401."""
        assert anonymous_client.get("/sandbox/sandbox_bank/pay/nope").status_code == 404
        head = anonymous_client.head("/sandbox/sandbox_bank/pay/nope")  # the bank page takes its form by POST
        assert (head.status_code, head.content) == (404, b""), head.text
        assert anonymous_client.head("/v1/orders").status_code == 401


def test_a_browser_opening_a_broken_delivery_link_gets_a_page(anonymous_client, merchant_client_factory):
    """A buyer clicking a mistyped link saw a JSON problem document (the integrator tester, session 20, L9); a
    program asking for JSON still gets the problem."""
    client, _ = merchant_client_factory()
    product = make_product(client, ["PAGE-404"])
    order = client.post("/v1/orders", json=order_body(product["id"])).json()
    broken = page_path(order)[:-3] + "abc"
    page = anonymous_client.get(broken, headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert (page.status_code, page.headers["content-type"]) == (404, "text/html; charset=utf-8")
    assert "Order not found" in page.text and order["id"] not in page.text
    assert page.headers["cache-control"] == anonymous_client.get(page_path(order)).headers["cache-control"]
    problem = anonymous_client.get(broken, headers={"Accept": "application/json"})
    assert (problem.status_code, problem.json()["code"]) == (404, "order_not_found")
