"""Every fault profile of every sandbox channel, end to end over HTTP with signed merchant
requests: whatever the channel does, the payment ends in a state that matches what the
channel did, nobody is charged twice, and the ledger verifies (the autouse check)."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest

from clearhouse.channels.connectors import sandbox
from clearhouse.channels.protocol import ChannelUnavailable
from clearhouse.kit import clock
from clearhouse.payments import service as payments
from tests.conftest import CARD_EXP_YEAR
from tests.payments.support import APPROVED_CARD

METHODS = {"sandbox_card": "card", "sandbox_bank": "bank_transfer", "sandbox_alipay": "alipay",
           "sandbox_wechat": "wechat_pay"}
PROFILES = {
    "latency": sandbox.FaultProfile(latency_ms=30),
    "decline_rate": sandbox.FaultProfile(decline_rate=1.0, seed=1),
    "timeout_rate": sandbox.FaultProfile(timeout_rate=1.0, seed=1),
    "error_rate": sandbox.FaultProfile(error_rate=1.0, seed=1),
    "outage": sandbox.FaultProfile(outages=(("00:00", "00:00"),)),  # replaced below: the current minute
    "notifications": sandbox.FaultProfile(duplicate_rate=1.0, delay_seconds=5, reorder_rate=1.0, seed=1),
}


def _outage_now() -> sandbox.FaultProfile:
    now = clock.now()
    start = now.strftime("%H:%M")
    end = (now + timedelta(minutes=2)).strftime("%H:%M")
    return sandbox.FaultProfile(outages=((start, end),))


def _body(method: str) -> dict:
    body = {"amount": 2000, "currency": "CNY", "method": method}
    if method == "card":
        body["payment_details"] = {"card": {"number": APPROVED_CARD, "exp_month": 12, "exp_year": CARD_EXP_YEAR}}
    return body


def _settle(app, anonymous_client, channel: str, payment: dict) -> None:
    """The customer pays where the channel waits for one, then every notification arrives."""
    connector = app.state.channels[channel]
    if payment["status"] in ("requires_action", "processing") and hasattr(connector, "pay"):
        # An outage refuses the customer too: the payment stays unpaid.
        with contextlib.suppress(ChannelUnavailable):
            connector.pay(payment["attempts"][-1]["id"])
    connector.faults = sandbox.FaultProfile()
    with clock.frozen(clock.now() + timedelta(minutes=10)):
        for _ in range(3):
            sandbox.deliver_due(app.state.settings, lambda path, headers, body: anonymous_client.post(
                path, content=body, headers=headers).status_code)
    payments.resolve_stuck(payments.Runtime.of(app), older_than_seconds=-1)


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("channel", sorted(METHODS))
def test_every_fault_profile_ends_consistent(app, anonymous_client, merchant_client_factory, channel, profile):
    shop, _ = merchant_client_factory()
    app.state.channels[channel].faults = _outage_now() if profile == "outage" else PROFILES[profile]
    response = shop.post("/v1/payments", json=_body(METHODS[channel]))
    assert response.status_code == 201, response.text
    payment = response.json()
    assert payment["channel"] == channel
    _settle(app, anonymous_client, channel, payment)
    final = shop.get(f"/v1/payments/{payment['id']}").json()
    operation = app.state.channels[channel].order(final["attempts"][-1]["id"])
    charged = operation is not None and operation["status"] in ("approved", "authorized")
    # What we say equals what the channel did: succeeded exactly when it charged.
    assert (final["status"] == "succeeded") == charged, (final["status"], operation)
    if profile in ("decline_rate", "error_rate", "outage") and channel == "sandbox_card":
        assert final["status"] == "failed"
    if profile in ("latency", "timeout_rate", "notifications"):
        assert final["status"] == "succeeded"
    assert final["amount_captured"] == (2000 if charged else 0)
