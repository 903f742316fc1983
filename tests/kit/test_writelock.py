"""kit.writelock: SQLite writers queue for the database's write lock instead of sleeping in
SQLite's busy handler. SQLite only: PostgreSQL has row locks and no such queue."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from clearhouse.kit.db import LoopWriter, SQLiteConnection, make_engine, raw_transaction, transact
from clearhouse.kit.writelock import Locked, writer_lock


@pytest.fixture
def database(tmp_path: Path) -> str:
    path = str(tmp_path / "queue.db")
    engine = make_engine(f"sqlite:///{path}", pool_size=2)
    transact(engine, lambda s: s.execute(text("CREATE TABLE rows (n INTEGER NOT NULL)")))
    engine.dispose()
    return path


def _count(path: str) -> int:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT count(*) FROM rows").fetchone()[0]


def _insert(n: int):
    return lambda s: s.execute(text("INSERT INTO rows (n) VALUES (:n)"), {"n": n})


class TestInOneProcess:
    def test_a_second_writer_waits_for_the_first_to_commit_then_writes(self, database):
        engine = make_engine(f"sqlite:///{database}", pool_size=2)
        holding, let_go, second_done = threading.Event(), threading.Event(), threading.Event()

        def first(session):
            session.execute(text("INSERT INTO rows (n) VALUES (1)"))
            holding.set()
            assert let_go.wait(10)

        def second():
            transact(engine, _insert(2))
            second_done.set()

        one = threading.Thread(target=transact, args=(engine, first))
        one.start()
        assert holding.wait(10)
        two = threading.Thread(target=second)
        two.start()
        assert not second_done.wait(0.3), "the second writer wrote while the first held the lock"
        let_go.set()
        one.join(10)
        two.join(10)
        assert second_done.is_set() and _count(database) == 2
        engine.dispose()

    def test_commit_rollback_and_a_failed_unit_each_let_the_next_writer_in(self, database):
        engine = make_engine(f"sqlite:///{database}", pool_size=2)
        transact(engine, _insert(1))

        def fails(session):
            _insert(2)(session)
            raise RuntimeError("refused")

        with pytest.raises(RuntimeError):
            transact(engine, fails)
        with raw_transaction(engine) as cursor:
            cursor.rowcount("INSERT INTO rows (n) VALUES (:n)", {"n": 3})
        with pytest.raises(RuntimeError), raw_transaction(engine) as cursor:
            cursor.rowcount("INSERT INTO rows (n) VALUES (:n)", {"n": 4})
            raise RuntimeError("refused")
        assert _free_for_another_thread(database), "a writer kept the lock after its transaction ended"
        assert _count(database) == 2
        engine.dispose()

    def test_the_event_loops_inline_writer_never_waits_and_lets_go_after_each_write(self, database):
        engine = make_engine(f"sqlite:///{database}", pool_size=2, durable=False)
        writer = LoopWriter(engine, asyncio.to_thread)
        insert = "INSERT INTO rows (n) VALUES (:n) RETURNING n"

        async def writes() -> list[int]:
            return [await writer.scalar(insert, {"n": n}) for n in range(3)]

        assert asyncio.run(writes()) == [0, 1, 2]
        assert _free_for_another_thread(database), "the inline writer kept the lock after its commit"

        async def write_while_held() -> tuple[int, int]:
            with _held_by_another_thread(database):
                # The loop is not blocked: its write goes the thread way and waits there.
                pending = asyncio.ensure_future(writer.scalar(insert, {"n": 9}))
                ticks = 0
                while not pending.done() and ticks < 5:
                    await asyncio.sleep(0.02)
                    ticks += 1
            return await pending, ticks

        assert asyncio.run(write_while_held()) == (9, 5)
        assert _count(database) == 4
        engine.dispose()

    def test_a_nested_transaction_of_the_holding_thread_passes_through(self, database):
        lock = writer_lock(database)
        assert lock.acquire(1) is True
        try:
            assert lock.acquire(1) is False  # the holder's nested transaction: nothing to release
        finally:
            lock.release()

    def test_a_connection_dropped_without_close_lets_go(self, database):
        connection = sqlite3.connect(database, isolation_level=None, factory=SQLiteConnection)
        connection.writer = writer_lock(database)
        connection.begin_write()
        del connection
        gc.collect()
        assert _free_for_another_thread(database)

    def test_a_connection_closed_while_queued_lets_go(self, database):
        connection = sqlite3.connect(database, isolation_level=None, factory=SQLiteConnection)
        connection.writer = writer_lock(database)
        connection.begin_write()
        connection.execute("INSERT INTO rows (n) VALUES (1)")
        connection.close()  # rolled back by SQLite, and the queue moves on
        assert _free_for_another_thread(database)
        assert _count(database) == 0


def _free_for_another_thread(database: str) -> bool:
    """Whether another thread takes the lock at once (it releases it again before ending:
    a thread that ended holding it would leave its ident, which a new thread may be given)."""
    taken = []

    def take() -> None:
        try:
            taken.append(writer_lock(database).acquire(0, blocking=False))
        except Locked:
            taken.append(False)
        else:
            writer_lock(database).release()

    thread = threading.Thread(target=take)
    thread.start()
    thread.join(10)
    return taken == [True]


@contextmanager
def _held_by_another_thread(database: str) -> Iterator[None]:
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        writer_lock(database).acquire(5)
        holding.set()
        done.wait(10)
        writer_lock(database).release()

    thread = threading.Thread(target=hold)
    thread.start()
    assert holding.wait(10)
    try:
        yield
    finally:
        done.set()
        thread.join(10)


HOLD_THE_LOCK = """
import fcntl, sys, time
with open(sys.argv[1], "a+b") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


class TestBetweenProcesses:
    def test_a_writer_waits_for_another_process_and_fails_as_sqlite_does_past_its_wait(self, database, monkeypatch):
        holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, database + "-writer.lock", "30"],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "held"
            engine = make_engine(f"sqlite:///{database}", pool_size=1)
            monkeypatch.setattr(SQLiteConnection, "busy_seconds", 0.3)
            started = time.monotonic()
            with pytest.raises(OperationalError, match="database is locked"):
                transact(engine, _insert(1), attempts=1)
            assert time.monotonic() - started >= 0.3
            with pytest.raises(Locked):
                writer_lock(database).acquire(5, blocking=False)
            engine.dispose()
        finally:
            holder.kill()
            holder.wait()
        assert _count(database) == 0

    def test_a_forked_child_queues_against_its_parent(self, database):
        lock = writer_lock(database)
        assert lock.acquire(1)
        try:
            context = multiprocessing.get_context("fork")
            answer = context.Queue()
            child = context.Process(target=_try_lock_in_child, args=(database, answer))
            child.start()
            child.join(20)
            assert answer.get(timeout=5) == "locked out"
        finally:
            lock.release()

    def test_two_server_processes_both_write_and_lose_nothing(self, database):
        context = multiprocessing.get_context("spawn")
        workers = [context.Process(target=_write_rows, args=(database, start, 150)) for start in (0, 1000)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
        assert [worker.exitcode for worker in workers] == [0, 0]
        assert _count(database) == 300


def _try_lock_in_child(database: str, answer) -> None:
    try:
        writer_lock(database).acquire(0, blocking=False)
        answer.put("shared the parent's lock")
    except Locked:
        answer.put("locked out")


def _write_rows(database: str, start: int, count: int) -> None:
    engine = make_engine(f"sqlite:///{database}", pool_size=4)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: transact(engine, _insert(n)), range(start, start + count)))
    engine.dispose()


def test_a_lock_file_that_cannot_be_opened_leaves_writers_to_sqlite(tmp_path):
    """The queue is an aid: a folder where the lock file cannot be made still lets writers write."""
    path = tmp_path / "ro" / "queue.db"
    path.parent.mkdir()
    (path.parent / "queue.db-writer.lock").mkdir()  # a folder where the file should be: open() fails
    engine = make_engine(f"sqlite:///{path}", pool_size=1)
    transact(engine, lambda s: s.execute(text("CREATE TABLE rows (n INTEGER NOT NULL)")))
    transact(engine, _insert(1))
    assert writer_lock(str(path)) is None and _count(str(path)) == 1
    engine.dispose()
