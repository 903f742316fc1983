"""The e-wallet (accounting.md recipe 7) and fee plans, through the API."""

from __future__ import annotations

from tests.payments.support import balances, card_body, ledger_verifies


def _wallet(shop, customer_id="cus_1", currency="CNY"):
    response = shop.post("/v1/wallets", json={"customer_id": customer_id, "currency": currency})
    assert response.status_code in (200, 201), response.text
    return response.json()


class TestWallet:
    def test_top_up_by_card_then_pay_from_the_wallet(self, app, merchant_client_factory):
        shop, merchant_id = merchant_client_factory()
        wallet = _wallet(shop)
        assert wallet["balance"] == 0
        top_up = shop.post(f"/v1/wallets/{wallet['id']}/top_ups", json={
            "amount": 10000, "method": "card", "payment_details": card_body()["payment_details"]})
        assert top_up.status_code == 201, top_up.text
        assert top_up.json()["status"] == "succeeded"
        assert top_up.json()["purpose"] == "wallet_top_up"
        assert shop.get(f"/v1/wallets/{wallet['id']}").json()["balance"] == 10000
        # Recipe 7: Dr clearing 99.62, Dr cost 0.38, Cr wallet 100.00 (no merchant, no fee)
        got = balances(app, merchant_id)
        assert (got["clearing"], got["cost"], got["merchant"], got["fees"]) == (9962, 38, 0, 0)

        paid = shop.post("/v1/payments", json={"amount": 5000, "currency": "CNY", "method": "wallet",
                                                "customer": {"id": "cus_1"}}).json()
        assert paid["status"] == "succeeded"
        assert paid["channel"] == "wallet"
        # Dr wallet 50.00, Cr merchant 49.70, Cr fees 0.30
        assert shop.get(f"/v1/wallets/{wallet['id']}").json()["balance"] == 5000
        got = balances(app, merchant_id)
        assert (got["merchant"], got["fees"]) == (4970, 30)
        ledger_verifies(app)

    def test_a_wallet_never_goes_below_zero(self, app, merchant_client_factory):
        shop, merchant_id = merchant_client_factory()
        _wallet(shop, "cus_poor")
        paid = shop.post("/v1/payments", json={"amount": 1, "currency": "CNY", "method": "wallet",
                                                "customer": {"id": "cus_poor"}}).json()
        assert paid["status"] == "failed"
        assert paid["failure_code"] == "insufficient_funds"
        assert balances(app, merchant_id)["merchant"] == 0
        ledger_verifies(app)

    def test_refund_of_a_wallet_payment_goes_back_to_the_wallet(self, app, merchant_client_factory):
        shop, merchant_id = merchant_client_factory()
        wallet = _wallet(shop, "cus_r")
        shop.post(f"/v1/wallets/{wallet['id']}/top_ups", json={
            "amount": 2000, "method": "card", "payment_details": card_body()["payment_details"]})
        paid = shop.post("/v1/payments", json={"amount": 2000, "currency": "CNY", "method": "wallet",
                                                "customer": {"id": "cus_r"}}).json()
        refund = shop.post(f"/v1/payments/{paid['id']}/refunds", json={}).json()
        assert refund["status"] == "succeeded"
        assert shop.get(f"/v1/wallets/{wallet['id']}").json()["balance"] == 2000
        assert balances(app, merchant_id)["merchant"] == 0
        ledger_verifies(app)

    def test_opening_twice_returns_the_same_wallet_and_others_cannot_see_it(self, merchant_client_factory):
        shop, _ = merchant_client_factory("A")
        other, _ = merchant_client_factory("B")
        first = _wallet(shop, "cus_x")
        again = shop.post("/v1/wallets", json={"customer_id": "cus_x", "currency": "CNY"})
        assert again.status_code == 200
        assert again.json()["id"] == first["id"]
        assert other.get(f"/v1/wallets/{first['id']}").status_code == 404

    def test_a_wallet_payment_without_a_customer_is_refused(self, merchant_client_factory):
        shop, _ = merchant_client_factory()
        response = shop.post("/v1/payments", json={"amount": 100, "currency": "CNY", "method": "wallet"})
        assert response.status_code == 422
        assert response.json()["code"] == "payment_details_required"


class TestFeePlans:
    def test_a_merchant_plan_with_fixed_fee_and_minimum(self, app, client, merchant_client_factory):
        shop, merchant_id = merchant_client_factory()
        response = client.put(f"/v1/fee_plans/{merchant_id}", json={"rules": [
            {"method": "card", "currency": "CNY", "percent": "2.9", "fixed": 30, "minimum": 50},
            {"percent": "1", "refund_fee_policy": "none"}]})
        assert response.status_code == 200, response.text
        small = shop.post("/v1/payments", json=card_body(100)).json()
        assert small["fees"][0]["amount"] == 50  # 2.9 % of 1.00 + 0.30 = 0.33, below the 0.50 minimum
        big = shop.post("/v1/payments", json=card_body(10000)).json()
        assert big["fees"][0]["amount"] == 320
        assert shop.get(f"/v1/fee_plans/{merchant_id}").json()["rules"][0]["percent"] in ("1", "2.9")
        ledger_verifies(app)

    def test_the_merchant_bears_the_channel_fee_kept_on_refund_when_its_plan_says_so(self, app, client,
                                                                                     merchant_client_factory):
        shop, merchant_id = merchant_client_factory()
        client.put(f"/v1/fee_plans/{merchant_id}", json={"rules": [
            {"percent": "0.6", "refund_cost_bearer": "merchant"}]})
        payment = shop.post("/v1/payments", json=card_body(10000)).json()
        shop.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 3000})
        # Recipe 3 with the merchant bearing the 0.11 the channel keeps: 99.40 - 29.82 - 0.11
        got = balances(app, merchant_id)
        assert got["merchant"] == 9940 - 2982 - 11
        assert got["fees"] == 60 - 18 + 11
        ledger_verifies(app)

    def test_merchants_cannot_change_their_own_plan(self, merchant_client_factory):
        shop, merchant_id = merchant_client_factory()
        response = shop.put(f"/v1/fee_plans/{merchant_id}", json={"rules": [{"percent": "0"}]})
        assert response.status_code == 403

    def test_a_bad_plan_is_refused(self, client, merchant_client_factory):
        _shop, merchant_id = merchant_client_factory()
        for rule in ({"percent": "101"}, {"percent": "abc"}, {"percent": "1", "fixed": -1},
                     {"percent": "1", "method": "cash"}):
            response = client.put(f"/v1/fee_plans/{merchant_id}", json={"rules": [rule]})
            assert response.status_code == 422, (rule, response.text)
        twice = client.put(f"/v1/fee_plans/{merchant_id}", json={"rules": [{"percent": "1"}, {"percent": "2"}]})
        assert twice.json()["code"] == "invalid_fee_plan"


class TestValidation:
    def test_bad_requests_get_stable_codes_and_store_nothing(self, client, merchant_client_factory):
        shop, _ = merchant_client_factory()
        cases = [
            ({"amount": 0, "currency": "CNY", "method": "card"}, 422),
            ({"amount": 1.5, "currency": "CNY", "method": "card"}, 422),
            ({"amount": "100", "currency": "CNY", "method": "card"}, 422),
            ({"amount": 100, "currency": "XYZ", "method": "card"}, 422),
            ({"amount": 100, "currency": "CNY", "method": "cash"}, 422),
            ({"amount": 100, "currency": "CNY", "method": "card"}, 422),
            (card_body(100, number="1234"), 422),
            ({"amount": 100, "currency": "CNY", "method": "card", "surprise": 1}, 422),
        ]
        for body, status in cases:
            response = shop.post("/v1/payments", json=body)
            assert response.status_code == status, (body, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
        assert shop.get("/v1/payments").json()["data"] == []

    def test_platform_callers_name_the_merchant(self, client, merchant_client_factory):
        _shop, merchant_id = merchant_client_factory()
        assert client.post("/v1/payments", json=card_body(100)).json()["code"] == "merchant_required"
        response = client.post("/v1/payments", json=card_body(100, merchant_id=merchant_id))
        assert response.status_code == 201
        assert response.json()["merchant_id"] == merchant_id

    def test_unknown_payment_is_404(self, merchant_client_factory):
        shop, _ = merchant_client_factory()
        response = shop.get("/v1/payments/pay_nope")
        assert response.status_code == 404
        assert response.json()["code"] == "payment_not_found"

    def test_listing_pages_with_a_cursor(self, merchant_client_factory):
        shop, _ = merchant_client_factory()
        ids = [shop.post("/v1/payments", json=card_body(100 + i)).json()["id"] for i in range(3)]
        first = shop.get("/v1/payments?limit=2").json()
        assert first["has_more"] is True
        second = shop.get(f"/v1/payments?limit=2&starting_after={first['next_cursor']}").json()
        assert {p["id"] for p in first["data"] + second["data"]} == set(ids)


class TestTopUpRefund:
    def test_a_top_up_refunds_only_what_the_wallet_still_holds(self, app, merchant_client_factory):
        shop, merchant_id = merchant_client_factory()
        wallet = _wallet(shop, "cus_t")
        top_up = shop.post(f"/v1/wallets/{wallet['id']}/top_ups", json={
            "amount": 2000, "method": "card", "payment_details": card_body()["payment_details"]}).json()
        shop.post("/v1/payments", json={"amount": 1500, "currency": "CNY", "method": "wallet",
                                        "customer": {"id": "cus_t"}})
        too_much = shop.post(f"/v1/payments/{top_up['id']}/refunds", json={"amount": 600})
        assert too_much.status_code == 409
        assert too_much.json()["code"] == "insufficient_funds"
        # Named by the wallet and what it holds, not by a ledger account a merchant key cannot read (session 20).
        assert too_much.json()["detail"] == (
            f"the wallet {wallet['id']} holds 500 CNY minor units: refunding 600 of this top-up would take it "
            "below zero (the customer has spent it); nothing was stored")
        assert shop.get(f"/v1/payments/{top_up['id']}/refunds").json()["data"] == []
        refund = shop.post(f"/v1/payments/{top_up['id']}/refunds", json={"amount": 500}).json()
        assert refund["status"] == "succeeded"
        assert shop.get(f"/v1/wallets/{wallet['id']}").json()["balance"] == 0
        # The card got 5.00 back from the channel: clearing 19.92 - 5.00
        assert balances(app, merchant_id)["clearing"] == 2000 - 8 - 500
        ledger_verifies(app)
