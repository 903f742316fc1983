"""Refunds remember what the channel gives back of its fee (the QR wallets return their rate).

Revision ID: 0012_refund_cost_returned
Revises: 0011_ledger_v2
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0012_refund_cost_returned"
down_revision = "0011_ledger_v2"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("refunds") as batch:
        batch.add_column(sa.Column("channel_cost_returned", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("refunds") as batch:
        batch.drop_column("channel_cost_returned")
