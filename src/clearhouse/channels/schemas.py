"""Routing and channel request and response shapes.

Shapes only: whether a currency exists, a BIN prefix is digits, a channel is registered or
an amount range is the right way round are the service's rules (channels/routing.py), so
each answers with its own stable code rather than a generic ``validation_error``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

from clearhouse.kit.api import Model, UtcTime
from clearhouse.kit.money import MAX_AMOUNT, MAX_PAYMENT_AMOUNT

Method = Literal["card", "bank_transfer", "alipay", "wechat_pay", "wallet"]
Strategy = Literal["score", "ordered"]
ChannelName = Annotated[str, StringConstraints(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_.\-]+$")]
MerchantRef = Annotated[str, StringConstraints(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_\-]+$")]
Priority = Annotated[int, Field(strict=True, ge=0, le=1_000_000, description="Lower is tried first")]
RuleAmount = Annotated[int, Field(strict=True, ge=0, le=MAX_AMOUNT, description="Minor units, inclusive")]
CurrencyText = Annotated[str, StringConstraints(min_length=1, max_length=8)]
CountryText = Annotated[str, StringConstraints(min_length=1, max_length=8)]
BinPrefixText = Annotated[str, StringConstraints(max_length=16)]  # "" too: invalid_card_bin_prefix, not a shape
RuleChannels = Annotated[list[ChannelName], Field(min_length=1, max_length=16,
                                                  description="Channel names, in fallback order")]


class RuleCreate(Model):
    merchant_id: MerchantRef | None = Field(
        default=None, description="Platform callers: a merchant's id, or null for a platform-wide rule. "
        "Merchant callers: omitted or their own")
    priority: Priority = 100
    method: Method | None = None
    currency: CurrencyText | None = Field(default=None, description="ISO 4217, upper case")
    min_amount: RuleAmount | None = None
    max_amount: RuleAmount | None = None
    country: CountryText | None = Field(default=None, description="The customer's country, ISO 3166-1 alpha-2")
    card_bin_prefix: BinPrefixText | None = Field(default=None, description="1 to 8 leading card digits")
    channels: RuleChannels
    strategy: Strategy = "score"
    enabled: bool = Field(default=True, strict=True)


class RuleUpdate(Model):
    """Only the fields given change; a condition set to null no longer applies. The owner
    (``merchant_id``) never changes: delete the rule and write another."""

    # Non-conditions default to None when omitted, but an explicit null is refused.
    priority: Priority = None  # type: ignore[assignment]
    method: Method | None = None
    currency: CurrencyText | None = None
    min_amount: RuleAmount | None = None
    max_amount: RuleAmount | None = None
    country: CountryText | None = None
    card_bin_prefix: BinPrefixText | None = None
    channels: RuleChannels = None  # type: ignore[assignment]
    strategy: Strategy = None  # type: ignore[assignment]
    enabled: bool = Field(default=None, strict=True)  # type: ignore[assignment]


class RuleOut(BaseModel):
    id: str
    merchant_id: str | None
    livemode: bool | None
    """The mode of the payments a merchant's rule routes; None: a platform-wide rule, which routes both."""
    scope: Literal["merchant", "platform"]
    priority: int
    method: str | None
    currency: str | None
    min_amount: int | None
    max_amount: int | None
    country: str | None
    card_bin_prefix: str | None
    channels: list[str]
    strategy: Strategy
    enabled: bool
    created_at: UtcTime
    updated_at: UtcTime
    created_by: str


class CostOut(BaseModel):
    rate: str = Field(description="Share of the amount, a decimal string (\"0.006\" is 0.6%)")
    fixed: int = Field(description="Minor units per payment")
    returned_on_refund: bool = Field(description="The channel gives its rate back on a refunded amount (QR wallets)")


class BreakerOut(BaseModel):
    state: Literal["closed", "open", "half_open"]
    opened_until: UtcTime | None
    opened_because: str | None
    consecutive_failures: int
    cooldown_seconds: float


class ChannelOut(BaseModel):
    name: str
    methods: list[str]
    currencies: list[str] | None = Field(description="null: any currency")
    cost: CostOut
    supports_manual_capture: bool
    breaker: BreakerOut
    outcomes: int = Field(description="Outcomes this server process has seen in the scoring window")
    success_rate: float | None = Field(description="Observed in the window; null without data")
    mean_latency_ms: float | None


class ChannelsOut(BaseModel):
    data: list[ChannelOut]


class RoutePreviewIn(Model):
    merchant_id: MerchantRef | None = Field(
        default=None, description="Platform callers: whose rules apply (null: the platform's only)")
    method: Method
    currency: CurrencyText = Field(description="ISO 4217, upper case, as a payment's (else 422 unknown_currency)")
    amount: Annotated[int, Field(strict=True, gt=0, le=MAX_PAYMENT_AMOUNT)]
    country: CountryText | None = None
    card_bin: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,8}$")] | None = Field(
        default=None, description="Up to 8 leading digits, never a card number")
    livemode: bool | None = Field(
        default=None, description="Platform keys and people: the payment's mode (default live); a key previews its own")


class CandidateOut(BaseModel):
    channel: str
    score: float | None
    reason: str


class SkippedOut(BaseModel):
    channel: str
    reason: str
    transient: bool


class RoutePlanOut(BaseModel):
    rule_id: str | None
    candidates: list[CandidateOut]
    skipped: list[SkippedOut]
    evaluated_at: UtcTime

