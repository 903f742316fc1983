"""Reconciliation: per-channel rules, imported statements, runs, cases and their history.

Revision ID: 0010_reconciliation
Revises: 0009_orders
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from clearhouse.kit.models import sql_list
from clearhouse.kit.types import UTCDateTime
from clearhouse.reconciliation.models import CASE_STATES, DISCREPANCIES

RESOLUTIONS = ("accept", "adjust", "write_off", "auto_timing", "rule")
"""The resolutions of this revision (0019 adds ``auto_paid``): a migration describes its own schema, not today's."""

revision = "0010_reconciliation"
down_revision = "0009_orders"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recon_rules",
        sa.Column("channel", sa.String(40), nullable=False),
        sa.Column("rules_json", sa.Text(), nullable=False),
        sa.Column("mapping_json", sa.Text(), nullable=True),
        sa.Column("updated_by", sa.String(80), nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("channel", name=op.f("pk_recon_rules")),
    )
    op.create_table(
        "recon_statements",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(40), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("mapping", sa.String(64), nullable=True),
        sa.Column("file_name", sa.String(255), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("line_count", sa.Integer(), nullable=False),
        sa.Column("statement_date", sa.Date(), nullable=False),
        sa.Column("first_day", sa.Date(), nullable=True),
        sa.Column("last_day", sa.Date(), nullable=True),
        sa.Column("account", sa.String(64), nullable=True),
        sa.Column("currency", sa.String(3), nullable=True),
        sa.Column("opening_balance", sa.BigInteger(), nullable=True),
        sa.Column("closing_balance", sa.BigInteger(), nullable=True),
        sa.Column("imported_by", sa.String(80), nullable=False),
        sa.Column("imported_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recon_statements")),
        sa.UniqueConstraint("sha256", name=op.f("uq_recon_statements_sha256")),
    )
    op.create_table(
        "reconciliations",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("statement_id", sa.String(40), nullable=False),
        sa.Column("channel", sa.String(40), nullable=False),
        sa.Column("statement_date", sa.Date(), nullable=False),
        sa.Column("rules_json", sa.Text(), nullable=False),
        sa.Column("classes_json", sa.Text(), nullable=False),
        sa.Column("statement_lines", sa.Integer(), nullable=False),
        sa.Column("internal_lines", sa.Integer(), nullable=False),
        sa.Column("case_count", sa.Integer(), nullable=False),
        sa.Column("clearing_json", sa.Text(), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(80), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.ForeignKeyConstraint(["statement_id"], ["recon_statements.id"],
                                name=op.f("fk_reconciliations_statement_id_recon_statements")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliations")),
        sa.UniqueConstraint("statement_id", name=op.f("uq_reconciliations_statement_id")),
    )
    op.create_index("ix_reconciliations_channel_day", "reconciliations", ["channel", "statement_date"])
    op.create_table(
        "recon_cases",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("reconciliation_id", sa.String(40), nullable=False),
        sa.Column("channel", sa.String(40), nullable=False),
        sa.Column("class", sa.String(24), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(80), nullable=True),
        sa.Column("our_id", sa.String(64), nullable=True),
        sa.Column("our_ref", sa.String(128), nullable=True),
        sa.Column("channel_ref", sa.String(128), nullable=True),
        sa.Column("line_no", sa.BigInteger(), nullable=True),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("ours_amount", sa.BigInteger(), nullable=True),
        sa.Column("theirs_amount", sa.BigInteger(), nullable=True),
        sa.Column("ours_fee", sa.BigInteger(), nullable=True),
        sa.Column("theirs_fee", sa.BigInteger(), nullable=True),
        sa.Column("ours_status", sa.String(16), nullable=True),
        sa.Column("theirs_status", sa.String(16), nullable=True),
        sa.Column("ours_booked_on", sa.Date(), nullable=True),
        sa.Column("theirs_booked_on", sa.Date(), nullable=True),
        sa.Column("delta", sa.BigInteger(), nullable=False),
        sa.Column("detail", sa.String(500), nullable=False),
        sa.Column("resolution", sa.String(16), nullable=True),
        sa.Column("resolution_reason", sa.String(500), nullable=True),
        sa.Column("ledger_entry_id", sa.String(64), nullable=True),
        sa.Column("approval_id", sa.String(40), nullable=True),
        sa.Column("resolved_by", sa.String(80), nullable=True),
        sa.Column("resolved_at", UTCDateTime, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.CheckConstraint(f"class IN ({sql_list(DISCREPANCIES)})", name=op.f("ck_recon_cases_class")),
        sa.CheckConstraint(f"state IN ({sql_list(CASE_STATES)})", name=op.f("ck_recon_cases_state")),
        sa.CheckConstraint(f"resolution IS NULL OR resolution IN ({sql_list(RESOLUTIONS)})",
                           name=op.f("ck_recon_cases_resolution")),
        sa.ForeignKeyConstraint(["reconciliation_id"], ["reconciliations.id"],
                                name=op.f("fk_recon_cases_reconciliation_id_reconciliations")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recon_cases")),
    )
    op.create_index("ix_recon_cases_reconciliation", "recon_cases", ["reconciliation_id", "class", "id"])
    op.create_index("ix_recon_cases_state", "recon_cases", ["state", "channel", "id"])
    op.create_index("ix_recon_cases_our_id", "recon_cases", ["our_id", "state"])
    op.create_table(
        "recon_case_events",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("case_id", sa.String(40), nullable=False),
        sa.Column("type", sa.String(24), nullable=False),
        sa.Column("actor", sa.String(80), nullable=False),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("detail_json", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["recon_cases.id"], name=op.f("fk_recon_case_events_case_id_recon_cases")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recon_case_events")),
    )
    op.create_index("ix_recon_case_events_case", "recon_case_events", ["case_id", "id"])


def downgrade() -> None:
    op.drop_table("recon_case_events")
    op.drop_table("recon_cases")
    op.drop_table("reconciliations")
    op.drop_table("recon_statements")
    op.drop_table("recon_rules")
