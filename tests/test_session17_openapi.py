"""Session 17: the OpenAPI document tells a client developer the truth.

Every error answer is declared as the problem the server really sends (``application/problem+json``,
``Problem``), each operation lists the errors the middleware can answer for it, authentication is
described as security schemes with each operation's ``security``, and ``Idempotency-Key`` is declared
where the server honours it. The answers checked here come over real HTTP (a uvicorn server), and each
is held against the schema the document declares for its operation and status.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import reduce
from typing import Any

import httpx
import pytest

from clearhouse.identity import signing
from clearhouse.identity.people.service import SESSION_COOKIE
from clearhouse.identity.permissions import PUBLIC, route_permission
from clearhouse.kit.api import leaf_routes
from clearhouse.openapi import KEY_PERMISSIONS, honours_idempotency_key
from tests.conftest import Credentials, make_merchant
from tests.identity.people_support import create_user, login

BODY_LIMIT = 4096
"""Every app in this module takes bodies of at most this many bytes, so a 413 is cheap to provoke."""
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
SIGNED = {"ClearhouseKey", "ClearhouseTimestamp", "ClearhouseNonce", "ClearhouseSignature"}


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"max_request_bytes": BODY_LIMIT})


@pytest.fixture
def document(live_server) -> dict[str, Any]:
    """The document as any client gets it: over HTTP, without credentials."""
    answer = httpx.get(f"{live_server}/openapi.json", timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.fixture
def anonymous(live_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server, timeout=30) as client:
        yield client


# --- reading the document ---------------------------------------------------------------------------


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for template, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method.upper(), template, operation


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        assert node["$ref"].startswith("#/"), node
        node = reduce(lambda part, key: part[key], node["$ref"][2:].split("/"), document)
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def validation_errors(schema: dict[str, Any], document: dict[str, Any], instance: Any) -> list[str]:
    """What is wrong with ``instance`` against ``schema`` (which may refer into the document's
    components): ``jsonschema`` if installed, else ``jsonschema_rs`` (schemathesis's own validator),
    else the problem fields by hand."""
    rooted = {**schema, "components": document.get("components", {})}
    try:
        import jsonschema
    except ImportError:
        jsonschema = None
    if jsonschema is not None:
        return [error.message for error in jsonschema.Draft202012Validator(rooted).iter_errors(instance)]
    try:
        import jsonschema_rs
    except ImportError:
        return _problem_by_hand(resolve(document, schema), instance)
    return [str(error) for error in jsonschema_rs.Draft202012Validator(rooted).iter_errors(instance)]


def _problem_by_hand(schema: dict[str, Any], instance: Any) -> list[str]:
    if schema.get("title") != "Problem":
        return []
    wrong = [name for name, kind in (("type", str), ("title", str), ("status", int), ("code", str), ("detail", str))
             if not isinstance(instance.get(name), kind)]
    if "errors" in instance and not all({"loc", "type", "msg"} <= set(e) for e in instance["errors"]):
        wrong.append("errors")
    return wrong


def assert_conforms(document: dict[str, Any], method: str, template: str, response: httpx.Response) -> dict[str, Any]:
    """The answer's status is declared for the operation, its media type is declared for that status,
    and its body fits the declared schema. Returns the body."""
    operation = document["paths"][template][method.lower()]
    status = str(response.status_code)
    assert status in operation["responses"], (method, template, status, response.text)
    declared = resolve(document, operation["responses"][status])
    media = response.headers["content-type"].split(";")[0].strip()
    assert media in declared.get("content", {}), (method, template, status, media, list(declared.get("content", {})))
    body = response.json()
    schema = declared["content"][media].get("schema")
    if schema:
        assert validation_errors(schema, document, body) == [], (method, template, status, body)
    if response.status_code >= 400:
        assert media == "application/problem+json"
        assert body["status"] == response.status_code
        assert body["type"] == f"https://clearhouse.dev/problems/{body['code']}"
    return body


def fill(template: str) -> str:
    """A concrete path for a template: ids that exist nowhere."""
    path = template
    while "{" in path:
        start, end = path.index("{"), path.index("}")
        path = path[:start] + "s17_nothing" + path[end + 1:]
    return path


# --- the document as a whole ------------------------------------------------------------------------


class TestTheDocumentIsValidOpenAPI:
    def test_it_validates_as_openapi_3_1(self, document):
        try:
            from openapi_spec_validator import validate
        except ImportError:  # not a dependency: the OpenAPI 3.1 meta-schema schemathesis ships instead
            from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

            assert document["openapi"].startswith("3.1.")
            assert [str(error) for error in OPENAPI_31_VALIDATOR.iter_errors(document)] == []
        else:
            validate(document)

    def test_every_reference_resolves(self, document):
        for ref in set(refs(document)):
            assert isinstance(resolve(document, {"$ref": ref}), dict), ref

    def test_every_component_schema_is_a_valid_json_schema(self, document):
        jsonschema_rs = pytest.importorskip("jsonschema_rs")
        for name, schema in document["components"]["schemas"].items():
            try:
                jsonschema_rs.Draft202012Validator({**schema, "components": document["components"]})
            except Exception as error:  # noqa: BLE001 - names the schema that does not compile
                pytest.fail(f"{name}: {error}")

    def test_every_security_requirement_names_a_defined_scheme(self, document):
        schemes = document["components"]["securitySchemes"]
        for method, template, operation in operations(document):
            for requirement in operation["security"]:
                assert set(requirement) <= set(schemes), (method, template, requirement)

    def test_fastapis_validation_error_shape_is_gone(self, document):
        text = json.dumps(document)
        assert "HTTPValidationError" not in text
        assert "#/components/schemas/ValidationError" not in text
        assert "ValidationError" not in document["components"]["schemas"]

    def test_every_operation_keeps_its_permission(self, document):
        for method, template, operation in operations(document):
            assert operation.get("x-permission"), (method, template)


class TestErrorsAreProblems:
    def test_the_problem_schema_has_the_servers_fields(self, document):
        problem = document["components"]["schemas"]["Problem"]
        assert set(problem["required"]) == {"type", "title", "status", "code", "detail"}
        assert problem["properties"]["errors"]["items"] == {"$ref": "#/components/schemas/ProblemError"}
        assert problem.get("additionalProperties") is True  # results, reason, line ride along
        assert set(document["components"]["schemas"]["ProblemError"]["required"]) == {"loc", "type", "msg"}

    def test_every_error_answer_is_problem_json(self, document):
        for method, template, operation in operations(document):
            for status, answer in operation["responses"].items():
                if status < "400" or (template, status) == ("/readyz", "503"):  # readyz: its own status body
                    continue
                content = resolve(document, answer)["content"]
                assert list(content) == ["application/problem+json"], (method, template, status)
                assert content["application/problem+json"]["schema"] == {"$ref": "#/components/schemas/Problem"}

    def test_each_operation_lists_what_the_middleware_can_answer(self, document, app):
        rate_limited = app.state.settings.api_key_rate_limit_per_minute > 0
        for method, template, operation in operations(document):
            statuses = set(operation["responses"])
            public = operation["x-permission"] == PUBLIC
            has_body = "requestBody" in operation
            assert "400" in statuses, (method, template)
            if template != "/healthz":  # the one route that never touches the database
                assert "503" in statuses, (method, template)
            if not public:
                assert {"401", "403"} <= statuses, (method, template)
            if any(p.get("in") == "path" and p["name"].endswith("_id") for p in operation.get("parameters", [])):
                assert "404" in statuses, (method, template)
            if has_body:
                assert {"413", "422"} <= statuses, (method, template)
            if honours_idempotency_key(method, template, operation["x-permission"]):
                assert "409" in statuses, (method, template)
            takes_keys = any(set(requirement) >= SIGNED for requirement in operation["security"])
            if takes_keys and rate_limited:
                assert "429" in statuses, (method, template)

    def test_declared_descriptions_are_kept(self, document):
        """Routes that said what their errors mean keep saying it (reconciliation's own 413)."""
        answer = document["paths"]["/v1/reconciliations"]["post"]["responses"]["413"]
        assert "statement_too_large" in answer["description"]
        assert answer["content"]["application/problem+json"]["schema"] == {"$ref": "#/components/schemas/Problem"}

    def test_the_413_says_this_servers_limit(self, document):
        assert str(BODY_LIMIT) in document["components"]["responses"]["RequestTooLarge"]["description"]


# --- security ---------------------------------------------------------------------------------------


class TestSecurity:
    def test_the_schemes_name_the_headers_and_cookie_the_server_reads(self, document):
        schemes = document["components"]["securitySchemes"]
        expected = {
            "ClearhouseKey": ("header", signing.KEY_HEADER),
            "ClearhouseTimestamp": ("header", signing.TIMESTAMP_HEADER),
            "ClearhouseNonce": ("header", signing.NONCE_HEADER),
            "ClearhouseSignature": ("header", signing.SIGNATURE_HEADER),
            "SessionCookie": ("cookie", SESSION_COOKIE),
            "CsrfToken": ("header", "X-CSRF-Token"),
        }
        assert {name: (s["in"], s["name"]) for name, s in schemes.items()} == expected
        assert all(s["type"] == "apiKey" for s in schemes.values())
        for name in SIGNED:
            assert "api.md" in schemes[name]["description"] and "HMAC-SHA256" in schemes[name]["description"]

    def test_public_operations_have_no_security_and_the_rest_do(self, document, app):
        public = {(method, route.path) for route in leaf_routes(app) if route_permission(route) == PUBLIC
                  for method in getattr(route, "methods", None) or ()}
        for method, template, operation in operations(document):
            if (method, template) in public:
                assert operation["security"] == [], (method, template)
            else:
                assert operation["security"], (method, template)
        assert document["paths"]["/healthz"]["get"]["security"] == []
        assert document["paths"]["/v1/auth/login"]["post"]["security"] == []
        assert document["paths"]["/v1/channels/{channel}/notifications"]["post"]["security"] == []

    def test_keys_sign_everything_and_sessions_add_the_csrf_token_on_writes(self, document):
        for method, template, operation in operations(document):
            permission = operation["x-permission"]
            if permission == PUBLIC:
                continue
            session = {"SessionCookie", "CsrfToken"} if method in ("POST", "PUT", "PATCH", "DELETE") \
                else {"SessionCookie"}
            requirements = [set(requirement) for requirement in operation["security"]]
            if permission == "session" or permission not in KEY_PERMISSIONS:
                assert requirements == [session], (method, template)  # people only
            else:
                assert requirements == [SIGNED, session], (method, template)

    def test_anonymous_callers_are_refused_exactly_where_security_is_declared(self, document, anonymous):
        """Over the wire, per operation: no credentials is 401 wherever the document asks for them, and
        never where it does not; every answer fits what the document declares."""
        for method, template, operation in operations(document):
            body = {"json": {}} if "requestBody" in operation else {}
            answer = anonymous.request(method, fill(template), **body)
            if operation["security"]:
                assert answer.status_code == 401, (method, template, answer.text)
                assert answer.json()["code"] == "authentication_required"
            else:
                assert answer.status_code != 401, (method, template, answer.text)
            assert_conforms(document, method, template, answer)

    def test_a_key_is_refused_where_only_people_are_declared(self, document, http):
        """A platform key with every scope a key may hold still cannot decide an approval."""
        operation = document["paths"]["/v1/approvals/{approval_id}/approve"]["post"]
        assert [set(r) for r in operation["security"]] == [{"SessionCookie", "CsrfToken"}]
        answer = http.post("/v1/approvals/apr_s17_nothing/approve", json={})
        assert answer.status_code == 403, answer.text
        assert assert_conforms(document, "POST", "/v1/approvals/{approval_id}/approve", answer)["code"] == "forbidden"

    def test_a_session_reads_with_its_cookie_and_writes_with_its_csrf_token(self, document, app, live_server):
        user = create_user(app.state.engine, "merchant_viewer")  # a role without TOTP: two sign-ins in a row
        with httpx.Client(base_url=live_server, timeout=30) as browser:
            login(browser, user)
            assert SESSION_COOKIE in browser.cookies
            token = browser.headers.pop("X-CSRF-Token")
            read = browser.get("/v1/payments")
            assert read.status_code == 200, read.text
            assert_conforms(document, "GET", "/v1/payments", read)
            refused = browser.post("/v1/payments", json={"amount": 100, "currency": "CNY", "method": "alipay"})
            assert refused.status_code == 403, refused.text
            assert assert_conforms(document, "POST", "/v1/payments", refused)["code"] == "csrf_failed"
            created = browser.post("/v1/merchants", json={"name": "S17"}, headers={"X-CSRF-Token": token})
            assert created.status_code == 403, created.text  # operators may not create merchants
            assert assert_conforms(document, "POST", "/v1/merchants", created)["code"] == "forbidden"


# --- real error answers against the declared schemas -------------------------------------------------


class TestRealErrorAnswersFitTheDocument:
    def test_a_422(self, document, http):
        answer = http.get("/v1/ledger/accounts", params={"limit": 0})
        assert answer.status_code == 422, answer.text
        body = assert_conforms(document, "GET", "/v1/ledger/accounts", answer)
        assert body["code"] == "validation_error"
        assert body["errors"][0]["loc"] == ["query", "limit"]

    def test_a_422_in_a_body_names_list_indexes_as_integers(self, document, http):
        answer = http.post("/v1/ledger/transfers", json={"transfers": [
            {"debit_account_id": "a", "credit_account_id": "b", "amount": 1, "currency": "cny"}]})
        assert answer.status_code == 422, answer.text
        body = assert_conforms(document, "POST", "/v1/ledger/transfers", answer)
        assert any(isinstance(part, int) for error in body["errors"] for part in error["loc"]), body

    def test_a_401_unsigned(self, document, anonymous):
        answer = anonymous.get("/v1/merchants/mch_s17")
        assert answer.status_code == 401
        assert assert_conforms(document, "GET", "/v1/merchants/{merchant_id}", answer)["code"] == \
            "authentication_required"

    def test_a_401_bad_signature(self, document, anonymous, platform_key: Credentials):
        headers = signing.signed_headers(platform_key.key_id, "cks_wrong", "GET", "/v1/merchants")
        answer = anonymous.get("/v1/merchants", headers=headers)
        assert answer.status_code == 401
        assert assert_conforms(document, "GET", "/v1/merchants", answer)["code"] == "signature_invalid"

    def test_a_401_expired_timestamp(self, document, anonymous, platform_key: Credentials):
        headers = signing.signed_headers(platform_key.key_id, platform_key.secret, "GET", "/v1/merchants",
                                         timestamp=1_000_000_000)
        answer = anonymous.get("/v1/merchants", headers=headers)
        assert answer.status_code == 401
        assert assert_conforms(document, "GET", "/v1/merchants", answer)["code"] == "signature_expired"

    def test_a_401_replayed_nonce(self, document, anonymous, platform_key: Credentials):
        headers = signing.signed_headers(platform_key.key_id, platform_key.secret, "GET", "/v1/merchants")
        assert anonymous.get("/v1/merchants", headers=headers).status_code == 200
        answer = anonymous.get("/v1/merchants", headers=headers)
        assert answer.status_code == 401
        assert assert_conforms(document, "GET", "/v1/merchants", answer)["code"] == "signature_replayed"

    def test_a_403_from_a_merchant_key_on_the_ledger(self, document, app, live_server):
        merchant = make_merchant(app, "S17 shop")
        with httpx.Client(base_url=live_server, timeout=30, auth=merchant.auth) as shop:
            answer = shop.get("/v1/ledger/verify")
        assert answer.status_code == 403
        assert assert_conforms(document, "GET", "/v1/ledger/verify", answer)["code"] == "forbidden"

    def test_a_404(self, document, http):
        answer = http.get("/v1/ledger/transfers/tr_s17_nothing")
        assert answer.status_code == 404
        assert assert_conforms(document, "GET", "/v1/ledger/transfers/{transfer_id}", answer)["code"] == \
            "transfer_not_found"

    def test_a_400_malformed_json(self, document, http):
        answer = http.post("/v1/ledger/accounts", content=b'{"type": "asset",', headers={"content-type":
                                                                                       "application/json"})
        assert answer.status_code == 400
        assert assert_conforms(document, "POST", "/v1/ledger/accounts", answer)["code"] == "malformed_request"

    def test_a_400_key_named_twice(self, document, http):
        answer = http.post("/v1/merchants", content=b'{"name": "a", "name": "b"}',
                           headers={"content-type": "application/json"})
        assert answer.status_code == 400
        assert assert_conforms(document, "POST", "/v1/merchants", answer)["code"] == "malformed_request"

    def test_a_400_repeated_header_on_a_route_without_a_body(self, document, anonymous, platform_key: Credentials):
        headers = list(signing.signed_headers(platform_key.key_id, platform_key.secret, "GET", "/v1/merchants")
                       .items())
        answer = anonymous.get("/v1/merchants", headers=[*headers, (signing.NONCE_HEADER, "another-nonce-0001")])
        assert answer.status_code == 400
        assert assert_conforms(document, "GET", "/v1/merchants", answer)["code"] == "malformed_request"

    def test_a_413(self, document, http):
        answer = http.post("/v1/ledger/accounts", json={"type": "asset", "currency": "CNY", "code": "x" * BODY_LIMIT})
        assert answer.status_code == 413, answer.text
        assert assert_conforms(document, "POST", "/v1/ledger/accounts", answer)["code"] == "request_too_large"

    def test_a_413_on_a_public_route(self, document, anonymous):
        answer = anonymous.post("/v1/auth/login", json={"email": "a@example.com", "password": "x" * BODY_LIMIT})
        assert answer.status_code == 413, answer.text
        assert assert_conforms(document, "POST", "/v1/auth/login", answer)["code"] == "request_too_large"


# --- Idempotency-Key --------------------------------------------------------------------------------


def idempotency_parameter(document: dict[str, Any], operation: dict[str, Any]) -> dict[str, Any] | None:
    for parameter in operation.get("parameters", []):
        parameter = resolve(document, parameter)
        if parameter["in"] == "header" and parameter["name"] == "Idempotency-Key":
            return parameter
    return None


class TestIdempotencyKey:
    def test_declared_on_every_post_under_v1_and_nowhere_else(self, document):
        for method, template, operation in operations(document):
            parameter = idempotency_parameter(document, operation)
            if method == "POST" and template.startswith("/v1/") and operation["x-permission"] != PUBLIC:
                assert parameter is not None and parameter["required"] is False, (method, template)
            else:
                assert parameter is None, (method, template)

    def test_its_rules_are_the_servers(self, document):
        parameter = idempotency_parameter(document, document["paths"]["/v1/payments"]["post"])
        assert parameter is not None
        schema = parameter["schema"]
        assert (schema["minLength"], schema["maxLength"]) == (1, 255)
        assert "24 h" in parameter["description"] and "Idempotent-Replayed" in parameter["description"]
        for good in ("a", "settle-2026-11-23-002", "a b", "~" * 255):
            assert validation_errors(schema, document, good) == [], good
        for bad in ("", "a" * 256, "caf\u00e9", "tab\there", " padded"):
            assert validation_errors(schema, document, bad) != [], bad

    def test_a_retry_is_answered_from_the_first_and_says_so(self, document, http):
        body = {"type": "asset", "currency": "CNY", "code": "s17_idempotent"}
        first = http.post("/v1/ledger/accounts", json=body, headers={"Idempotency-Key": "s17-open-001"})
        again = http.post("/v1/ledger/accounts", json=body, headers={"Idempotency-Key": "s17-open-001"})
        assert first.status_code == again.status_code == 201, (first.text, again.text)
        assert again.headers["idempotent-replayed"] == "true" and again.json() == first.json()
        declared = document["paths"]["/v1/ledger/accounts"]["post"]["responses"]["201"]
        assert "Idempotent-Replayed" in declared["headers"]
        assert_conforms(document, "POST", "/v1/ledger/accounts", again)

    def test_the_same_key_with_another_body_is_the_declared_409(self, document, http):
        http.post("/v1/merchants", json={"name": "S17 one"}, headers={"Idempotency-Key": "s17-open-002"})
        answer = http.post("/v1/merchants", json={"name": "S17 two"}, headers={"Idempotency-Key": "s17-open-002"})
        assert answer.status_code == 409, answer.text
        assert assert_conforms(document, "POST", "/v1/merchants", answer)["code"] == "idempotency_key_reused"

    def test_an_invalid_key_is_the_declared_400(self, document, http):
        answer = http.post("/v1/merchants", json={"name": "S17"}, headers={"Idempotency-Key": "k" * 256})
        assert answer.status_code == 400, answer.text
        assert assert_conforms(document, "POST", "/v1/merchants", answer)["code"] == "invalid_idempotency_key"

    def test_where_it_is_not_declared_it_is_not_honoured(self, document, http):
        assert idempotency_parameter(document, document["paths"]["/v1/merchants/{merchant_id}"]["patch"]) is None
        merchant = http.post("/v1/merchants", json={"name": "S17 patched"}).json()["id"]
        first = http.patch(f"/v1/merchants/{merchant}", json={"name": "S17 A"}, headers={"Idempotency-Key": "s17-p"})
        second = http.patch(f"/v1/merchants/{merchant}", json={"name": "S17 B"}, headers={"Idempotency-Key": "s17-p"})
        assert first.status_code == second.status_code == 200, (first.text, second.text)
        assert "idempotent-replayed" not in second.headers and second.json()["name"] == "S17 B"


# --- request bodies ---------------------------------------------------------------------------------


class TestOptionalBodiesAreNotNullable:
    """FastAPI declared an optional body model as "the model or null"; the server refuses ``null``
    (``kit.api.JsonBodyRoute``), so no JSON body in the document admits it."""

    def test_no_json_body_admits_null(self, document):
        for method, template, operation in operations(document):
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                schema = content["application/json"]["schema"]
                assert validation_errors(schema, document, None) != [], (method, template)

    @pytest.mark.parametrize("template", ["/v1/payments/{payment_id}/capture", "/v1/approvals/{approval_id}/approve",
                                          "/v1/events/{event_id}/redeliver"])
    def test_a_null_body_is_the_declared_400(self, document, http, template):
        assert document["paths"][template]["post"]["requestBody"].get("required", False) is False  # may be left out
        answer = http.post(fill(template), content=b"null", headers={"content-type": "application/json"})
        assert answer.status_code == 400, answer.text
        assert assert_conforms(document, "POST", template, answer)["code"] == "malformed_request"


def test_a_public_post_ignores_an_idempotency_key(app, anonymous_client, user_client_factory):
    """Sign-in takes no Idempotency-Key: anonymous callers would share one scope, and a replayed sign-in
    answered the first session's CSRF token without its cookie."""
    from tests.identity.people_support import create_user

    user = create_user(app.state.engine, "merchant_viewer")  # a role without TOTP: two sign-ins in a row
    body = {"email": user.email, "password": user.password}
    first = anonymous_client.post("/v1/auth/login", json=body, headers={"Idempotency-Key": "login-1"})
    second = anonymous_client.post("/v1/auth/login", json=body, headers={"Idempotency-Key": "login-1"})
    assert (first.status_code, second.status_code) == (200, 200), (first.text, second.text)
    assert "idempotent-replayed" not in second.headers
    assert "set-cookie" in second.headers and second.json()["csrf_token"] != first.json()["csrf_token"]
    other = anonymous_client.post("/v1/auth/login", json={**body, "password": "wrong"},
                                  headers={"Idempotency-Key": "login-1"})
    assert other.status_code == 401, other.text  # not 409 idempotency_key_reused: no key was kept
