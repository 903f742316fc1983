"""Payments request and response shapes (api.md, "Payment" and "Refund")."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints, model_validator

from clearhouse.kit.api import CountryCode, CurrencyCode, MetadataIn, Model, UtcTime
from clearhouse.kit.masking import mask_free_form
from clearhouse.kit.money import MAX_PAYMENT_AMOUNT
from clearhouse.vault.schemas import CardNumber, HolderName, MerchantRef

Amount = Annotated[int, Field(strict=True, ge=1, le=MAX_PAYMENT_AMOUNT, description="Minor units of the currency")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=500)]
Ref = Annotated[str, StringConstraints(min_length=1, max_length=128)]
# Merchant-supplied free text is stored as it is shown: masked (data-protection.md, "Free text").
FreeText = Annotated[Text, AfterValidator(mask_free_form)]
Metadata = MetadataIn  # stored masked (kit/api.py)


class CardIn(Model):
    number: CardNumber | None = None
    exp_month: int | None = Field(default=None, strict=True, ge=1, le=12)
    exp_year: int | None = Field(default=None, strict=True, ge=2000, le=2999)
    cvc: Annotated[str, StringConstraints(pattern=r"^[0-9]{3,4}$")] | None = Field(
        default=None, description="Sent to the channel once, never stored (PCI DSS 3.2)")
    holder_name: HolderName | None = None
    card_id: MerchantRef | None = Field(default=None, description="A card vaulted before (POST /v1/vault/cards)")

    @model_validator(mode="after")
    def _number_or_token(self) -> CardIn:
        if self.card_id is None and (self.number is None or self.exp_month is None or self.exp_year is None):
            raise ValueError("give number, exp_month and exp_year, or card_id")
        if self.card_id is not None and self.number is not None:
            raise ValueError("give either a card number or card_id, not both")
        return self


class PaymentDetails(Model):
    card: CardIn | None = None


def _ip_address(value: str) -> str:
    """An IPv4 or IPv6 address, as written (risk rules and reviewers read it)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("ip must be an IPv4 or IPv6 address") from None
    return value


class Customer(Model):
    id: Ref | None = None
    email: Annotated[str, StringConstraints(max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")] | None = None
    ip: Annotated[str, StringConstraints(max_length=45), AfterValidator(_ip_address)] | None = None
    country: CountryCode | None = None


class PaymentCreate(Model):
    amount: Amount
    currency: CurrencyCode
    method: Literal["card", "bank_transfer", "alipay", "wechat_pay", "wallet"]
    capture_method: Literal["automatic", "manual"] = "automatic"
    merchant_id: MerchantRef | None = Field(default=None, description="Platform callers name the merchant")
    merchant_order_id: Ref | None = None
    description: FreeText | None = None
    customer: Customer | None = None
    payment_details: PaymentDetails | None = None
    return_url: Annotated[str, StringConstraints(max_length=2000, pattern=r"^https?://")] | None = None
    metadata: Metadata | None = None


class CaptureIn(Model):
    # Left out: the whole authorization. An explicit null is refused (422), not taken as "all": a client's
    # amount that came out null by mistake must not capture (or refund) everything.
    amount: Amount = Field(default=None,  # type: ignore[assignment]
                           description="Omit to capture the whole authorization; null is refused")


class CancelIn(Model):
    reason: FreeText | None = None


class RefundCreate(Model):
    amount: Amount = Field(default=None,  # type: ignore[assignment]  # as CaptureIn: null is not "everything"
                           description="Omit to refund everything not yet refunded; null is refused")
    reason: FreeText | None = None


class FeeOut(BaseModel):
    type: str
    amount: int
    percent: str | None = None
    fixed: int | None = None
    minimum: int | None = None


class AttemptOut(BaseModel):
    id: str
    channel: str
    status: str
    reason: str
    decline_code: str | None
    message: str | None
    latency_ms: int | None
    created_at: UtcTime
    finished_at: UtcTime | None


class TimelineEvent(BaseModel):
    type: str
    from_status: str | None
    to_status: str | None
    detail: dict[str, Any]
    at: UtcTime


PaymentStatus = Literal["requires_action", "processing", "requires_capture", "succeeded", "failed", "canceled"]
"""models.STATUSES, as the API writes and filters them (an unknown status filter is a 422, not an empty list)."""


class PaymentOut(BaseModel):
    id: str
    object: Literal["payment"]
    merchant_id: str
    livemode: bool
    status: PaymentStatus
    amount: int
    amount_captured: int
    amount_refunded: int
    currency: str
    method: str
    capture_method: str
    purpose: str
    channel: str | None
    merchant_order_id: str | None
    description: str | None
    customer: dict[str, Any]
    card_id: str | None
    wallet_id: str | None
    return_url: str | None
    metadata: dict[str, Any]
    fees: list[FeeOut]
    net_amount: int
    next_action: dict[str, Any] | None
    failure_code: str | None
    failure_message: str | None
    authorization_expires_at: UtcTime | None
    ledger_transfer_id: str | None
    risk: dict[str, Any] | None
    attempts: list[AttemptOut]
    timeline: list[TimelineEvent] | None = None
    created_at: UtcTime
    updated_at: UtcTime


class RefundOut(BaseModel):
    id: str
    object: Literal["refund"]
    payment_id: str
    merchant_id: str
    livemode: bool
    amount: int
    currency: str
    status: Literal["pending", "succeeded", "failed"]
    reason: str | None
    fee_refunded: int = Field(description="The platform's fee given back to the merchant (set when the refund "
                              "succeeds; 0 before)")
    channel_cost_charged: int = Field(description="What the channel keeps of its own fee on this refund, charged to "
                                      "the merchant under refund_cost_bearer: merchant (set when the refund succeeds)")
    failure_code: str | None
    ledger_transfer_id: str | None
    created_at: UtcTime
    updated_at: UtcTime


class FeeRuleIn(Model):
    method: Literal["card", "bank_transfer", "alipay", "wechat_pay", "wallet"] | None = None
    currency: CurrencyCode | None = None
    # The shape here (a decimal string, whole numbers: else 422 validation_error); the ranges and the
    # number of decimals in fees._check, so every value out of its rule is the one documented code,
    # 422 invalid_fee_plan.
    percent: Annotated[str, StringConstraints(max_length=32, pattern=r"^-?[0-9]+(\.[0-9]+)?$")] = Field(
        description="Percent as a decimal string, 0 to 100: \"0.6\" is 0.6 %")
    fixed: int = Field(default=0, strict=True, description="Minor units, 0 to 2**53 - 1")
    minimum: int = Field(default=0, strict=True, description="Minor units, 0 to 2**53 - 1")
    refund_fee_policy: Literal["proportional", "none"] = "proportional"
    refund_cost_bearer: Literal["platform", "merchant"] = "platform"


class FeePlanIn(Model):
    rules: list[FeeRuleIn] = Field(max_length=100)


class FeePlanOut(BaseModel):
    merchant_id: str | None
    rules: list[dict[str, Any]]


class WalletCreate(Model):
    customer_id: Ref
    currency: CurrencyCode
    merchant_id: MerchantRef | None = None


class WalletOut(BaseModel):
    id: str
    object: Literal["wallet"]
    merchant_id: str
    livemode: bool
    customer_id: str
    currency: str
    balance: int
    pending: int
    created_at: UtcTime


class TopUpCreate(Model):
    amount: Amount
    method: Literal["card", "bank_transfer", "alipay", "wechat_pay"]
    payment_details: PaymentDetails | None = None
    return_url: Annotated[str, StringConstraints(max_length=2000, pattern=r"^https?://")] | None = None
    metadata: Metadata | None = None
