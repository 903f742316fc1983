"""Test fixtures: a fresh database per test, on SQLite and on PostgreSQL.

The backends come from ``CLEARHOUSE_TEST_BACKENDS`` (``make test`` sets
``sqlite,postgresql`` and starts the server); a test that asks for ``engine`` or
``client`` runs once per backend.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

import clearhouse.channels.models  # noqa: F401  (every table, so each test empties them all)
import clearhouse.payments.models  # noqa: F401
import clearhouse.payments.orders.models  # noqa: F401
import clearhouse.reconciliation.models  # noqa: F401
import clearhouse.webhooks.models  # noqa: F401
from clearhouse.app import create_app
from clearhouse.audit.service import SYSTEM
from clearhouse.channels.connectors.sandbox_card import card_expiry_year
from clearhouse.identity import service as identity
from clearhouse.identity.signing import ClearhouseAuth
from clearhouse.kit.db import make_engine, transact, upgrade
from clearhouse.kit.models import Base
from clearhouse.kit.runtime import settle_heap
from clearhouse.kit.settings import Settings
from clearhouse.ledger import chart
from clearhouse.ledger.models import GENESIS_HASH

# Cheap argon2id for the many people the suite signs in (set before any settings are read,
# so CLI subprocesses inherit it); production keeps RFC 9106's profile (kit/settings.py).
os.environ.setdefault("CLEARHOUSE_PASSWORD_HASH_TIME_COST", "1")
os.environ.setdefault("CLEARHOUSE_PASSWORD_HASH_MEMORY_KIB", "1024")
os.environ.setdefault("CLEARHOUSE_PASSWORD_HASH_PARALLELISM", "1")

ROOT = Path(__file__).resolve().parents[1]
CARD_EXP_YEAR = card_expiry_year()
"""The expiry year of the suite's test cards (``sandbox_card.card_expiry_year``)."""
POSTGRES_URL = os.environ.get("CLEARHOUSE_TEST_POSTGRES_URL", "")


def _worker_database(url: str) -> str:
    """Under pytest-xdist each worker gets its own PostgreSQL database on the one server
    (tests empty their database between tests, so two workers cannot share one)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not url or not worker:
        return url
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    base = make_url(url)
    name = f"{base.database}_{worker}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        if connection.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first() is None:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


POSTGRES_URL = _worker_database(POSTGRES_URL)
BACKENDS = [
    b.strip()
    for b in os.environ.get("CLEARHOUSE_TEST_BACKENDS", "sqlite,postgresql" if POSTGRES_URL else "sqlite").split(",")
    if b.strip()
]
if "postgresql" in BACKENDS and not POSTGRES_URL:
    raise RuntimeError("CLEARHOUSE_TEST_BACKENDS names postgresql but CLEARHOUSE_TEST_POSTGRES_URL is not set")


def pytest_collection_finish(session: pytest.Session) -> None:
    """What is imported by now lives for the whole run: frozen out of the garbage collector's
    sight, so that its full passes (one every test or two, since each test builds an app, and
    an app is many cycles) scan only what the tests make, not the 250,000 objects of the
    libraries. And fewer passes: a young generation of 10,000 allocations, not 700. Together
    about a tenth of a worker's time."""
    settle_heap()


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
    chart.forget()
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


TEST_MASTER_KEY = "mk_test:" + base64.b64encode(bytes(range(32))).decode()
"""A fixed master key for tests (a real deployment's lives in a key file or the environment)."""


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=database_url, master_key=TEST_MASTER_KEY, master_key_file=None,
                    sandbox_dir=tmp_path / "sandbox")


@pytest.fixture
def bookkeeping_engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url, pool_size=4, durable=False)
    yield engine
    engine.dispose()


@pytest.fixture
def app(settings: Settings, engine: Engine, bookkeeping_engine: Engine):
    app = create_app(settings, engine=engine, bookkeeping_engine=bookkeeping_engine)
    yield app
    # A test client used without ``with`` never runs the lifespan that closes these.
    recorder = getattr(app.state, "request_recorder", None)
    if recorder is not None:
        recorder.close()


@dataclass(frozen=True)
class Credentials:
    key_id: str
    secret: str
    merchant_id: str | None = None

    @property
    def auth(self) -> ClearhouseAuth:
        return ClearhouseAuth(self.key_id, self.secret)


def make_key(app, *, merchant_id: str | None = None, mode: str = "platform",
             scopes: list[str] | None = None) -> Credentials:
    """A key made straight through the service (what `clearhouse keys create` does)."""
    row, secret = transact(app.state.engine, lambda s: identity.create_api_key(
        s, app.state.cipher, SYSTEM, merchant_id=merchant_id, mode=mode, scopes=scopes, created_by="tests"))
    return Credentials(row.id, secret, merchant_id)


def make_merchant(app, name: str = "Shop") -> Credentials:
    """A merchant with one test key."""
    merchant = transact(app.state.engine, lambda s: identity.create_merchant(s, SYSTEM, name=name))
    return make_key(app, merchant_id=merchant.id, mode="test")


@pytest.fixture
def platform_key(app) -> Credentials:
    """A platform key holding every scope a platform key may hold."""
    return make_key(app)


@pytest.fixture
def client(app, platform_key: Credentials) -> Iterator[TestClient]:
    """Signed with ``platform_key``: what the operator's own back office would send."""
    with TestClient(app, raise_server_exceptions=False) as test_client:
        test_client.auth = platform_key.auth
        yield test_client


@pytest.fixture
def anonymous_client(app) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def merchant_client_factory(app) -> Iterator[Callable[..., tuple[TestClient, str]]]:
    """``factory(name)`` -> (a client signed with a new merchant's test key, the merchant id)."""
    opened: list[TestClient] = []

    def factory(name: str = "Shop") -> tuple[TestClient, str]:
        credentials = make_merchant(app, name)
        test_client = TestClient(app, raise_server_exceptions=False)
        test_client.auth = credentials.auth
        opened.append(test_client)
        return test_client, credentials.merchant_id or ""

    yield factory
    for test_client in opened:
        test_client.close()


@pytest.fixture
def user_client_factory(app) -> Iterator[Callable[..., TestClient]]:
    """``factory(role, merchant_id=None)`` -> a client signed in as a new person with that role."""
    from tests.identity.people_support import create_user, login

    opened: list[TestClient] = []

    def factory(role: str, merchant_id: str | None = None) -> TestClient:
        user = create_user(app.state.engine, role, merchant_id, cipher=app.state.cipher)
        test_client = TestClient(app, raise_server_exceptions=False)
        opened.append(test_client)
        login(test_client, user)
        test_client.user = user  # type: ignore[attr-defined]
        return test_client

    yield factory
    for test_client in opened:
        test_client.close()


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
def http(live_server: str, platform_key: Credentials) -> Iterator[httpx.Client]:
    """Real HTTP, signed with ``platform_key``."""
    with httpx.Client(base_url=live_server, timeout=30, auth=platform_key.auth) as client:
        yield client
