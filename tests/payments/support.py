"""Helpers for payments tests: cards, bodies, and the ledger check every test ends with."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from clearhouse.channels.connectors import sandbox
from clearhouse.channels.connectors.sandbox_card import CARD_APPROVED, sandbox_card
from clearhouse.kit import clock
from clearhouse.kit.db import transact
from clearhouse.ledger.verify import verify

APPROVED_CARD = CARD_APPROVED


def card_body(amount: int = 10000, currency: str = "CNY", number: str = APPROVED_CARD, **extra: Any) -> dict:
    body = {"amount": amount, "currency": currency, "method": "card",
            "payment_details": {"card": sandbox_card(number)}}
    body.update(extra)
    return body


def ledger_verifies(app: Any) -> None:
    report = transact(app.state.engine, verify)
    assert report.ok, report


def balances(app: Any, merchant_id: str, currency: str = "CNY", channel: str = "sandbox_card") -> dict[str, int]:
    """The posted balances of the accounts a payment touches, by accounting.md's names."""
    from clearhouse.ledger import service as ledger
    from clearhouse.ledger.chart import account_id

    names = {
        "clearing": f"channel_clearing:{channel}", "cost": f"channel_cost:{channel}",
        "merchant": f"merchant_pending:{merchant_id}", "fees": "fee_revenue",
    }

    def read(session: Any) -> dict[str, int]:
        out = {}
        for key, name in names.items():
            try:
                _row, balance = ledger.account_balance(session, account_id(name, currency))
                out[key] = balance.posted
            except Exception:  # noqa: BLE001 - an account never opened holds nothing
                out[key] = 0
        return out

    return transact(app.state.engine, read)


def set_plan(client: Any, merchant_id: str, rules: list[dict[str, Any]]) -> None:
    """Give the merchant this fee plan (``PUT /v1/fee_plans/{merchant_id}``, a platform client)."""
    response = client.put(f"/v1/fee_plans/{merchant_id}", json={"rules": rules})
    assert response.status_code == 200, response.text


SHOP_HOOK = "https://shop.example.com/hooks/clearhouse"
"""A public endpoint: events are queued for it, and nothing in the tests ever sends them."""


def add_endpoint(shop: Any, event_types: list[str], url: str = SHOP_HOOK) -> str:
    response = shop.post("/v1/webhook_endpoints", json={"url": url, "event_types": event_types})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def events_of(shop: Any, event_type: str) -> list[dict[str, Any]]:
    response = shop.get("/v1/events", params={"type": event_type, "limit": 500})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def deliveries_of(shop: Any, endpoint_id: str) -> list[dict[str, Any]]:
    """The endpoint's delivery log, each delivery with its attempts."""
    response = shop.get(f"/v1/webhook_endpoints/{endpoint_id}/deliveries", params={"limit": 500})
    assert response.status_code == 200, response.text
    return response.json()["data"]


CUSTOMER_METHODS = {"sandbox_alipay": "alipay", "sandbox_wechat": "wechat_pay", "sandbox_bank": "bank_transfer"}
"""The method of each channel whose customer pays outside our API (a QR code, a bank transfer)."""


def deliver_notifications(app: Any, client: Any) -> None:
    """Every notification the sandboxes owe us (within the next hour), sent to our notification endpoint."""
    def send(path: str, headers: dict[str, str], body: bytes) -> int:
        return client.post(path, content=body, headers=headers).status_code

    with clock.frozen(clock.now() + timedelta(hours=1)):
        for _ in range(3):
            sandbox.deliver_due(app.state.settings, send)


def paid_by_customer(app: Any, shop: Any, client: Any, channel: str, amount: int) -> dict[str, Any]:
    """A CNY QR or bank payment the customer paid at the sandbox, its notification applied."""
    created = shop.post("/v1/payments", json={"amount": amount, "currency": "CNY",
                                              "method": CUSTOMER_METHODS[channel]})
    assert created.status_code == 201, created.text
    app.state.channels[channel].pay(created.json()["attempts"][0]["id"])
    deliver_notifications(app, client)
    view = shop.get(f"/v1/payments/{created.json()['id']}").json()
    assert view["status"] == "succeeded", view
    return view
