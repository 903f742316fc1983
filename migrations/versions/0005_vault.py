"""Data keys for envelope encryption (kit/crypto.py) and the card and bank account vault.

Revision ID: 0005_vault
Revises: 0004_audit
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from clearhouse.kit.models import sql_list
from clearhouse.kit.types import UTCDateTime
from clearhouse.vault.models import ACCOUNT_KINDS, BRANDS

revision = "0005_vault"
down_revision = "0004_audit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "data_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("master_key_id", sa.String(64), nullable=False),
        sa.Column("wrapped_key", sa.Text, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("purpose IN ('field', 'fingerprint')", name="purpose"),
    )
    # One active data key per purpose (see kit/crypto.py: start-up races resolve on it).
    op.create_index(
        "uq_data_keys_active_purpose", "data_keys", ["purpose"], unique=True,
        sqlite_where=sa.text("active"), postgresql_where=sa.text("active"),
    )
    op.create_table(
        "vault_cards",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("merchant_id", sa.String(40), sa.ForeignKey("merchants.id"), nullable=False),
        sa.Column("number_ciphertext", sa.Text, nullable=False),
        sa.Column("holder_name_ciphertext", sa.Text),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("bin", sa.String(6), nullable=False),
        sa.Column("last4", sa.String(4), nullable=False),
        sa.Column("brand", sa.String(16), nullable=False),
        sa.Column("exp_month", sa.Integer, nullable=False),
        sa.Column("exp_year", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.CheckConstraint(f"brand IN ({sql_list(BRANDS)})", name="brand"),
        sa.CheckConstraint("exp_month BETWEEN 1 AND 12", name="exp_month"),
    )
    op.create_index("ix_vault_cards_merchant", "vault_cards", ["merchant_id", "id"])
    op.create_index("ix_vault_cards_fingerprint", "vault_cards", ["fingerprint"])
    op.create_table(
        "vault_bank_accounts",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("merchant_id", sa.String(40), sa.ForeignKey("merchants.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("number_ciphertext", sa.Text, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("last4", sa.String(4), nullable=False),
        sa.Column("bank_code", sa.String(34)),
        sa.Column("holder_name", sa.String(200), nullable=False),
        sa.Column("country", sa.String(2), nullable=False),
        sa.Column("currency", sa.String(3)),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.CheckConstraint(f"kind IN ({sql_list(ACCOUNT_KINDS)})", name="kind"),
    )
    op.create_index("ix_vault_bank_accounts_merchant", "vault_bank_accounts", ["merchant_id", "id"])
    op.create_index("ix_vault_bank_accounts_fingerprint", "vault_bank_accounts", ["fingerprint"])


def downgrade() -> None:
    for table in ("vault_bank_accounts", "vault_cards", "data_keys"):
        op.drop_table(table)
