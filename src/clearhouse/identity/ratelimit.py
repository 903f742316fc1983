"""Fixed-window rate limits shared by every server process (one counter row per window).

A counter lives in the database, not in process memory, so four uvicorn workers or
three machines enforce one limit together. Old windows are purged by the worker.
"""

from __future__ import annotations

import time

from sqlalchemy import Connection, delete, text
from sqlalchemy.orm import Session

from clearhouse.identity.models import RateLimitCounter
from clearhouse.identity.repository import COUNT_REQUEST
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


_count_one = text(COUNT_REQUEST)


def hit(session: Session | Connection, bucket: str, limit: int, window_seconds: int = 60) -> int | None:
    """Count one event in ``bucket``; return the seconds to wait if it is over ``limit``, else None.

    ``limit`` <= 0 means no limit (nothing is counted).
    """
    if limit <= 0:
        return None
    now = time.time()
    window = int(now // window_seconds) * window_seconds
    count = session.execute(_count_one, {"bucket": bucket, "window_start": window}).scalar_one()
    if count > limit:
        return int(window + window_seconds - now) + 1
    return None


def purge(session: Session, older_than_seconds: int = 3600) -> int:
    """Forget windows that ended long ago (run by the worker); returns how many."""
    cutoff = int(time.time()) - older_than_seconds
    return session.execute(delete(counters).where(counters.c.window_start < cutoff)).rowcount or 0
