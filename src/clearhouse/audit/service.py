"""The audit trail: who changed what, when, from where, and how; append-only and hash-chained.

Every domain records its state changes here with ``record`` inside its own transaction,
so an event exists if and only if its change was committed. Events form one chain: each
event's hash covers its predecessor's hash and all its fields (``event_hash``, the one
definition of the canonical form), so ``verify`` proves no event was changed, removed or
re-ordered since it was written.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy.orm import Session

from clearhouse.audit import models, repository
from clearhouse.audit.models import GENESIS_HASH
from clearhouse.kit import clock
from clearhouse.kit.canonical import canonical_json
from clearhouse.kit.db import read_snapshot
from clearhouse.kit.errors import ValidationFailed
from clearhouse.kit.ids import new_id, new_ids
from clearhouse.kit.masking import is_secret_key as _is_secret_key
from clearhouse.kit.masking import mask_value
from clearhouse.kit.verification import Findings

ACTOR_TYPES = ("api_key", "user", "system")
MASK = "***"


@dataclass(frozen=True)
class Actor:
    """Who acted, and from where: a person, an API key, or the platform itself."""

    type: str                 # "api_key" | "user" | "system"
    id: str                   # key id, user id, or e.g. "cli" / "worker"
    role: str | None = None
    merchant_id: str | None = None
    source_ip: str | None = None
    request_id: str | None = None


SYSTEM = Actor(type="system", id="system")

# The request on whose behalf events are being recorded, while ``on_behalf_of`` runs.
_ORIGIN: ContextVar[Actor | None] = ContextVar("clearhouse_audit_origin", default=None)


@contextmanager
def on_behalf_of(actor: Actor) -> Iterator[None]:
    """Within this block, an event recorded by the same principal as ``actor`` without a source
    address or request id of its own takes ``actor``'s. An approved action runs in the approver's
    request, but its executor is given the approver's principal, not the request: what it records
    still says where the approval came from (``approvals.decide``)."""
    token = _ORIGIN.set(actor)
    try:
        yield
    finally:
        _ORIGIN.reset(token)


def _from_origin(actor: Actor) -> Actor:
    origin = _ORIGIN.get()
    if origin is None or (origin.type, origin.id) != (actor.type, actor.id):
        return actor
    if actor.source_ip is not None and actor.request_id is not None:
        return actor
    return dataclasses.replace(actor, source_ip=actor.source_ip or origin.source_ip,
                               request_id=actor.request_id or origin.request_id)


def actor_of(principal: Any, request: Any = None) -> Actor:
    """The actor of an HTTP request: its authenticated principal (identity.permissions.Principal),
    the client's address and the request id the logging middleware bound for this request."""
    import structlog

    source_ip = None
    if request is not None and getattr(request, "client", None) is not None:
        source_ip = request.client.host
    return Actor(
        type=principal.kind,
        id=principal.id,
        role=principal.role,
        merchant_id=principal.merchant_id,
        source_ip=source_ip,
        request_id=structlog.contextvars.get_contextvars().get("request_id"),
    )


# ---------------------------------------------------------------- masking

# Words that make a key's value a secret. Keys are split into words (snake, kebab,
# dotted and camel case), so "api_secret", "apiSecret", "recovery_codes" and "cvc" match
# while "currency" never matches "cvc" by accident. A superset of kit.masking's list:
# "code" too, since TOTP, recovery and digital-goods codes are secrets in a change.
def is_secret_key(key: str) -> bool:
    """Whether a change under this key holds a secret (its value is replaced by ``***``): the
    masking rule of every other output, where a bare ``code`` or ``codes`` is a secret too
    (digital-goods and recovery codes) and ``bank_code`` or ``currency_code`` is not."""
    return _is_secret_key(key, bare_code=True)


def _json_safe(value: Any) -> Any:
    """The change as plain JSON values, secrets under secret-named keys replaced.

    Canonical JSON needs exact, portable values: string keys, 64-bit integers (a bigger
    one is kept as its decimal text), aware times as RFC 3339; anything else as its text.
    A null under a secret key stays: it says that the secret was cleared, not what it was.
    """
    if value is None or isinstance(value, bool | str | float):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else str(value)
    if isinstance(value, dict):
        return {
            str(k): (MASK if v is not None and is_secret_key(str(k)) else _json_safe(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((_json_safe(v) for v in value), key=repr)
    if isinstance(value, datetime):
        return clock.rfc3339(value) if value.tzinfo is not None else value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _json_safe(dataclasses.asdict(value))
    if hasattr(value, "model_dump"):  # a pydantic model
        return _json_safe(value.model_dump(mode="json"))
    return str(value)


def mask_changes(changes: dict | None) -> dict:
    """A change as it is stored: plain JSON, secret-named keys masked, then card numbers and
    secret-shaped values masked by the platform's masking (kit.masking)."""
    return _json_safe(mask_value(_json_safe(changes or {})))


def _text(value: str | None, limit: int) -> str | None:
    """A column value as PostgreSQL can store it: no NUL character, at most ``limit`` characters."""
    if value is None:
        return None
    value = str(value).replace("\x00", "\ufffd")
    return value if len(value) <= limit else value[:limit]


# ---------------------------------------------------------------- the chain


def event_hash(
    prev: str, seq: int, event_id: str, occurred_at: str, actor_type: str, actor_id: str,
    actor_role: str | None, merchant_id: str | None, action: str, object_type: str, object_id: str,
    source_ip: str | None, request_id: str | None, changes_json: str,
) -> str:
    """SHA-256 over the previous hash and an event's canonical content (docs/audit.md).

    The one definition of the canonical form: ``record`` and ``verify`` both call it.
    ``occurred_at`` is the RFC 3339 string (``clock.rfc3339``), ``changes_json`` the
    stored text.
    """
    content = orjson.dumps([
        prev, seq, event_id, occurred_at, actor_type, actor_id, actor_role, merchant_id,
        action, object_type, object_id, source_ip, request_id, changes_json,
    ])
    return hashlib.sha256(content).hexdigest()


def stored_event_hash(prev: str, event: Any) -> str:
    """The hash of a stored event, recomputed from its row (used by verify)."""
    return event_hash(
        prev, event.seq, event.id, clock.rfc3339(event.occurred_at), event.actor_type, event.actor_id,
        event.actor_role, event.merchant_id, event.action, event.object_type, event.object_id,
        event.source_ip, event.request_id, event.changes_json,
    )


def record(session: Session, actor: Actor, action: str, object_type: str, object_id: str, *,
           changes: dict | None = None, merchant_id: str | None = None) -> str:
    """Append one event in the caller's transaction (commits or rolls back with the change); returns its id.

    Takes the audit chain's lock, held until the caller commits: every audited change
    queues on it. Call it last, after the change's own locks, so the lock order is
    always "domain rows, then the audit chain" and two writers never deadlock.
    """
    event_id = new_id("aev")
    values = _event_values(actor, action, object_type, object_id, event_id, canonical_json(mask_changes(changes)),
                           merchant_id)
    # Masking and serializing happen before the lock, which is then held until commit.
    seq, prev = repository.lock_chain(session)
    seq += 1
    occurred_at = clock.now()  # read under the chain lock, so time never runs backwards along the chain
    hash_ = event_hash(
        prev, seq, event_id, clock.rfc3339(occurred_at), values["actor_type"], values["actor_id"],
        values["actor_role"], values["merchant_id"], values["action"], values["object_type"],
        values["object_id"], values["source_ip"], values["request_id"], values["changes_json"],
    )
    repository.insert_event(
        session, {**values, "seq": seq, "occurred_at": occurred_at, "prev_hash": prev, "hash": hash_}
    )
    repository.advance_chain(session, seq, hash_)
    return event_id


def record_many(session: Session, actor: Actor, action: str, object_type: str,
                changes_by_object: list[tuple[str, dict | None]], *, merchant_id: str | None = None) -> list[str]:
    """``record`` for one actor's same action on many objects (a batch job closing thousands of cases):
    one event per object, in the given order, appended under one lock of the chain with one bulk insert.

    Each event is what ``record`` would write for it; they share one ``occurred_at``. A change given
    as the same dict object as the one before it is masked and serialized once."""
    if not changes_by_object:
        return []
    common = _event_values(actor, action, object_type, "", "", "", merchant_id)
    event_ids = sorted(new_ids("aev", len(changes_by_object)))
    # Masking and serializing happen before the lock, as in ``record``.
    events: list[tuple[str, str | None, str]] = []
    last_changes: Any = object()
    changes_json = ""
    for event_id, (object_id, changes) in zip(event_ids, changes_by_object, strict=True):
        if changes is not last_changes:
            last_changes, changes_json = changes, canonical_json(mask_changes(changes))
        events.append((event_id, _text(object_id, models.OBJECT_ID_MAX), changes_json))
    actor_type, actor_id, actor_role, tenant, action_, object_type_, source_ip, request_id = (
        common["actor_type"], common["actor_id"], common["actor_role"], common["merchant_id"], common["action"],
        common["object_type"], common["source_ip"], common["request_id"])
    seq, prev = repository.lock_chain(session)
    occurred_at = clock.now()
    at = clock.rfc3339(occurred_at)
    rows: list[tuple] = []
    for event_id, object_id, changes_json in events:
        seq += 1
        hash_ = event_hash(prev, seq, event_id, at, actor_type, actor_id, actor_role, tenant, action_, object_type_,
                           object_id, source_ip, request_id, changes_json)
        rows.append((seq, event_id, occurred_at, actor_type, actor_id, actor_role, tenant, action_, object_type_,
                     object_id, source_ip, request_id, changes_json, prev, hash_))
        prev = hash_
    repository.insert_events(session, rows)
    repository.advance_chain(session, seq, prev)
    return event_ids


def _event_values(actor: Actor, action: str, object_type: str, object_id: str, event_id: str, changes_json: str,
                  merchant_id: str | None) -> dict[str, Any]:
    """An event's columns but its place in the chain (seq, time, hashes), each cut to its width."""
    if actor.type not in ACTOR_TYPES:
        raise ValueError(f"actor type must be one of {ACTOR_TYPES}, not {actor.type!r}")
    actor = _from_origin(actor)
    # The event's tenant: the merchant whose object changed, else the acting merchant.
    tenant = merchant_id if merchant_id is not None else actor.merchant_id
    return {
        "id": event_id,
        "actor_type": actor.type,
        "actor_id": _text(actor.id, models.ACTOR_ID_MAX),
        "actor_role": _text(actor.role, models.ROLE_MAX),
        "merchant_id": _text(tenant, models.MERCHANT_ID_MAX),
        "action": _text(action, models.ACTION_MAX),
        "object_type": _text(object_type, models.OBJECT_TYPE_MAX),
        "object_id": _text(object_id, models.OBJECT_ID_MAX),
        "source_ip": _text(actor.source_ip, models.SOURCE_IP_MAX),
        # Masked as the log masks it: a client-chosen X-Request-Id may hold a card number.
        "request_id": _text(mask_value(actor.request_id), models.REQUEST_ID_MAX),
        "changes_json": changes_json,
    }


# ---------------------------------------------------------------- reading and verifying


def list_events(
    session: Session, *, limit: int, starting_after: str | None = None, tenant: str | None = None, **filters: Any
) -> tuple[list, bool]:
    """One page of events in chain order, and whether more follow.

    ``tenant`` confines the page (and the cursor) to one merchant's events: a merchant
    caller neither sees nor can page from another merchant's events. ``starting_after``
    is an event id from an earlier page of the same list (an event the filters keep); anything
    else is a 422.
    """
    if tenant is not None:
        if filters.get("merchant_id") not in (None, tenant):
            return [], False
        filters["merchant_id"] = tenant
    after_seq = None
    if starting_after is not None:
        # The cursor must be an event of this very list: one the filters (and the tenant) leave out is not.
        after_seq = repository.seq_of(session, starting_after, **filters)
        if after_seq is None:
            raise ValidationFailed("starting_after is not an event id from this list")
    rows = repository.list_events(session, limit=limit, after_seq=after_seq, **filters)
    return rows[:limit], len(rows) > limit


@dataclass
class Report(Findings):
    events_checked: int = 0


def verify(session: Session) -> Report:
    """Recompute the chain from the stored events and report every break, the first one first.

    Walks the events by seq: seqs must run 1, 2, 3 ... without a gap, each event's
    ``prev_hash`` must be its predecessor's stored hash (the link), and each stored hash must
    equal the hash recomputed from the event's own fields and ``prev_hash`` (its content). So
    an event is blamed only for what changed in it or next to it. Rows at seq 0 or below are
    outside the chain, and the chain head must name the last event. Whatever a row holds, it
    is reported, never raised on: the tables may have been written behind our back.
    """
    # Events and the chain head are read by several statements: one snapshot, or an
    # event committing in between would look like a broken chain.
    read_snapshot(session)
    report = Report()
    for stray in repository.events_before_the_chain(session):
        report.fail("outside_chain", "an event at seq 0 or below, outside the chain (which starts at 1)",
                    seq=_shown(stray.seq), event_id=_shown(stray.id))
    head = repository.chain_head(session)
    head_event_id = None
    prev = GENESIS_HASH
    expected_seq = 1
    for event in repository.events_in_chain_order(session):
        where = {"seq": _shown(event.seq), "event_id": _shown(event.id)}
        report.events_checked += 1
        if event.seq != expected_seq:
            report.fail("chain_gap", f"expected event {expected_seq}, found {event.seq}", **where)
        expected_seq = event.seq + 1
        if event.prev_hash != prev:
            report.fail("broken_link", "the event does not name its predecessor's hash", **where)
        problem = _event_problem(event)
        if problem is None:
            try:
                if stored_event_hash(event.prev_hash, event) != event.hash:
                    report.fail("hash_mismatch", "the event's content or predecessor does not match its hash",
                                **where)
            except TypeError as error:  # a value the canonical form has no spelling for (bytes, say)
                report.fail("invalid_event", f"the event's content cannot be hashed: {error}", **where)
        else:
            report.fail("invalid_event", problem, **where)
        if head is not None and event.seq == head[0]:
            head_event_id = event.id
        prev = event.hash
    if head is None:
        report.chain_head = {"seq": None, "hash": None}
        report.fail("chain_head", f"the chain head is missing, the trail ends at {expected_seq - 1}")
        return report
    head_seq, head_hash = head
    report.chain_head = {"seq": _shown(head_seq), "hash": _shown(head_hash)}
    if (head_seq, head_hash) != (expected_seq - 1, prev):
        where = {"seq": _shown(head_seq)}
        if head_event_id is not None:
            where["event_id"] = _shown(head_event_id)
        report.fail("chain_head", f"head says event {_shown(head_seq)}, the trail ends at {expected_seq - 1}",
                    **where)
    return report


def _shown(value: Any) -> Any:
    """A stored value as a report can carry it (JSON): text and whole numbers as they are,
    anything else a tamperer wrote (bytes, a float) as its repr."""
    return value if value is None or isinstance(value, str) or type(value) is int else repr(value)


def _event_problem(event: Any) -> str | None:
    """What in an event's own columns no write of ours could have stored, short of its hash."""
    if not isinstance(event.occurred_at, datetime):
        return f"occurred_at {event.occurred_at!r} is not a time"
    return None
