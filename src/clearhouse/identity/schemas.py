"""Request and response models for merchants, API keys and approvals."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator

from clearhouse.identity.permissions import PERMISSIONS
from clearhouse.kit import clock
from clearhouse.kit.api import CountryCode, CurrencyCode, MetadataIn, Model, Name, UtcTime

# Merchant metadata is stored as it is shown: masked (data-protection.md, "Free text").
Metadata = MetadataIn  # stored masked (kit/api.py)


def _known_timezone(value: str | None) -> str | None:
    return value if value is None else clock.known_zone(value)


class MerchantFields(Model):
    country: CountryCode | None = Field(default=None, description="ISO 3166-1 alpha-2")
    default_currency: CurrencyCode | None = None
    timezone: str | None = Field(default=None, max_length=64, description="IANA time zone of business dates")
    settlement_cycle: str | None = Field(default=None, pattern=r"^T\+[0-9]{1,2}$", description="T+0, T+1, ... T+N")
    metadata: Metadata | None = None

    _timezone = field_validator("timezone")(_known_timezone)


class MerchantCreate(MerchantFields):
    name: Name


class MerchantUpdate(MerchantFields):
    name: Name | None = None
    status: Literal["active", "suspended"] | None = None
    kyc_status: Literal["pending", "verified", "rejected"] | None = None


class MerchantOut(Model):
    id: str
    name: str
    country: str | None
    default_currency: str | None
    timezone: str
    status: str
    kyc_status: str
    settlement_cycle: str
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime


Scope = Literal[tuple(PERMISSIONS)]  # type: ignore[valid-type]


class ApiKeyCreate(Model):
    mode: Literal["test", "live"] = "test"
    name: str = Field(default="", max_length=200)
    scopes: list[Scope] | None = Field(default=None, max_length=len(PERMISSIONS),
                                       description="Defaults to every scope a merchant key may hold")
    expires_at: UtcTime | None = None


class PlatformKeyCreate(Model):
    name: str = Field(default="", max_length=200)
    scopes: list[Scope] = Field(min_length=1, max_length=len(PERMISSIONS))
    expires_at: UtcTime | None = None


class ApiKeyOut(Model):
    id: str
    merchant_id: str | None
    mode: str
    name: str
    scopes: list[str]
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    secret_collected: bool


class ApiKeyWithSecret(ApiKeyOut):
    secret: str = Field(description="Shown once: store it now. The server cannot show it again.")


class ApprovalOut(Model):
    id: str
    action: str
    summary: str
    payload: dict[str, Any]
    permission: str
    merchant_id: str | None
    maker_type: str
    maker_id: str
    status: str
    created_at: datetime
    expires_at: datetime
    checker_id: str | None
    decided_at: datetime | None
    reason: str | None
    result: dict[str, Any] | None


class ApprovalDecision(Model):
    reason: str | None = Field(default=None, max_length=2000)
