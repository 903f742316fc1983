"""``Idempotency-Key`` for every POST under ``/v1`` (api.md, Conventions).

Same key and same request within 24 h: the first response again, with
``Idempotent-Replayed: true``. Same key, different request: 409
``idempotency_key_reused``. Same key while the first request still runs: 409
``idempotency_key_in_use``. Keys are scoped to the caller (``request.state``'s
``idempotency_scope``, set by authentication: ``merchant:<id>``, ``merchant:<id>:test`` or ``platform``).

Exactly-once effects do not rest on this table alone: an endpoint that creates an
object without a client-chosen id derives the id from the key (``derived_id``), so a
retry after a crash between the work's commit and the response being stored finds the
object already there instead of creating a second one.

Cost: the claim is one ``INSERT ... ON CONFLICT DO NOTHING`` (a key seen before is read
only when the insert finds it), the stored answer one ``UPDATE``, both prebuilt, both
committed on the bookkeeping engine (no wait for the disk; see ``kit.db.make_engine``).
That is safe because both databases write one log in commit order: the endpoint's own
durable commit, which always comes after the claim, flushes the claim with it, so any
effect a retry could repeat is on disk only with its claim. A stored answer lost in a
power cut leaves the key ``in_progress``, which is the crash case above: the retry takes
the lease over when it ends and finds the object by its derived id. A 5xx answer is not
kept either: its lease ends at once and a retry of the same request runs again, under
the same derived ids. Nor is an answer carrying ``Retry-After`` (``429 rate_limited``,
``409 channel_not_answering``): it says "try again", and a retry with the same key must be
able to, not be shown the same "try again" for 24 hours.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import CheckConstraint, Engine, Index, String, Text, bindparam, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clearhouse.kit import clock
from clearhouse.kit.api import read_body, replay_body
from clearhouse.kit.crypto import FieldCipher
from clearhouse.kit.db import LoopWriter, transact
from clearhouse.kit.errors import ClearhouseError, MalformedRequest, send_problem
from clearhouse.kit.models import Base
from clearhouse.kit.types import UTCDateTime

HEADER = b"idempotency-key"
WINDOW = timedelta(hours=24)
LEASE = timedelta(seconds=60)
"""How long a claimed key waits for its request; past that a retry may take it over."""


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (
        CheckConstraint("state IN ('in_progress', 'done')", name="state"),
        Index("ix_idempotency_keys_created_at", "created_at"),
    )

    scope: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(12))  # in_progress | done
    response_status: Mapped[int | None]
    response_content_type: Mapped[str | None] = mapped_column(String(128))
    response_body: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    lease_until: Mapped[datetime] = mapped_column(UTCDateTime)


records = IdempotencyRecord.__table__


class InvalidIdempotencyKey(ClearhouseError):
    """An Idempotency-Key is 1 to 255 printable ASCII characters."""

    code = "invalid_idempotency_key"
    status = 400
    title = "Invalid Idempotency-Key"


class IdempotencyKeyReused(ClearhouseError):
    """A key names one request: the same key with a different request is refused."""

    code = "idempotency_key_reused"
    status = 409
    title = "Idempotency key reused"


class IdempotencyKeyInUse(ClearhouseError):
    """The first request with this key is still running; retry when it has answered."""

    code = "idempotency_key_in_use"
    status = 409
    title = "Idempotency key in use"


def derived_id(request: Request, prefix: str, *parts: Any) -> str | None:
    """A stable id for an object this request creates, when it carries an Idempotency-Key.

    Stable for the life of the key's record (its creation time is part of it), so a retry
    finds the object; a key used again after its 24 h window creates a new one.
    """
    key = getattr(request.state, "idempotency_key", None)
    if key is None:
        return None
    scope = getattr(request.state, "idempotency_scope", "public")
    claimed_at = getattr(request.state, "idempotency_claimed_at", "")
    digest = hashlib.sha256(orjson.dumps([scope, key, claimed_at, *parts])).hexdigest()[:26]
    return f"{prefix}_ik{digest}"


def request_fingerprint(path: str, query: bytes, body: bytes, caller: str = "") -> str:
    """What makes two requests "the same": the caller, path, query and body, with a JSON body
    compared as data (key order and spacing do not matter).

    The caller (the API key or person) is part of it: keys are scoped to the merchant, so
    two callers of one merchant cannot run one request twice, but a response (which may
    hold a secret shown once) is never replayed to anyone but the caller who made it.
    """
    with contextlib.suppress(ValueError, TypeError, RecursionError):
        body = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(b"\n".join([caller.encode(), path.encode(), query, body])).hexdigest()


# Built once: building a statement costs SQLAlchemy more than running it (every keyed POST
# runs two of these). Bind names differ from the columns, which an UPDATE's SET takes.
_THIS_KEY = (records.c.scope == bindparam("the_scope"), records.c.key == bindparam("the_key"))
_INSERT_NEW = {
    "postgresql": postgresql.insert(records).on_conflict_do_nothing().returning(records.c.state),
    "sqlite": sqlite.insert(records).on_conflict_do_nothing().returning(records.c.state),
}
# The same claim and answer as one portable statement each, for ``LoopWriter`` (the event
# loop's own connection: no thread hop, no ORM session). RETURNING says whether a row was
# written, and gives the loop writer's PostgreSQL path a row to fetch.
_CLAIM_SQL = (
    "INSERT INTO idempotency_keys (scope, key, request_hash, state, created_at, lease_until) "
    "VALUES (:scope, :key, :request_hash, 'in_progress', :created_at, :lease_until) "
    "ON CONFLICT DO NOTHING RETURNING state"
)
_ANSWER_SQL = (
    "UPDATE idempotency_keys SET state = 'done', response_status = :response_status, "
    "response_content_type = :response_content_type, response_body = :response_body "
    "WHERE scope = :the_scope AND key = :the_key RETURNING state"
)
_FIND_LOCKED = select(records).where(*_THIS_KEY).with_for_update()
_FORGET = delete(records).where(*_THIS_KEY)
_UPDATE = update(records).where(*_THIS_KEY)


def _claim(session: Session, scope: str, key: str, request_hash: str) -> tuple[str, Any]:
    """Decide what to do with a keyed request: ("proceed", the record's creation time),
    ("replay", the stored record), ("reused", None) or ("in_use", None).

    A new key (nearly every request) is one insert; the unique key decides a race, and the
    loser (PostgreSQL waits for the winner's commit) reads the winner's row."""
    now = clock.now()
    connection = session.connection()
    fresh = {"scope": scope, "key": key, "request_hash": request_hash, "state": "in_progress",
             "created_at": now, "lease_until": now + LEASE}
    if connection.execute(_INSERT_NEW[connection.dialect.name], fresh).first() is not None:
        return "proceed", now
    where = {"the_scope": scope, "the_key": key}
    row = connection.execute(_FIND_LOCKED, where).first()
    if row is None:
        # Gone between the two statements (purged): claim it as new.
        connection.execute(insert(records), fresh)
        return "proceed", now
    if row.created_at + WINDOW < now:
        connection.execute(_FORGET, where)
        connection.execute(insert(records), fresh)
        return "proceed", now
    if row.request_hash != request_hash:
        return "reused", None
    if row.state == "done":
        return "replay", row
    if row.lease_until > now:
        return "in_use", None
    # The first request died without answering: take its lease over.
    connection.execute(_UPDATE, {**where, "lease_until": now + LEASE})
    return "proceed", row.created_at


def purge_expired(session: Session) -> int:
    """Forget keys past their 24 h window (run by the worker); returns how many."""
    now = clock.now()
    # A key whose request is somehow still running keeps its row until its lease ends.
    result = session.execute(delete(records).where(records.c.created_at < now - WINDOW, records.c.lease_until < now))
    return result.rowcount or 0


def _body_context(scope: str, key: str) -> str:
    return f"idempotency_keys.response_body:{scope}:{key}"


def _finish(session: Session, cipher: FieldCipher, scope: str, key: str, status: int, content_type: str,
            body: bytes, *, kept: bool) -> None:
    where = {"the_scope": scope, "the_key": key}
    if not kept:
        # Not an answer to keep: the lease ends now, so the client may try again with the same key at
        # once. The record stays, with its creation time, so the retry derives the same ids
        # (``derived_id``) and finds what the failed attempt may already have done (a charge the
        # channel made before our commit failed), instead of doing it a second time.
        session.connection().execute(_UPDATE, {**where, "lease_until": clock.now()})
        return
    session.connection().execute(_UPDATE, {**where, "state": "done", **_answer(cipher, scope, key, status,
                                                                               content_type, body)})


def _answer(cipher: FieldCipher, scope: str, key: str, status: int, content_type: str, body: bytes) -> dict[str, Any]:
    return {
        "response_status": status, "response_content_type": content_type,
        # Encrypted: a first response may hold what is shown only once (a new API key's secret).
        "response_body": cipher.encrypt(body.decode("utf-8", "replace"), _body_context(scope, key)),
    }


class IdempotencyMiddleware:
    """Pure ASGI, so the request body can be hashed and the response captured whole."""

    def __init__(self, app: ASGIApp, engine: Engine, cipher: FieldCipher, bookkeeping_engine: Engine | None = None):
        self.app = app
        self.engine = engine
        self.cipher = cipher
        self.bookkeeping_engine = bookkeeping_engine
        """Where keys are claimed and answers stored (module docstring: why that is safe);
        when not given, the app's ``state.bookkeeping_engine``, else ``engine``."""

    def _engine(self, scope: Scope) -> Engine:
        if self.bookkeeping_engine is None:
            app = scope.get("app")
            self.bookkeeping_engine = getattr(getattr(app, "state", None), "bookkeeping_engine", None) or self.engine
        return self.bookkeeping_engine

    def _writer(self, scope: Scope, engine: Engine) -> LoopWriter | None:
        """The app's loop writer (the request nonces' ``kit.db.LoopWriter``, closed by the app's
        lifespan) when it writes to the same engine: the claim and the answer, one statement
        each, then cost no thread hop and no ORM session."""
        writer = getattr(getattr(scope.get("app"), "state", None), "request_recorder", None)
        return writer if isinstance(writer, LoopWriter) and writer.engine is engine else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith("/v1/")
                or "idempotency_scope" not in scope.get("state", {})):
            # Only an authenticated caller's key is honoured (authentication sets its scope). A public POST
            # (sign-in, a channel's notification) has no caller to keep a key for: all of them would share one
            # scope, so one anonymous client could block another's key, and a repeated sign-in would replay
            # the first answer without its session cookie. The header is ignored there.
            await self.app(scope, receive, send)
            return
        raw_key = dict(scope["headers"]).get(HEADER)
        if raw_key is None:
            await self.app(scope, receive, send)
            return
        key = raw_key.decode("latin-1")
        if not 1 <= len(key) <= 255 or not all(32 <= ord(c) < 127 for c in key):
            await send_problem(send, InvalidIdempotencyKey("Idempotency-Key must be 1-255 printable ASCII"))
            return
        body = await read_body(receive)
        if body is None:
            # The client went away mid-upload: claim nothing, so its retry is welcome.
            await send_problem(send, MalformedRequest("the client disconnected before the body arrived"))
            return
        state = scope.setdefault("state", {})
        caller = state["idempotency_scope"]
        request_hash = request_fingerprint(scope["path"], scope.get("query_string", b""), body,
                                           state.get("idempotency_caller", ""))

        engine = self._engine(scope)
        writer = self._writer(scope, engine)
        verdict: str | None = None
        if writer is not None:
            # A new key (nearly every request) is claimed in one statement; any other case
            # (a key seen before) is decided by ``_claim`` below.
            now = clock.now()
            if await writer.scalar(_CLAIM_SQL, {"scope": caller, "key": key, "request_hash": request_hash,
                                                "created_at": now, "lease_until": now + LEASE}) is not None:
                verdict, found = "proceed", now
        if verdict is None:
            try:
                verdict, found = await run_in_threadpool(
                    transact, engine, lambda s: _claim(s, caller, key, request_hash), retry_integrity=True
                )
            except IntegrityError:
                verdict, found = "in_use", None
        if verdict == "reused":
            await send_problem(send, IdempotencyKeyReused("this Idempotency-Key was used for a different request"))
            return
        if verdict == "in_use":
            await send_problem(send, IdempotencyKeyInUse("a request with this Idempotency-Key is still running"))
            return
        if verdict == "replay":
            stored = found.response_body
            # Rows written before responses were encrypted (at most 24 h old) are read as they are.
            text = self.cipher.decrypt(stored, _body_context(caller, key)) if stored.startswith("v1.") else stored
            body = text.encode()
            await _send(send, found.response_status, found.response_content_type, body,
                        [(b"idempotent-replayed", b"true")])
            return

        state["idempotency_key"] = key
        state["idempotency_claimed_at"] = clock.rfc3339(found)
        captured: dict[str, Any] = {"status": 500, "content_type": "", "body": [], "messages": [], "kept": False}

        async def capture(message: Message) -> None:
            # Held back until the answer is stored: a client that retries the moment it has
            # the answer must find it replayable, not "still running".
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
                headers = dict(message.get("headers", []))
                captured["content_type"] = headers.get(b"content-type", b"").decode("latin-1")
                captured["kept"] = message["status"] < 500 and b"retry-after" not in headers
            elif message["type"] == "http.response.body":
                captured["body"].append(message.get("body", b""))
            captured["messages"].append(message)

        try:
            await self.app(scope, replay_body(body, receive), capture)
        finally:
            status, kept = captured["status"], captured["kept"]
            if writer is not None and kept:
                await writer.scalar(_ANSWER_SQL, {"the_scope": caller, "the_key": key, **_answer(
                    self.cipher, caller, key, status, captured["content_type"], b"".join(captured["body"]))})
            else:
                await run_in_threadpool(
                    transact, engine,
                    lambda s: _finish(s, self.cipher, caller, key, status, captured["content_type"],
                                      b"".join(captured["body"]), kept=kept),
                )
        for message in captured["messages"]:
            await send(message)


async def _send(send: Send, status: int, content_type: str, body: bytes,
                extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", content_type.encode("latin-1")), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})

