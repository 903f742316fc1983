"""Shapes and helpers every domain's endpoints share: times, ids, lists, JSON bodies."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

import orjson
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import _get_scope_included_router as _included_router
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    TypeAdapter,
    field_validator,
)
from pydantic import ValidationError as PydanticValidationError
from starlette._utils import get_route_path
from starlette.routing import Match

from clearhouse.kit import clock
from clearhouse.kit.errors import ClearhouseError, MalformedRequest, send_problem
from clearhouse.kit.money import MAX_AMOUNT, is_currency

T = TypeVar("T")


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("a time needs its offset (RFC 3339, e.g. 2026-11-23T05:25:56Z)")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time is outside the years 1 to 9999 once in UTC") from None


def _rfc3339_text(value: Any) -> Any:
    # pydantic would read 1893456000 as a time; api.md says times are RFC 3339 strings.
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError("a time is an RFC 3339 string (e.g. 2026-11-23T05:25:56Z), not a number")
    return value


UtcTime = Annotated[datetime, BeforeValidator(_rfc3339_text), AfterValidator(_aware),
                    PlainSerializer(clock.rfc3339, return_type=str)]
"""RFC 3339 in UTC with a Z, in and out."""

ClientId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$")]
"""A client-chosen id: letters, digits and ``_ . : -``, 1-64 characters."""

Amount = Annotated[int, Field(strict=True, gt=0, le=MAX_AMOUNT, description="Integer minor units, 1 to 2^63-1")]


def _currency(value: str) -> str:
    if not is_currency(value):
        raise ValueError("not an ISO 4217 currency code with a minor unit (upper case, e.g. CNY)")
    return value


CurrencyCode = Annotated[str, StringConstraints(min_length=3, max_length=3), AfterValidator(_currency)]
ShortText = Annotated[str, StringConstraints(max_length=256)]


MAX_METADATA_BYTES = 16 * 1024
"""Metadata is hashed into chains and read with every object: keep it to a note, not a document."""


def _canonical_json_safe(value: dict[str, Any]) -> dict[str, Any]:
    """Metadata is stored and hashed as canonical JSON, so it must survive that exactly:
    no integers beyond 64 bits, no lone surrogates, no NaN or Infinity (a 500 or a
    silently changed value otherwise)."""
    try:
        encoded = orjson.dumps(value)
    except TypeError as error:  # orjson.JSONEncodeError is a TypeError
        raise ValueError(f"metadata must be plain JSON: {error}") from None
    if len(encoded) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is at most {MAX_METADATA_BYTES} bytes of JSON")
    if orjson.loads(encoded) != value:
        raise ValueError("metadata must be plain JSON (no NaN or Infinity)")
    return value


MetadataIn = Annotated[dict[str, Any], AfterValidator(_canonical_json_safe)]
"""A free-form ``metadata`` object of a request (ledger entries, accounts, merchants)."""


class Model(BaseModel):
    """Request models refuse unknown fields (a typo is an error, not a silent no-op) and
    NUL characters in text (PostgreSQL cannot store them; SQLite would, and the two
    backends must agree)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul_in_text(cls, value: Any) -> Any:
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("text may not contain the NUL character")
        return value


class Page(BaseModel, Generic[T]):
    data: list[T]
    has_more: bool
    next_cursor: str | None


class PrefixRouter(APIRouter):
    """Every domain's router. FastAPI (0.165) asks each included router in turn whether it
    matches a request, and each tries all of its routes (about a hundred for a request to
    the last one): 0.25 ms of CPU per request here, a fifth of ``/healthz``. This router first
    compares the request path with the literal start of its routes' paths (the part before
    the first ``{``), which no path its routes match can lack, and answers "no match" at once
    when none fits. Only the order of work changes; what matches is FastAPI's own decision."""

    def matches(self, scope: Any) -> tuple[Match, dict[str, Any]]:
        starts = self._literal_starts()
        if starts is not None and scope["type"] == "http":
            included = _included_router(scope)
            if getattr(included, "original_router", None) is self:
                prefix = included.include_context.prefix  # what include_router(prefix=) added
                path = get_route_path(scope)
                if not (path.startswith(prefix) and path[len(prefix):].startswith(starts)):
                    return Match.NONE, {}
        return super().matches(scope)

    def _literal_starts(self) -> tuple[str, ...] | None:
        """The literal starts of the routes' paths (None: a route without a plain path, such as a
        router included in this one, so no shortcut)."""
        cached = self.__dict__.get("_starts")
        if cached is not None and cached[0] == len(self.routes):
            return cached[1]
        paths = [getattr(route, "path", None) for route in self.routes]
        starts = None if any(not isinstance(path, str) for path in paths) else tuple(
            sorted({path.split("{", 1)[0] for path in paths if isinstance(path, str)}))
        self.__dict__["_starts"] = (len(self.routes), starts)
        return starts


def install_input_guards(app: Any) -> None:
    app.add_middleware(_NoNulInPath)


class _NoNulInPath:
    """Refuse a NUL character in the path or query before any route sees it (pure ASGI: no
    per-request cost beyond the check)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and ("\x00" in scope["path"] or b"%00" in scope.get("query_string", b"").lower()):
            await send_problem(send, MalformedRequest("the path or query contains a NUL character"))
            return
        await self.app(scope, receive, send)


async def json_body(request: Request) -> Any:
    """The request body as JSON, or 400 ``malformed_request``."""
    raw = await request.body()
    if not raw:
        raise MalformedRequest("the request needs a JSON body")
    return parse_json(raw)


def parse_json(raw: bytes) -> Any:
    """JSON to Python exactly: integers of any size stay integers (orjson would turn one
    past 64 bits into a float, silently changing a value), NaN and Infinity are refused."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as error:
        raise MalformedRequest(f"the body is not valid JSON: {error}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def validate(
    adapter: TypeAdapter[T] | type[BaseModel], value: Any, loc: tuple[str, ...] = ("body",)
) -> Any:
    """Validate like FastAPI would, so errors render the same way (422 ``validation_error``).

    ``loc`` says where the value came from: the body by default, ``("query", name)`` for a
    query parameter (an error located at the bare body is rendered as a malformed request).
    """
    try:
        if isinstance(adapter, TypeAdapter):
            return adapter.validate_python(value)
        return adapter.model_validate(value)
    except PydanticValidationError as error:
        raise RequestValidationError(
            [{**e, "loc": (*loc, *e["loc"])} for e in error.errors(include_url=False, include_context=False)]
        ) from None


class RequestTooLarge(ClearhouseError):
    """A request body is at most ``max_request_bytes`` (settings)."""

    code = "request_too_large"
    status = 413
    title = "Request too large"


async def read_body(receive: Any, limit: int | None = None) -> bytes | None:
    """The whole request body from pure ASGI code; None when the client went away first.
    Past ``limit`` bytes it stops reading and raises ``RequestTooLarge``."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            raise RequestTooLarge(f"the body is larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def replay_body(body: bytes, receive: Any) -> Any:
    """An ASGI ``receive`` that hands the already-read body to the next application, then
    passes on whatever the client sends next (its disconnect)."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
