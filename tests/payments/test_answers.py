"""The answer to a write is rendered from what the request wrote, not read back (payments/service.py,
``_publish``): it must be exactly what a read of the payment says, for every way a card payment
ends its first request, and the webhook published with it must say the same. The timeline is
read in id order, and the events of one request are written together: they must keep their order."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from clearhouse.channels.connectors.sandbox import AMOUNT_DECLINE
from clearhouse.channels.connectors.sandbox_card import CARD_CHALLENGE, CARD_CHANNEL_ERROR, CARD_DECLINED
from tests.payments.support import card_body, ledger_verifies

CASES = {
    "succeeded": card_body(10_000),
    "declined card": card_body(10_000, number=CARD_DECLINED),
    "declined amount": card_body(AMOUNT_DECLINE),
    "requires_action": card_body(10_000, number=CARD_CHALLENGE),
    "requires_capture": card_body(10_000, capture_method="manual"),
    "channel error": card_body(10_000, number=CARD_CHANNEL_ERROR),
}


def _times(value: Any) -> Any:
    """Datetimes compared as instants: the API writes UTC as ``Z``, webhook payloads as ``+00:00``."""
    if isinstance(value, dict):
        return {k: _times(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_times(v) for v in value]
    if isinstance(value, str) and len(value) >= 20 and value[4] == "-" and value[10] == "T":
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    return value


@pytest.mark.parametrize("case", list(CASES))
def test_the_answer_to_a_payment_is_what_reading_it_says(app, engine, merchant_client_factory, case):
    client, _merchant_id = merchant_client_factory()
    response = client.post("/v1/payments", json=CASES[case], headers={"Idempotency-Key": f"answers-{case}"})
    assert response.status_code == 201, response.text
    answer = response.json()
    read = client.get(f"/v1/payments/{answer['id']}").json()
    timeline = read.pop("timeline")
    assert answer.pop("timeline") is None  # the answer to a write has no timeline (api.md)
    assert answer == read
    # The webhook of the last change carries the same payment.
    with engine.connect() as connection:
        payloads = [orjson.loads(row.payload_json) for row in connection.execute(
            text("SELECT payload_json FROM webhook_events WHERE merchant_id = :m ORDER BY id"),
            {"m": answer["merchant_id"]})]
    if answer["status"] == "processing":
        assert payloads == []  # nothing has happened that a merchant is told about
    else:
        assert _times(payloads[-1]) == _times(answer)
    assert [e["type"] for e in timeline][:2] == ["created", "attempt_started"]
    assert timeline[-1]["to_status"] == answer["status"] or answer["status"] == "processing"
    # The replay of the same request is the same answer.
    again = client.post("/v1/payments", json=CASES[case], headers={"Idempotency-Key": f"answers-{case}"})
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == {**answer, "timeline": None}
    ledger_verifies(app)


def test_events_written_together_keep_their_order(merchant_client_factory):
    """Ids made in one millisecond share their time part; written in one statement, the
    events of a request would otherwise come back in random order half of the time."""
    client, _merchant_id = merchant_client_factory()
    for n in range(25):
        payment = client.post("/v1/payments", json=card_body(1_000 + n)).json()
        timeline = client.get(f"/v1/payments/{payment['id']}").json()["timeline"]
        assert [e["type"] for e in timeline] == ["created", "attempt_started", "status_changed"], timeline
