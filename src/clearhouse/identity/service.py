"""Merchants (tenants) and API keys: creation, tenant-scoped reads, revocation, and the
check of a signed request.

A merchant caller sees only its own merchant: every read here filters by
``principal.sees`` and answers 404 for another tenant's object, so ids never leak.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Row, insert, select, update
from sqlalchemy.orm import Session

from clearhouse.audit import service as audit
from clearhouse.identity import approvals, repository
from clearhouse.identity.models import ApiKey, ApiNonce, Merchant
from clearhouse.identity.permissions import (
    MERCHANT_KEY_SCOPES,
    PLATFORM_KEY_SCOPES,
    Forbidden,
    Principal,
    key_permissions,
)
from clearhouse.kit import clock
from clearhouse.kit.crypto import FieldCipher
from clearhouse.kit.db import LoopWriter, newest_first, transact
from clearhouse.kit.errors import ClearhouseError, NotFound, ValidationFailed
from clearhouse.kit.ids import new_id

merchants = Merchant.__table__
api_keys = ApiKey.__table__
nonces = ApiNonce.__table__


class SignatureInvalid(ClearhouseError):
    """The signature does not match the request, the key is unknown, or a header is missing."""

    code = "signature_invalid"
    status = 401
    title = "Invalid signature"


class SignatureExpired(ClearhouseError):
    """The timestamp is more than the tolerance (300 s) away from the server's clock."""

    code = "signature_expired"
    status = 401
    title = "Signature expired"


class SignatureReplayed(ClearhouseError):
    """This nonce was already used with this key within the nonce window (600 s)."""

    code = "signature_replayed"
    status = 401
    title = "Replayed request"


class ApiKeyRevoked(ClearhouseError):
    """The key was revoked; it can never be used again."""

    code = "api_key_revoked"
    status = 401
    title = "API key revoked"


class ApiKeyExpired(ClearhouseError):
    """The key passed its expiry time."""

    code = "api_key_expired"
    status = 401
    title = "API key expired"


class MerchantSuspended(ClearhouseError):
    """A suspended merchant's keys are refused until the merchant is active again."""

    code = "merchant_suspended"
    status = 403
    title = "Merchant suspended"


class SecretAlreadyCollected(ClearhouseError):
    """A key's secret is shown once: at creation, or once to its maker after approval."""

    code = "secret_already_collected"
    status = 409
    title = "Secret already collected"


class ApiKeyAlreadyRevoked(ClearhouseError):
    """Revoking is final and happens once."""

    code = "api_key_already_revoked"
    status = 409
    title = "API key already revoked"


# --- merchants ---------------------------------------------------------------------------


class MerchantRequired(ClearhouseError):
    """A platform caller says which merchant a new object belongs to."""

    code = "merchant_required"
    status = 422
    title = "Merchant required"


def owner_of(session: Session, principal: Principal, merchant_id: str | None, *,
             taking_payments: bool = False) -> str:
    """The merchant a new object (card, bank account, payment, wallet, webhook endpoint,
    product) belongs to. Merchant callers own theirs, and naming any other merchant is a
    404 as if it did not exist; platform callers must name one. ``taking_payments`` (a payment,
    an order): a suspended merchant takes none, also through a platform caller (its own keys are
    refused before this)."""
    if principal.merchant_id is not None:
        if merchant_id is not None and merchant_id != principal.merchant_id:
            raise NotFound(f"no merchant {merchant_id}")
        return principal.merchant_id
    if merchant_id is None:
        raise MerchantRequired("platform callers give merchant_id")
    merchant = get_merchant(session, None, merchant_id)
    if taking_payments and merchant.status == "suspended":
        raise MerchantSuspended(f"merchant {merchant.id} is suspended: it takes no payments until it is active again")
    return merchant.id


def merchant_dict(row: Row) -> dict[str, Any]:
    return {
        "id": row.id, "name": row.name, "country": row.country, "default_currency": row.default_currency,
        "timezone": row.timezone, "status": row.status, "kyc_status": row.kyc_status,
        "settlement_cycle": row.settlement_cycle, "metadata": orjson.loads(row.metadata_json),
        "created_at": row.created_at, "updated_at": row.updated_at,
    }


def create_merchant(session: Session, actor: audit.Actor, *, name: str, country: str | None = None,
                    default_currency: str | None = None, timezone: str | None = None,
                    settlement_cycle: str | None = None, metadata: dict[str, Any] | None = None,
                    merchant_id: str | None = None) -> Row:
    if merchant_id is not None:
        existing = session.execute(select(merchants).where(merchants.c.id == merchant_id)).first()
        if existing is not None:  # a retry of the request that made it (the id is derived from its key)
            return existing
    now = clock.now()
    merchant_id = merchant_id or new_id("mch")
    values = {
        "id": merchant_id, "name": name, "country": country, "default_currency": default_currency,
        "timezone": timezone or "UTC", "status": "active", "kyc_status": "pending",
        "settlement_cycle": settlement_cycle or "T+1", "metadata_json": orjson.dumps(metadata or {}).decode(),
        "created_at": now, "updated_at": now,
    }
    session.execute(insert(merchants).values(**values))
    audit.record(session, actor, "merchant.create", "merchant", merchant_id,
                 changes={k: v for k, v in values.items() if k not in ("created_at", "updated_at")},
                 merchant_id=merchant_id)
    return get_merchant(session, None, merchant_id)


def get_merchant(session: Session, principal: Principal | None, merchant_id: str, *, lock: bool = False) -> Row:
    """The merchant, if the caller may see it (``principal`` None: an internal read)."""
    query = select(merchants).where(merchants.c.id == merchant_id)
    row = session.execute(query.with_for_update() if lock else query).first()
    if row is None or (principal is not None and not principal.sees(row.id)):
        raise NotFound(f"no merchant {merchant_id}")
    return row


def list_merchants(session: Session, principal: Principal, *, limit: int,
                   starting_after: str | None) -> tuple[list[Row], bool]:
    query = select(merchants).order_by(merchants.c.id).limit(limit + 1)
    if principal.merchant_id is not None:
        query = query.where(merchants.c.id == principal.merchant_id)
    if starting_after:
        query = query.where(merchants.c.id > starting_after)
    rows = session.execute(query).all()
    return rows[:limit], len(rows) > limit


def update_merchant(session: Session, actor: audit.Actor, principal: Principal, merchant_id: str,
                    changes: dict[str, Any]) -> Row:
    before = get_merchant(session, principal, merchant_id, lock=True)
    values = {("metadata_json" if k == "metadata" else k): (orjson.dumps(v).decode() if k == "metadata" else v)
              for k, v in changes.items() if v is not None}
    if values:
        session.execute(update(merchants).where(merchants.c.id == merchant_id)
                        .values(**values, updated_at=clock.now()))
        old = merchant_dict(before)
        audit.record(session, actor, "merchant.update", "merchant", merchant_id, merchant_id=merchant_id,
                     changes={k: {"from": old.get(k), "to": v} for k, v in changes.items() if v is not None})
    return get_merchant(session, principal, merchant_id)


# --- API keys ----------------------------------------------------------------------------


def key_dict(row: Row) -> dict[str, Any]:
    return {
        "id": row.id, "merchant_id": row.merchant_id, "mode": row.mode, "name": row.name,
        "scopes": orjson.loads(row.scopes_json), "created_by": row.created_by, "created_at": row.created_at,
        "expires_at": row.expires_at, "revoked_at": row.revoked_at, "secret_collected": row.secret_revealed,
    }


def _secret_context(key_id: str) -> str:
    return f"api_keys.secret:{key_id}"


def checked_scopes(mode: str, scopes: list[str] | None, expires_at: datetime | None) -> list[str]:
    """The scopes a new key of ``mode`` gets (all it may hold when None), refusing any it may
    not hold and an expiry in the past: checked before a key is made or held for approval."""
    allowed = PLATFORM_KEY_SCOPES if mode == "platform" else MERCHANT_KEY_SCOPES
    if scopes is not None and not scopes:
        raise ValidationFailed("a key holds at least one scope (leave scopes out for all a key may hold)",
                               errors=[{"loc": ["body", "scopes"], "type": "too_short",
                                        "msg": "at least one scope"}])
    chosen = sorted(allowed if scopes is None else set(scopes))
    refused = set(chosen) - allowed
    if refused:
        raise ValidationFailed(f"a {mode} key cannot hold {', '.join(sorted(refused))}",
                               errors=[{"loc": ["body", "scopes"], "type": "scope_not_allowed",
                                        "msg": f"not allowed for {mode} keys: {sorted(refused)}"}])
    if expires_at is not None and expires_at <= clock.now():
        raise ValidationFailed("expires_at must be in the future",
                               errors=[{"loc": ["body", "expires_at"], "type": "in_the_past", "msg": "in the past"}])
    return chosen


def create_api_key(session: Session, cipher: FieldCipher, actor: audit.Actor, *, merchant_id: str | None,
                   mode: str, name: str = "", scopes: list[str] | None = None, expires_at: datetime | None = None,
                   created_by: str, collected: bool = True) -> tuple[Row, str]:
    """Make a key now (no approval: callers decide that); returns the row and its secret."""
    chosen = checked_scopes(mode, scopes, expires_at)
    key_id = new_id(f"ck_{mode}")
    secret = "cks_" + secrets.token_urlsafe(32)
    session.execute(insert(api_keys).values(
        id=key_id, merchant_id=merchant_id, mode=mode, name=name, scopes_json=orjson.dumps(chosen).decode(),
        secret_ciphertext=cipher.encrypt(secret, _secret_context(key_id)), secret_revealed=collected,
        created_by=created_by, created_at=clock.now(), expires_at=expires_at,
    ))
    audit.record(session, actor, "api_key.create", "api_key", key_id, merchant_id=merchant_id,
                 changes={"mode": mode, "name": name, "scopes": chosen, "expires_at": expires_at})
    return _key(session, key_id), secret


def request_api_key(session: Session, cipher: FieldCipher, principal: Principal, actor: audit.Actor, *,
                    merchant_id: str | None, mode: str, name: str, scopes: list[str] | None,
                    expires_at: datetime | None, approval_ttl: Any = approvals.DEFAULT_TTL,
                    ) -> tuple[str, dict[str, Any]]:
    """A test key is made at once (``("created", key with secret)``); a live or platform key
    is held for a second person (``("held", approval)``)."""
    if merchant_id is not None:
        get_merchant(session, principal, merchant_id)
    elif principal.merchant_id is not None:
        raise NotFound("platform keys are not a merchant's to manage")
    checked = checked_scopes(mode, scopes, expires_at)
    if principal.kind == "api_key" and not set(checked) <= principal.permissions:
        beyond = ", ".join(sorted(set(checked) - principal.permissions))
        raise Forbidden(f"an API key asks only for scopes it holds itself; it does not hold {beyond}")
    if mode == "test":
        row, secret = create_api_key(session, cipher, actor, merchant_id=merchant_id, mode=mode, name=name,
                                     scopes=scopes, expires_at=expires_at, created_by=principal.id)
        return "created", {**key_dict(row), "secret": secret}
    payload = {"merchant_id": merchant_id, "mode": mode, "name": name, "scopes": scopes,
               "expires_at": clock.rfc3339(expires_at) if expires_at else None, "maker_id": principal.id}
    owner = f"merchant {merchant_id}" if merchant_id else "the platform"
    approval = approvals.hold(
        session, principal, action="api_key.create", payload=payload, permission="api_keys:write",
        summary=f"create a {mode} API key {name!r} for {owner}", merchant_id=merchant_id, actor=actor,
        ttl=approval_ttl,
    )
    return "held", approval


def _create_approved_key(cipher_of: Any) -> approvals.Executor:
    def execute(session: Session, payload: dict[str, Any], checker: Principal) -> dict[str, Any]:
        expires_at = datetime.fromisoformat(payload["expires_at"]) if payload.get("expires_at") else None
        if expires_at is not None and expires_at <= clock.now():
            # Not the approver's 422 about a field they never sent: the request no longer fits, so it ends.
            raise approvals.ApprovalStale(f"the key would have expired at {clock.rfc3339(expires_at)}, which has "
                                          "passed since asking; ask for a new key")
        actor = audit.Actor(type=checker.kind, id=checker.id, role=checker.role, merchant_id=checker.merchant_id)
        row, _secret = create_api_key(
            session, cipher_of(), actor, merchant_id=payload["merchant_id"], mode=payload["mode"],
            name=payload["name"], scopes=payload["scopes"], expires_at=expires_at, created_by=payload["maker_id"],
            collected=False,
        )
        return {"api_key_id": row.id}

    return execute


_ciphers: list[FieldCipher] = []


def use_cipher(cipher: FieldCipher) -> None:
    """The cipher approved keys are stored with (set by the app at start-up)."""
    _ciphers[:] = [cipher]


approvals.register("api_key.create", _create_approved_key(lambda: _ciphers[0]))


def _key(session: Session, key_id: str, *, lock: bool = False) -> Row:
    query = select(api_keys).where(api_keys.c.id == key_id)
    row = session.execute(query.with_for_update() if lock else query).first()
    if row is None:
        raise NotFound(f"no API key {key_id}")
    return row


def get_api_key(session: Session, principal: Principal, merchant_id: str | None, key_id: str, *,
                lock: bool = False) -> Row:
    """A key under ``merchant_id`` (None: a platform key) that the caller may see."""
    try:
        row = _key(session, key_id, lock=lock)
    except NotFound:
        row = None
    if row is None or row.merchant_id != merchant_id or not principal.sees(row.merchant_id) \
            or (merchant_id is None and principal.merchant_id is not None):
        raise NotFound(f"no API key {key_id}")
    return row


def list_api_keys(session: Session, principal: Principal, merchant_id: str | None, *, limit: int,
                  starting_after: str | None) -> tuple[list[Row], bool]:
    """A page of a merchant's keys (the platform's with ``merchant_id`` None), newest first."""
    if merchant_id is None:
        if principal.merchant_id is not None:
            return [], False
        where = api_keys.c.merchant_id.is_(None)
    else:
        get_merchant(session, principal, merchant_id)
        where = api_keys.c.merchant_id == merchant_id
    return newest_first(session, select(api_keys).where(where), api_keys, starting_after, limit=limit, scope=where)


def revoke_api_key(session: Session, actor: audit.Actor, principal: Principal, merchant_id: str | None,
                   key_id: str) -> Row:
    row = get_api_key(session, principal, merchant_id, key_id, lock=True)
    if row.revoked_at is not None:
        raise ApiKeyAlreadyRevoked(f"API key {key_id} was revoked at {clock.rfc3339(row.revoked_at)}")
    session.execute(update(api_keys).where(api_keys.c.id == key_id).values(revoked_at=clock.now()))
    audit.record(session, actor, "api_key.revoke", "api_key", key_id, merchant_id=row.merchant_id)
    return _key(session, key_id)


def collect_secret(session: Session, cipher: FieldCipher, actor: audit.Actor, principal: Principal,
                   merchant_id: str | None, key_id: str) -> dict[str, Any]:
    """The secret of a key made through an approval, once, to the person who asked for it."""
    row = get_api_key(session, principal, merchant_id, key_id, lock=True)
    if row.created_by != principal.id:
        raise Forbidden("only the person who asked for this key may collect its secret")
    if row.secret_revealed:
        raise SecretAlreadyCollected(f"the secret of {key_id} was already shown")
    session.execute(update(api_keys).where(api_keys.c.id == key_id).values(secret_revealed=True))
    audit.record(session, actor, "api_key.collect_secret", "api_key", key_id, merchant_id=row.merchant_id)
    return {**key_dict(_key(session, key_id)), "secret": cipher.decrypt(row.secret_ciphertext,
                                                                        _secret_context(key_id))}


# --- checking a signed request -------------------------------------------------------------


@dataclass(frozen=True)
class KeyRecord:
    """What the per-request check needs of a key (read in one query with its merchant)."""

    id: str
    merchant_id: str | None
    mode: str
    scopes: list[str]
    secret_ciphertext: str
    expires_at: datetime | None
    revoked_at: datetime | None
    merchant_status: str | None


_key_query = (
    select(api_keys.c.id, api_keys.c.merchant_id, api_keys.c.mode, api_keys.c.scopes_json,
           api_keys.c.secret_ciphertext, api_keys.c.expires_at, api_keys.c.revoked_at,
           merchants.c.status.label("merchant_status"))
    .select_from(api_keys.outerjoin(merchants, merchants.c.id == api_keys.c.merchant_id))
)


def find_key(session: Session | Connection, key_id: str) -> KeyRecord | None:
    row = session.execute(_key_query.where(api_keys.c.id == key_id)).first()
    if row is None:
        return None
    return KeyRecord(row.id, row.merchant_id, row.mode, orjson.loads(row.scopes_json), row.secret_ciphertext,
                     row.expires_at, row.revoked_at, row.merchant_status)


def key_secret(cipher: FieldCipher, key: KeyRecord) -> str:
    return cipher.decrypt(key.secret_ciphertext, _secret_context(key.id))


def key_principal(key: KeyRecord) -> Principal:
    role = "platform_key" if key.mode == "platform" else "merchant_key"
    return Principal(kind="api_key", id=key.id, role=role, merchant_id=key.merchant_id,
                     permissions=key_permissions(key.mode, key.scopes), mode=key.mode)


def check_key_state(key: KeyRecord) -> None:
    """After the signature matched: is the key still usable?"""
    now = clock.now()
    if key.revoked_at is not None:
        raise ApiKeyRevoked(f"API key {key.id} was revoked")
    if key.expires_at is not None and key.expires_at <= now:
        raise ApiKeyExpired(f"API key {key.id} expired at {clock.rfc3339(key.expires_at)}")
    if key.merchant_status == "suspended":
        raise MerchantSuspended("this merchant is suspended")


async def consume_nonce(recorder: LoopWriter, key_id: str, nonce: str, *,
                        rate_limit_per_minute: int) -> int | None:
    """Record the nonce and count the request against the key's rate limit (this runs for
    every signed request, so in one raw statement on PostgreSQL, from the event loop);
    returns seconds to wait when over the limit. Raises the reason when the nonce was not
    recorded (replayed, key revoked, merchant suspended)."""
    window_seconds = 60
    now = time.time()
    window = int(now // window_seconds) * window_seconds
    recorded, count = await repository.record_request(recorder, key_id, nonce, clock.now(), f"key:{key_id}", window)
    if not recorded:
        key = await recorder.in_thread(transact, recorder.engine, lambda session: find_key(session, key_id))
        if key is None:
            raise SignatureInvalid("the signature does not match the request, or the key is unknown")
        check_key_state(key)
        raise SignatureReplayed("this nonce was already used with this key")
    if 0 < rate_limit_per_minute < count:
        return int(window + window_seconds - now) + 1
    return None


NONCE_PURGE_MARGIN_SECONDS = 5
"""Nonces are forgotten this long after ``CLEARHOUSE_NONCE_TTL_SECONDS`` (identity.md)."""


def purge_nonces(session: Session, ttl_seconds: int) -> int:
    """Forget nonces older than the window (run by the worker): a replay that old fails the
    timestamp check anyway, since settings hold ``ttl_seconds`` >= 2 x the signature tolerance."""
    from datetime import timedelta

    # The timestamp check works in whole seconds and accepts a difference of exactly the
    # tolerance: a nonce is kept a little past its TTL, so no replay slips through the second
    # between its purge and its timestamp's expiry (found by the session 15 tester).
    cutoff = clock.now() - timedelta(seconds=ttl_seconds + NONCE_PURGE_MARGIN_SECONDS)
    return session.execute(nonces.delete().where(nonces.c.seen_at < cutoff)).rowcount or 0
