"""sandbox_bank: pending with transfer instructions, paid by the customer, booked with a
value date on the next business day, announced by an HMAC-SHA256 signed notification;
refunds are return transfers; unpaid instructions lapse."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from clearhouse.channels.connectors.sandbox import next_business_day
from clearhouse.channels.connectors.sandbox_bank import SIGNATURE_HEADER, TIMESTAMP_HEADER, bank_signature
from clearhouse.channels.protocol import APPROVED, FAILED, PENDING, REFUNDED, ChannelSet, NotificationInvalid
from clearhouse.kit import clock
from tests.channels.sandbox_support import FRIDAY, MONDAY, Recorder, charge, sandbox_settings


@pytest.fixture
def channels(tmp_path):
    return ChannelSet(sandbox_settings(tmp_path))


@pytest.fixture
def bank(channels):
    return channels["sandbox_bank"]


def bank_charge(reference: str = "att_1", amount: int = 25_000, currency: str = "EUR"):
    return charge(reference, amount, currency, channel="sandbox_bank")


class TestInstructions:
    def test_a_charge_is_pending_with_the_transfer_instructions(self, bank):
        with clock.frozen(MONDAY):
            result = bank.authorize(bank_charge())
        assert result.status == PENDING
        action = dict(result.next_action)
        code = action.pop("reference_code")
        assert code.startswith("CH-") and len(code) == 12
        assert action == {"type": "bank_transfer_instructions", "account_name": "Clearhouse Sandbox Collections",
                          "iban": "DE89370400440532013000", "bic": "COBADEFFXXX", "amount": 25_000,
                          "currency": "EUR", "expires_at": clock.rfc3339(MONDAY + timedelta(days=7))}
        assert bank.cost.fixed == 50

    def test_outside_the_iban_currencies_it_is_a_domestic_account_number(self, bank):
        action = bank.authorize(bank_charge(currency="GBP")).next_action
        assert "iban" not in action and action["account_number"] and action["sort_code"]

    def test_unpaid_instructions_lapse_after_seven_days(self, channels, bank):
        with clock.frozen(MONDAY) as frozen:
            bank.authorize(bank_charge())
            frozen.tick(days=7, seconds=1)
            recorder = Recorder(channels)
            bank.deliver_due(recorder)
            assert recorder.statuses() == [("att_1", FAILED)]


class TestTransfer:
    @pytest.mark.parametrize(("paid_at", "value_date"), [(MONDAY, "2026-11-24"), (FRIDAY, "2026-11-30")])
    def test_the_booked_credit_has_its_value_date_on_the_next_business_day(self, channels, bank, paid_at,
                                                                           value_date):
        with clock.frozen(paid_at):
            bank.authorize(bank_charge())
            assert bank.pay("att_1").status == APPROVED
            recorder = Recorder(channels)
            assert bank.deliver_due(recorder) == 1
        notification = recorder.parsed[0]
        assert (notification.reference, notification.status, notification.amount, notification.currency) == (
            "att_1", APPROVED, 25_000, "EUR")
        assert notification.raw["value_date"] == value_date
        assert notification.raw["booking_date"] == paid_at.date().isoformat()
        assert bank.query("att_1").raw["value_date"] == value_date

    def test_next_business_day_skips_the_weekend(self):
        assert [next_business_day(MONDAY.date() + timedelta(days=d)).isoformat() for d in range(7)] == [
            "2026-11-24", "2026-11-25", "2026-11-26", "2026-11-27", "2026-11-30", "2026-11-30", "2026-11-30"]

    def test_a_refund_is_a_return_transfer_booked_later(self, channels, bank):
        bank.authorize(bank_charge())
        bank.pay("att_1")
        bank.deliver_due(Recorder(channels))
        assert bank.refund("att_1", "re_1", 10_000, "EUR").status == PENDING
        recorder = Recorder(channels)
        bank.deliver_due(recorder)
        assert [(n.kind, n.reference, n.status, n.amount) for n in recorder.parsed] == [
            ("refund", "re_1", REFUNDED, 10_000)]
        assert recorder.parsed[0].raw["original_end_to_end_id"] == "att_1"
        assert bank.refund("att_1", "re_2", 15_001, "EUR").decline_code == "refund_exceeds_captured"


class TestSignature:
    def signed(self, channels, bank):
        bank.authorize(bank_charge())
        bank.pay("att_1")
        recorder = Recorder(channels)
        bank.deliver_due(recorder)
        _, headers, body = recorder.sent[0]
        return headers, body

    def test_it_is_hmac_sha256_over_the_timestamp_and_the_body(self, channels, bank):
        headers, body = self.signed(channels, bank)
        assert headers[SIGNATURE_HEADER] == bank_signature(bank.notification_secret, headers[TIMESTAMP_HEADER], body)
        assert bank.notification_reply().status_code == 200

    def test_a_changed_amount_is_refused(self, channels, bank):
        headers, body = self.signed(channels, bank)
        tampered = body.replace(b'"250.00"', b'"950.00"')
        assert tampered != body
        with pytest.raises(NotificationInvalid, match="signature"):
            bank.parse_notification(headers, tampered)

    def test_a_wrong_secret_is_refused(self, channels, bank):
        headers, body = self.signed(channels, bank)
        forged = bank_signature(b"not the secret", headers[TIMESTAMP_HEADER], body)
        with pytest.raises(NotificationInvalid, match="signature"):
            bank.parse_notification({**headers, SIGNATURE_HEADER: forged}, body)

    def test_a_stale_timestamp_is_refused_even_with_a_valid_signature(self, channels, bank):
        headers, body = self.signed(channels, bank)
        stale = str(int(headers[TIMESTAMP_HEADER]) - 301)
        resigned = {**headers, TIMESTAMP_HEADER: stale,
                    SIGNATURE_HEADER: bank_signature(bank.notification_secret, stale, body)}
        with pytest.raises(NotificationInvalid, match="5 minutes"):
            bank.parse_notification(resigned, body)

    def test_unknown_fields_are_refused(self, channels, bank):
        headers, body = self.signed(channels, bank)
        extended = json.dumps({**json.loads(body), "debtor_iban": "GB00"}).encode()
        resigned = {**headers, SIGNATURE_HEADER: bank_signature(bank.notification_secret, headers[TIMESTAMP_HEADER],
                                                                extended)}
        with pytest.raises(NotificationInvalid, match="unknown"):
            bank.parse_notification(resigned, extended)

    def test_missing_headers_are_refused(self, channels, bank):
        _, body = self.signed(channels, bank)
        with pytest.raises(NotificationInvalid):
            bank.parse_notification({}, body)
