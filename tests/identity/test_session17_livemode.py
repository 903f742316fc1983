"""Test and live (identity.md): a merchant's test key, made without approval, reaches none of
what its live key made, and the other way round; platform callers see both. Everything here
goes through signed HTTP, as a merchant's servers would send it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.conftest import make_key, make_merchant
from tests.payments.orders.support import make_product, order_body
from tests.payments.support import add_endpoint, card_body, deliveries_of


class Shop:
    """One merchant with a test key and a live key."""

    def __init__(self, app: Any):
        test = make_merchant(app, "Two Modes")
        live = make_key(app, merchant_id=test.merchant_id, mode="live")
        self.merchant_id = test.merchant_id
        self.test = TestClient(app, raise_server_exceptions=False)
        self.test.auth = test.auth
        self.live = TestClient(app, raise_server_exceptions=False)
        self.live.auth = live.auth

    def close(self) -> None:
        self.test.close()
        self.live.close()


@pytest.fixture
def shop(app) -> Iterator[Shop]:
    made = Shop(app)
    yield made
    made.close()


def created(response: Any) -> dict[str, Any]:
    assert response.status_code in (200, 201), response.text
    return response.json()


def not_found(response: Any) -> None:
    assert response.status_code == 404, response.text


class TestPayments:
    def test_a_test_key_neither_sees_nor_refunds_nor_captures_a_live_payment(self, shop: Shop, client):
        live = created(shop.live.post("/v1/payments", json=card_body(7000)))
        held = created(shop.live.post("/v1/payments", json=card_body(3000, capture_method="manual")))
        test = created(shop.test.post("/v1/payments", json=card_body(5000)))
        assert (live["livemode"], held["livemode"], test["livemode"]) == (True, True, False)

        not_found(shop.test.get(f"/v1/payments/{live['id']}"))
        not_found(shop.test.post(f"/v1/payments/{live['id']}/refunds", json={"amount": 100}))
        not_found(shop.test.post(f"/v1/payments/{held['id']}/capture", json={}))
        not_found(shop.test.post(f"/v1/payments/{held['id']}/cancel", json={}))
        not_found(shop.live.get(f"/v1/payments/{test['id']}"))
        assert [p["id"] for p in shop.test.get("/v1/payments").json()["data"]] == [test["id"]]
        assert {p["id"] for p in shop.live.get("/v1/payments").json()["data"]} == {live["id"], held["id"]}
        # Another mode's id as a cursor is as unknown as a made-up one: an empty page.
        assert shop.test.get("/v1/payments", params={"starting_after": live["id"]}).json()["data"] == []

        # Nothing moved: the live payments are as they were.
        assert client.get(f"/v1/payments/{live['id']}").json()["amount_refunded"] == 0
        assert client.get(f"/v1/payments/{held['id']}").json()["status"] == "requires_capture"
        # The platform sees both, each saying which it is.
        modes = {p["id"]: p["livemode"] for p in client.get(
            "/v1/payments", params={"merchant_id": shop.merchant_id}).json()["data"]}
        assert modes == {live["id"]: True, held["id"]: True, test["id"]: False}

    def test_a_refund_takes_its_payments_mode(self, shop: Shop):
        test = created(shop.test.post("/v1/payments", json=card_body(5000)))
        refund = created(shop.test.post(f"/v1/payments/{test['id']}/refunds", json={"amount": 1000}))
        assert refund["livemode"] is False
        assert shop.test.get(f"/v1/refunds/{refund['id']}").status_code == 200
        not_found(shop.live.get(f"/v1/refunds/{refund['id']}"))


class TestVault:
    def test_a_test_payment_cannot_charge_a_card_vaulted_live(self, shop: Shop, client):
        card = created(shop.live.post("/v1/vault/cards", json=card_body()["payment_details"]["card"]))
        assert card["livemode"] is True
        not_found(shop.test.get(f"/v1/vault/cards/{card['id']}"))
        assert shop.test.get("/v1/vault/cards").json()["data"] == []
        body = {"amount": 5000, "currency": "CNY", "method": "card",
                "payment_details": {"card": {"card_id": card["id"]}}}
        refused = shop.test.post("/v1/payments", json=body)
        assert (refused.status_code, refused.json()["code"]) == (404, "card_not_found")
        assert client.get("/v1/payments", params={"merchant_id": shop.merchant_id}).json()["data"] == []
        # The live key pays with it.
        assert created(shop.live.post("/v1/payments", json=body))["status"] == "succeeded"

    def test_bank_accounts_are_kept_apart(self, shop: Shop):
        account = created(shop.test.post("/v1/vault/bank_accounts", json={
            "iban": "DE89370400440532013000", "holder_name": "M", "country": "DE"}))
        assert account["livemode"] is False
        not_found(shop.live.get(f"/v1/vault/bank_accounts/{account['id']}"))
        assert shop.live.get("/v1/vault/bank_accounts").json()["data"] == []


class TestWallets:
    def test_one_customer_has_a_test_and_a_live_wallet_and_test_payments_draw_on_the_test_one(self, shop: Shop):
        live = created(shop.live.post("/v1/wallets", json={"customer_id": "cus_1", "currency": "CNY"}))
        created(shop.live.post(f"/v1/wallets/{live['id']}/top_ups", json={
            "amount": 10000, "method": "card", "payment_details": card_body()["payment_details"]}))
        test = created(shop.test.post("/v1/wallets", json={"customer_id": "cus_1", "currency": "CNY"}))
        assert test["id"] != live["id"] and (test["livemode"], test["balance"]) == (False, 0)
        not_found(shop.test.get(f"/v1/wallets/{live['id']}"))
        not_found(shop.test.post(f"/v1/wallets/{live['id']}/top_ups", json={
            "amount": 100, "method": "card", "payment_details": card_body()["payment_details"]}))

        spend = {"amount": 5000, "currency": "CNY", "method": "wallet", "customer": {"id": "cus_1"}}
        refused = shop.test.post("/v1/payments", json=spend)
        assert refused.status_code == 201, refused.text  # a decline, drawn on the empty test wallet
        assert (refused.json()["status"], refused.json()["failure_code"], refused.json()["wallet_id"]) == (
            "failed", "insufficient_funds", test["id"])
        assert shop.live.get(f"/v1/wallets/{live['id']}").json()["balance"] == 10000
        assert created(shop.live.post("/v1/payments", json=spend))["status"] == "succeeded"
        assert shop.live.get(f"/v1/wallets/{live['id']}").json()["balance"] == 5000


class TestOrders:
    def test_a_test_key_cannot_sell_a_live_products_codes(self, shop: Shop):
        product = make_product(shop.live, ["LIVE-1", "LIVE-2"])
        assert product["livemode"] is True
        not_found(shop.test.get(f"/v1/products/{product['id']}"))
        assert shop.test.get("/v1/products").json()["data"] == []
        refused = shop.test.post("/v1/orders", json=order_body(product["id"]))
        assert refused.status_code == 404, refused.text
        assert shop.live.get(f"/v1/products/{product['id']}").json()["stock"]["available"] == 2

    def test_an_order_and_its_payment_take_the_products_mode(self, shop: Shop):
        product = make_product(shop.test, ["TEST-1"])
        order = created(shop.test.post("/v1/orders", json=order_body(product["id"])))
        assert (order["livemode"], order["status"]) == (False, "delivered")
        assert shop.test.get(f"/v1/payments/{order['payment_id']}").json()["livemode"] is False
        not_found(shop.live.get(f"/v1/orders/{order['id']}"))
        not_found(shop.live.get(f"/v1/payments/{order['payment_id']}"))


class TestWebhooks:
    def test_an_endpoint_made_with_a_test_key_never_receives_a_live_event(self, shop: Shop):
        test_hook = add_endpoint(shop.test, ["*"])
        live_hook = add_endpoint(shop.live, ["*"])
        live = created(shop.live.post("/v1/payments", json=card_body(7000)))
        test = created(shop.test.post("/v1/payments", json=card_body(5000)))

        def events(caller: TestClient) -> list[dict[str, Any]]:
            return caller.get("/v1/events", params={"limit": 100}).json()["data"]

        live_events, test_events = events(shop.live), events(shop.test)
        assert {e["data"]["id"] for e in live_events} == {live["id"]}
        assert {e["data"]["id"] for e in test_events} == {test["id"]}
        assert {e["livemode"] for e in live_events} == {True} and {e["livemode"] for e in test_events} == {False}
        assert {d["event_id"] for d in deliveries_of(shop.test, test_hook)} == {e["id"] for e in test_events}
        assert {d["event_id"] for d in deliveries_of(shop.live, live_hook)} == {e["id"] for e in live_events}

        # Nor by asking: another mode's event, endpoint or delivery log is not there.
        not_found(shop.test.get(f"/v1/events/{live_events[0]['id']}"))
        not_found(shop.test.get(f"/v1/webhook_endpoints/{live_hook}"))
        not_found(shop.test.get(f"/v1/webhook_endpoints/{live_hook}/deliveries"))
        not_found(shop.test.post(f"/v1/events/{live_events[0]['id']}/redeliver", json={}))
        assert [e["id"] for e in shop.test.get("/v1/webhook_endpoints").json()["data"]] == [test_hook]

    def test_the_platform_cannot_redeliver_a_live_event_to_a_test_endpoint(self, shop: Shop, client):
        test_hook = add_endpoint(shop.test, ["*"])
        created(shop.live.post("/v1/payments", json=card_body(7000)))
        event = shop.live.get("/v1/events").json()["data"][0]
        refused = client.post(f"/v1/events/{event['id']}/redeliver", json={"endpoint_id": test_hook})
        assert refused.status_code == 404, refused.text
        assert deliveries_of(shop.test, test_hook) == []


class TestRouting:
    def test_a_test_keys_rule_never_routes_a_live_payment(self, shop: Shop):
        rule = created(shop.test.post("/v1/routing/rules", json={
            "priority": 1, "channels": ["sandbox_card"], "method": "card", "strategy": "ordered"}))
        assert rule["livemode"] is False
        payment = {"method": "card", "currency": "CNY", "amount": 5000}
        assert shop.test.post("/v1/routing/preview", json=payment).json()["rule_id"] == rule["id"]
        assert shop.live.post("/v1/routing/preview", json=payment).json()["rule_id"] is None
        not_found(shop.live.get(f"/v1/routing/rules/{rule['id']}"))
        not_found(shop.live.patch(f"/v1/routing/rules/{rule['id']}", json={"enabled": False}))
        not_found(shop.live.delete(f"/v1/routing/rules/{rule['id']}"))
        assert shop.live.get("/v1/routing/rules").json()["data"] == []

        def rule_used(caller: TestClient) -> str | None:
            paid = created(caller.post("/v1/payments", json=card_body(5000)))
            timeline = caller.get(f"/v1/payments/{paid['id']}").json()["timeline"]
            return next(e["detail"]["rule"] for e in timeline if e["type"] == "created")

        assert (rule_used(shop.test), rule_used(shop.live)) == (rule["id"], None)


def test_a_test_key_shares_no_idempotency_key_with_the_live_integration(shop: Shop):
    headers = {"Idempotency-Key": "order-42"}
    live = shop.live.post("/v1/payments", json=card_body(7000), headers=headers)
    assert live.status_code == 201, live.text
    test = shop.test.post("/v1/payments", json=card_body(7000), headers=headers)
    assert test.status_code == 201, test.text  # not 409 idempotency_key_reused: it learns nothing
    assert test.json()["id"] != live.json()["id"] and test.json()["livemode"] is False
    again = shop.live.post("/v1/payments", json=card_body(7000), headers=headers)
    assert (again.json()["id"], again.headers.get("Idempotent-Replayed")) == (live.json()["id"], "true")


class TestTheMigration:
    """Rows made before migration 0016 take the mode of the key that made them (found again here by
    taking the schema back to 0015, which forgets every mode, and forward again)."""

    def test_what_a_test_key_made_before_it_stays_test(self, app, shop: Shop):
        from alembic import command

        from clearhouse.kit.db import alembic_config, upgrade

        hook = add_endpoint(shop.test, ["*"])
        rule = created(shop.test.post("/v1/routing/rules", json={"priority": 1, "channels": ["sandbox_card"]}))
        product = make_product(shop.test, ["TEST-1"])
        order = created(shop.test.post("/v1/orders", json=order_body(product["id"])))
        paid = created(shop.test.post("/v1/payments", json=card_body(5000)))
        refund = created(shop.test.post(f"/v1/payments/{paid['id']}/refunds", json={"amount": 100}))
        wallet = created(shop.test.post("/v1/wallets", json={"customer_id": "cus_9", "currency": "CNY"}))
        created(shop.test.post(f"/v1/wallets/{wallet['id']}/top_ups", json={
            "amount": 100, "method": "card", "payment_details": card_body()["payment_details"]}))
        live_hook = add_endpoint(shop.live, ["*"])
        live = created(shop.live.post("/v1/payments", json=card_body(7000)))

        url = app.state.engine.url.render_as_string(hide_password=False)
        app.state.engine.dispose()
        command.downgrade(alembic_config(url), "0015_statement_identity")
        upgrade(url)

        assert shop.test.get(f"/v1/webhook_endpoints/{hook}").json()["livemode"] is False
        not_found(shop.live.get(f"/v1/webhook_endpoints/{hook}"))  # it receives no live event
        assert shop.live.get(f"/v1/webhook_endpoints/{live_hook}").json()["livemode"] is True
        assert shop.test.get(f"/v1/routing/rules/{rule['id']}").json()["livemode"] is False
        for path in (f"/v1/products/{product['id']}", f"/v1/orders/{order['id']}", f"/v1/payments/{paid['id']}",
                     f"/v1/refunds/{refund['id']}", f"/v1/wallets/{wallet['id']}",
                     f"/v1/vault/cards/{paid['card_id']}"):
            answer = shop.test.get(path)
            assert (answer.status_code, answer.json().get("livemode")) == (200, False), path
        assert shop.live.get(f"/v1/payments/{live['id']}").json()["livemode"] is True
        assert {e["livemode"] for e in shop.test.get("/v1/events").json()["data"]} == {False}

    def test_the_way_back_refuses_while_a_customer_has_a_wallet_of_each_mode(self, app, shop: Shop):
        from alembic import command

        from clearhouse.kit.db import alembic_config, current_revision, head_revision

        for caller in (shop.test, shop.live):
            created(caller.post("/v1/wallets", json={"customer_id": "cus_both", "currency": "CNY"}))
        url = app.state.engine.url.render_as_string(hide_password=False)
        app.state.engine.dispose()
        with pytest.raises(RuntimeError, match="has a test and a live CNY wallet"):
            command.downgrade(alembic_config(url), "0015_statement_identity")
        # Nothing of 0016 was undone (later revisions may have been: PostgreSQL rolls the whole way back, SQLite
        # keeps the steps it finished).
        assert current_revision(app.state.engine) in ("0016_livemode", head_revision())

    def test_a_card_or_wallet_a_test_key_used_before_it_stays_with_the_mode_that_made_it(self, app, shop: Shop,
                                                                                         client):
        """Before 0016 a test key could charge a live card and spend a live wallet (made here by moving a test
        payment's card and wallet onto them); afterwards the card and the wallet are still live, and the order
        a platform key made of a test product has a test payment."""
        from alembic import command
        from sqlalchemy import update

        from clearhouse.kit.db import alembic_config, upgrade
        from clearhouse.payments.models import Payment

        card = created(shop.live.post("/v1/vault/cards", json=card_body()["payment_details"]["card"]))
        wallet = created(shop.live.post("/v1/wallets", json={"customer_id": "cus_l", "currency": "CNY"}))
        created(shop.live.post(f"/v1/wallets/{wallet['id']}/top_ups", json={
            "amount": 10000, "method": "card", "payment_details": card_body()["payment_details"]}))
        charged = created(shop.test.post("/v1/payments", json=card_body(300)))
        with app.state.engine.begin() as connection:
            connection.execute(update(Payment).where(Payment.id == charged["id"]).values(
                card_id=card["id"], wallet_id=wallet["id"]))
        product = make_product(shop.test, ["TEST-1"])
        order = created(client.post("/v1/orders", json=order_body(product["id"])))

        url = app.state.engine.url.render_as_string(hide_password=False)
        app.state.engine.dispose()
        command.downgrade(alembic_config(url), "0015_statement_identity")
        upgrade(url)

        assert shop.live.get(f"/v1/vault/cards/{card['id']}").json()["livemode"] is True
        assert shop.live.get(f"/v1/wallets/{wallet['id']}").json()["balance"] == 10000
        not_found(shop.test.get(f"/v1/vault/cards/{card['id']}"))
        not_found(shop.test.get(f"/v1/wallets/{wallet['id']}"))
        body = {"amount": 300, "currency": "CNY", "method": "card",
                "payment_details": {"card": {"card_id": card["id"]}}}
        assert created(shop.live.post("/v1/payments", json=body))["status"] == "succeeded"
        assert shop.test.get(f"/v1/orders/{order['id']}").json()["livemode"] is False
        assert shop.test.get(f"/v1/payments/{order['payment_id']}").json()["livemode"] is False


def test_a_test_keys_failing_traffic_does_not_open_the_circuit_live_payments_use(shop: Shop):
    from clearhouse.channels.connectors.sandbox_card import CARD_CHANNEL_ERROR

    for _ in range(6):
        shop.test.post("/v1/payments", json=card_body(5000, number=CARD_CHANNEL_ERROR))
    assert shop.test.get("/v1/channels/sandbox_card").json()["breaker"]["state"] == "open"
    live = created(shop.live.post("/v1/payments", json=card_body(7000)))
    assert (live["status"], live["channel"]) == ("succeeded", "sandbox_card")
    health = shop.live.get("/v1/channels/sandbox_card").json()
    assert (health["breaker"]["state"], health["outcomes"]) == ("closed", 1)


def test_platform_callers_list_one_mode_with_the_livemode_filter(shop: Shop, client):
    live = created(shop.live.post("/v1/payments", json=card_body(7000)))
    test = created(shop.test.post("/v1/payments", json=card_body(5000)))
    created(shop.live.post("/v1/wallets", json={"customer_id": "cus_f", "currency": "CNY"}))
    created(shop.test.post("/v1/wallets", json={"customer_id": "cus_f", "currency": "CNY"}))

    def ids(caller: TestClient, path: str, **params: Any) -> list[str]:
        answer = caller.get(path, params={"merchant_id": shop.merchant_id, **params})
        assert answer.status_code == 200, answer.text
        return [o["id"] for o in answer.json()["data"]]

    assert ids(client, "/v1/payments", livemode="true") == [live["id"]]
    assert ids(client, "/v1/payments", livemode="false") == [test["id"]]
    assert {w["livemode"] for w in client.get("/v1/wallets", params={"livemode": "false"}).json()["data"]} == {False}
    for path in ("/v1/payments", "/v1/wallets", "/v1/events", "/v1/webhook_endpoints", "/v1/vault/cards",
                 "/v1/vault/bank_accounts", "/v1/products", "/v1/orders", "/v1/routing/rules"):
        assert client.get(path, params={"livemode": "false"}).status_code == 200, path
        assert shop.test.get(path, params={"livemode": "true"}).json()["data"] == [], path  # never the other mode
    assert ids(shop.test, "/v1/payments", livemode="false") == [test["id"]]
    refused = client.get("/v1/payments", params={"livemode": "maybe"})
    assert (refused.status_code, refused.json()["code"]) == (422, "validation_error")
