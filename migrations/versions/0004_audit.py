"""The audit trail (filled by the audit work).

Revision ID: 0004_audit
Revises: 0003_identity
Create Date: 2026-11-23
"""

revision = "0004_audit"
down_revision = "0003_identity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
