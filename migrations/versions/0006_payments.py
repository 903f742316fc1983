"""Payments: payments, their events and attempts, refunds, fee plans, inbound channel notifications, wallets.

Revision ID: 0006_payments
Revises: 0005_vault
Create Date: 2026-11-23
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0006_payments"
down_revision = "0005_vault"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
