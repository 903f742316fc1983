"""Helpers for card-code order tests: a product with codes, a card, what the database holds."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update

from clearhouse.channels.connectors.sandbox_card import CARD_DECLINED, sandbox_card
from clearhouse.kit.db import transact
from clearhouse.payments.orders.models import Order, OrderStep, ProductCode
from clearhouse.webhooks.models import WebhookEvent
from tests.payments.support import APPROVED_CARD

CARD = {"card": sandbox_card(APPROVED_CARD)}
DECLINED_CARD = {"card": sandbox_card(CARD_DECLINED)}


def make_product(client: Any, codes: list[str], *, amount: int = 5000, name: str = "Game key") -> dict[str, Any]:
    response = client.post("/v1/products", json={"name": name, "price": {"amount": amount, "currency": "CNY"}})
    assert response.status_code == 201, response.text
    product = response.json()
    if codes:
        uploaded = client.post(f"/v1/products/{product['id']}/codes", json={"codes": codes})
        assert uploaded.status_code == 201, uploaded.text
    return client.get(f"/v1/products/{product['id']}").json()


def order_body(product_id: str, quantity: int = 1, *, method: str = "card", details: dict | None = None,
               **extra: Any) -> dict[str, Any]:
    payment: dict[str, Any] = {"method": method}
    if method == "card":
        payment["payment_details"] = details or CARD
    body = {"product_id": product_id, "quantity": quantity, "customer": {"email": "buyer@example.com"},
            "payment": payment}
    body.update(extra)
    return body


def code_rows(app: Any, product_id: str) -> list[Any]:
    table = ProductCode.__table__
    return transact(app.state.engine, lambda s: s.execute(
        select(table).where(table.c.product_id == product_id).order_by(table.c.id)).all())


def order_row(app: Any, order_id: str) -> Any:
    table = Order.__table__
    return transact(app.state.engine, lambda s: s.execute(select(table).where(table.c.id == order_id)).one())


def step_count(app: Any, order_id: str, step: str, status: str) -> int:
    table = OrderStep.__table__
    return transact(app.state.engine, lambda s: s.execute(
        select(func.count()).select_from(table).where(table.c.order_id == order_id, table.c.step == step,
                                                      table.c.status == status)).scalar_one())


def events_of(app: Any, merchant_id: str, event_type: str) -> list[Any]:
    table = WebhookEvent.__table__
    return transact(app.state.engine, lambda s: s.execute(
        select(table).where(table.c.merchant_id == merchant_id, table.c.type == event_type)).all())


def undeliverable_order(app: Any, shop: Any, amount: int = 600) -> dict[str, Any]:
    """An order whose payment succeeds and whose code cannot be decrypted: it must refund itself."""
    product = make_product(shop, ["K-1", "K-2"], amount=amount)
    first, second = code_rows(app, product["id"])
    table = ProductCode.__table__

    def swap(session: Any) -> None:  # each ciphertext is bound to its row: swapped, neither decrypts
        session.execute(update(table).where(table.c.id == first.id).values(code_encrypted=second.code_encrypted))
        session.execute(update(table).where(table.c.id == second.id).values(code_encrypted=first.code_encrypted))

    transact(app.state.engine, swap)
    response = shop.post("/v1/orders", json=order_body(product["id"]))
    assert response.status_code == 201, response.text
    return response.json()
