"""The card and bank account vault (filled by the vault work).

Revision ID: 0005_vault
Revises: 0004_audit
Create Date: 2026-11-23
"""

revision = "0005_vault"
down_revision = "0004_audit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
