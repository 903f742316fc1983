"""``GET /v1/audit/events`` and ``GET /v1/audit/verify`` over HTTP, on both databases.

The router is served by a small app of its own whose only stand-in is the caller: a
middleware puts the principal the test chooses where authentication would (the same
``request.state.principal`` that ``requires`` reads), so permission checks and the
tenant rule run for real. ``TestThroughThePlatformApp`` uses the platform app itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from sqlalchemy import text

from clearhouse.audit.endpoints import router
from clearhouse.audit.service import SYSTEM, Actor
from clearhouse.identity.permissions import Principal, role_permissions
from clearhouse.kit import clock
from clearhouse.kit.errors import install_handlers
from tests.audit.support import ADMIN, FINANCE, SHOP_KEY, behind_the_applications_back, record

AUDITOR = Principal(kind="user", id="usr_auditor", role="auditor", merchant_id=None,
                    permissions=role_permissions("auditor"))
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


class Caller:
    """Who the next requests come from (None: nobody signed in)."""

    principal: Principal | None = AUDITOR


@pytest.fixture
def caller() -> Caller:
    return Caller()


@pytest.fixture
def audit_client(engine, caller) -> Iterator[TestClient]:
    app = FastAPI()
    app.state.engine = engine
    install_handlers(app)
    app.include_router(router)

    @app.middleware("http")
    async def _authenticated_as(request: Request, call_next: Any) -> Any:
        if caller.principal is not None:
            request.state.principal = caller.principal
        return await call_next(request)

    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def trail(engine) -> list[str]:
    """Seven events a minute apart from 09:00: two merchants, people, a key and the system."""
    other_key = Actor(type="api_key", id="key_other", role="merchant_key", merchant_id="mer_other")
    with clock.frozen(T0) as clk:
        ids = []
        for actor, action, object_type, object_id, merchant in [
            (ADMIN, "merchant.create", "merchant", "mer_shop", "mer_shop"),
            (ADMIN, "merchant.create", "merchant", "mer_other", "mer_other"),
            (ADMIN, "api_key.create", "api_key", "key_shop", "mer_shop"),
            (SHOP_KEY, "vault.card.create", "card", "tok_1", None),
            (other_key, "vault.card.create", "card", "tok_2", None),
            (FINANCE, "ledger.transfer.create", "transfer", "tr_1", None),
            (SYSTEM, "api_key.expire", "api_key", "key_shop", "mer_shop"),
        ]:
            ids.append(record(engine, actor, action, object_type, object_id, merchant_id=merchant,
                              changes={"password": "hunter2", "step": len(ids)}))
            clk.tick(minutes=1)
    return ids


def event_ids(client: TestClient, **params: Any) -> list[str]:
    response = client.get("/v1/audit/events", params=params)
    assert response.status_code == 200, response.text
    return [e["id"] for e in response.json()["data"]]


class TestListing:
    def test_an_event_is_shown_whole_with_its_change_masked(self, audit_client, trail):
        response = audit_client.get("/v1/audit/events", params={"limit": 1})
        assert response.status_code == 200
        body = response.json()
        assert body["has_more"] is True and body["next_cursor"] == trail[0]
        event = body["data"][0]
        assert event == {
            "id": trail[0], "seq": 1, "occurred_at": "2026-11-23T09:00:00.000000Z",
            "actor_type": "user", "actor_id": "usr_admin", "actor_role": "admin", "merchant_id": "mer_shop",
            "action": "merchant.create", "object_type": "merchant", "object_id": "mer_shop",
            "source_ip": "203.0.113.7", "request_id": "req_admin_1",
            "changes": {"password": "***", "step": 0},
            "prev_hash": "0" * 64, "hash": event["hash"],
        }
        assert "hunter2" not in response.text

    def test_pages_walk_the_whole_trail_in_order(self, audit_client, trail):
        seen, cursor = [], None
        while True:
            params = {"limit": 3, **({"starting_after": cursor} if cursor else {})}
            body = audit_client.get("/v1/audit/events", params=params).json()
            seen += [e["id"] for e in body["data"]]
            if not body["has_more"]:
                assert body["next_cursor"] is None
                break
            cursor = body["next_cursor"]
        assert seen == trail
        assert event_ids(audit_client) == trail  # default limit 50
        assert event_ids(audit_client, starting_after=trail[-1]) == []

    @pytest.mark.parametrize("filters, expected", [
        ({"actor_id": "usr_admin"}, [0, 1, 2]),
        ({"actor_id": "key_shop"}, [3]),
        ({"object_id": "key_shop"}, [2, 6]),
        ({"object_type": "card"}, [3, 4]),
        ({"action": "merchant.create"}, [0, 1]),
        ({"merchant_id": "mer_shop"}, [0, 2, 3, 6]),
        ({"merchant_id": "mer_other"}, [1, 4]),
        ({"merchant_id": "mer_nobody"}, []),
        ({"action": "api_key.create", "merchant_id": "mer_shop"}, [2]),
        ({"since": "2026-11-23T09:05:00Z"}, [5, 6]),
        ({"until": "2026-11-23T09:02:00Z"}, [0, 1]),
        ({"since": "2026-11-23T10:01:00+01:00", "until": "2026-11-23T09:04:00.000001Z"}, [1, 2, 3, 4]),
        ({"object_type": "card", "since": "2026-11-23T09:04:00Z"}, [4]),
    ])
    def test_filters(self, audit_client, trail, filters, expected):
        assert event_ids(audit_client, **filters) == [trail[i] for i in expected]

    def test_a_filtered_list_pages_within_the_filter(self, audit_client, trail):
        body = audit_client.get("/v1/audit/events", params={"merchant_id": "mer_shop", "limit": 2}).json()
        assert [e["id"] for e in body["data"]] == [trail[0], trail[2]] and body["has_more"]
        rest = event_ids(audit_client, merchant_id="mer_shop", limit=2, starting_after=body["next_cursor"])
        assert rest == [trail[3], trail[6]]

    @pytest.mark.parametrize("params, where", [
        ({"limit": 0}, ["query", "limit"]),
        ({"limit": 501}, ["query", "limit"]),
        ({"since": "2026-11-23T09:00:00"}, ["query", "since"]),  # no offset
        ({"until": "yesterday"}, ["query", "until"]),
        ({"since": "0"}, ["query", "since"]),  # a number is not a time, not 1970
        ({"until": "1893456000"}, ["query", "until"]),
        ({"starting_after": "aev_unknown"}, None),
    ])
    def test_bad_parameters_are_422(self, audit_client, trail, params, where):
        response = audit_client.get("/v1/audit/events", params=params)
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["code"] == "validation_error"
        assert response.headers["content-type"].startswith("application/problem+json")
        if where:
            assert [e["loc"] for e in body["errors"]] == [where]

    def test_injection_shaped_filters_are_taken_literally(self, audit_client, trail):
        for value in ("' OR 1=1 --", "<script>alert(1)</script>", "../../etc/passwd", "x" * 10_000, "\u202e\t\n"):
            assert event_ids(audit_client, actor_id=value, object_id=value) == []


class TestAccess:
    def test_nobody_signed_in_is_401(self, audit_client, caller, trail):
        caller.principal = None
        for path in ("/v1/audit/events", "/v1/audit/verify"):
            response = audit_client.get(path)
            assert response.status_code == 401 and response.json()["code"] == "authentication_required"

    @pytest.mark.parametrize("role", ["operator", "finance", "risk_analyst", "merchant_admin"])
    def test_roles_without_audit_read_are_403(self, audit_client, caller, trail, role):
        caller.principal = Principal(kind="user", id="usr_x", role=role, merchant_id=None,
                                     permissions=role_permissions(role))
        for path in ("/v1/audit/events", "/v1/audit/verify"):
            response = audit_client.get(path)
            assert response.status_code == 403 and response.json()["code"] == "forbidden"

    def test_a_merchant_caller_sees_only_its_merchant(self, audit_client, caller, trail):
        # No merchant role holds audit:read today; the tenant rule holds regardless.
        caller.principal = Principal(kind="api_key", id="key_shop", role="merchant_key", merchant_id="mer_shop",
                                     permissions=frozenset({"audit:read"}))
        assert event_ids(audit_client) == [trail[i] for i in (0, 2, 3, 6)]
        assert event_ids(audit_client, merchant_id="mer_other") == []
        assert event_ids(audit_client, object_id="tok_2") == []
        # Another merchant's event id is not a cursor here: nothing to tell it from an unknown id.
        response = audit_client.get("/v1/audit/events", params={"starting_after": trail[4]})
        assert response.status_code == 422
        assert event_ids(audit_client, starting_after=trail[2]) == [trail[3], trail[6]]


class TestVerify:
    def test_verify_reports_a_whole_chain_then_the_first_break(self, audit_client, engine, backend, trail):
        body = audit_client.get("/v1/audit/verify").json()
        assert body["ok"] is True and body["events_checked"] == 7 and body["first_failure"] is None
        assert body["chain_head"]["seq"] == 7
        with behind_the_applications_back(engine, backend) as connection:
            connection.execute(text("UPDATE audit_events SET actor_id = 'usr_innocent' WHERE seq = 5"))
        body = audit_client.get("/v1/audit/verify").json()
        assert body["ok"] is False and body["events_checked"] == 7
        assert body["first_failure"]["seq"] == 5 and body["first_failure"]["check"] == "hash_mismatch"
        assert body["first_failure"]["event_id"] == trail[4]


class TestThroughThePlatformApp:
    """The same routes in the platform app, once app.py mounts them (and, after the
    identity work lands, with the ``client`` fixture signed by a platform key)."""

    def test_verify_and_list_through_the_platform_app(self, app, client, engine):
        if "/v1/audit/verify" not in app.openapi()["paths"]:
            pytest.skip("app.py does not include the audit router yet")
        record(engine, ADMIN, "merchant.create", "merchant", "mer_shop")
        response = client.get("/v1/audit/verify")
        if response.status_code == 401:
            pytest.skip("the client fixture is not signed yet (identity work not landed)")
        assert response.status_code == 200, response.text
        assert response.json()["ok"] is True
        response = client.get("/v1/audit/events", params={"object_id": "mer_shop"})
        assert response.status_code == 200, response.text
        assert [e["action"] for e in response.json()["data"]][:1] == ["merchant.create"]
