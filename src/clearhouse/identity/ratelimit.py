"""Fixed-window rate limits shared by every server process (one counter row per window).

A counter lives in the database, not in process memory, so four uvicorn workers or
three machines enforce one limit together. Old windows are purged by the worker.
"""

from __future__ import annotations

import time

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from clearhouse.identity.models import RateLimitCounter
from clearhouse.kit.errors import ClearhouseError

counters = RateLimitCounter.__table__


class RateLimited(ClearhouseError):
    """Too many requests in the current window; the answer says when to try again."""

    code = "rate_limited"
    status = 429
    title = "Too many requests"

    def __init__(self, detail: str = "", *, retry_after: int = 1):
        super().__init__(detail)
        self.retry_after = max(1, int(retry_after))

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


def hit(session: Session, bucket: str, limit: int, window_seconds: int = 60) -> int | None:
    """Count one event in ``bucket``; return the seconds to wait if it is over ``limit``, else None.

    ``limit`` <= 0 means no limit (nothing is counted).
    """
    if limit <= 0:
        return None
    now = time.time()
    window = int(now // window_seconds) * window_seconds
    where = (counters.c.bucket == bucket, counters.c.window_start == window)
    updated = session.execute(update(counters).where(*where).values(count=counters.c.count + 1))
    if not updated.rowcount:
        try:
            # A savepoint, so losing the race to another process costs only this insert.
            with session.begin_nested():
                session.execute(insert(counters).values(bucket=bucket, window_start=window, count=1))
        except IntegrityError:
            session.execute(update(counters).where(*where).values(count=counters.c.count + 1))
    count = session.execute(select(counters.c.count).where(*where)).scalar_one()
    if count > limit:
        return int(window + window_seconds - now) + 1
    return None


def purge(session: Session, older_than_seconds: int = 3600) -> int:
    """Forget windows that ended long ago (run by the worker); returns how many."""
    cutoff = int(time.time()) - older_than_seconds
    return session.execute(delete(counters).where(counters.c.window_start < cutoff)).rowcount or 0
