"""HEAD is GET without the body (RFC 9110, 9.3.2), signed or not, on every GET route.

FastAPI routes only the methods a route declares, so a signed HEAD was 405 everywhere but ``/healthz`` (carried
since session 16). ``kit.api.HeadAsGet`` answers it as the GET, inside authentication: the signature covers
the method as sent."""

from __future__ import annotations

from tests.payments.support import card_body


def test_a_signed_head_answers_as_its_get_without_the_body(merchant_client_factory):
    shop, _ = merchant_client_factory()
    made = shop.post("/v1/payments", json=card_body(1000)).json()
    for path in ("/v1/payments", f"/v1/payments/{made['id']}"):
        got, head = shop.get(path), shop.head(path)
        assert (got.status_code, head.status_code, head.content) == (200, 200, b""), head.text
        for header in ("content-type", "content-length", "cache-control"):
            assert head.headers.get(header) == got.headers.get(header), header


def test_a_head_of_nothing_is_the_gets_404_without_the_problem(merchant_client_factory):
    shop, _ = merchant_client_factory()
    got, head = shop.get("/v1/payments/pay_nothing"), shop.head("/v1/payments/pay_nothing")
    assert (got.status_code, got.json()["code"]) == (404, "payment_not_found")
    assert (head.status_code, head.content, head.headers["content-type"]) == (404, b"", "application/problem+json")


def test_a_head_needs_what_its_get_needs(anonymous_client, merchant_client_factory):
    shop, _ = merchant_client_factory()
    refused = anonymous_client.head("/v1/payments")
    assert (refused.status_code, refused.content) == (401, b"")
    assert anonymous_client.head("/healthz").status_code == 200  # a probe's HEAD, public as its GET
    # A route with no GET has no HEAD either.
    assert shop.head("/v1/payments/pay_x/capture").status_code == 405


def test_a_route_with_its_own_head_keeps_it(anonymous_client, merchant_client_factory, monkeypatch):
    """The buyer's page declares its HEAD, which reads the order without decrypting its codes: a link checker's
    HEAD must not run the GET."""
    from clearhouse.payments.orders import service as orders
    from tests.payments.orders.support import make_product, order_body
    from tests.payments.orders.test_orders import page_path

    shop, _ = merchant_client_factory()
    order = shop.post("/v1/orders", json=order_body(make_product(shop, ["HEAD-20"])["id"])).json()
    opened: list[str] = []
    real = orders.buyer_delivery
    monkeypatch.setattr(orders, "buyer_delivery", lambda *a, **k: opened.append("get") or real(*a, **k))
    head = anonymous_client.head(page_path(order))
    assert (head.status_code, head.content, opened) == (200, b"", [])
    assert anonymous_client.get(page_path(order)).status_code == 200 and opened == ["get"]


def test_a_trailing_slash_is_another_path_not_a_redirect(merchant_client_factory):
    """``GET /v1/payments/`` answered 307 to ``/v1/payments``; a client that followed it re-sent the signature made
    for the first path and got 401 signature_invalid (the integrator tester, session 20)."""
    shop, _ = merchant_client_factory()
    answer = shop.get("/v1/payments/", follow_redirects=False)
    assert (answer.status_code, answer.json()["code"]) == (404, "not_found"), answer.text
    assert shop.get("/v1/payments").status_code == 200
