"""The clock: UTC, aware, freezable for tests, RFC 3339 with a Z."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clearhouse.kit import clock

AT = datetime(2026, 11, 23, 5, 25, 56, 123456, tzinfo=UTC)


class TestNow:
    def test_now_is_aware_utc_and_current(self):
        now = clock.now()
        assert now.tzinfo is not None
        assert now.utcoffset() == timedelta(0)
        assert abs(now - datetime.now(UTC)) < timedelta(seconds=5)


class TestFrozen:
    def test_frozen_holds_the_time_still(self):
        with clock.frozen(AT):
            assert clock.now() == AT
            assert clock.now() == AT

    def test_tick_moves_the_frozen_time(self):
        with clock.frozen(AT) as frozen:
            moved = frozen.tick(seconds=90)
            assert moved == AT + timedelta(seconds=90)
            assert clock.now() == AT + timedelta(seconds=90)
            frozen.tick(days=1, microseconds=1)
            assert clock.now() == AT + timedelta(days=1, seconds=90, microseconds=1)

    def test_real_time_returns_after_the_block(self):
        with clock.frozen(datetime(2000, 1, 1, tzinfo=UTC)):
            pass
        assert abs(clock.now() - datetime.now(UTC)) < timedelta(seconds=5)

    def test_real_time_returns_after_an_error_in_the_block(self):
        with pytest.raises(RuntimeError), clock.frozen(datetime(2000, 1, 1, tzinfo=UTC)):
            raise RuntimeError("boom")
        assert clock.now().year >= 2025

    def test_nested_freezes_restore_the_outer_one(self):
        with clock.frozen(AT):
            with clock.frozen(AT + timedelta(hours=1)):
                assert clock.now() == AT + timedelta(hours=1)
            assert clock.now() == AT

    def test_other_offsets_are_converted_to_utc(self):
        shanghai = timezone(timedelta(hours=8))
        with clock.frozen(datetime(2026, 11, 23, 13, 25, 56, 123456, tzinfo=shanghai)):
            now = clock.now()
            assert now == AT
            assert now.utcoffset() == timedelta(0)
            assert now.hour == 5

    def test_naive_time_is_refused(self):
        with pytest.raises(ValueError), clock.frozen(datetime(2026, 11, 23, 5, 25, 56)):
            pass


class TestRfc3339:
    def test_utc_with_microseconds_and_z(self):
        assert clock.rfc3339(AT) == "2026-11-23T05:25:56.123456Z"

    def test_whole_seconds_still_show_microseconds(self):
        assert (
            clock.rfc3339(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
            == "2026-01-02T03:04:05.000000Z"
        )

    def test_other_offsets_are_shown_in_utc(self):
        minus_five = timezone(timedelta(hours=-5))
        assert clock.rfc3339(datetime(2026, 11, 23, 0, 25, 56, 1, tzinfo=minus_five)) == (
            "2026-11-23T05:25:56.000001Z"
        )

    def test_format_parses_back_to_the_same_instant(self):
        text = clock.rfc3339(clock.now())
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", text)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        assert clock.rfc3339(parsed) == text

    @given(st.datetimes(min_value=datetime(1000, 1, 2), max_value=datetime(9999, 12, 30),
                        timezones=st.timezones()))
    def test_any_aware_instant_is_its_utc_time_written_out(self, value: datetime):
        assert clock.rfc3339(value) == value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def test_frozen_time_formats(self):
        with clock.frozen(AT):
            assert clock.rfc3339(clock.now()) == "2026-11-23T05:25:56.123456Z"
