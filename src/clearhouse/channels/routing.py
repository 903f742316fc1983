"""Routing: which channels a payment is offered to, in which order, and why.

Three parts, used in this order for each payment:

1. Rules (table ``routing_rules``) choose the candidate channels. The merchant's own
   enabled rules are tried before the platform-wide ones, each group by ascending
   ``priority`` then creation order; the first rule whose conditions all hold gives the
   candidates. No rule matching: every registered channel that takes the method and the
   currency is a candidate (the default route).
2. A score ranks the candidates (unless the rule says ``"strategy": "ordered"``):

       score = success x (1 - cost / amount) - 0.01 x latency_seconds

   ``success`` is the channel's rolling success rate (the last 200 outcomes, none older
   than 10 minutes) pulled towards a neutral prior of 0.9 as if 20 outcomes at that rate
   had been seen, so a channel with little data is neither favoured nor shunned; ``cost``
   is what the channel charges us for this amount (``kit.money.rate_of``, half-up);
   ``latency_seconds`` is the mean latency, smoothed towards 300 ms the same way. The first
   term is the expected share of the amount we keep; a second of latency costs as much as
   one point of success rate. The weights live in ``ScorePolicy``.
3. A circuit breaker per channel (``Breaker``) keeps a failing channel out of plans
   until a cooldown has passed, then lets one probe through at a time.

Scores and breakers are per server process, in memory: each process learns on its own
from the outcomes it sees (``Router.record``), so two workers may briefly disagree about a
channel. That is deliberate: it needs no shared store on the payment path, and a channel
that fails does so for every process soon enough.

Every decision explains itself: each ``Candidate`` and ``Skipped`` carries its reason,
which payments store with the attempt.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Row, and_, bindparam, case, delete, insert, or_, select, update
from sqlalchemy.orm import Session

from clearhouse.audit import service as audit
from clearhouse.channels.models import RoutingRule
from clearhouse.kit import clock
from clearhouse.kit.errors import ClearhouseError, NotFound
from clearhouse.kit.ids import new_id
from clearhouse.kit.money import is_country, is_currency, rate_of

if TYPE_CHECKING:
    from clearhouse.channels.protocol import ChannelSet, Connector
    from clearhouse.identity.permissions import Principal

rules = RoutingRule.__table__

WALLET = "wallet"
"""The customer's Clearhouse wallet: the only channel for method ``wallet``, never scored."""

SUCCESS, DECLINE, FAILURE = "success", "decline", "failure"
OUTCOMES = (SUCCESS, DECLINE, FAILURE)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


# --------------------------------------------------------------------------- errors


class NoChannelAvailable(ClearhouseError):
    """Channels exist for this payment, but none can take it now (every circuit is open, or
    each half-open one is busy with its probe). Retrying later may succeed."""

    code = "no_channel_available"
    status = 503
    title = "No channel available"


class NoRouteMatches(NoChannelAvailable):
    """No channel could ever take this payment as asked: the routing rule that matched, or
    the registry when none did, has no channel for its method and currency."""

    code = "no_channel_supports_payment"
    status = 422
    title = "No channel supports this payment"


class RuleNotFound(NotFound):
    """No such routing rule, or another merchant's."""

    code = "routing_rule_not_found"
    title = "Routing rule not found"


class PlatformRuleReadOnly(ClearhouseError):
    """Merchants see the platform-wide rules but only the platform changes them."""

    code = "platform_rule_read_only"
    status = 403
    title = "Platform rule is read-only"


class UnknownRuleChannel(ClearhouseError):
    """A rule names only registered channels (``GET /v1/channels`` lists them)."""

    code = "unknown_rule_channel"
    status = 422
    title = "Unknown channel in rule"


class DuplicateRuleChannel(ClearhouseError):
    """A rule names each channel once: its order is the fallback order."""

    code = "duplicate_rule_channel"
    status = 422
    title = "Channel named twice in rule"


class RuleChannelUnsupported(ClearhouseError):
    """When a rule fixes the method or the currency, every channel it names takes them."""

    code = "rule_channel_unsupported"
    status = 422
    title = "Channel cannot serve rule"


class InvalidAmountRange(ClearhouseError):
    """``min_amount`` is at most ``max_amount`` (both minor units, inclusive)."""

    code = "invalid_amount_range"
    status = 422
    title = "Invalid amount range"


class InvalidCardBinPrefix(ClearhouseError):
    """A card BIN prefix is 1 to 8 digits."""

    code = "invalid_card_bin_prefix"
    status = 422
    title = "Invalid card BIN prefix"


class InvalidCountry(ClearhouseError):
    """A country is an ISO 3166-1 alpha-2 code in upper case (``CN``, ``DE``)."""

    code = "invalid_country"
    status = 422
    title = "Invalid country"


class UnknownCurrency(ClearhouseError):
    """Currencies are ISO 4217 codes with a minor unit, upper case."""

    code = "unknown_currency"
    status = 422
    title = "Unknown currency"


class UnknownOutcome(ValueError):
    """``Router.record`` takes ``success``, ``decline`` or ``failure``."""


# --------------------------------------------------------------------------- the plan


@dataclass
class Candidate:
    channel: str
    score: float | None
    reason: str


@dataclass
class Skipped:
    channel: str
    reason: str
    transient: bool = False
    """True when the channel is kept out for now (circuit breaker), not for good."""


@dataclass
class RoutePlan:
    """The channels to try, best first, and those left out; every entry says why."""

    candidates: list[Candidate]
    skipped: list[Skipped]
    rule_id: str | None

    @property
    def channels(self) -> list[str]:
        return [c.channel for c in self.candidates]

    def no_candidate_error(self) -> NoChannelAvailable:
        """What to raise when there is no candidate: 503 when a breaker keeps one out, else 422."""
        why = "; ".join(f"{s.channel}: {s.reason}" for s in self.skipped) or "no channel takes this method"
        if any(s.transient for s in self.skipped):
            return NoChannelAvailable(f"no channel can take this payment now ({why})", rule_id=self.rule_id)
        return NoRouteMatches(f"no channel supports this payment ({why})", rule_id=self.rule_id)

    def raise_if_empty(self) -> RoutePlan:
        if not self.candidates:
            raise self.no_candidate_error()
        return self


# --------------------------------------------------------------------------- circuit breaker


@dataclass(frozen=True)
class BreakerPolicy:
    """When a channel's circuit opens and how long it stays open."""

    consecutive_failures: int = 5
    """Open after this many retryable failures in a row (declines do not count, nor break the run)."""
    failure_rate: float = 0.5
    """... or when more than this share of the outcomes in the rate window are failures ..."""
    rate_window_seconds: int = 60
    minimum_volume: int = 20
    """... once the window holds at least this many outcomes (a rate of 2 calls says nothing)."""
    cooldown_seconds: float = 30.0
    """Open this long before the first probe; doubled after each failed probe, up to the cap."""
    max_cooldown_seconds: float = 600.0
    probe_timeout_seconds: float = 30.0
    """A probe granted but never reported (its process died mid-call, or its caller never made
    the call) frees the half-open slot after this long, so the channel is not stuck."""


class Breaker:
    """One channel's circuit, shared by the threads of one process.

    closed -> open on ``consecutive_failures`` retryable failures in a row, or on a failure
    rate above ``failure_rate`` over the rate window with ``minimum_volume`` outcomes;
    open -> half_open when the cooldown has passed; half_open admits exactly one probe at a
    time (``allow``); the probe's success closes the circuit, its failure opens it again with
    the cooldown doubled (capped at ``max_cooldown_seconds``).
    """

    def __init__(self, channel: str, policy: BreakerPolicy | None = None):
        self.channel = channel
        self.policy = policy or BreakerPolicy()
        self._lock = threading.Lock()
        self._state = CLOSED
        self._consecutive_failures = 0
        # Per-second buckets [second, outcomes, failures]: O(1) per outcome at any volume.
        self._buckets: deque[list[int]] = deque()
        self._window_outcomes = 0
        self._window_failures = 0
        self._cooldown = self.policy.cooldown_seconds
        self._opened_until: datetime | None = None
        self._opened_because = ""
        self._probe_deadline: datetime | None = None

    # Every public method takes the lock and calls _advance first: the open -> half_open
    # transition is due to the clock alone, so it is applied whenever anyone looks.
    def _advance(self, now: datetime) -> None:
        if self._state == OPEN and self._opened_until is not None and now >= self._opened_until:
            self._state = HALF_OPEN
            self._probe_deadline = None

    @property
    def state(self) -> str:
        with self._lock:
            self._advance(clock.now())
            return self._state

    @property
    def opened_until(self) -> datetime | None:
        """When the circuit half-opens (None unless open)."""
        with self._lock:
            self._advance(clock.now())
            return self._opened_until if self._state == OPEN else None

    def allow(self) -> bool:
        """May a call go to this channel now? In half-open this grants THE probe: it answers
        True once, then False until the probe is reported or its timeout passes."""
        with self._lock:
            now = clock.now()
            self._advance(now)
            if self._state == CLOSED:
                return True
            if self._state == OPEN:
                return False
            if self._probe_deadline is not None and now < self._probe_deadline:
                return False
            self._probe_deadline = now + timedelta(seconds=self.policy.probe_timeout_seconds)
            return True

    def would_allow(self) -> bool:
        """``allow`` without taking the probe (previews, health pages)."""
        with self._lock:
            now = clock.now()
            self._advance(now)
            if self._state == HALF_OPEN:
                return self._probe_deadline is None or now >= self._probe_deadline
            return self._state == CLOSED

    def record_success(self) -> None:
        """The channel answered (an approval or a decline: both prove it works)."""
        with self._lock:
            now = clock.now()
            self._advance(now)
            if self._state == HALF_OPEN:
                self._close()
            elif self._state == CLOSED:
                self._consecutive_failures = 0
                self._count(now, failed=False)
            # OPEN: a late answer to a call made before the circuit opened changes nothing.

    def record_failure(self) -> None:
        """A retryable failure: timeout, outage, channel error. Never a decline."""
        with self._lock:
            now = clock.now()
            self._advance(now)
            if self._state == HALF_OPEN:
                self._consecutive_failures += 1  # the run that opened it goes on
                self._cooldown = min(self._cooldown * 2, self.policy.max_cooldown_seconds)
                self._open(now, "the probe failed")
            elif self._state == CLOSED:
                self._consecutive_failures += 1
                self._count(now, failed=True)
                policy = self.policy
                if self._consecutive_failures >= policy.consecutive_failures:
                    self._open(now, f"{self._consecutive_failures} failures in a row")
                elif (self._window_outcomes >= policy.minimum_volume
                      and self._window_failures > policy.failure_rate * self._window_outcomes):
                    self._open(now, f"{self._window_failures} of {self._window_outcomes} calls failed "
                                    f"in {policy.rate_window_seconds} s")

    def describe(self) -> str:
        """Why this breaker keeps its channel out of a plan (or that it does not)."""
        with self._lock:
            self._advance(clock.now())
            if self._state == OPEN:
                assert self._opened_until is not None
                return f"circuit open until {clock.rfc3339(self._opened_until)} ({self._opened_because})"
            if self._state == HALF_OPEN:
                return "circuit half-open and its one probe is in flight"
            return "circuit closed"

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            self._advance(clock.now())
            return {
                "state": self._state,
                "opened_until": self._opened_until if self._state == OPEN else None,
                "opened_because": self._opened_because or None,
                "consecutive_failures": self._consecutive_failures,
                "cooldown_seconds": self._cooldown,
            }

    def _open(self, now: datetime, because: str) -> None:
        self._state = OPEN
        self._opened_until = now + timedelta(seconds=self._cooldown)
        self._opened_because = because
        self._probe_deadline = None

    def _close(self) -> None:
        self._state = CLOSED
        self._cooldown = self.policy.cooldown_seconds
        self._opened_until = None
        self._opened_because = ""
        self._consecutive_failures = 0
        self._probe_deadline = None
        # The failures that opened the circuit are history: the rate starts afresh.
        self._buckets.clear()
        self._window_outcomes = self._window_failures = 0

    def _count(self, now: datetime, *, failed: bool) -> None:
        second = int(now.timestamp())
        horizon = second - self.policy.rate_window_seconds
        while self._buckets and self._buckets[0][0] <= horizon:
            _, outcomes, failures = self._buckets.popleft()
            self._window_outcomes -= outcomes
            self._window_failures -= failures
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        bucket[2] += int(failed)
        self._window_outcomes += 1
        self._window_failures += int(failed)


# --------------------------------------------------------------------------- rolling statistics


@dataclass(frozen=True)
class ScorePolicy:
    """The score's window, priors and weights (see the module docstring)."""

    window_outcomes: int = 200
    window_seconds: float = 600.0
    prior_success_rate: float = 0.9
    prior_latency_ms: float = 300.0
    prior_weight: int = 20
    """How many outcomes the priors count as: a channel's own data outweighs them past ~20 calls."""
    latency_weight_per_second: float = 0.01


@dataclass(frozen=True)
class Health:
    """What one process has seen of a channel lately (observed, not smoothed)."""

    outcomes: int
    successes: int
    success_rate: float | None
    mean_latency_ms: float | None


class ChannelStats:
    """The last ``window_outcomes`` outcomes of one channel, none older than ``window_seconds``."""

    def __init__(self, policy: ScorePolicy):
        self.policy = policy
        self._lock = threading.Lock()
        self._outcomes: deque[tuple[datetime, bool, int]] = deque()
        # Sums of what ``_outcomes`` holds, kept as outcomes come and go (``health`` is asked on every payment
        # and must not walk the window); latencies in whole microseconds, so adding and removing is exact.
        self._successes = 0
        self._latency_us = 0

    def add(self, succeeded: bool, latency_ms: float) -> None:
        latency_us = round(latency_ms * 1000)
        with self._lock:
            if len(self._outcomes) >= self.policy.window_outcomes:
                self._drop()
            self._outcomes.append((clock.now(), succeeded, latency_us))
            self._successes += succeeded
            self._latency_us += latency_us

    def _drop(self) -> None:
        _at, succeeded, latency_us = self._outcomes.popleft()
        self._successes -= succeeded
        self._latency_us -= latency_us

    def health(self) -> Health:
        with self._lock:
            horizon = clock.now() - timedelta(seconds=self.policy.window_seconds)
            while self._outcomes and self._outcomes[0][0] < horizon:
                self._drop()
            count, successes, latency_us = len(self._outcomes), self._successes, self._latency_us
        if count == 0:
            return Health(0, 0, None, None)
        return Health(count, successes, successes / count, latency_us / 1000 / count)


# --------------------------------------------------------------------------- the router


@dataclass(frozen=True)
class _Eligible:
    name: str
    connector: Connector
    position: int


class Router:
    """Plans routes from the rules, ranks them by score, and learns from outcomes.

    One per app (``app.state.router``), shared by its threads; see the module docstring
    for why its memory is per process.
    """

    def __init__(self, channels: ChannelSet, *, breaker_policy: BreakerPolicy | None = None,
                 score_policy: ScorePolicy | None = None):
        self.channels = channels
        self.breaker_policy = breaker_policy or BreakerPolicy()
        self.score_policy = score_policy or ScorePolicy()
        self._lock = threading.Lock()
        # Per channel and mode: test traffic (made with a test key, which needs no approval) never opens
        # the circuit live payments use, nor weighs on their scores (identity.md, "Test and live").
        self._breakers: dict[tuple[str, bool], Breaker] = {}
        self._stats: dict[tuple[str, bool], ChannelStats] = {}

    def breaker(self, channel: str, livemode: bool = True) -> Breaker:
        found = self._breakers.get((channel, livemode))
        if found is None:
            with self._lock:
                found = self._breakers.setdefault((channel, livemode), Breaker(channel, self.breaker_policy))
        return found

    def stats(self, channel: str, livemode: bool = True) -> ChannelStats:
        found = self._stats.get((channel, livemode))
        if found is None:
            with self._lock:
                found = self._stats.setdefault((channel, livemode), ChannelStats(self.score_policy))
        return found

    def health(self, channel: str, livemode: bool = True) -> Health:
        return self.stats(channel, livemode).health()

    def record(self, channel: str, outcome: str, latency_ms: float, livemode: bool = True) -> None:
        """What a call to ``channel`` for a payment of mode ``livemode`` came to: ``success`` (approved,
        pending, needs the customer), ``decline`` (a definite no: the channel works, the card does not),
        or ``failure`` (timeout, outage, channel error: counts towards opening the circuit)."""
        if outcome not in OUTCOMES:
            raise UnknownOutcome(f"outcome must be one of {OUTCOMES}, not {outcome!r}")
        self.stats(channel, livemode).add(outcome == SUCCESS, float(latency_ms))
        if outcome == FAILURE:
            self.breaker(channel, livemode).record_failure()
        else:
            self.breaker(channel, livemode).record_success()

    def plan(self, session: Session, *, merchant_id: str, method: str, currency: str, amount: int,
             country: str | None = None, card_bin: str | None = None, livemode: bool = True) -> RoutePlan:
        """The channels to try for this payment, best first.

        The first candidate is cleared to be called: if its circuit is half-open, the plan
        has taken its one probe. Before calling any LATER candidate (failover), ask
        ``breaker(channel).allow()``: its circuit may have opened meanwhile, and a half-open
        one hands out its probe only then, so a probe is never held by a payment that
        succeeded elsewhere. Report every call with ``record``.
        """
        return self._plan(session, merchant_id=merchant_id, method=method, currency=currency, amount=amount,
                          country=country, card_bin=card_bin, livemode=livemode, take_probes=True)

    def preview(self, session: Session, *, merchant_id: str | None, method: str, currency: str, amount: int,
                country: str | None = None, card_bin: str | None = None, livemode: bool = True) -> RoutePlan:
        """``plan`` without taking the first candidate's probe: what a payment would get now."""
        return self._plan(session, merchant_id=merchant_id, method=method, currency=currency, amount=amount,
                          country=country, card_bin=card_bin, livemode=livemode, take_probes=False)

    def _plan(self, session: Session, *, merchant_id: str | None, method: str, currency: str, amount: int,
              country: str | None, card_bin: str | None, livemode: bool, take_probes: bool) -> RoutePlan:
        if method == WALLET:
            # The wallet is our own ledger, not a channel that fails or costs: nothing to rank.
            return RoutePlan([Candidate(WALLET, None, "method wallet is paid from the customer's Clearhouse "
                                                      "wallet")], [], None)
        rule = first_matching_rule(session, merchant_id=merchant_id, method=method, currency=currency,
                                   amount=amount, country=country, card_bin=card_bin, livemode=livemode)
        skipped: list[Skipped] = []
        eligible: list[_Eligible] = []
        if rule is not None:
            names = orjson.loads(rule.channels_json)
            ordered = rule.strategy == "ordered"
            preamble = f"rule {rule.id} matched" + ("; rule order kept" if ordered else "")
        else:
            names = channel_names(self.channels.names())
            ordered = False
            preamble = "no rule matched, default route"
        for position, name in enumerate(names):
            if name not in self.channels:
                skipped.append(Skipped(name, "not a registered channel"))
                continue
            connector = self.channels[name]
            if method not in connector.methods:
                if rule is not None:  # the default route lists only channels that take the method
                    skipped.append(Skipped(name, f"method {method} not supported"))
                continue
            if connector.currencies is not None and currency not in connector.currencies:
                skipped.append(Skipped(name, f"currency {currency} not supported"))
                continue
            breaker = self.breaker(name, livemode)
            if not breaker.would_allow():
                skipped.append(Skipped(name, breaker.describe(), transient=True))
                continue
            eligible.append(_Eligible(name, connector, position))
        candidates = self._rank(eligible, amount, preamble, ordered, livemode)
        if take_probes:
            # The first candidate will be called at once: take its breaker's permission now
            # (the half-open probe). Another thread may have taken that probe since
            # would_allow: then the next candidate moves up.
            while candidates and not self.breaker(candidates[0].channel, livemode).allow():
                lost = candidates.pop(0)
                skipped.append(Skipped(lost.channel, self.breaker(lost.channel, livemode).describe(), transient=True))
        return RoutePlan(candidates, skipped, rule.id if rule is not None else None)

    def _rank(self, eligible: list[_Eligible], amount: int, preamble: str, ordered: bool,
              livemode: bool) -> list[Candidate]:
        scored = []
        for channel in eligible:
            score, explanation = self.score(channel.name, channel.connector, amount, livemode)
            scored.append((channel, score, explanation))
        if not ordered:
            # Best score first; equal scores keep the rule's (or the registry's) order.
            scored.sort(key=lambda item: (-round(item[1], 6), item[0].position))
        return [Candidate(channel.name, round(score, 4), f"{preamble}; {explanation}")
                for channel, score, explanation in scored]

    def score(self, name: str, connector: Connector, amount: int, livemode: bool = True) -> tuple[float, str]:
        """The channel's score for this amount in a mode, and the sentence that explains it."""
        policy = self.score_policy
        health = self.health(name, livemode)
        weight = policy.prior_weight
        success = (health.successes + policy.prior_success_rate * weight) / (health.outcomes + weight)
        latency_ms = ((health.mean_latency_ms or 0.0) * health.outcomes + policy.prior_latency_ms * weight) / (
            health.outcomes + weight)
        cost = rate_of(amount, connector.cost.rate, connector.cost.fixed)
        cost_share = float(Decimal(cost) / Decimal(amount)) if amount > 0 else 0.0
        score = success * (1 - cost_share) - policy.latency_weight_per_second * latency_ms / 1000
        seen = f"{health.outcomes} outcomes" if health.outcomes != 1 else "1 outcome"
        return score, (f"score {score:.4f} = success {success:.3f} ({seen}), cost {cost} "
                       f"({cost_share:.2%}), latency {latency_ms:.0f} ms")


# --------------------------------------------------------------------------- rule selection


def _candidate_rules(merchant: bool) -> Any:
    owner = rules.c.merchant_id.is_(None)
    if merchant:
        # The merchant's own rules of the payment's mode (a test key's rules never route live payments).
        owner = or_(and_(rules.c.merchant_id == bindparam("merchant_id"), rules.c.livemode == bindparam("livemode")),
                    owner)
    return (
        select(rules)
        .where(rules.c.enabled.is_(True), owner, or_(rules.c.method.is_(None), rules.c.method == bindparam("method")))
        .order_by(case((rules.c.merchant_id.is_(None), 1), else_=0), rules.c.priority, rules.c.id)
    )


# Every payment asks: built once (for a merchant, and for the platform alone).
_CANDIDATE_RULES = {True: _candidate_rules(True), False: _candidate_rules(False)}


def first_matching_rule(session: Session, *, merchant_id: str | None, method: str, currency: str, amount: int,
                        country: str | None, card_bin: str | None, livemode: bool = True) -> Row | None:
    """The first enabled rule whose conditions all hold: the merchant's (of the payment's mode) before
    the platform's, then by priority (lowest first), then by creation (ids sort by time)."""
    merchant = merchant_id is not None
    params = {"merchant_id": merchant_id, "method": method, "livemode": livemode} if merchant else {"method": method}
    country = country.upper() if country else None
    for rule in session.connection().execute(_CANDIDATE_RULES[merchant], params):
        if rule_matches(rule, method=method, currency=currency, amount=amount, country=country, card_bin=card_bin):
            return rule
    return None


def rule_matches(rule: Any, *, method: str, currency: str, amount: int, country: str | None,
                 card_bin: str | None) -> bool:
    """Every condition the rule sets holds; a condition on data the payment lacks (no
    country, no card) does not hold."""
    if rule.method is not None and rule.method != method:
        return False
    if rule.currency is not None and rule.currency != currency:
        return False
    if rule.min_amount is not None and amount < rule.min_amount:
        return False
    if rule.max_amount is not None and amount > rule.max_amount:
        return False
    if rule.country is not None and rule.country != country:
        return False
    return rule.card_bin_prefix is None or (card_bin is not None and card_bin.startswith(rule.card_bin_prefix))


# --------------------------------------------------------------------------- rules: writing and reading

RULE_FIELDS = ("priority", "method", "currency", "min_amount", "max_amount", "country", "card_bin_prefix",
               "channels", "strategy", "enabled")
_BIN_PREFIX = re.compile(r"^[0-9]{1,8}$")


def rule_dict(row: Row) -> dict[str, Any]:
    return {
        "id": row.id, "merchant_id": row.merchant_id, "scope": "platform" if row.merchant_id is None else "merchant",
        "livemode": None if row.merchant_id is None else row.livemode,
        "priority": row.priority, "method": row.method, "currency": row.currency, "min_amount": row.min_amount,
        "max_amount": row.max_amount, "country": row.country, "card_bin_prefix": row.card_bin_prefix,
        "channels": orjson.loads(row.channels_json), "strategy": row.strategy, "enabled": row.enabled,
        "created_at": row.created_at, "updated_at": row.updated_at, "created_by": row.created_by,
    }


def check_terms(currency: str | None, country: str | None) -> None:
    """A currency and a country as a payment has them (a rule's conditions, a route preview's question)."""
    if currency is not None and not is_currency(currency):
        raise UnknownCurrency(f"{currency!r} is not an ISO 4217 currency code with a minor unit (upper case)")
    if country is not None and not is_country(country):
        raise InvalidCountry(f"{country!r} is not an ISO 3166-1 alpha-2 code of a country, in upper case")


def check_rule(channels: ChannelSet, values: dict[str, Any]) -> None:
    """The rules a routing rule must keep, each with its own error code."""
    currency = values.get("currency")
    check_terms(currency, values.get("country"))
    prefix = values.get("card_bin_prefix")
    if prefix is not None and not _BIN_PREFIX.match(prefix):
        raise InvalidCardBinPrefix("card_bin_prefix is 1 to 8 digits")
    low, high = values.get("min_amount"), values.get("max_amount")
    if low is not None and high is not None and low > high:
        raise InvalidAmountRange(f"min_amount {low} is more than max_amount {high}")
    names: list[str] = values["channels"]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DuplicateRuleChannel(f"channel {name!r} is named twice")
        seen.add(name)
        if name not in channels:
            raise UnknownRuleChannel(f"no channel named {name!r}; registered: {', '.join(channels.names())}")
        connector = channels[name]
        method = values.get("method")
        if method is not None and method not in connector.methods:
            raise RuleChannelUnsupported(f"channel {name} does not take method {method}")
        if currency is not None and connector.currencies is not None and currency not in connector.currencies:
            raise RuleChannelUnsupported(f"channel {name} does not take currency {currency}")


def _visible(principal: Principal, row: Row | None) -> bool:
    """Merchants see their own rules (a key: of its mode) and the platform's; the platform sees all."""
    return row is not None and (row.merchant_id is None or principal.sees_object(row.merchant_id, row.livemode))


def get_rule(session: Session, principal: Principal, rule_id: str) -> Row:
    row = session.execute(select(rules).where(rules.c.id == rule_id)).first()
    if not _visible(principal, row):
        raise RuleNotFound(f"no routing rule {rule_id}")
    assert row is not None
    return row


def _writable(session: Session, principal: Principal, rule_id: str) -> Row:
    row = get_rule(session, principal, rule_id)
    if principal.merchant_id is not None and row.merchant_id is None:
        raise PlatformRuleReadOnly(f"routing rule {rule_id} is platform-wide: only the platform changes it")
    return row


def list_rules(session: Session, principal: Principal, *, merchant_id: str | None, platform_only: bool,
               limit: int, starting_after: str | None, livemode: bool | None = None) -> tuple[list[Row], bool]:
    """Rules by id (creation order). Merchants get their own and the platform's; the platform
    may narrow to one merchant's (``merchant_id``) or to the platform-wide (``platform_only``)."""
    query = select(rules).order_by(rules.c.id).limit(limit + 1)
    if principal.merchant_id is not None:
        query = query.where(or_(rules.c.merchant_id == principal.merchant_id, rules.c.merchant_id.is_(None)))
    modes = principal.listed_modes(livemode)
    if not modes:
        return [], False
    if len(modes) == 1:  # a platform-wide rule routes both modes
        query = query.where(or_(rules.c.livemode == modes[0], rules.c.merchant_id.is_(None)))
    if platform_only:
        query = query.where(rules.c.merchant_id.is_(None))
    elif merchant_id is not None:
        query = query.where(rules.c.merchant_id == merchant_id)
    if starting_after:
        query = query.where(rules.c.id > starting_after)
    rows = session.execute(query).all()
    return rows[:limit], len(rows) > limit


def create_rule(session: Session, channels: ChannelSet, actor: audit.Actor, principal: Principal, *,
                merchant_id: str | None, fields: dict[str, Any]) -> Row:
    """Write a rule. Merchant callers own theirs (naming another merchant is a 404); the
    platform writes platform-wide rules (``merchant_id`` None) or any merchant's."""
    from clearhouse.identity import service as identity

    if principal.merchant_id is not None:
        if merchant_id is not None and merchant_id != principal.merchant_id:
            raise NotFound(f"no merchant {merchant_id}")
        merchant_id = principal.merchant_id
    elif merchant_id is not None:
        merchant_id = identity.get_merchant(session, None, merchant_id).id
    values = {name: fields.get(name) for name in RULE_FIELDS}
    values["strategy"] = values["strategy"] or "score"
    values["enabled"] = True if values["enabled"] is None else values["enabled"]
    check_rule(channels, values)
    now = clock.now()
    rule_id = new_id("rr")
    row_values = _row_values(values)
    session.execute(insert(rules).values(id=rule_id, merchant_id=merchant_id, livemode=principal.creates_livemode,
                                         created_at=now, updated_at=now, created_by=actor.id[:64], **row_values))
    audit.record(session, actor, "routing.rule.create", "routing_rule", rule_id,
                 changes={"merchant_id": merchant_id, **values}, merchant_id=merchant_id)
    return get_rule(session, principal, rule_id)


def update_rule(session: Session, channels: ChannelSet, actor: audit.Actor, principal: Principal, rule_id: str,
                changes: dict[str, Any]) -> Row:
    """Change some fields of a rule; a condition set to None no longer applies."""
    row = _writable(session, principal, rule_id)
    current = rule_dict(row)
    values = {name: changes.get(name, current[name]) for name in RULE_FIELDS}
    check_rule(channels, values)
    changed = {name: values[name] for name in RULE_FIELDS if values[name] != current[name]}
    if not changed:
        return row
    session.execute(update(rules).where(rules.c.id == rule_id).values(updated_at=clock.now(),
                                                                      **_row_values(changed)))
    audit.record(session, actor, "routing.rule.update", "routing_rule", rule_id,
                 changes={name: {"from": current[name], "to": value} for name, value in changed.items()},
                 merchant_id=row.merchant_id)
    return get_rule(session, principal, rule_id)


def delete_rule(session: Session, actor: audit.Actor, principal: Principal, rule_id: str) -> None:
    """Remove a rule; the audit trail keeps what it was."""
    row = _writable(session, principal, rule_id)
    session.execute(delete(rules).where(rules.c.id == rule_id))
    before = rule_dict(row)
    audit.record(session, actor, "routing.rule.delete", "routing_rule", rule_id,
                 changes={name: before[name] for name in ("merchant_id", *RULE_FIELDS)}, merchant_id=row.merchant_id)


def _row_values(values: dict[str, Any]) -> dict[str, Any]:
    out = {name: value for name, value in values.items() if name != "channels"}
    if "channels" in values:
        out["channels_json"] = orjson.dumps(list(values["channels"])).decode()
    return out


def channel_names(names: Iterable[str]) -> list[str]:
    """The routable channels of a registry listing (the wallet is not routed)."""
    return [name for name in names if name != WALLET]
