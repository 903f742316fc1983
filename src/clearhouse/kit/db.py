"""Database engines, the transaction boundary, and the few dialect-specific bulk paths.

Everything SQLite- or PostgreSQL-specific outside the migrations lives here, so the
rest of the code stays portable SQL.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog
from sqlalchemy import Engine, Table, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

log = structlog.get_logger(__name__)

T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).resolve().parents[3] / "migrations"


def make_engine(url: str, *, pool_size: int = 10, durable: bool = True) -> Engine:
    """An engine with the settings Clearhouse relies on.

    SQLite: WAL, ``synchronous=FULL`` (an acknowledged write survives a power cut),
    foreign keys on, and every transaction opened with ``BEGIN IMMEDIATE`` so writers
    queue on the database lock up front instead of failing on upgrade.

    ``durable=False`` is for bookkeeping that may be lost in a power cut but never
    half-written (request nonces, rate-limit counters): commits do not wait for the
    disk (SQLite ``synchronous=NORMAL`` in WAL mode, PostgreSQL ``synchronous_commit=off``),
    which makes them about ten times cheaper. Never for money.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 60},
            pool_size=pool_size,
            max_overflow=pool_size,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
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

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        connect_args = {} if durable else {"options": "-c synchronous_commit=off"}
        # The bookkeeping engine serves one write per request: a pre-ping would double its
        # round trips. A connection the server dropped fails one request and is replaced.
        return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=durable,
                             connect_args=connect_args)
    raise ValueError(f"unsupported database: {parsed.get_backend_name()} (use sqlite or postgresql)")


def is_postgresql(session_or_engine: Session | Engine) -> bool:
    bind = session_or_engine.get_bind() if isinstance(session_or_engine, Session) else session_or_engine
    return bind.dialect.name == "postgresql"


_PG_SQL: dict[str, str] = {}


def postgresql_paramstyle(sql: str) -> str:
    """``:name`` parameters (portable, as ``text()`` takes them) as psycopg's ``%(name)s``."""
    converted = _PG_SQL.get(sql)
    if converted is None:
        converted = _PG_SQL[sql] = re.sub(r"(?<!:):(\w+)", r"%(\1)s", sql)
    return converted


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
        cursor.execute("BEGIN IMMEDIATE")  # the same write-lock-first rule as make_engine
        try:
            yield RawCursor(cursor, postgresql)
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")
    except DBAPIError:
        raise
    except Exception as error:
        if postgresql and type(error).__module__.startswith("psycopg") and connection.driver_connection.closed:
            connection.invalidate()
        raise
    finally:
        connection.close()


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
                    return work(session)
            except DBAPIError as error:
                if attempt == attempts or not _retryable(error, retry_integrity):
                    raise
                log.info("transaction_retry", attempt=attempt, error=type(error.orig).__name__)
                time.sleep(random.uniform(0, 0.005 * attempt))
    raise AssertionError("unreachable")


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
    """Insert many rows fast: ``COPY`` on PostgreSQL, ``executemany`` on SQLite.

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
        statement = f"INSERT INTO {table.name} ({column_list}) VALUES ({', '.join('?' for _ in columns)})"
        with _driver_errors(session, statement) as dbapi:
            cursor = dbapi.cursor()
            try:
                cursor.executemany(statement, rows)
            finally:
                cursor.close()


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
