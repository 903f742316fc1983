"""Settings from the environment (``CLEARHOUSE_*``), with defaults that serve one machine."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLEARHOUSE_", extra="ignore")

    database_url: str = "sqlite:///var/clearhouse.db"
    """An SQLAlchemy URL: ``sqlite:///path`` or ``postgresql+psycopg://user@host:port/db``."""
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "INFO"
    log_json: bool = False
    metrics_public: bool = True
    """Serve ``/metrics`` without credentials (scrapers on a private network)."""
    worker_interval_seconds: float = 1.0
    db_pool_size: int = 10
    max_request_bytes: int = 64 * 1024 * 1024
    """The largest request body accepted (413 ``request_too_large`` past it)."""

    # Data protection (kit/crypto.py): the master keys that wrap the data keys.
    master_key_file: Path | None = Path("var/master.key")
    """A file of master keys, one ``<key id> <base64 of 32 bytes>`` per line; the last line is
    the active key. ``clearhouse keys rotate`` appends a new one."""
    master_key: str | None = None
    """One master key as ``<key id>:<base64 of 32 bytes>``; used instead of the file when set."""

    # Authentication (identity/).
    signature_tolerance_seconds: int = 300
    nonce_ttl_seconds: int = 600
    api_key_rate_limit_per_minute: int = 6000
    """Requests per API key per minute, shared by every server process (0: no limit)."""
    login_rate_limit_per_minute: int = 10
    """Login attempts per source address per minute (0: no limit)."""
    login_lockout_threshold: int = 5
    """Failed logins in a row before an account is locked; each further failure doubles the lock."""
    login_lockout_seconds: int = 60
    password_hash_time_cost: int = 3
    password_hash_memory_kib: int = 65536
    password_hash_parallelism: int = 4
    """argon2id parameters for new password hashes (RFC 9106's low-memory profile by default)."""
    session_idle_minutes: int = 30
    session_absolute_hours: int = 12
    approval_ttl_hours: int = 24

    # Payments and channels (payments/, channels/).
    public_base_url: str = "http://127.0.0.1:8000"
    """Where this server is reached from outside: channels send notifications here and buyers
    open the hosted pages (QR payment, delivered codes)."""
    channel_timeout_seconds: float = 10.0
    """How long a channel call may take before it counts as a timeout (the payment stays
    ``processing`` and the worker asks the channel until it is final)."""
    authorization_hold_hours: int = 168
    """How long a manual-capture authorization holds the funds before it is voided."""
    sandbox_dir: Path = Path("var/sandbox")
    """The sandbox channels' own store (their side of every call, their signing keys, their
    statements): a different system from ours, so it is not in our database."""
    sandbox_faults: dict[str, dict[str, Any]] = {}
    """Fault profile per sandbox channel, as JSON: ``{"sandbox_card": {"latency_ms": 200,
    "decline_rate": 0.1, "timeout_rate": 0.05, "outages": [["02:00", "02:15"]]}}``."""

    # Webhooks (webhooks/).
    webhook_timeout_seconds: float = 5.0
    webhook_retry_hours: int = 72
    """Deliveries are retried with exponential backoff for this long, then given up."""
    webhook_allow_private_networks: bool = False
    """Allow loopback and private hosts for webhook URLs, and http:// to them (development and tests only)."""

    # Reconciliation (reconciliation/).
    recon_approval_threshold: int = Field(default=10_000, ge=0)
    """A case resolution that posts more than this (minor units of the case's currency) waits for a
    second person (maker-checker)."""
    recon_upload_max_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)
    """The largest statement file ``POST /v1/reconciliations`` accepts."""

    @model_validator(mode="after")
    def _nonces_outlive_skew(self) -> Settings:
        # A request stamped `tolerance` seconds ahead stays acceptable for 2 x tolerance:
        # its nonce must be remembered at least that long, or it could be replayed.
        if self.nonce_ttl_seconds < 2 * self.signature_tolerance_seconds:
            raise ValueError("nonce_ttl_seconds must be at least twice signature_tolerance_seconds")
        return self

    def sqlite_path(self) -> Path | None:
        prefix = "sqlite:///"
        if self.database_url.startswith(prefix):
            return Path(self.database_url[len(prefix):])
        return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
