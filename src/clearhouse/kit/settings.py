"""Settings from the environment (``CLEARHOUSE_*``), with defaults that serve one machine."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

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

    def sqlite_path(self) -> Path | None:
        prefix = "sqlite:///"
        if self.database_url.startswith(prefix):
            return Path(self.database_url[len(prefix):])
        return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
