"""The injection walk's machinery: payloads, request bodies built from the served OpenAPI
document, the string slots of a body, and the checks every answer must pass.

Bodies come from the document so a new endpoint is walked without anyone remembering to
add it; a small table (``OVERRIDES`` in the test module) supplies what a schema cannot
know (an account pair that exists, a merchant's own id, a password that meets the policy).
"""

from __future__ import annotations

import copy
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

from clearhouse.kit.masking import mask_free_form, scrub
from tests.conftest import CARD_EXP_YEAR
from tests.identity.people_support import new_password

PAYLOADS: list[tuple[str, str]] = [
    ("sql_or", "' OR 1=1 --"),
    ("sql_drop_ledger_accounts", "'; DROP TABLE ledger_accounts; --"),
    ("sql_drop_users", "Robert'); DROP TABLE users;--"),
    ("html_script", "<script>alert(1)</script>"),
    ("html_attribute", '"><img src=x onerror=alert(1)>'),
    ("path_traversal", "../../../../etc/passwd"),
    ("path_traversal_encoded", "..%2f..%2fetc%2fpasswd"),
    ("percent_nul", "%00"),
    ("nul", "\x00"),
    ("terminal_escape", "\x07\x1b[31m"),
    ("header_injection", "\r\nSet-Cookie: x=y"),
    ("rtl_override", "\u202e"),
    ("emoji", "\U0001f4b3\U0001f525\U0001f469\u200d\U0001f4bb"),
    ("ascii_10k", "A" * 10240),
    ("multibyte_10k", "\u652f\u4ed8\u00e9\U0001f4b3" * 854),  # 3, 3, 2 and 4 bytes: 10 KB of UTF-8
    ("template", "{{7*7}}"),
    ("jndi", "${jndi:ldap://x}"),
    # Beyond the list: valid JSON ("\ud800") that is not valid Unicode text; a URL
    # cannot carry it, so it is sent only in bodies.
    ("lone_surrogate", "\ud800"),
]
"""Every payload, named so a failure says which one."""

SQL_PAYLOADS = {"sql_or", "sql_drop_ledger_accounts", "sql_drop_users"}


class _NewKey:
    """A path step meaning "a new key of this free-form object" (metadata keys are strings too)."""

    def __repr__(self) -> str:
        return "<key>"


NEW_KEY = _NewKey()
FREE_FORM_VALUE = "note"
"""The key a free-form object's value payload is stored under."""
NESTED = "nested"
"""The key of a list inside a free-form object, its first item the payload: a string two levels down."""

Path_ = tuple[Any, ...]


# --- the served document ---------------------------------------------------------------------


@cache
def served_document() -> dict[str, Any]:
    """The app's own OpenAPI document, read at collection time from an app on a throw-away,
    migrated SQLite file: the same ``create_app`` every test uses, so nothing is listed by hand."""
    from clearhouse.app import create_app
    from clearhouse.kit.db import upgrade
    from clearhouse.kit.settings import Settings
    from tests.conftest import TEST_MASTER_KEY

    with tempfile.TemporaryDirectory(prefix="injection-doc-") as directory:
        url = f"sqlite:///{Path(directory) / 'document.db'}"
        upgrade(url)
        app = create_app(Settings(database_url=url, master_key=TEST_MASTER_KEY, master_key_file=None))
        document = app.openapi()
        app.state.engine.dispose()
        app.state.bookkeeping_engine.dispose()
    return document


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    permission: str
    spec: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"

    def parameters(self, where: str) -> list[dict[str, Any]]:
        return [p for p in self.spec.get("parameters", []) if p["in"] == where]

    def body_schema(self) -> dict[str, Any] | None:
        content = self.spec.get("requestBody", {}).get("content", {})
        return content.get("application/json", {}).get("schema")


def operations(document: dict[str, Any]) -> list[Operation]:
    return [Operation(method.upper(), path, spec.get("x-permission", ""), spec)
            for path, methods in document["paths"].items() for method, spec in methods.items()]


# --- schemas ---------------------------------------------------------------------------------


class Schemas:
    """``$ref`` resolution against the document's components."""

    def __init__(self, document: dict[str, Any]):
        self.components = document.get("components", {}).get("schemas", {})
        self.dangling: set[str] = set()

    def resolve(self, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        seen = 0
        while schema is not None and "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            if name not in self.components:
                self.dangling.add(schema["$ref"])
                return None
            schema = self.components[name]
            seen += 1
            if seen > 20:
                return None
        return schema

    def branches(self, schema: dict[str, Any] | None) -> list[dict[str, Any]]:
        """The non-null alternatives of a schema (``anyOf``/``oneOf``), each resolved."""
        schema = self.resolve(schema)
        if schema is None:
            return []
        alternatives = schema.get("anyOf") or schema.get("oneOf")
        if not alternatives:
            return [schema]
        found = []
        for alternative in alternatives:
            for branch in self.branches(alternative):
                if branch.get("type") != "null":
                    found.append(branch)
        return found

    def first(self, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        branches = self.branches(schema)
        return branches[0] if branches else None

    def is_string(self, schema: dict[str, Any] | None) -> bool:
        return any(b.get("type") == "string" for b in self.branches(schema))

    @staticmethod
    def is_free_form(schema: dict[str, Any]) -> bool:
        return schema.get("type") == "object" and not schema.get("properties") and bool(
            schema.get("additionalProperties", True))


def future_time() -> str:
    return (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def unique(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


STRING_BY_NAME: dict[str, Any] = {
    "currency": lambda: "CNY",
    "default_currency": lambda: "CNY",
    "country": lambda: "CN",
    "timezone": lambda: "Asia/Shanghai",
    "settlement_cycle": lambda: "T+1",
    "email": lambda: f"{unique('walk')}@example.com",
    "password": new_password,
    "number": lambda: "4242424242424242",
    "cvc": lambda: "123",
    "iban": lambda: "DE89370400440532013000",
    "account_number": lambda: "6222020200112233",
    "bank_code": lambda: "ICBC-001",
    "holder_name": lambda: "Li Lei",
    "name": lambda: "Injection Walk",
    "code": lambda: "walk-code",
    "reference": lambda: "walk-reference",
    "reason": lambda: "walk reason",
}
INTEGER_BY_NAME = {"amount": 100, "exp_month": 12, "exp_year": CARD_EXP_YEAR, "timeout_seconds": 3600,
                   "overdraft_limit": 0}


def example(schemas: Schemas, schema: dict[str, Any] | None, name: str = "") -> Any:
    """A plausible value for ``schema``: every property filled, optional ones too, so that
    every string slot is present in the base body."""
    branch = schemas.first(schema)
    if branch is None:
        return None
    kind = branch.get("type")
    if "enum" in branch:
        return branch["enum"][0]
    if kind == "object" or "properties" in branch:
        if Schemas.is_free_form(branch):
            return {FREE_FORM_VALUE: "walk"}
        return {key: value for key, sub in branch.get("properties", {}).items()
                if (value := example(schemas, sub, key)) is not None}
    if kind == "array":
        item = example(schemas, branch.get("items"), name)
        return [] if item is None else [item]
    if kind == "string":
        if name in STRING_BY_NAME:
            return STRING_BY_NAME[name]()
        if branch.get("format") == "date-time":
            return future_time()
        if "pattern" in branch:  # the house's client-chosen ids are the only other patterned strings
            return unique("inj")
        return "walk text"
    if kind == "integer":
        return INTEGER_BY_NAME.get(name, max(1, int(branch.get("minimum", 1))))
    if kind == "boolean":
        return False
    return None


def schema_slots(schemas: Schemas, schema: dict[str, Any] | None, prefix: Path_ = ()) -> Iterator[Path_]:
    """Every string field the schema declares, nested objects and arrays included, and both
    the keys and the values of free-form objects (metadata)."""
    seen: set[Path_] = set()
    for branch in schemas.branches(schema):
        kind = branch.get("type")
        found: list[Path_] = []
        if kind == "string":
            found.append(prefix)
        elif kind == "array":
            found.extend(schema_slots(schemas, branch.get("items"), (*prefix, 0)))
        elif kind == "object" or "properties" in branch:
            if Schemas.is_free_form(branch):
                found.extend([(*prefix, FREE_FORM_VALUE), (*prefix, NEW_KEY), (*prefix, NESTED, 0)])
            for key, sub in branch.get("properties", {}).items():
                found.extend(schema_slots(schemas, sub, (*prefix, key)))
        for slot in found:
            if slot not in seen:
                seen.add(slot)
                yield slot


def body_slots(body: Any, prefix: Path_ = ()) -> Iterator[Path_]:
    """Every string leaf of a concrete body, and a new key in each of its ``metadata`` objects:
    what the schema cannot say when its ``$ref`` leads nowhere."""
    if isinstance(body, str):
        yield prefix
    elif isinstance(body, list):
        for index, item in enumerate(body):
            yield from body_slots(item, (*prefix, index))
    elif isinstance(body, dict):
        if prefix and prefix[-1] == "metadata":
            yield (*prefix, NEW_KEY)
            yield (*prefix, NESTED, 0)
        for key, value in body.items():
            yield from body_slots(value, (*prefix, key))


def all_slots(schemas: Schemas, schema: dict[str, Any] | None, body: Any) -> list[Path_]:
    slots = list(schema_slots(schemas, schema))
    if isinstance(body, dict):
        slots.append((NEW_KEY,))  # an unknown field's name is a string the server reads too
    for slot in body_slots(body):
        if slot not in slots:
            slots.append(slot)
    return slots


def with_payload(body: Any, slot: Path_, payload: str) -> Any | None:
    """``body`` with ``payload`` at ``slot`` (a new key when the slot ends in NEW_KEY), or None
    when the slot's container cannot be made from nothing (an array of whole objects)."""
    body = copy.deepcopy(body)
    if not slot:
        return payload
    container: Any = body
    for step, following in zip(slot[:-1], slot[1:], strict=True):
        if isinstance(container, dict):
            if step not in container or container[step] is None:
                if following == 0:
                    container[step] = []
                elif following is NEW_KEY or following == FREE_FORM_VALUE:
                    container[step] = {}
                else:
                    return None
            container = container[step]
        elif isinstance(container, list):
            if not isinstance(step, int) or step >= len(container):
                return None
            container = container[step]
        else:
            return None
    last = slot[-1]
    if last is NEW_KEY:
        if not isinstance(container, dict):
            return None
        container[payload] = "walk"
    elif isinstance(container, list) and isinstance(last, int):
        if last < len(container):
            if not isinstance(container[last], str | type(None)):
                return None
            container[last] = payload
        elif last == len(container):
            container.append(payload)
        else:
            return None
    elif isinstance(container, dict):
        container[last] = payload
    else:
        return None
    return body


def at(document: Any, slot: Path_) -> tuple[bool, Any]:
    """The value at ``slot`` in a response, and whether it is there at all."""
    value = document
    for step in slot:
        if step is NEW_KEY:
            return isinstance(value, dict), value
        held = (step in value) if isinstance(value, dict) else (
            isinstance(value, list) and isinstance(step, int) and step < len(value))
        if not held:
            return False, None
        value = value[step]
    return True, value


def shown_literally(document: Any, slot: Path_, payload: str) -> str | None:
    """None when the response shows ``payload`` exactly where it was sent, or does not show
    that field at all; otherwise what it shows instead."""
    present, value = at(document, slot)
    if not present:
        return None
    if slot and slot[-1] is NEW_KEY:
        # Merchant free text is stored masked (data-protection.md, "Free text"): a key naming a
        # secret comes back with its value masked.
        masked = mask_free_form({payload: "walk"})
        literal = payload in value and value[payload] == "walk"
        return None if literal or all(value.get(k) == v for k, v in masked.items()) else f"keys {sorted(value)[:5]!r}"
    # A merchant's name is stored without the spaces around it (identity.md): the text, not its margins.
    trimmed = (payload.strip(),) if slot and slot[-1] == "name" else ()
    return None if value in (payload, scrub(payload), *trimmed) else repr(value)[:200]


def in_url(payload: str) -> bool:
    """Whether a URL can carry the payload at all (UTF-8 has no lone surrogates)."""
    try:
        payload.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_bytes(body: Any) -> bytes:
    """The body as UTF-8 JSON, as a browser would send it; with ``\\u`` escapes only when
    it holds what UTF-8 cannot encode (a lone surrogate)."""
    import json

    try:
        return json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(body).encode("ascii")


def path_with(path: str, values: dict[str, str]) -> str:
    """A concrete path: each parameter percent-encoded whole (a ``/`` in it stays data)."""
    for name, value in values.items():
        path = path.replace("{" + name + "}", quote(value, safe=""))
    return path


def slot_label(slot: Path_) -> str:
    return ".".join(str(step) for step in slot) or "<body>"


def short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"
