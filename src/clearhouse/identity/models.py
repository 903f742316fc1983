"""Identity tables: merchants (tenants), API keys and their nonces, people and their
sessions, rate-limit counters, and approvals held for a second person (maker-checker).

Secrets never sit here in the clear: an API key's secret and a user's TOTP seed are
envelope-encrypted (kit/crypto.py), passwords are argon2id hashes, session tokens and
recovery codes are stored as SHA-256 digests of high-entropy random values.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from clearhouse.kit.models import Base, sql_list
from clearhouse.kit.types import UTCDateTime

PLATFORM_ROLES = ("admin", "operator", "finance", "risk_analyst", "auditor")
MERCHANT_ROLES = ("merchant_admin", "merchant_viewer")
ROLES = PLATFORM_ROLES + MERCHANT_ROLES


class Merchant(Base):
    __tablename__ = "merchants"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'suspended')", name="status"),
        CheckConstraint("kyc_status IN ('pending', 'verified', 'rejected')", name="kyc_status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    country: Mapped[str | None] = mapped_column(String(2))
    default_currency: Mapped[str | None] = mapped_column(String(3))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    status: Mapped[str] = mapped_column(String(12), default="active")
    kyc_status: Mapped[str] = mapped_column(String(12), default="pending")
    settlement_cycle: Mapped[str] = mapped_column(String(8), default="T+1")
    metadata_json: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ApiKey(Base):
    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint("mode IN ('test', 'live', 'platform')", name="mode"),
        CheckConstraint("(mode = 'platform') = (merchant_id IS NULL)", name="tenant"),
        Index("ix_api_keys_merchant", "merchant_id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    merchant_id: Mapped[str | None] = mapped_column(String(40), ForeignKey("merchants.id"))
    mode: Mapped[str] = mapped_column(String(8))
    name: Mapped[str] = mapped_column(String(200), default="")
    scopes_json: Mapped[str] = mapped_column(Text)
    secret_ciphertext: Mapped[str] = mapped_column(Text)
    secret_revealed: Mapped[bool] = mapped_column(Boolean, default=True)
    """False while a key made through an approval waits for its maker to collect the secret."""
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ApiNonce(Base):
    """Nonces seen per key; the primary key refuses a replay in every server process at once."""

    __tablename__ = "api_nonces"
    __table_args__ = (Index("ix_api_nonces_seen_at", "seen_at"),)

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RateLimitCounter(Base):
    """Fixed-window counters (``bucket`` names the key or the source address)."""

    __tablename__ = "rate_limit_counters"

    bucket: Mapped[str] = mapped_column(String(200), primary_key=True)
    window_start: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(f"role IN ({sql_list(ROLES)})", name="role"),
        CheckConstraint(f"(role IN ({sql_list(MERCHANT_ROLES)})) = (merchant_id IS NOT NULL)", name="tenant"),
        CheckConstraint("failed_logins >= 0", name="failed_logins"),
        Index("ix_users_merchant", "merchant_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    """Stored lower-cased: one person, one address."""
    role: Mapped[str] = mapped_column(String(20))
    merchant_id: Mapped[str | None] = mapped_column(String(40), ForeignKey("merchants.id"))
    password_hash: Mapped[str] = mapped_column(Text)
    totp_secret_ciphertext: Mapped[str | None] = mapped_column(Text)
    totp_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)
    """The last TOTP time step accepted: a code is never accepted twice."""
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RecoveryCode(Base):
    __tablename__ = "user_recovery_codes"

    user_id: Mapped[str] = mapped_column(String(40), ForeignKey("users.id"), primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class UserSession(Base):
    """A console session; ``id`` is the SHA-256 of the cookie's token, never the token."""

    __tablename__ = "user_sessions"
    __table_args__ = (Index("ix_user_sessions_user", "user_id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(40), ForeignKey("users.id"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    mfa_satisfied: Mapped[bool] = mapped_column(Boolean, default=False)
    """False while a role that needs TOTP has not set it up: only enrolment is allowed."""
    source_ip: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Approval(Base):
    """A sensitive action held with its exact content until a second person decides."""

    __tablename__ = "approvals"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'approved', 'rejected', 'expired')", name="status"),
        Index("ix_approvals_status", "status", "created_at"),
        Index("ix_approvals_merchant", "merchant_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    action: Mapped[str] = mapped_column(String(64))
    payload_json: Mapped[str] = mapped_column(Text)
    summary: Mapped[str] = mapped_column(String(500))
    permission: Mapped[str] = mapped_column(String(64))
    """What the checker must hold."""
    merchant_id: Mapped[str | None] = mapped_column(String(40))
    maker_type: Mapped[str] = mapped_column(String(8))
    maker_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(10), default="pending")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    checker_id: Mapped[str | None] = mapped_column(String(64))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reason: Mapped[str | None] = mapped_column(Text)
    result_json: Mapped[str | None] = mapped_column(Text)
