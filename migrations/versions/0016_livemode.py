"""Test and live: every merchant object remembers the mode of the key that made it.

Why: a test key is made at once, a live key only after a second person approves it; yet
until now both reached the same objects. A test key could refund a live payment, charge a
card vaulted with a live key, pay from a live customer's wallet, sell a live product's
codes, change the routing of live payments, and register a webhook endpoint that received
every live event (card last four digits, customers, amounts). Each object now carries
``livemode`` (false: made with a test key), and a key sees and touches only objects of its
own mode (identity.md, "Test and live").

Rows made before this revision take the mode of the key that made them, as far as the
database shows it (``_backfill``): a routing rule its ``created_by``; a payment the ``by`` of
its ``created`` event; a webhook endpoint, product, card or bank account its audit event's
actor; a refund its payment's; an order its product's; a wallet or card the test payments
that used it; a webhook event the object it reports. Left live is only what no test key can
be shown to have made. Live is not the safe side for everything: an endpoint registered with
a test key and left live would receive live events, so endpoints and rules are the ones that
must be found. A customer may now have a test wallet and a live wallet in one currency, so
the wallets' uniqueness includes the mode. Deliveries follow their event.

The downgrade merges the modes again; it refuses (and changes nothing) while a customer has
a test and a live wallet in one currency, which the old uniqueness cannot hold.

Revision ID: 0016_livemode
Revises: 0015_statement_identity
Create Date: 2026-11-25
"""

import json

import sqlalchemy as sa
from alembic import op
from sqlalchemy.engine import Connection

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
    _backfill(op.get_bind())
    with op.batch_alter_table("wallets") as batch:
        batch.drop_constraint("uq_wallets_customer", type_="unique")
        batch.create_unique_constraint("uq_wallets_customer", ["merchant_id", "livemode", "customer_id", "currency"])


def _test(connection: Connection, table: str, ids: set[str]) -> None:
    """Mark these rows of ``table`` as made in test mode."""
    chunk = sorted(ids)
    for start in range(0, len(chunk), 500):
        connection.execute(sa.text(f"UPDATE {table} SET livemode = :no WHERE id IN :ids")  # noqa: S608 - our names
                           .bindparams(sa.bindparam("ids", expanding=True)),
                           {"no": False, "ids": chunk[start:start + 500]})


def _column(connection: Connection, sql: str, **params: object) -> set[str]:
    return {row[0] for row in connection.execute(sa.text(sql), params) if row[0] is not None}


def _backfill(connection: Connection) -> None:
    test_keys = _column(connection, "SELECT id FROM api_keys WHERE mode = 'test'")
    if not test_keys:
        return

    def made_by_test_key(action: str) -> set[str]:
        return {row.object_id for row in connection.execute(sa.text(
            "SELECT object_id, actor_id FROM audit_events WHERE action = :action"), {"action": action})
            if row.actor_id in test_keys}

    _test(connection, "routing_rules", {row.id for row in connection.execute(sa.text(
        "SELECT id, created_by FROM routing_rules WHERE merchant_id IS NOT NULL")) if row.created_by in test_keys})
    _test(connection, "webhook_endpoints", made_by_test_key("webhook_endpoint.create"))
    products = made_by_test_key("orders.product.create")
    _test(connection, "products", products)
    payments = {row.payment_id for row in connection.execute(sa.text(
        "SELECT payment_id, detail_json FROM payment_events WHERE type = 'created'"))
        if json.loads(row.detail_json or "{}").get("by") in test_keys}
    _test(connection, "payments", payments)
    refunds = {row.id for row in connection.execute(sa.text("SELECT id, payment_id FROM refunds"))
               if row.payment_id in payments}
    _test(connection, "refunds", refunds)
    orders = {row.id for row in connection.execute(sa.text("SELECT id, product_id FROM orders"))
              if row.product_id in products}
    _test(connection, "orders", orders)
    used = connection.execute(sa.text("SELECT id, card_id, wallet_id FROM payments")).all()
    _test(connection, "vault_cards", made_by_test_key("vault.card.create")
          | {row.card_id for row in used if row.id in payments and row.card_id})
    _test(connection, "vault_bank_accounts", made_by_test_key("vault.bank_account.create"))
    _test(connection, "wallets", {row.wallet_id for row in used if row.id in payments and row.wallet_id})
    reported = payments | refunds | orders
    _test(connection, "webhook_events", {row.id for row in connection.execute(sa.text(
        "SELECT id, payload_json FROM webhook_events")) if json.loads(row.payload_json).get("id") in reported})


def downgrade() -> None:
    both = op.get_bind().execute(sa.text(
        "SELECT merchant_id, customer_id, currency FROM wallets GROUP BY merchant_id, customer_id, currency "
        "HAVING COUNT(*) > 1")).first()
    if both is not None:
        raise RuntimeError(f"customer {both.customer_id} of merchant {both.merchant_id} has a test and a live "
                           f"{both.currency} wallet; before 0016 a customer had one wallet per currency. "
                           "Nothing was changed.")
    with op.batch_alter_table("wallets") as batch:
        batch.drop_constraint("uq_wallets_customer", type_="unique")
        batch.create_unique_constraint("uq_wallets_customer", ["merchant_id", "customer_id", "currency"])
    for table in reversed(TABLES):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("livemode")
