"""Card-code orders: request and response shapes (api.md, "Virtual goods")."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, StrictBool, StringConstraints

from clearhouse.kit.api import CurrencyCode, Model, UtcTime
from clearhouse.kit.masking import mask_free_form
from clearhouse.payments.schemas import Amount, PaymentDetails
from clearhouse.vault.schemas import MerchantRef

MAX_QUANTITY = 100
"""Codes one order may buy."""
MAX_CODES_PER_UPLOAD = 1000


def _utf8(value: str) -> str:
    # Encrypted, fingerprinted and stored as UTF-8: a lone surrogate would fail there as a 500.
    # NUL is refused as kit.api.Model refuses it in top-level fields (here: also list items).
    if "\x00" in value:
        raise ValueError("text may not contain the NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return value


# A product's name is the merchant's free text: stored as shown, masked (data-protection.md, "Free text").
Name = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_utf8),
                 AfterValidator(mask_free_form)]
Code = Annotated[str, StringConstraints(min_length=1, max_length=256), AfterValidator(_utf8)]
Ref = Annotated[str, StringConstraints(min_length=1, max_length=128), AfterValidator(_utf8)]


class Price(Model):
    amount: Amount  # a payment's bound: a price no payment could take would be a product nobody can buy
    currency: CurrencyCode


class ProductCreate(Model):
    name: Name
    price: Price
    active: StrictBool = True
    merchant_id: MerchantRef | None = Field(default=None, description="Platform callers name the merchant")


class ProductUpdate(Model):
    name: Name | None = None
    price: Price | None = None
    active: StrictBool | None = None


class CodesUpload(Model):
    codes: list[Code] = Field(min_length=1, max_length=MAX_CODES_PER_UPLOAD,
                              description="The codes a buyer receives (gift card numbers, game keys); stored encrypted")


class PriceOut(BaseModel):
    amount: int
    currency: str


class StockOut(BaseModel):
    available: int
    reserved: int
    delivered: int
    defective: int


class ProductOut(BaseModel):
    id: str
    object: Literal["product"]
    merchant_id: str
    livemode: bool
    name: str
    price: PriceOut
    active: bool
    stock: StockOut
    created_at: UtcTime
    updated_at: UtcTime


class CodesUploadOut(BaseModel):
    product_id: str
    batch_id: str
    added: int
    stock: StockOut


class OrderCustomer(Model):
    id: Ref | None = None
    email: Annotated[str, StringConstraints(max_length=254, pattern=r"^[^@\s]+@[^@\s]+$"),
                     AfterValidator(_utf8)] | None = None


class OrderPayment(Model):
    method: Literal["card", "bank_transfer", "alipay", "wechat_pay", "wallet"]
    payment_details: PaymentDetails | None = None


class OrderCreate(Model):
    product_id: Annotated[str, StringConstraints(min_length=1, max_length=40), AfterValidator(_utf8)]
    quantity: int = Field(default=1, strict=True, ge=1, le=MAX_QUANTITY)
    customer: OrderCustomer | None = None
    payment: OrderPayment


class StepOut(BaseModel):
    step: str
    status: str
    detail: dict[str, Any]
    at: UtcTime


OrderStatus = Literal["reserved", "awaiting_payment", "paid", "delivered", "failed", "refunding", "refunded"]
"""An order's states (``models.ORDER_STATUSES``): a filter naming another is 422, not an empty page."""


class OrderOut(BaseModel):
    id: str
    object: Literal["order"]
    merchant_id: str
    livemode: bool
    product_id: str
    quantity: int
    amount: int
    currency: str
    status: OrderStatus
    payment_id: str
    payment_method: str
    payment_status: str | None = None
    next_action: dict[str, Any] | None = None
    refund_id: str | None
    customer: dict[str, Any]
    failure_code: str | None
    failure_message: str | None
    codes: list[str] | None = Field(default=None, description="Only in the answer to POST /v1/orders, once delivered")
    delivery_url: str | None = Field(
        default=None, description="The buyer's page (with its token); only in the answer to POST /v1/orders")
    steps: list[StepOut] | None = None
    created_at: UtcTime
    updated_at: UtcTime
    delivered_at: UtcTime | None


class OrderCodesOut(BaseModel):
    order_id: str
    codes: list[str]
