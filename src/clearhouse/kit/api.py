"""Shapes and helpers every domain's endpoints share: times, ids, lists, JSON bodies."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, StringConstraints, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from clearhouse.kit import clock
from clearhouse.kit.errors import MalformedRequest
from clearhouse.kit.money import MAX_AMOUNT, is_currency

T = TypeVar("T")


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("a time needs its offset (RFC 3339, e.g. 2026-11-23T05:25:56Z)")
    return value.astimezone(UTC)


UtcTime = Annotated[datetime, AfterValidator(_aware), PlainSerializer(clock.rfc3339, return_type=str)]
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


class Model(BaseModel):
    """Request models refuse unknown fields: a typo is an error, not a silent no-op."""

    model_config = ConfigDict(extra="forbid")


class Page(BaseModel, Generic[T]):
    data: list[T]
    has_more: bool
    next_cursor: str | None


async def json_body(request: Request) -> Any:
    """The request body as JSON, or 400 ``malformed_request``."""
    raw = await request.body()
    if not raw:
        raise MalformedRequest("the request needs a JSON body")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise MalformedRequest(f"the body is not valid JSON: {error}") from None


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
