"""Defects an exploratory test of orders, wallets and channel notifications found (2026-11-24, session
11), each held by a test through the API."""

from __future__ import annotations

import pytest

from clearhouse.payments.schemas import MAX_PAYMENT_AMOUNT
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
