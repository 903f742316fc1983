"""Audit response models: an event as the API shows it, and the verify report."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from clearhouse.kit.api import UtcTime


class AuditEventOut(BaseModel):
    """One recorded state change. ``prev_hash`` and ``hash`` let anyone recompute the chain
    (docs/audit.md); ``changes`` is the masked change as it was stored.

    A row written behind the application's back may hold what no write of ours stores: then
    ``changes`` (not a JSON object) or ``occurred_at`` (not a time) is the stored text, as a
    string, and ``verify`` reports the event."""

    id: str
    seq: int
    occurred_at: UtcTime | str
    actor_type: str
    actor_id: str
    actor_role: str | None
    merchant_id: str | None
    action: str
    object_type: str
    object_id: str
    source_ip: str | None
    request_id: str | None
    changes: dict[str, Any] | str
    prev_hash: str
    hash: str


class AuditVerifyOut(BaseModel):
    ok: bool
    events_checked: int
    first_failure: dict[str, Any] | None
    chain_head: dict[str, Any]
