"""Webhooks' rules: merchants' endpoints, the transactional outbox (``emit``), redelivery.

Why an outbox: an event is written in the same transaction as the change it reports, so
a merchant hears of a payment if and only if the payment was committed, and no HTTP call
ever runs inside a payment's transaction (a slow merchant cannot slow payments down).
The worker sends what the outbox holds (``delivery.deliver_due``).
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import orjson
from sqlalchemy import Row
from sqlalchemy.orm import Session

from clearhouse.audit import service as audit
from clearhouse.identity import service as identity
from clearhouse.identity.permissions import Principal
from clearhouse.kit import clock
from clearhouse.kit.crypto import FieldCipher
from clearhouse.kit.errors import ClearhouseError, NotFound, refuse_nulls
from clearhouse.kit.ids import new_id, new_ids
from clearhouse.kit.masking import mask_free_form
from clearhouse.webhooks import repository
from clearhouse.webhooks.models import URL_MAX

EVENT_TYPES: tuple[str, ...] = (
    "payment.succeeded",
    "payment.failed",
    "payment.canceled",
    "payment.requires_capture",
    "payment.processing",
    "payment.requires_action",
    "refund.succeeded",
    "refund.failed",
    "order.delivered",
    "order.refunded",
)
"""Every event type ``emit`` accepts and an endpoint may filter on (``"*"``: all of them)."""
ALL_EVENTS = "*"
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
ROTATION_OVERLAP = timedelta(hours=24)
"""After a rotation, deliveries are signed with the old secret too for this long."""


class InvalidWebhookUrl(ClearhouseError):
    """A webhook URL is https with a host name or public address, no user name or password and
    no fragment, at most 2048 characters. http, and loopback or private addresses, only
    where the operator allows it (``webhook_allow_private_networks``), for development."""

    code = "invalid_webhook_url"
    status = 422
    title = "Invalid webhook URL"


class UnknownEventType(ClearhouseError):
    """An endpoint filters on the published event types (``EVENT_TYPES``) or ``"*"``."""

    code = "unknown_event_type"
    status = 422
    title = "Unknown event type"


class EndpointNotFound(NotFound):
    """No such webhook endpoint (or deleted, or another merchant's)."""

    code = "webhook_endpoint_not_found"
    title = "Webhook endpoint not found"


class EventNotFound(NotFound):
    """No such event, or another merchant's."""

    code = "event_not_found"
    title = "Event not found"


class EndpointDisabled(ClearhouseError):
    """A disabled endpoint receives nothing, redeliveries included: enable it first."""

    code = "webhook_endpoint_disabled"
    status = 409
    title = "Webhook endpoint disabled"


# --- validation --------------------------------------------------------------------------

_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_PRIVATE_SUFFIXES = (".localhost", ".local", ".internal", ".lan", ".home.arpa")


def _is_private_name(host: str) -> bool:
    return host == "localhost" or host.endswith(_PRIVATE_SUFFIXES)


def _ip_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


_IPV4_IN_LAST_32_BITS = tuple(ipaddress.ip_network(prefix) for prefix in (
    "64:ff9b::/96",  # NAT64, well-known prefix (RFC 6052)
    "64:ff9b:1::/48",  # NAT64, local-use prefix (RFC 8215)
    "::ffff:0:0:0/96",  # SIIT, IPv4-translated (RFC 2765)
    "::/96",  # IPv4-compatible (deprecated, RFC 4291)
))


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A public address, and so is any IPv4 address an IPv6 one carries. NAT64, SIIT, IPv4-compatible
    and 6to4 addresses count as global, yet a gateway delivers them to the IPv4 address inside, which
    may be loopback or private (``64:ff9b::7f00:1`` is 127.0.0.1). IPv4-mapped (``::ffff:0:0/96``) and
    Teredo addresses are never public, whatever they carry: a mapped address is the host's own IPv4
    socket in disguise, and a Teredo one reaches its client through a relay we do not choose."""
    if not address.is_global:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None or address.teredo is not None:
            return False
        inner = address.sixtofour
        if inner is None and any(address in network for network in _IPV4_IN_LAST_32_BITS):
            inner = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if inner is not None and not inner.is_global:
            return False
    return True


_DEVELOPMENT_NETWORKS = tuple(ipaddress.ip_network(prefix) for prefix in (
    "127.0.0.0/8", "::1/128",  # loopback
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # private (RFC 1918)
    "fc00::/7",  # unique local (RFC 4193)
))


def is_development_host(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A loopback or private address: what ``webhook_allow_private_networks`` opens, and nothing else.
    Link-local addresses (``169.254.169.254``, the cloud metadata service; ``fe80::/10``), IPv4-mapped and
    Teredo forms, and every other special range stay refused with the setting on."""
    return any(address in network for network in _DEVELOPMENT_NETWORKS)


def destination_allowed(address: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_private: bool) -> bool:
    """Whether a webhook may go to ``address``: a public one; with ``allow_private``, a loopback or private one."""
    return is_public(address) or (allow_private and is_development_host(address))


def check_url(url: str, *, allow_private: bool) -> str:
    """The URL if it may receive webhooks, else ``InvalidWebhookUrl`` saying why.

    Names that resolve to private addresses are caught again when sending (delivery.py),
    since a name can point anywhere later."""
    if len(url) > URL_MAX:
        raise InvalidWebhookUrl(f"a webhook URL is at most {URL_MAX} characters")
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in url):
        raise InvalidWebhookUrl("a webhook URL has no spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise InvalidWebhookUrl(f"the URL cannot be parsed: {error}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise InvalidWebhookUrl("a webhook URL starts with https://")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidWebhookUrl("a webhook URL carries no user name or password; use the signature to "
                                "authenticate deliveries")
    if parts.fragment or url.endswith("#"):
        raise InvalidWebhookUrl("a webhook URL has no #fragment (it is never sent)")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise InvalidWebhookUrl("a webhook URL names a host")
    if port == 0:
        raise InvalidWebhookUrl("port 0 is not a port")
    address = _ip_address(host)
    if address is None:
        try:
            ascii_host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidWebhookUrl("the host is not a valid domain name") from None
        labels = ascii_host.split(".")
        if not all(_HOST_LABEL.match(label) for label in labels) or len(ascii_host) > 253:
            raise InvalidWebhookUrl("the host is not a valid domain name")
        if labels[-1].isdigit():
            raise InvalidWebhookUrl("the host is neither a domain name nor an IP address")
        # A name without a dot is resolved through the local search domains: an inside name.
        private = len(labels) == 1 or _is_private_name(ascii_host)
    else:
        private = not is_public(address)
        if address.is_unspecified or address.is_multicast:
            raise InvalidWebhookUrl("the host is not an address a request can go to")
        if private and allow_private and not is_development_host(address):
            raise InvalidWebhookUrl("the host is a link-local, IPv4-mapped, Teredo or otherwise special address; "
                                    "only loopback and private ones are allowed, and only for development")
    if private and not allow_private:
        raise InvalidWebhookUrl("the host is a loopback or private address; webhooks go to the public internet")
    if scheme == "http" and not (allow_private and private):
        raise InvalidWebhookUrl("a webhook URL starts with https:// (http only to loopback or private "
                                "addresses, where the operator allows it)")
    return url


def check_event_types(event_types: list[str]) -> list[str]:
    """The filter without repeats, in the order given; every entry known."""
    unknown = [t for t in event_types if t != ALL_EVENTS and t not in EVENT_TYPES]
    if unknown:
        raise UnknownEventType(f"unknown event type {unknown[0]!r}; known: {', '.join(EVENT_TYPES)} or '*'",
                               known=list(EVENT_TYPES))
    return list(dict.fromkeys(event_types))


def matches(event_types: list[str], event_type: str) -> bool:
    return ALL_EVENTS in event_types or event_type in event_types


# --- endpoints ---------------------------------------------------------------------------

def new_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


def secret_context(endpoint_id: str, column: str = "secret") -> str:
    return f"webhook_endpoints.{column}:{endpoint_id}"


def endpoint_dict(row: Row) -> dict[str, Any]:
    return {
        "id": row.id, "livemode": row.livemode, "merchant_id": row.merchant_id, "url": row.url,
        "description": row.description,
        "event_types": orjson.loads(row.event_types_json), "enabled": row.enabled,
        "previous_secret_expires_at": row.previous_secret_expires_at,
        "created_at": row.created_at, "updated_at": row.updated_at,
    }


def create_endpoint(session: Session, cipher: FieldCipher, actor: audit.Actor, principal: Principal, *,
                    url: str, event_types: list[str], description: str | None = None, enabled: bool = True,
                    merchant_id: str | None = None, allow_private: bool = False) -> tuple[Row, str]:
    """A new endpoint and its signing secret (returned here only; stored encrypted)."""
    check_url(url, allow_private=allow_private)
    event_types = check_event_types(event_types)
    description = mask_free_form(description)  # stored as shown (data-protection.md, "Free text")
    owner = identity.owner_of(session, principal, merchant_id)
    endpoint_id, secret, now = new_id("we"), new_secret(), clock.now()
    values = {
        "id": endpoint_id, "merchant_id": owner, "livemode": principal.creates_livemode, "url": url,
        "description": description,
        "event_types_json": orjson.dumps(event_types).decode(), "enabled": enabled,
        "secret_ciphertext": cipher.encrypt(secret, secret_context(endpoint_id)),
        "created_at": now, "updated_at": now,
    }
    repository.insert_endpoint(session, values)
    audit.record(session, actor, "webhook_endpoint.create", "webhook_endpoint", endpoint_id, merchant_id=owner,
                 changes={"url": url, "event_types": event_types, "enabled": enabled, "description": description})
    return _endpoint(session, None, endpoint_id), secret


def _endpoint(session: Session, principal: Principal | None, endpoint_id: str, *, lock: bool = False,
              deleted: bool = False) -> Row:
    row = repository.get_endpoint(session, endpoint_id, lock=lock, deleted=deleted)
    if row is None or (principal is not None and not principal.sees_object(row.merchant_id, row.livemode)):
        raise EndpointNotFound(f"no webhook endpoint {endpoint_id}")
    return row


def get_endpoint(session: Session, principal: Principal, endpoint_id: str) -> Row:
    return _endpoint(session, principal, endpoint_id)


def list_endpoints(session: Session, principal: Principal, *, merchant_id: str | None, limit: int,
                   starting_after: str | None, livemode: bool | None = None) -> tuple[list[Row], bool]:
    """Endpoints oldest first; merchant callers see their own (another merchant's filter: none)."""
    scope = principal.listing(repository.endpoints, merchant_id, livemode)
    if scope is None:
        return [], False
    return repository.list_endpoints(session, scope, limit=limit, starting_after=starting_after)


def update_endpoint(session: Session, actor: audit.Actor, principal: Principal, endpoint_id: str,
                    changes: dict[str, Any], *, allow_private: bool = False) -> Row:
    """Change the URL, filter, description or enabled flag (``changes``: only the fields given;
    a description of None clears it)."""
    refuse_nulls(changes, ("url", "event_types", "enabled"))
    before = _endpoint(session, principal, endpoint_id, lock=True)
    old = endpoint_dict(before)
    if "url" in changes:
        check_url(changes["url"], allow_private=allow_private)
    if "event_types" in changes:
        changes = {**changes, "event_types": check_event_types(changes["event_types"])}
    if changes.get("description") is not None:
        changes = {**changes, "description": mask_free_form(changes["description"])}
    diff = {k: {"from": old[k], "to": v} for k, v in changes.items() if old.get(k) != v}
    if diff:
        values = {("event_types_json" if k == "event_types" else k):
                  (orjson.dumps(v).decode() if k == "event_types" else v) for k, v in changes.items()}
        repository.update_endpoint(session, endpoint_id, {**values, "updated_at": clock.now()})
        audit.record(session, actor, "webhook_endpoint.update", "webhook_endpoint", endpoint_id,
                     merchant_id=before.merchant_id, changes=diff)
    return _endpoint(session, None, endpoint_id)


def delete_endpoint(session: Session, actor: audit.Actor, principal: Principal, endpoint_id: str) -> int:
    """Remove an endpoint; its pending deliveries are canceled (returns how many). Its
    delivery log stays for the audit trail."""
    row = _endpoint(session, principal, endpoint_id, lock=True)
    now = clock.now()
    repository.update_endpoint(session, endpoint_id, {"deleted_at": now, "updated_at": now, "enabled": False})
    canceled = repository.cancel_pending_deliveries(session, endpoint_id)
    audit.record(session, actor, "webhook_endpoint.delete", "webhook_endpoint", endpoint_id,
                 merchant_id=row.merchant_id, changes={"url": row.url, "pending_deliveries_canceled": canceled})
    return canceled


def rotate_secret(session: Session, cipher: FieldCipher, actor: audit.Actor, principal: Principal,
                  endpoint_id: str) -> tuple[Row, str]:
    """A new signing secret, returned once. For ``ROTATION_OVERLAP`` deliveries carry a
    signature under the old secret as well, so verifiers holding either one accept them."""
    row = _endpoint(session, principal, endpoint_id, lock=True)
    old_secret = cipher.decrypt(row.secret_ciphertext, secret_context(endpoint_id))
    secret, now = new_secret(), clock.now()
    repository.update_endpoint(session, endpoint_id, {
        "secret_ciphertext": cipher.encrypt(secret, secret_context(endpoint_id)),
        "previous_secret_ciphertext": cipher.encrypt(old_secret, secret_context(endpoint_id, "previous_secret")),
        "previous_secret_expires_at": now + ROTATION_OVERLAP,
        "updated_at": now,
    })
    audit.record(session, actor, "webhook_endpoint.rotate_secret", "webhook_endpoint", endpoint_id,
                 merchant_id=row.merchant_id, changes={"overlap_ends_at": clock.rfc3339(now + ROTATION_OVERLAP)})
    return _endpoint(session, None, endpoint_id), secret


# --- the outbox --------------------------------------------------------------------------


def _rfc3339(value: Any) -> str:
    if isinstance(value, datetime):
        return clock.rfc3339(value)
    raise TypeError(f"{type(value).__name__} is not plain JSON")


def emit(session: Session, *, merchant_id: str, livemode: bool, event_type: str, data: dict[str, Any]) -> str:
    """Record an event and one delivery per enabled endpoint of the merchant and the event's mode
    (``livemode``, its cause's) whose filter matches, in the caller's transaction (no commit, no
    HTTP); returns the event id ("evt_...").

    Call it beside the state change it reports: if that change rolls back, so does the event.
    ``data`` must be plain JSON (str keys; str, int, bool, None, lists, dicts; datetimes are
    written as the API writes them, ``2026-11-23T05:25:56.000000Z``)."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}: add it to webhooks.service.EVENT_TYPES first")
    if not isinstance(data, dict):
        raise TypeError("event data is a JSON object (a dict)")
    # Times as the API writes them (``clock.rfc3339``); TypeError for anything else not plain JSON.
    payload = orjson.dumps(data, default=_rfc3339, option=orjson.OPT_PASSTHROUGH_DATETIME).decode()
    event_id, now = new_id("evt"), clock.now()
    repository.insert_event(session, {
        "id": event_id, "merchant_id": merchant_id, "livemode": livemode, "type": event_type, "payload_json": payload,
        "created_at": now,
    })
    targets = [row.id for row in repository.enabled_endpoints_of(session, merchant_id, livemode)
               if matches(orjson.loads(row.event_types_json), event_type)]
    _schedule(session, event_id, merchant_id, targets, manual=False)
    return event_id


def _schedule(session: Session, event_id: str, merchant_id: str, endpoint_ids: list[str], *,
              manual: bool) -> list[str]:
    """One delivery per endpoint, due now."""
    if not endpoint_ids:
        return []
    now = clock.now()
    delivery_ids = new_ids("whd", len(endpoint_ids))
    repository.insert_deliveries(session, [
        {"id": delivery_id, "event_id": event_id, "endpoint_id": endpoint_id, "merchant_id": merchant_id,
         "status": "pending", "manual": manual, "attempt_count": 0, "next_attempt_at": now,
         "last_attempt_at": None, "last_status_code": None, "last_error": None, "delivered_at": None,
         "created_at": now}
        for delivery_id, endpoint_id in zip(delivery_ids, endpoint_ids, strict=True)
    ])
    return delivery_ids


# --- events and the delivery log ---------------------------------------------------------

def event_dict(row: Row) -> dict[str, Any]:
    return {"id": row.id, "livemode": row.livemode, "merchant_id": row.merchant_id, "type": row.type,
            "data": orjson.loads(row.payload_json), "created_at": row.created_at}


def get_event(session: Session, principal: Principal, event_id: str) -> Row:
    row = repository.get_event(session, event_id)
    if row is None or not principal.sees_object(row.merchant_id, row.livemode):
        raise EventNotFound(f"no event {event_id}")
    return row


def list_events(session: Session, principal: Principal, *, event_type: str | None, merchant_id: str | None,
                limit: int, starting_after: str | None, livemode: bool | None = None) -> tuple[list[Row], bool]:
    """Events oldest first; merchant callers see their own. ``*`` is every type, as in an endpoint's filter."""
    if event_type is not None:
        check_event_types([event_type])
        if event_type == "*":
            event_type = None
    scope = principal.listing(repository.events, merchant_id, livemode)
    if scope is None:
        return [], False
    return repository.list_events(session, scope, event_type, limit=limit, starting_after=starting_after)


def delivery_dicts(session: Session, rows: list[Row]) -> list[dict[str, Any]]:
    """Deliveries with their attempts, oldest attempt first."""
    attempts = repository.attempts_of(session, [row.id for row in rows])
    return [
        {
            "id": row.id, "event_id": row.event_id, "event_type": row.event_type, "endpoint_id": row.endpoint_id,
            "merchant_id": row.merchant_id, "status": row.status, "manual": row.manual,
            "attempt_count": row.attempt_count, "next_attempt_at": row.next_attempt_at,
            "last_attempt_at": row.last_attempt_at, "last_status_code": row.last_status_code,
            "last_error": row.last_error, "delivered_at": row.delivered_at, "created_at": row.created_at,
            "attempts": [
                {"attempt_number": a.attempt_number, "started_at": a.started_at, "duration_ms": a.duration_ms,
                 "status_code": a.status_code, "error": a.error, "response_excerpt": a.response_excerpt}
                for a in attempts[row.id]
            ],
        }
        for row in rows
    ]


def list_deliveries(session: Session, principal: Principal, endpoint_id: str, *, status: str | None, limit: int,
                    starting_after: str | None) -> tuple[list[dict[str, Any]], bool]:
    """An endpoint's delivery log, newest first, each with its attempts; kept, and readable, after the
    endpoint is deleted."""
    _endpoint(session, principal, endpoint_id, deleted=True)
    rows, more = repository.list_deliveries(session, endpoint_id, status=status, limit=limit,
                                            starting_after=starting_after)
    return delivery_dicts(session, rows), more


def redeliver(session: Session, actor: audit.Actor, principal: Principal, event_id: str, *,
              endpoint_id: str | None = None) -> list[dict[str, Any]]:
    """Send an event again, now: to one endpoint of its merchant (which must be enabled;
    its filter is not consulted, the caller chose it), or to every enabled endpoint whose
    filter matches. New deliveries with their own retry window; the webhook-id stays the
    event id, so a receiver that already handled it can recognise it."""
    event = get_event(session, principal, event_id)
    if endpoint_id is not None:
        endpoint = _endpoint(session, principal, endpoint_id)
        if endpoint.merchant_id != event.merchant_id or endpoint.livemode != event.livemode:
            raise EndpointNotFound(f"no webhook endpoint {endpoint_id} of the event's merchant and mode")
        if not endpoint.enabled:
            raise EndpointDisabled(f"webhook endpoint {endpoint_id} is disabled")
        targets = [endpoint_id]
    else:
        targets = [row.id for row in repository.enabled_endpoints_of(session, event.merchant_id, event.livemode)
                   if matches(orjson.loads(row.event_types_json), event.type)]
    delivery_ids = _schedule(session, event.id, event.merchant_id, targets, manual=True)
    audit.record(session, actor, "webhook_event.redeliver", "webhook_event", event.id, merchant_id=event.merchant_id,
                 changes={"endpoint_ids": targets, "delivery_ids": delivery_ids})
    return delivery_dicts(session, repository.deliveries_by_ids(session, delivery_ids))
