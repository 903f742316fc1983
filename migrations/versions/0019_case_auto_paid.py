"""A reconciliation case may be resolved ``auto_paid``.

Why: a ``missing_in_statement`` case says the channel has not shown a line of ours. When a bank statement
imported later pays that line, the import now accepts the case (``reconciliation.cases.settle_paid``) and
records why under its own resolution, as ``auto_timing`` does for a timing case whose line arrived.
The check constraint on ``recon_cases.resolution`` gains the value; SQLite rebuilds the table for it.

Revision ID: 0019_case_auto_paid
Revises: 0018_webhook_events_mode
Create Date: 2026-11-25
"""

from alembic import op

from clearhouse.kit.models import sql_list

revision = "0019_case_auto_paid"
down_revision = "0018_webhook_events_mode"
branch_labels = None
depends_on = None

BEFORE = ("accept", "adjust", "write_off", "auto_timing", "rule")
AFTER = (*BEFORE, "auto_paid")


def _allow(resolutions: tuple[str, ...]) -> None:
    with op.batch_alter_table("recon_cases") as batch:
        batch.drop_constraint(op.f("ck_recon_cases_resolution"), type_="check")
        batch.create_check_constraint(op.f("ck_recon_cases_resolution"),
                                      f"resolution IS NULL OR resolution IN ({sql_list(resolutions)})")


def upgrade() -> None:
    _allow(AFTER)


def downgrade() -> None:
    op.execute("UPDATE recon_cases SET resolution = 'accept' WHERE resolution = 'auto_paid'")
    _allow(BEFORE)
