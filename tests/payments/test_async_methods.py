"""QR wallets and bank transfers: the payment waits for the customer, and the outcome comes
by signed notification, duplicated, delayed and out of order, as real ones come."""

from __future__ import annotations

from datetime import timedelta

import pytest

from clearhouse.channels.connectors import sandbox
from clearhouse.kit import clock
from clearhouse.payments import service as payments
from tests.payments.support import balances, ledger_verifies

CHANNEL_OF = {"alipay": "sandbox_alipay", "wechat_pay": "sandbox_wechat", "bank_transfer": "sandbox_bank"}


def _send_through(client):
    def send(path: str, headers: dict[str, str], body: bytes) -> int:
        return client.post(path, content=body, headers=headers).status_code
    return send


def _deliver_everything(app, client) -> int:
    """Deliver every queued notification, however far in the future the fault profile put it."""
    total = 0
    with clock.frozen(clock.now() + timedelta(hours=1)):
        for _ in range(5):
            total += sandbox.deliver_due(app.state.settings, _send_through(client))
    return total


@pytest.mark.parametrize("method", ["alipay", "wechat_pay", "bank_transfer"])
class TestCustomerPaysLater:
    def test_waits_for_the_customer_then_succeeds_by_notification(self, app, anonymous_client,
                                                                   merchant_client_factory, method):
        shop, merchant_id = merchant_client_factory()
        payment = shop.post("/v1/payments", json={"amount": 8800, "currency": "CNY", "method": method}).json()
        channel = CHANNEL_OF[method]
        assert payment["channel"] == channel
        assert payment["status"] in ("requires_action", "processing")
        assert payment["next_action"]["type"] in ("qr_code", "bank_transfer_instructions")
        assert balances(app, merchant_id, channel=channel)["merchant"] == 0

        app.state.channels[channel].pay(payment["attempts"][0]["id"])
        assert _deliver_everything(app, anonymous_client) >= 1
        view = shop.get(f"/v1/payments/{payment['id']}").json()
        assert view["status"] == "succeeded"
        assert balances(app, merchant_id, channel=channel)["merchant"] == 8800 - 53
        ledger_verifies(app)

    def test_duplicated_delayed_and_reordered_notifications_apply_once(self, app, anonymous_client,
                                                                        merchant_client_factory, method):
        shop, merchant_id = merchant_client_factory()
        channel = CHANNEL_OF[method]
        app.state.channels[channel].faults = sandbox.FaultProfile(duplicate_rate=1.0, reorder_rate=1.0,
                                                                  delay_seconds=30, seed=7)
        payment = shop.post("/v1/payments", json={"amount": 5000, "currency": "CNY", "method": method}).json()
        app.state.channels[channel].pay(payment["attempts"][0]["id"])
        assert _deliver_everything(app, anonymous_client) >= 2
        view = shop.get(f"/v1/payments/{payment['id']}").json()
        assert view["status"] == "succeeded"
        successes = [e for e in view["timeline"] if e["type"] == "status_changed" and e["to_status"] == "succeeded"]
        assert len(successes) == 1
        assert balances(app, merchant_id, channel=channel)["merchant"] == 5000 - 30
        ledger_verifies(app)

    def test_the_worker_finds_out_when_no_notification_arrives(self, app, merchant_client_factory, method):
        shop, _ = merchant_client_factory()
        payment = shop.post("/v1/payments", json={"amount": 4000, "currency": "CNY", "method": method}).json()
        app.state.channels[CHANNEL_OF[method]].pay(payment["attempts"][0]["id"])
        # The notification is lost; the worker's query settles it.
        assert payments.resolve_stuck(payments.Runtime.of(app), older_than_seconds=-1) == 1
        assert shop.get(f"/v1/payments/{payment['id']}").json()["status"] == "succeeded"
        ledger_verifies(app)

    def test_cancel_before_the_customer_pays(self, app, merchant_client_factory, method):
        shop, _ = merchant_client_factory()
        payment = shop.post("/v1/payments", json={"amount": 4000, "currency": "CNY", "method": method}).json()
        canceled = shop.post(f"/v1/payments/{payment['id']}/cancel")
        assert canceled.status_code == 200, canceled.text
        assert canceled.json()["status"] == "canceled"
        ledger_verifies(app)


class TestNotificationsEndpoint:
    def test_a_late_pending_never_overrides_succeeded(self, app, anonymous_client, merchant_client_factory):
        shop, _ = merchant_client_factory()
        payment = shop.post("/v1/payments", json={"amount": 1000, "currency": "CNY", "method": "alipay"}).json()
        alipay = app.state.channels["sandbox_alipay"]
        alipay.faults = sandbox.FaultProfile(reorder_rate=1.0, seed=1)
        alipay.pay(payment["attempts"][0]["id"])
        _deliver_everything(app, anonymous_client)
        view = shop.get(f"/v1/payments/{payment['id']}").json()
        assert view["status"] == "succeeded"

    def test_each_notification_is_stored_once(self, app, anonymous_client, merchant_client_factory):
        from sqlalchemy import func, select

        from clearhouse.kit.db import transact
        from clearhouse.payments.models import ChannelNotification

        shop, _ = merchant_client_factory()
        payment = shop.post("/v1/payments", json={"amount": 1000, "currency": "CNY", "method": "wechat_pay"}).json()
        wechat = app.state.channels["sandbox_wechat"]
        wechat.faults = sandbox.FaultProfile(duplicate_rate=1.0, seed=3)
        wechat.pay(payment["attempts"][0]["id"])
        delivered = _deliver_everything(app, anonymous_client)
        stored = transact(app.state.engine, lambda s: s.execute(
            select(func.count()).select_from(ChannelNotification)).scalar())
        assert delivered > stored >= 1

    def test_unknown_channel_is_404(self, anonymous_client):
        response = anonymous_client.post("/v1/channels/nope/notifications", content=b"{}")
        assert response.status_code == 404
        assert response.json()["code"] == "unknown_channel"
