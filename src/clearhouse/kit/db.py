"""Database engines, the transaction boundary, and the few dialect-specific bulk paths.

Everything SQLite- or PostgreSQL-specific outside the migrations lives here, so the
rest of the code stays portable SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
import random
import re
import select
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import psycopg
import structlog
from sqlalchemy import Engine, Row, Select, Table, and_, create_engine, event, or_, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from clearhouse.kit.writelock import Locked, WriterLock, writer_lock

log = structlog.get_logger(__name__)

T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).resolve().parents[3] / "migrations"


class MissingDatabase(ValueError):
    """A SQLite file that is not there, given to a command that only works on an existing database."""

    def __init__(self, path: Path):
        super().__init__(f"no SQLite database at {path} (`clearhouse db upgrade` creates it)")
        self.path = path


def make_engine(url: str, *, pool_size: int = 10, durable: bool = True, must_exist: bool = False) -> Engine:
    """An engine with the settings Clearhouse relies on.

    SQLite: WAL, ``synchronous=FULL`` (an acknowledged write survives a power cut),
    foreign keys on, and every transaction opened with ``BEGIN IMMEDIATE`` so writers
    queue on the database lock up front instead of failing on upgrade.

    ``durable=False`` is for bookkeeping that may be lost in a power cut but never
    half-written (request nonces, rate-limit counters): commits do not wait for the
    disk (SQLite ``synchronous=NORMAL`` in WAL mode, PostgreSQL ``synchronous_commit=off``),
    which makes them about ten times cheaper. Never for money.

    ``must_exist``: a SQLite file that is not there is refused (``MissingDatabase``), creating nothing,
    instead of made empty: for the commands that read or change an existing database, where a missing
    file is a mistyped URL (only ``db upgrade``, ``demo`` and ``serve`` create the database).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if not database or database == ":memory:":
            # Each pooled connection would get a database of its own: writes would vanish.
            raise ValueError("an in-memory SQLite database cannot be shared by the server's connections: "
                             "give a file, such as sqlite:///var/clearhouse.db")
        if must_exist and not database.startswith("file:") and not Path(database).exists():
            raise MissingDatabase(Path(database))
        try:
            if not database.startswith("file:"):  # a URI (?uri=true) names its file in its own way
                Path(database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"cannot create the SQLite database's folder {Path(database).parent}: "
                             f"{error.strerror or error}") from None
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": BUSY_SECONDS, "factory": SQLiteConnection},
            pool_size=pool_size,
            max_overflow=pool_size,
        )
        writer = writer_lock(database)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            dbapi_connection.writer = writer
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            dbapi_connection.create_function("clearhouse_add", 2, _checked_add, deterministic=True)
            cursor.execute("PRAGMA busy_timeout=60000")
            # 128 MiB of page cache (allocated only as used): the postings index is written
            # at random places, and the 2 MiB default halves write speed past ~0.5M rows.
            cursor.execute("PRAGMA cache_size=-131072")
            cursor.close()

        # BEGIN IMMEDIATE as the dialect's own ``do_begin``, not a "begin" event listener: any
        # connection event listener sends every statement through SQLAlchemy's event dispatch
        # (about 8% of a card payment's CPU). An error here is wrapped as any DBAPI error is.
        engine.dialect.do_begin = _begin_immediate  # type: ignore[method-assign]

        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        connect_args = {} if durable else {"options": "-c synchronous_commit=off"}
        # No pre-ping (a round trip per checkout, ~10% of a payment's CPU): a connection is
        # instead checked at checkout without a round trip (``_refuse_closed_connection``).
        engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, connect_args=connect_args)
        event.listen(engine, "checkout", _refuse_closed_connection)
        return engine
    raise ValueError(f"unsupported database: {parsed.get_backend_name()} (use sqlite or postgresql)")


def _begin_immediate(dbapi_connection: Any) -> None:
    """``make_engine``'s SQLite transactions: queue for the database's writer lock, then ``BEGIN IMMEDIATE``."""
    dbapi_connection.begin_write()


BUSY_SECONDS = 60
"""How long an SQLite writer waits for the database's write lock before "database is locked"."""


class SQLiteConnection(sqlite3.Connection):
    """``make_engine``'s SQLite connections: a write transaction first queues on the
    database's ``WriterLock`` (see ``kit.writelock``), then takes SQLite's lock with
    ``BEGIN IMMEDIATE``; its COMMIT or ROLLBACK (or closing the connection) lets the
    next writer in."""

    writer: WriterLock | None = None
    busy_seconds: float = BUSY_SECONDS
    _queued = False

    def __init__(self, database: Any, *args: Any, **kwargs: Any) -> None:
        _create_private(database, uri=bool(kwargs.get("uri") or (len(args) > 6 and args[6])))
        super().__init__(database, *args, **kwargs)

    def queue_for_writing(self, *, wait: bool = True) -> None:
        """Wait for this database's turn to write (``sqlite3.OperationalError`` "database is
        locked" after ``busy_seconds``, or at once without ``wait``)."""
        if self.writer is None or self._queued:
            return
        try:
            self._queued = self.writer.acquire(self.busy_seconds, blocking=wait)
        except Locked:
            raise sqlite3.OperationalError("database is locked") from None

    def leave_queue(self) -> None:
        if self._queued:
            self._queued = False
            self.writer.release()  # type: ignore[union-attr]

    def begin_write(self, *, wait: bool = True) -> None:
        """Queue, then ``BEGIN IMMEDIATE``."""
        self.queue_for_writing(wait=wait)
        try:
            self.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.leave_queue()
            raise

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.leave_queue()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.leave_queue()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.leave_queue()

    def __del__(self) -> None:  # dropped without close (SQLite rolls back): never keep the queue
        self.leave_queue()


def _create_private(database: Any, *, uri: bool) -> None:
    """Make a database file that is not there yet with mode 0600 before SQLite opens it, since
    SQLite would make it 0644 (less the umask). Its ``-wal`` and ``-shm`` files take the
    database file's mode, so they are 0600 too. An existing file keeps its mode."""
    if not isinstance(database, str | os.PathLike):
        return
    name = os.fsdecode(database)
    if uri or not name or name == ":memory:" or name.startswith("file:"):
        return
    try:
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:
        return  # there already, or not creatable: SQLite opens it or says why not


def _refuse_closed_connection(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """A pooled PostgreSQL connection the server has closed (restart, ``pg_terminate_backend``,
    idle timeout) is thrown away at checkout, and the pool hands out another: a request never
    meets it. An idle connection is sent nothing by the server unless it is being closed
    (the server's last words, then end of file), so a readable socket means a dead connection;
    seeing that is one ``poll`` of the socket, not a round trip. A connection cut without a
    word (a network failure) still fails the one request that meets it."""
    try:
        closed = dbapi_connection.closed or _readable(dbapi_connection.pgconn.socket)
    except psycopg.Error:  # no socket any more
        closed = True
    if closed:
        raise DisconnectionError("the server closed this connection")


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


def is_postgresql(session_or_engine: Session | Engine) -> bool:
    bind = session_or_engine.get_bind() if isinstance(session_or_engine, Session) else session_or_engine
    return bind.dialect.name == "postgresql"


_NAMED_PARAMETER = re.compile(r"(?<!:):(\w+)")
"""A portable ``:name`` parameter, as ``text()`` takes them (not a ``::type`` cast)."""


class WrittenRow(dict):
    """A row's columns as a statement just wrote them, read like a fetched row (``row.status``):
    for hot paths that render what they wrote instead of reading it back."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@functools.cache
def postgresql_paramstyle(sql: str) -> str:
    """``:name`` parameters as psycopg's ``%(name)s``."""
    return _NAMED_PARAMETER.sub(r"%(\1)s", sql)


@functools.cache
def numbered_paramstyle(sql: str) -> tuple[str, tuple[str, ...]]:
    """``:name`` parameters as asyncpg's ``$1, $2, ...``, and the names in that order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    return _NAMED_PARAMETER.sub(number, sql), tuple(names)


class RawCursor:
    """Statements on the driver's own cursor, for the few hot paths (one per request) where
    SQLAlchemy's per-statement cost (~60 us) is most of the work. SQL is written once with
    ``:name`` parameters and must stay portable; datetimes are passed as aware UTC values."""

    def __init__(self, cursor: Any, postgresql: bool):
        self.cursor = cursor
        self.postgresql = postgresql

    def _run(self, sql: str, params: dict[str, Any]) -> Any:
        if self.postgresql:
            self.cursor.execute(postgresql_paramstyle(sql), params)
        else:
            # SQLite stores UTC datetimes as naive ISO text, as kit.types.UTCDateTime does.
            self.cursor.execute(sql, {k: _sqlite_value(v) for k, v in params.items()})
        return self.cursor

    def rowcount(self, sql: str, params: dict[str, Any]) -> int:
        return self._run(sql, params).rowcount

    def scalar(self, sql: str, params: dict[str, Any]) -> Any:
        row = self._run(sql, params).fetchone()
        return row[0] if row is not None else None


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


@contextmanager
def raw_transaction(engine: Engine) -> Iterator[RawCursor]:
    """One transaction on a pooled driver connection (see ``RawCursor``); commits on success.

    On PostgreSQL the connection is in autocommit for the block, so give it ONE statement
    that does all the work (one network round trip instead of four); on SQLite the block's
    statements run inside ``BEGIN IMMEDIATE`` ... ``COMMIT``. A connection the server
    dropped is thrown away and the block is not retried: the caller sees the error.
    """
    connection = engine.raw_connection()
    postgresql = engine.dialect.name == "postgresql"
    try:
        cursor = connection.cursor()
        if postgresql:
            connection.driver_connection.autocommit = True
            try:
                yield RawCursor(cursor, postgresql)
            finally:
                connection.driver_connection.autocommit = False
            return
        driver = connection.driver_connection
        driver.begin_write()  # the same write-lock-first rule as make_engine
        try:
            yield RawCursor(cursor, postgresql)
        except BaseException:
            driver.rollback()
            raise
        driver.commit()
    except DBAPIError:
        raise
    except Exception as error:
        if postgresql and type(error).__module__.startswith("psycopg") and connection.driver_connection.closed:
            connection.invalidate()
        raise
    finally:
        connection.close()


_DROPPED = (asyncpg.exceptions.InterfaceError, asyncpg.exceptions.PostgresConnectionError,
            asyncpg.exceptions.OperatorInterventionError, asyncpg.exceptions.InternalClientError, ConnectionError)
"""What asyncpg raises on a connection the server has closed (or is closing); an idle one whose
protocol took the server's termination notice answers the next query with InternalClientError
("cannot switch to state ...")."""


class LoopWriter:
    """A short write made for every request (the nonce of a signed request), from the event
    loop, where it costs the least (``clearhouse bench auth``): a hop to a worker thread and
    back costs about as much as the write itself, and most of the p99. Bookkeeping only,
    never money: give it the ``make_engine(durable=False)`` engine, and its own PostgreSQL
    connections commit the same way (``synchronous_commit=off``).

    - ``scalar(sql, params)``, PostgreSQL: the one statement on an asyncpg connection
      (autocommit), so the loop waits on the socket, not on a thread; at most ``connections``
      at once. asyncpg, not psycopg as everywhere else: it spends half the CPU per statement
      (0.045 against 0.09 ms here). It takes parameter types from the server, so a parameter
      whose type the statement does not fix (one in a SELECT list) needs a CAST. Connections
      belong to the loop that opened them: when another loop (a test client's) calls, the
      write goes the thread way instead (psycopg, as ``raw_transaction``).
    - ``run(work, params)``, SQLite: no network, so ``work`` runs inline on a connection of its
      own that never waits for the database lock (``busy_timeout=0``); when another writer
      holds the lock, it goes the thread way, where waiting is harmless. Its commits never
      checkpoint the WAL (that waits for the disk); a worker thread does, every
      ``CHECKPOINT_EVERY`` commits.

    Either method works on either database; what cannot go the fast way goes through
    ``raw_transaction`` in ``in_thread``.
    """

    # A checkpoint slows the requests beside it (its sync of the database file stalls the loop's
    # writes to the WAL): every 500 commits that was about 1% of requests and 0.07 ms on the auth
    # bench's p99; every 2,000 fewer of them (docs/benchmarks.md, auth). Each commit adds about 5 pages to the
    # WAL, so it grows to about 40 MB between checkpoints (reused, not grown, after each).
    CHECKPOINT_EVERY = 2000

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
        self._idle: list[asyncpg.Connection] = []  # idle connections
        self._slots = asyncio.Semaphore(connections)  # at most this many open (PostgreSQL)

    async def scalar(self, sql: str, params: dict[str, Any]) -> Any:
        """One statement (``:name`` parameters) committed on its own; its first column, or None."""
        if self.postgresql:
            return await self._scalar_postgresql(sql, params)
        return await self.run(_scalar, {"sql": sql, "params": params})

    async def run(self, work: Callable[[RawCursor, dict[str, Any]], T], params: dict[str, Any]) -> T:
        """``work(cursor, params)`` in one transaction (on PostgreSQL: in autocommit, so give it
        one statement)."""
        if not self.postgresql and self._inline_lock.acquire(blocking=False):
            try:
                answer = self._run_inline(work, params)
            finally:
                self._inline_lock.release()
            if answer is not _LOCKED:
                self._inline_commits += 1
                if self._inline_commits % self.CHECKPOINT_EVERY == 0:
                    checkpoint = asyncio.ensure_future(self.in_thread(self._checkpoint))
                    self._checkpoints.add(checkpoint)
                    checkpoint.add_done_callback(self._checkpoint_done)
                return answer
        return await self.in_thread(_in_transaction, self.engine, work, params)

    def _run_inline(self, work: Callable[[RawCursor, dict[str, Any]], T], params: dict[str, Any]) -> Any:
        """``_LOCKED`` when the database is locked by another writer (nothing written)."""
        if self._inline is None:
            pooled = self.engine.raw_connection()
            connection = pooled.driver_connection
            pooled.detach()  # ours for good, with make_engine's settings
            connection.execute("PRAGMA busy_timeout=0")
            connection.execute("PRAGMA wal_autocheckpoint=0")
            self._inline = connection
        cursor = RawCursor(self._inline.cursor(), postgresql=False)
        try:
            self._inline.begin_write(wait=False)
        except sqlite3.OperationalError:
            return _LOCKED
        try:
            answer = work(cursor, params)
            self._inline.commit()
        except sqlite3.OperationalError:
            self._inline.rollback()
            return _LOCKED
        except BaseException:
            self._inline.rollback()
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

    async def _scalar_postgresql(self, sql: str, params: dict[str, Any]) -> Any:
        loop = asyncio.get_running_loop()
        if self._loop is None or self._loop.is_closed():
            self._discard()
            self._loop = loop
            self._slots = asyncio.Semaphore(self.max_connections)
        if loop is not self._loop:
            return await self.in_thread(_in_transaction, self.engine, _scalar, {"sql": sql, "params": params})
        numbered, names = numbered_paramstyle(sql)
        values = [params[name] for name in names]
        async with self._slots:
            for first_try in (True, False):
                connection = self._take_idle()
                reused = connection is not None
                if connection is None:
                    connection = await asyncpg.connect(_libpq_url(self.engine),
                                                       server_settings={"synchronous_commit": "off"})
                try:
                    # asyncpg prepares each statement on a connection once and keeps it
                    # (its statement cache): half psycopg's CPU per statement, the part of this
                    # write that overlaps nothing.
                    answer = await connection.fetchval(numbered, *values)
                except _DROPPED as error:
                    connection.terminate()
                    if reused and first_try:
                        # The server dropped it while it sat idle (a restart, a failover, a proxy's
                        # idle timeout, pg_terminate_backend): so were its idle peers, most likely.
                        # Once more on a new connection, as pool_pre_ping does for the engine's.
                        log.warning("idle_connection_dropped", error=type(error).__name__)
                        self._discard()
                        continue
                    raise
                except BaseException:
                    connection.terminate()  # a connection in an unknown state is not reused
                    raise
                self._idle.append(connection)
                return answer
        raise AssertionError("unreachable")  # pragma: no cover

    def _take_idle(self) -> Any:
        """An idle connection still open, or None; the closed ones are dropped."""
        while self._idle:
            connection = self._idle.pop()
            if not connection.is_closed():
                return connection
            connection.terminate()
        return None

    def _discard(self) -> None:
        """Forget the idle connections (closed at the socket: their loop may be gone)."""
        for connection in self._idle:
            with contextlib.suppress(RuntimeError):  # its loop is closed: the socket goes with it
                connection.terminate()
        self._idle.clear()

    @property
    def connections(self) -> int:
        """How many database connections the writer holds of its own."""
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


_LOCKED = object()


def _scalar(cursor: RawCursor, statement: dict[str, Any]) -> Any:
    return cursor.scalar(statement["sql"], statement["params"])


def _in_transaction(engine: Engine, work: Callable[[RawCursor, dict[str, Any]], T], params: dict[str, Any]) -> T:
    with raw_transaction(engine) as cursor:
        return work(cursor, params)


def _libpq_url(engine: Engine) -> str:
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def read_snapshot(session: Session) -> None:
    """Make the rest of this transaction read one consistent snapshot.

    Call first in the transaction. PostgreSQL: REPEATABLE READ, READ ONLY. SQLite:
    already so, since the transaction holds the database's write lock.
    """
    if is_postgresql(session):
        session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))


def one_of(session: Session, column: Any, values: Sequence[Any]) -> Any:
    """``column IN (values)``; on PostgreSQL ``column = ANY(:array)``, one parameter however
    many values, so thousands of ids cost neither compile time nor bind-parameter limits."""
    if is_postgresql(session):
        from sqlalchemy import any_, bindparam
        from sqlalchemy.dialects.postgresql import ARRAY

        return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(values)


_RETRYABLE_PG = {"40001", "40P01"}  # serialization failure, deadlock detected


def _pause_or_raise(error: DBAPIError, attempt: int, attempts: int, retry_integrity: bool) -> None:
    """Re-raise ``error`` (from inside its ``except``) unless the transaction should run again;
    then wait a little, more after each attempt, so racing callers do not collide again."""
    if attempt == attempts or not _retryable(error, retry_integrity):
        raise error
    log.info("transaction_retry", attempt=attempt, error=type(error.orig).__name__)
    time.sleep(random.uniform(0, 0.005 * attempt))


def _retryable(error: DBAPIError, retry_integrity: bool) -> bool:
    if isinstance(error, IntegrityError):
        return retry_integrity
    sqlstate = getattr(error.orig, "sqlstate", None)
    if sqlstate in _RETRYABLE_PG:
        return True
    return isinstance(error, OperationalError) and "database is locked" in str(error.orig)


def transact(
    engine: Engine,
    work: Callable[[Session], T],
    *,
    attempts: int = 8,
    retry_integrity: bool = False,
) -> T:
    """Run ``work`` in one transaction and commit once, at this boundary.

    Services only flush; this is where a request or a task commits. A deadlock or
    serialization failure (and, with ``retry_integrity``, a unique-constraint race such
    as two requests creating the same idempotent id) rolls back and runs ``work``
    again, so the caller never sees it.
    """
    for attempt in range(1, attempts + 1):
        with Session(engine, expire_on_commit=False, autoflush=False) as session:
            try:
                with session.begin():
                    result = work(session)
            except DBAPIError as error:
                _run_actions(_actions(session, "after_rollback"))
                _pause_or_raise(error, attempt, attempts, retry_integrity)
                continue
            except BaseException:
                _run_actions(_actions(session, "after_rollback"))
                raise
            if session.info:
                _run_actions(_actions(session, "after_commit"))
            return result
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- group commit


def after_commit(session: Session, action: Callable[[], Any]) -> None:
    """Run ``action`` once the transaction ``session`` works in has committed, durably: for
    what must never be believed before (a cache of rows "seen committed", a signal to another
    process). Under ``group_transact`` that is after the whole group's COMMIT; an action whose
    work is rolled back never runs. ``transact`` and ``group_transact`` both honour it."""
    session.info.setdefault("after_commit", []).append(action)


def after_rollback(session: Session, action: Callable[[], Any]) -> None:
    """Run ``action`` if the work ``session`` took part in ends up not committed (it raised,
    or, under ``group_transact``, its group's COMMIT failed): to forget what the work
    believed of rows it saw but that were never committed."""
    session.info.setdefault("after_rollback", []).append(action)


def _actions(session: Session, kind: str) -> list[Callable[[], Any]]:
    return session.info.pop(kind, None) or []


def _run_actions(actions: list[Callable[[], Any]]) -> None:
    for action in actions:
        try:
            action()
        except Exception:  # the transaction is committed: its caller must hear that, not this
            log.exception("after_commit_action_failed", action=getattr(action, "__qualname__", repr(action)))


class _Unit:
    """One caller's work in a group, and where its outcome is left for it."""

    __slots__ = ("work", "context", "ready", "lead", "result", "error", "on_commit", "on_rollback")

    def __init__(self, work: Callable[[Session], Any]):
        self.work = work
        self.context = contextvars.copy_context()  # the caller's (its log context), wherever it runs
        self.ready = threading.Event()
        self.lead = False  # set with ``ready`` when this caller is to run the next group
        self.result: Any = None
        self.error: BaseException | None = None
        self.on_commit: list[Callable[[], Any]] = []
        self.on_rollback: list[Callable[[], Any]] = []

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class GroupCommit:
    """Durable commits shared by the concurrent transactions of one process (group commit).

    A durable COMMIT waits for the disk (an ``fsync`` of a few ms). On SQLite it holds the
    database's only write lock meanwhile, on PostgreSQL every lock the transaction took
    (the ledger's chain head), so one transaction at a time passes the disk whatever the
    CPU. Here many callers' units of work run one after another inside ONE transaction,
    each in its own SAVEPOINT, and one COMMIT makes them all durable:

    - a unit that raises rolls back its savepoint only and gets its exception; the others
      commit. A group of one runs without a savepoint (its failure rolls the transaction back);
    - a unit's caller returns only after the COMMIT returned; ``after_commit`` actions run
      then, never before;
    - leader/follower, as PostgreSQL and InnoDB do: a caller that finds no group running
      runs its own unit at once (no timer, a lone unit is never delayed); callers arriving
      meanwhile queue, and when the group has committed the first of them leads the next
      group, made of everyone who queued (at most ``max_group``).

    One per engine and process (``group_transact`` finds it). The units of a group share
    one connection, so they run serially: this trades a little latency under load for one
    disk wait per group instead of per transaction.
    """

    def __init__(self, engine: Engine, *, max_group: int = 64):
        # A weak reference: ``_GROUPS`` is keyed weakly by the engine, and a value holding its
        # key strongly would keep every engine (its pool, its statement cache) alive for good.
        self._engine = weakref.ref(engine)
        self.max_group = max_group
        self._lock = threading.Lock()
        self._queue: deque[_Unit] = deque()
        self._leading = False
        self.groups = 0
        """Groups committed or rolled back so far (units / groups: the mean group size)."""
        self.units = 0

    @property
    def engine(self) -> Engine:
        engine = self._engine()
        if engine is None:
            raise RuntimeError("the engine of this GroupCommit was garbage-collected")
        return engine

    def transact(self, work: Callable[[Session], T], *, attempts: int = 8, retry_integrity: bool = False) -> T:
        """``transact``'s contract (retries included, per unit), the commit shared with others.

        Called from inside a unit (a transaction within a transaction), it is plain ``transact``:
        the group it would wait for is the one running it."""
        if getattr(_running_group, "active", False):
            return transact(self.engine, work, attempts=attempts, retry_integrity=retry_integrity)
        for attempt in range(1, attempts + 1):
            try:
                return self._submit(work)
            except DBAPIError as error:
                _pause_or_raise(error, attempt, attempts, retry_integrity)
        raise AssertionError("unreachable")

    def _submit(self, work: Callable[[Session], T]) -> T:
        unit = _Unit(work)
        with self._lock:
            self._queue.append(unit)
            lead = not self._leading
            self._leading = True
        if not lead:
            unit.ready.wait()
            if not unit.lead:
                return unit.outcome()
        self._lead()
        return unit.outcome()

    def _lead(self) -> None:
        """Run the queued units (this caller's first) as one group, then hand over."""
        with self._lock:
            group = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_group))]
        try:
            self._run(group)
        except BaseException as error:  # the group's COMMIT (or the connection) failed: nobody committed
            for unit in group:
                if unit.error is None:
                    unit.error = error
        finally:
            with self._lock:
                self.groups += 1
                self.units += len(group)
                if self._queue:
                    successor = self._queue[0]
                    successor.lead = True
                    successor.ready.set()
                else:
                    self._leading = False
            for unit in group[1:]:
                unit.ready.set()
        for unit in group:
            _run_actions(unit.on_commit if unit.error is None else unit.on_rollback)

    def _run(self, group: list[_Unit]) -> None:
        # A group of one needs no savepoint: its failure rolls back the transaction, which is its own.
        mode = "rollback_only" if len(group) == 1 else "create_savepoint"
        with self.engine.connect() as connection:
            transaction = connection.begin()
            _running_group.active = True
            try:
                for unit in group:
                    with Session(bind=connection, expire_on_commit=False, autoflush=False,
                                 join_transaction_mode=mode) as session:
                        try:
                            with session.begin():
                                unit.result = unit.context.run(unit.work, session)
                        except Exception as error:
                            unit.error = error
                        if session.info:
                            unit.on_commit = _actions(session, "after_commit")
                            unit.on_rollback = _actions(session, "after_rollback")
                if transaction.is_active:
                    transaction.commit()
            except BaseException:
                transaction.rollback()  # also when the failed commit left it inactive: end it on the server
                raise
            finally:
                _running_group.active = False


_running_group = threading.local()


_GROUPS: weakref.WeakKeyDictionary[Engine, GroupCommit] = weakref.WeakKeyDictionary()
_GROUPS_LOCK = threading.Lock()


def group_commit(engine: Engine) -> GroupCommit:
    """The engine's ``GroupCommit`` in this process."""
    committer = _GROUPS.get(engine)
    if committer is None:
        with _GROUPS_LOCK:
            committer = _GROUPS.get(engine)
            if committer is None:
                committer = _GROUPS[engine] = GroupCommit(engine)
    return committer


def group_transact(engine: Engine, work: Callable[[Session], T], *, attempts: int = 8,
                   retry_integrity: bool = False) -> T:
    """``transact`` whose durable COMMIT is shared with the process's concurrent callers
    (``GroupCommit``): for hot request paths whose commits queue on the disk."""
    return group_commit(engine).transact(work, attempts=attempts, retry_integrity=retry_integrity)


def _processors(session: Session, table: Table, columns: Sequence[str]) -> list[Any]:
    dialect = session.get_bind().dialect
    return [table.c[name].type._cached_bind_processor(dialect) for name in columns]


def _process(rows: list[tuple], processors: list[Any]) -> list[tuple]:
    """Apply bind processing column by column, once per distinct value.

    Batches repeat the same few values in processed columns (one timestamp per batch,
    booleans), so a memo turns a per-row call into a dictionary lookup.
    """
    columns = list(zip(*rows, strict=True))
    for index, processor in enumerate(processors):
        if processor is None:
            continue
        memo: dict[Any, Any] = {None: None}

        def process(value: Any, memo: dict[Any, Any] = memo, processor: Any = processor) -> Any:
            try:
                return memo[value]
            except KeyError:
                result = memo[value] = processor(value)
                return result

        columns[index] = tuple(map(process, columns[index]))
    return list(zip(*columns, strict=True))


@contextmanager
def _driver_errors(session: Session, statement: str) -> Iterator[Any]:
    """Run raw driver calls, turning driver exceptions into SQLAlchemy's, so ``transact``
    classifies a unique violation or a deadlock in a bulk write like any other."""
    dbapi = session.connection().connection.driver_connection
    dialect = session.get_bind().dialect
    try:
        yield dbapi
    except dialect.loaded_dbapi.Error as error:
        raise DBAPIError.instance(statement, None, error, dialect.loaded_dbapi.Error, dialect=dialect) from error


def bulk_insert(session: Session, table: Table, columns: Sequence[str], rows: list[tuple]) -> None:
    """Insert many rows fast: ``COPY`` on PostgreSQL, multi-row ``INSERT``s on SQLite (``sqlite_values``).

    Values pass through each column type's bind processing, so the stored form is
    exactly what the ORM would have written.
    """
    if not rows:
        return
    processors = _processors(session, table, columns)
    if any(processors):
        rows = _process(rows, processors)
    column_list = ", ".join(columns)
    if is_postgresql(session):
        statement = f"COPY {table.name} ({column_list}) FROM STDIN"
        with _driver_errors(session, statement) as dbapi, dbapi.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
    else:
        statement = f"INSERT INTO {table.name} ({column_list}) VALUES"
        with _driver_errors(session, statement) as dbapi:
            sqlite_values(dbapi, statement + " {values}", len(columns), rows)


SQLITE_ROWS_PER_STATEMENT = 1000


def sqlite_values(dbapi: Any, statement: str, width: int, rows: Sequence[tuple], leading: Sequence[Any] = ()) -> int:
    """Run ``statement`` over many rows of ``width`` values, a thousand rows at a time (fewer
    when SQLite's parameter limit says so): ``{values}`` in it stands for the rows' multi-row
    ``VALUES`` list, ``(?, ?), (?, ?), ...``, and ``leading`` are the values of the ``?`` the
    statement has before it (one value for every row: bound once a statement, not once a
    row). Returns the rows the statements changed.

    One statement per thousand rows opens the table's and its indexes' cursors once, not
    once a row as ``executemany`` does: inserting into the ledger's table ran about 1.45
    times ``executemany``'s rate (docs/benchmarks.md). Each statement succeeds or fails
    whole; the caller's transaction (or savepoint) decides for the batch.
    """
    limit = dbapi.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) - len(leading)
    per_statement = max(1, min(SQLITE_ROWS_PER_STATEMENT, limit // width))
    one_row = f"({', '.join('?' * width)})"
    changed = 0
    cursor = dbapi.cursor()
    try:
        for start in range(0, len(rows), per_statement):
            part = rows[start:start + per_statement]
            values = ", ".join([one_row] * len(part))
            cursor.execute(statement.format(values=values), [*leading, *chain.from_iterable(part)])
            changed += cursor.rowcount
    finally:
        cursor.close()
    return changed


def bulk_increment(
    session: Session, table: Table, key: str, columns: Sequence[str], rows: Iterable[tuple]
) -> None:
    """``UPDATE table SET col = col + delta ... WHERE key = k`` for many keys in one round trip.

    ``rows`` are ``(key, delta_1, ..., delta_n)``; a key given twice gets both deltas.
    PostgreSQL gets a single statement over ``unnest`` arrays; SQLite (in process) an
    ``executemany`` whose additions refuse to pass 2^63-1 (SQLite alone would quietly
    turn the sum into a float).
    """
    summed: dict[Any, list[int]] = {}
    for row in rows:
        total = summed.get(row[0])
        if total is None:
            summed[row[0]] = list(row[1:])
        else:
            for i, delta in enumerate(row[1:]):
                total[i] += delta
    if not summed:
        return
    if is_postgresql(session):
        assignments = ", ".join(f"{c} = t.{c} + v.{c}" for c in columns)
        unnests = ", ".join(["%s::text[]"] + ["%s::bigint[]"] * len(columns))
        names = ", ".join([key, *columns])
        statement = (
            f"UPDATE {table.name} AS t SET {assignments} "
            f"FROM unnest({unnests}) AS v({names}) WHERE t.{key} = v.{key}"
        )
        arrays = [list(summed), *([deltas[i] for deltas in summed.values()] for i in range(len(columns)))]
        with _driver_errors(session, statement) as dbapi, dbapi.cursor() as cursor:
            cursor.execute(statement, arrays)
    else:
        assignments = ", ".join(f"{c} = clearhouse_add({c}, ?)" for c in columns)
        statement = f"UPDATE {table.name} SET {assignments} WHERE {key} = ?"
        with _driver_errors(session, statement) as dbapi:
            cursor = dbapi.cursor()
            try:
                cursor.executemany(statement, [(*deltas, k) for k, deltas in summed.items()])
            finally:
                cursor.close()


def _checked_add(value: int, delta: int) -> int:
    total = value + delta
    if not -(2**63) <= total <= 2**63 - 1:
        raise OverflowError("integer column would pass 64 bits")
    return total


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema to ``revision``: the only way the schema is made."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def head_revision() -> str:
    """The newest migration this code ships."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def newest_first(session: Session, query: Select[Any], table: Table, starting_after: str | None, *, limit: int,
                 scope: Any = None) -> tuple[list[Row[Any]], bool]:
    """A page of ``query``'s rows, newest first by (``created_at``, ``id``), after the row ``starting_after``;
    and whether more follow (one row more than ``limit`` is read to know).

    Ids are not always in time order (an id derived from an ``Idempotency-Key`` is a hash), so a list
    that promises newest first orders by the creation time, the id breaking ties. ``scope`` (the
    caller's tenant condition, or a list of them, as ``Principal.listing`` gives) also bounds the cursor:
    another tenant's id is as unknown as a made-up one, so the answer says nothing about it. A
    ``starting_after`` that names no row in scope gives an empty page."""
    query = query.order_by(table.c.created_at.desc(), table.c.id.desc()).limit(limit + 1)
    if starting_after:
        cursor = table.select().with_only_columns(table.c.created_at).where(table.c.id == starting_after)
        conditions = scope if isinstance(scope, list) else ([] if scope is None else [scope])
        if conditions:
            cursor = cursor.where(*conditions)
        created_at = session.execute(cursor).scalar()
        if created_at is None:
            return [], False
        query = query.where(or_(table.c.created_at < created_at,
                                and_(table.c.created_at == created_at, table.c.id < starting_after)))
    rows = list(session.execute(query))
    return rows[:limit], len(rows) > limit
