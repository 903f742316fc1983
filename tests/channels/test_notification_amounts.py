"""What a notification says was paid: ``Notification.amount`` in minor units of
``Notification.currency``, always both, whatever the currency's exponent, so that payments can
compare them with the payment's own amount and currency.

- ``sandbox_card``: the amount of the charge (approved: captured in full; authorized: the hold).
- ``sandbox_bank``: the amount of the transfer booked (the instructed amount); a refund's amount.
- ``sandbox_alipay``: ``total_amount``, the order's total.
- ``sandbox_wechat``: ``amount.total``, the order's total; a refund's ``amount.refund``."""

from __future__ import annotations

import pytest

from clearhouse.channels.protocol import APPROVED, AUTHORIZED, REFUNDED, ChannelSet
from tests.channels.sandbox_support import SANDBOX_NAMES, Recorder, card, charge, sandbox_settings

CHALLENGE = "4000000000003220"
AMOUNTS = [(12_345, "CNY"), (12_345, "JPY"), (12_345, "KWD"), (1, "BHD"), (987_654_321_012, "EUR")]
"""Exponents 2, 0 and 3; the smallest amount; a large one."""


@pytest.fixture
def channels(tmp_path):
    return ChannelSet(sandbox_settings(tmp_path))


@pytest.mark.parametrize("name", SANDBOX_NAMES)
@pytest.mark.parametrize(("amount", "currency"), AMOUNTS)
def test_a_paid_payment_is_notified_with_its_amount_and_currency(channels, name, amount, currency):
    connector = channels[name]
    challenge = card(CHALLENGE) if name == "sandbox_card" else None
    connector.authorize(charge("att_1", amount, currency, channel=name, card_data=challenge))
    if name == "sandbox_card":
        connector.challenge("att_1", True)
    else:
        connector.pay("att_1")
    recorder = Recorder(channels)
    connector.deliver_due(recorder)
    [notification] = recorder.parsed
    assert (notification.status, notification.amount, notification.currency) == (APPROVED, amount, currency)


@pytest.mark.parametrize(("amount", "currency"), AMOUNTS)
def test_an_authorized_card_payment_is_notified_with_the_authorized_amount(channels, amount, currency):
    connector = channels["sandbox_card"]
    connector.authorize(charge("att_1", amount, currency, capture=False, card_data=card(CHALLENGE)))
    connector.challenge("att_1", True)
    recorder = Recorder(channels)
    connector.deliver_due(recorder)
    [notification] = recorder.parsed
    assert (notification.status, notification.amount, notification.currency) == (AUTHORIZED, amount, currency)


@pytest.mark.parametrize("name", ["sandbox_bank", "sandbox_wechat"])
@pytest.mark.parametrize(("amount", "currency"), AMOUNTS)
def test_a_completed_refund_is_notified_with_the_refunds_amount(channels, name, amount, currency):
    connector = channels[name]
    connector.authorize(charge("att_1", amount * 3, currency, channel=name))
    connector.pay("att_1")
    connector.refund("att_1", "re_1", amount, currency)
    connector.sweep()
    recorder = Recorder(channels)
    connector.deliver_due(recorder)
    assert [(n.kind, n.status, n.amount, n.currency) for n in recorder.parsed] == [
        ("payment", APPROVED, amount * 3, currency), ("refund", REFUNDED, amount, currency)]
