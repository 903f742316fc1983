"""Card-code orders: products, their encrypted codes, orders and their saga steps.

Revision ID: 0009_orders
Revises: 0008_routing
Create Date: 2026-11-23
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0009_orders"
down_revision = "0008_routing"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
