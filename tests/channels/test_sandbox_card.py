"""sandbox_card: authorization with real decline codes, the challenge, manual capture,
cancel, refunds that never exceed the capture. Each behaviour straight on the connector."""

from __future__ import annotations

import csv
import io
import tempfile
import threading
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clearhouse.channels.connectors import sandbox_card as card_sandbox
from clearhouse.channels.connectors.sandbox_card import (
    CARD_APPROVED,
    CARD_APPROVED_MASTERCARD,
    CARD_CHALLENGE,
    CARD_CHANNEL_ERROR,
    DECLINING_CARDS,
    luhn_valid,
)
from clearhouse.channels.protocol import (
    APPROVED,
    AUTHORIZED,
    CANCELED,
    DECLINED,
    FAILED,
    NOT_FOUND,
    REFUNDED,
    REQUIRES_ACTION,
    ChannelError,
    ChannelSet,
    Connector,
    NotificationInvalid,
)
from clearhouse.kit import clock
from tests.channels.sandbox_support import MAGIC_AMOUNTS, MONDAY, Recorder, card, charge, sandbox_settings


@pytest.fixture
def channels(tmp_path):
    return ChannelSet(sandbox_settings(tmp_path))


@pytest.fixture
def connector(channels):
    return channels["sandbox_card"]


class TestAuthorize:
    def test_it_is_a_connector_with_the_documented_terms(self, connector):
        assert isinstance(connector, Connector)
        assert connector.methods == ("card",)
        assert str(connector.cost.rate) == "0.0038" and connector.cost.fixed == 0
        assert connector.supports_manual_capture is True

    def test_the_approving_card_is_approved_and_captured(self, connector):
        result = connector.authorize(charge("att_1", 10_000))
        assert (result.status, result.amount, result.captured_amount, result.refunded_amount) == (
            APPROVED, 10_000, 10_000, 0)
        assert result.external_id.startswith("ch_")
        assert result.raw["last4"] == "4242" and result.raw["brand"] == "visa"

    def test_without_capture_it_is_only_authorized(self, connector):
        result = connector.authorize(charge("att_1", 10_000, capture=False,
                                            card_data=card(CARD_APPROVED_MASTERCARD)))
        assert (result.status, result.captured_amount) == (AUTHORIZED, 0)
        assert result.raw["brand"] == "mastercard"

    @pytest.mark.parametrize(("number", "code"), sorted(DECLINING_CARDS.items()))
    def test_each_magic_card_declines_with_its_real_world_code(self, connector, number, code):
        result = connector.authorize(charge("att_1", card_data=card(number)))
        assert (result.status, result.decline_code) == (DECLINED, code)
        assert result.message
        assert connector.query("att_1").status == DECLINED  # the channel remembers its answer

    def test_every_magic_card_number_passes_the_luhn_check(self):
        numbers = [CARD_APPROVED, CARD_APPROVED_MASTERCARD, CARD_CHALLENGE, CARD_CHANNEL_ERROR, *DECLINING_CARDS]
        assert all(luhn_valid(number) for number in numbers)
        assert not luhn_valid("4242424242424241")

    def test_a_number_failing_luhn_is_an_incorrect_number(self, connector):
        result = connector.authorize(charge("att_1", card_data=card("4242424242424241")))
        assert (result.status, result.decline_code) == (DECLINED, "incorrect_number")

    def test_a_card_past_its_expiry_month_is_expired(self, connector):
        with clock.frozen(MONDAY):
            assert connector.authorize(charge("att_1", card_data=card(exp_month=10, exp_year=2026))).decline_code \
                == "expired_card"
            assert connector.authorize(charge("att_2", card_data=card(exp_month=11, exp_year=2026))).status \
                == APPROVED

    def test_a_malformed_security_code_is_incorrect_cvc(self, connector):
        assert connector.authorize(charge("att_1", card_data=card(cvc="12"))).decline_code == "incorrect_cvc"

    def test_the_error_card_raises_channel_error_and_the_channel_did_not_act(self, connector):
        with pytest.raises(ChannelError):
            connector.authorize(charge("att_1", card_data=card(CARD_CHANNEL_ERROR)))
        assert connector.query("att_1").status == NOT_FOUND

    def test_the_reference_is_the_channels_idempotency_key(self, connector):
        first = connector.authorize(charge("att_1", 10_000))
        again = connector.authorize(charge("att_1", 10_000))
        assert again.external_id == first.external_id and again.status == APPROVED
        with pytest.raises(ChannelError, match="different charge"):
            connector.authorize(charge("att_1", 9_999))

    def test_the_store_never_holds_the_card_number_or_the_security_code(self, connector, tmp_path):
        connector.authorize(charge("att_1", card_data=card("4000056655665556", cvc="987")))
        stored = b"".join(path.read_bytes() for path in (tmp_path / "sandbox").iterdir())
        assert b"4000056655665556" not in stored
        assert b"5556" in stored  # the last four digits are kept, as acquirers do


class TestManualCapture:
    def test_a_partial_capture_takes_part_and_releases_the_rest(self, connector):
        connector.authorize(charge("att_1", 10_000, capture=False))
        result = connector.capture("att_1", 6_000, "CNY")
        assert (result.status, result.captured_amount) == (APPROVED, 6_000)
        assert connector.query("att_1").captured_amount == 6_000

    def test_capture_happens_once_and_a_retry_gets_the_same_answer(self, connector):
        connector.authorize(charge("att_1", 10_000, capture=False))
        connector.capture("att_1", 6_000, "CNY")
        assert connector.capture("att_1", 6_000, "CNY").status == APPROVED  # the retry after a lost answer
        second = connector.capture("att_1", 4_000, "CNY")
        assert (second.status, second.decline_code) == (DECLINED, "not_capturable")
        assert connector.query("att_1").captured_amount == 6_000

    @pytest.mark.parametrize(("amount", "currency", "code"), [
        (10_001, "CNY", "amount_exceeds_authorized"), (5_000, "USD", "currency_mismatch"), (0, "CNY", "invalid_amount"),
    ])
    def test_an_impossible_capture_is_refused(self, connector, amount, currency, code):
        connector.authorize(charge("att_1", 10_000, capture=False))
        result = connector.capture("att_1", amount, currency)
        assert (result.status, result.decline_code) == (DECLINED, code)
        assert connector.query("att_1").status == AUTHORIZED

    def test_an_automatic_capture_cannot_be_captured_again(self, connector):
        connector.authorize(charge("att_1", 10_000))
        assert connector.capture("att_1", 10_000, "CNY").decline_code == "not_capturable"

    def test_cancel_voids_an_authorization(self, connector):
        connector.authorize(charge("att_1", 10_000, capture=False))
        assert connector.cancel("att_1").status == CANCELED
        assert connector.cancel("att_1").status == CANCELED  # idempotent
        assert connector.capture("att_1", 10_000, "CNY").decline_code == "not_capturable"

    def test_cancel_of_a_captured_payment_answers_its_state(self, connector):
        connector.authorize(charge("att_1", 10_000))
        result = connector.cancel("att_1")
        assert result.status == APPROVED and result.raw["refusal"] == "already_captured"

    def test_an_uncaptured_authorization_lapses_after_the_hold(self, tmp_path):
        connector = ChannelSet(sandbox_settings(tmp_path, authorization_hold_hours=24))["sandbox_card"]
        with clock.frozen(MONDAY) as frozen:
            connector.authorize(charge("att_1", 10_000, capture=False))
            frozen.tick(hours=23)
            assert connector.query("att_1").status == AUTHORIZED
            frozen.tick(hours=2)
            lapsed = connector.query("att_1")
            assert (lapsed.status, lapsed.decline_code) == (CANCELED, "authorization_expired")
            assert connector.capture("att_1", 10_000, "CNY").status == DECLINED

    def test_unknown_references_are_not_found(self, connector):
        assert connector.capture("att_x", 1, "CNY").status == NOT_FOUND
        assert connector.cancel("att_x").status == NOT_FOUND
        assert connector.refund("att_x", "re_x", 1, "CNY").status == NOT_FOUND
        assert connector.query("att_x").status == NOT_FOUND


class TestRefund:
    def test_full_partial_and_several_refunds_up_to_the_capture(self, connector):
        connector.authorize(charge("att_1", 10_000, capture=False))
        connector.capture("att_1", 6_000, "CNY")
        assert connector.refund("att_1", "re_1", 4_000, "CNY").status == REFUNDED
        assert connector.refund("att_1", "re_2", 2_000, "CNY").status == REFUNDED
        refused = connector.refund("att_1", "re_3", 1, "CNY")
        assert (refused.status, refused.decline_code) == (DECLINED, "refund_exceeds_captured")
        assert connector.query("att_1").refunded_amount == 6_000
        assert connector.query("re_2").status == REFUNDED
        assert connector.query("re_3").status == NOT_FOUND

    def test_a_refund_retried_with_its_id_is_not_refunded_twice(self, connector):
        connector.authorize(charge("att_1", 10_000))
        first = connector.refund("att_1", "re_1", 3_000, "CNY")
        again = connector.refund("att_1", "re_1", 3_000, "CNY")
        assert again.external_id == first.external_id
        assert connector.query("att_1").refunded_amount == 3_000
        assert connector.refund("att_1", "re_1", 2_000, "CNY").decline_code == "refund_id_reused"

    def test_only_a_captured_payment_can_be_refunded(self, connector):
        connector.authorize(charge("att_1", 10_000, capture=False))
        assert connector.refund("att_1", "re_1", 1_000, "CNY").decline_code == "not_captured"

    def test_concurrent_refunds_never_exceed_the_capture(self, tmp_path):
        settings = sandbox_settings(tmp_path)
        ChannelSet(settings)["sandbox_card"].authorize(charge("att_1", 10_000))
        results: list[str] = []
        barrier = threading.Barrier(12)

        def refund(index: int) -> None:
            # A connector of its own per thread, as separate server processes would have.
            connector = card_sandbox.SandboxCard(settings)
            barrier.wait()
            results.append(connector.refund("att_1", f"re_{index}", 1_500, "CNY").status)

        threads = [threading.Thread(target=refund, args=(i,)) for i in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results.count(REFUNDED) == 6 and results.count(DECLINED) == 6
        assert card_sandbox.SandboxCard(settings).query("att_1").refunded_amount == 9_000


class TestChallenge:
    def test_a_flagged_card_requires_the_customer_on_the_challenge_page(self, connector):
        result = connector.authorize(charge("att_1", 10_000, card_data=card(CARD_CHALLENGE)))
        assert result.status == REQUIRES_ACTION
        assert result.next_action == {"type": "redirect",
                                      "url": "http://testserver/sandbox/sandbox_card/challenge/att_1"}

    @pytest.mark.parametrize(("passed", "capture", "status"), [
        (True, True, APPROVED), (True, False, AUTHORIZED), (False, True, DECLINED),
    ])
    def test_the_outcome_is_the_channels_answer_and_is_notified(self, channels, connector, passed, capture, status):
        connector.authorize(charge("att_1", 10_000, capture=capture, card_data=card(CARD_CHALLENGE)))
        result = connector.challenge("att_1", passed)
        assert result.status == status
        assert connector.query("att_1").status == status
        if not passed:
            assert result.decline_code == "authentication_failed"
        recorder = Recorder(channels)
        connector.deliver_due(recorder)
        assert recorder.statuses() == [("att_1", status)]

    def test_an_unanswered_challenge_fails_after_fifteen_minutes(self, channels, connector):
        with clock.frozen(MONDAY) as frozen:
            connector.authorize(charge("att_1", 10_000, card_data=card(CARD_CHALLENGE)))
            frozen.tick(minutes=14)
            assert connector.query("att_1").status == REQUIRES_ACTION
            frozen.tick(minutes=2)
            assert connector.query("att_1").status == FAILED
            assert connector.challenge("att_1", True).status == FAILED  # too late
            recorder = Recorder(channels)
            connector.deliver_due(recorder)
            assert recorder.statuses() == [("att_1", FAILED)]


class TestInvariants:
    @settings(max_examples=60, deadline=None)
    # Not a magic amount: those make the authorization itself fail, time out or be declined.
    @given(authorized=st.integers(1, 100_000).filter(lambda amount: amount not in MAGIC_AMOUNTS), capture=st.booleans(),
           operations=st.lists(st.tuples(st.sampled_from(["capture", "refund", "cancel"]), st.integers(-5, 120_000)),
                               max_size=12))
    def test_no_sequence_refunds_more_than_captured_or_captures_more_than_authorized(
            self, authorized, capture, operations):
        with tempfile.TemporaryDirectory() as directory, clock.frozen(MONDAY):
            connector = card_sandbox.SandboxCard(sandbox_settings(Path(directory)))
            connector.authorize(charge("att_1", authorized, capture=capture))
            state = connector.query("att_1")
            for index, (operation, amount) in enumerate(operations):
                if operation == "capture":
                    connector.capture("att_1", amount, "CNY")
                elif operation == "refund":
                    connector.refund("att_1", f"re_{index}", amount, "CNY")
                else:
                    connector.cancel("att_1")
                state = connector.query("att_1")
                assert 0 <= state.refunded_amount <= state.captured_amount <= authorized
            # What the statement lists is what the channel holds: captured less refunded.
            rows = list(csv.DictReader(io.StringIO(connector.statement(MONDAY.date()).content.decode())))
            moved = sum(Decimal(row["amount"]) for row in rows) * 100
            assert moved == state.captured_amount - state.refunded_amount


class TestNotificationSignature:
    def signed(self, channels, connector):
        with clock.frozen(MONDAY):
            connector.authorize(charge("att_1", card_data=card(CARD_CHALLENGE)))
            connector.challenge("att_1", True)
            recorder = Recorder(channels)
            connector.deliver_due(recorder)
        _, headers, body = recorder.sent[0]
        return headers, body

    def test_a_flipped_byte_a_wrong_secret_and_a_stale_stamp_are_refused(self, channels, connector):
        headers, body = self.signed(channels, connector)
        with clock.frozen(MONDAY):
            assert connector.parse_notification(headers, body).status == APPROVED
            with pytest.raises(NotificationInvalid, match="signature"):
                connector.parse_notification(headers, body.replace(b'"amount":10000', b'"amount":90000'))
            timestamp = int(MONDAY.timestamp())
            forged = card_sandbox.card_signature(b"whsec_guess", timestamp, body)
            with pytest.raises(NotificationInvalid, match="signature"):
                connector.parse_notification({"Sandbox-Signature": f"t={timestamp},v1={forged}"}, body)
            with pytest.raises(NotificationInvalid, match="malformed"):
                connector.parse_notification({}, body)
        with clock.frozen(MONDAY + timedelta(minutes=6)), pytest.raises(NotificationInvalid, match="5 minutes"):
            connector.parse_notification(headers, body)
        assert connector.notification_reply().status_code == 200
