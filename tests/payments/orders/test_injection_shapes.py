"""Injection-shaped strings (tests/injection_support.PAYLOADS) in every string this domain
reads: product names, codes, customer fields, ids in paths and queries, the buyer page's
token. Never a 500; a refusal is problem+json with a code; what is stored is shown back
byte for byte (codes only to their buyer), and the buyer's page escapes it."""

from __future__ import annotations

import html
from urllib.parse import quote

from clearhouse.kit.masking import mask_free_form
from tests.injection_support import PAYLOADS, in_url, json_bytes
from tests.payments.orders.support import make_product, order_body
from tests.payments.support import ledger_verifies


def send(client, method: str, path: str, body: dict):
    """JSON as the walk sends it: a lone surrogate is written as its escape, as a client may."""
    return client.request(method, path, content=json_bytes(body), headers={"Content-Type": "application/json"})


def refused_cleanly(response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.json()["code"], response.text


class TestInjectionShapes:
    def test_no_payload_makes_a_server_error_and_stored_text_comes_back_literally(self, app, anonymous_client,
                                                                                   merchant_client_factory):
        client, _ = merchant_client_factory()
        product = make_product(client, ["BASE-1"])
        for name, payload in PAYLOADS:
            price = {"amount": 100, "currency": "CNY"}
            created = send(client, "POST", "/v1/products", {"name": payload, "price": price})
            refused_cleanly(created)
            if created.status_code == 201:
                shown = mask_free_form(payload)  # a name is merchant free text: stored as shown, masked
                assert created.json()["name"] == shown, name
                assert client.get(f"/v1/products/{created.json()['id']}").json()["name"] == shown, name
                added = send(client, "POST", f"/v1/products/{created.json()['id']}/codes", {"codes": [payload]})
                refused_cleanly(added)
                if added.status_code == 201:
                    order = client.post("/v1/orders", json=order_body(created.json()["id"]))
                    assert order.status_code == 201, (name, order.text)
                    assert order.json()["codes"] == [payload], name
                    path = order.json()["delivery_url"].split("8000", 1)[1]
                    page = anonymous_client.get(path)
                    assert page.status_code == 200, name
                    assert html.escape(payload) in page.text, name
            refused_cleanly(send(client, "PATCH", f"/v1/products/{product['id']}", {"name": payload}))
            refused_cleanly(send(client, "POST", "/v1/orders", order_body(payload)))
            refused_cleanly(send(client, "POST", "/v1/orders", {**order_body(product["id"]),
                                                             "customer": {"id": payload, "email": payload}}))
            if not in_url(payload) or len(payload) > 2000:  # a URL is no place for 10 KB
                continue
            escaped = quote(payload, safe="")
            for path in (f"/v1/products/{escaped}", f"/v1/orders/{escaped}", f"/v1/orders/{escaped}/codes"):
                refused_cleanly(client.get(path))
            refused_cleanly(client.get("/v1/orders", params={"status": payload, "product_id": payload,
                                                               "starting_after": payload}))
            refused_cleanly(client.get("/v1/products", params={"starting_after": payload}))
            refused_cleanly(anonymous_client.get(f"/orders/{escaped}/delivery", params={"token": payload}))
        ledger_verifies(app)
