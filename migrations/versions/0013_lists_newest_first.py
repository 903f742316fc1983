"""Payments and orders are listed newest first by creation time: an id derived from an
Idempotency-Key is a hash, not in time order.

Revision ID: 0013_lists_newest_first
Revises: 0012_refund_cost_returned
Create Date: 2026-11-24
"""

from alembic import op

revision = "0013_lists_newest_first"
down_revision = "0012_refund_cost_returned"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_payments_merchant_created", "payments", ["merchant_id", "created_at", "id"])
    op.create_index("ix_orders_merchant_created", "orders", ["merchant_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_orders_merchant_created", table_name="orders")
    op.drop_index("ix_payments_merchant_created", table_name="payments")
