"""Card payments end to end over HTTP with signed merchant requests, each checked against
the ledger (accounting.md recipes 1-3)."""

from __future__ import annotations

from tests.payments.support import APPROVED_CARD, balances, card_body, ledger_verifies


class TestAutomaticCapture:
    def test_a_sale_of_100_with_a_0_6_percent_plan_posts_recipe_1(self, app, merchant_client_factory):
        client, merchant_id = merchant_client_factory()
        response = client.post("/v1/payments", json=card_body(10000))
        assert response.status_code == 201, response.text
        payment = response.json()
        assert payment["status"] == "succeeded"
        assert payment["fees"][0]["amount"] == 60
        assert payment["net_amount"] == 9940
        assert payment["attempts"][0]["channel"] == "sandbox_card"
        assert payment["attempts"][0]["status"] == "approved"
        # Dr clearing 99.62, Dr cost 0.38, Cr merchant 99.40, Cr fees 0.60
        assert balances(app, merchant_id) == {"clearing": 9962, "cost": 38, "merchant": 9940, "fees": 60}
        ledger_verifies(app)

    def test_the_card_number_is_vaulted_and_never_echoed(self, merchant_client_factory):
        client, _ = merchant_client_factory()
        payment = client.post("/v1/payments", json=card_body(500)).json()
        assert APPROVED_CARD not in str(payment)
        assert payment["card_id"].startswith("card_")
        again = client.post("/v1/payments", json={
            "amount": 700, "currency": "CNY", "method": "card",
            "payment_details": {"card": {"card_id": payment["card_id"]}}})
        assert again.status_code == 201, again.text
        assert again.json()["status"] == "succeeded"

    def test_the_timeline_shows_every_transition(self, merchant_client_factory):
        client, _ = merchant_client_factory()
        payment = client.post("/v1/payments", json=card_body(1000)).json()
        timeline = client.get(f"/v1/payments/{payment['id']}").json()["timeline"]
        kinds = [e["type"] for e in timeline]
        assert kinds[0] == "created"
        assert "attempt_started" in kinds
        assert timeline[-1]["to_status"] == "succeeded"


class TestRefunds:
    def test_partial_refund_of_30_returns_the_proportional_fee(self, app, merchant_client_factory):
        client, merchant_id = merchant_client_factory()
        payment = client.post("/v1/payments", json=card_body(10000)).json()
        response = client.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 3000})
        assert response.status_code == 201, response.text
        refund = response.json()
        assert refund["status"] == "succeeded"
        assert refund["fee_refunded"] == 18
        # recipe 3: Dr merchant 29.82, Dr fees 0.18, Cr clearing 30.00
        assert balances(app, merchant_id) == {"clearing": 6962, "cost": 38, "merchant": 9940 - 2982, "fees": 42}
        assert client.get(f"/v1/payments/{payment['id']}").json()["amount_refunded"] == 3000
        ledger_verifies(app)

    def test_refunds_never_exceed_the_captured_amount(self, app, merchant_client_factory):
        client, _ = merchant_client_factory()
        payment = client.post("/v1/payments", json=card_body(1000)).json()
        assert client.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 600}).status_code == 201
        too_much = client.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 401})
        assert too_much.status_code == 409
        assert too_much.json()["code"] == "refund_exceeds_captured"
        rest = client.post(f"/v1/payments/{payment['id']}/refunds", json={})
        assert rest.json()["amount"] == 400
        ledger_verifies(app)

    def test_several_partial_refunds_return_exactly_the_whole_fee(self, app, merchant_client_factory):
        client, merchant_id = merchant_client_factory()
        payment = client.post("/v1/payments", json=card_body(10001)).json()
        fee = payment["fees"][0]["amount"]
        returned = sum(client.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": a}).json()["fee_refunded"]
                       for a in (3333, 3333, 3335))
        assert returned == fee
        assert balances(app, merchant_id)["merchant"] == 0
        ledger_verifies(app)


class TestTenancy:
    def test_another_merchants_payment_is_not_found(self, merchant_client_factory):
        mine, _ = merchant_client_factory("Mine")
        theirs, _ = merchant_client_factory("Theirs")
        payment = mine.post("/v1/payments", json=card_body(100)).json()
        assert theirs.get(f"/v1/payments/{payment['id']}").status_code == 404
        assert theirs.post(f"/v1/payments/{payment['id']}/refunds", json={}).status_code == 404
