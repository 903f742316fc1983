"""The per-request nonce and rate-limit write (``kit.db.LoopWriter``), over real HTTP.

It runs on the event loop (PostgreSQL: an asyncio connection; SQLite: inline, never waiting
for the database lock), falling back to a worker thread when it cannot; whichever way a
request goes, its nonce is recorded once, a replay is refused, and the server keeps serving.
"""

from __future__ import annotations

import sqlite3
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from clearhouse.identity.models import ApiNonce
from clearhouse.identity.signing import signed_headers
from clearhouse.kit.db import transact
from tests.conftest import make_key


def nonces_of(engine, key_id: str) -> int:
    return transact(engine, lambda s: s.scalar(select(func.count()).where(ApiNonce.key_id == key_id)))


def test_concurrent_signed_requests_record_each_nonce_once_and_replays_are_refused(app, engine, live_server):
    key = make_key(app)
    headers = [signed_headers(key.key_id, key.secret, "GET", "/v1/merchants") for _ in range(48)]
    statuses: list[int] = []
    lock = threading.Lock()

    def send(batch: list[dict[str, str]]) -> None:
        with httpx.Client(base_url=live_server, timeout=30) as client:
            for one in batch:
                status = client.get("/v1/merchants", headers=one).status_code
                with lock:
                    statuses.append(status)

    threads = [threading.Thread(target=send, args=(headers[i::16],)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert statuses == [200] * 48
    assert nonces_of(engine, key.key_id) == 48
    assert app.state.request_recorder.connections <= 8, "the recorder's connections are bounded"
    with httpx.Client(base_url=live_server, timeout=30) as client:
        replays = {client.get("/v1/merchants", headers=one).json()["code"] for one in headers[:5]}
    assert replays == {"signature_replayed"}
    assert nonces_of(engine, key.key_id) == 48


def test_a_locked_sqlite_database_delays_the_signed_request_but_not_the_server(backend, app, engine, database_url,
                                                                              live_server):
    if backend != "sqlite":
        pytest.skip("the database write lock is SQLite's")
    key = make_key(app)
    with httpx.Client(base_url=live_server, timeout=30) as client:
        # The key is read once per process; read it now, so only the nonce write meets the lock.
        assert client.get("/v1/merchants", headers=signed_headers(key.key_id, key.secret, "GET",
                                                                  "/v1/merchants")).status_code == 200
        blocked = signed_headers(key.key_id, key.secret, "GET", "/v1/merchants")
        answer: list[httpx.Response] = []
        other_writer = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        other_writer.execute("BEGIN IMMEDIATE")
        try:
            sender = threading.Thread(target=lambda: answer.append(
                httpx.get(f"{live_server}/v1/merchants", headers=blocked, timeout=30)))
            sender.start()
            time.sleep(0.3)
            assert not answer, "the request cannot have written its nonce while another writer holds the lock"
            started = time.monotonic()
            assert client.get("/healthz").status_code == 200
            assert time.monotonic() - started < 1.0, "the event loop must not wait for the database lock"
        finally:
            other_writer.execute("COMMIT")
            other_writer.close()
        sender.join(timeout=30)
        assert answer and answer[0].status_code == 200, answer and answer[0].text
        assert client.get("/v1/merchants", headers=blocked).json()["code"] == "signature_replayed"
    assert nonces_of(engine, key.key_id) == 2


def test_the_apps_shutdown_closes_the_recorders_connections(app):
    key = make_key(app)
    with TestClient(app, raise_server_exceptions=False) as client:
        for _ in range(3):
            assert client.get("/v1/merchants", auth=key.auth).status_code == 200
        recorder = app.state.request_recorder
        assert recorder.connections >= 1
    assert recorder.connections == 0
