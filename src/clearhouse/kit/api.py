"""Shapes and helpers every domain's endpoints share: times, ids, lists, JSON bodies."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
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
from clearhouse.kit.masking import mask_free_form
from clearhouse.kit.money import MAX_AMOUNT, is_country, is_currency

T = TypeVar("T")


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("a time needs its offset (RFC 3339, e.g. 2026-11-23T05:25:56Z)")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time is outside the years 1 to 9999 once in UTC") from None


# RFC 3339 section 5.6 date-time; the offset is left to ``_aware``, whose message says so.
_RFC3339_DATE_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})?", re.ASCII)


def _rfc3339_text(value: Any) -> Any:
    # pydantic reads 1893456000, "1893456000" and "-1" as Unix times, and takes forms
    # RFC 3339 does not have (no seconds, "+0800"); api.md says times are RFC 3339 strings.
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError("a time is an RFC 3339 string (e.g. 2026-11-23T05:25:56Z), not a number")
    if isinstance(value, str) and not _RFC3339_DATE_TIME.fullmatch(value):
        raise ValueError("a time is an RFC 3339 date-time with an offset (e.g. 2026-11-23T05:25:56Z)")
    return value


UtcTime = Annotated[datetime, BeforeValidator(_rfc3339_text), AfterValidator(_aware),
                    PlainSerializer(clock.rfc3339, return_type=str)]
"""RFC 3339 in UTC with a Z, in and out."""

ClientId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$")]
"""A client-chosen id: letters, digits and ``_ . : -``, 1-64 characters."""

Amount = Annotated[int, Field(strict=True, gt=0, le=MAX_AMOUNT, description="Integer minor units, 1 to 2^63-1")]

ModeFilter = Annotated[bool | None, Query(description="Only live (true) or only test (false) objects. Platform keys "
                                                      "and people see both without it; a key lists its own mode only, "
                                                      "so the other mode gives an empty page")]
"""A list's ``livemode`` filter (identity.md, "Test and live")."""


def _currency(value: str) -> str:
    if not is_currency(value):
        raise ValueError("not an ISO 4217 currency code with a minor unit (upper case, e.g. CNY)")
    return value


CurrencyCode = Annotated[str, StringConstraints(min_length=3, max_length=3), AfterValidator(_currency)]


def _country(value: str) -> str:
    if not is_country(value):
        raise ValueError("not an ISO 3166-1 alpha-2 code of a country (upper case, e.g. CN)")
    return value


CountryCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$"), AfterValidator(_country)]
"""A country as ISO 3166-1 alpha-2 lists it (``kit.money.is_country``)."""
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
"""A name people read (a merchant's): spaces around it dropped, and not blank."""
ShortText = Annotated[str, StringConstraints(max_length=256)]


MAX_METADATA_BYTES = 16 * 1024
"""Metadata is hashed into chains and read with every object: keep it to a note, not a document."""
MAX_METADATA_DEPTH = 32
"""Objects and lists inside one another, the metadata object itself counted: deeper is refused. The
records that carry metadata (the audit trail's change, a webhook event) wrap it a few levels deeper,
and JSON encoders stop at a depth of their own (orjson's: 254, a 500 at 254 before this limit)."""


def _depth(value: Any) -> int:
    """How deep objects and lists nest in ``value`` (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


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
    if _depth(value) > MAX_METADATA_DEPTH:
        raise ValueError(f"metadata nests objects and lists at most {MAX_METADATA_DEPTH} deep")
    if orjson.loads(encoded) != value:
        raise ValueError("metadata must be plain JSON (no NaN or Infinity)")
    return value


MetadataIn = Annotated[dict[str, Any], AfterValidator(_canonical_json_safe), AfterValidator(mask_free_form)]
"""A free-form ``metadata`` object of a request (ledger entries and accounts, merchants, payments),
stored masked as merchant free text is (data-protection.md, "Free text")."""


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
    when none fits. Only the order of work changes; what matches is FastAPI's own decision.

    Its routes read JSON bodies through ``parse_json`` (``JsonBodyRoute``), so every endpoint
    refuses a repeated key, NaN and overlong numbers the same way."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("route_class", JsonBodyRoute)
        super().__init__(*args, **kwargs)

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


class JsonBodyRoute(APIRoute):
    """A route whose JSON body FastAPI reads through ``parse_json``, as ``json_body`` does, so
    a body model gets the same refusals: a key named twice in one object, NaN and Infinity,
    a number with too many digits (400 ``malformed_request``, not a silent last-key-wins or
    FastAPI's bare "error parsing the body"). Routes without a body are left as they are."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def with_checked_json(request: Request) -> Response:
            if _is_json(request.headers.get("content-type")):
                raw = await request.body()
                if raw:
                    # Starlette's ``Request.json`` keeps its result here; FastAPI then uses it.
                    request._json = parse_json(raw)
                    if request._json is None:
                        # FastAPI would read ``null`` as no body at all: a full capture or post where
                        # the caller's object (with its amount) was lost on the way.
                        raise MalformedRequest("the body is null: send an object ({} for the defaults) or no body")
            return await handler(request)

        return with_checked_json


def _is_json(content_type: str | None) -> bool:
    """The content types FastAPI reads as JSON: ``application/json`` and ``application/*+json``."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def install_input_guards(app: Any) -> None:
    app.add_middleware(_NoNulInPath)


def leaf_routes(app: Any) -> list[Any]:
    """Every route of the app, routers included (FastAPI keeps an included router as one entry)."""
    from fastapi.routing import iter_route_contexts

    return [context.original_route for context in iter_route_contexts(app.routes)]


class HeadAsGet:
    """HEAD answered as GET without its body (RFC 9110, 9.3.2: the same status and headers), for every GET
    route: FastAPI routes only the methods a route declares, so a HEAD was 405. A route that declares its own
    HEAD keeps it (the buyer's page answers HEAD without decrypting its codes). Installed innermost, inside
    authentication, so a signed HEAD is verified as it was sent (its method is in the signature)."""

    def __init__(self, app: Any, fastapi_app: Any):
        self.app = app
        self.fastapi_app = fastapi_app
        self._head_routes: list[Any] | None = None

    def _declared(self, scope: Any) -> bool:
        if self._head_routes is None:  # the routes are all there by the first request
            self._head_routes = [route for route in leaf_routes(self.fastapi_app)
                                 if "HEAD" in (getattr(route, "methods", None) or ())]
        return any(route.matches(scope)[0] == Match.FULL for route in self._head_routes)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD" or self._declared(scope):
            await self.app(scope, receive, send)
            return

        async def without_body(message: Any) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)


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
    past 64 bits into a float, silently changing a value), NaN and Infinity are refused,
    and so is an object that names a key twice (which value would count is up to each
    reader: here the last, elsewhere perhaps the first)."""
    try:
        # What json.loads does with bytes, with a decoder built once rather than per call.
        return _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except json.JSONDecodeError as error:
        raise MalformedRequest(f"the body is not valid JSON: {error}") from None
    except UnicodeDecodeError:
        raise MalformedRequest("the body is not valid JSON: it is not UTF-8 text") from None
    except ValueError:
        # Only Python's int() limit on decimal digits gets here; its message names Python
        # internals (sys.set_int_max_str_digits), which are nobody's business outside.
        raise MalformedRequest("a number in the body has too many digits") from None
    except RecursionError:
        raise MalformedRequest("the body is not valid JSON: it is nested too deeply") from None


def _refuse_constant(name: str) -> Any:
    raise MalformedRequest(f"the body is not valid JSON: {name} is not a JSON number")


def _object_without_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # the common case costs one comparison
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise MalformedRequest(f"the body names the key {_quoted(key)} more than once in one object")
            seen.add(key)
    return obj


def _quoted(key: str) -> str:
    shown = key if len(key) <= 64 else key[:64] + "..."
    return json.dumps(shown)


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, object_pairs_hook=_object_without_repeats)


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


QueryTime = Annotated[str | None, Query(description="An RFC 3339 date-time with an offset",
                                       json_schema_extra={"format": "date-time"})]
"""A time in a query string, taken as text and read by ``query_time``: declared as a ``datetime``,
FastAPI would let pydantic read ``1893456000`` as a Unix time before any check ran."""

_QUERY_TIME = TypeAdapter(UtcTime)


def query_time(value: str | None, name: str) -> datetime | None:
    """A ``QueryTime`` parameter as an aware UTC time; anything but an RFC 3339 date-time with
    its offset (a naive time, a number) is a 422 on that parameter."""
    return validate(_QUERY_TIME, value, loc=("query", name)) if value is not None else None


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


def limit_body(receive: Any, limit: int) -> Any:
    """An ASGI ``receive`` that raises ``RequestTooLarge`` once the body passes ``limit`` bytes:
    for a body read later, by the route (one sent in chunks, with no ``Content-Length`` to
    refuse up front)."""
    size = 0

    async def limited() -> dict[str, Any]:
        nonlocal size
        message = await receive()
        size += len(message.get("body", b""))
        if size > limit:
            raise RequestTooLarge(f"the body is larger than {limit} bytes")
        return message

    return limited


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
