"""kit.db: engine settings, the one-commit transaction boundary, and the bulk paths.

Runs on every backend in ``CLEARHOUSE_TEST_BACKENDS`` against a real database. Scratch
tables get a unique name per test and are dropped afterwards, so concurrent runs
against the same PostgreSQL database do not collide.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Engine,
    MetaData,
    String,
    Table,
    Text,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from clearhouse.kit.db import (
    GroupCommit,
    LoopWriter,
    _readable,
    after_commit,
    after_rollback,
    bulk_increment,
    bulk_insert,
    current_revision,
    group_commit,
    group_transact,
    head_revision,
    is_postgresql,
    make_engine,
    numbered_paramstyle,
    transact,
    upgrade,
)
from clearhouse.kit.types import UTCDateTime
from clearhouse.ledger.models import accounts

COLUMNS = ("id", "amount", "hits", "flag", "at", "note")


@pytest.fixture
def scratch(engine: Engine):
    """A table of our own: id text key, two BIGINT counters, a boolean, a UTC time, text."""
    name = f"kit_scratch_{os.getpid()}_{os.urandom(4).hex()}"
    table = Table(
        name,
        MetaData(),
        Column("id", String(64), primary_key=True),
        Column("amount", BigInteger, nullable=False),
        Column("hits", BigInteger, nullable=False),
        Column("flag", Boolean, nullable=False),
        Column("at", UTCDateTime, nullable=True),
        Column("note", Text, nullable=True),
    )
    table.create(engine)
    try:
        yield table
    finally:
        table.drop(engine, checkfirst=True)


def rows_of(engine: Engine, table: Table) -> dict[str, tuple]:
    with Session(engine) as session:
        return {r.id: tuple(r)[1:] for r in session.execute(select(table).order_by(table.c.id))}


def count_events(engine: Engine) -> dict[str, int]:
    counts = {"commit": 0, "rollback": 0}

    def on_commit(_connection):
        counts["commit"] += 1

    def on_rollback(_connection):
        counts["rollback"] += 1

    event.listen(engine, "commit", on_commit)
    event.listen(engine, "rollback", on_rollback)
    return counts


T0 = datetime(2026, 11, 23, 5, 25, 56, 123456, tzinfo=UTC)


# ---------------------------------------------------------------------------------- engines


class TestSqliteEngine:
    def test_pragmas_on_every_connection(self, tmp_path):
        engine = make_engine(f"sqlite:///{tmp_path}/a/b/clearhouse.db")
        try:
            assert (tmp_path / "a" / "b").is_dir()  # the parent folder is made
            # Raw pooled connections: the connect hook runs, but no BEGIN IMMEDIATE is issued,
            # so three can be open at once.
            connections = [engine.raw_connection() for _ in range(3)]
            try:
                for connection in connections:
                    cursor = connection.cursor()
                    try:

                        def pragma(name: str, cursor=cursor):
                            return cursor.execute(f"PRAGMA {name}").fetchone()[0]

                        assert pragma("journal_mode") == "wal"
                        assert pragma("synchronous") == 2  # FULL
                        assert pragma("foreign_keys") == 1
                        assert pragma("busy_timeout") == 60000
                    finally:
                        cursor.close()
            finally:
                for connection in connections:
                    connection.close()
        finally:
            engine.dispose()
        # WAL is a property of the file: another client sees it too.
        raw = sqlite3.connect(tmp_path / "a" / "b" / "clearhouse.db")
        try:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            raw.close()

    def test_foreign_keys_are_enforced(self, tmp_path):
        engine = make_engine(f"sqlite:///{tmp_path}/fk.db")
        try:
            with engine.begin() as connection:
                connection.exec_driver_sql("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
                connection.exec_driver_sql(
                    "CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id))"
                )
            with pytest.raises(IntegrityError), engine.begin() as connection:
                connection.exec_driver_sql("INSERT INTO child (id, parent_id) VALUES (1, 42)")
        finally:
            engine.dispose()

    def test_transactions_take_the_write_lock_up_front(self, tmp_path):
        """BEGIN IMMEDIATE: even a read-only transaction holds the write lock from its start."""
        path = tmp_path / "lock.db"
        engine = make_engine(f"sqlite:///{path}")
        try:
            with engine.begin() as connection:
                connection.exec_driver_sql("SELECT 1").scalar()
                other = sqlite3.connect(path, timeout=0, isolation_level=None)
                try:
                    with pytest.raises(sqlite3.OperationalError, match="locked"):
                        other.execute("BEGIN IMMEDIATE")
                finally:
                    other.close()
            # Released at commit.
            other = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                other.execute("ROLLBACK")
            finally:
                other.close()
        finally:
            engine.dispose()


class TestEngineUrls:
    def test_plain_postgresql_url_uses_psycopg_and_keeps_the_password(self):
        engine = make_engine("postgresql://clearhouse:p%40ss@127.0.0.1:1/clearhouse")
        try:
            assert engine.url.drivername == "postgresql+psycopg"
            assert engine.url.password == "p@ss"
            assert is_postgresql(engine)
        finally:
            engine.dispose()

    @pytest.mark.parametrize("url", ["mysql://u@localhost/db", "oracle://u@localhost/db"])
    def test_other_databases_are_refused(self, url):
        with pytest.raises(ValueError, match="unsupported database"):
            make_engine(url)

    def test_is_postgresql_matches_the_backend(self, engine, backend):
        assert is_postgresql(engine) == (backend == "postgresql")
        with Session(engine) as session:
            assert is_postgresql(session) == (backend == "postgresql")


class TestMigrations:
    def test_fixture_database_is_at_head(self, engine):
        assert current_revision(engine) == head_revision()

    def test_fresh_sqlite_file_is_empty_until_upgraded_and_upgrade_is_repeatable(self, tmp_path):
        url = f"sqlite:///{tmp_path}/fresh.db"
        engine = make_engine(url)
        try:
            assert current_revision(engine) is None
            upgrade(url)
            assert current_revision(engine) == head_revision()
            upgrade(url)  # nothing to do, no error
            assert current_revision(engine) == head_revision()
            with engine.connect() as connection:
                assert connection.execute(text("SELECT seq, hash FROM ledger_chain")).one() == (
                    0,
                    "0" * 64,
                )
        finally:
            engine.dispose()


# ---------------------------------------------------------------------------------- transact


class TestTransact:
    def test_commits_once_and_returns_the_work_result(self, engine, scratch):
        counts = count_events(engine)

        def work(session: Session) -> str:
            session.execute(insert(scratch).values(id="a", amount=1, hits=0, flag=True))
            session.execute(insert(scratch).values(id="b", amount=2, hits=0, flag=False))
            bulk_insert(session, scratch, COLUMNS, [("c", 3, 0, True, T0, None)])
            return "done"

        assert transact(engine, work) == "done"
        assert counts["commit"] == 1
        assert set(rows_of(engine, scratch)) == {"a", "b", "c"}

    def test_an_error_rolls_everything_back_and_reaches_the_caller(self, engine, scratch):
        counts = count_events(engine)
        calls = []

        def work(session: Session) -> None:
            calls.append(1)
            session.execute(insert(scratch).values(id="a", amount=1, hits=0, flag=True))
            bulk_insert(session, scratch, COLUMNS, [("b", 2, 0, True, None, None)])
            session.flush()
            raise RuntimeError("the business rule said no")

        with pytest.raises(RuntimeError, match="the business rule said no"):
            transact(engine, work)
        assert calls == [1]  # an application error is never retried
        assert counts["commit"] == 0
        assert counts["rollback"] >= 1
        assert rows_of(engine, scratch) == {}

    def test_a_bulk_increment_is_rolled_back_too(self, engine, scratch):
        transact(engine, lambda s: bulk_insert(s, scratch, COLUMNS, [("a", 10, 0, True, None, None)]))

        def work(session: Session) -> None:
            bulk_increment(session, scratch, "id", ("amount",), [("a", 5)])
            raise ValueError("no")

        with pytest.raises(ValueError):
            transact(engine, work)
        assert rows_of(engine, scratch)["a"][0] == 10

    def test_unique_violation_is_not_retried_by_default(self, engine, scratch):
        transact(
            engine,
            lambda s: s.execute(insert(scratch).values(id="dup", amount=1, hits=0, flag=True)),
        )
        calls = []

        def work(session: Session) -> None:
            calls.append(1)
            session.execute(insert(scratch).values(id="dup", amount=2, hits=0, flag=True))

        with pytest.raises(IntegrityError):
            transact(engine, work)
        assert calls == [1]

    def test_unique_violation_is_retried_with_retry_integrity_and_the_first_attempt_leaves_no_trace(
        self, engine, scratch
    ):
        transact(
            engine,
            lambda s: s.execute(insert(scratch).values(id="dup", amount=1, hits=0, flag=True)),
        )
        calls = []

        def work(session: Session) -> int:
            calls.append(1)
            session.execute(insert(scratch).values(id=f"partial-{len(calls)}", amount=0, hits=0, flag=True))
            if len(calls) == 1:
                session.execute(insert(scratch).values(id="dup", amount=2, hits=0, flag=True))
                session.flush()
            return len(calls)

        assert transact(engine, work, retry_integrity=True) == 2
        assert set(rows_of(engine, scratch)) == {"dup", "partial-2"}

    def test_unique_violation_inside_bulk_insert_is_retried_with_retry_integrity(self, engine, scratch):
        transact(
            engine,
            lambda s: s.execute(insert(scratch).values(id="dup", amount=1, hits=0, flag=True)),
        )
        calls = []

        def work(session: Session) -> int:
            calls.append(1)
            if len(calls) == 1:
                bulk_insert(session, scratch, COLUMNS, [("dup", 2, 0, True, None, None)])
            return len(calls)

        assert transact(engine, work, retry_integrity=True) == 2

    def test_retries_stop_after_the_given_attempts(self, engine, scratch):
        transact(
            engine,
            lambda s: s.execute(insert(scratch).values(id="dup", amount=1, hits=0, flag=True)),
        )
        calls = []

        def work(session: Session) -> None:
            calls.append(1)
            session.execute(insert(scratch).values(id="dup", amount=2, hits=0, flag=True))

        with pytest.raises(IntegrityError):
            transact(engine, work, retry_integrity=True, attempts=3)
        assert len(calls) == 3

    def test_deadlock_is_retried_invisibly(self, engine, scratch, backend):
        """Two transactions lock two rows in opposite order; PostgreSQL kills one; it is rerun."""
        if backend != "postgresql":
            pytest.skip("SQLite serializes writers with BEGIN IMMEDIATE: no deadlock to provoke")
        transact(
            engine,
            lambda s: bulk_insert(s, scratch, COLUMNS, [("x", 0, 0, True, None, None), ("y", 0, 0, True, None, None)]),
        )
        barrier = threading.Barrier(2, timeout=30)
        calls = {"xy": 0, "yx": 0}
        errors: list[BaseException] = []

        def lock(session: Session, key: str) -> None:
            session.execute(select(scratch.c.id).where(scratch.c.id == key).with_for_update()).one()

        def worker(order: str) -> None:
            def work(session: Session) -> None:
                calls[order] += 1
                lock(session, order[0])
                if calls[order] == 1:
                    barrier.wait()
                lock(session, order[1])
                bulk_increment(session, scratch, "id", ("amount",), [(order[0], 1), (order[1], 1)])

            try:
                transact(engine, work)
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)

        threads = [threading.Thread(target=worker, args=(o,)) for o in ("xy", "yx")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        # At least one was killed and rerun. A rerun can meet the survivor again (it may take
        # the freed row before the survivor wakes), so either may run more than once: what
        # matters is that no caller saw a deadlock and both increments landed once.
        assert sum(calls.values()) >= 3, calls
        assert {k: v[0] for k, v in rows_of(engine, scratch).items()} == {"x": 2, "y": 2}


# ---------------------------------------------------------------------------------- group commit


def _insert(table: Table, key: str, amount: int = 1):
    def work(session: Session) -> str:
        session.execute(insert(table).values(id=key, amount=amount, hits=0, flag=True))
        return key

    return work


def _statements(engine: Engine) -> list[str]:
    seen: list[str] = []

    def before(_conn, _cursor, statement, _parameters, _context, _executemany):
        seen.append(statement.split()[0].upper())

    event.listen(engine, "before_cursor_execute", before)
    return seen


def _wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def _grouped(engine: Engine, committer: GroupCommit, works: list, on_return=None, **kw) -> dict[int, object]:
    """Run ``works[0]`` as the leader, holding its group open until every other work has
    queued, so works[1:] are certain to run as ONE group; each caller's outcome by index.
    ``on_return(index)`` runs in each caller's thread as soon as its call returned."""
    outcomes: dict[int, object] = {}
    queued = len(works) - 1

    def leader_work(session: Session):
        _wait_until(lambda: len(committer._queue) == queued)
        return works[0](session)

    def call(index: int, work) -> None:
        try:
            outcomes[index] = committer.transact(work, **kw)
        except Exception as error:  # noqa: BLE001 - the outcome under test
            outcomes[index] = error
        if on_return is not None:
            on_return(index)

    leader = threading.Thread(target=call, args=(0, leader_work))
    leader.start()
    _wait_until(lambda: committer._leading)
    others = [threading.Thread(target=call, args=(i, w)) for i, w in enumerate(works) if i]
    for thread in others:
        thread.start()
    for thread in [leader, *others]:
        thread.join(timeout=60)
    return outcomes


class TestGroupCommit:
    def test_a_lone_unit_runs_at_once_in_the_callers_thread_without_a_savepoint(self, engine, scratch):
        committer = GroupCommit(engine)
        statements = _statements(engine)
        counts = count_events(engine)
        ran_in = []

        def work(session: Session) -> str:
            ran_in.append(threading.get_ident())
            return _insert(scratch, "alone")(session)

        started = time.perf_counter()
        assert committer.transact(work) == "alone"
        assert time.perf_counter() - started < 1.0
        assert ran_in == [threading.get_ident()]  # no hop to another thread, no timer
        assert (committer.groups, committer.units) == (1, 1)
        assert counts["commit"] == 1
        assert "SAVEPOINT" not in statements
        assert set(rows_of(engine, scratch)) == {"alone"}

    def test_concurrent_units_share_commits_and_all_land(self, engine, scratch):
        committer = GroupCommit(engine)
        counts = count_events(engine)
        first = threading.Event()

        def slow_first_commit(_connection):
            if not first.is_set():
                first.set()
                time.sleep(0.2)  # while the first group waits for "the disk", the others queue

        event.listen(engine, "commit", slow_first_commit)
        keys = [f"k{i:02d}" for i in range(24)]
        with ThreadPoolExecutor(max_workers=24) as pool:
            answers = list(pool.map(lambda k: committer.transact(_insert(scratch, k)), keys))
        assert answers == keys
        assert set(rows_of(engine, scratch)) == set(keys)
        assert committer.units == 24
        assert committer.groups < 24  # commits were shared
        assert counts["commit"] == committer.groups

    def test_a_failing_unit_rolls_back_alone_and_gets_its_error(self, engine, scratch):
        committer = GroupCommit(engine)
        counts = count_events(engine)

        def half_then_fail(session: Session) -> None:
            session.execute(insert(scratch).values(id="failed-half", amount=1, hits=0, flag=True))
            session.flush()
            raise ValueError("the business rule said no")

        works = [_insert(scratch, "lead"), _insert(scratch, "a"), half_then_fail, _insert(scratch, "b")]
        outcomes = _grouped(engine, committer, works)
        assert outcomes[0] == "lead"
        assert {outcomes[1], outcomes[3]} == {"a", "b"}
        assert isinstance(outcomes[2], ValueError)
        assert set(rows_of(engine, scratch)) == {"lead", "a", "b"}  # nothing of the failed unit
        assert (committer.groups, committer.units) == (2, 4)
        assert counts["commit"] == 2

    def test_a_database_error_in_one_unit_leaves_the_group_usable_and_is_retried_per_unit(self, engine, scratch):
        """A unique violation aborts a PostgreSQL transaction: only the unit's savepoint goes."""
        transact(engine, _insert(scratch, "taken"))
        committer = GroupCommit(engine)
        calls = []

        def racing(session: Session) -> int:
            calls.append(1)
            session.execute(insert(scratch).values(id=f"race-{len(calls)}", amount=0, hits=0, flag=True))
            if len(calls) == 1:
                _insert(scratch, "taken")(session)
                session.flush()
            return len(calls)

        def not_retried(session: Session) -> None:
            _insert(scratch, "taken")(session)

        works = [_insert(scratch, "lead"), racing, _insert(scratch, "after"), not_retried]
        outcomes = _grouped(engine, committer, works, retry_integrity=False)
        assert isinstance(outcomes[1], IntegrityError) and isinstance(outcomes[3], IntegrityError)
        assert outcomes[2] == "after"
        assert set(rows_of(engine, scratch)) == {"taken", "lead", "after"}
        calls.clear()
        works = [_insert(scratch, "lead-2"), racing, _insert(scratch, "after-2")]
        outcomes = _grouped(engine, committer, works, retry_integrity=True)
        assert outcomes[1] == 2  # the race ran again, in a later group
        assert set(rows_of(engine, scratch)) == {"taken", "lead", "after", "lead-2", "after-2", "race-2"}

    def test_callers_return_only_after_commit_and_after_commit_actions_follow_it(
        self, engine, scratch, database_url
    ):
        committer = GroupCommit(engine)
        counts = count_events(engine)
        observer = make_engine(database_url, pool_size=2)
        keys = ["lead", "a", "b", "c"]
        seen: dict[str, bool] = {}
        actions: list[tuple[str, int]] = []

        def visible(key: str) -> bool:
            """Seen from another connection: committed."""
            with observer.connect() as connection:
                return connection.execute(select(scratch.c.id).where(scratch.c.id == key)).first() is not None

        def unit(key: str):
            def work(session: Session) -> str:
                _insert(scratch, key)(session)
                after_commit(session, lambda: actions.append((key, counts["commit"])))
                after_rollback(session, lambda: actions.append((f"{key} rolled back", counts["commit"])))
                if key == "c":
                    raise ValueError(key)
                return key
            return work

        try:
            outcomes = _grouped(engine, committer, [unit(k) for k in keys],
                                on_return=lambda i: seen.__setitem__(keys[i], visible(keys[i])))
        finally:
            observer.dispose()
        assert [outcomes[i] for i in range(3)] == ["lead", "a", "b"]
        assert isinstance(outcomes[3], ValueError)
        assert seen == {"lead": True, "a": True, "b": True, "c": False}
        # Each action ran after its group's commit (the commit count it saw includes it).
        assert sorted(actions) == [("a", 2), ("b", 2), ("c rolled back", 2), ("lead", 1)]

    def test_a_failed_commit_fails_every_unit_and_stores_nothing(self, engine, scratch):
        committer = GroupCommit(engine)
        actions: list[str] = []

        class DiskFull(Exception):
            pass

        def refuse(_connection):
            raise DiskFull("no space left on device")

        def unit(key: str):
            def work(session: Session) -> str:
                _insert(scratch, key)(session)
                after_commit(session, lambda: actions.append(f"{key} committed"))
                after_rollback(session, lambda: actions.append(f"{key} rolled back"))
                return key
            return work

        assert committer.transact(unit("lead")) == "lead"
        event.listen(engine, "commit", refuse)
        outcomes = _grouped(engine, committer, [unit("x"), unit("y"), unit("z")])
        assert all(isinstance(o, DiskFull) for o in outcomes.values()), outcomes
        assert set(rows_of(engine, scratch)) == {"lead"}
        assert sorted(actions) == ["lead committed", "x rolled back", "y rolled back", "z rolled back"]
        event.remove(engine, "commit", refuse)
        assert committer.transact(unit("later")) == "later"  # the committer goes on

    def test_each_unit_runs_in_its_callers_context(self, engine, scratch):
        """A follower's unit runs in the leader's thread, but sees its own caller's context
        variables (its request's log context)."""
        committer = GroupCommit(engine)
        caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="nobody")
        seen: dict[str, str] = {}
        results: dict[str, object] = {}

        def work(key: str, hold: bool = False):
            def run(session: Session) -> str:
                if hold:  # the leader keeps its group open until both others have queued
                    _wait_until(lambda: len(committer._queue) == 2)
                seen[key] = caller.get()
                return _insert(scratch, key)(session)
            return run

        def call(key: str) -> None:
            caller.set(f"request {key}")
            results[key] = committer.transact(work(key, hold=key == "lead"))

        threads = [threading.Thread(target=call, args=(key,)) for key in ("lead", "a", "b")]
        threads[0].start()
        _wait_until(lambda: committer._leading)
        for thread in threads[1:]:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert results == {"lead": "lead", "a": "a", "b": "b"}
        assert seen == {"lead": "request lead", "a": "request a", "b": "request b"}
        assert (committer.groups, committer.units) == (2, 3)  # a and b ran in one group, in one thread

    def test_a_transaction_asked_for_inside_a_unit_does_not_wait_for_its_own_group(self, engine, scratch):
        committer = GroupCommit(engine)

        def outer(session: Session) -> str:
            _insert(scratch, "outer")(session)
            assert committer.transact(lambda _s: "inner") == "inner"  # no statement: takes no lock
            return "outer"

        assert committer.transact(outer) == "outer"
        assert set(rows_of(engine, scratch)) == {"outer"}

    def test_group_transact_keeps_one_committer_per_engine(self, engine, scratch):
        assert group_commit(engine) is group_commit(engine)
        assert group_transact(engine, _insert(scratch, "one")) == "one"
        other = make_engine(str(engine.url.render_as_string(hide_password=False)), pool_size=1)
        try:
            assert group_commit(other) is not group_commit(engine)
        finally:
            other.dispose()

    def test_transact_runs_the_same_actions(self, engine, scratch):
        actions: list[str] = []

        def work(key: str, fail: bool):
            def run(session: Session) -> None:
                _insert(scratch, key)(session)
                after_commit(session, lambda: actions.append(f"{key} committed"))
                after_rollback(session, lambda: actions.append(f"{key} rolled back"))
                if fail:
                    raise ValueError(key)
            return run

        transact(engine, work("good", False))
        with pytest.raises(ValueError):
            transact(engine, work("bad", True))
        assert actions == ["good committed", "bad rolled back"]
        assert set(rows_of(engine, scratch)) == {"good"}


class TestPostgresqlConnections:
    def test_a_connection_the_server_closed_is_replaced_at_checkout(self, database_url, backend):
        """No pre-ping round trip: a pooled connection the server terminated is still never used."""
        if backend != "postgresql":
            pytest.skip("PostgreSQL's pool")
        engine = make_engine(database_url, pool_size=1)
        admin = make_engine(database_url, pool_size=1)
        try:
            pid = transact(engine, lambda s: s.execute(text("SELECT pg_backend_pid()")).scalar())
            statements = _statements(engine)
            with admin.connect() as connection:
                assert connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
                connection.commit()
                _wait_until(lambda: connection.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}).scalar() == 0)
            # The server's last words reach the pooled connection's socket a moment after the backend
            # leaves pg_stat_activity; one terminated so recently that they have not arrived is cut
            # without a word, which fails the one request that meets it (db.py says so).
            pooled = engine.pool._pool.queue[0].dbapi_connection  # the pool's one idle connection
            _wait_until(lambda: _readable(pooled.pgconn.socket))
            assert transact(engine, lambda s: s.execute(text("SELECT pg_backend_pid()")).scalar()) != pid
            assert statements == ["SELECT"]  # no ping before it
        finally:
            engine.dispose()
            admin.dispose()


# ---------------------------------------------------------------------------------- bulk paths


class TestBulkInsert:
    def test_values_go_through_each_column_type(self, engine, scratch):
        shanghai = timezone(timedelta(hours=8))
        rows = [
            ("a", 1, 0, True, T0, "first"),
            ("b", -(2**63) + 1, 2**63 - 1, False, None, None),
            (
                "c",
                0,
                7,
                True,
                datetime(2026, 11, 23, 13, 25, 56, 123456, tzinfo=shanghai),
                "tab\there",
            ),
        ]
        transact(engine, lambda s: bulk_insert(s, scratch, COLUMNS, rows))
        stored = rows_of(engine, scratch)
        assert stored["a"] == (1, 0, True, T0, "first")
        assert stored["b"] == (-(2**63) + 1, 2**63 - 1, False, None, None)
        assert stored["c"] == (0, 7, True, T0, "tab\there")  # same instant, read back in UTC
        assert stored["c"][3].utcoffset() == timedelta(0)

    def test_stored_form_matches_what_the_orm_writes(self, engine, scratch):
        def work(session: Session) -> None:
            session.execute(insert(scratch).values(id="orm", amount=1, hits=0, flag=True, at=T0))
            bulk_insert(session, scratch, COLUMNS, [("bulk", 1, 0, True, T0, None)])

        transact(engine, work)
        with engine.connect() as connection:
            raw = connection.execute(text(f"SELECT id, flag, at FROM {scratch.name} ORDER BY id")).all()
        assert raw[0][1:] == raw[1][1:]

    def test_many_rows(self, engine, scratch):
        rows = [(f"r{i:05d}", i, 0, i % 2 == 0, T0, None) for i in range(20_000)]
        transact(engine, lambda s: bulk_insert(s, scratch, COLUMNS, rows))
        with engine.connect() as connection:
            count, total = connection.execute(select(func.count(), func.sum(scratch.c.amount))).one()
        assert (count, int(total)) == (20_000, sum(range(20_000)))

    def test_no_rows_is_a_no_op(self, engine, scratch):
        transact(engine, lambda s: bulk_insert(s, scratch, COLUMNS, []))
        assert rows_of(engine, scratch) == {}

    def test_naive_time_is_refused(self, engine, scratch):
        with pytest.raises(ValueError, match="naive"):
            transact(
                engine,
                lambda s: bulk_insert(s, scratch, COLUMNS, [("a", 1, 0, True, datetime(2026, 1, 1), None)]),
            )
        assert rows_of(engine, scratch) == {}

    def test_duplicate_key_fails_the_whole_insert(self, engine, scratch):
        with pytest.raises(IntegrityError):
            transact(
                engine,
                lambda s: bulk_insert(
                    s,
                    scratch,
                    COLUMNS,
                    [("a", 1, 0, True, None, None), ("a", 2, 0, True, None, None)],
                ),
            )
        assert rows_of(engine, scratch) == {}

    def test_into_the_ledger_accounts_table(self, engine):
        columns = (
            "id",
            "type",
            "currency",
            "code",
            "metadata_json",
            "debits_must_not_exceed_credits",
            "credits_must_not_exceed_debits",
            "closed",
            "debits_posted",
            "credits_posted",
            "debits_pending",
            "credits_pending",
            "created_at",
        )
        rows = [
            ("acct_kit_1", "asset", "CNY", "bank:kit", "{}", False, True, False, 0, 0, 0, 0, T0),
            (
                "acct_kit_2",
                "liability",
                "JPY",
                "wallet:kit",
                '{"a":1}',
                True,
                False,
                False,
                0,
                0,
                0,
                0,
                T0,
            ),
        ]
        transact(engine, lambda s: bulk_insert(s, accounts, columns, rows))
        with Session(engine) as session:
            stored = {r.id: r for r in session.execute(select(accounts).where(accounts.c.id.like("acct_kit_%")))}
        assert stored["acct_kit_1"].credits_must_not_exceed_debits is True
        assert stored["acct_kit_1"].debits_must_not_exceed_credits is False
        assert stored["acct_kit_2"].debits_must_not_exceed_credits is True
        assert stored["acct_kit_2"].created_at == T0
        assert stored["acct_kit_2"].metadata_json == '{"a":1}'

    def test_database_constraints_still_apply(self, engine):
        columns = ("id", "type", "currency", "code", "created_at")
        with pytest.raises(IntegrityError):
            transact(
                engine,
                lambda s: bulk_insert(s, accounts, columns, [("acct_bad", "gold", "CNY", "x", T0)]),
            )


class TestBulkIncrement:
    def test_adds_deltas_to_many_columns_of_many_keys(self, engine, scratch):
        seed = [
            ("a", 100, 1, True, None, None),
            ("b", 200, 2, True, None, None),
            ("c", 300, 3, True, None, None),
        ]
        transact(engine, lambda s: bulk_insert(s, scratch, COLUMNS, seed))
        transact(
            engine,
            lambda s: bulk_increment(s, scratch, "id", ("amount", "hits"), [("a", 5, 1), ("c", -300, 0)]),
        )
        stored = {k: v[:2] for k, v in rows_of(engine, scratch).items()}
        assert stored == {"a": (105, 2), "b": (200, 2), "c": (0, 3)}

    def test_accepts_a_generator_and_ignores_unknown_keys(self, engine, scratch):
        transact(engine, lambda s: bulk_insert(s, scratch, COLUMNS, [("a", 1, 0, True, None, None)]))
        transact(
            engine,
            lambda s: bulk_increment(s, scratch, "id", ("amount",), ((k, 10) for k in ("a", "nobody"))),
        )
        assert {k: v[0] for k, v in rows_of(engine, scratch).items()} == {"a": 11}

    def test_up_to_the_bigint_limit(self, engine, scratch):
        transact(engine, lambda s: bulk_insert(s, scratch, COLUMNS, [("a", 2**62, 0, True, None, None)]))
        transact(engine, lambda s: bulk_increment(s, scratch, "id", ("amount",), [("a", 2**62 - 1)]))
        assert rows_of(engine, scratch)["a"][0] == 2**63 - 1

    def test_past_the_bigint_limit_fails_and_changes_nothing(self, engine, scratch):
        seed = [("a", 2**63 - 1, 0, True, None, None), ("b", 0, 0, True, None, None)]
        transact(engine, lambda s: bulk_insert(s, scratch, COLUMNS, seed))
        with pytest.raises(DBAPIError):
            transact(
                engine,
                lambda s: bulk_increment(s, scratch, "id", ("amount",), [("b", 1), ("a", 1)]),
            )
        assert {k: v[0] for k, v in rows_of(engine, scratch).items()} == {"a": 2**63 - 1, "b": 0}

    def test_many_keys_in_one_call(self, engine, scratch):
        seed = [(f"k{i:05d}", 0, 0, True, None, None) for i in range(10_000)]
        transact(engine, lambda s: bulk_insert(s, scratch, COLUMNS, seed))
        deltas = [(f"k{i:05d}", i, 1) for i in range(10_000)]
        transact(engine, lambda s: bulk_increment(s, scratch, "id", ("amount", "hits"), deltas))
        stored = rows_of(engine, scratch)
        assert all(stored[f"k{i:05d}"][:2] == (i, 1) for i in range(10_000))

    def test_no_rows_is_a_no_op(self, engine, scratch):
        transact(engine, lambda s: bulk_increment(s, scratch, "id", ("amount",), []))

    def test_the_same_key_twice_in_one_call_adds_both(self, engine, scratch):
        transact(engine, lambda s: bulk_insert(s, scratch, COLUMNS, [("a", 0, 0, True, None, None)]))
        transact(engine, lambda s: bulk_increment(s, scratch, "id", ("amount",), [("a", 5), ("a", 7)]))
        assert rows_of(engine, scratch)["a"][0] == 12

    def test_on_ledger_account_balances(self, engine):
        columns = ("id", "type", "currency", "code", "created_at")
        transact(
            engine,
            lambda s: bulk_insert(
                s,
                accounts,
                columns,
                [
                    ("acct_kit_a", "asset", "CNY", "a", T0),
                    ("acct_kit_b", "liability", "CNY", "b", T0),
                ],
            ),
        )
        balance_columns = ("debits_posted", "credits_posted", "debits_pending", "credits_pending")
        transact(
            engine,
            lambda s: bulk_increment(
                s,
                accounts,
                "id",
                balance_columns,
                [("acct_kit_a", 9962, 0, 500, 0), ("acct_kit_b", 0, 9962, 0, 500)],
            ),
        )
        with Session(engine) as session:
            stored = {
                r.id: (r.debits_posted, r.credits_posted, r.debits_pending, r.credits_pending)
                for r in session.execute(select(accounts).where(accounts.c.id.like("acct_kit_%")))
            }
        assert stored == {"acct_kit_a": (9962, 0, 500, 0), "acct_kit_b": (0, 9962, 0, 500)}

    def test_balance_check_constraint_refuses_a_negative_balance(self, engine):
        transact(
            engine,
            lambda s: bulk_insert(
                s,
                accounts,
                ("id", "type", "currency", "code", "created_at"),
                [("acct_kit_n", "asset", "CNY", "n", T0)],
            ),
        )
        with pytest.raises(IntegrityError):
            transact(
                engine,
                lambda s: bulk_increment(s, accounts, "id", ("debits_posted",), [("acct_kit_n", -1)]),
            )


# ------------------------------------------------------------------------------- LoopWriter


class TestLoopWriter:
    """Writes from the event loop (the nonce of every signed request rides on these)."""

    @staticmethod
    def _writer(engine: Engine) -> LoopWriter:
        threads = ThreadPoolExecutor(max_workers=2)

        async def in_thread(work, *args):
            return await asyncio.get_running_loop().run_in_executor(threads, work, *args)

        return LoopWriter(engine, in_thread, connections=2)

    def test_scalar_and_run_write_and_answer_on_every_loop(self, engine, scratch):
        writer = self._writer(engine)
        insert_sql = f"INSERT INTO {scratch.name} (id, amount, hits, flag) VALUES (:id, :amount, 0, TRUE)"

        def two_rows(cursor, params):
            cursor.rowcount(insert_sql, {"id": params["id"] + "-a", "amount": 1})
            return cursor.rowcount(insert_sql, {"id": params["id"] + "-b", "amount": 2})

        async def write(tag: str) -> tuple[int, int]:
            ran = await writer.run(two_rows, {"id": tag})
            total = await writer.scalar(f"SELECT sum(amount) FROM {scratch.name}", {})
            return ran, total

        try:
            # A second loop after the first has ended (a test client's way): the writer moves to it.
            assert asyncio.run(write("one")) == (1, 3)
            assert asyncio.run(write("two")) == (1, 6)
            assert writer.connections <= 2
        finally:
            writer.close()
        assert writer.connections == 0
        assert set(rows_of(engine, scratch)) == {"one-a", "one-b", "two-a", "two-b"}

    def test_a_failed_work_writes_nothing(self, engine, scratch, backend):
        if backend != "sqlite":
            pytest.skip("on PostgreSQL work runs in autocommit, one statement that fails whole (raw_transaction)")
        writer = self._writer(engine)
        insert_sql = f"INSERT INTO {scratch.name} (id, amount, hits, flag) VALUES (:id, 1, 0, TRUE)"

        def half_then_fail(cursor, params):
            cursor.rowcount(insert_sql, {"id": "half"})
            cursor.rowcount(insert_sql, {"id": "half"})  # the same key: refused

        try:
            with pytest.raises(Exception, match="(?i)unique|duplicate"):
                asyncio.run(writer.run(half_then_fail, {}))
        finally:
            writer.close()
        assert rows_of(engine, scratch) == {}

    def test_scalar_binds_named_parameters_and_survives_a_failed_statement(self, engine, scratch):
        writer = self._writer(engine)
        insert_sql = (f"INSERT INTO {scratch.name} (id, amount, hits, flag) "
                      f"VALUES (:id, :amount, :amount, TRUE) RETURNING amount + hits")

        async def write() -> tuple[int, int]:
            doubled = await writer.scalar(insert_sql, {"id": "twice", "amount": 21})
            with pytest.raises(Exception, match="(?i)unique|duplicate"):
                await writer.scalar(insert_sql, {"id": "twice", "amount": 1})
            # The failed connection was dropped, not reused; the next statement gets a good one.
            again = await writer.scalar(insert_sql, {"id": "again", "amount": 2})
            return doubled, again

        try:
            assert asyncio.run(write()) == (42, 4)
            assert writer.connections <= 2
        finally:
            writer.close()
        assert set(rows_of(engine, scratch)) == {"twice", "again"}


def test_numbered_paramstyle_numbers_each_name_once_and_leaves_casts_alone():
    sql, names = numbered_paramstyle("SELECT :a, CAST(:b AS BIGINT), :a::text WHERE x = :b_c")
    assert sql == "SELECT $1, CAST($2 AS BIGINT), $1::text WHERE x = $3"
    assert names == ("a", "b", "b_c")
