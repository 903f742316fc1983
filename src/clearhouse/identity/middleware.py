"""Authentication at the edge: every request but the public routes carries a valid
signature (API keys) or a live session (people), or it stops here with a 401.

Pure ASGI, outside the idempotency middleware: an unauthenticated request never
reaches the idempotency table, and an authenticated one has its Idempotency-Key
scoped to its merchant. Permissions are checked later, per route (``requires``).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog
from sqlalchemy import Engine
from starlette.requests import cookie_parser
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clearhouse.identity import service, signing
from clearhouse.identity.permissions import PUBLIC, AuthenticationRequired, Principal, route_permission
from clearhouse.identity.ratelimit import RateLimited
from clearhouse.kit import clock
from clearhouse.kit.api import RequestTooLarge, leaf_routes, limit_body, read_body, replay_body
from clearhouse.kit.crypto import CryptoError, FieldCipher
from clearhouse.kit.db import LoopWriter, transact
from clearhouse.kit.errors import ClearhouseError, MalformedRequest, send_problem
from clearhouse.kit.idempotency import HEADER as IDEMPOTENCY_HEADER
from clearhouse.kit.settings import Settings

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
"""The methods a session's request sends its CSRF token with (``CSRF_HEADER``)."""
CSRF_HEADER = "X-CSRF-Token"
_CSRF = CSRF_HEADER.lower().encode()
_SAFE = frozenset({"GET", "HEAD"})
_KEY = signing.KEY_HEADER.lower().encode()
_TIMESTAMP = signing.TIMESTAMP_HEADER.lower().encode()
_NONCE = signing.NONCE_HEADER.lower().encode()
_SIGNATURE = signing.SIGNATURE_HEADER.lower().encode()
_KEY_CACHE_SIZE = 10_000
_OWN_HEADERS = (b"x-clearhouse-", IDEMPOTENCY_HEADER)


def _repeated_own_header(raw: list[tuple[bytes, bytes]]) -> str | None:
    """The name of a Clearhouse header (``X-Clearhouse-*``, ``Idempotency-Key``) sent twice, if any."""
    seen: set[bytes] = set()
    for name, _value in raw:
        if name.startswith(_OWN_HEADERS):
            if name in seen:
                return name.decode("latin-1")
            seen.add(name)
    return None

log = structlog.get_logger(__name__)


class CsrfFailed(ClearhouseError):
    """A state-changing request made with a session must echo the session's CSRF token."""

    code = "csrf_failed"
    status = 403
    title = "CSRF token missing or wrong"


class AuthenticationMiddleware:
    def __init__(self, app: ASGIApp, *, fastapi_app: Any, engine: Engine, cipher: FieldCipher, settings: Settings):
        self.app = app
        self.fastapi_app = fastapi_app
        # Nonces, rate-limit counters and session touches are bookkeeping, not money: their
        # commits need not wait for the disk (see kit.db.make_engine).
        self.engine = engine
        self.cipher = cipher
        self.settings = settings
        self._public: list[Any] | None = None
        self._public_paths: set[str] = set()
        self._public_starts: tuple[str, ...] = ()
        self._keys: dict[str, tuple[service.KeyRecord, str, Principal]] = {}
        self._limited_until: dict[str, float] = {}  # key id -> end of the window it went over its limit in
        # Its own threads, not anyio's shared pool: about half the cost of a hop, which this
        # pays on every request (clearhouse bench auth), and a slow route cannot starve it.
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="auth")
        self.recorder = LoopWriter(engine, self._in_thread)  # the nonce write of every signed request
        # The app's lifespan closes the recorder's connections (app.py).
        fastapi_app.state.request_recorder = self.recorder

    async def _in_thread(self, work: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work, *args)

    def _is_public(self, scope: Scope) -> bool:
        if self._public is None:
            app = self.fastapi_app
            # The API's own description is public: it is the published contract (api.md).
            documents = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
            self._public = [r for r in leaf_routes(app)
                            if route_permission(r) == PUBLIC or getattr(r, "path", None) in documents]
            # Every request asks this: most public paths are fixed strings, so a set answers
            # "not public" without a regex per public route.
            self._public_paths = {r.path for r in self._public if "{" not in r.path}
            # The rest (paths with a {parameter}) can only match paths that start with their literal part.
            self._public_starts = tuple({r.path.split("{", 1)[0] for r in self._public if "{" in r.path})
        if scope["path"] not in self._public_paths and not scope["path"].startswith(self._public_starts):
            return False
        if scope.get("method") == "HEAD":
            # HEAD is GET without the body (the router answers it so): a public GET is public to HEAD.
            scope = {**scope, "method": "GET"}
        return any(route.matches(scope)[0] == Match.FULL for route in self._public)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if len(headers) != len(scope["headers"]) and (repeated := _repeated_own_header(scope["headers"])):
            # Two signatures, keys or idempotency keys: which one counts would be a guess (a proxy
            # may read the first, this the last), so neither does.
            await send_problem(send, MalformedRequest(f"the header {repeated} is sent more than once"))
            return
        declared, limit = headers.get(b"content-length", b"0"), self.settings.max_request_bytes
        if declared.isdigit() and int(declared) > limit:
            # Said up front by the client: refused before anything else, public routes included.
            await send_problem(send, RequestTooLarge(f"the body is larger than {limit} bytes"))
            return
        if self._is_public(scope):
            await self.app(scope, limit_body(receive, limit), send)
            return
        try:
            if _KEY in headers:
                # Everything the headers alone can refuse is refused before a byte of body is read.
                signed = self._signed_headers(headers)
                key = self._keys.get(signed[0]) or await self._in_thread(self._key, signed[0])
                if key is None:
                    raise service.SignatureInvalid("the signature does not match the request, or the key is unknown")
                body = await read_body(receive, limit=self.settings.max_request_bytes)
                if body is None:
                    raise MalformedRequest("the client disconnected before the body arrived")
                receive = replay_body(body, receive)
                principal, admitted = await self._key_principal(scope, signed, key, body)
            elif b"cookie" in headers:
                principal, admitted = await self._in_thread(self._session_principal, scope, headers), None
                receive = limit_body(receive, limit)
            else:
                raise AuthenticationRequired("sign the request with an API key (api.md, Authentication) or sign in")
        except ClearhouseError as error:
            await send_problem(send, error)
            return
        state = scope.setdefault("state", {})
        state["principal"] = principal
        state["idempotency_scope"] = principal.idempotency_scope
        state["idempotency_caller"] = principal.id
        if admitted is None:
            await self.app(scope, receive, send)
        else:
            await self._read_while_recording(scope, receive, send, admitted)

    async def _read_while_recording(self, scope: Scope, receive: Receive, send: Send,
                                    admitted: asyncio.Future[None]) -> None:
        """A GET or HEAD runs while its nonce is being recorded (PostgreSQL), and its answer is
        held until the nonce is in: the database round trip then overlaps the route's work
        instead of adding to it (``clearhouse bench auth``). A safe method changes nothing, so running one
        that turns out to be replayed, from a revoked key or over the rate limit is harmless:
        its answer is thrown away and the refusal sent instead, exactly as if it had not run."""
        refusal: list[ClearhouseError] = []

        async def send_once_admitted(message: Message) -> None:
            if message["type"] == "http.response.start" and not refusal:
                error = await _refusal(admitted)
                if error is not None:
                    refusal.append(error)
                    await send_problem(send, error)
            if refusal:
                raise _Withheld
            await send(message)

        try:
            await self.app(scope, receive, send_once_admitted)
        except Exception:
            if refusal:
                return  # the refusal went out in the route's place (_Withheld, or what a layer made of it)
            error = await _refusal(admitted)
            if error is None:
                raise
            await send_problem(send, error)  # refused, and the route failed: the refusal is the answer
        else:
            await _refusal(admitted)  # the route answered nothing (not over HTTP): still wait for the write

    def _signed_headers(self, headers: dict[bytes, bytes]) -> tuple[str, str, str, str]:
        """(key id, timestamp, nonce, signature), checked for shape and clock skew."""
        key_id = headers[_KEY].decode("latin-1")
        timestamp = headers.get(_TIMESTAMP, b"").decode("latin-1")
        nonce = headers.get(_NONCE, b"").decode("latin-1")
        given = headers.get(_SIGNATURE, b"").decode("latin-1")
        missing = [name for name, value in ((signing.TIMESTAMP_HEADER, timestamp), (signing.NONCE_HEADER, nonce),
                                            (signing.SIGNATURE_HEADER, given)) if not value]
        if missing:
            raise service.SignatureInvalid(f"missing {', '.join(missing)}")
        if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
            raise service.SignatureInvalid(f"{signing.TIMESTAMP_HEADER} must be unix seconds")
        if abs(int(timestamp) - _now_seconds()) > self.settings.signature_tolerance_seconds:
            raise service.SignatureExpired(
                f"the timestamp is more than {self.settings.signature_tolerance_seconds} s from server time")
        if not signing.NONCE_PATTERN.match(nonce):
            raise service.SignatureInvalid(f"{signing.NONCE_HEADER} must be 16-64 printable ASCII characters")
        return key_id, timestamp, nonce, given

    async def _key_principal(self, scope: Scope, signed: tuple[str, str, str, str],
                             cached: tuple[service.KeyRecord, str, Principal],
                             body: bytes) -> tuple[Principal, asyncio.Future[None] | None]:
        """The key's principal, once the signature matches; and, for a GET or HEAD of a key not
        over its rate limit on PostgreSQL, the nonce write still under way (the caller holds the
        answer until it succeeds). Anything else is recorded before this returns."""
        _key_id, timestamp, nonce, given = signed
        path = scope.get("raw_path") or scope["path"].encode()
        message = signing.signing_string(scope["method"], path.decode("latin-1"),
                                         scope.get("query_string", b"").decode("latin-1"), timestamp, nonce, body)

        key, secret, principal = cached
        if not signing.signature_matches(secret, message, given):
            raise service.SignatureInvalid("the signature does not match the request, or the key is unknown")
        if key.expires_at is not None and key.expires_at <= clock.now():
            raise service.ApiKeyExpired(f"API key {key.id} expired at {clock.rfc3339(key.expires_at)}")
        recording = self._record(key.id, nonce)
        # Only where the write is a network round trip (PostgreSQL): SQLite's is done inline on
        # the loop, which has nothing to overlap it with.
        over_limit = self._limited_until.get(key.id, 0.0) > time.time()
        if self.recorder.postgresql and scope["method"] in _SAFE and not over_limit:
            admitted = asyncio.ensure_future(recording)
            admitted.add_done_callback(_retrieved)
            await asyncio.sleep(0)  # let the write reach the database before the route starts
            return principal, admitted
        await recording
        return principal, None

    async def _record(self, key_id: str, nonce: str) -> None:
        """Record the nonce and count the request; raises the refusal. A key over its limit is
        remembered until its window ends, so its reads wait for the count again instead of
        running first (the limit also protects the server's work)."""
        wait = await service.consume_nonce(self.recorder, key_id, nonce,
                                           rate_limit_per_minute=self.settings.api_key_rate_limit_per_minute)
        if wait is not None:
            self._limited_until[key_id] = time.time() + wait
            if len(self._limited_until) > _KEY_CACHE_SIZE:
                self._limited_until.pop(next(iter(self._limited_until)))
            raise RateLimited("this API key is over its rate limit", retry_after=wait)

    def _key(self, key_id: str) -> tuple[service.KeyRecord, str, Principal] | None:
        """A key's unchanging parts (secret, scopes, merchant, expiry), read and decrypted once
        per process; what can change (revocation, the merchant's status) is checked on every
        request by the nonce write itself."""
        cached = self._keys.get(key_id)
        if cached is None:
            key = transact(self.engine, lambda session: service.find_key(session, key_id))
            if key is None:
                return None
            try:
                secret = service.key_secret(self.cipher, key)
            except CryptoError as error:
                # A damaged secret: the operator's problem, told in the log only. The caller,
                # who has not proven anything yet, gets what an unknown key gets (401).
                log.error("api_key_secret_unreadable", api_key_id=key.id, code=error.code, detail=error.detail)
                return None
            cached = (key, secret, service.key_principal(key))
            if len(self._keys) >= _KEY_CACHE_SIZE:
                self._keys.pop(next(iter(self._keys)))
            self._keys[key_id] = cached
        return cached

    def _session_principal(self, scope: Scope, headers: dict[bytes, bytes]) -> Principal:
        from clearhouse.identity.people.service import SESSION_COOKIE, session_principal

        token = cookie_parser(headers[b"cookie"].decode("latin-1")).get(SESSION_COOKIE)
        if not token:
            raise AuthenticationRequired("sign the request with an API key (api.md, Authentication) or sign in")
        found = transact(self.engine, lambda session: session_principal(session, token, self.settings))
        if found is None:
            raise AuthenticationRequired("the session has ended; sign in again")
        principal, csrf_token = found
        if scope["method"] in UNSAFE_METHODS:
            given = headers.get(_CSRF, b"")
            if not hmac.compare_digest(given, csrf_token.encode()):
                raise CsrfFailed(f"send the session's CSRF token in {CSRF_HEADER}")
        return principal


class _Withheld(Exception):
    """Stops a route's answer after a refusal was sent in its place."""


async def _refusal(admitted: asyncio.Future[None]) -> ClearhouseError | None:
    try:
        await admitted
    except ClearhouseError as error:
        return error
    return None


def _retrieved(admitted: asyncio.Future[None]) -> None:
    """A write whose request went away (client gone) must not log 'exception never retrieved'."""
    if not admitted.cancelled():
        admitted.exception()


def _now_seconds() -> int:
    # Wall time, not kit.clock: the timestamp is about the network, and a test (or a
    # replayed business day) that freezes the business clock must not expire signatures.
    return int(time.time())
