"""``CLEARHOUSE_SANDBOX_FAULTS`` is parsed when the settings are read: a wrong profile is a
settings error naming the variable (every command stops at start-up), never an error later,
on the first payment through the channel."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from clearhouse.channels.connectors.sandbox import FaultProfile
from clearhouse.channels.protocol import ChannelSet
from clearhouse.kit.settings import Settings
from tests.channels.sandbox_support import sandbox_settings


def refusal(error: ValidationError) -> tuple[str, str]:
    """The variable's field and what the CLI prints after ``CLEARHOUSE_SANDBOX_FAULTS:``."""
    (problem,) = error.errors()
    return problem["loc"][0], str(problem.get("ctx", {}).get("error") or problem["msg"])


class TestFaultsAreCheckedWithTheSettings:
    @pytest.mark.parametrize(("text", "words"), [
        ('{"sandbox_card": {"bogus": 1}}', "sandbox_card: unknown fault profile keys ['bogus']"),
        ('{"sandbox_card": {"decline_rate": 2}}', "sandbox_card: decline_rate is a probability between 0 and 1"),
        ('{"sandbox_card": {"decline_rate": "0.1"}}', "sandbox_card: decline_rate is a number, not '0.1'"),
        ('{"sandbox_card": {"timeout_rate": NaN}}', "sandbox_card: timeout_rate is a number, not nan"),
        ('{"sandbox_card": {"latency_ms": 1.5}}', "sandbox_card: latency_ms is a whole number, not 1.5"),
        ('{"sandbox_card": {"seed": true}}', "sandbox_card: seed is a whole number, not True"),
        ('{"sandbox_bank": {"delay_seconds": 1e300}}', "sandbox_bank: latency_ms and delay_seconds are at most a week"),
        ('{"sandbox_alipay": {"outages": "02:00-02:15"}}', 'outages is a list of ["HH:MM", "HH:MM"] windows'),
        ('{"sandbox_alipay": {"outages": [["02:00"]]}}', 'outages is a list of ["HH:MM", "HH:MM"] windows'),
        ('{"sandbox_alipay": {"outages": [["ab:cd", "02:15"]]}}', "outage times are HH:MM (UTC), not 'ab:cd'"),
        ('{"sandbox_crd": {}}', "no sandbox channel 'sandbox_crd'; sandboxes: sandbox_alipay, sandbox_bank"),
        ('notjson', "not JSON"),
    ], ids=["unknown-key", "rate-range", "rate-text", "rate-nan", "latency-fraction", "seed-bool", "delay-huge",
            "outages-text", "outage-half", "outage-time", "unknown-channel", "not-json"])
    def test_a_wrong_profile_is_a_settings_error_naming_the_variable(self, monkeypatch, text, words):
        monkeypatch.setenv("CLEARHOUSE_SANDBOX_FAULTS", text)
        with pytest.raises(ValidationError) as raised:
            Settings()
        field, message = refusal(raised.value)
        assert field == "sandbox_faults" and words in message, message

    def test_a_profile_that_is_not_an_object_is_refused_too(self, monkeypatch):
        monkeypatch.setenv("CLEARHOUSE_SANDBOX_FAULTS", '{"sandbox_card": 5}')
        with pytest.raises(ValidationError) as raised:
            Settings()
        assert raised.value.errors()[0]["loc"] == ("sandbox_faults", "sandbox_card")

    def test_a_good_profile_reaches_its_connector_and_an_empty_value_means_none(self, monkeypatch, tmp_path):
        monkeypatch.setenv("CLEARHOUSE_SANDBOX_FAULTS",
                           '{"sandbox_card": {"latency_ms": 5, "decline_rate": 1, "outages": [["23:50", "00:10"]],'
                           ' "seed": null}}')
        from_environment = Settings().sandbox_faults
        channels = ChannelSet(sandbox_settings(tmp_path, sandbox_faults=from_environment))
        assert channels["sandbox_card"].faults == FaultProfile(latency_ms=5, decline_rate=1,
                                                               outages=(("23:50", "00:10"),))
        monkeypatch.setenv("CLEARHOUSE_SANDBOX_FAULTS", "")
        assert Settings().sandbox_faults == {}

    def test_settings_made_in_code_are_checked_the_same_way(self, tmp_path):
        with pytest.raises(ValidationError, match="unknown fault profile keys"):
            sandbox_settings(tmp_path, sandbox_faults={"sandbox_card": {"bogus": 1}})
