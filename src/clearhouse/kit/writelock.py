"""SQLite's write lock, waited for in a queue instead of in SQLite's sleeps.

SQLite lets one connection at a time write to a database. The others wait in its busy
handler, which retries after sleeping 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50 and then 100 ms:
under steady load a waiter sleeps through many short transactions of others, and the
lock is free half the time while everyone sleeps. Two server processes on one SQLite file
then did less than one process alone.

So every write transaction of ``make_engine``'s SQLite connections (and of the raw paths
beside them) first takes a ``WriterLock`` of its database, then ``BEGIN IMMEDIATE``:

- inside a process, a ``threading.Lock``: the next thread is woken as soon as the lock is
  released;
- between processes, an ``flock`` on a file beside the database (``<database>-writer.lock``),
  polled every ``POLL_SECONDS``: only one thread per process polls it.

It is an ordering aid, never the guarantee: SQLite's own lock still decides, so a writer
that does not queue here (the ``sqlite3`` shell, a migration) is still kept out, only
waited for the old way. No wait cycle can form: a holder of this lock waits only for
SQLite's lock, and nothing that holds SQLite's lock waits for this one (a thread already
holding this lock passes through it, as a nested transaction on another connection did
before). A wait longer than the timeout fails as SQLite's does, with "database is locked".
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

POLL_SECONDS = 0.0005
"""How often a process's waiting thread tries the file lock held by another process."""


class WriterLock:
    """The queue in front of one SQLite database's write lock, in this process."""

    def __init__(self, path: Path):
        self.path = path
        self._mutex = threading.Lock()
        self._owner: int | None = None  # the holding thread's ident
        # Only its owner may open it (0600, as the database beside it): another user holding
        # the flock could stall every writer. Held for the life of the process.
        self._file = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600), "a+b")

    def acquire(self, timeout: float, *, blocking: bool = True) -> bool:
        """Take the lock: True once taken (``release`` it), False when this thread holds it
        already (pass through, release nothing). ``blocking=False``: raise ``Locked`` at once
        if another holds it. ``Locked`` after ``timeout`` seconds of waiting."""
        if self._owner == threading.get_ident():
            return False
        deadline = time.monotonic() + timeout
        if not self._mutex.acquire(blocking, timeout if blocking else -1):
            raise Locked()
        try:
            while True:
                try:
                    fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not blocking or time.monotonic() >= deadline:
                        raise Locked() from None
                    time.sleep(POLL_SECONDS)
        except BaseException:
            self._mutex.release()
            raise
        self._owner = threading.get_ident()
        return True

    def release(self) -> None:
        self._owner = None
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._mutex.release()


class Locked(Exception):
    """Another writer kept the lock past the wait allowed."""


_LOCKS: dict[tuple[int, str], WriterLock | None] = {}
_LOCKS_LOCK = threading.Lock()


def writer_lock(database: str) -> WriterLock | None:
    """This process's ``WriterLock`` of the SQLite database file ``database``. One per file and
    process: a forked child makes its own, since an inherited ``flock`` would be shared with its
    parent. None (writers wait the old way, in SQLite's busy handler) for an in-memory database or
    one named by URI, and when the lock file cannot be opened (a read-only folder, a file another
    user made): the queue is an aid, never a condition for writing."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    real = os.path.realpath(database)
    key = (os.getpid(), real)
    if key not in _LOCKS:
        with _LOCKS_LOCK:
            if key not in _LOCKS:
                try:
                    _LOCKS[key] = WriterLock(Path(real + "-writer.lock"))
                except OSError as error:
                    log.warning("sqlite_writer_queue_unavailable", path=real + "-writer.lock", error=str(error))
                    _LOCKS[key] = None
    return _LOCKS[key]
