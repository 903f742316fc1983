"""The hosted pages inside the platform's own app: reached without credentials (the
customer has none), they pay what ``POST /v1/payments`` started, and the notification
``deliver_due`` then sends makes the payment succeed. On both databases."""

from __future__ import annotations

from clearhouse.channels.connectors.sandbox import deliver_due
from clearhouse.channels.connectors.sandbox_card import CARD_CHALLENGE, sandbox_card


def send_through(client):
    def send(path: str, headers: dict[str, str], body: bytes) -> int:
        return client.post(path, content=body, headers=headers).status_code
    return send


def test_a_customer_pays_a_qr_code_on_the_hosted_page(app, anonymous_client, merchant_client_factory):
    shop, _ = merchant_client_factory()
    payment = shop.post("/v1/payments", json={"amount": 8800, "currency": "CNY", "method": "alipay"}).json()
    assert payment["status"] == "requires_action", payment
    page = payment["next_action"]["qr_content"].removeprefix(app.state.settings.public_base_url)
    shown = anonymous_client.get(page)
    assert shown.status_code == 200 and "88.00 CNY" in shown.text
    assert anonymous_client.post(page).status_code == 200  # 303 to the page, now showing it paid
    assert deliver_due(app.state.settings, send_through(anonymous_client)) == 1
    assert shop.get(f"/v1/payments/{payment['id']}").json()["status"] == "succeeded"


def test_a_cardholder_passes_the_challenge_on_the_hosted_page(app, anonymous_client, merchant_client_factory):
    shop, _ = merchant_client_factory()
    payment = shop.post("/v1/payments", json={
        "amount": 4200, "currency": "CNY", "method": "card",
        "payment_details": {"card": sandbox_card(CARD_CHALLENGE)},
    }).json()
    assert payment["status"] == "requires_action", payment
    page = payment["next_action"]["url"].removeprefix(app.state.settings.public_base_url)
    assert anonymous_client.post(page, data={"outcome": "pass"}).status_code == 200
    assert deliver_due(app.state.settings, send_through(anonymous_client)) == 1
    assert shop.get(f"/v1/payments/{payment['id']}").json()["status"] == "succeeded"


def test_an_unknown_reference_is_a_404_page_not_a_problem(anonymous_client):
    response = anonymous_client.get("/sandbox/sandbox_wechat/pay/att_unknown")
    assert response.status_code == 404 and response.headers["content-type"].startswith("text/html")
