"""Routing: rules that choose candidate channels per merchant and platform-wide.

Revision ID: 0008_routing
Revises: 0007_webhooks
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from clearhouse.channels.models import STRATEGIES
from clearhouse.channels.protocol import METHODS
from clearhouse.kit.models import sql_list
from clearhouse.kit.types import UTCDateTime

revision = "0008_routing"
down_revision = "0007_webhooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "routing_rules",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("merchant_id", sa.String(40), sa.ForeignKey("merchants.id")),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("method", sa.String(16)),
        sa.Column("currency", sa.String(3)),
        sa.Column("min_amount", sa.BigInteger),
        sa.Column("max_amount", sa.BigInteger),
        sa.Column("country", sa.String(2)),
        sa.Column("card_bin_prefix", sa.String(8)),
        sa.Column("channels_json", sa.Text, nullable=False),
        sa.Column("strategy", sa.String(16), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.CheckConstraint(f"method IS NULL OR method IN ({sql_list(METHODS)})", name="method"),
        sa.CheckConstraint(f"strategy IN ({sql_list(STRATEGIES)})", name="strategy"),
        sa.CheckConstraint("min_amount IS NULL OR min_amount >= 0", name="min_amount"),
        sa.CheckConstraint("min_amount IS NULL OR max_amount IS NULL OR min_amount <= max_amount",
                           name="amount_range"),
    )
    op.create_index("ix_routing_rules_owner", "routing_rules", ["merchant_id", "enabled", "priority"])


def downgrade() -> None:
    op.drop_table("routing_rules")
