"""Money as an integer count of minor units plus an ISO 4217 currency."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from functools import cache

import iso4217
import pycountry

MAX_AMOUNT = 2**63 - 1
"""The largest amount a ledger column (BIGINT) can hold."""

MAX_PAYMENT_AMOUNT = 10**15
"""The largest payment, capture, refund or top-up, in minor units (ten trillion of a two-decimal currency).
Far below the ledger's limit of an amount (``MAX_AMOUNT``, 2**63 - 1): every payment of a channel
and currency goes through one clearing account, and an amount near the ledger's limit would
overflow that shared balance after the channel had already charged the customer. Also the bound
of anything sized like a payment: a route preview, a reconciliation tolerance."""


class UnknownCurrency(ValueError):
    """The code is not an active ISO 4217 currency with a minor unit."""


@dataclass(frozen=True, slots=True)
class Currency:
    code: str
    exponent: int

    @staticmethod
    @cache
    def of(code: str) -> Currency:
        """The currency for an upper-case ISO 4217 code; exponent from the ISO data."""
        if not isinstance(code, str) or len(code) != 3 or not code.isupper():
            raise UnknownCurrency(code)
        try:
            data = iso4217.Currency(code)
        except ValueError:
            raise UnknownCurrency(code) from None
        # Metals, XDR and the testing codes (XAU, XDR, XXX, XTS...) have no minor unit: not money here.
        # Funds codes (CLF, USN...) have one, and are.
        if data.exponent is None:
            raise UnknownCurrency(code)
        return Currency(code, data.exponent)

    def __str__(self) -> str:
        return self.code


def is_currency(code: str) -> bool:
    try:
        Currency.of(code)
    except UnknownCurrency:
        return False
    return True


def is_country(code: str) -> bool:
    """An ISO 3166-1 alpha-2 code of a country that exists (``CN``, ``DE``), upper case: ``pycountry``'s list, so
    user-assigned codes (``ZZ``, ``XX``, ``AA``) and withdrawn ones are not countries."""
    return len(code) == 2 and code.isupper() and pycountry.countries.get(alpha_2=code) is not None


class CurrencyMixed(ValueError):
    """Arithmetic was asked to combine two currencies."""


@dataclass(frozen=True, slots=True)
class Money:
    minor: int
    currency: Currency

    def __post_init__(self) -> None:
        if type(self.minor) is not int:
            raise TypeError("Money.minor must be an int count of minor units")

    @classmethod
    def of(cls, minor: int, code: str) -> Money:
        return cls(minor, Currency.of(code))

    def _same(self, other: Money) -> None:
        if self.currency != other.currency:
            raise CurrencyMixed(f"{self.currency} and {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.minor + other.minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.minor - other.minor, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.minor, self.currency)

    def __lt__(self, other: Money) -> bool:
        self._same(other)
        return self.minor < other.minor

    def __le__(self, other: Money) -> bool:
        self._same(other)
        return self.minor <= other.minor

    @property
    def amount(self) -> Decimal:
        """The value in major units, exact (for display only)."""
        return Decimal(self.minor).scaleb(-self.currency.exponent)

    def __str__(self) -> str:
        return f"{self.currency.code} {self.amount:.{self.currency.exponent}f}"

    def allocate(self, weights: list[int]) -> list[Money]:
        """Split into parts proportional to ``weights`` that always sum to the whole."""
        return [Money(part, self.currency) for part in allocate(self.minor, weights)]


def allocate(total: int, weights: list[int]) -> list[int]:
    """Largest-remainder allocation of an integer total in proportion to integer weights.

    The parts always sum to ``total``; ties in the remainder go to the earlier weight,
    so the result is deterministic.
    """
    if not weights or any(w < 0 for w in weights):
        raise ValueError("weights must be non-negative and not empty")
    weight_sum = sum(weights)
    if weight_sum == 0:
        raise ValueError("weights must not all be zero")
    sign = -1 if total < 0 else 1
    magnitude = abs(total)
    floors = [magnitude * w // weight_sum for w in weights]
    remainders = [magnitude * w % weight_sum for w in weights]
    short = magnitude - sum(floors)
    order = sorted(range(len(weights)), key=lambda i: (-remainders[i], i))
    for i in order[:short]:
        floors[i] += 1
    return [sign * part for part in floors]


def rate_of(amount: int, rate: Decimal, fixed: int = 0) -> int:
    """``amount`` x ``rate`` + ``fixed``, in minor units, rounded half-up (the way fee
    schedules are written: 0.6% of 1.25 is 0.0075, charged as 0.01)."""
    if amount < 0:
        raise ValueError("amount must not be negative")
    return int((Decimal(amount) * rate).quantize(Decimal(1), rounding=ROUND_HALF_UP)) + fixed


def share(total: int, part: int, whole: int) -> int:
    """``total`` x ``part`` / ``whole``, half-up: the part of a fee that belongs to part of an amount.
    Used cumulatively (share of everything refunded so far minus what was returned before), so
    several partial refunds return exactly the whole fee when they reach the whole amount."""
    if whole <= 0:
        return 0
    return (total * part * 2 + whole) // (whole * 2)
