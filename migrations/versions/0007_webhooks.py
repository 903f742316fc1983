"""Webhooks: merchant endpoints, the transactional outbox of events, deliveries.

Revision ID: 0007_webhooks
Revises: 0006_payments
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from clearhouse.kit.models import sql_list
from clearhouse.kit.types import UTCDateTime
from clearhouse.webhooks.models import (
    DELIVERY_STATUSES,
    DESCRIPTION_MAX,
    ERROR_MAX,
    EVENT_TYPE_MAX,
    URL_MAX,
)

revision = "0007_webhooks"
down_revision = "0006_payments"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("merchant_id", sa.String(40), sa.ForeignKey("merchants.id"), nullable=False),
        sa.Column("url", sa.String(URL_MAX), nullable=False),
        sa.Column("description", sa.String(DESCRIPTION_MAX)),
        sa.Column("event_types_json", sa.Text, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("secret_ciphertext", sa.Text, nullable=False),
        sa.Column("previous_secret_ciphertext", sa.Text),
        sa.Column("previous_secret_expires_at", UTCDateTime),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("deleted_at", UTCDateTime),
    )
    op.create_index("ix_webhook_endpoints_merchant", "webhook_endpoints", ["merchant_id", "id"])
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("merchant_id", sa.String(40), sa.ForeignKey("merchants.id"), nullable=False),
        sa.Column("type", sa.String(EVENT_TYPE_MAX), nullable=False),
        sa.Column("payload_json", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_webhook_events_merchant", "webhook_events", ["merchant_id", "id"])
    op.create_index("ix_webhook_events_type", "webhook_events", ["type", "id"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("event_id", sa.String(40), sa.ForeignKey("webhook_events.id"), nullable=False),
        sa.Column("endpoint_id", sa.String(40), sa.ForeignKey("webhook_endpoints.id"), nullable=False),
        sa.Column("merchant_id", sa.String(40), sa.ForeignKey("merchants.id"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("manual", sa.Boolean, nullable=False),
        sa.Column("attempt_count", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", UTCDateTime),
        sa.Column("last_attempt_at", UTCDateTime),
        sa.Column("last_status_code", sa.Integer),
        sa.Column("last_error", sa.String(ERROR_MAX)),
        sa.Column("delivered_at", UTCDateTime),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.CheckConstraint(f"status IN ({sql_list(DELIVERY_STATUSES)})", name="status"),
        sa.CheckConstraint("attempt_count >= 0", name="attempt_count"),
    )
    # The worker's question on every tick: pending deliveries whose time has come.
    op.create_index(
        "ix_webhook_deliveries_due", "webhook_deliveries", ["next_attempt_at"],
        sqlite_where=sa.text("status = 'pending'"), postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index("ix_webhook_deliveries_endpoint", "webhook_deliveries", ["endpoint_id", "id"])
    op.create_index("ix_webhook_deliveries_event", "webhook_deliveries", ["event_id", "id"])
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("delivery_id", sa.String(40), sa.ForeignKey("webhook_deliveries.id"), nullable=False),
        sa.Column("attempt_number", sa.Integer, nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("duration_ms", sa.Integer, nullable=False),
        sa.Column("status_code", sa.Integer),
        sa.Column("error", sa.String(ERROR_MAX)),
        sa.Column("response_excerpt", sa.Text),
    )
    op.create_index("ix_webhook_attempts_delivery", "webhook_attempts", ["delivery_id", "attempt_number"])


def downgrade() -> None:
    for table in ("webhook_attempts", "webhook_deliveries", "webhook_events", "webhook_endpoints"):
        op.drop_table(table)
