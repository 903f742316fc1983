"""What every ``verify`` (ledger, audit trail) reports: ok, the first failure, and the
failures found, capped so that a wrecked table still gives a readable report."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, String
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeDecorator

MAX_FAILURES = 100


@dataclass
class Findings:
    ok: bool = True
    chain_head: dict[str, Any] = field(default_factory=dict)
    first_failure: dict[str, Any] | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, check: str, detail: str, **where: Any) -> None:
        failure = {"check": check, "detail": detail, **where}
        if self.first_failure is None:
            self.first_failure = failure
        self.ok = False
        if len(self.failures) < MAX_FAILURES:
            self.failures.append(failure)

    def counts(self) -> dict[str, int]:
        """The ``*_checked`` figures of the subclass, in their declared order."""
        return {name: value for name, value in vars(self).items() if name.endswith("_checked")}

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **self.counts(), "chain_head": self.chain_head, "first_failure": self.first_failure,
                "failures": self.failures}


def report_to_operator(findings: Findings, *, as_json: bool, what: str, summary: str, console: Any) -> int:
    """What a ``verify`` command prints (the JSON report, or one line) and its exit code:
    0 when ``what`` verified, 1 at the first failure."""
    import json

    if as_json:
        print(json.dumps(findings.as_dict()))
    elif findings.ok:
        console.print(f"[green]{what} verified[/]: {summary}")
    else:
        console.print(f"[red]{what} verification failed[/]: {json.dumps(findings.first_failure)}")
    return 0 if findings.ok else 1


class StoredTime(TypeDecorator[Any]):
    """A time column as ``UTCDateTime`` reads it, except that a value that is not a time
    (SQLite stores text, and a tamperer may write any) comes back as stored instead of
    raising while the row is fetched: verify reports it, and readers still answer."""

    impl = String
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                return value
        if isinstance(value, datetime):
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value


def read_all(session: Session, statement: Any) -> list[Row]:
    """``statement``'s rows, for verify. SQLite hands back text as it was written, and refuses
    to read text that is not UTF-8 (a tamperer may write any bytes): such a read is done again
    with the bad bytes read as U+FFFD, so the row differs from what was hashed and is reported."""
    try:
        return list(session.execute(statement))
    except OperationalError as error:
        if "Could not decode to UTF-8" not in str(error.orig):
            raise
    connection = session.connection().connection.dbapi_connection
    connection.text_factory = lambda raw: raw.decode("utf-8", "replace")
    try:
        return list(session.execute(statement))
    finally:
        connection.text_factory = str
