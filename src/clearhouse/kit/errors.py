"""The error base class and its rendering as RFC 9457 problem+json."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

import structlog

from clearhouse.kit.masking import mask_value, scrub

if TYPE_CHECKING:  # the web stack loads only where HTTP is served, not for every CLI command
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

log = structlog.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"


class ClearhouseError(Exception):
    """A broken rule, reported to the caller with a stable ``code``.

    Subclasses set ``code``, ``status`` and ``title``, and say in their docstring
    which rule was broken.
    """

    code: ClassVar[str] = "error"
    status: ClassVar[int] = 400
    title: ClassVar[str] = "Request failed"

    def __init__(self, detail: str = "", *, errors: list[Any] | None = None, **extra: Any):
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.errors = errors
        self.extra = extra

    def problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"https://clearhouse.dev/problems/{self.code}",
            "title": self.title,
            "status": self.status,
            "code": self.code,
            # A detail may repeat what the caller sent (an id from the path, a field's value): no
            # card number or secret comes back in it (data-protection.md). Ids stay readable.
            "detail": scrub(self.detail) if isinstance(self.detail, str) else self.detail,
        }
        if self.errors is not None:
            body["errors"] = mask_value(self.errors)
        body.update(self.extra)
        return body

    def headers(self) -> dict[str, str] | None:
        """Response headers the error carries (``Retry-After`` on a 429, for instance)."""
        return None


class NotFound(ClearhouseError):
    """The object does not exist (or is not the caller's to see)."""

    code = "not_found"
    status = 404
    title = "Not found"


class ValidationFailed(ClearhouseError):
    """The request is well-formed JSON but a field breaks its rule."""

    code = "validation_error"
    status = 422
    title = "Invalid request"


def refuse_nulls(changes: dict[str, Any], names: Iterable[str]) -> None:
    """A PATCH's fields that may be left out but not sent as ``null`` (there is nothing to clear):
    ``422 validation_error`` naming the first, before anything changes."""
    for name in names:
        if name in changes and changes[name] is None:
            raise ValidationFailed(f"{name} cannot be null", errors=[
                {"loc": ["body", name], "type": "null_not_allowed", "msg": f"{name} cannot be null"}])


class MalformedRequest(ClearhouseError):
    """The body is not valid JSON or not the expected shape at all."""

    code = "malformed_request"
    status = 400
    title = "Malformed request"


async def send_problem(send: Any, error: ClearhouseError) -> None:
    """Answer with ``error`` from pure ASGI code (middleware that runs before FastAPI's handlers)."""
    import orjson

    body = orjson.dumps(error.problem())
    headers = [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (error.headers() or {}).items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def problem_response(error: ClearhouseError, headers: dict[str, str] | None = None) -> JSONResponse:
    from fastapi.responses import JSONResponse

    return JSONResponse(
        error.problem(), status_code=error.status, media_type=PROBLEM_JSON, headers=headers or error.headers()
    )


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        out.append(
            {
                # A list index stays a number (["body", "transfers", 3, "currency"]), so a
                # client can tell it from an object key spelled "3".
                "loc": [p if type(p) is int else str(p) for p in err.get("loc", ())],
                "type": err.get("type"),
                "msg": _readable_limits(err.get("msg"), err.get("ctx")),
            }
        )
    return out


def _readable_limits(message: Any, context: dict[str, Any] | None) -> Any:
    """A message's long numeric limits written with thousands separators ("less than or equal to
    1,000,000,000,000,000"): written whole, 13 digits or more read as a card number to the masking of every
    problem (data-protection.md), and the client saw "1000000*****0000" for the largest amount."""
    if not isinstance(message, str) or not context:
        return message
    for value in context.values():
        if type(value) is int and abs(value) >= 10**12:
            message = message.replace(str(value), f"{value:,}")
    return message


async def _on_clearhouse_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ClearhouseError)
    return problem_response(exc)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    from fastapi.exceptions import RequestValidationError

    assert isinstance(exc, RequestValidationError)
    errors = _validation_errors(exc)
    # Only the body as a whole (unreadable, missing, or not an object) is malformed; a field
    # of the wrong type inside it, an object field included, breaks that field's rule.
    if any(e["type"] == "json_invalid" or e["loc"] == ["body"] for e in errors):
        return problem_response(MalformedRequest("The body is not a JSON object of the expected shape", errors=errors))
    return problem_response(ValidationFailed("One or more fields are invalid", errors=errors))


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    from starlette.exceptions import HTTPException as StarletteHTTPException

    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthenticated", 403: "forbidden"}
    error = ClearhouseError(str(exc.detail))
    error.code = codes.get(exc.status_code, "http_error")  # type: ignore[misc]
    error.status = exc.status_code  # type: ignore[misc]
    error.title = str(exc.detail)  # type: ignore[misc]
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": _allowed_methods(request)}
    return problem_response(error, headers=headers)


def _allowed_methods(request: Request) -> str:
    """Every method some route of this path answers. Starlette's ``Allow`` names only the first
    route's (``POST`` for ``/v1/payments``, which lists with ``GET`` too)."""
    from fastapi.routing import iter_route_contexts

    path = request.scope["path"]
    methods: set[str] = set()
    for context in iter_route_contexts(request.app.routes):
        route = context.route
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path):
            methods |= set(getattr(route, "methods", None) or ())
    if "GET" in methods:
        methods.add("HEAD")  # every GET route answers HEAD (``kit.api.HeadAsGet``)
    return ", ".join(sorted(methods))


class DatabaseUnavailable(ClearhouseError):
    """The database could not be reached, or dropped the connection mid-request (a restart, a
    failover): nothing was done that the caller can see; try again shortly."""

    code = "database_unavailable"
    status = 503
    title = "Database unavailable"

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": "5"}


def _database_down(exc: BaseException) -> bool:
    """Whether ``exc`` says PostgreSQL is out of reach (not a bug): a refused or dropped
    connection, from psycopg through SQLAlchemy or from the nonce writer's asyncpg."""
    import asyncpg
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        original = exc.orig
        return type(original).__module__.startswith("psycopg") and type(original).__name__ in (
            "OperationalError", "AdminShutdown", "CannotConnectNow", "InterfaceError")
    return isinstance(exc, asyncpg.exceptions.PostgresConnectionError | asyncpg.exceptions.CannotConnectNowError
                      | asyncpg.exceptions.AdminShutdownError | ConnectionRefusedError)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    if _database_down(exc):
        log.warning("database_unavailable", path=request.url.path, error=type(exc).__name__)
        return problem_response(DatabaseUnavailable("The database is out of reach; try again in a few seconds"))
    log.exception("unhandled_error", path=request.url.path)
    error = ClearhouseError("An unexpected error occurred; it has been logged")
    error.code = "internal_error"  # type: ignore[misc]
    error.status = 500  # type: ignore[misc]
    error.title = "Internal error"  # type: ignore[misc]
    return problem_response(error)


def install_handlers(app: FastAPI) -> None:
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app.add_exception_handler(ClearhouseError, _on_clearhouse_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
