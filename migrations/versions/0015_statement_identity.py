"""A bank statement is imported once: the database refuses a second import of it, by its figures or by
the bank's own number of it.

Why: bank statements (MT940, camt.053) of a day add up (two accounts, two pages), so the same statement
imported twice counts its lines and its money in the clearing report's ``received`` twice. Until now only
a check in Python refused it (same account, currency, balances, days, line count and net per currency),
run before matching and again in the writing transaction: two imports of one statement running at the
same time could both pass it and both commit. And the bank's own identity of the statement (MT940
``:25:`` and ``:28C:``, camt.053 ``Acct/Id``, ``ElctrncSeqNb``/``LglSeqNb``/``Stmt/Id`` and ``StmtPgntn/PgNb``)
was neither kept nor compared, so a second statement under a number the bank had used already (a
correction issued again under it) was imported beside the first and counted too.

``recon_statements`` gains:

- ``fingerprint``: the SHA-256 of the check's figures in one canonical form
  (``models.statement_fingerprint``), for bank statements; unique where not null.
- ``bank_account``, ``bank_statement_number``, ``bank_statement_sequence``, ``bank_statement_closed_on``:
  the bank's identity of the file's (first) statement (``frames.BankStatementIdentity``); all four or
  none, null for channel statements; unique together where the number is not null. The closing day is
  part of it because banks start their statement numbers again each year (and some write the same
  number on every statement): the same number on another day is another statement.

Both are partial unique indexes (``WHERE ... IS NOT NULL``), which SQLite and PostgreSQL both have.

Rows already there: every bank statement's fingerprint is computed from what the row and its run kept
(the account, currency, balances, days and line count of the row, the net per currency of its run's
clearing figures, and the statement's day when it has no lines), oldest import first. A database may hold
the same statement twice, imported before the check existed: the earliest import keeps the fingerprint,
the later ones keep none (null), so the index can be made, nothing is deleted and those rows stay as they
were. The bank's numbers were never kept and are not in the row: the identity of earlier imports is left
null (the fingerprint still refuses their statements a second time).

Revision ID: 0015_statement_identity
Revises: 0014_ledger_chain_guard
Create Date: 2026-11-26
"""

import json

import sqlalchemy as sa
from alembic import op

from clearhouse.reconciliation.models import BANK_STATEMENT_INDEX, FINGERPRINT_INDEX, statement_fingerprint

revision = "0015_statement_identity"
down_revision = "0014_ledger_chain_guard"
branch_labels = None
depends_on = None

BANK_FORMATS = ("mt940", "camt053")
IDENTITY = ("bank_account", "bank_statement_number", "bank_statement_sequence", "bank_statement_closed_on")


def upgrade() -> None:
    op.add_column("recon_statements", sa.Column("fingerprint", sa.String(64), nullable=True))
    op.add_column("recon_statements", sa.Column("bank_account", sa.String(64), nullable=True))
    op.add_column("recon_statements", sa.Column("bank_statement_number", sa.String(35), nullable=True))
    op.add_column("recon_statements", sa.Column("bank_statement_sequence", sa.String(16), nullable=True))
    op.add_column("recon_statements", sa.Column("bank_statement_closed_on", sa.Date(), nullable=True))
    _backfill_fingerprints()
    where = sa.text("fingerprint IS NOT NULL")
    op.create_index(FINGERPRINT_INDEX, "recon_statements", ["fingerprint"], unique=True,
                    sqlite_where=where, postgresql_where=where)
    where = sa.text("bank_statement_number IS NOT NULL")
    op.create_index(BANK_STATEMENT_INDEX, "recon_statements", list(IDENTITY), unique=True,
                    sqlite_where=where, postgresql_where=where)


def _backfill_fingerprints() -> None:
    connection = op.get_bind()
    statements = sa.table(
        "recon_statements", sa.column("id"), sa.column("format"), sa.column("statement_date", sa.Date()),
        sa.column("line_count"), sa.column("account"), sa.column("currency"), sa.column("opening_balance"),
        sa.column("closing_balance"), sa.column("first_day", sa.Date()), sa.column("last_day", sa.Date()),
        sa.column("fingerprint"))
    runs = sa.table("reconciliations", sa.column("statement_id"), sa.column("clearing_json"),
                    sa.column("created_at"), sa.column("id"))
    rows = connection.execute(
        sa.select(statements, runs.c.clearing_json)
        .join(runs, runs.c.statement_id == statements.c.id)
        .where(statements.c.format.in_(BANK_FORMATS))
        .order_by(runs.c.created_at, runs.c.id)).mappings().all()
    taken: set[str] = set()
    for row in rows:
        clearing = json.loads(row["clearing_json"])
        fingerprint = statement_fingerprint(
            account=row["account"], currency=row["currency"], opening_balance=row["opening_balance"],
            closing_balance=row["closing_balance"], first_day=row["first_day"], last_day=row["last_day"],
            lines=row["line_count"], net={code: figures.get("reported", 0) for code, figures in clearing.items()},
            statement_date=row["statement_date"])
        if fingerprint in taken:  # imported twice before the check: the earliest import keeps it
            continue
        taken.add(fingerprint)
        connection.execute(sa.update(statements).where(statements.c.id == row["id"])
                           .values(fingerprint=fingerprint))


def downgrade() -> None:
    op.drop_index(BANK_STATEMENT_INDEX, table_name="recon_statements")
    op.drop_index(FINGERPRINT_INDEX, table_name="recon_statements")
    # ALTER TABLE ... DROP COLUMN, which SQLite has since 3.35: no copy of the table (batch mode) is needed.
    for column in ("bank_statement_closed_on", "bank_statement_sequence", "bank_statement_number", "bank_account",
                   "fingerprint"):
        op.drop_column("recon_statements", column)
