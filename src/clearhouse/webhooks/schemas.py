"""Webhook request and response shapes. A signing secret appears in exactly two answers:
the endpoint's creation and a secret rotation."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictBool, StringConstraints

from clearhouse.kit.api import Model, UtcTime
from clearhouse.webhooks.models import DESCRIPTION_MAX

# Shapes only: the URL's scheme, host and length and the event types are the service's
# rules, answered with stable codes (invalid_webhook_url, unknown_event_type).
UrlText = Annotated[str, StringConstraints(min_length=1, max_length=8192)]
EventTypeText = Annotated[str, StringConstraints(min_length=1, max_length=100)]
EventTypeList = Annotated[list[EventTypeText], Field(min_length=1, max_length=50)]
Description = Annotated[str, StringConstraints(max_length=DESCRIPTION_MAX)]
ObjectRef = Annotated[str, StringConstraints(min_length=1, max_length=40)]


class WebhookEndpointCreate(Model):
    url: UrlText = Field(description="https://...; http only to loopback or private addresses, and only "
                         "where the operator allows it (webhook_allow_private_networks)")
    event_types: EventTypeList = Field(description='Event types to receive (see EVENT_TYPES); "*" is all')
    description: Description | None = None
    enabled: StrictBool = True
    merchant_id: ObjectRef | None = Field(
        default=None, description="Required for platform callers; merchant callers get their own"
    )


class WebhookEndpointUpdate(Model):
    url: UrlText | None = None
    event_types: EventTypeList | None = None
    description: Description | None = None
    enabled: StrictBool | None = None


class WebhookEndpointOut(BaseModel):
    id: str
    merchant_id: str
    livemode: bool
    url: str
    description: str | None
    event_types: list[str]
    enabled: bool
    previous_secret_expires_at: UtcTime | None = Field(
        description="Until then deliveries are signed with the secret before the last rotation as well"
    )
    created_at: UtcTime
    updated_at: UtcTime


class WebhookEndpointWithSecret(WebhookEndpointOut):
    secret: str = Field(description="whsec_ + base64 of 32 bytes. Shown once: store it now")


class WebhookEndpointDeleted(BaseModel):
    id: str
    deleted: Literal[True]


class EventOut(BaseModel):
    id: str
    merchant_id: str
    livemode: bool
    type: str
    data: dict[str, Any]
    created_at: UtcTime


class AttemptOut(BaseModel):
    attempt_number: int
    started_at: UtcTime
    duration_ms: int
    status_code: int | None
    error: str | None
    response_excerpt: str | None


class DeliveryOut(BaseModel):
    id: str
    event_id: str
    event_type: str
    endpoint_id: str
    merchant_id: str
    status: Literal["pending", "delivered", "failed", "canceled"]
    manual: bool
    attempt_count: int
    next_attempt_at: UtcTime | None
    last_attempt_at: UtcTime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: UtcTime | None
    created_at: UtcTime
    attempts: list[AttemptOut]


class RedeliverRequest(Model):
    endpoint_id: ObjectRef | None = Field(
        default=None, description="Only this endpoint (it must be enabled); otherwise every enabled endpoint "
        "whose filter matches the event"
    )


class RedeliverOut(BaseModel):
    event_id: str
    deliveries: list[DeliveryOut]
