"""Webhooks: merchant endpoints, the transactional outbox of events, deliveries.

Revision ID: 0007_webhooks
Revises: 0006_payments
Create Date: 2026-11-23
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0007_webhooks"
down_revision = "0006_payments"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
