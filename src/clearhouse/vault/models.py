"""Vault tables: a card or bank account number is kept only as a FieldCipher ciphertext.

What stays readable is what PCI DSS allows beside a token (BIN, last four digits, expiry,
brand) and what a person needs to recognise an account (last four, bank code, country).
The card security code is never stored at all (PCI DSS 3.2), not even encrypted.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text, true
from sqlalchemy.orm import Mapped, mapped_column

from clearhouse.kit.models import Base, sql_list
from clearhouse.kit.types import UTCDateTime

BRANDS = ("visa", "mastercard", "amex", "unionpay", "jcb", "discover", "diners", "unknown")
ACCOUNT_KINDS = ("account_number", "iban")


class VaultCard(Base):
    __tablename__ = "vault_cards"
    __table_args__ = (
        CheckConstraint(f"brand IN ({sql_list(BRANDS)})", name="brand"),
        CheckConstraint("exp_month BETWEEN 1 AND 12", name="exp_month"),
        Index("ix_vault_cards_merchant", "merchant_id", "id"),
        Index("ix_vault_cards_fingerprint", "fingerprint"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(String(40), ForeignKey("merchants.id"))
    livemode: Mapped[bool] = mapped_column(Boolean, server_default=true())
    """False: made with a test key, seen only by test keys (identity.md, "Test and live")."""
    number_ciphertext: Mapped[str] = mapped_column(Text)
    """FieldCipher token, context ``vault_cards.number:<id>``."""
    holder_name_ciphertext: Mapped[str | None] = mapped_column(Text)
    """FieldCipher token, context ``vault_cards.holder_name:<id>``: stored with the number,
    the cardholder's name is cardholder data too."""
    fingerprint: Mapped[str] = mapped_column(String(64))
    bin: Mapped[str] = mapped_column(String(6))
    last4: Mapped[str] = mapped_column(String(4))
    brand: Mapped[str] = mapped_column(String(16))
    exp_month: Mapped[int] = mapped_column(Integer)
    exp_year: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class VaultBankAccount(Base):
    __tablename__ = "vault_bank_accounts"
    __table_args__ = (
        CheckConstraint(f"kind IN ({sql_list(ACCOUNT_KINDS)})", name="kind"),
        Index("ix_vault_bank_accounts_merchant", "merchant_id", "id"),
        Index("ix_vault_bank_accounts_fingerprint", "fingerprint"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(String(40), ForeignKey("merchants.id"))
    livemode: Mapped[bool] = mapped_column(Boolean, server_default=true())
    """False: made with a test key, seen only by test keys (identity.md, "Test and live")."""
    kind: Mapped[str] = mapped_column(String(16))
    number_ciphertext: Mapped[str] = mapped_column(Text)
    """FieldCipher token, context ``vault_bank_accounts.number:<id>``."""
    fingerprint: Mapped[str] = mapped_column(String(64))
    last4: Mapped[str] = mapped_column(String(4))
    bank_code: Mapped[str | None] = mapped_column(String(34))
    holder_name: Mapped[str] = mapped_column(String(200))
    country: Mapped[str] = mapped_column(String(2))
    currency: Mapped[str | None] = mapped_column(String(3))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
