"""The one place that reads the time: UTC, and freezable for tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_frozen: datetime | None = None


def now() -> datetime:
    """The current time, timezone-aware UTC, microsecond precision."""
    return _frozen if _frozen is not None else datetime.now(UTC)


@contextmanager
def frozen(at: datetime) -> Iterator[FrozenClock]:
    """Freeze ``now()`` at ``at`` (aware) until the block ends; ``tick`` moves it."""
    global _frozen
    if at.tzinfo is None:
        raise ValueError("frozen clock needs an aware datetime")
    previous = _frozen
    _frozen = at.astimezone(UTC)
    try:
        yield FrozenClock()
    finally:
        _frozen = previous


class FrozenClock:
    def tick(self, **delta: float) -> datetime:
        global _frozen
        assert _frozen is not None
        _frozen = _frozen + timedelta(**delta)
        return _frozen


def rfc3339(value: datetime) -> str:
    """``2026-11-23T05:25:56.123456Z``: UTC, microseconds, Z suffix (``isoformat`` is several times
    cheaper than ``strftime``, and a view renders every timestamp it shows through here)."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def known_zone(value: str) -> str:
    """``value`` if it names an IANA time zone (``Asia/Shanghai``); otherwise ``ValueError``, for a
    pydantic validator to report. A tz-database folder (``America``) or a path is not a zone."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "America" is a directory
        raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Asia/Shanghai)") from None
    return value
