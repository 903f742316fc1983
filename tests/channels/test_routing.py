"""The routing engine: rule selection on both databases, scoring, and the circuit breaker
on a frozen clock.

The channels here are small fakes registered for the test only (the registry is swapped
for the test's own, so the sandbox connectors shipped beside them never interfere):

    fake_card_a   card, any currency,  2.0% + 0
    fake_card_b   card, CNY and USD,   1.0% + 0
    fake_qr       alipay, wechat_pay,  CNY, 0.6% + 0
    wallet        wallet
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from clearhouse.audit.service import SYSTEM
from clearhouse.channels import protocol, routing
from clearhouse.channels.protocol import ChannelSet, Cost
from clearhouse.channels.routing import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    Breaker,
    BreakerPolicy,
    NoChannelAvailable,
    NoRouteMatches,
    Router,
    ScorePolicy,
)
from clearhouse.identity import service as identity
from clearhouse.identity.permissions import Principal
from clearhouse.kit import clock
from clearhouse.kit.db import transact

NOON = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
PLATFORM = Principal(kind="api_key", id="key_routing_tests", role="platform_key", merchant_id=None,
                     permissions=frozenset())


@dataclass(frozen=True)
class FakeConnector:
    """Just what routing reads of a connector; the calls are never made here."""

    name: str
    methods: tuple[str, ...]
    currencies: tuple[str, ...] | None = None
    cost: Cost = field(default_factory=Cost)
    supports_manual_capture: bool = False
    settlement_delay_days: int = 1

    def _never(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("routing never calls the channel itself")

    authorize = capture = cancel = refund = query = _never
    parse_notification = notification_reply = statement = _never


FAKES = {
    "fake_card_a": FakeConnector("fake_card_a", ("card",), None, Cost(Decimal("0.02"))),
    "fake_card_b": FakeConnector("fake_card_b", ("card",), ("CNY", "USD"), Cost(Decimal("0.01"))),
    "fake_qr": FakeConnector("fake_qr", ("alipay", "wechat_pay"), ("CNY",), Cost(Decimal("0.006"))),
    "wallet": FakeConnector("wallet", ("wallet",)),
}


@pytest.fixture
def fake_registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """This test's registry: the fakes only, restored afterwards."""
    registry = {name: (lambda settings, connector=connector: connector) for name, connector in FAKES.items()}
    monkeypatch.setattr(protocol, "_FACTORIES", registry)
    return registry


@pytest.fixture
def channels(fake_registry) -> ChannelSet:
    return ChannelSet(None)  # type: ignore[arg-type]  (the fakes need no settings)


@pytest.fixture
def router(channels: ChannelSet) -> Router:
    return Router(channels)


@pytest.fixture
def merchant_ids(engine: Engine) -> list[str]:
    return [transact(engine, lambda s, n=name: identity.create_merchant(s, SYSTEM, name=n)).id
            for name in ("Shop A", "Shop B")]


def add_rule(engine: Engine, channels: ChannelSet, names: list[str], *, merchant_id: str | None = None,
             **conditions: Any) -> str:
    fields = {"priority": 100, "channels": names, **conditions}
    return transact(engine, lambda s: routing.create_rule(s, channels, SYSTEM, PLATFORM, merchant_id=merchant_id,
                                                          fields=fields)).id


PAYMENT = {"method": "card", "currency": "CNY", "amount": 5000, "country": "CN", "card_bin": "424242"}


def plan(engine: Engine, router: Router, merchant_id: str, **overrides: Any) -> routing.RoutePlan:
    payment = {**PAYMENT, **overrides}
    return transact(engine, lambda s: router.plan(s, merchant_id=merchant_id, **payment))


class TestRuleSelection:
    def test_the_merchants_rule_comes_before_any_platform_rule(self, engine, channels, router, merchant_ids):
        shop_a, shop_b = merchant_ids
        platform_rule = add_rule(engine, channels, ["fake_card_a"], priority=1)
        own_rule = add_rule(engine, channels, ["fake_card_b"], merchant_id=shop_a, priority=500)
        chosen = plan(engine, router, shop_a)
        assert (chosen.rule_id, chosen.channels) == (own_rule, ["fake_card_b"])
        other = plan(engine, router, shop_b)
        assert (other.rule_id, other.channels) == (platform_rule, ["fake_card_a"])

    def test_lower_priority_first_then_creation_order(self, engine, channels, router, merchant_ids):
        shop = merchant_ids[0]
        add_rule(engine, channels, ["fake_card_a"], merchant_id=shop, priority=20)
        first_of_ten = add_rule(engine, channels, ["fake_card_b"], merchant_id=shop, priority=10)
        add_rule(engine, channels, ["fake_card_a"], merchant_id=shop, priority=10)
        assert plan(engine, router, shop).rule_id == first_of_ten

    @pytest.mark.parametrize(("condition", "holds", "fails"), [
        ({"method": "card"}, {"method": "card"}, {"method": "alipay"}),
        ({"currency": "CNY"}, {"currency": "CNY"}, {"currency": "USD"}),
        ({"min_amount": 5000}, {"amount": 5000}, {"amount": 4999}),
        ({"max_amount": 5000}, {"amount": 5000}, {"amount": 5001}),
        ({"country": "CN"}, {"country": "cn"}, {"country": "DE"}),
        ({"country": "CN"}, {"country": "CN"}, {"country": None}),
        ({"card_bin_prefix": "4242"}, {"card_bin": "42424242"}, {"card_bin": "52424242"}),
        ({"card_bin_prefix": "4"}, {"card_bin": "4"}, {"card_bin": None}),
    ])
    def test_each_condition(self, engine, channels, router, merchant_ids, condition, holds, fails):
        shop = merchant_ids[0]
        names = ["fake_card_b"] if "method" in condition else ["fake_card_b", "fake_qr"]
        rule_id = add_rule(engine, channels, names, merchant_id=shop, **condition)
        assert plan(engine, router, shop, **holds).rule_id == rule_id
        missed = plan(engine, router, shop, **fails)
        assert missed.rule_id is None
        assert all(c.reason.startswith("no rule matched, default route;") for c in missed.candidates)

    def test_a_disabled_rule_is_passed_over(self, engine, channels, router, merchant_ids):
        shop = merchant_ids[0]
        disabled = add_rule(engine, channels, ["fake_card_a"], merchant_id=shop, priority=1)
        fallback = add_rule(engine, channels, ["fake_card_b"], merchant_id=shop, priority=2)
        transact(engine, lambda s: routing.update_rule(s, channels, SYSTEM, PLATFORM, disabled, {"enabled": False}))
        assert plan(engine, router, shop).rule_id == fallback

    def test_without_a_rule_every_channel_taking_method_and_currency_is_a_candidate(self, engine, router,
                                                                                       merchant_ids):
        shop = merchant_ids[0]
        assert sorted(plan(engine, router, shop, currency="USD").channels) == ["fake_card_a", "fake_card_b"]
        euro = plan(engine, router, shop, currency="EUR")
        assert euro.channels == ["fake_card_a"]
        assert [(s.channel, s.reason) for s in euro.skipped] == [("fake_card_b", "currency EUR not supported")]
        assert plan(engine, router, shop, method="alipay").channels == ["fake_qr"]

    def test_wallet_payments_go_to_the_wallet_whatever_the_rules(self, engine, channels, router, merchant_ids):
        shop = merchant_ids[0]
        add_rule(engine, channels, ["fake_card_a"], merchant_id=shop)  # no conditions: matches everything else
        wallet = plan(engine, router, shop, method="wallet", card_bin=None)
        assert (wallet.channels, wallet.rule_id, wallet.skipped) == (["wallet"], None, [])
        assert wallet.candidates[0].score is None

    def test_a_rule_channel_that_cannot_serve_the_payment_is_skipped_with_its_reason(
            self, engine, channels, router, merchant_ids, fake_registry):
        shop = merchant_ids[0]
        rule_id = add_rule(engine, channels, ["fake_card_b", "fake_qr", "fake_card_a"], merchant_id=shop)
        del fake_registry["fake_card_a"]  # a connector dropped from a later release
        chosen = plan(engine, router, shop, currency="USD")
        assert chosen.channels == ["fake_card_b"]
        assert [(s.channel, s.reason) for s in chosen.skipped] == [
            ("fake_qr", "method card not supported"), ("fake_card_a", "not a registered channel")]
        assert chosen.candidates[0].reason.startswith(f"rule {rule_id} matched; score ")

    def test_nothing_that_could_ever_match_is_422_and_an_open_circuit_is_503(self, engine, channels, router,
                                                                              merchant_ids):
        shop = merchant_ids[0]
        add_rule(engine, channels, ["fake_card_b"], merchant_id=shop)
        never = plan(engine, router, shop, currency="EUR")
        assert never.candidates == []
        error = never.no_candidate_error()
        assert isinstance(error, NoRouteMatches)
        assert (error.code, error.status) == ("no_channel_supports_payment", 422)
        with pytest.raises(NoRouteMatches):
            never.raise_if_empty()
        with clock.frozen(NOON):
            for _ in range(5):
                router.record("fake_card_b", "failure", 10_000)
            later = plan(engine, router, shop)
            assert later.candidates == []
            error = later.no_candidate_error()
            assert type(error) is NoChannelAvailable
            assert (error.code, error.status) == ("no_channel_available", 503)
            assert later.skipped[0].reason == ("circuit open until 2026-11-23T12:00:30.000000Z "
                                               "(5 failures in a row)")


class TestScoring:
    """No data yet: both card channels sit at the prior (success 0.9, 300 ms), so the cheaper wins."""

    def test_with_no_data_the_cheaper_channel_leads(self, engine, router, merchant_ids):
        chosen = plan(engine, router, merchant_ids[0])
        assert chosen.channels == ["fake_card_b", "fake_card_a"]
        # 0.9 x (1 - 50/5000) - 0.01 x 0.3 = 0.888; and 0.9 x (1 - 100/5000) - 0.003 = 0.879
        assert [c.score for c in chosen.candidates] == [0.888, 0.879]
        assert chosen.candidates[0].reason == ("no rule matched, default route; score 0.8880 = success 0.900 "
                                               "(0 outcomes), cost 50 (1.00%), latency 300 ms")

    def test_a_better_success_rate_outweighs_a_higher_fee(self, engine, router, merchant_ids):
        with clock.frozen(NOON):
            for i in range(100):
                router.record("fake_card_a", "success", 300)
                router.record("fake_card_b", "success" if i % 2 else "decline", 300)
            chosen = plan(engine, router, merchant_ids[0])
        assert chosen.channels == ["fake_card_a", "fake_card_b"]
        # a: (100 + 18) / 120 = 0.983; b: (50 + 18) / 120 = 0.567
        assert "success 0.983 (100 outcomes)" in chosen.candidates[0].reason
        assert "success 0.567 (100 outcomes)" in chosen.candidates[1].reason

    def test_slow_answers_cost_score(self, engine, router, merchant_ids):
        with clock.frozen(NOON):
            for _ in range(200):
                router.record("fake_card_a", "success", 20)
                router.record("fake_card_b", "success", 4000)
            chosen = plan(engine, router, merchant_ids[0])
        # Equal success; b's 1.00 point fee advantage is smaller than its ~3.6 s of extra latency.
        assert chosen.channels == ["fake_card_a", "fake_card_b"]
        assert "latency 45 ms" in chosen.candidates[0].reason  # (200 x 20 + 20 x 300) / 220
        assert "latency 3664 ms" in chosen.candidates[1].reason  # (200 x 4000 + 20 x 300) / 220

    def test_the_cost_is_the_channels_fee_for_this_amount(self, router, channels):
        # 0.6% of 1.25 CNY is 0.0075, charged as 0.01 (half-up)
        _score, explanation = router.score("fake_qr", channels["fake_qr"], 125)
        assert "cost 1 (0.80%)" in explanation

    def test_an_ordered_rule_keeps_its_order(self, engine, channels, router, merchant_ids):
        shop = merchant_ids[0]
        rule_id = add_rule(engine, channels, ["fake_card_a", "fake_card_b"], merchant_id=shop, strategy="ordered")
        chosen = plan(engine, router, shop)
        assert chosen.channels == ["fake_card_a", "fake_card_b"]
        assert chosen.candidates[0].score < chosen.candidates[1].score
        assert chosen.candidates[0].reason.startswith(f"rule {rule_id} matched; rule order kept; score 0.8790")
        scored = add_rule(engine, channels, ["fake_card_a", "fake_card_b"], merchant_id=shop, priority=1)
        again = plan(engine, router, shop)
        assert (again.rule_id, again.channels) == (scored, ["fake_card_b", "fake_card_a"])


class TestRollingWindow:
    def test_little_data_stays_near_the_neutral_prior(self, router, channels):
        router.record("fake_card_a", "failure", 100)
        _score, explanation = router.score("fake_card_a", channels["fake_card_a"], 10_000)
        assert "success 0.857 (1 outcome)" in explanation  # (0 + 0.9 x 20) / 21, not 0

    def test_only_the_last_200_outcomes_count(self, router):
        for _ in range(300):
            router.record("fake_card_a", "failure", 100)
        for _ in range(200):
            router.record("fake_card_a", "success", 100)
        health = router.health("fake_card_a")
        assert (health.outcomes, health.success_rate) == (200, 1.0)

    def test_outcomes_older_than_ten_minutes_are_forgotten(self, router):
        with clock.frozen(NOON) as frozen:
            router.record("fake_card_a", "decline", 100)
            frozen.tick(minutes=5)
            router.record("fake_card_a", "success", 300)
            assert router.health("fake_card_a").outcomes == 2
            frozen.tick(minutes=5, seconds=1)
            health = router.health("fake_card_a")
            assert (health.outcomes, health.success_rate, health.mean_latency_ms) == (1, 1.0, 300.0)
            frozen.tick(minutes=5)
            assert router.health("fake_card_a") == routing.Health(0, 0, None, None)

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.tuples(st.booleans(), st.floats(0, 60_000, allow_nan=False), st.integers(0, 400)),
                    max_size=450))
    def test_the_running_sums_are_the_window_counted_again(self, steps):
        """``health`` keeps sums as outcomes come and go; they equal a count of the outcomes in the window."""
        stats = routing.ChannelStats(routing.ScorePolicy())
        kept: list[tuple[datetime, bool, int]] = []
        with clock.frozen(NOON) as frozen:
            for succeeded, latency_ms, seconds in steps:
                frozen.tick(seconds=seconds)
                stats.add(succeeded, latency_ms)
                kept = [*kept, (clock.now(), succeeded, round(latency_ms * 1000))][-200:]
                horizon = clock.now() - timedelta(seconds=600)
                kept = [outcome for outcome in kept if outcome[0] >= horizon]
                health = stats.health()
                assert health.outcomes == len(kept)
                assert health.successes == sum(ok for _at, ok, _us in kept)
                if kept:
                    assert health.mean_latency_ms == sum(us for _at, _ok, us in kept) / 1000 / len(kept)

    def test_an_unknown_outcome_is_refused(self, router):
        with pytest.raises(routing.UnknownOutcome):
            router.record("fake_card_a", "timeout", 100)


class TestBreaker:
    def test_opens_after_consecutive_failures_and_half_opens_after_the_cooldown(self):
        breaker = Breaker("fake_card_a")
        with clock.frozen(NOON) as frozen:
            for _ in range(4):
                breaker.record_failure()
            assert (breaker.state, breaker.allow()) == (CLOSED, True)
            breaker.record_failure()
            assert (breaker.state, breaker.allow()) == (OPEN, False)
            assert breaker.opened_until == NOON + timedelta(seconds=30)
            frozen.tick(seconds=29)
            assert (breaker.state, breaker.allow()) == (OPEN, False)
            frozen.tick(seconds=1)
            assert breaker.state == HALF_OPEN
            assert breaker.opened_until is None

    def test_declines_are_not_failures_and_break_a_run_of_failures(self):
        breaker = Breaker("fake_card_a")
        with clock.frozen(NOON):
            for _ in range(100):
                breaker.record_success()  # what Router.record does with a decline
            for _ in range(4):
                breaker.record_failure()
            breaker.record_success()
            for _ in range(4):
                breaker.record_failure()
            assert breaker.state == CLOSED

    def test_router_declines_never_open_the_circuit(self, router):
        with clock.frozen(NOON):
            for _ in range(50):
                router.record("fake_card_a", "decline", 80)
            assert router.breaker("fake_card_a").state == CLOSED
            for _ in range(5):
                router.record("fake_card_a", "failure", 10_000)
            assert router.breaker("fake_card_a").state == OPEN

    def test_a_failure_rate_above_the_threshold_opens_it_once_the_volume_is_there(self):
        policy = BreakerPolicy(consecutive_failures=1000, failure_rate=0.5, minimum_volume=20, rate_window_seconds=60)
        with clock.frozen(NOON) as frozen:
            half = Breaker("half", policy)
            for _ in range(10):
                half.record_success()
                half.record_failure()
            assert half.state == CLOSED  # 10 of 20 is not above 0.5
            half.record_failure()
            assert half.state == OPEN  # 11 of 21
            assert half.describe() == "circuit open until 2026-11-23T12:00:30.000000Z (11 of 21 calls failed in 60 s)"

            sparse = Breaker("sparse", policy)
            sparse.record_success()
            for _ in range(18):
                sparse.record_failure()
            assert sparse.state == CLOSED  # 19 calls are too few to judge

            stale = Breaker("stale", policy)
            for _ in range(10):
                stale.record_failure()
                stale.record_success()  # keeps the run of failures short
            frozen.tick(seconds=61)
            stale.record_failure()
            # 11 of 21 over all time, but only the last minute counts: 1 call, too few to judge.
            assert stale.state == CLOSED

    def test_half_open_admits_exactly_one_probe_at_a_time(self):
        breaker = Breaker("fake_card_a")
        with clock.frozen(NOON) as frozen:
            for _ in range(5):
                breaker.record_failure()
            frozen.tick(seconds=30)
            answers: list[bool] = []
            start = threading.Barrier(16)

            def ask() -> None:
                start.wait()
                answers.append(breaker.allow())

            threads = [threading.Thread(target=ask) for _ in range(16)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert sorted(answers) == [False] * 15 + [True]
            assert breaker.describe() == "circuit half-open and its one probe is in flight"

    def test_a_successful_probe_closes_it(self):
        breaker = Breaker("fake_card_a")
        with clock.frozen(NOON) as frozen:
            for _ in range(5):
                breaker.record_failure()
            frozen.tick(seconds=30)
            assert breaker.allow()
            breaker.record_success()
            assert (breaker.state, breaker.allow(), breaker.allow()) == (CLOSED, True, True)
            # The failures that opened it are history: it takes a fresh run of five to open again.
            for _ in range(4):
                breaker.record_failure()
            assert breaker.state == CLOSED

    def test_a_failed_probe_reopens_it_with_the_cooldown_doubled_up_to_the_cap(self):
        breaker = Breaker("fake_card_a", BreakerPolicy(cooldown_seconds=30, max_cooldown_seconds=100))
        with clock.frozen(NOON) as frozen:
            for _ in range(5):
                breaker.record_failure()
            for cooldown in (60, 100, 100):
                frozen.tick(seconds=breaker.snapshot()["cooldown_seconds"])
                assert breaker.allow()
                breaker.record_failure()
                assert breaker.state == OPEN
                assert breaker.opened_until == clock.now() + timedelta(seconds=cooldown)
                assert "(the probe failed)" in breaker.describe()
            frozen.tick(seconds=100)
            assert breaker.allow()
            breaker.record_success()
            assert breaker.snapshot()["cooldown_seconds"] == 30  # closing resets the cooldown
            for _ in range(5):
                breaker.record_failure()
            assert breaker.opened_until == clock.now() + timedelta(seconds=30)

    def test_a_probe_never_reported_frees_the_slot_after_its_timeout(self):
        breaker = Breaker("fake_card_a", BreakerPolicy(probe_timeout_seconds=30))
        with clock.frozen(NOON) as frozen:
            for _ in range(5):
                breaker.record_failure()
            frozen.tick(seconds=30)
            assert breaker.allow()
            frozen.tick(seconds=29)
            assert not breaker.allow()
            frozen.tick(seconds=1)
            assert breaker.allow()
            assert not breaker.allow()

    def test_a_late_answer_while_open_changes_nothing(self):
        breaker = Breaker("fake_card_a")
        with clock.frozen(NOON):
            for _ in range(5):
                breaker.record_failure()
            breaker.record_success()
            breaker.record_failure()
            assert (breaker.state, breaker.opened_until) == (OPEN, NOON + timedelta(seconds=30))

    def test_plan_takes_the_probe_for_its_first_candidate_and_preview_does_not(self, engine, channels, router,
                                                                                 merchant_ids):
        shop = merchant_ids[0]
        add_rule(engine, channels, ["fake_card_b", "fake_card_a"], merchant_id=shop, strategy="ordered")
        with clock.frozen(NOON) as frozen:
            for _ in range(5):
                router.record("fake_card_b", "failure", 10_000)
            frozen.tick(seconds=30)
            for _ in range(2):
                looked = transact(engine, lambda s: router.preview(s, merchant_id=shop, **PAYMENT))
                assert looked.channels == ["fake_card_b", "fake_card_a"]
            assert plan(engine, router, shop).channels == ["fake_card_b", "fake_card_a"]  # holds the probe
            busy = plan(engine, router, shop)
            assert busy.channels == ["fake_card_a"]
            assert [(s.channel, s.reason, s.transient) for s in busy.skipped] == [
                ("fake_card_b", "circuit half-open and its one probe is in flight", True)]
            router.record("fake_card_b", "success", 200)
            assert router.breaker("fake_card_b").state == CLOSED
            assert plan(engine, router, shop).channels == ["fake_card_b", "fake_card_a"]

    def test_a_half_open_failover_candidate_gets_its_probe_only_when_tried(self, engine, channels, router,
                                                                           merchant_ids):
        shop = merchant_ids[0]
        add_rule(engine, channels, ["fake_card_a", "fake_card_b"], merchant_id=shop, strategy="ordered")
        with clock.frozen(NOON) as frozen:
            for _ in range(5):
                router.record("fake_card_b", "failure", 10_000)
            frozen.tick(seconds=30)
            first = plan(engine, router, shop)
            second = plan(engine, router, shop)
            # Neither plan took b's probe: each payment may still fail over to it.
            assert first.channels == second.channels == ["fake_card_a", "fake_card_b"]
            # Payments asks before failing over: the first to ask gets the probe, the next does not.
            assert router.breaker("fake_card_b").allow()
            assert not router.breaker("fake_card_b").allow()
            assert plan(engine, router, shop).channels == ["fake_card_a"]

    def test_a_first_candidate_whose_probe_was_taken_meanwhile_gives_way(self, engine, channels, router,
                                                                         merchant_ids, monkeypatch):
        shop = merchant_ids[0]
        add_rule(engine, channels, ["fake_card_b", "fake_card_a"], merchant_id=shop, strategy="ordered")
        with clock.frozen(NOON) as frozen:
            for _ in range(5):
                router.record("fake_card_b", "failure", 10_000)
            frozen.tick(seconds=30)
            breaker = router.breaker("fake_card_b")
            looked_free = breaker.would_allow

            def another_thread_takes_the_probe() -> bool:
                free = looked_free()
                breaker.allow()  # between this plan's look and its allow()
                return free

            monkeypatch.setattr(breaker, "would_allow", another_thread_takes_the_probe)
            raced = plan(engine, router, shop)
            assert raced.channels == ["fake_card_a"]
            assert [(s.channel, s.transient) for s in raced.skipped] == [("fake_card_b", True)]


def test_score_policy_defaults_match_the_documented_formula():
    policy = ScorePolicy()
    assert (policy.window_outcomes, policy.window_seconds, policy.prior_success_rate, policy.prior_weight,
            policy.prior_latency_ms, policy.latency_weight_per_second) == (200, 600.0, 0.9, 20, 300.0, 0.01)
