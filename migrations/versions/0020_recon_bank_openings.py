"""Reconciliation takes up a bank account's balance once, and then keeps it continuous.

Why: a bank statement's lines moved ``bank:<account>`` (recipe 4), but its opening balance was never
posted, so the ledger's bank account stood at the bank's closing balance less the opening balance of the
first statement imported, and a statement missing between two imported ones went unnoticed. Now the first
bank statement of an account and currency posts its opening balance against ``opening_balances`` (equity),
an earlier statement imported later moves that back to its own opening balance, and every import says how
its opening balance continues what the ledger holds (a missing statement shows as a gap). This table
remembers where each account was taken up.

Accounts imported before this revision have no row: their next statement takes them up, posting the
difference between its opening balance and what the ledger holds.

Revision ID: 0020_recon_bank_openings
Revises: 0019_case_auto_paid
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from clearhouse.kit.types import UTCDateTime

revision = "0020_recon_bank_openings"
down_revision = "0019_case_auto_paid"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recon_bank_openings",
        sa.Column("account", sa.String(128), primary_key=True),
        sa.Column("currency", sa.String(3), primary_key=True),
        sa.Column("statement_id", sa.String(40), sa.ForeignKey("recon_statements.id"), nullable=False),
        sa.Column("opening_balance", sa.BigInteger(), nullable=False),
        sa.Column("opened_on", sa.Date(), nullable=True),
        sa.Column("entry_id", sa.String(64), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("recon_bank_openings")
