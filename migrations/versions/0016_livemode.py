"""Test and live: every merchant object remembers the mode of the key that made it.

Why: a test key is made at once, a live key only after a second person approves it; yet
until now both reached the same objects. A test key could refund a live payment, charge a
card vaulted with a live key, pay from a live customer's wallet, sell a live product's
codes, change the routing of live payments, and register a webhook endpoint that received
every live event (card last four digits, customers, amounts). Each object now carries
``livemode`` (false: made with a test key), and a key sees and touches only objects of its
own mode (identity.md, "Test and live").

Rows made before this revision are live (``server_default`` true): no test key reaches
what it could not be shown to have made, which is the safe side. A customer may now have
a test wallet and a live wallet in one currency, so the wallets' uniqueness includes the
mode. Refunds take their payment's mode and webhook events their cause's (deliveries
follow their event).

Revision ID: 0016_livemode
Revises: 0015_statement_identity
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0016_livemode"
down_revision = "0015_statement_identity"
branch_labels = None
depends_on = None

TABLES = ("payments", "refunds", "wallets", "products", "orders", "webhook_endpoints", "webhook_events",
          "vault_cards", "vault_bank_accounts", "routing_rules")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("livemode", sa.Boolean(), nullable=False, server_default=sa.true()))
    with op.batch_alter_table("wallets") as batch:
        batch.drop_constraint("uq_wallets_customer", type_="unique")
        batch.create_unique_constraint("uq_wallets_customer", ["merchant_id", "livemode", "customer_id", "currency"])


def downgrade() -> None:
    with op.batch_alter_table("wallets") as batch:
        batch.drop_constraint("uq_wallets_customer", type_="unique")
        batch.create_unique_constraint("uq_wallets_customer", ["merchant_id", "customer_id", "currency"])
    for table in reversed(TABLES):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("livemode")
