"""The per-request bookkeeping write of signed requests, the one query here that is
shaped by speed rather than by clarity (``clearhouse bench auth``).

Every signed request records its nonce (a replay finds it) and counts itself against its
key's rate limit, and must fail when the key was revoked or its merchant suspended a
moment ago in another process. Done with SQLAlchemy's session that is four statements and
a few hundred microseconds; here it is one statement on PostgreSQL (a writable CTE, one
network round trip) and two on SQLite (no network), made from the event loop by
``kit.db.LoopWriter``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from clearhouse.kit.db import LoopWriter, RawCursor

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
    # asyncpg (kit.db.LoopWriter) takes a parameter's type from the server: in a SELECT list it is
    # text unless cast. Never for SQLite, whose CAST AS TIMESTAMP would keep only the year.
    "WITH recorded AS (INSERT INTO api_nonces (key_id, nonce, seen_at) "
    + _LIVE_KEY.replace(":seen_at", "CAST(:seen_at AS TIMESTAMPTZ)")
    + " ON CONFLICT DO NOTHING RETURNING key_id) "
    "INSERT INTO rate_limit_counters (bucket, window_start, count) "
    "SELECT :bucket, CAST(:window_start AS BIGINT), 1 FROM recorded "
    "ON CONFLICT (bucket, window_start) DO UPDATE SET count = rate_limit_counters.count + 1 RETURNING count"
)
"""PostgreSQL (and CockroachDB): both writes in one statement; no row when the nonce was refused."""


async def record_request(writer: LoopWriter, key_id: str, nonce: str, seen_at: datetime, bucket: str,
                         window_start: int) -> tuple[bool, int]:
    """(whether the nonce was recorded, the bucket's count in this window)."""
    params = {"key_id": key_id, "nonce": nonce, "seen_at": seen_at, "bucket": bucket, "window_start": window_start}
    if writer.postgresql:
        count = await writer.scalar(RECORD_AND_COUNT, params)
        return count is not None, count or 0
    return await writer.run(_record, params)


def _record(cursor: RawCursor, params: dict[str, Any]) -> tuple[bool, int]:
    if not cursor.rowcount(RECORD_NONCE, params):
        return False, 0
    return True, cursor.scalar(COUNT_REQUEST, params)
