"""Errors render as RFC 9457 problem+json with a stable ``code``, whatever went wrong."""

from __future__ import annotations

import json

import pytest
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from clearhouse.kit.api import JsonBodyRoute, json_body, parse_json
from clearhouse.kit.errors import (
    PROBLEM_JSON,
    ClearhouseError,
    MalformedRequest,
    NotFound,
    ValidationFailed,
    install_handlers,
)

SECRET = "s3cr3t-internal-state-0xDEADBEEF"


class OverLimit(ClearhouseError):
    """A test rule: the amount may not pass the limit."""

    code = "over_limit"
    status = 409
    title = "Over limit"


class Order(BaseModel):
    amount: int = Field(gt=0)
    currency: str = Field(min_length=3, max_length=3)


class Address(BaseModel):
    city: str


class Shipment(BaseModel):
    to: Address
    parcels: list[Order] = []


def tiny_app() -> FastAPI:
    app = FastAPI()
    install_handlers(app)

    @app.post("/rule")
    def rule() -> None:
        raise OverLimit("amount 500 is over the limit 100", limit=100, errors=[{"field": "amount"}])

    @app.post("/rule-default-detail")
    def rule_default_detail() -> None:
        raise OverLimit()

    @app.get("/missing")
    def missing() -> None:
        raise NotFound("no thing thing_123")

    @app.post("/orders")
    def orders(order: Order) -> dict[str, int]:
        return {"amount": order.amount}

    @app.post("/raw")
    async def raw(request: Request) -> dict[str, str]:
        body = await json_body(request)
        return {"type": type(body).__name__}

    @app.post("/shipments")
    def shipments(shipment: Shipment) -> dict[str, str]:
        return {"city": shipment.to.city}

    checked = APIRouter(route_class=JsonBodyRoute)

    @checked.post("/checked/orders")
    def checked_orders(order: Order) -> dict[str, int]:
        return {"amount": order.amount}

    app.include_router(checked)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError(f"database password is {SECRET}")

    @app.get("/http-error")
    def http_error() -> None:
        raise HTTPException(status_code=418, detail="I'm a teapot", headers={"X-Why": "tea"})

    return app


@pytest.fixture
def client():
    with TestClient(tiny_app(), raise_server_exceptions=False) as test_client:
        yield test_client


def assert_problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == f"https://clearhouse.dev/problems/{code}"
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body


class TestClearhouseErrors:
    def test_subclass_renders_its_code_status_title_and_detail(self, client):
        body = assert_problem(client.post("/rule"), 409, "over_limit")
        assert body["title"] == "Over limit"
        assert body["detail"] == "amount 500 is over the limit 100"
        assert body["errors"] == [{"field": "amount"}]
        assert body["limit"] == 100  # extra keyword arguments become extension members

    def test_detail_defaults_to_the_title(self, client):
        body = assert_problem(client.post("/rule-default-detail"), 409, "over_limit")
        assert body["detail"] == "Over limit"
        assert "errors" not in body

    def test_not_found(self, client):
        body = assert_problem(client.get("/missing"), 404, "not_found")
        assert body["detail"] == "no thing thing_123"

    def test_problem_dict_without_http(self):
        assert OverLimit("x").problem() == {
            "type": "https://clearhouse.dev/problems/over_limit",
            "title": "Over limit",
            "status": 409,
            "code": "over_limit",
            "detail": "x",
        }

    @pytest.mark.parametrize(
        ("error", "code", "status"),
        [
            (NotFound, "not_found", 404),
            (ValidationFailed, "validation_error", 422),
            (MalformedRequest, "malformed_request", 400),
            (ClearhouseError, "error", 400),
        ],
    )
    def test_kit_error_codes(self, error, code, status):
        assert (error.code, error.status) == (code, status)


class TestRequestValidation:
    def test_a_field_breaking_its_rule_is_422_validation_error(self, client):
        body = assert_problem(
            client.post("/orders", json={"amount": -1, "currency": "CNY"}), 422, "validation_error"
        )
        assert body["errors"] == [
            {
                "loc": ["body", "amount"],
                "type": "greater_than",
                "msg": "Input should be greater than 0",
            }
        ]

    def test_every_broken_field_is_listed(self, client):
        body = assert_problem(
            client.post("/orders", json={"amount": "many", "currency": "YUAN"}),
            422,
            "validation_error",
        )
        assert sorted(tuple(e["loc"]) for e in body["errors"]) == [
            ("body", "amount"),
            ("body", "currency"),
        ]

    def test_missing_field_is_422(self, client):
        body = assert_problem(client.post("/orders", json={"amount": 5}), 422, "validation_error")
        assert body["errors"][0]["loc"] == ["body", "currency"]
        assert body["errors"][0]["type"] == "missing"

    def test_malformed_json_is_400_malformed_request(self, client):
        response = client.post(
            "/orders", content=b'{"amount": 5,', headers={"content-type": "application/json"}
        )
        assert_problem(response, 400, "malformed_request")

    def test_missing_body_is_400_malformed_request(self, client):
        response = client.post("/orders", headers={"content-type": "application/json"})
        assert_problem(response, 400, "malformed_request")

    def test_json_that_is_not_an_object_is_400(self, client):
        assert_problem(client.post("/orders", json=[1, 2, 3]), 400, "malformed_request")

    def test_json_body_helper_refuses_bad_json_with_400(self, client):
        body = assert_problem(client.post("/raw", content=b"{nope"), 400, "malformed_request")
        assert "not valid JSON" in body["detail"]
        assert_problem(client.post("/raw", content=b""), 400, "malformed_request")
        assert client.post("/raw", content=b"[1]").json() == {"type": "list"}


class TestRequestShape:
    def test_list_indexes_in_loc_are_integers_and_keys_strings(self, client):
        parcels = [{"amount": 1, "currency": "CNY"}, {"amount": 0, "currency": "CNY"}]
        body = assert_problem(
            client.post("/shipments", json={"to": {"city": "Hangzhou"}, "parcels": parcels}), 422, "validation_error"
        )
        assert [e["loc"] for e in body["errors"]] == [["body", "parcels", 1, "amount"]]

    def test_a_json_invalid_position_is_an_integer(self, client):
        response = client.post("/orders", content=b'{"amount": 5,', headers={"content-type": "application/json"})
        body = assert_problem(response, 400, "malformed_request")
        assert body["errors"][0]["loc"] == ["body", 13]

    @pytest.mark.parametrize("to", [None, 5, [], "Hangzhou"])
    def test_an_object_field_of_the_wrong_type_is_422_not_400(self, client, to):
        body = assert_problem(client.post("/shipments", json={"to": to}), 422, "validation_error")
        assert [e["loc"] for e in body["errors"]] == [["body", "to"]]

    @pytest.mark.parametrize("body", [[], 5, "x"])
    def test_a_body_that_is_not_an_object_stays_400(self, client, body):
        assert_problem(client.post("/shipments", json=body), 400, "malformed_request")

    def test_parse_json_refuses_a_repeated_key_naming_it(self):
        with pytest.raises(MalformedRequest, match='"amount" more than once'):
            parse_json(b'{"amount": 5, "currency": "CNY", "amount": 7}')
        with pytest.raises(MalformedRequest, match='"b"'):
            parse_json(b'[{"a": {"b": 1, "b": 1}}]')
        assert parse_json(b'{"a": {"a": 1}, "b": [{"a": 2}, {"a": 3}]}') == {"a": {"a": 1}, "b": [{"a": 2}, {"a": 3}]}

    def test_parse_json_says_a_number_is_too_long_without_python_internals(self):
        with pytest.raises(MalformedRequest) as refused:
            parse_json(b'{"amount": ' + b"9" * 5000 + b"}")
        assert refused.value.detail == "a number in the body has too many digits"
        assert parse_json(b'{"amount": ' + b"9" * 4000 + b"}") == {"amount": int("9" * 4000)}

    def test_parse_json_reads_what_json_loads_reads(self):
        for raw in ('{"a": 1}'.encode("utf-16"), b'\xef\xbb\xbf{"a": 1}', b'{"a": "\\ud800"}', b'{"a": 1.5e3}'):
            assert parse_json(raw) == json.loads(raw)
        for raw in (b'{"a": "\xc3\x28"}', b'{"a": NaN}', b"[" * 100000):
            with pytest.raises(MalformedRequest, match="not valid JSON"):
                parse_json(raw)

    def test_a_json_body_route_refuses_what_parse_json_refuses(self, client):
        for raw, said in ((b'{"amount": 5, "currency": "CNY", "amount": 7}', '"amount"'),
                          (b'{"amount": ' + b"1" * 5000 + b', "currency": "CNY"}', "too many digits"),
                          (b'{"amount": Infinity, "currency": "CNY"}', "Infinity")):
            response = client.post("/checked/orders", content=raw, headers={"content-type": "application/json"})
            assert said in assert_problem(response, 400, "malformed_request")["detail"]
        response = client.post("/checked/orders", json={"amount": 5, "currency": "CNY"})
        assert response.json() == {"amount": 5}
        assert_problem(client.post("/checked/orders", json={"amount": 0, "currency": "CNY"}), 422, "validation_error")


class TestHttpErrors:
    def test_unknown_route_is_404_not_found(self, client):
        assert_problem(client.get("/no/such/route"), 404, "not_found")

    def test_wrong_method_is_405(self, client):
        assert_problem(client.delete("/orders"), 405, "method_not_allowed")

    def test_other_http_errors_keep_status_and_headers(self, client):
        response = client.get("/http-error")
        body = assert_problem(response, 418, "http_error")
        assert body["detail"] == "I'm a teapot"
        assert response.headers["x-why"] == "tea"


class TestUnexpectedErrors:
    def test_unhandled_exception_is_500_internal_error_without_internals(self, client):
        response = client.get("/boom")
        body = assert_problem(response, 500, "internal_error")
        assert body["title"] == "Internal error"
        for leaked in (SECRET, "Traceback", "RuntimeError", "password", 'File "', "test_errors.py"):
            assert leaked not in response.text

    def test_unhandled_exception_over_real_http(self):
        import socket
        import threading
        import time

        import httpx
        import uvicorn

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = uvicorn.Server(
            uvicorn.Config(tiny_app(), host="127.0.0.1", port=port, log_level="critical")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 10
            while not server.started:
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.01)
            response = httpx.get(f"http://127.0.0.1:{port}/boom", timeout=10)
            body = assert_problem(response, 500, "internal_error")
            assert SECRET not in response.text and "Traceback" not in response.text
            assert body["detail"] == "An unexpected error occurred; it has been logged"
            # The server survives and keeps answering.
            assert_problem(
                httpx.post(f"http://127.0.0.1:{port}/rule", timeout=10), 409, "over_limit"
            )
        finally:
            server.should_exit = True
            thread.join(timeout=10)
