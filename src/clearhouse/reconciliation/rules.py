"""A channel's matching rules: plain, validated data the lead stores as JSON per channel.

Every tolerance is money in integer minor units, except the percentage, which is a ``Decimal``
(never a float: 0.1% of an amount must be exactly that). ``reference_similarity`` is a string
similarity, not money, so a float is honest there. The field meanings are in
docs/reconciliation.md ("Rules, per channel"); ``matching.match`` reads them.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from clearhouse.kit import clock
from clearhouse.kit.money import MAX_PAYMENT_AMOUNT

DISCREPANCY_CLASSES = ("missing_in_ledger", "missing_in_statement", "amount_mismatch", "fee_mismatch",
                       "status_mismatch", "duplicate", "timing")

MAX_TOLERANCE_MINOR = MAX_PAYMENT_AMOUNT
"""The largest amount or fee tolerance: 10^15 minor units, the largest payment of ours, so a wider one means
nothing more to a person; and the engine adds it to our amounts in 64-bit integers, where 2^63 wraps around."""
MAX_WINDOW_DAYS = 31
"""The widest ``date_window_days`` and ``batch_window_days``: lines are paired at most this many days apart."""

_PERCENT = re.compile(r"[0-9]{1,3}(\.[0-9]{1,4})?")

_MODEL = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True,
                    serialize_by_alias=True)


class AutoResolveRule(BaseModel):
    """A known pattern: a case of ``class`` whose difference is at most ``max_difference_minor`` (in absolute
    value; ``None``: any) is resolved on import with ``action``, for ``reason``. The case service applies it.

    The limit bounds the case's ``delta`` (what an adjustment posts: the net, fees included) as well as its
    class's difference: an amount gap of 1 beside a fee gap of 95.00 is no 1-cent case, and the rule never
    settles (or posts) more than it says."""

    model_config = _MODEL

    class_: Literal[DISCREPANCY_CLASSES] = Field(alias="class")  # type: ignore[valid-type]
    max_difference_minor: int | None = Field(default=None, ge=0, le=MAX_TOLERANCE_MINOR)
    action: Literal["accept", "adjust", "write_off"] = "accept"
    account: Literal["suspense", "channel_cost"] = "suspense"
    reason: str = Field(min_length=1, max_length=200)

    def applies(self, class_: str, difference: int | None, delta: int | None = None) -> bool:
        """Whether it settles a case of ``class_`` with ``difference`` (and ``delta``, when given)."""
        if not self.fits(class_, difference):
            return False
        return self.max_difference_minor is None or delta is None or abs(delta) <= self.max_difference_minor

    def fits(self, class_: str, difference: int | None) -> bool:
        """The class and its difference are the rule's (the delta aside)."""
        if class_ != self.class_:
            return False
        if self.max_difference_minor is None:
            return True
        return difference is not None and abs(difference) <= self.max_difference_minor


class MatchRules(BaseModel):
    """How one channel's statement lines are matched with ours (matching.py explains each pass)."""

    model_config = _MODEL

    amount_tolerance_minor: int = Field(default=0, ge=0, le=MAX_TOLERANCE_MINOR)
    amount_tolerance_percent: Decimal = Field(default=Decimal(0), ge=0, le=100, decimal_places=4)
    fee_tolerance_minor: int = Field(default=0, ge=0, le=MAX_TOLERANCE_MINOR)
    date_window_days: int = Field(default=1, ge=0, le=MAX_WINDOW_DAYS)
    reference_similarity: float = Field(default=0.85, ge=0, le=1)
    timing_cutoff_minutes: int = Field(default=60, ge=0, le=1440)
    timezone: str = "UTC"
    batch_matching: bool = True
    batch_window_days: int = Field(default=3, ge=0, le=MAX_WINDOW_DAYS)
    auto_resolve: list[AutoResolveRule] = Field(default_factory=list, max_length=50)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        return clock.known_zone(value)

    @field_validator("amount_tolerance_percent", mode="before")
    @classmethod
    def _written_exactly(cls, value: object) -> object:
        """The percentage as written: a string of digits with an optional fraction (``"0.1"``) or an integer. A
        JSON number with a fraction arrives as a float, whose value is not the one written (0.1 is not
        one tenth), and an exponent (``"1e2"``) is no way to write a percentage."""
        if isinstance(value, float):
            raise ValueError('give the percentage as a string of its digits, such as "0.1", not a JSON number '
                             "with a fraction (a float)")
        if isinstance(value, str) and not _PERCENT.fullmatch(value):
            raise ValueError('the percentage is digits with an optional fraction, such as "0.1"')
        return value

    def amount_tolerance(self, ours: int) -> int:
        """The amount tolerance around ``ours`` in whole minor units: the larger of the absolute and the
        percentage one (the percentage of our amount, rounded down: a tolerance is never more than asked)."""
        numerator, denominator = self.amount_tolerance_percent.as_integer_ratio()
        return max(self.amount_tolerance_minor, abs(ours) * numerator // (100 * denominator))


def auto_resolution(rules: MatchRules, class_: str, difference: int | None,
                    delta: int | None = None) -> AutoResolveRule | None:
    """The first of the channel's ``auto_resolve`` rules that settles a case of ``class_`` with ``difference``
    (and ``delta``, when given)."""
    for rule in rules.auto_resolve:
        if rule.applies(class_, difference, delta):
            return rule
    return None
