"""Settings from the environment (``CLEARHOUSE_*``), with defaults that serve one machine."""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLEARHOUSE_", extra="ignore")

    database_url: str = "sqlite:///var/clearhouse.db"
    """An SQLAlchemy URL: ``sqlite:///path`` or ``postgresql+psycopg://user@host:port/db``."""
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: str = "INFO"
    """A level name of the ``logging`` module (``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``), any case."""
    log_json: bool = False
    metrics_public: bool = True
    """Serve ``/metrics`` without credentials (scrapers on a private network)."""
    worker_interval_seconds: float = Field(default=1.0, gt=0, le=3600, allow_inf_nan=False)
    db_pool_size: int = Field(default=10, ge=1, le=1000)
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """The largest request body accepted (413 ``request_too_large`` past it)."""

    # Data protection (kit/crypto.py): the master keys that wrap the data keys.
    master_key_file: Path | None = Path("var/master.key")
    """A file of master keys, one ``<key id> <base64 of 32 bytes>`` per line; the last line is
    the active key. ``clearhouse keys rotate`` appends a new one."""
    master_key: str | None = None
    """One master key as ``<key id>:<base64 of 32 bytes>``; used instead of the file when set."""

    # Authentication (identity/).
    signature_tolerance_seconds: int = Field(default=300, ge=1, le=86400)
    nonce_ttl_seconds: int = Field(default=600, le=7 * 86400, validate_default=True)
    """How long a used nonce is kept: at least twice ``signature_tolerance_seconds``, checked
    even when left at its default (a raised tolerance alone would otherwise slip through)."""
    api_key_rate_limit_per_minute: int = Field(default=6000, ge=0)
    """Requests per API key per minute, shared by every server process (0: no limit)."""
    login_rate_limit_per_minute: int = Field(default=10, ge=0)
    """Login attempts per source address per minute (0: no limit)."""
    login_lockout_threshold: int = Field(default=5, ge=0, le=1000)
    """Failed logins in a row before an account is locked; each further failure doubles the lock."""
    login_lockout_seconds: int = Field(default=60, ge=1, le=86400)
    password_hash_time_cost: int = Field(default=3, ge=1, le=100)
    password_hash_memory_kib: int = Field(default=65536, ge=8, le=4 * 1024 * 1024)
    password_hash_parallelism: int = Field(default=4, ge=1, le=64)
    """argon2id parameters for new password hashes (RFC 9106's low-memory profile by default)."""
    # Durations are bounded so that a date they are added to stays a date (a year at most).
    session_idle_minutes: int = Field(default=30, ge=1, le=7 * 24 * 60)
    session_absolute_hours: int = Field(default=12, ge=1, le=8760)
    approval_ttl_hours: int = Field(default=24, ge=1, le=8760)

    # Payments and channels (payments/, channels/).
    public_base_url: str = "http://127.0.0.1:8000"
    """Where this server is reached from outside: channels send notifications here and buyers
    open the hosted pages (QR payment, delivered codes)."""
    channel_timeout_seconds: float = Field(default=10.0, gt=0, le=300, allow_inf_nan=False)
    """How long a channel call may take before it counts as a timeout (the payment stays
    ``processing`` and the worker asks the channel until it is final)."""
    authorization_hold_hours: int = Field(default=168, ge=1, le=8760)
    """How long a manual-capture authorization holds the funds before it is voided."""
    sandbox_dir: Path = Path("var/sandbox")
    """The sandbox channels' own store (their side of every call, their signing keys, their
    statements): a different system from ours, so it is not in our database."""
    sandbox_faults: Annotated[dict[str, dict[str, Any]], NoDecode] = {}
    """Fault profile per sandbox channel, as JSON: ``{"sandbox_card": {"latency_ms": 200,
    "decline_rate": 0.1, "timeout_rate": 0.05, "outages": [["02:00", "02:15"]]}}``. Checked
    here, when the settings are read, so a wrong profile stops every command at start-up."""

    # Webhooks (webhooks/).
    webhook_timeout_seconds: float = Field(default=5.0, gt=0, le=60, allow_inf_nan=False)
    """Each delivery attempt's timeout; the delivery job's lease is a multiple of it."""
    webhook_retry_hours: int = Field(default=72, ge=1, le=8760)
    """Deliveries are retried with exponential backoff for this long, then given up."""
    webhook_allow_private_networks: bool = False
    """Allow loopback and private hosts for webhook URLs, and http:// to them (development and tests only)."""

    # Reconciliation (reconciliation/).
    recon_approval_threshold: int = Field(default=10_000, ge=0, le=10**15)
    """A case resolution that posts more than this (minor units of the case's currency) waits for a
    second person (maker-checker)."""
    recon_upload_max_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)
    """The largest statement file ``POST /v1/reconciliations`` accepts."""

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in logging.getLevelNamesMapping():
            raise ValueError(f"{value!r} is not a log level: DEBUG, INFO, WARNING or ERROR")
        return level

    @field_validator("nonce_ttl_seconds")
    @classmethod
    def _nonces_outlive_skew(cls, value: int, info: ValidationInfo) -> int:
        # A request stamped `tolerance` seconds ahead stays acceptable for 2 x tolerance:
        # its nonce must be remembered at least that long, or it could be replayed.
        tolerance = info.data.get("signature_tolerance_seconds")
        if tolerance is not None and value < 2 * tolerance:
            raise ValueError(f"{value} is less than twice CLEARHOUSE_SIGNATURE_TOLERANCE_SECONDS ({tolerance}): "
                             "raise it or lower the tolerance")
        return value

    @field_validator("password_hash_parallelism")
    @classmethod
    def _argon2_memory_per_lane(cls, value: int, info: ValidationInfo) -> int:
        # argon2 refuses less than 8 KiB per lane: checked here, not at the first sign-in.
        memory = info.data.get("password_hash_memory_kib")
        if memory is not None and memory < 8 * value:
            raise ValueError(f"{value} lanes need at least {8 * value} KiB: raise CLEARHOUSE_PASSWORD_HASH_MEMORY_KIB "
                             f"({memory}) or lower the lanes")
        return value

    @field_validator("sandbox_faults", mode="before")
    @classmethod
    def _faults_from_json(cls, value: Any) -> Any:
        # Decoded here rather than by pydantic-settings, whose own failure names no variable.
        if not isinstance(value, str):
            return value
        if not value.strip():
            return {}
        try:
            return json.loads(value)
        except ValueError as error:
            raise ValueError(f"not JSON ({error})") from None

    @field_validator("sandbox_faults")
    @classmethod
    def _faults_are_profiles(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        # Parsed now, not when a connector is first used: a wrong profile would otherwise
        # surface as a 500 on every payment through that channel.
        from clearhouse.channels import connectors  # noqa: F401  (registers the built-in sandboxes)
        from clearhouse.channels.connectors.sandbox import SANDBOXES, FaultProfile

        for channel, profile in value.items():
            if channel not in SANDBOXES:
                raise ValueError(f"no sandbox channel {channel!r}; sandboxes: {', '.join(sorted(SANDBOXES))}")
            try:
                FaultProfile.from_mapping(profile)
            except ValueError as error:
                raise ValueError(f"{channel}: {error}") from None
        return value

    def sqlite_path(self) -> Path | None:
        prefix = "sqlite:///"
        if self.database_url.startswith(prefix):
            return Path(self.database_url[len(prefix):])
        return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
