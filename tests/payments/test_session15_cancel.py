"""Session 15: two cancels of one held payment at once both answered 200 canceled (the tester,
3 rounds in 5); the one that finds the payment already canceled now answers what a later
cancel answers, 409 payment_state_conflict, and the hold is voided once."""

from __future__ import annotations

from clearhouse.kit.db import transact
from clearhouse.payments import service as payments
from tests.payments.support import balances, card_body, ledger_verifies


def test_a_cancel_that_loses_the_race_to_another_cancel_is_a_conflict(app, merchant_client_factory, monkeypatch):
    client, merchant_id = merchant_client_factory()
    held = client.post("/v1/payments", json=card_body(10000, capture_method="manual")).json()
    assert held["status"] == "requires_capture"
    connector = app.state.channels["sandbox_card"]
    channel_cancel = connector.cancel

    def the_other_cancel_lands_meanwhile(reference: str):
        answer = channel_cancel(reference)
        transact(app.state.engine, lambda s: payments._canceled(s, held["id"], "the other request"))
        return answer

    monkeypatch.setattr(connector, "cancel", the_other_cancel_lands_meanwhile)
    lost = client.post(f"/v1/payments/{held['id']}/cancel")
    assert lost.status_code == 409, lost.text
    assert lost.json()["code"] == "payment_state_conflict"
    assert "already canceled" in lost.json()["detail"]
    view = client.get(f"/v1/payments/{held['id']}").json()
    assert view["status"] == "canceled"
    assert len([e for e in view["timeline"] if e.get("to_status") == "canceled"]) == 1
    assert balances(app, merchant_id) == {"clearing": 0, "cost": 0, "merchant": 0, "fees": 0}
    ledger_verifies(app)
