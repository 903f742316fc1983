"""The customer's side, in a real browser: paying a QR code or a bank transfer on the
sandbox's hosted page, passing or failing a card's 3-D Secure challenge, and a buyer
opening the page that delivers their codes. Each page is served with its
Content-Security-Policy, so these tests also show the policy lets the page work."""

from __future__ import annotations

import re
import time

import pytest

from clearhouse.channels.connectors.sandbox_card import CARD_CHALLENGE, sandbox_card
from tests.browser.conftest import Site
from tests.payments.orders.support import make_product, order_body

QR = {"alipay": "Alipay sandbox", "wechat_pay": "WeChat Pay sandbox"}


@pytest.mark.parametrize("method", ["alipay", "wechat_pay"])
def test_a_customer_pays_a_qr_code_on_the_wallets_page(site: Site, page, method: str):
    created = site.shop.post("/v1/payments", json={"amount": 7256, "currency": "CNY", "method": method,
                                                   "description": "Tea <b>set</b>"})
    assert created.status_code == 201, created.text
    payment = created.json()
    assert payment["status"] == "requires_action"
    qr_url = payment["next_action"]["qr_content"]
    assert qr_url.startswith(site.base_url + "/sandbox/")

    page.goto(qr_url)
    assert page.title() == QR[method]
    assert page.get_by_text("72.56 CNY").is_visible()
    assert page.get_by_text("Tea <b>set</b>").is_visible()  # escaped, shown as typed
    page.get_by_role("button", name="Pay").click()
    page.wait_for_url(qr_url)
    assert page.get_by_text("there is nothing to pay").is_visible()
    assert page.get_by_role("button", name="Pay").count() == 0

    site.wait_for_payment(payment["id"], "succeeded")


def test_a_customer_sends_a_bank_transfer_from_the_banks_page(site: Site, page):
    created = site.shop.post("/v1/payments", json={"amount": 120000, "currency": "CNY", "method": "bank_transfer"})
    assert created.status_code == 201, created.text
    payment = created.json()
    assert payment["status"] == "processing"
    reference_code = payment["next_action"]["reference_code"]
    url = f"{site.base_url}/sandbox/sandbox_bank/pay/{payment['attempts'][0]['id']}"

    page.goto(url)
    assert page.title() == "Bank sandbox"
    assert page.get_by_text("1200.00 CNY").is_visible()
    assert page.get_by_text(reference_code, exact=True).is_visible()
    page.get_by_role("button", name="Send the transfer").click()
    page.wait_for_url(url)
    assert page.get_by_role("button", name="Send the transfer").count() == 0
    site.wait_for_payment(payment["id"], "succeeded")


@pytest.mark.parametrize(("answer", "outcome", "status"), [
    ("Pass the challenge", "Challenge passed.", "succeeded"),
    ("Fail the challenge", "Challenge failed.", "failed"),
])
def test_a_cardholder_answers_the_issuers_challenge(site: Site, page, answer: str, outcome: str, status: str):
    created = site.shop.post("/v1/payments", json={
        "amount": 6600, "currency": "CNY", "method": "card",
        "payment_details": {"card": sandbox_card(CARD_CHALLENGE)},
        "return_url": "https://shop.example/return"})
    assert created.status_code == 201, created.text
    payment = created.json()
    assert payment["status"] == "requires_action"
    assert payment["next_action"]["type"] == "redirect"

    page.goto(payment["next_action"]["url"])
    assert page.title() == "Card issuer sandbox"
    assert page.get_by_text("66.00 CNY").is_visible()
    page.get_by_role("button", name=answer).click()
    page.get_by_text(outcome).wait_for()
    assert page.get_by_role("button", name=answer).count() == 0
    if status == "succeeded":
        assert page.get_by_role("link", name="Return to the shop").get_attribute("href") == \
            "https://shop.example/return"
    site.wait_for_payment(payment["id"], status)


def test_a_buyer_pays_an_order_by_qr_code_and_then_sees_the_codes(site: Site, page):
    product = make_product(site.shop, ["GIFT-AAAA-0001", "GIFT-AAAA-0002"], amount=3000, name="Gift card")
    created = site.shop.post("/v1/orders", json=order_body(product["id"], method="alipay"))
    assert created.status_code == 201, created.text
    order = created.json()
    assert order["status"] == "awaiting_payment"

    page.goto(order["delivery_url"])
    assert page.get_by_role("heading").inner_text() == "Gift card × 1"
    assert page.get_by_text("Your order is waiting for your payment.").is_visible()
    assert page.get_by_text(re.compile(r"^Pay before \d{4}-\d\d-\d\dT")).is_visible()
    assert page.locator("code", has_text="GIFT-").count() == 0

    qr_page = page.context.new_page()
    qr_page.goto(order["next_action"]["qr_content"])
    qr_page.get_by_role("button", name="Pay").click()
    qr_page.wait_for_url(order["next_action"]["qr_content"])

    # The worker's next pass delivers (it runs every 0.1 s here), not its 30-second sweep.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        page.reload()
        if page.get_by_text("Your codes:").count():
            break
        page.wait_for_timeout(100)
    codes = page.locator("li code").all_inner_texts()
    assert len(codes) == 1 and codes[0].startswith("GIFT-AAAA-000")
    assert site.shop.get(f"/v1/orders/{order['id']}").json()["status"] == "delivered"


def test_a_delivery_link_with_a_wrong_token_shows_no_codes(site: Site, page):
    product = make_product(site.shop, ["KEY-1"], amount=500)
    order = site.shop.post("/v1/orders", json=order_body(product["id"])).json()
    assert order["status"] == "delivered"
    page.goto(order["delivery_url"])
    assert page.locator("li code").all_inner_texts() == ["KEY-1"]

    response = page.goto(order["delivery_url"][:-4] + "AAAA")
    assert response.status == 404
    assert "KEY-1" not in page.content()
