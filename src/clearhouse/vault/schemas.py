"""Vault request and response shapes. Responses never carry a full number: a card shows its
BIN and last four, a bank account its last four."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

from clearhouse.kit.api import CountryCode, CurrencyCode, Model, UtcTime

# Shapes only; the number's digits, length and Luhn check are the service's rules, so they
# answer with stable codes (invalid_card_number, ...) rather than a generic validation error.
CardNumber = Annotated[str, StringConstraints(min_length=1, max_length=40)]
MerchantRef = Annotated[str, StringConstraints(min_length=1, max_length=40)]
HolderName = Annotated[str, StringConstraints(min_length=1, max_length=200)]
BankCode = Annotated[str, StringConstraints(min_length=1, max_length=34, pattern=r"^[A-Za-z0-9 \-]+$")]


class CardCreate(Model):
    number: CardNumber = Field(description="13-19 digits; spaces or dashes between digits are ignored")
    exp_month: int = Field(strict=True, ge=1, le=12)
    exp_year: int = Field(strict=True, ge=2000, le=2999, description="Four digits")
    cvc: Annotated[str, StringConstraints(pattern=r"^[0-9]{3,4}$")] | None = Field(
        default=None, description="Checked for shape, then discarded: never stored (PCI DSS 3.2)"
    )
    holder_name: HolderName | None = None
    merchant_id: MerchantRef | None = Field(
        default=None, description="Required for platform callers; merchant callers get their own"
    )


class CardOut(BaseModel):
    id: str
    merchant_id: str
    livemode: bool
    bin: str
    last4: str
    brand: Literal["visa", "mastercard", "amex", "unionpay", "jcb", "discover", "diners", "unknown"]
    exp_month: int
    exp_year: int
    fingerprint: str = Field(description="Equal for equal card numbers; keyed, so it reveals nothing")
    created_at: UtcTime


class BankAccountCreate(Model):
    account_number: Annotated[str, StringConstraints(min_length=1, max_length=40)] | None = None
    iban: Annotated[str, StringConstraints(min_length=1, max_length=50)] | None = None
    bank_code: BankCode | None = None
    holder_name: HolderName
    country: CountryCode
    currency: CurrencyCode | None = None
    merchant_id: MerchantRef | None = None


class BankAccountOut(BaseModel):
    id: str
    merchant_id: str
    livemode: bool
    kind: Literal["account_number", "iban"]
    last4: str
    bank_code: str | None
    holder_name: str
    country: str
    currency: str | None
    fingerprint: str
    created_at: UtcTime
