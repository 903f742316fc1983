"""A decline learned from a notification keeps its code: every sandbox fills
``Notification.decline_code`` (and ``message``) for a failed payment, and the payment ends
with that code as its ``failure_code``, as it would had the channel answered at once."""

from __future__ import annotations

from datetime import timedelta

import pytest
from typer.testing import CliRunner

from clearhouse.channels import commands
from clearhouse.channels.connectors.sandbox import CARD_DECLINE_MESSAGES, DECLINE_MESSAGES, FaultProfile, deliver_due
from clearhouse.channels.connectors.sandbox_card import CARD_CHALLENGE, sandbox_card
from clearhouse.channels.protocol import APPROVED, DECLINED, FAILED, PENDING, REFUNDED, ChannelSet
from clearhouse.kit import clock
from clearhouse.kit.settings import get_settings
from tests.channels.sandbox_support import MONDAY, SANDBOX_NAMES, Recorder, card, charge, sandbox_settings

WAITS = {"sandbox_card": timedelta(minutes=16), "sandbox_alipay": timedelta(minutes=16),
         "sandbox_wechat": timedelta(minutes=16), "sandbox_bank": timedelta(days=8)}
"""Longer than each channel lets a payment wait for the customer."""


@pytest.fixture
def channels(tmp_path):
    return ChannelSet(sandbox_settings(tmp_path))


def _waiting(connector, reference: str = "att_1") -> None:
    challenge = card(CARD_CHALLENGE) if connector.name == "sandbox_card" else None
    connector.authorize(charge(reference, 8800, channel=connector.name, card_data=challenge))


class TestTheNotificationCarriesTheDecline:
    def test_a_failed_challenge_is_authentication_failed(self, channels):
        connector = channels["sandbox_card"]
        _waiting(connector)
        connector.challenge("att_1", False)
        recorder = Recorder(channels)
        connector.deliver_due(recorder)
        [notification] = recorder.parsed
        assert (notification.status, notification.decline_code, notification.message) == (
            DECLINED, "authentication_failed", DECLINE_MESSAGES["authentication_failed"])

    @pytest.mark.parametrize("name", SANDBOX_NAMES)
    def test_a_payment_left_waiting_fails_expired(self, channels, name):
        connector = channels[name]
        with clock.frozen(MONDAY) as frozen:
            _waiting(connector)
            frozen.tick(seconds=WAITS[name].total_seconds())
            recorder = Recorder(channels)
            connector.deliver_due(recorder)
        [notification] = recorder.parsed
        # WeChat Pay says why in its own words (trade_state_desc); the others by their code.
        # A card's unanswered challenge says so (session 20: it said the customer did not pay in time).
        message = {"sandbox_wechat": "已关闭", "sandbox_card": CARD_DECLINE_MESSAGES["expired"]}.get(
            name, DECLINE_MESSAGES["expired"])
        assert (notification.status, notification.decline_code, notification.message) == (FAILED, "expired", message)

    @pytest.mark.parametrize("name", SANDBOX_NAMES)
    def test_a_paid_or_waiting_payment_has_no_decline(self, channels, name):
        connector = channels[name]
        connector.faults = FaultProfile(reorder_rate=1.0)  # a stale pending after the approval
        _waiting(connector)
        if name == "sandbox_card":
            connector.challenge("att_1", True)
        else:
            connector.pay("att_1")
        recorder = Recorder(channels)
        connector.deliver_due(recorder)
        assert [(n.status, n.decline_code, n.message) for n in recorder.parsed] == [
            (APPROVED, None, None), (PENDING, None, None)]

    @pytest.mark.parametrize("name", ["sandbox_bank", "sandbox_wechat"])
    def test_a_completed_refund_has_no_decline(self, channels, name):
        connector = channels[name]
        _waiting(connector)
        connector.pay("att_1")
        connector.refund("att_1", "re_1", 3000, "CNY")
        connector.sweep()
        recorder = Recorder(channels)
        connector.deliver_due(recorder)
        assert [(n.kind, n.status, n.decline_code) for n in recorder.parsed] == [
            ("payment", APPROVED, None), ("refund", REFUNDED, None)]


# --------------------------------------------------------------------------- on the platform


def _send_through(client):
    def send(path: str, headers: dict[str, str], body: bytes) -> int:
        return client.post(path, content=body, headers=headers).status_code
    return send


class TestThePaymentKeepsTheCode:
    def test_a_challenge_failed_from_the_command_line_ends_authentication_failed(
            self, app, anonymous_client, merchant_client_factory, monkeypatch):
        """The tester's steps: ``clearhouse sandbox challenge pat_... --fail``, then delivery."""
        shop, _ = merchant_client_factory()
        payment = shop.post("/v1/payments", json={"amount": 4200, "currency": "CNY", "method": "card",
                                                  "payment_details": {"card": sandbox_card(CARD_CHALLENGE)}}).json()
        assert payment["status"] == "requires_action", payment
        monkeypatch.setenv("CLEARHOUSE_SANDBOX_DIR", str(app.state.settings.sandbox_dir))
        get_settings.cache_clear()
        try:
            answered = CliRunner().invoke(commands.app, ["challenge", payment["attempts"][0]["id"], "--fail"])
        finally:
            get_settings.cache_clear()
        assert answered.exit_code == 0 and "declined" in answered.output, answered.output
        assert deliver_due(app.state.settings, _send_through(anonymous_client)) == 1
        view = shop.get(f"/v1/payments/{payment['id']}").json()
        assert (view["status"], view["failure_code"], view["failure_message"]) == (
            "failed", "authentication_failed", DECLINE_MESSAGES["authentication_failed"])
        assert view["attempts"][0]["decline_code"] == "authentication_failed"

    @pytest.mark.parametrize("method", ["card", "alipay", "wechat_pay", "bank_transfer"])
    def test_a_payment_the_customer_never_completed_ends_expired(self, app, anonymous_client,
                                                                 merchant_client_factory, method):
        shop, _ = merchant_client_factory()
        details = {"payment_details": {"card": sandbox_card(CARD_CHALLENGE)}} if method == "card" else {}
        payment = shop.post("/v1/payments", json={"amount": 4200, "currency": "CNY", "method": method,
                                                  **details}).json()
        assert payment["status"] in ("requires_action", "processing"), payment
        with clock.frozen(clock.now() + WAITS[payment["channel"]]):
            assert deliver_due(app.state.settings, _send_through(anonymous_client)) == 1
        view = shop.get(f"/v1/payments/{payment['id']}").json()
        assert (view["status"], view["failure_code"]) == ("failed", "expired")
