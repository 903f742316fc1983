"""Test fixtures: a fresh database per test, on SQLite and on PostgreSQL.

The backends come from ``CLEARHOUSE_TEST_BACKENDS`` (``make test`` sets
``sqlite,postgresql`` and starts the server); a test that asks for ``engine`` or
``client`` runs once per backend.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from clearhouse.app import create_app
from clearhouse.kit.db import make_engine, upgrade
from clearhouse.kit.models import Base
from clearhouse.kit.settings import Settings
from clearhouse.ledger.models import GENESIS_HASH

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_URL = os.environ.get("CLEARHOUSE_TEST_POSTGRES_URL", "")
BACKENDS = [
    b.strip()
    for b in os.environ.get("CLEARHOUSE_TEST_BACKENDS", "sqlite,postgresql" if POSTGRES_URL else "sqlite").split(",")
    if b.strip()
]
if "postgresql" in BACKENDS and not POSTGRES_URL:
    raise RuntimeError("CLEARHOUSE_TEST_BACKENDS names postgresql but CLEARHOUSE_TEST_POSTGRES_URL is not set")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")  # its engine is disposed, so the WAL is folded into the file
    return path


@pytest.fixture(scope="session")
def postgres_migrated() -> str:
    upgrade(POSTGRES_URL)
    return POSTGRES_URL


def reset_postgres(engine: Engine) -> None:
    """Empty every table. Triggers are off for this connection only (replica role), since
    they rightly refuse to let anyone else delete ledger rows."""
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text("SET LOCAL session_replication_role = replica"))
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        # The single-row chain heads are part of the schema (seeded by their migrations).
        for chain in ("ledger_chain", "audit_chain"):
            connection.execute(text(f"INSERT INTO {chain} (id, seq, hash) VALUES (1, 0, :h)"), {"h": GENESIS_HASH})


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "sqlite":
        template = request.getfixturevalue("sqlite_template")
        target = tmp_path / "clearhouse.db"
        shutil.copyfile(template, target)
        return f"sqlite:///{target}"
    url = request.getfixturevalue("postgres_migrated")
    engine = make_engine(url, pool_size=1)
    reset_postgres(engine)
    engine.dispose()
    return url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url, pool_size=20)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url)


@pytest.fixture
def app(settings: Settings, engine: Engine):
    return create_app(settings, engine=engine)


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def live_server(app) -> Iterator[str]:
    """The app behind a real uvicorn server on a loopback port: real HTTP end to end."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def http(live_server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server, timeout=30) as client:
        yield client
