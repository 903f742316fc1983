"""Routing rules and channel health over HTTP on both databases: CRUD, tenancy, validation
codes, the audit trail, and what GET /v1/channels shows of the router."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, select

from clearhouse.audit.models import AuditEvent
from clearhouse.channels.endpoints import router as routing_router
from clearhouse.channels.routing import Router
from clearhouse.kit import clock
from tests.channels.test_routing import NOON, fake_registry  # noqa: F401  (the fixture)
from tests.conftest import make_key

MISSING_RULE = "rr_00000000000000000000000000"


@pytest.fixture
def app(app, fake_registry):  # noqa: F811
    """The app with the routing endpoints and a router, until app.py wires them itself."""
    if not any(getattr(route, "path", None) == "/v1/routing/rules" for route in app.routes):
        app.include_router(routing_router)
    if getattr(app.state, "router", None) is None:
        app.state.router = Router(app.state.channels)
    return app


def rule_body(**fields: Any) -> dict[str, Any]:
    return {"channels": ["fake_card_b", "fake_card_a"], **fields}


def audit_actions(engine: Engine, rule_id: str) -> list[str]:
    events = AuditEvent.__table__
    with engine.connect() as connection:
        return list(connection.execute(
            select(events.c.action).where(events.c.object_id == rule_id).order_by(events.c.seq)).scalars())


class TestPlatformRules:
    def test_create_read_change_delete_each_audited(self, client, engine, platform_key):
        created = client.post("/v1/routing/rules", json=rule_body(priority=5, method="card", currency="CNY",
                                                                   min_amount=100, max_amount=50_000, country="CN",
                                                                   card_bin_prefix="62", strategy="ordered"))
        assert created.status_code == 201, created.text
        rule = created.json()
        assert rule["id"].startswith("rr_")
        assert {k: rule[k] for k in ("merchant_id", "scope", "priority", "method", "currency", "min_amount",
                                     "max_amount", "country", "card_bin_prefix", "channels", "strategy",
                                     "enabled", "created_by")} == {
            "merchant_id": None, "scope": "platform", "priority": 5, "method": "card", "currency": "CNY",
            "min_amount": 100, "max_amount": 50_000, "country": "CN", "card_bin_prefix": "62",
            "channels": ["fake_card_b", "fake_card_a"], "strategy": "ordered", "enabled": True,
            "created_by": platform_key.key_id}
        assert client.get(f"/v1/routing/rules/{rule['id']}").json() == rule

        changed = client.patch(f"/v1/routing/rules/{rule['id']}",
                               json={"currency": None, "channels": ["fake_card_a"], "enabled": False})
        assert changed.status_code == 200, changed.text
        after = changed.json()
        assert (after["currency"], after["channels"], after["enabled"], after["priority"]) == (
            None, ["fake_card_a"], False, 5)
        assert after["updated_at"] >= rule["updated_at"]
        listed = client.get("/v1/routing/rules").json()
        assert [r["id"] for r in listed["data"]] == [rule["id"]]

        assert client.delete(f"/v1/routing/rules/{rule['id']}").status_code == 204
        gone = client.get(f"/v1/routing/rules/{rule['id']}")
        assert (gone.status_code, gone.json()["code"]) == (404, "routing_rule_not_found")
        assert audit_actions(engine, rule["id"]) == [
            "routing.rule.create", "routing.rule.update", "routing.rule.delete"]

    def test_a_patch_that_changes_nothing_writes_no_event(self, client, engine):
        rule = client.post("/v1/routing/rules", json=rule_body()).json()
        again = client.patch(f"/v1/routing/rules/{rule['id']}", json={"priority": rule["priority"]})
        assert again.status_code == 200
        assert audit_actions(engine, rule["id"]) == ["routing.rule.create"]

    def test_the_platform_writes_a_merchants_rule_and_lists_by_owner(self, app, client, merchant_client_factory):
        shop, shop_id = merchant_client_factory("Shop A")
        for_shop = client.post("/v1/routing/rules", json=rule_body(merchant_id=shop_id))
        assert for_shop.status_code == 201, for_shop.text
        assert for_shop.json()["scope"] == "merchant"
        platform_wide = client.post("/v1/routing/rules", json=rule_body()).json()
        assert [r["id"] for r in client.get(f"/v1/routing/rules?merchant_id={shop_id}").json()["data"]] == [
            for_shop.json()["id"]]
        assert [r["id"] for r in client.get("/v1/routing/rules?scope=platform").json()["data"]] == [
            platform_wide["id"]]
        # The platform's rule for a merchant routes its live payments: the merchant's live key sees
        # it, its test key does not (identity.md, "Test and live").
        assert for_shop.json()["livemode"] is True and platform_wide["livemode"] is None
        live = make_key(app, merchant_id=shop_id, mode="live")
        assert client.get(f"/v1/routing/rules/{for_shop.json()['id']}", auth=live.auth).status_code == 200
        assert shop.get(f"/v1/routing/rules/{for_shop.json()['id']}").status_code == 404

    def test_a_rule_for_a_merchant_that_does_not_exist_is_404(self, client):
        response = client.post("/v1/routing/rules", json=rule_body(merchant_id="mch_00000000000000000000000000"))
        assert (response.status_code, response.json()["code"]) == (404, "not_found")

    def test_lists_page_by_id(self, client):
        ids = [client.post("/v1/routing/rules", json=rule_body(priority=p)).json()["id"] for p in range(3)]
        first = client.get("/v1/routing/rules?limit=2").json()
        assert ([r["id"] for r in first["data"]], first["has_more"], first["next_cursor"]) == (ids[:2], True, ids[1])
        rest = client.get(f"/v1/routing/rules?limit=2&starting_after={ids[1]}").json()
        assert ([r["id"] for r in rest["data"]], rest["has_more"]) == (ids[2:], False)


class TestTenancy:
    def test_merchants_write_their_own_and_only_read_the_platforms(self, client, merchant_client_factory, engine):
        shop_a, a_id = merchant_client_factory("Shop A")
        shop_b, b_id = merchant_client_factory("Shop B")
        platform_rule = client.post("/v1/routing/rules", json=rule_body()).json()
        own = shop_a.post("/v1/routing/rules", json=rule_body(priority=1))
        assert own.status_code == 201, own.text
        a_rule = own.json()
        assert (a_rule["merchant_id"], a_rule["scope"]) == (a_id, "merchant")
        assert audit_actions(engine, a_rule["id"]) == ["routing.rule.create"]

        # A sees its own and the platform's; B sees only the platform's.
        assert {r["id"] for r in shop_a.get("/v1/routing/rules").json()["data"]} == {a_rule["id"],
                                                                                    platform_rule["id"]}
        assert [r["id"] for r in shop_b.get("/v1/routing/rules").json()["data"]] == [platform_rule["id"]]
        # A merchant's filter cannot widen what it sees.
        assert shop_b.get(f"/v1/routing/rules?merchant_id={a_id}").json()["data"] == []

        # Another merchant's rule does not exist for B: every verb is a 404.
        for method in ("GET", "PATCH", "DELETE"):
            response = shop_b.request(method, f"/v1/routing/rules/{a_rule['id']}",
                                      json={"priority": 2} if method == "PATCH" else None)
            assert (response.status_code, response.json()["code"]) == (404, "routing_rule_not_found"), method
            missing = shop_b.request(method, f"/v1/routing/rules/{MISSING_RULE}",
                                     json={"priority": 2} if method == "PATCH" else None)
            assert missing.json() == {**response.json(), "detail": missing.json()["detail"]}

        # Writing for another merchant is a 404 for that merchant, as if it did not exist.
        other = shop_b.post("/v1/routing/rules", json=rule_body(merchant_id=a_id))
        assert (other.status_code, other.json()["code"]) == (404, "not_found")

        # The platform's rule is visible to A, and read-only.
        assert shop_a.get(f"/v1/routing/rules/{platform_rule['id']}").status_code == 200
        for method in ("PATCH", "DELETE"):
            response = shop_a.request(method, f"/v1/routing/rules/{platform_rule['id']}",
                                      json={"enabled": False} if method == "PATCH" else None)
            assert (response.status_code, response.json()["code"]) == (403, "platform_rule_read_only"), method
        assert client.get(f"/v1/routing/rules/{platform_rule['id']}").json()["enabled"] is True

        assert shop_a.patch(f"/v1/routing/rules/{a_rule['id']}", json={"priority": 7}).json()["priority"] == 7
        assert shop_a.delete(f"/v1/routing/rules/{a_rule['id']}").status_code == 204

    def test_a_merchant_viewer_reads_but_does_not_write(self, app, user_client_factory, merchant_client_factory):
        _shop, shop_id = merchant_client_factory("Shop A")
        viewer = user_client_factory("merchant_viewer", shop_id)
        assert viewer.get("/v1/routing/rules").status_code == 200
        refused = viewer.post("/v1/routing/rules", json=rule_body())
        assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")


class TestValidation:
    @pytest.mark.parametrize(("fields", "code"), [
        ({"channels": ["no_such_channel"]}, "unknown_rule_channel"),
        ({"channels": ["fake_card_a", "fake_card_a"]}, "duplicate_rule_channel"),
        ({"method": "card", "channels": ["fake_card_a", "fake_qr"]}, "rule_channel_unsupported"),
        ({"currency": "EUR", "channels": ["fake_card_b"]}, "rule_channel_unsupported"),
        ({"currency": "usd"}, "unknown_currency"),
        ({"currency": "XAU"}, "unknown_currency"),
        ({"currency": "ABC"}, "unknown_currency"),
        ({"min_amount": 1001, "max_amount": 1000}, "invalid_amount_range"),
        ({"card_bin_prefix": "42a"}, "invalid_card_bin_prefix"),
        ({"card_bin_prefix": "123456789"}, "invalid_card_bin_prefix"),
        ({"country": "cn"}, "invalid_country"),
        ({"country": "CHN"}, "invalid_country"),
        ({"country": "ZZ"}, "invalid_country"),  # user-assigned, no country
        ({"country": "XK"}, "invalid_country"),  # not in ISO 3166-1
        ({"method": "paypal"}, "validation_error"),
        ({"channels": []}, "validation_error"),
        ({"channels": ["fake card"]}, "validation_error"),
        ({"min_amount": -1}, "validation_error"),
        ({"min_amount": "100"}, "validation_error"),
        ({"priority": None}, "validation_error"),
        ({"strategy": "random"}, "validation_error"),
        ({"merchant": "typo"}, "validation_error"),
    ])
    def test_a_broken_rule_is_422_with_its_code(self, client, fields, code):
        response = client.post("/v1/routing/rules", json=rule_body(**fields))
        assert (response.status_code, response.json()["code"]) == (422, code), response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert client.get("/v1/routing/rules").json()["data"] == []

    @pytest.mark.parametrize(("changes", "code"), [
        ({"min_amount": 20_000}, "invalid_amount_range"),  # against the stored max_amount
        ({"channels": ["fake_qr"]}, "rule_channel_unsupported"),  # against the stored method
        ({"priority": None}, "validation_error"),
        ({"channels": None}, "validation_error"),
        ({"merchant_id": None}, "validation_error"),  # the owner never changes
    ])
    def test_a_change_is_checked_against_the_whole_rule(self, client, changes, code):
        rule = client.post("/v1/routing/rules", json=rule_body(method="card", max_amount=10_000)).json()
        response = client.patch(f"/v1/routing/rules/{rule['id']}", json=changes)
        assert (response.status_code, response.json()["code"]) == (422, code), response.text
        assert client.get(f"/v1/routing/rules/{rule['id']}").json() == rule


class TestChannels:
    def test_every_registered_channel_with_its_terms_and_health(self, client, app):
        router = app.state.router
        with clock.frozen(NOON):
            for _ in range(3):
                router.record("fake_card_a", "success", 100)
            router.record("fake_card_a", "decline", 200)
            for _ in range(5):
                router.record("fake_card_b", "failure", 10_000)
            listed = client.get("/v1/channels")
        assert listed.status_code == 200, listed.text
        by_name = {c["name"]: c for c in listed.json()["data"]}
        assert sorted(by_name) == ["fake_card_a", "fake_card_b", "fake_qr", "wallet"]
        card_a = by_name["fake_card_a"]
        assert (card_a["methods"], card_a["currencies"]) == (["card"], None)
        assert card_a["cost"] == {"rate": "0.02", "fixed": 0, "returned_on_refund": False}
        assert (card_a["outcomes"], card_a["success_rate"], card_a["mean_latency_ms"]) == (4, 0.75, 125.0)
        assert card_a["breaker"]["state"] == "closed"
        card_b = by_name["fake_card_b"]
        assert card_b["currencies"] == ["CNY", "USD"]
        assert card_b["breaker"] == {"state": "open", "opened_until": "2026-11-23T12:00:30.000000Z",
                                     "opened_because": "5 failures in a row", "consecutive_failures": 5,
                                     "cooldown_seconds": 30.0}
        assert by_name["fake_qr"]["success_rate"] is None
        one = client.get("/v1/channels/fake_qr")
        assert one.json() == {**by_name["fake_qr"], "breaker": one.json()["breaker"]}
        missing = client.get("/v1/channels/no_such_channel")
        assert (missing.status_code, missing.json()["code"]) == (404, "unknown_channel")

    def test_a_merchant_key_reads_channel_health(self, merchant_client_factory):
        shop, _ = merchant_client_factory("Shop A")
        assert shop.get("/v1/channels").status_code == 200


class TestPreview:
    def test_preview_explains_the_route_a_payment_would_get(self, client, merchant_client_factory):
        shop, shop_id = merchant_client_factory("Shop A")
        rule = shop.post("/v1/routing/rules", json=rule_body(currency="USD", channels=["fake_card_a"])).json()
        payment = {"method": "card", "currency": "USD", "amount": 10_000, "card_bin": "424242"}
        mine = shop.post("/v1/routing/preview", json=payment)
        assert mine.status_code == 200, mine.text
        body = mine.json()
        assert (body["rule_id"], [c["channel"] for c in body["candidates"]]) == (rule["id"], ["fake_card_a"])
        assert body["candidates"][0]["reason"].startswith(f"rule {rule['id']} matched; score 0.8790 = success 0.900")
        # The platform previewing for no merchant sees the default route.
        default = client.post("/v1/routing/preview", json={**payment, "currency": "EUR"}).json()
        assert default["rule_id"] is None
        assert [c["channel"] for c in default["candidates"]] == ["fake_card_a"]
        assert default["skipped"] == [{"channel": "fake_card_b", "reason": "currency EUR not supported",
                                       "transient": False}]
        # The shop's test key wrote a test-mode rule: it routes the shop's test payments, not its live ones.
        assert client.post("/v1/routing/preview", json={**payment, "merchant_id": shop_id, "livemode": False}
                           ).json()["rule_id"] == rule["id"]
        assert client.post("/v1/routing/preview", json={**payment, "merchant_id": shop_id}).json()["rule_id"] is None
        refused = shop.post("/v1/routing/preview", json={**payment, "livemode": True})
        assert (refused.status_code, refused.json()["errors"][0]["type"]) == (422, "mode_not_allowed")

    def test_a_card_number_is_refused_as_a_bin(self, client):
        response = client.post("/v1/routing/preview", json={"method": "card", "currency": "USD", "amount": 1,
                                                              "card_bin": "4242424242424242"})
        assert (response.status_code, response.json()["code"]) == (422, "validation_error")
        assert "4242424242424242" not in response.text
