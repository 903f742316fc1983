"""The per-request nonce and rate-limit write (``kit.db.LoopWriter``), over real HTTP.

It runs on the event loop (PostgreSQL: an asyncio connection; SQLite: inline, never waiting
for the database lock), falling back to a worker thread when it cannot; whichever way a
request goes, its nonce is recorded once, a replay is refused, and the server keeps serving.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from clearhouse.identity.models import ApiNonce
from clearhouse.identity.signing import signed_headers
from clearhouse.kit.db import transact
from tests.conftest import make_key
from tests.identity.test_signing import wait_clear_of_the_minute_boundary


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


@contextmanager
def nonce_writes_held(backend: str, database_url: str, key_id: str) -> Iterator[None]:
    """Make the key's next nonce writes wait: SQLite's write lock, or PostgreSQL's row lock on
    the key's rate-limit counter of this minute (every recorded request updates it)."""
    if backend == "sqlite":
        other = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            other.execute("COMMIT")
            other.close()
        return
    window = int(time.time() // 60) * 60
    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://")) as other:
        locked = other.execute("SELECT count FROM rate_limit_counters WHERE bucket = %s AND window_start = %s "
                               "FOR UPDATE", (f"key:{key_id}", window)).fetchone()
        assert locked is not None, "the key's counter of this minute exists (a request was made)"
        yield
        other.rollback()


def merchants(backend: str, database_url: str) -> int:
    """Counted on a plain reading connection (the app's engine would wait for the held write lock)."""
    if backend == "sqlite":
        with closing(sqlite3.connect(database_url.removeprefix("sqlite:///"))) as reader:
            return reader.execute("SELECT count(*) FROM merchants").fetchone()[0]
    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://")) as reader:
        return reader.execute("SELECT count(*) FROM merchants").fetchone()[0]


def test_a_reads_answer_waits_for_its_nonce_and_a_replayed_read_answers_only_the_refusal(backend, app, engine,
                                                                                          database_url, live_server):
    """On PostgreSQL a GET runs while its nonce is written (the round trip overlaps the route's work),
    but its answer is held until the nonce is in: a read whose nonce turns out replayed answers
    the refusal alone, never the data."""
    key = make_key(app)
    first = signed_headers(key.key_id, key.secret, "GET", "/v1/merchants")
    with httpx.Client(base_url=live_server, timeout=30) as client:
        wait_clear_of_the_minute_boundary()
        assert client.get("/v1/merchants", headers=first).status_code == 200  # the key is read, its counter made
        fresh = signed_headers(key.key_id, key.secret, "GET", "/v1/merchants")
        answers: dict[str, httpx.Response] = {}

        def send(name: str, headers: dict[str, str]) -> None:
            answers[name] = httpx.get(f"{live_server}/v1/merchants", headers=headers, timeout=30)

        with nonce_writes_held(backend, database_url, key.key_id):
            senders = [threading.Thread(target=send, args=args) for args in (("fresh", fresh), ("replayed", first))]
            for sender in senders:
                sender.start()
            time.sleep(0.5)
            # (On PostgreSQL the replay is refused without touching the counter, so it may be answered.)
            assert "fresh" not in answers, "no answer before its nonce is recorded"
            assert client.get("/healthz").status_code == 200
        for sender in senders:
            sender.join(timeout=30)
    assert answers["fresh"].status_code == 200, answers["fresh"].text
    replayed = answers["replayed"]
    assert replayed.status_code == 401, replayed.text
    assert replayed.headers["content-type"].startswith("application/problem+json")
    assert replayed.json()["code"] == "signature_replayed"
    assert "data" not in replayed.json()
    assert nonces_of(engine, key.key_id) == 2


def test_a_post_is_not_run_before_its_nonce_is_recorded(backend, app, engine, database_url, live_server):
    """Only safe methods overlap the write: a replayed POST never reaches its route."""
    key = make_key(app)
    body = b'{"name": "Held Shop"}'
    post = {"Content-Type": "application/json",
            **signed_headers(key.key_id, key.secret, "POST", "/v1/merchants", body=body)}
    with httpx.Client(base_url=live_server, timeout=30) as client:
        wait_clear_of_the_minute_boundary()
        assert client.get("/v1/merchants", headers=signed_headers(key.key_id, key.secret, "GET",
                                                                  "/v1/merchants")).status_code == 200
        answers: list[httpx.Response] = []
        with nonce_writes_held(backend, database_url, key.key_id):
            sender = threading.Thread(target=lambda: answers.append(
                httpx.post(f"{live_server}/v1/merchants", content=body, headers=post, timeout=30)))
            sender.start()
            time.sleep(0.5)
            assert merchants(backend, database_url) == 0, "the POST's route must not run before its nonce is in"
        sender.join(timeout=30)
        assert answers and answers[0].status_code == 201, answers and answers[0].text
        assert client.post("/v1/merchants", content=body, headers=post).json()["code"] == "signature_replayed"
