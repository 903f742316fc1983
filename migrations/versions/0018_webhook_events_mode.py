"""A merchant's webhook events of one mode are listed from their own index.

Why: since 0016 a test key lists only test events (and a live key only live ones), but the only
index by merchant was (merchant_id, id): a test key's list walked every live event of its
merchant to find the test ones, so a merchant with a busy live integration made its test
integration's event list slow. The new index leads with (merchant_id, livemode), as the
payments' and orders' lists do (0016). The old one stays: platform callers list a merchant's
events of both modes in id order.

Revision ID: 0018_webhook_events_mode
Revises: 0017_recon_paid_lines
Create Date: 2026-11-25
"""

from alembic import op

revision = "0018_webhook_events_mode"
down_revision = "0017_recon_paid_lines"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_webhook_events_merchant_mode", "webhook_events", ["merchant_id", "livemode", "id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_events_merchant_mode", table_name="webhook_events")
