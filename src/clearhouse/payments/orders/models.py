"""Card-code orders: products, their stock of card codes (encrypted at rest), orders and
the saga's recorded steps.

A code row is the unit of stock: its ``status`` moves ``available`` -> ``reserved`` (held
for one order) -> ``delivered`` (sold, exactly once), or back to ``available`` when an
order's reservation is released. A code that fails to decrypt is set aside as
``defective`` so it is never offered again.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column

from clearhouse.kit.models import Base, sql_list
from clearhouse.kit.types import UTCDateTime

CODE_STATUSES = ("available", "reserved", "delivered", "defective")
ORDER_STATUSES = ("reserved", "awaiting_payment", "paid", "delivered", "failed", "refunding", "refunded")
FINAL_ORDER_STATUSES = ("delivered", "failed", "refunded")
STEP_STATUSES = ("started", "done", "failed")
HELD_BY_ORDER = ("(status = 'available' AND order_id IS NULL) OR (status IN ('reserved', 'delivered')"
                 " AND order_id IS NOT NULL) OR status = 'defective'")
"""A held or sold code names its order; an available one names none."""


class Product(Base):
    """A digital good a merchant sells automatically: a price and a stock of codes."""

    __tablename__ = "products"
    __table_args__ = (
        CheckConstraint("price_amount > 0", name="price_positive"),
        Index("ix_products_merchant", "merchant_id", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(String(40), ForeignKey("merchants.id"))
    livemode: Mapped[bool] = mapped_column(Boolean, server_default=true())
    """False: made with a test key, seen only by test keys (identity.md, "Test and live")."""
    name: Mapped[str] = mapped_column(String(200))
    price_amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ProductCode(Base):
    """One card code. The code itself is AES-GCM ciphertext bound to this row
    (``product_codes.code:<id>``); the keyed fingerprint finds duplicates without decrypting."""

    __tablename__ = "product_codes"
    __table_args__ = (
        CheckConstraint(f"status IN ({sql_list(CODE_STATUSES)})", name="status"),
        CheckConstraint(HELD_BY_ORDER, name="held_by_order"),
        # The database refuses a code uploaded twice to one product, whatever races.
        UniqueConstraint("product_id", "fingerprint", name="uq_product_codes_product_fingerprint"),
        Index("ix_product_codes_stock", "product_id", "status", "id"),
        Index("ix_product_codes_order", "order_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    product_id: Mapped[str] = mapped_column(String(40), ForeignKey("products.id"))
    batch_id: Mapped[str] = mapped_column(String(40))
    fingerprint: Mapped[str] = mapped_column(String(64))
    code_encrypted: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(12))
    order_id: Mapped[str | None] = mapped_column(String(40), ForeignKey("orders.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Order(Base):
    """A purchase of ``quantity`` codes of one product; ``status`` is where its saga stands."""

    __tablename__ = "orders"
    __table_args__ = (
        CheckConstraint(f"status IN ({sql_list(ORDER_STATUSES)})", name="status"),
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint("amount > 0", name="amount_positive"),
        Index("ix_orders_merchant_mode", "merchant_id", "livemode", "created_at", "id"),  # a key's list, its mode
        Index("ix_orders_merchant_created", "merchant_id", "created_at", "id"),  # lists, newest first
        Index("ix_orders_status", "status", "updated_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(String(40), ForeignKey("merchants.id"))
    livemode: Mapped[bool] = mapped_column(Boolean, server_default=true())
    """False: made with a test key, seen only by test keys (identity.md, "Test and live")."""
    product_id: Mapped[str] = mapped_column(String(40), ForeignKey("products.id"))
    quantity: Mapped[int] = mapped_column(Integer)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(20))
    payment_method: Mapped[str] = mapped_column(String(16))
    payment_id: Mapped[str] = mapped_column(String(40))
    """Chosen when the order is made, before the payment exists: the saga finds it after a crash."""
    refund_id: Mapped[str | None] = mapped_column(String(40))
    customer_json: Mapped[str] = mapped_column(Text, default="{}")
    delivery_token_digest: Mapped[str] = mapped_column(String(64))
    """SHA-256 of the buyer's delivery-page token; the token itself is shown once."""
    failure_code: Mapped[str | None] = mapped_column(String(64))
    failure_message: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OrderStep(Base):
    """The saga's log: each step and compensation as it starts, completes or fails."""

    __tablename__ = "order_steps"
    __table_args__ = (
        CheckConstraint(f"status IN ({sql_list(STEP_STATUSES)})", name="status"),
        Index("ix_order_steps_order", "order_id", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    order_id: Mapped[str] = mapped_column(String(40), ForeignKey("orders.id"))
    step: Mapped[str] = mapped_column(String(24))
    status: Mapped[str] = mapped_column(String(12))
    detail_json: Mapped[str] = mapped_column(Text, default="{}")
    at: Mapped[datetime] = mapped_column(UTCDateTime)
