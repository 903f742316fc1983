"""Webhook HTTP endpoints: merchants' endpoints, their delivery log, events, redelivery."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Query, Request
from sqlalchemy.orm import Session

from clearhouse.identity.permissions import actor_of, principal_of, requires
from clearhouse.kit.api import ModeFilter, Page, PrefixRouter
from clearhouse.kit.db import transact
from clearhouse.webhooks import service
from clearhouse.webhooks.schemas import (
    DeliveryOut,
    EventOut,
    RedeliverOut,
    RedeliverRequest,
    WebhookEndpointCreate,
    WebhookEndpointDeleted,
    WebhookEndpointOut,
    WebhookEndpointUpdate,
    WebhookEndpointWithSecret,
)

router = PrefixRouter(prefix="/v1", tags=["webhooks"])
_READ = [requires("webhooks:read")]
_WRITE = [requires("webhooks:write")]

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown, deleted, or another merchant's (`webhook_endpoint_not_found`, "
          "`event_not_found`, `not_found` for a merchant)"},
    409: {"description": "The endpoint is disabled (`webhook_endpoint_disabled`)"},
    422: {"description": "A rule is broken (`validation_error`; writing an endpoint: `invalid_webhook_url`, "
          "`unknown_event_type`, `merchant_required`)"},
}
Limit = Annotated[int, Query(ge=1, le=500)]
Cursor = Annotated[str | None, Query(max_length=64)]
MerchantFilter = Annotated[str | None, Query(max_length=40)]


def _engine(request: Request) -> Any:
    return request.app.state.engine


def _allow_private(request: Request) -> bool:
    return bool(getattr(request.app.state.settings, "webhook_allow_private_networks", False))


@router.post("/webhook_endpoints", status_code=201, response_model=WebhookEndpointWithSecret, responses=_ERRORS,
             dependencies=_WRITE)
def create_endpoint(body: WebhookEndpointCreate, request: Request) -> WebhookEndpointWithSecret:
    """Add an endpoint. The answer carries its signing secret, the only time it is shown."""
    principal, actor, cipher = principal_of(request), actor_of(request), request.app.state.cipher

    def work(session: Session) -> WebhookEndpointWithSecret:
        row, secret = service.create_endpoint(
            session, cipher, actor, principal, url=body.url, event_types=body.event_types,
            description=body.description, enabled=body.enabled, merchant_id=body.merchant_id,
            allow_private=_allow_private(request),
        )
        return WebhookEndpointWithSecret(**service.endpoint_dict(row), secret=secret)

    return transact(_engine(request), work)


@router.get("/webhook_endpoints", response_model=Page[WebhookEndpointOut], dependencies=_READ)
def list_endpoints(request: Request, limit: Limit = 50, starting_after: Cursor = None,
                   merchant_id: MerchantFilter = None, livemode: ModeFilter = None) -> Page[WebhookEndpointOut]:
    """Endpoints oldest first. Merchant callers see their own."""
    principal = principal_of(request)
    rows, more = transact(_engine(request), lambda s: service.list_endpoints(
        s, principal, merchant_id=merchant_id, limit=limit, starting_after=starting_after, livemode=livemode))
    return Page(data=[WebhookEndpointOut(**service.endpoint_dict(r)) for r in rows], has_more=more,
                next_cursor=rows[-1].id if more else None)


@router.get("/webhook_endpoints/{endpoint_id}", response_model=WebhookEndpointOut, responses=_ERRORS,
            dependencies=_READ)
def get_endpoint(endpoint_id: str, request: Request) -> WebhookEndpointOut:
    principal = principal_of(request)
    return transact(_engine(request), lambda s: WebhookEndpointOut(
        **service.endpoint_dict(service.get_endpoint(s, principal, endpoint_id))))


@router.patch("/webhook_endpoints/{endpoint_id}", response_model=WebhookEndpointOut, responses=_ERRORS,
              dependencies=_WRITE)
def update_endpoint(endpoint_id: str, body: WebhookEndpointUpdate, request: Request) -> WebhookEndpointOut:
    """Change the URL, event types, description (null clears it) or enabled flag. Deliveries
    already scheduled keep going to the endpoint; a disabled endpoint's wait until it is enabled."""
    principal, actor = principal_of(request), actor_of(request)
    changes = body.model_dump(exclude_unset=True)
    return transact(_engine(request), lambda s: WebhookEndpointOut(**service.endpoint_dict(service.update_endpoint(
        s, actor, principal, endpoint_id, changes, allow_private=_allow_private(request)))))


@router.delete("/webhook_endpoints/{endpoint_id}", response_model=WebhookEndpointDeleted, responses=_ERRORS,
               dependencies=_WRITE)
def delete_endpoint(endpoint_id: str, request: Request) -> WebhookEndpointDeleted:
    """Remove an endpoint; its pending deliveries are canceled, its delivery log is kept."""
    principal, actor = principal_of(request), actor_of(request)
    transact(_engine(request), lambda s: service.delete_endpoint(s, actor, principal, endpoint_id))
    return WebhookEndpointDeleted(id=endpoint_id, deleted=True)


@router.post("/webhook_endpoints/{endpoint_id}/rotate_secret", response_model=WebhookEndpointWithSecret,
             responses=_ERRORS, dependencies=_WRITE)
def rotate_secret(endpoint_id: str, request: Request) -> WebhookEndpointWithSecret:
    """A new signing secret, shown this once. For 24 hours deliveries carry a second signature
    made with the old secret, so receivers can switch over without missing an event."""
    principal, actor, cipher = principal_of(request), actor_of(request), request.app.state.cipher

    def work(session: Session) -> WebhookEndpointWithSecret:
        row, secret = service.rotate_secret(session, cipher, actor, principal, endpoint_id)
        return WebhookEndpointWithSecret(**service.endpoint_dict(row), secret=secret)

    return transact(_engine(request), work)


@router.get("/webhook_endpoints/{endpoint_id}/deliveries", response_model=Page[DeliveryOut], responses=_ERRORS,
            dependencies=_READ)
def list_deliveries(
    endpoint_id: str, request: Request, limit: Limit = 50, starting_after: Cursor = None,
    status: Literal["pending", "delivered", "failed", "canceled"] | None = None,
) -> Page[DeliveryOut]:
    """The endpoint's delivery log, newest first, each delivery with its attempts (status code,
    duration, error, the start of the answer)."""
    principal = principal_of(request)
    data, more = transact(_engine(request), lambda s: service.list_deliveries(
        s, principal, endpoint_id, status=status, limit=limit, starting_after=starting_after))
    return Page(data=[DeliveryOut(**d) for d in data], has_more=more, next_cursor=data[-1]["id"] if more else None)


@router.get("/events", response_model=Page[EventOut], responses=_ERRORS, dependencies=_READ)
def list_events(
    request: Request, limit: Limit = 50, starting_after: Cursor = None,
    type: Annotated[str | None, Query(max_length=100)] = None,  # noqa: A002 - the API's name for it
    merchant_id: MerchantFilter = None,
    livemode: ModeFilter = None,
) -> Page[EventOut]:
    """Events oldest first, of one ``type`` if given. Merchant callers see their own."""
    principal = principal_of(request)
    rows, more = transact(_engine(request), lambda s: service.list_events(
        s, principal, event_type=type, merchant_id=merchant_id, limit=limit, starting_after=starting_after,
        livemode=livemode))
    return Page(data=[EventOut(**service.event_dict(r)) for r in rows], has_more=more,
                next_cursor=rows[-1].id if more else None)


@router.get("/events/{event_id}", response_model=EventOut, responses=_ERRORS, dependencies=_READ)
def get_event(event_id: str, request: Request) -> EventOut:
    principal = principal_of(request)
    return transact(_engine(request), lambda s: EventOut(**service.event_dict(service.get_event(s, principal,
                                                                                                  event_id))))


@router.post("/events/{event_id}/redeliver", status_code=202, response_model=RedeliverOut, responses=_ERRORS,
             dependencies=_WRITE)
def redeliver(event_id: str, request: Request, body: RedeliverRequest | None = None) -> RedeliverOut:
    """Send the event again now: to ``endpoint_id`` only, or to every enabled endpoint whose
    filter matches. The new deliveries are retried like any other."""
    principal, actor = principal_of(request), actor_of(request)
    endpoint_id = body.endpoint_id if body is not None else None
    deliveries = transact(_engine(request), lambda s: service.redeliver(
        s, actor, principal, event_id, endpoint_id=endpoint_id))
    return RedeliverOut(event_id=event_id, deliveries=[DeliveryOut(**d) for d in deliveries])
