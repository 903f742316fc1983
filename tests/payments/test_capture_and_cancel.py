"""Manual capture holds the funds as a pending ledger entry (recipe 2); capture posts it,
fully or partly; cancel or expiry voids it."""

from __future__ import annotations

from datetime import timedelta

from clearhouse.kit import clock
from clearhouse.payments import service as payments
from tests.payments.support import balances, card_body, ledger_verifies


def _authorize(client, amount=10000):
    response = client.post("/v1/payments", json=card_body(amount, capture_method="manual"))
    assert response.status_code == 201, response.text
    payment = response.json()
    assert payment["status"] == "requires_capture"
    assert payment["authorization_expires_at"] is not None
    return payment


class TestManualCapture:
    def test_authorization_holds_without_posting(self, app, client, merchant_client_factory):
        shop, merchant_id = merchant_client_factory()
        payment = _authorize(shop)
        assert balances(app, merchant_id) == {"clearing": 0, "cost": 0, "merchant": 0, "fees": 0}
        hold = client.get(f"/v1/ledger/transfers/{payment['ledger_transfer_id']}").json()
        assert hold["status"] == "pending"
        assert {p["direction"] for p in hold["postings"]} == {"debit", "credit"}
        ledger_verifies(app)

    def test_full_capture_posts_recipe_1(self, app, merchant_client_factory):
        client, merchant_id = merchant_client_factory()
        payment = _authorize(client)
        captured = client.post(f"/v1/payments/{payment['id']}/capture", json={})
        assert captured.status_code == 200, captured.text
        assert captured.json()["status"] == "succeeded"
        assert balances(app, merchant_id) == {"clearing": 9962, "cost": 38, "merchant": 9940, "fees": 60}
        ledger_verifies(app)

    def test_partial_capture_posts_proportional_amounts_and_releases_the_rest(self, app, merchant_client_factory):
        client, merchant_id = merchant_client_factory()
        payment = _authorize(client)
        captured = client.post(f"/v1/payments/{payment['id']}/capture", json={"amount": 6000}).json()
        assert captured["amount_captured"] == 6000
        assert captured["fees"][0]["amount"] == 36
        got = balances(app, merchant_id)
        assert got == {"clearing": 5977, "cost": 23, "merchant": 5964, "fees": 36}
        assert got["clearing"] + got["cost"] == got["merchant"] + got["fees"] == 6000
        refund = client.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 6001})
        assert refund.json()["code"] == "refund_exceeds_captured"
        ledger_verifies(app)

    def test_capture_above_the_authorization_is_refused(self, merchant_client_factory):
        client, _ = merchant_client_factory()
        payment = _authorize(client, 1000)
        response = client.post(f"/v1/payments/{payment['id']}/capture", json={"amount": 1001})
        assert response.status_code == 409
        assert response.json()["code"] == "capture_exceeds_authorized"

    def test_capturing_twice_is_a_conflict(self, merchant_client_factory):
        client, _ = merchant_client_factory()
        payment = _authorize(client, 1000)
        assert client.post(f"/v1/payments/{payment['id']}/capture").status_code == 200
        again = client.post(f"/v1/payments/{payment['id']}/capture")
        assert again.status_code == 409
        assert again.json()["code"] == "payment_state_conflict"

    def test_manual_capture_is_for_cards(self, merchant_client_factory):
        client, _ = merchant_client_factory()
        response = client.post("/v1/payments", json={"amount": 100, "currency": "CNY", "method": "alipay",
                                                      "capture_method": "manual"})
        assert response.status_code == 422
        assert response.json()["code"] == "capture_method_not_supported"


class TestCancel:
    def test_cancel_voids_the_hold(self, app, merchant_client_factory):
        client, merchant_id = merchant_client_factory()
        payment = _authorize(client)
        canceled = client.post(f"/v1/payments/{payment['id']}/cancel", json={"reason": "customer changed mind"})
        assert canceled.status_code == 200, canceled.text
        assert canceled.json()["status"] == "canceled"
        assert balances(app, merchant_id) == {"clearing": 0, "cost": 0, "merchant": 0, "fees": 0}
        assert client.post(f"/v1/payments/{payment['id']}/capture").json()["code"] == "payment_state_conflict"
        ledger_verifies(app)

    def test_a_succeeded_payment_cannot_be_canceled(self, merchant_client_factory):
        client, _ = merchant_client_factory()
        payment = client.post("/v1/payments", json=card_body(100)).json()
        response = client.post(f"/v1/payments/{payment['id']}/cancel")
        assert response.status_code == 409

    def test_expired_authorizations_are_released_by_the_worker(self, app, merchant_client_factory):
        client, merchant_id = merchant_client_factory()
        payment = _authorize(client)
        runtime = payments.Runtime.of(app)
        assert payments.expire_authorizations(runtime) == 0
        with clock.frozen(clock.now() + timedelta(hours=app.state.settings.authorization_hold_hours, minutes=1)):
            assert payments.expire_authorizations(runtime) == 1
        view = client.get(f"/v1/payments/{payment['id']}").json()
        assert view["status"] == "canceled"
        assert balances(app, merchant_id) == {"clearing": 0, "cost": 0, "merchant": 0, "fees": 0}
        ledger_verifies(app)


class TestChannelDown:
    def test_a_capture_the_channel_does_not_answer_changes_nothing_and_can_be_retried(self, app,
                                                                                      merchant_client_factory):
        from clearhouse.channels.connectors import sandbox

        client, merchant_id = merchant_client_factory()
        payment = _authorize(client)
        card = app.state.channels["sandbox_card"]
        card.faults = sandbox.FaultProfile(error_rate=1.0)
        refused = client.post(f"/v1/payments/{payment['id']}/capture")
        assert refused.status_code == 409
        assert refused.json()["code"] == "channel_not_answering"
        assert client.get(f"/v1/payments/{payment['id']}").json()["status"] == "requires_capture"
        card.faults = sandbox.FaultProfile()
        assert client.post(f"/v1/payments/{payment['id']}/capture").json()["status"] == "succeeded"
        assert balances(app, merchant_id)["merchant"] == 9940
