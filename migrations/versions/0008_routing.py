"""Routing: rules that choose candidate channels per merchant and platform-wide.

Revision ID: 0008_routing
Revises: 0007_webhooks
Create Date: 2026-11-23
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0008_routing"
down_revision = "0007_webhooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
