"""Idempotency keys: one row per (caller, key), with the first response.

Revision ID: 0002_idempotency_keys
Revises: 0001_ledger
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from clearhouse.kit.types import UTCDateTime

revision = "0002_idempotency_keys"
down_revision = "0001_ledger"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("scope", sa.String(128), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("response_status", sa.Integer),
        sa.Column("response_content_type", sa.String(128)),
        sa.Column("response_body", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("lease_until", UTCDateTime, nullable=False),
        sa.CheckConstraint("state IN ('in_progress', 'done')", name="state"),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])


def downgrade() -> None:
    op.drop_table("idempotency_keys")
