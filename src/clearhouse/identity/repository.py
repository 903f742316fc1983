"""The per-request bookkeeping write of signed requests, the one query here that is
shaped by speed rather than by clarity (``clearhouse bench auth``).

Every signed request records its nonce (a replay finds it) and counts itself against its
key's rate limit, and must fail when the key was revoked or its merchant suspended a
moment ago in another process. Done with SQLAlchemy's session that is four statements and
a few hundred microseconds; here it is one statement on PostgreSQL (a writable CTE, one
network round trip) and two on SQLite (no network), on the driver's own cursor.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import psycopg
import structlog
from sqlalchemy import Engine

from clearhouse.kit.db import RawCursor, postgresql_paramstyle, raw_transaction

log = structlog.get_logger(__name__)

_LIVE_KEY = (
    "SELECT k.id, :nonce, :seen_at FROM api_keys k LEFT JOIN merchants m ON m.id = k.merchant_id "
    "WHERE k.id = :key_id AND k.revoked_at IS NULL AND (m.status IS NULL OR m.status = 'active')"
)
RECORD_NONCE = f"INSERT INTO api_nonces (key_id, nonce, seen_at) {_LIVE_KEY} ON CONFLICT DO NOTHING"
"""The nonce is recorded only if it is new AND the key is live AND its merchant active."""
COUNT_REQUEST = (
    "INSERT INTO rate_limit_counters (bucket, window_start, count) VALUES (:bucket, :window_start, 1) "
    "ON CONFLICT (bucket, window_start) DO UPDATE SET count = rate_limit_counters.count + 1 RETURNING count"
)
RECORD_AND_COUNT = (
    f"WITH recorded AS (INSERT INTO api_nonces (key_id, nonce, seen_at) {_LIVE_KEY} "
    "ON CONFLICT DO NOTHING RETURNING key_id) "
    "INSERT INTO rate_limit_counters (bucket, window_start, count) "
    "SELECT :bucket, :window_start, 1 FROM recorded "
    "ON CONFLICT (bucket, window_start) DO UPDATE SET count = rate_limit_counters.count + 1 RETURNING count"
)
"""PostgreSQL (and CockroachDB): both writes in one statement; no row when the nonce was refused."""


def record_request(engine: Engine, key_id: str, nonce: str, seen_at: datetime, bucket: str,
                   window_start: int) -> tuple[bool, int]:
    """(whether the nonce was recorded, the bucket's count in this window)."""
    params = {"key_id": key_id, "nonce": nonce, "seen_at": seen_at, "bucket": bucket, "window_start": window_start}
    with raw_transaction(engine) as cursor:
        return _record(cursor, params)


def _record(cursor: RawCursor, params: dict[str, Any]) -> tuple[bool, int]:
    if cursor.postgresql:
        count = cursor.scalar(RECORD_AND_COUNT, params)
        return count is not None, count or 0
    if not cursor.rowcount(RECORD_NONCE, params):
        return False, 0
    return True, cursor.scalar(COUNT_REQUEST, params)


class RequestRecorder:
    """``record_request`` for the authentication middleware, from the event loop, where it
    costs the least (``clearhouse bench auth``): a hop to a worker thread and back costs about
    as much as the write itself, and most of the p99.

    - PostgreSQL: the one statement on an asyncio driver connection (autocommit, commits not
      waiting for the disk), so the loop waits on the socket, not on a thread. Connections
      belong to the loop that opened them: when another loop (a test client's) calls, the
      write goes the thread way instead.
    - SQLite: no network, so the write runs inline on a connection of its own that never
      waits for the database lock (``busy_timeout=0``); when another writer holds the lock,
      it goes the thread way, where waiting is harmless. Its commits never checkpoint the
      WAL (that waits for the disk); a worker thread does, every ``CHECKPOINT_EVERY`` commits.
    """

    CHECKPOINT_EVERY = 500

    def __init__(self, engine: Engine, in_thread: Callable[..., Awaitable[Any]], *, connections: int = 8):
        self.engine = engine
        self.in_thread = in_thread
        self.max_connections = connections
        self.postgresql = engine.dialect.name == "postgresql"
        self._inline: Any = None  # SQLite: the loop's own DB-API connection
        self._inline_lock = threading.Lock()
        self._inline_commits = 0
        self._checkpoints: set[asyncio.Future[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # PostgreSQL: the loop owning _idle
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots = asyncio.Semaphore(connections)  # at most this many open (PostgreSQL)

    async def record(self, key_id: str, nonce: str, seen_at: datetime, bucket: str,
                     window_start: int) -> tuple[bool, int]:
        """(whether the nonce was recorded, the bucket's count in this window)."""
        params = {"key_id": key_id, "nonce": nonce, "seen_at": seen_at, "bucket": bucket, "window_start": window_start}
        if self.postgresql:
            return await self._record_postgresql(params)
        if self._inline_lock.acquire(blocking=False):
            try:
                answer = self._record_inline(params)
            finally:
                self._inline_lock.release()
            if answer is not None:
                self._inline_commits += 1
                if self._inline_commits % self.CHECKPOINT_EVERY == 0:
                    checkpoint = asyncio.ensure_future(self.in_thread(self._checkpoint))
                    self._checkpoints.add(checkpoint)
                    checkpoint.add_done_callback(self._checkpoint_done)
                return answer
        return await self.in_thread(record_request, self.engine, key_id, nonce, seen_at, bucket, window_start)

    def _record_inline(self, params: dict[str, Any]) -> tuple[bool, int] | None:
        """None when the database is locked by another writer (nothing written)."""
        if self._inline is None:
            pooled = self.engine.raw_connection()
            connection = pooled.driver_connection
            pooled.detach()  # ours for good, with make_engine's settings
            connection.execute("PRAGMA busy_timeout=0")
            connection.execute("PRAGMA wal_autocheckpoint=0")
            self._inline = connection
        cursor = RawCursor(self._inline.cursor(), postgresql=False)
        try:
            cursor.cursor.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return None
        try:
            answer = _record(cursor, params)
            cursor.cursor.execute("COMMIT")
        except sqlite3.OperationalError:
            if self._inline.in_transaction:
                cursor.cursor.execute("ROLLBACK")
            return None
        except BaseException:
            if self._inline.in_transaction:
                cursor.cursor.execute("ROLLBACK")
            raise
        return answer

    def _checkpoint(self) -> None:
        pooled = self.engine.raw_connection()
        try:
            pooled.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            pooled.close()

    def _checkpoint_done(self, checkpoint: asyncio.Future[Any]) -> None:
        self._checkpoints.discard(checkpoint)
        if not checkpoint.cancelled() and checkpoint.exception() is not None:
            log.warning("wal_checkpoint_failed", error=str(checkpoint.exception()))

    async def _record_postgresql(self, params: dict[str, Any]) -> tuple[bool, int]:
        loop = asyncio.get_running_loop()
        if self._loop is None or self._loop.is_closed():
            self._discard()
            self._loop = loop
            self._slots = asyncio.Semaphore(self.max_connections)
        if loop is not self._loop:
            return await self.in_thread(record_request, self.engine, *params.values())
        async with self._slots:
            connection = self._idle.pop() if self._idle else await psycopg.AsyncConnection.connect(
                _libpq_url(self.engine), autocommit=True, options="-c synchronous_commit=off")
            try:
                cursor = await connection.execute(postgresql_paramstyle(RECORD_AND_COUNT), params)
                row = await cursor.fetchone()
            except BaseException:
                await connection.close()  # a connection in an unknown state is not reused
                raise
            self._idle.append(connection)
        count = row[0] if row is not None else None
        return count is not None, count or 0

    def _discard(self) -> None:
        """Forget the idle connections (closed at the socket: their loop may be gone)."""
        for connection in self._idle:
            connection.pgconn.finish()
        self._idle.clear()

    @property
    def connections(self) -> int:
        """How many database connections the recorder holds of its own."""
        return len(self._idle) + (self._inline is not None)

    async def aclose(self) -> None:
        """Close every connection (the app's lifespan calls this at shutdown)."""
        if self._loop is asyncio.get_running_loop():
            while self._idle:
                await self._idle.pop().close()
        self.close()

    def close(self) -> None:
        self._discard()
        if self._inline is not None:
            self._inline.close()
            self._inline = None


def _libpq_url(engine: Engine) -> str:
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
