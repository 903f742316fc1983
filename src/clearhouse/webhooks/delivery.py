"""Sending the outbox: signed per Standard Webhooks, concurrently, retried with backoff.

One run of ``deliver_due``:

1. claim: one short transaction takes the due deliveries and leases them (their
   ``next_attempt_at`` moves past the longest this run can take), so two workers never
   send the same attempt at once and a crashed worker's deliveries come back when the
   lease ends (at-least-once: receivers deduplicate on ``webhook-id``);
2. send: outside any transaction, each request on its own thread with its own timeout,
   so a dead or slow endpoint holds up only its own deliveries;
3. record: one transaction writes every attempt and schedules the retries.

Signing (https://www.standardwebhooks.com): ``webhook-id`` is the event id (the same on
every retry and redelivery), ``webhook-timestamp`` the unix seconds of this attempt,
``webhook-signature`` ``v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`` where
the key is the base64-decoded part of the ``whsec_`` secret; after a secret rotation a
second ``v1,...`` signed with the old secret follows, space-separated, for 24 hours.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import math
import random
import re
import socket
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import structlog
from sqlalchemy import Engine, Row
from sqlalchemy.orm import Session

import clearhouse
from clearhouse.kit import clock
from clearhouse.kit.crypto import FieldCipher
from clearhouse.kit.db import transact
from clearhouse.kit.ids import new_ids
from clearhouse.kit.masking import scrub
from clearhouse.kit.settings import Settings
from clearhouse.webhooks import repository
from clearhouse.webhooks.models import ERROR_MAX, RESPONSE_EXCERPT_MAX
from clearhouse.webhooks.service import destination_allowed, secret_context

log = structlog.get_logger(__name__)

BACKOFF = (
    timedelta(seconds=5), timedelta(minutes=5), timedelta(minutes=30), timedelta(hours=2), timedelta(hours=5),
    timedelta(hours=10),
)
"""The wait after the 1st, 2nd, ... failed attempt; 10 h after every later one."""
JITTER = 0.2
"""Each wait is stretched or shrunk by up to 20 %, so endpoints that failed together (an
outage) are not all retried in the same second."""
MAX_CONCURRENCY = 16
"""Requests in flight at once per run."""
PER_ENDPOINT = 10
"""At most this many deliveries of one endpoint per run: a dead endpoint's backlog cannot
take every thread while healthy endpoints wait."""
USER_AGENT = f"Clearhouse-Webhooks/{clearhouse.__version__}"


def retry_delay(failed_attempts: int) -> timedelta:
    """How long to wait after the ``failed_attempts``-th failure, jitter included."""
    base = BACKOFF[min(failed_attempts, len(BACKOFF)) - 1]
    return base * random.uniform(1 - JITTER, 1 + JITTER)


# --- signing (the receiving side: ``verify``) ---------------------------------------------

def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256>`` of ``{id}.{timestamp}.{body}`` (Standard Webhooks)."""
    content = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(_key(secret), content, hashlib.sha256).digest()).decode()


class WebhookVerificationError(Exception):
    """The delivery is not signed by the holder of the secret, or its timestamp is too old or new."""


def verify(secret: str, headers: Mapping[str, str], body: bytes | str, tolerance: int = 300,
           *, now: float | None = None) -> dict[str, Any]:
    """Check a Clearhouse webhook and return its JSON payload, or raise ``WebhookVerificationError``.

    For merchants to copy: it needs only the standard library. ``body`` must be the raw
    bytes received, before any JSON parsing. ``tolerance`` bounds replays: a delivery
    stamped more than that many seconds from ``now`` (default: this machine's clock) is refused.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    message_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not message_id or not stamp or not signatures:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not unix seconds") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is too far from now")
    raw = body.encode("utf-8") if isinstance(body, str) else body
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(
        hmac.new(key, f"{message_id}.{timestamp}.".encode() + raw, hashlib.sha256).digest()
    ).decode()
    for candidate in signatures.split(" "):
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature.encode(), expected.encode()):
            return json.loads(raw)
    raise WebhookVerificationError("no matching signature")


# --- one run ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    delivery_id: str
    attempt_number: int
    delivery_created_at: datetime
    started_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None
    response_excerpt: str | None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def body_of(event_type: str, event_created_at: datetime, payload_json: str) -> bytes:
    """The delivery body, byte for byte the same on every attempt: ``{"type", "timestamp", "data"}``."""
    return (
        b'{"type":' + orjson.dumps(event_type) + b',"timestamp":' + orjson.dumps(clock.rfc3339(event_created_at))
        + b',"data":' + payload_json.encode("utf-8") + b"}"
    )


def _private_destination(url: str, allow_private: bool = False) -> str | None:
    """The first address the URL's host resolves to that a webhook may not go to, if any: a name that
    pointed somewhere public when the endpoint was made may point inside the network now. With
    ``allow_private`` (development), loopback and private addresses pass; link-local (the cloud
    metadata service), IPv4-mapped and the other special ranges never do."""
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return None  # unresolvable: the request itself fails and is recorded as such
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not destination_allowed(address, allow_private=allow_private):
            return str(address)
    return None


def _text(value: str, limit: int) -> str:
    """What a receiver sent back (or an error about it), as stored and shown: scrubbed (card
    numbers, Authorization and Cookie values, secrets masked, as in the logs), NUL replaced
    (PostgreSQL text cannot hold it), cut at ``limit``. Scrubbed before the cut, so a card
    number across the cut is masked; a digit run the cut leaves at the end is dropped, since
    the rest of a card number may lie beyond it."""
    text = scrub(value.replace("\x00", "\ufffd"))
    if len(text) <= limit:
        return text
    text = text[:limit]
    tail = _TRAILING_DIGITS.search(text)
    if tail is not None and sum(char.isdigit() for char in tail.group(0)) > 6:
        text = text[:tail.start()]
    return text


_TRAILING_DIGITS = re.compile(r"[0-9](?:[ \-]?[0-9*])*[ \-]?$")


def _send(client: httpx.Client, claim: Row, signing_secrets: list[str], settings: Settings,
          allow_private: bool) -> Outcome:
    started_at, started = clock.now(), time.monotonic()
    status_code: int | None = None
    error: str | None = None
    excerpt: str | None = None
    try:
        private = _private_destination(claim.url, allow_private)
        if private is not None:
            error = f"refused: the host resolves to the non-public address {private}"
        else:
            body = body_of(claim.event_type, claim.event_created_at, claim.payload_json)
            timestamp = int(clock.now().timestamp())
            headers = {
                "content-type": "application/json",
                "user-agent": USER_AGENT,
                "webhook-id": claim.event_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": " ".join(sign(s, claim.event_id, timestamp, body) for s in signing_secrets),
            }
            deadline = started + settings.webhook_timeout_seconds
            with client.stream("POST", claim.url, content=body, headers=headers) as response:
                status_code = response.status_code
                received = bytearray()
                # Only an excerpt is kept; a receiver that trickles its answer is cut off at
                # the timeout rather than holding this thread.
                for chunk in response.iter_bytes():
                    received += chunk
                    if len(received) >= RESPONSE_EXCERPT_MAX or time.monotonic() > deadline:
                        break
                # A little past the limit, so a card number across the cut is still recognised.
                excerpt = _text(bytes(received[:RESPONSE_EXCERPT_MAX + 64]).decode("utf-8", "replace"),
                                RESPONSE_EXCERPT_MAX) or None
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
    except httpx.TimeoutException as exc:
        error = f"timeout after {settings.webhook_timeout_seconds:g} s ({type(exc).__name__})"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - one bad delivery must not lose the others' results
        log.exception("webhook_send_failed", delivery_id=claim.id)
        error = f"{type(exc).__name__}: {exc}"
    duration_ms = int((time.monotonic() - started) * 1000)
    return Outcome(
        delivery_id=claim.id, attempt_number=claim.attempt_count, delivery_created_at=claim.created_at,
        started_at=started_at, duration_ms=duration_ms, status_code=status_code,
        error=_text(error, ERROR_MAX) if error else None, response_excerpt=excerpt,
    )


def _signing_secrets(cipher: FieldCipher, claim: Row, now: datetime) -> list[str]:
    secrets = [cipher.decrypt(claim.secret_ciphertext, secret_context(claim.endpoint_id))]
    if claim.previous_secret_ciphertext and claim.previous_secret_expires_at and claim.previous_secret_expires_at > now:
        secrets.append(cipher.decrypt(claim.previous_secret_ciphertext,
                                      secret_context(claim.endpoint_id, "previous_secret")))
    return secrets


def _record(session: Session, outcomes: list[Outcome], retry_window: timedelta) -> None:
    repository.insert_attempts(session, [
        {"id": attempt_id, "delivery_id": o.delivery_id, "attempt_number": o.attempt_number,
         "started_at": o.started_at, "duration_ms": o.duration_ms, "status_code": o.status_code,
         "error": o.error, "response_excerpt": o.response_excerpt}
        for attempt_id, o in zip(new_ids("wha", len(outcomes)), outcomes, strict=True)
    ])
    now = clock.now()
    for o in outcomes:
        values: dict[str, Any] = {"last_attempt_at": o.started_at, "last_status_code": o.status_code,
                                  "last_error": o.error}
        if o.delivered:
            values.update(status="delivered", delivered_at=now, next_attempt_at=None)
        else:
            give_up_at = o.delivery_created_at + retry_window
            if now >= give_up_at:
                values.update(status="failed", next_attempt_at=None)
            else:
                # The last retry lands on the window's end rather than past it.
                values.update(next_attempt_at=min(now + retry_delay(o.attempt_number), give_up_at))
        repository.finish_attempt(session, o.delivery_id, o.attempt_number, values)


def deliver_due(engine: Engine, settings: Settings, cipher: FieldCipher, *, limit: int = 200) -> int:
    """Send every due delivery (up to ``limit``) once; returns the number of attempts made.

    Safe to run from several workers at once. Never raises for a receiver's failure: that is
    recorded on the delivery and retried after ``retry_delay``, until
    ``settings.webhook_retry_hours`` after the delivery was made (for the outbox's own
    deliveries: the event's time), then the delivery is ``failed``."""
    timeout = settings.webhook_timeout_seconds
    allow_private = bool(getattr(settings, "webhook_allow_private_networks", False))
    concurrency = max(1, min(MAX_CONCURRENCY, limit))
    # Past the longest this run can take (connect, send and read each up to the timeout, in
    # ceil(limit / concurrency) waves), plus slack for the two transactions.
    lease = timedelta(seconds=3 * timeout * math.ceil(limit / concurrency) + 60)
    now = clock.now()
    claims = transact(engine, lambda session: repository.claim_due(
        session, now=now, limit=limit, per_endpoint=PER_ENDPOINT, lease_until=now + lease))
    if not claims:
        return 0
    secrets = {claim.id: _signing_secrets(cipher, claim, now) for claim in claims}
    # Redirects are not followed: the signature is for this URL, and a redirect to an inside
    # address would get around the host checks. Proxy variables of the environment are
    # ignored for the same reason (trust_env=False).
    with httpx.Client(
        timeout=httpx.Timeout(timeout), follow_redirects=False, trust_env=False,
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
    ) as client, ThreadPoolExecutor(max_workers=min(concurrency, len(claims)), thread_name_prefix="webhook") as pool:
        outcomes = list(pool.map(lambda claim: _send(client, claim, secrets[claim.id], settings, allow_private),
                                 claims))
    retry_window = timedelta(hours=settings.webhook_retry_hours)
    transact(engine, lambda session: _record(session, outcomes, retry_window))
    delivered = sum(1 for o in outcomes if o.delivered)
    log.info("webhook_deliveries", attempted=len(outcomes), delivered=delivered, failed=len(outcomes) - delivered)
    return len(outcomes)
