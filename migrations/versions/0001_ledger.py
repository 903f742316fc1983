"""Ledger: accounts, hash chain head, journal entries, postings, immutability triggers.

Revision ID: 0001_ledger
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from clearhouse.kit.types import UTCDateTime

revision = "0001_ledger"
down_revision = None
branch_labels = None
depends_on = None

IMMUTABLE = ("ledger_transfers", "ledger_postings")
# On SQLite an INTEGER PRIMARY KEY is the rowid itself: no second index to maintain.
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "ledger_accounts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("code", sa.String(128), nullable=False),
        sa.Column("owner_id", sa.String(128)),
        sa.Column("metadata_json", sa.Text, nullable=False, server_default="{}"),
        sa.Column("debits_must_not_exceed_credits", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("credits_must_not_exceed_debits", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("overdraft_limit", sa.BigInteger),
        sa.Column("closed", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("debits_posted", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("credits_posted", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("debits_pending", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("credits_pending", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.CheckConstraint(
            "type IN ('asset', 'liability', 'equity', 'revenue', 'expense')", name="type"
        ),
        sa.CheckConstraint(
            "NOT (debits_must_not_exceed_credits AND credits_must_not_exceed_debits)",
            name="one_limit_flag",
        ),
        sa.CheckConstraint("overdraft_limit IS NULL OR overdraft_limit >= 0", name="overdraft"),
        sa.CheckConstraint(
            "debits_posted >= 0 AND credits_posted >= 0 AND debits_pending >= 0 AND credits_pending >= 0",
            name="balances_non_negative",
        ),
        sa.CheckConstraint("length(currency) = 3", name="currency_code"),
    )
    op.create_index("ix_ledger_accounts_owner", "ledger_accounts", ["owner_id"])

    op.create_table(
        "ledger_chain",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.CheckConstraint("id = 1", name="single_row"),
    )
    op.execute("INSERT INTO ledger_chain (id, seq, hash) VALUES (1, 0, '" + "0" * 64 + "')")

    op.create_table(
        "ledger_transfers",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=False),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("pending", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("pending_id", sa.String(64)),
        sa.Column("resolution", sa.String(8)),
        sa.Column("timeout_seconds", sa.Integer),
        sa.Column("timeout_at", UTCDateTime),
        sa.Column("code", sa.String(128)),
        sa.Column("reference", sa.String(256)),
        sa.Column("metadata_json", sa.Text, nullable=False, server_default="{}"),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.CheckConstraint("(pending_id IS NULL) = (resolution IS NULL)", name="resolution"),
        sa.CheckConstraint("resolution IS NULL OR resolution IN ('post', 'void')", name="resolution_kind"),
        sa.CheckConstraint("NOT (pending AND pending_id IS NOT NULL)", name="pending_not_resolution"),
        sa.CheckConstraint("timeout_seconds IS NULL OR timeout_seconds > 0", name="timeout"),
        sa.CheckConstraint("seq >= 1", name="seq_positive"),
    )
    op.create_index("ix_ledger_transfers_created_at", "ledger_transfers", ["created_at"])
    # Partial indexes: the many plain transfers pay nothing for the few pending ones.
    # At most one entry resolves a pending entry, so "post or void once" holds under any
    # concurrency.
    op.create_index(
        "uq_ledger_transfers_pending_id", "ledger_transfers", ["pending_id"], unique=True,
        sqlite_where=sa.text("pending_id IS NOT NULL"), postgresql_where=sa.text("pending_id IS NOT NULL"),
    )
    op.create_index(
        "ix_ledger_transfers_timeout_at", "ledger_transfers", ["timeout_at"],
        sqlite_where=sa.text("pending"), postgresql_where=sa.text("pending"),
    )

    op.create_table(
        "ledger_postings",
        # No foreign keys: they cost two lookups per posting (most of a bulk write on
        # PostgreSQL), and what they would guard is guarded otherwise: postings are written
        # only with their entry, in one statement pair, by code holding the account locks;
        # accounts can never be deleted (trigger below); and verify reports any posting
        # whose entry or account is missing.
        sa.Column("seq", SEQ, primary_key=True, autoincrement=False),
        sa.Column("idx", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("direction", sa.String(6), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.CheckConstraint("direction IN ('debit', 'credit')", name="direction"),
        sa.CheckConstraint("kind IN ('posted', 'pending', 'release')", name="kind"),
        sa.CheckConstraint("amount > 0", name="amount_positive"),
        sa.CheckConstraint("seq >= 1 AND idx >= 0", name="position"),
        # Postings are written and read by entry: cluster them on (seq, idx) on SQLite.
        sqlite_with_rowid=False,
    )
    op.create_index("ix_ledger_postings_account_seq", "ledger_postings", ["account_id", "seq"])

    # Posted rows are immutable: corrections are new reversing entries. The database
    # refuses UPDATE and DELETE itself, so no code path (or person with a SQL prompt
    # through the application's role) can rewrite history.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'ledger rows are immutable: % on % refused', TG_OP, TG_TABLE_NAME
                    USING ERRCODE = 'restrict_violation';
            END $$
            """
        )
        for table in IMMUTABLE:
            op.execute(
                f"CREATE TRIGGER {table}_immutable BEFORE UPDATE OR DELETE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()"
            )
        # Accounts: balances and the closed flag change; what postings rely on never does,
        # and an account is never deleted.
        op.execute(
            """
            CREATE FUNCTION ledger_account_guard() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'DELETE' OR NEW.id <> OLD.id OR NEW.type <> OLD.type
                        OR NEW.currency <> OLD.currency OR NEW.created_at <> OLD.created_at THEN
                    RAISE EXCEPTION 'ledger accounts keep id, type, currency and creation time: % refused', TG_OP
                        USING ERRCODE = 'restrict_violation';
                END IF;
                RETURN NEW;
            END $$
            """
        )
        op.execute(
            "CREATE TRIGGER ledger_accounts_guard BEFORE UPDATE OR DELETE ON ledger_accounts "
            "FOR EACH ROW EXECUTE FUNCTION ledger_account_guard()"
        )
        op.execute(
            "CREATE TRIGGER ledger_accounts_no_truncate BEFORE TRUNCATE ON ledger_accounts "
            "FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()"
        )
    else:
        op.execute(
            "CREATE TRIGGER ledger_accounts_no_delete BEFORE DELETE ON ledger_accounts "
            "BEGIN SELECT RAISE(ABORT, 'ledger accounts are never deleted'); END"
        )
        op.execute(
            "CREATE TRIGGER ledger_accounts_fixed_fields BEFORE UPDATE OF id, type, currency, created_at "
            "ON ledger_accounts WHEN NEW.id IS NOT OLD.id OR NEW.type IS NOT OLD.type "
            "OR NEW.currency IS NOT OLD.currency OR NEW.created_at IS NOT OLD.created_at "
            "BEGIN SELECT RAISE(ABORT, 'ledger accounts keep id, type, currency and creation time'); END"
        )
        for table in IMMUTABLE:
            for action in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, 'ledger rows are immutable: {action} on {table} refused'); END"
                )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in IMMUTABLE:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_immutable ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        op.execute("DROP TRIGGER IF EXISTS ledger_accounts_guard ON ledger_accounts")
        op.execute("DROP TRIGGER IF EXISTS ledger_accounts_no_truncate ON ledger_accounts")
        op.execute("DROP FUNCTION IF EXISTS ledger_account_guard()")
        op.execute("DROP FUNCTION IF EXISTS ledger_refuse_change()")
    op.drop_table("ledger_postings")
    op.drop_table("ledger_transfers")
    op.drop_table("ledger_chain")
    op.drop_table("ledger_accounts")
