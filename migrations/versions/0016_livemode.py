"""Test and live: every merchant object remembers the mode of the key that made it.

Why: a test key is made at once, a live key only after a second person approves it; yet
until now both reached the same objects. A test key could refund a live payment, charge a
card vaulted with a live key, pay from a live customer's wallet, sell a live product's
codes, change the routing of live payments, and register a webhook endpoint that received
every live event (card last four digits, customers, amounts). Each object now carries
``livemode`` (false: made with a test key), and a key sees and touches only objects of its
own mode (identity.md, "Test and live").

Rows made before this revision take the mode of the key that made them, as far as the
database shows it (``_backfill``): a routing rule its ``created_by``; a webhook endpoint,
product, bank account or card vaulted on its own its audit event's actor; an order its
product's; a payment its order's, else its wallet's, else the ``by`` of its ``created`` event;
a wallet, and a card vaulted inside a payment, the mode of the first payment that used it; a
refund its payment's; a webhook event the object it reports. Left live is only what no test
key can be shown to have made (a wallet never paid with, say). Live is not the safe side for
everything: an endpoint registered with a test key and left live would receive live events,
so endpoints and rules are the ones that must be found. A customer may now have a test
wallet and a live wallet in one currency, so the wallets' uniqueness includes the mode.
Deliveries follow their event.

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
    # A key lists its merchant's payments and orders of its mode, newest first: (merchant, mode, time) in place
    # of (merchant, id), which no query uses since the lists went newest first (0013).
    for table in ("payments", "orders"):
        op.drop_index(f"ix_{table}_merchant", table_name=table)
        op.create_index(f"ix_{table}_merchant_mode", table, ["merchant_id", "livemode", "created_at", "id"])
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

    def by_actor(action: str) -> dict[str, bool]:
        """Object id -> made by a test key, for every object with this audit action."""
        return {row.object_id: row.actor_id in test_keys for row in connection.execute(sa.text(
            "SELECT object_id, actor_id FROM audit_events WHERE action = :action"), {"action": action})}

    _test(connection, "routing_rules", {row.id for row in connection.execute(sa.text(
        "SELECT id, created_by FROM routing_rules WHERE merchant_id IS NOT NULL")) if row.created_by in test_keys})
    _test(connection, "webhook_endpoints", {i for i, test in by_actor("webhook_endpoint.create").items() if test})
    _test(connection, "vault_bank_accounts", {i for i, test in by_actor("vault.bank_account.create").items() if test})
    products = {i for i, test in by_actor("orders.product.create").items() if test}
    _test(connection, "products", products)
    orders = {row.id: row.product_id in products for row in connection.execute(sa.text(
        "SELECT id, product_id FROM orders"))}
    _test(connection, "orders", {i for i, test in orders.items() if test})

    # A payment: its order's mode, else its wallet's (the mode of the wallet's first payment), else its key's.
    by_key = {row.payment_id for row in connection.execute(sa.text(
        "SELECT payment_id, detail_json FROM payment_events WHERE type = 'created'"))
        if json.loads(row.detail_json or "{}").get("by") in test_keys}
    of_order = {row.payment_id: orders[row.id] for row in connection.execute(sa.text(
        "SELECT id, payment_id FROM orders WHERE payment_id IS NOT NULL"))}
    rows = connection.execute(sa.text("SELECT id, card_id, wallet_id FROM payments ORDER BY created_at, id")).all()
    first_mode = {row.id: of_order.get(row.id, row.id in by_key) for row in rows}
    wallets: dict[str, bool] = {}
    cards: dict[str, bool] = {}
    for row in rows:
        if row.wallet_id is not None:
            wallets.setdefault(row.wallet_id, first_mode[row.id])
        if row.card_id is not None:
            cards.setdefault(row.card_id, first_mode[row.id])  # a card vaulted in its first payment
    payments = {row.id for row in rows
                if of_order.get(row.id, wallets.get(row.wallet_id, row.id in by_key) if row.wallet_id else
                                row.id in by_key)}
    _test(connection, "payments", payments)
    _test(connection, "wallets", {i for i, test in wallets.items() if test})
    cards.update(by_actor("vault.card.create"))  # a card vaulted on its own: its maker's mode
    _test(connection, "vault_cards", {i for i, test in cards.items() if test})
    refunds = {row.id for row in connection.execute(sa.text("SELECT id, payment_id FROM refunds"))
               if row.payment_id in payments}
    _test(connection, "refunds", refunds)
    reported = payments | refunds | {i for i, test in orders.items() if test}
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
    for table in ("payments", "orders"):
        op.drop_index(f"ix_{table}_merchant_mode", table_name=table)
        op.create_index(f"ix_{table}_merchant", table, ["merchant_id", "id"])
    with op.batch_alter_table("wallets") as batch:
        batch.drop_constraint("uq_wallets_customer", type_="unique")
        batch.create_unique_constraint("uq_wallets_customer", ["merchant_id", "customer_id", "currency"])
    for table in reversed(TABLES):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("livemode")
