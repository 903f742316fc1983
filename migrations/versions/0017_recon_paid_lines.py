"""Reconciliation remembers which of our lines a bank statement paid, one row per line.

Why: a bank statement's lines that pair with our payments post the channel's payout (recipe 4:
Dr ``bank:<account>``, Cr ``channel_clearing:C``). Matched pairs are not stored one by one, so
a second bank statement carrying a line already paid (another page of the same day, the next
day's statement, a settlement credit for the whole day) paired it again and posted its money a
second time, taking ``channel_clearing`` below zero. With this table a line is paid once: the
next statement's line that names it is a ``duplicate`` (a case to resolve), and two imports
racing to pay it meet at the primary key.

Bank statements imported before this revision posted no payouts (recipe 4 came with 0016's
release), so there is nothing to fill in.

Revision ID: 0017_recon_paid_lines
Revises: 0016_livemode
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from clearhouse.kit.types import UTCDateTime

revision = "0017_recon_paid_lines"
down_revision = "0016_livemode"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recon_paid_lines",
        sa.Column("our_id", sa.String(64), primary_key=True),
        sa.Column("reconciliation_id", sa.String(40), sa.ForeignKey("reconciliations.id"), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("recon_paid_lines")
