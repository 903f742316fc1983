"""Payments tables: the payment and its timeline (events) and channel attempts, refunds,
fee rules, inbound channel notifications, and customer wallets.

A payment never holds money: amounts here describe the order; balances are the ledger's.
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

STATUSES = ("requires_action", "processing", "requires_capture", "succeeded", "failed", "canceled")
FINAL_STATUSES = ("succeeded", "failed", "canceled")
METHODS = ("card", "bank_transfer", "alipay", "wechat_pay", "wallet")
CAPTURE_METHODS = ("automatic", "manual")
REFUND_STATUSES = ("pending", "succeeded", "failed")
PURPOSES = ("merchant_sale", "wallet_top_up")


class Payment(Base):
    __tablename__ = "payments"
    __table_args__ = (
        CheckConstraint(f"status IN ({sql_list(STATUSES)})", name="status"),
        CheckConstraint(f"method IN ({sql_list(METHODS)})", name="method"),
        CheckConstraint(f"capture_method IN ({sql_list(CAPTURE_METHODS)})", name="capture_method"),
        CheckConstraint(f"purpose IN ({sql_list(PURPOSES)})", name="purpose"),
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("amount_captured >= 0 AND amount_captured <= amount", name="captured_within_amount"),
        # The database's own guard against over-refunding, beside the service's locked check.
        CheckConstraint("amount_refunded >= 0 AND amount_refunded + amount_refund_pending <= amount_captured",
                        name="refunds_within_captured"),
        # A key's list: its merchant's payments of its mode, newest first (a test key's few test payments are
        # not looked for among the merchant's many live ones).
        Index("ix_payments_merchant_mode", "merchant_id", "livemode", "created_at", "id"),
        Index("ix_payments_merchant_created", "merchant_id", "created_at", "id"),  # lists, newest first
        Index("ix_payments_status", "status", "updated_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(String(40), ForeignKey("merchants.id"))
    livemode: Mapped[bool] = mapped_column(Boolean, server_default=true())
    """False: made with a test key, seen only by test keys (identity.md, "Test and live")."""
    purpose: Mapped[str] = mapped_column(String(16), default="merchant_sale")
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    method: Mapped[str] = mapped_column(String(16))
    capture_method: Mapped[str] = mapped_column(String(12))
    status: Mapped[str] = mapped_column(String(20))
    channel: Mapped[str | None] = mapped_column(String(40))
    reference: Mapped[str | None] = mapped_column(String(40))
    """The attempt id the channel knows this payment by (its idempotency key)."""
    external_id: Mapped[str | None] = mapped_column(String(128))
    merchant_order_id: Mapped[str | None] = mapped_column(String(128))
    description: Mapped[str | None] = mapped_column(String(500))
    customer_json: Mapped[str] = mapped_column(Text, default="{}")
    card_id: Mapped[str | None] = mapped_column(String(40))
    wallet_id: Mapped[str | None] = mapped_column(String(40))
    """For a wallet payment: the wallet paid from; for a top-up: the wallet credited."""
    return_url: Mapped[str | None] = mapped_column(Text)
    metadata_json: Mapped[str] = mapped_column(Text, default="{}")
    amount_captured: Mapped[int] = mapped_column(BigInteger, default=0)
    amount_refunded: Mapped[int] = mapped_column(BigInteger, default=0)
    amount_refund_pending: Mapped[int] = mapped_column(BigInteger, default=0)
    fee_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    channel_cost: Mapped[int] = mapped_column(BigInteger, default=0)
    fees_json: Mapped[str] = mapped_column(Text, default="[]")
    fee_rule_json: Mapped[str] = mapped_column(Text, default="{}")
    """The fee rule applied, kept with the payment so a later plan change never rewrites it."""
    next_action_json: Mapped[str | None] = mapped_column(Text)
    ledger_entry_id: Mapped[str | None] = mapped_column(String(64))
    failure_code: Mapped[str | None] = mapped_column(String(64))
    failure_message: Mapped[str | None] = mapped_column(String(500))
    authorization_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class PaymentEvent(Base):
    """The payment's timeline: every transition and every fact learned, in order."""

    __tablename__ = "payment_events"
    __table_args__ = (Index("ix_payment_events_payment", "payment_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    payment_id: Mapped[str] = mapped_column(String(40), ForeignKey("payments.id"))
    type: Mapped[str] = mapped_column(String(40))
    from_status: Mapped[str | None] = mapped_column(String(20))
    to_status: Mapped[str | None] = mapped_column(String(20))
    detail_json: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


ATTEMPT_STATUSES = ("started", "approved", "authorized", "declined", "requires_action", "pending", "timeout",
                    "unavailable", "error", "failed", "canceled", "not_found")


class PaymentAttempt(Base):
    """One try of one channel. Written (``started``) and committed BEFORE the channel is
    called, so whatever crashes afterwards, the worker knows what to ask the channel."""

    __tablename__ = "payment_attempts"
    __table_args__ = (
        CheckConstraint(f"status IN ({sql_list(ATTEMPT_STATUSES)})", name="status"),
        UniqueConstraint("payment_id", "seq", name="uq_payment_attempts_payment_seq"),
        Index("ix_payment_attempts_status", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    payment_id: Mapped[str] = mapped_column(String(40), ForeignKey("payments.id"))
    seq: Mapped[int] = mapped_column(Integer)
    channel: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(500))
    decline_code: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str | None] = mapped_column(String(500))
    external_id: Mapped[str | None] = mapped_column(String(128))
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Refund(Base):
    __tablename__ = "refunds"
    __table_args__ = (
        CheckConstraint(f"status IN ({sql_list(REFUND_STATUSES)})", name="status"),
        CheckConstraint("amount > 0", name="amount_positive"),
        Index("ix_refunds_payment", "payment_id"),
        Index("ix_refunds_status", "status", "updated_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    payment_id: Mapped[str] = mapped_column(String(40), ForeignKey("payments.id"))
    merchant_id: Mapped[str] = mapped_column(String(40), ForeignKey("merchants.id"))
    livemode: Mapped[bool] = mapped_column(Boolean, server_default=true())
    """False: made with a test key, seen only by test keys (identity.md, "Test and live")."""
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(12))
    reason: Mapped[str | None] = mapped_column(String(500))
    channel: Mapped[str | None] = mapped_column(String(40))
    external_id: Mapped[str | None] = mapped_column(String(128))
    fee_refunded: Mapped[int] = mapped_column(BigInteger, default=0)
    channel_cost_charged: Mapped[int] = mapped_column(BigInteger, default=0)
    channel_cost_returned: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    """What the channel gives back of its fee when the refund succeeds (``Cost.returned``)."""
    ledger_entry_id: Mapped[str | None] = mapped_column(String(64))
    failure_code: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


REFUND_FEE_POLICIES = ("proportional", "none")
COST_BEARERS = ("platform", "merchant")


class FeeRule(Base):
    """One line of a fee plan: percentage plus fixed, with a minimum, for a method and
    currency (NULL: any). A merchant's own rules come before the platform's defaults."""

    __tablename__ = "fee_rules"
    __table_args__ = (
        CheckConstraint(f"refund_fee_policy IN ({sql_list(REFUND_FEE_POLICIES)})", name="refund_fee_policy"),
        CheckConstraint(f"refund_cost_bearer IN ({sql_list(COST_BEARERS)})", name="refund_cost_bearer"),
        CheckConstraint("fixed >= 0 AND minimum >= 0", name="non_negative"),
        # NULLs never collide in a unique constraint, so the key spells them out.
        UniqueConstraint("scope_key", name="uq_fee_rules_scope_key"),
        Index("ix_fee_rules_merchant", "merchant_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    scope_key: Mapped[str] = mapped_column(String(80))
    merchant_id: Mapped[str | None] = mapped_column(String(40), ForeignKey("merchants.id"))
    method: Mapped[str | None] = mapped_column(String(16))
    currency: Mapped[str | None] = mapped_column(String(3))
    percent: Mapped[str] = mapped_column(String(24))
    """A Decimal written as text (``0.6`` means 0.6 %): never a float."""
    fixed: Mapped[int] = mapped_column(BigInteger, default=0)
    minimum: Mapped[int] = mapped_column(BigInteger, default=0)
    refund_fee_policy: Mapped[str] = mapped_column(String(16), default="proportional")
    refund_cost_bearer: Mapped[str] = mapped_column(String(16), default="platform")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ChannelNotification(Base):
    """Every inbound notification, stored once per (channel, notification id): a duplicate
    hits the unique constraint and is acknowledged without being applied again."""

    __tablename__ = "channel_notifications"
    __table_args__ = (
        UniqueConstraint("channel", "notification_id", name="uq_channel_notifications_channel_notification"),
        Index("ix_channel_notifications_reference", "reference"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    channel: Mapped[str] = mapped_column(String(40))
    notification_id: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    reference: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(24))
    payload_json: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(200))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Wallet(Base):
    """A customer's Clearhouse e-wallet: a ledger liability account that never goes below zero."""

    __tablename__ = "wallets"
    __table_args__ = (
        UniqueConstraint("merchant_id", "livemode", "customer_id", "currency", name="uq_wallets_customer"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(String(40), ForeignKey("merchants.id"))
    livemode: Mapped[bool] = mapped_column(Boolean, server_default=true())
    """False: made with a test key, seen only by test keys (identity.md, "Test and live")."""
    customer_id: Mapped[str] = mapped_column(String(128))
    currency: Mapped[str] = mapped_column(String(3))
    account_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
