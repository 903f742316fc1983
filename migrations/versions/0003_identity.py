"""Identity: merchants, API keys and nonces, rate-limit counters, users, recovery codes,
sessions and approvals (see identity/models.py).

Revision ID: 0003_identity
Revises: 0002_idempotency_keys
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from clearhouse.identity.models import MERCHANT_ROLES, ROLES
from clearhouse.kit.models import sql_list
from clearhouse.kit.types import UTCDateTime

revision = "0003_identity"
down_revision = "0002_idempotency_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "merchants",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("country", sa.String(2)),
        sa.Column("default_currency", sa.String(3)),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("kyc_status", sa.String(12), nullable=False),
        sa.Column("settlement_cycle", sa.String(8), nullable=False),
        sa.Column("metadata_json", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("status IN ('active', 'suspended')", name="status"),
        sa.CheckConstraint("kyc_status IN ('pending', 'verified', 'rejected')", name="kyc_status"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("merchant_id", sa.String(40), sa.ForeignKey("merchants.id")),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("scopes_json", sa.Text, nullable=False),
        sa.Column("secret_ciphertext", sa.Text, nullable=False),
        sa.Column("secret_revealed", sa.Boolean, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime),
        sa.Column("revoked_at", UTCDateTime),
        sa.CheckConstraint("mode IN ('test', 'live', 'platform')", name="mode"),
        sa.CheckConstraint("(mode = 'platform') = (merchant_id IS NULL)", name="tenant"),
    )
    op.create_index("ix_api_keys_merchant", "api_keys", ["merchant_id"])
    op.create_table(
        "api_nonces",
        sa.Column("key_id", sa.String(64), primary_key=True),
        sa.Column("nonce", sa.String(64), primary_key=True),
        sa.Column("seen_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_api_nonces_seen_at", "api_nonces", ["seen_at"])
    op.create_table(
        "rate_limit_counters",
        sa.Column("bucket", sa.String(200), primary_key=True),
        sa.Column("window_start", sa.BigInteger, primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("email", sa.String(320), nullable=False, unique=True),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("merchant_id", sa.String(40), sa.ForeignKey("merchants.id")),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("totp_secret_ciphertext", sa.Text),
        sa.Column("totp_enabled", sa.Boolean, nullable=False),
        sa.Column("totp_last_step", sa.BigInteger),
        sa.Column("failed_logins", sa.Integer, nullable=False),
        sa.Column("locked_until", UTCDateTime),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.CheckConstraint(f"role IN ({sql_list(ROLES)})", name="role"),
        sa.CheckConstraint(f"(role IN ({sql_list(MERCHANT_ROLES)})) = (merchant_id IS NOT NULL)", name="tenant"),
        sa.CheckConstraint("failed_logins >= 0", name="failed_logins"),
    )
    op.create_index("ix_users_merchant", "users", ["merchant_id"])
    op.create_table(
        "user_recovery_codes",
        sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), primary_key=True),
        sa.Column("code_hash", sa.String(64), primary_key=True),
        sa.Column("used_at", UTCDateTime),
    )
    op.create_table(
        "user_sessions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("mfa_satisfied", sa.Boolean, nullable=False),
        sa.Column("source_ip", sa.String(64)),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("last_seen_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.Column("revoked_at", UTCDateTime),
    )
    op.create_index("ix_user_sessions_user", "user_sessions", ["user_id"])
    op.create_table(
        "approvals",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("payload_json", sa.Text, nullable=False),
        sa.Column("summary", sa.String(500), nullable=False),
        sa.Column("permission", sa.String(64), nullable=False),
        sa.Column("merchant_id", sa.String(40)),
        sa.Column("maker_type", sa.String(8), nullable=False),
        sa.Column("maker_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.Column("checker_id", sa.String(64)),
        sa.Column("decided_at", UTCDateTime),
        sa.Column("reason", sa.Text),
        sa.Column("result_json", sa.Text),
        sa.CheckConstraint("status IN ('pending', 'approved', 'rejected', 'expired')", name="status"),
    )
    op.create_index("ix_approvals_status", "approvals", ["status", "created_at"])
    op.create_index("ix_approvals_merchant", "approvals", ["merchant_id"])


def downgrade() -> None:
    for table in ("approvals", "user_sessions", "user_recovery_codes", "users", "rate_limit_counters",
                  "api_nonces", "api_keys", "merchants"):
        op.drop_table(table)
