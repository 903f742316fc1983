"""Webhook tables: merchants' endpoints, the outbox of events, deliveries and their attempts.

An event and its deliveries are written in the transaction of the change they report
(``service.emit``), so a delivery exists if and only if its cause was committed; the
worker (``delivery.deliver_due``) sends them afterwards, outside any transaction.
Endpoint secrets are kept only as FieldCipher ciphertexts.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text, text, true
from sqlalchemy.orm import Mapped, mapped_column

from clearhouse.kit.models import Base, sql_list
from clearhouse.kit.types import UTCDateTime

DELIVERY_STATUSES = ("pending", "delivered", "failed", "canceled")
"""pending: waiting for its next attempt (or being sent); delivered: a 2xx answer; failed:
given up after the retry window; canceled: its endpoint was deleted first."""

URL_MAX = 2048
DESCRIPTION_MAX = 500
EVENT_TYPE_MAX = 64
ERROR_MAX = 500
RESPONSE_EXCERPT_MAX = 1024


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_merchant", "merchant_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(String(40), ForeignKey("merchants.id"))
    livemode: Mapped[bool] = mapped_column(Boolean, server_default=true())
    """False: made with a test key, seen only by test keys (identity.md, "Test and live")."""
    url: Mapped[str] = mapped_column(String(URL_MAX))
    description: Mapped[str | None] = mapped_column(String(DESCRIPTION_MAX))
    event_types_json: Mapped[str] = mapped_column(Text)
    """A JSON list of event types this endpoint receives; ``["*"]`` is every type."""
    enabled: Mapped[bool] = mapped_column(Boolean)
    secret_ciphertext: Mapped[str] = mapped_column(Text)
    """FieldCipher token of the ``whsec_...`` signing secret, context ``webhook_endpoints.secret:<id>``."""
    previous_secret_ciphertext: Mapped[str | None] = mapped_column(Text)
    """The secret before the last rotation (context ``webhook_endpoints.previous_secret:<id>``):
    deliveries carry a signature under it too until ``previous_secret_expires_at``, so a
    merchant can switch its verifier over without dropping a single event."""
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """Deleted endpoints stay as rows (their delivery log refers to them) but are gone from the API."""


class WebhookEvent(Base):
    """The outbox: one row per thing that happened, in the transaction that made it happen."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        Index("ix_webhook_events_merchant", "merchant_id", "id"),  # a platform caller's list, both modes
        Index("ix_webhook_events_merchant_mode", "merchant_id", "livemode", "id"),  # a key's list, its mode
        Index("ix_webhook_events_type", "type", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(String(40), ForeignKey("merchants.id"))
    livemode: Mapped[bool] = mapped_column(Boolean, server_default=true())
    """False: made with a test key, seen only by test keys (identity.md, "Test and live")."""
    type: Mapped[str] = mapped_column(String(EVENT_TYPE_MAX))
    payload_json: Mapped[str] = mapped_column(Text)
    """The event's ``data`` object as JSON, exactly as sent in every delivery."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WebhookDelivery(Base):
    """One event to one endpoint, retried until a 2xx answer or the end of the retry window."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(f"status IN ({sql_list(DELIVERY_STATUSES)})", name="status"),
        CheckConstraint("attempt_count >= 0", name="attempt_count"),
        # What the worker asks for on every tick: pending rows whose time has come.
        Index(
            "ix_webhook_deliveries_due", "next_attempt_at",
            sqlite_where=text("status = 'pending'"), postgresql_where=text("status = 'pending'"),
        ),
        Index("ix_webhook_deliveries_endpoint", "endpoint_id", "id"),
        Index("ix_webhook_deliveries_event", "event_id", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(40), ForeignKey("webhook_events.id"))
    endpoint_id: Mapped[str] = mapped_column(String(40), ForeignKey("webhook_endpoints.id"))
    merchant_id: Mapped[str] = mapped_column(String(40), ForeignKey("merchants.id"))
    status: Mapped[str] = mapped_column(String(16))
    manual: Mapped[bool] = mapped_column(Boolean)
    """Made by a person's or key's redelivery request rather than by the event itself."""
    attempt_count: Mapped[int] = mapped_column(Integer)
    """Attempts claimed so far; a claim increments it, so a result recorded after another
    worker re-claimed the delivery (lease expired) cannot overwrite the newer attempt's state."""
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """When the next attempt is due; while an attempt is in flight, the end of its lease."""
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(ERROR_MAX))
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WebhookAttempt(Base):
    """One HTTP request of a delivery and what came back (the delivery log)."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "attempt_number"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    delivery_id: Mapped[str] = mapped_column(String(40), ForeignKey("webhook_deliveries.id"))
    attempt_number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    duration_ms: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(ERROR_MAX))
    response_excerpt: Mapped[str | None] = mapped_column(Text)
    """The first ``RESPONSE_EXCERPT_MAX`` bytes of the answer, as text."""
