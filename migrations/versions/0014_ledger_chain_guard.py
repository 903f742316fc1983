"""The ledger's chain head only moves forward and is never removed, as the audit trail's is;
and on SQLite neither chain head nor an audit event can be replaced by an INSERT.

Why: ``ledger_chain`` holds the head of the journal's hash chain (its last seq and hash).
Until now nothing guarded it: anyone with the application's role could delete the row,
or set it back to an earlier entry and so hide the entries after it from a reader that
trusts the head. The ledger's writers advance it by one or more entries per commit, so
the guard refuses a DELETE, a TRUNCATE, a change of id, a move backwards, and a new hash
at the same seq; and a second row.

On SQLite, ``INSERT OR REPLACE`` deletes the rows it conflicts with without firing their
DELETE triggers (unless a connection turns on ``recursive_triggers``) and fires no UPDATE
trigger: through it anyone with the database file could move ``audit_chain`` back and
delete the newest audit events, which verify then could not see. A BEFORE INSERT trigger
fires before the conflict is resolved, so the chain heads refuse any INSERT while their
row exists, and ``audit_events`` refuses an INSERT whose seq or id is taken. The ledger's
own rows are left to verify: with the head guarded, a replaced or removed entry breaks the
chain or the head (and the writers' speed is not paid for a check verify already makes).

Revision ID: 0014_ledger_chain_guard
Revises: 0013_lists_newest_first
Create Date: 2026-11-25
"""

from alembic import op

revision = "0014_ledger_chain_guard"
down_revision = "0013_lists_newest_first"
branch_labels = None
depends_on = None

SQLITE_TRIGGERS = ("ledger_chain_no_delete", "ledger_chain_forward", "ledger_chain_one_row", "audit_chain_one_row",
                   "audit_events_no_replace")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION ledger_chain_guard() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'DELETE' THEN
                    RAISE EXCEPTION 'the ledger chain head is never deleted'
                        USING ERRCODE = 'restrict_violation';
                END IF;
                IF NEW.id <> OLD.id OR NEW.seq < OLD.seq OR (NEW.seq = OLD.seq AND NEW.hash <> OLD.hash) THEN
                    RAISE EXCEPTION 'the ledger chain head only moves forward'
                        USING ERRCODE = 'restrict_violation';
                END IF;
                RETURN NEW;
            END $$
            """
        )
        op.execute(
            """
            CREATE FUNCTION ledger_chain_one_row() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF EXISTS (SELECT 1 FROM ledger_chain) THEN
                    RAISE EXCEPTION 'the ledger chain has one head: INSERT refused'
                        USING ERRCODE = 'restrict_violation';
                END IF;
                RETURN NEW;
            END $$
            """
        )
        op.execute(
            "CREATE TRIGGER ledger_chain_guard BEFORE UPDATE OR DELETE ON ledger_chain "
            "FOR EACH ROW EXECUTE FUNCTION ledger_chain_guard()"
        )
        op.execute(
            "CREATE TRIGGER ledger_chain_one_row BEFORE INSERT ON ledger_chain "
            "FOR EACH ROW EXECUTE FUNCTION ledger_chain_one_row()"
        )
        op.execute(
            """
            CREATE FUNCTION audit_chain_one_row() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF EXISTS (SELECT 1 FROM audit_chain) THEN
                    RAISE EXCEPTION 'the audit chain has one head: INSERT refused'
                        USING ERRCODE = 'restrict_violation';
                END IF;
                RETURN NEW;
            END $$
            """
        )
        op.execute(
            "CREATE TRIGGER audit_chain_one_row BEFORE INSERT ON audit_chain "
            "FOR EACH ROW EXECUTE FUNCTION audit_chain_one_row()"
        )
        op.execute(
            "CREATE TRIGGER ledger_chain_no_truncate BEFORE TRUNCATE ON ledger_chain "
            "FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()"
        )
    else:
        op.execute(
            "CREATE TRIGGER ledger_chain_no_delete BEFORE DELETE ON ledger_chain "
            "BEGIN SELECT RAISE(ABORT, 'the ledger chain head is never deleted'); END"
        )
        op.execute(
            "CREATE TRIGGER ledger_chain_forward BEFORE UPDATE ON ledger_chain "
            "WHEN NEW.id IS NOT OLD.id OR NEW.seq < OLD.seq OR (NEW.seq = OLD.seq AND NEW.hash IS NOT OLD.hash) "
            "BEGIN SELECT RAISE(ABORT, 'the ledger chain head only moves forward'); END"
        )
        op.execute(
            "CREATE TRIGGER ledger_chain_one_row BEFORE INSERT ON ledger_chain "
            "WHEN EXISTS (SELECT 1 FROM ledger_chain) "
            "BEGIN SELECT RAISE(ABORT, 'the ledger chain has one head'); END"
        )
        op.execute(
            "CREATE TRIGGER audit_chain_one_row BEFORE INSERT ON audit_chain "
            "WHEN EXISTS (SELECT 1 FROM audit_chain) "
            "BEGIN SELECT RAISE(ABORT, 'the audit chain has one head'); END"
        )
        op.execute(
            "CREATE TRIGGER audit_events_no_replace BEFORE INSERT ON audit_events "
            "WHEN EXISTS (SELECT 1 FROM audit_events WHERE seq = NEW.seq OR id = NEW.id) "
            "BEGIN SELECT RAISE(ABORT, 'audit events are append-only: INSERT over an event refused'); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for trigger in ("ledger_chain_guard", "ledger_chain_one_row", "ledger_chain_no_truncate"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON ledger_chain")
        op.execute("DROP TRIGGER IF EXISTS audit_chain_one_row ON audit_chain")
        op.execute("DROP FUNCTION IF EXISTS audit_chain_one_row()")
        op.execute("DROP FUNCTION IF EXISTS ledger_chain_one_row()")
        op.execute("DROP FUNCTION IF EXISTS ledger_chain_guard()")
    else:
        for trigger in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
