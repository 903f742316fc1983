"""Card sales on one fixed day, as the reconciliation tests start from them, and reading a run's answer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text

from clearhouse.kit import clock
from clearhouse.kit.db import transact
from tests.payments.support import card_body

NOON = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)  # one fixed day: the payments cannot straddle midnight


def booked(app: Any, payment_ids: list[str]) -> dict[str, Any]:
    """What we booked for each payment (reference, external id, amount, channel cost, currency, status),
    read straight from the payments table."""
    def read(session: Any) -> dict[str, Any]:
        rows = session.execute(text(
            "SELECT id, reference, external_id, amount, channel_cost, currency, status FROM payments"
        )).all()
        return {r.id: r for r in rows if r.id in payment_ids}

    return transact(app.state.engine, read)


def sales_at_noon(app: Any, shop: Any, amounts: list[int]) -> list[Any]:
    """One card sale of each amount at ``NOON``, each succeeded, as we booked them, in order."""
    ids = []
    with clock.frozen(NOON):
        for amount in amounts:
            answer = shop.post("/v1/payments", json=card_body(amount=amount))
            assert answer.status_code == 201 and answer.json()["status"] == "succeeded", answer.text
            ids.append(answer.json()["id"])
    rows = booked(app, ids)
    return [rows[i] for i in ids]


def class_counts(run: dict[str, Any]) -> dict[str, int]:
    """A reconciliation's classes that have lines, with their counts."""
    return {name: figures["count"] for name, figures in run["classes"].items() if figures["count"]}


def cases_of(client: Any, run_id: str) -> list[dict[str, Any]]:
    """The cases of a reconciliation (its first page), through the API."""
    answer = client.get(f"/v1/reconciliations/{run_id}/cases")
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def changed_amount(amount: int, step: int) -> int:
    """``amount`` moved by ``step`` away from zero when ``step`` would turn it to 0 or the other way: a property
    test's mutated line keeps its direction, since money going the other way is never the pair."""
    if (amount + step < 0) != (amount < 0) or amount + step == 0:
        step = -step
    return amount + step
