"""Session 14: webhook settings (and the other numbers of kit/settings.py) a worker pass could not
use are refused at start-up, exit 2, rather than failing the delivery job on every pass."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from clearhouse.kit.settings import Settings
from tests.test_cli import clearhouse, sqlite_file
from tests.test_session13_cli import nowhere, refused  # noqa: F401  (nowhere: a fixture)


class TestWebhookSettingsAreCheckedAtStartUp:
    @pytest.mark.parametrize(("variable", "value", "words"), [
        ("CLEARHOUSE_WEBHOOK_TIMEOUT_SECONDS", "nan", "Input should be a finite number"),
        ("CLEARHOUSE_WEBHOOK_TIMEOUT_SECONDS", "0", "Input should be greater than 0"),
        ("CLEARHOUSE_WEBHOOK_TIMEOUT_SECONDS", "61", "Input should be less than or equal to 60"),
        ("CLEARHOUSE_WEBHOOK_RETRY_HOURS", "1000000000000", "Input should be less than or equal to 8760"),
        ("CLEARHOUSE_WEBHOOK_RETRY_HOURS", "0", "Input should be greater than or equal to 1"),
    ], ids=["timeout-nan", "timeout-zero", "timeout-above-a-minute", "retry-overflows", "retry-zero"])
    @pytest.mark.slow  # a process per case
    def test_the_worker_refuses_a_value_its_delivery_job_cannot_use(self, nowhere, variable, value, words):  # noqa: F811
        url, cwd = nowhere
        result = clearhouse("worker", "--once", url=url, cwd=cwd, timeout=60, **{variable: value})
        error, check = refused(result, words)
        assert error.startswith(f"error: {variable}: ")
        assert check == f"check {variable} (docs/configuration.md)"
        assert not sqlite_file(url).parent.exists()  # refused before the database was touched

    @pytest.mark.parametrize(("name", "value"), [("webhook_timeout_seconds", "60"), ("webhook_timeout_seconds", "0.5"),
                                                 ("webhook_retry_hours", "1"), ("webhook_retry_hours", "8760")])
    def test_the_bounds_themselves_are_accepted(self, name, value):
        assert float(getattr(Settings(**{name: value}), name)) == float(value)


class TestOtherNumbersAreBounded:
    """The same gap elsewhere: a number that would overflow a date it is added to, or NaN/inf, or a
    value that makes no sense (a pool of no connections), refused when the settings are read."""

    @pytest.mark.parametrize(("name", "value", "words"), [
        ("worker_interval_seconds", "nan", "finite number"),
        ("worker_interval_seconds", "0", "greater than 0"),
        ("channel_timeout_seconds", "inf", "finite number"),
        ("channel_timeout_seconds", "-1", "greater than 0"),
        ("db_pool_size", "0", "greater than or equal to 1"),
        ("max_request_bytes", "-5", "greater than or equal to 1024"),
        ("signature_tolerance_seconds", "0", "greater than or equal to 1"),
        ("nonce_ttl_seconds", "99999999999999", "less than or equal to 604800"),
        ("api_key_rate_limit_per_minute", "-1", "greater than or equal to 0"),
        ("login_rate_limit_per_minute", "-1", "greater than or equal to 0"),
        ("login_lockout_seconds", "99999999999999", "less than or equal to 86400"),
        ("session_idle_minutes", "99999999999999", "less than or equal to 10080"),
        ("session_absolute_hours", "0", "greater than or equal to 1"),
        ("approval_ttl_hours", "99999999999999", "less than or equal to 8760"),
        ("authorization_hold_hours", "99999999999999", "less than or equal to 8760"),
        ("password_hash_time_cost", "0", "greater than or equal to 1"),
        ("recon_approval_threshold", "10000000000000000", "less than or equal to 1000000000000000"),
    ])
    def test_an_unusable_value_is_refused(self, monkeypatch, name, value, words):
        monkeypatch.setenv(f"CLEARHOUSE_{name.upper()}", value)
        with pytest.raises(ValidationError) as raised:
            Settings()
        (problem,) = raised.value.errors()
        assert problem["loc"] == (name,)
        assert words in problem["msg"]

    def test_argon2_lanes_need_8_kib_each(self, monkeypatch):
        monkeypatch.setenv("CLEARHOUSE_PASSWORD_HASH_MEMORY_KIB", "64")
        monkeypatch.setenv("CLEARHOUSE_PASSWORD_HASH_PARALLELISM", "16")
        with pytest.raises(ValidationError) as raised:
            Settings()
        (problem,) = raised.value.errors()
        assert problem["loc"] == ("password_hash_parallelism",)
        assert "16 lanes need at least 128 KiB" in problem["msg"]
