"""The audit trail: hash-chained events, the chain head, append-only triggers.

Revision ID: 0004_audit
Revises: 0003_identity
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from clearhouse.kit.types import UTCDateTime

revision = "0004_audit"
down_revision = "0003_identity"
branch_labels = None
depends_on = None

# On SQLite an INTEGER PRIMARY KEY is the rowid itself: no second index to maintain.
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_chain",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.CheckConstraint("id = 1", name="single_row"),
    )
    op.execute("INSERT INTO audit_chain (id, seq, hash) VALUES (1, 0, '" + "0" * 64 + "')")

    op.create_table(
        "audit_events",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=False),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("occurred_at", UTCDateTime, nullable=False),
        sa.Column("actor_type", sa.String(16), nullable=False),
        sa.Column("actor_id", sa.String(64), nullable=False),
        sa.Column("actor_role", sa.String(32)),
        sa.Column("merchant_id", sa.String(40)),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("object_type", sa.String(64), nullable=False),
        sa.Column("object_id", sa.String(128), nullable=False),
        sa.Column("source_ip", sa.String(64)),
        sa.Column("request_id", sa.String(128)),
        sa.Column("changes_json", sa.Text, nullable=False, server_default="{}"),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.CheckConstraint("seq >= 1", name="seq_positive"),
        sa.CheckConstraint("actor_type IN ('api_key', 'user', 'system')", name="actor_type"),
    )
    # Every filter of GET /v1/audit/events pages in chain order: (filter column, seq).
    op.create_index("ix_audit_events_actor_seq", "audit_events", ["actor_id", "seq"])
    op.create_index("ix_audit_events_object_seq", "audit_events", ["object_id", "seq"])
    op.create_index("ix_audit_events_merchant_seq", "audit_events", ["merchant_id", "seq"])
    op.create_index("ix_audit_events_action_seq", "audit_events", ["action", "seq"])

    # Append-only, enforced by the database as for the ledger (0001_ledger): no code path,
    # and nobody at a SQL prompt through the application's role, rewrites the trail. The
    # chain head only moves forward and is never removed.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'audit events are append-only: % on % refused', TG_OP, TG_TABLE_NAME
                    USING ERRCODE = 'restrict_violation';
            END $$
            """
        )
        op.execute(
            "CREATE TRIGGER audit_events_immutable BEFORE UPDATE OR DELETE ON audit_events "
            "FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()"
        )
        op.execute(
            "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change()"
        )
        op.execute(
            """
            CREATE FUNCTION audit_chain_guard() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'DELETE' OR NEW.id <> OLD.id OR NEW.seq <= OLD.seq THEN
                    RAISE EXCEPTION 'the audit chain head only moves forward: % refused', TG_OP
                        USING ERRCODE = 'restrict_violation';
                END IF;
                RETURN NEW;
            END $$
            """
        )
        op.execute(
            "CREATE TRIGGER audit_chain_guard BEFORE UPDATE OR DELETE ON audit_chain "
            "FOR EACH ROW EXECUTE FUNCTION audit_chain_guard()"
        )
        op.execute(
            "CREATE TRIGGER audit_chain_no_truncate BEFORE TRUNCATE ON audit_chain "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change()"
        )
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_events_no_{action.lower()} BEFORE {action} ON audit_events "
                f"BEGIN SELECT RAISE(ABORT, 'audit events are append-only: {action} on audit_events refused'); END"
            )
        op.execute(
            "CREATE TRIGGER audit_chain_no_delete BEFORE DELETE ON audit_chain "
            "BEGIN SELECT RAISE(ABORT, 'the audit chain head is never deleted'); END"
        )
        op.execute(
            "CREATE TRIGGER audit_chain_forward BEFORE UPDATE ON audit_chain "
            "WHEN NEW.id IS NOT OLD.id OR NEW.seq <= OLD.seq "
            "BEGIN SELECT RAISE(ABORT, 'the audit chain head only moves forward'); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_events_immutable ON audit_events")
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events")
        op.execute("DROP TRIGGER IF EXISTS audit_chain_guard ON audit_chain")
        op.execute("DROP TRIGGER IF EXISTS audit_chain_no_truncate ON audit_chain")
        op.execute("DROP FUNCTION IF EXISTS audit_chain_guard()")
        op.execute("DROP FUNCTION IF EXISTS audit_refuse_change()")
    op.drop_index("ix_audit_events_action_seq", table_name="audit_events")
    op.drop_index("ix_audit_events_merchant_seq", table_name="audit_events")
    op.drop_index("ix_audit_events_object_seq", table_name="audit_events")
    op.drop_index("ix_audit_events_actor_seq", table_name="audit_events")
    op.drop_table("audit_events")
    op.drop_table("audit_chain")
