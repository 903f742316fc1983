"""Fault profiles and magic amounts: latency, declines, timeouts (the channel acted first),
errors (it did not), outage windows; and ``query`` telling the truth afterwards."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from clearhouse.channels.connectors.sandbox import (
    AMOUNT_CHANNEL_ERROR,
    AMOUNT_DECLINE,
    AMOUNT_OUTAGE,
    AMOUNT_TIMEOUT_AFTER_ACTING,
    AMOUNT_TIMEOUT_BEFORE_ACTING,
    FaultProfile,
)
from clearhouse.channels.protocol import (
    APPROVED,
    DECLINED,
    NOT_FOUND,
    PENDING,
    REQUIRES_ACTION,
    ChannelError,
    ChannelSet,
    ChannelTimeout,
    ChannelUnavailable,
)
from clearhouse.kit import clock
from tests.channels.sandbox_support import MONDAY, SANDBOX_NAMES, charge, sandbox_settings

ACCEPTED = {"sandbox_card": APPROVED, "sandbox_bank": PENDING, "sandbox_alipay": REQUIRES_ACTION,
            "sandbox_wechat": REQUIRES_ACTION}


@pytest.fixture
def channels(tmp_path):
    return ChannelSet(sandbox_settings(tmp_path))


class TestFaultProfile:
    def test_settings_give_each_channel_its_profile(self, tmp_path):
        settings = sandbox_settings(tmp_path, sandbox_faults={
            "sandbox_card": {"latency_ms": 5, "decline_rate": 0.1, "outages": [["02:00", "02:15"]], "seed": 7}})
        channels = ChannelSet(settings)
        assert channels["sandbox_card"].faults == FaultProfile(latency_ms=5, decline_rate=0.1,
                                                               outages=(("02:00", "02:15"),), seed=7)
        assert channels["sandbox_bank"].faults == FaultProfile()

    @pytest.mark.parametrize("values", [
        {"decline_rat": 0.1}, {"decline_rate": 1.5}, {"timeout_rate": -0.1}, {"latency_ms": -1},
        {"outages": [["2:00", "02:15"]]}, {"outages": [["24:00", "01:00"]]},
    ])
    def test_a_wrong_profile_is_refused(self, values):
        with pytest.raises(ValueError):
            FaultProfile.from_mapping(values)

    def test_outage_windows_are_utc_and_may_wrap_midnight(self):
        profile = FaultProfile(outages=(("02:00", "02:15"), ("23:50", "00:10")))
        at = lambda h, m: datetime(2026, 11, 23, h, m, tzinfo=UTC)  # noqa: E731
        assert [profile.in_outage(at(h, m)) for h, m in [(1, 59), (2, 0), (2, 14), (2, 15), (23, 49), (23, 55),
                                                        (0, 5), (0, 10)]] == [
            False, True, True, False, False, True, True, False]


class TestTimeouts:
    def test_a_timeout_comes_after_the_channel_acted_and_query_tells_the_truth(self, channels):
        connector = channels["sandbox_card"]
        connector.faults = FaultProfile(timeout_rate=1.0)
        with pytest.raises(ChannelTimeout):
            connector.authorize(charge("att_1", 10_000))
        truth = connector.query("att_1")
        assert (truth.status, truth.captured_amount) == (APPROVED, 10_000)

    def test_retrying_after_a_timeout_never_charges_twice(self, channels):
        connector = channels["sandbox_card"]
        with clock.frozen(MONDAY):
            with pytest.raises(ChannelTimeout):
                connector.authorize(charge("att_1", AMOUNT_TIMEOUT_AFTER_ACTING))
            first = connector.query("att_1")
            again = connector.authorize(charge("att_1", AMOUNT_TIMEOUT_AFTER_ACTING))
        assert again.external_id == first.external_id
        lines = [row for row in connector.statement(MONDAY.date()).content.decode().splitlines()[1:]]
        assert len(lines) == 1

    @pytest.mark.parametrize("name", SANDBOX_NAMES)
    def test_magic_amounts_time_out_with_and_without_the_channel_acting(self, channels, name):
        connector = channels[name]
        with pytest.raises(ChannelTimeout):
            connector.authorize(charge("att_after", AMOUNT_TIMEOUT_AFTER_ACTING, channel=name))
        assert connector.query("att_after").status == ACCEPTED[name]
        with pytest.raises(ChannelTimeout):
            connector.authorize(charge("att_before", AMOUNT_TIMEOUT_BEFORE_ACTING, channel=name))
        assert connector.query("att_before").status == NOT_FOUND

    def test_latency_past_our_timeout_is_a_timeout_after_acting(self, tmp_path):
        connector = ChannelSet(sandbox_settings(tmp_path, channel_timeout_seconds=0.05))["sandbox_card"]
        connector.faults = FaultProfile(latency_ms=200)
        started = time.monotonic()
        with pytest.raises(ChannelTimeout):
            connector.authorize(charge("att_1"))
        assert 0.05 <= time.monotonic() - started < 0.2  # it waited our timeout, not the channel's latency
        connector.faults = FaultProfile()
        assert connector.query("att_1").status == APPROVED

    def test_latency_slows_every_call(self, channels):
        connector = channels["sandbox_card"]
        connector.faults = FaultProfile(latency_ms=60)
        started = time.monotonic()
        connector.authorize(charge("att_1"))
        connector.query("att_1")
        assert time.monotonic() - started >= 0.12

    def test_a_capture_and_a_refund_can_time_out_after_acting_too(self, channels):
        connector = channels["sandbox_card"]
        connector.authorize(charge("att_1", 10_000, capture=False))
        connector.faults = FaultProfile(timeout_rate=1.0)
        with pytest.raises(ChannelTimeout):
            connector.capture("att_1", 10_000, "CNY")
        with pytest.raises(ChannelTimeout):
            connector.refund("att_1", "re_1", 2_500, "CNY")
        assert connector.query("att_1").captured_amount == 10_000
        assert connector.query("re_1").amount == 2_500


class TestErrorsAndOutages:
    @pytest.mark.parametrize("name", SANDBOX_NAMES)
    def test_magic_amounts_fail_without_acting_on_every_sandbox(self, channels, name):
        connector = channels[name]
        with pytest.raises(ChannelError):
            connector.authorize(charge("att_error", AMOUNT_CHANNEL_ERROR, channel=name))
        with pytest.raises(ChannelUnavailable):
            connector.authorize(charge("att_outage", AMOUNT_OUTAGE, channel=name))
        result = connector.authorize(charge("att_decline", AMOUNT_DECLINE, channel=name))
        assert (result.status, result.decline_code) == (DECLINED, "do_not_honor")
        assert connector.query("att_error").status == NOT_FOUND
        assert connector.query("att_outage").status == NOT_FOUND

    def test_error_rate_fails_without_acting(self, channels):
        connector = channels["sandbox_card"]
        connector.faults = FaultProfile(error_rate=1.0)
        with pytest.raises(ChannelError):
            connector.authorize(charge("att_1"))
        assert connector.query("att_1").status == NOT_FOUND

    def test_an_outage_window_refuses_every_call_until_it_ends(self, channels):
        connector = channels["sandbox_wechat"]
        with clock.frozen(MONDAY.replace(hour=2, minute=5)) as frozen:
            connector.authorize(charge("att_1", channel="sandbox_wechat"))
            connector.faults = FaultProfile(outages=(("02:00", "02:15"),))
            frozen.tick(minutes=1)
            with pytest.raises(ChannelUnavailable):
                connector.authorize(charge("att_2", channel="sandbox_wechat"))
            with pytest.raises(ChannelUnavailable):
                connector.query("att_1")
            with pytest.raises(ChannelUnavailable):
                connector.pay("att_1")
            frozen.tick(minutes=10)
            assert connector.pay("att_1").status == APPROVED


class TestDeclineRate:
    def test_a_seeded_profile_declines_the_same_payments_every_run(self, tmp_path):
        def run(directory: str) -> list[str]:
            connector = ChannelSet(sandbox_settings(tmp_path / directory))["sandbox_card"]
            connector.faults = FaultProfile(decline_rate=0.3, seed=42)
            return [connector.authorize(charge(f"att_{i}")).status for i in range(200)]

        first, second = run("a"), run("b")
        assert first == second
        assert 35 <= first.count(DECLINED) <= 85  # 30% of 200, give or take
        assert set(first) == {APPROVED, DECLINED}

    def test_decline_rate_one_declines_everything_with_do_not_honor(self, channels):
        connector = channels["sandbox_alipay"]
        connector.faults = FaultProfile(decline_rate=1.0)
        result = connector.authorize(charge("att_1", channel="sandbox_alipay"))
        assert (result.status, result.decline_code) == (DECLINED, "do_not_honor")
