"""The served OpenAPI document (``GET /openapi.json``), made to say what the server answers.

FastAPI describes the routes and their models. What happens around them it cannot see, so it
is added here, once, when the document is first asked for:

- every error is an RFC 9457 problem sent as ``application/problem+json`` (``kit.errors``), not
  FastAPI's ``HTTPValidationError``: the ``Problem`` schema, on every error answer;
- the middleware answers before any route does (``identity.middleware``, ``kit.api``,
  ``kit.idempotency``): a repeated Clearhouse header (400), authentication (401), a suspended
  merchant or a missing CSRF token (403), an oversized body (413), the API key's rate limit
  (429), an unreachable database (503). Each operation lists the ones it can get;
- how to authenticate: the four signing headers and the console session as security schemes,
  and each operation's ``security`` (none for the public routes);
- ``Idempotency-Key`` on every operation that honours it, and each operation's permission
  (``x-permission``).

Descriptions an endpoint declared itself (``responses=``) are kept; only the problem schema
is added to them. Error answers that settings turn off (a rate limit of 0) are left out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI

from clearhouse.identity import signing
from clearhouse.identity.middleware import CSRF_HEADER, UNSAFE_METHODS
from clearhouse.identity.people.service import SESSION_COOKIE
from clearhouse.identity.permissions import (
    MERCHANT_KEY_SCOPES,
    PLATFORM_KEY_SCOPES,
    PUBLIC,
    SESSION,
    route_permission,
)
from clearhouse.kit.api import JsonBodyRoute, leaf_routes
from clearhouse.kit.errors import PROBLEM_JSON
from clearhouse.kit.idempotency import WINDOW
from clearhouse.kit.money import MAX_AMOUNT

PROBLEM = "Problem"
PROBLEM_ERROR = "ProblemError"
KEY_PERMISSIONS = PLATFORM_KEY_SCOPES | MERCHANT_KEY_SCOPES
"""Every permission some API key may hold: a route needing any other is for people only."""

# The security schemes' names, as operations' ``security`` refers to them.
SIGNED = {"ClearhouseKey": [], "ClearhouseTimestamp": [], "ClearhouseNonce": [], "ClearhouseSignature": []}
SESSION_READ = {"SessionCookie": []}
SESSION_WRITE = {"SessionCookie": [], "CsrfToken": []}

_SIGNING = ("Every request made with an API key carries all four `X-Clearhouse-*` headers: "
            "`X-Clearhouse-Signature: v1=<hex HMAC-SHA256(secret, signing_string)>` with "
            "`signing_string = METHOD \\n PATH \\n QUERY \\n TIMESTAMP \\n NONCE \\n hex(SHA256(body))` "
            "(the raw path and query as sent, the query without `?`, the body bytes as sent). "
            "See api.md, \"Authentication\", and docs/identity.md, \"Signing a request\".")


def honours_idempotency_key(method: str, path: str, permission: str | None) -> bool:
    """Whether ``IdempotencyMiddleware`` takes an ``Idempotency-Key`` for this operation: every
    POST under ``/v1`` but the public ones (no caller to keep the key for)."""
    return method.upper() == "POST" and path.startswith("/v1/") and permission != PUBLIC


def complete_openapi(app: FastAPI, *, extra_models: Iterable[Any] = (), no_database: Iterable[str] = ()) -> None:
    """Make ``app.openapi()`` the complete document (module docstring). ``extra_models`` are request
    bodies that routes read by hand (their operations refer to them); ``no_database`` names paths whose
    routes never touch the database (no ``503 database_unavailable``)."""
    build = app.openapi
    extra_models = list(extra_models)
    no_database = frozenset(no_database)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            _exact_integer_bounds(schema)
            _add_models(schema, extra_models)
            _describe(app, schema, no_database)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _exact_integer_bounds(node: Any) -> None:
    """FastAPI passes the document through its own models, whose bounds are floats: an integer field's
    ``le=2**63 - 1`` came out as ``9.223372036854776e+18``, which is 2**63, one past the limit. An
    integer's bound is an integer again: exact below 2**53, and the one bound above it that we use, the
    ledger's ``MAX_AMOUNT``, recognised by its float."""
    if isinstance(node, list):
        for item in node:
            _exact_integer_bounds(item)
    elif isinstance(node, dict):
        if node.get("type") == "integer":
            for key in _BOUNDS:
                value = node.get(key)
                if isinstance(value, float):
                    node[key] = MAX_AMOUNT if value == float(MAX_AMOUNT) else int(value)
        for value in node.values():
            _exact_integer_bounds(value)


def _add_models(schema: dict[str, Any], extra_models: list[Any]) -> None:
    """Define the models that request bodies read by hand refer to."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in extra_models:
        definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, nested in definition.pop("$defs", {}).items():
            components.setdefault(name, nested)
        components.setdefault(model.__name__, definition)


def _describe(app: FastAPI, schema: dict[str, Any], no_database: frozenset[str]) -> None:
    settings = app.state.settings
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {}).update(_problem_schemas())
    components["securitySchemes"] = _security_schemes(settings)
    components["headers"] = _headers()
    components["responses"] = _responses(settings)
    for route in leaf_routes(app):
        path = getattr(route, "path", "")
        permission = route_permission(route)
        operations = schema["paths"].get(path, {})
        for method in sorted(getattr(route, "methods", None) or ()):
            operation = operations.get(method.lower())
            if operation is None:
                continue
            if permission is not None:
                operation["x-permission"] = permission
            operation["security"] = _security(permission, method)
            if isinstance(route, JsonBodyRoute):
                _body_not_nullable(operation)
            idempotent = honours_idempotency_key(method, path, permission)
            _error_answers(operation, method, permission, settings, idempotent=idempotent,
                           database=path not in no_database)
            if idempotent:
                # Written out in each operation, not a reference: readers of ``parameters`` (the injection
                # walk's among them) expect each entry to say its own name and place.
                operation.setdefault("parameters", []).append(_idempotency_parameter())
    _drop_unused_schemas(schema, ("HTTPValidationError", "ValidationError"))


def _body_not_nullable(operation: dict[str, Any]) -> None:
    """An optional body model (``body: Model | None = None``) comes out of FastAPI as "the model or
    ``null``". A body may be left out, but ``null`` is refused (``kit.api.JsonBodyRoute``: 400
    ``malformed_request``, lest a capture's lost object read as "capture in full"), so the body is the
    model alone; the body stays optional."""
    content = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if content is None:
        return
    schema = content.get("schema", {})
    options = schema.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        kept = [option for option in options if option != {"type": "null"}]
        content["schema"] = kept[0] if len(kept) == 1 else {**schema, "anyOf": kept}


def _problem_schemas() -> dict[str, Any]:
    return {
        PROBLEM: {
            "title": PROBLEM,
            "type": "object",
            "description": "An RFC 9457 problem: every error answer, sent as `application/problem+json` "
            "(docs/errors.md lists every `code`). Branch on `code`, never on `title` or `detail`. "
            "`errors` comes with request-shape errors (`validation_error`, and `malformed_request` when the "
            "body was parsed). A problem may carry extra members: `results` (`linked_batch_failed`), "
            "`reason` (`weak_password`), `line` (`statement_invalid`). The answer's `X-Request-Id` header "
            "names the request in the server's log.",
            "required": ["type", "title", "status", "code", "detail"],
            "properties": {
                "type": {"type": "string", "format": "uri", "description": "`https://clearhouse.dev/problems/<code>`",
                         "pattern": r"^https://clearhouse\.dev/problems/[a-z][a-z0-9_]*$"},
                "title": {"type": "string", "description": "A short summary for people; may change"},
                "status": {"type": "integer", "minimum": 400, "maximum": 599, "description": "The HTTP status again"},
                "code": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$",
                         "description": "Stable: what a client branches on"},
                "detail": {"type": "string", "description": "What was wrong with this request, for people; may change"},
                "errors": {"type": "array", "items": {"$ref": f"#/components/schemas/{PROBLEM_ERROR}"},
                           "description": "Each value that broke its rule"},
            },
            "additionalProperties": True,
        },
        PROBLEM_ERROR: {
            "title": PROBLEM_ERROR,
            "type": "object",
            "description": "One value that broke its rule.",
            "required": ["loc", "type", "msg"],
            "properties": {
                "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                        "description": "Where: `[\"body\", \"amount\"]`, `[\"query\", \"as_of\"]`, "
                        "`[\"body\", \"transfers\", 3, \"currency\"]` (a list index is an integer, an object key "
                        "a string)"},
                "type": {"type": "string", "description": "The kind of error (`missing`, `int_type`, "
                         "`extra_forbidden`, ...)"},
                "msg": {"type": "string", "description": "What is wrong, for people"},
            },
            "additionalProperties": True,
        },
    }


def _security_schemes(settings: Any) -> dict[str, Any]:
    tolerance = settings.signature_tolerance_seconds
    return {
        "ClearhouseKey": {
            "type": "apiKey", "in": "header", "name": signing.KEY_HEADER,
            "description": "The API key's id (`ck_test_...`, `ck_live_...`, `ck_platform_...`). " + _SIGNING,
        },
        "ClearhouseTimestamp": {
            "type": "apiKey", "in": "header", "name": signing.TIMESTAMP_HEADER,
            "description": f"Unix seconds (digits, at most 12), within {tolerance} s of the server's clock "
            "(else `401 signature_expired`); the same string is signed. " + _SIGNING,
        },
        "ClearhouseNonce": {
            "type": "apiKey", "in": "header", "name": signing.NONCE_HEADER,
            "description": "16 to 64 printable ASCII characters (`!` to `~`), new for every request: a nonce "
            "used before with the same key is `401 signature_replayed`. Nonces that begin with the time "
            "are cheapest for the server to store. " + _SIGNING,
        },
        "ClearhouseSignature": {
            "type": "apiKey", "in": "header", "name": signing.SIGNATURE_HEADER,
            "description": f"`{signing.VERSION}=` and the 64 lower-case hex digits of HMAC-SHA256, keyed with "
            "the key's secret (`cks_...`, as UTF-8), of the signing string. " + _SIGNING,
        },
        "SessionCookie": {
            "type": "apiKey", "in": "cookie", "name": SESSION_COOKIE,
            "description": "A person's console session: `POST /v1/auth/login` (password, and TOTP where it is "
            "on) sets this cookie (`HttpOnly`, `SameSite=Strict`) and answers the session's `csrf_token`. "
            f"`POST`, `PUT`, `PATCH` and `DELETE` also need that token in `{CSRF_HEADER}`. "
            "See docs/people.md.",
        },
        "CsrfToken": {
            "type": "apiKey", "in": "header", "name": CSRF_HEADER,
            "description": "The session's CSRF token (from `POST /v1/auth/login` or `GET /v1/auth/me`), sent with "
            "every `POST`, `PUT`, `PATCH` and `DELETE` made with a session cookie (else "
            "`403 csrf_failed`). Reads need none.",
        },
    }


def _security(permission: str | None, method: str) -> list[dict[str, list[str]]]:
    """Who may call: anyone (public), a person's session only (``session`` routes, and permissions no
    API key can hold), or a signed request or a session."""
    if permission == PUBLIC:
        return []
    session = SESSION_WRITE if method.upper() in UNSAFE_METHODS else SESSION_READ
    if permission == SESSION or (permission is not None and permission not in KEY_PERMISSIONS):
        return [dict(session)]
    return [dict(SIGNED), dict(session)]


def _idempotency_parameter() -> dict[str, Any]:
    hours = int(WINDOW.total_seconds() // 3600)
    return {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "Makes a retry of this request safe (api.md, \"Conventions\"). 1 to 255 printable ASCII "
        "characters (HTTP drops spaces at either end). The same key with the same request (path, query and "
        f"body, JSON compared as data) from the same caller within {hours} h gets the first answer again, "
        "with `Idempotent-Replayed: true`, and does nothing twice; the same key with another request is "
        "`409 idempotency_key_reused`; while the first request still runs, `409 idempotency_key_in_use`. "
        "Keys are scoped to the caller's merchant (`merchant:<id>:test` for its test keys, `platform` for "
        "platform callers); public operations take none. An answer of 5xx or with `Retry-After` is not kept, "
        "so the same key may be sent again. An object created without a client-chosen id gets an id derived "
        "from the key.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~](?:[ -~]*[!-~])?$"},
    }


def _headers() -> dict[str, Any]:
    return {
        "Retry-After": {"description": "Seconds to wait before trying again",
                        "schema": {"type": "integer", "minimum": 1}},
        "X-Request-Id": {"description": "The request's id in the server's log (the caller's own "
                         "`X-Request-Id` when it is 1-64 of `A-Za-z0-9_.:-`)",
                         "schema": {"type": "string"}},
    }


_REPLAYED = {"description": "`true` when this is the stored first answer to the same `Idempotency-Key`",
             "schema": {"type": "string", "enum": ["true"]}}


def _responses(settings: Any) -> dict[str, Any]:
    """The error answers that read the same on every operation that can get them (``components/responses``)."""
    hours = int(WINDOW.total_seconds() // 3600)
    return {
        "Unauthenticated": _problem_answer(
            "Not authenticated: `authentication_required` (neither a signature nor a session, or the session "
            "has ended), `signature_invalid` (a signing header missing or malformed, an unknown key, or a "
            "signature that does not match the request), `signature_expired` (the timestamp is more than "
            f"{settings.signature_tolerance_seconds} s from the server's clock), `signature_replayed` (the "
            "nonce was used before with this key), `api_key_revoked`, `api_key_expired`"),
        "IdempotencyConflict": _problem_answer(
            f"`idempotency_key_reused`: the `Idempotency-Key` was used for another request within {hours} h; "
            "`idempotency_key_in_use`: the first request with it is still running"),
        "RequestTooLarge": _problem_answer(
            f"`request_too_large`: the body is larger than {settings.max_request_bytes} bytes "
            "(`CLEARHOUSE_MAX_REQUEST_BYTES`)"),
        "ValidationFailed": _problem_answer(
            "Valid JSON or parameters that break a rule: `validation_error`, with `errors` naming each value "
            "(docs/errors.md)"),
        "RateLimited": _problem_answer(
            f"`rate_limited`: the API key is over its {settings.api_key_rate_limit_per_minute} requests a "
            "minute; `Retry-After` says when its minute ends", retry_after=True),
        "DatabaseUnavailable": _problem_answer(
            "`database_unavailable`: the database is out of reach (a restart, a failover); nothing was done. "
            "Try again after `Retry-After` seconds", retry_after=True),
    }


def _problem_answer(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    headers = {"Retry-After": _header("Retry-After")} if retry_after else {}
    return {"description": description, "headers": {**headers, "X-Request-Id": _header("X-Request-Id")},
            "content": {PROBLEM_JSON: {"schema": {"$ref": f"#/components/schemas/{PROBLEM}"}}}}


def _error_answers(operation: dict[str, Any], method: str, permission: str | None, settings: Any, *,
                   idempotent: bool, database: bool) -> None:
    """Add what the middleware and the framework can answer for this operation, and give every error
    answer the problem schema."""
    responses: dict[str, Any] = operation.setdefault("responses", {})
    public = permission == PUBLIC
    has_body = "requestBody" in operation
    takes_keys = not public and _security(permission, method)[0] == SIGNED
    ids = [p["name"] for p in operation.get("parameters", []) if p.get("in") == "path" and p["name"].endswith("_id")]

    malformed = [
        "a Clearhouse header (`X-Clearhouse-*`, `Idempotency-Key`) is sent more than once",
        "the path or query contains a NUL character",
    ]
    if has_body:
        malformed.insert(0, "the body is not valid JSON, names a key twice, or as a whole is not the expected "
                            "shape (an array, `null`)")
    bad_request = "Malformed request (`malformed_request`): " + "; ".join(malformed)
    if idempotent:
        bad_request += "; or `invalid_idempotency_key`: the `Idempotency-Key` is not 1-255 printable ASCII"
    added: dict[str, dict[str, Any]] = {"400": _problem_answer(bad_request)}
    if not public:
        added["401"] = _shared("Unauthenticated")
        added["403"] = _problem_answer(_forbidden(permission, method.upper() in UNSAFE_METHODS))
    if ids:
        named = ", ".join(f"`{name}`" for name in ids)
        added["404"] = _problem_answer(f"Unknown, or not the caller's ({named}): `not_found` or the object's own "
                                       "code (`payment_not_found`, `transfer_not_found`, ...; docs/errors.md)")
    if idempotent:
        added["409"] = _shared("IdempotencyConflict")
    if has_body:
        added["413"] = _shared("RequestTooLarge")
    if has_body or operation.get("parameters") or "422" in responses:
        added["422"] = _shared("ValidationFailed")
    if takes_keys and settings.api_key_rate_limit_per_minute > 0:
        added["429"] = _shared("RateLimited")
    if database:
        added["503"] = _shared("DatabaseUnavailable")

    for status, answer in added.items():
        if status not in responses or _is_fastapi_validation_error(responses[status]):
            responses[status] = answer
    for status, answer in responses.items():
        if "$ref" in answer or any(answer is new for new in added.values()):
            continue
        if status[:1] in ("4", "5") and "content" not in answer:
            # Declared by the endpoint with its own description: the problem it is sent as.
            answer.update(_problem_answer(answer.get("description", ""), retry_after=status in ("429", "503")))
            continue
        headers = answer.setdefault("headers", {})
        headers["X-Request-Id"] = _header("X-Request-Id")  # every answer carries it (kit.logging)
        if status.startswith("2") and idempotent:
            # Written out, not a reference: a success answer's references are its body's models.
            headers["Idempotent-Replayed"] = dict(_REPLAYED)
    operation["responses"] = dict(sorted(responses.items()))


def _shared(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


def _header(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/headers/{name}"}


def _forbidden(permission: str | None, unsafe: bool) -> str:
    if permission == SESSION:
        reasons = ["`forbidden`: the caller is an API key (this is for a person's own session)"]
    elif permission is not None and permission not in KEY_PERMISSIONS:
        reasons = [f"`forbidden`: the person's role lacks `{permission}`, or the caller is an API key (no key "
                   "may hold it)"]
    else:
        needed = f"`{permission}`" if permission is not None else "the permission the route needs"
        reasons = [f"`forbidden`: the key's scopes or the person's role lack {needed}"]
    reasons.append("`merchant_suspended`: the API key's merchant is suspended")
    if unsafe:
        reasons.append(f"`csrf_failed`: a session's request without its `{CSRF_HEADER}`")
    if permission != SESSION:
        reasons.append("`mfa_enrollment_required`: an `admin` or `finance` session before TOTP set-up")
    return "Not allowed: " + "; ".join(reasons)


def _is_fastapi_validation_error(answer: dict[str, Any]) -> bool:
    """FastAPI's own 422 (``HTTPValidationError``, ``{"detail": [...]}``), which this server never sends."""
    schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
    return schema.get("$ref") == "#/components/schemas/HTTPValidationError"


def _drop_unused_schemas(schema: dict[str, Any], names: Iterable[str]) -> None:
    """Remove these schemas when nothing else refers to them (in order: a schema that only a removed one
    used goes too)."""
    components = schema.get("components", {}).get("schemas", {})
    for name in names:
        if name not in components:
            continue
        others = {**schema, "components": {**schema["components"],
                                           "schemas": {k: v for k, v in components.items() if k != name}}}
        if f'"#/components/schemas/{name}"' not in json.dumps(others):
            del components[name]
