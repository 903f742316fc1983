"""The transactional outbox: emit writes an event and its deliveries in the caller's
transaction, to exactly the endpoints whose filter matches, and nothing if it rolls back."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, func, select

from clearhouse.kit.db import transact
from clearhouse.webhooks import service
from clearhouse.webhooks.models import WebhookDelivery, WebhookEvent

PAYMENT = {"id": "pay_1", "amount": 1999, "currency": "CNY", "status": "succeeded"}


@pytest.fixture
def shop(merchant_client_factory):
    return merchant_client_factory("Shop")


def add_endpoint(merchant_client, event_types, url="https://shop.example.com/hooks", **extra) -> str:
    response = merchant_client.post("/v1/webhook_endpoints", json={"url": url, "event_types": event_types, **extra})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def deliveries_of(engine: Engine, event_id: str) -> dict[str, str]:
    """endpoint id -> delivery status."""
    table = WebhookDelivery.__table__
    with engine.connect() as connection:
        rows = connection.execute(select(table.c.endpoint_id, table.c.status).where(table.c.event_id == event_id))
        return {row.endpoint_id: row.status for row in rows}


def count(engine: Engine, table) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(table)).scalar_one()


class TestEmit:
    def test_filters_choose_the_endpoints(self, shop, engine: Engine, merchant_client_factory):
        merchant_client, merchant_id = shop
        succeeded_only = add_endpoint(merchant_client, ["payment.succeeded"])
        everything = add_endpoint(merchant_client, ["*"])
        refunds_only = add_endpoint(merchant_client, ["refund.succeeded", "refund.failed"])
        disabled = add_endpoint(merchant_client, ["*"], enabled=False)
        other_client, other_merchant = merchant_client_factory("Other")
        others = add_endpoint(other_client, ["*"])

        event_id = transact(engine, lambda s: service.emit(s, livemode=False, merchant_id=merchant_id,
                                                           event_type="payment.succeeded", data=PAYMENT))
        assert event_id.startswith("evt_")
        assert deliveries_of(engine, event_id) == {succeeded_only: "pending", everything: "pending"}
        refund = transact(engine, lambda s: service.emit(s, merchant_id=merchant_id, event_type="refund.failed",
                                                         livemode=False, data={"id": "re_1"}))
        assert deliveries_of(engine, refund) == {everything: "pending", refunds_only: "pending"}
        assert disabled not in deliveries_of(engine, refund) and others not in deliveries_of(engine, refund)

        event = merchant_client.get(f"/v1/events/{event_id}")
        assert event.status_code == 200
        assert event.json()["type"] == "payment.succeeded" and event.json()["data"] == PAYMENT
        assert event.json()["merchant_id"] == merchant_id
        # Another merchant's event is 404, and absent from its lists.
        assert other_client.get(f"/v1/events/{event_id}").status_code == 404
        assert other_client.get(f"/v1/events/{event_id}").json()["code"] == "event_not_found"
        assert other_client.get("/v1/events").json()["data"] == []
        assert other_client.post(f"/v1/events/{event_id}/redeliver").status_code == 404
        assert other_merchant != merchant_id

    def test_an_event_without_endpoints_is_still_recorded(self, shop, engine: Engine):
        merchant_client, merchant_id = shop
        event_id = transact(engine, lambda s: service.emit(s, merchant_id=merchant_id, event_type="order.delivered",
                                                           livemode=False, data={"order_id": "ord_1"}))
        assert deliveries_of(engine, event_id) == {}
        listed = merchant_client.get("/v1/events?type=order.delivered").json()["data"]
        assert [e["id"] for e in listed] == [event_id]
        assert merchant_client.get("/v1/events?type=payment.failed").json()["data"] == []
        unknown = merchant_client.get("/v1/events?type=payment.exploded")
        assert unknown.status_code == 422 and unknown.json()["code"] == "unknown_event_type"

    def test_a_rolled_back_cause_leaves_no_event(self, shop, engine: Engine):
        merchant_client, merchant_id = shop
        add_endpoint(merchant_client, ["*"])

        class PaymentFailedToCommit(Exception):
            pass

        def work(session):
            service.emit(session, livemode=False, merchant_id=merchant_id, event_type="payment.succeeded", data=PAYMENT)
            raise PaymentFailedToCommit

        with pytest.raises(PaymentFailedToCommit):
            transact(engine, work)
        assert count(engine, WebhookEvent.__table__) == 0
        assert count(engine, WebhookDelivery.__table__) == 0
        assert merchant_client.get("/v1/events").json()["data"] == []

    def test_emit_refuses_unknown_types_and_non_json_data(self, shop, engine: Engine):
        _, merchant_id = shop
        with pytest.raises(ValueError, match="unknown event type"):
            transact(engine, lambda s: service.emit(s, merchant_id=merchant_id, event_type="payment.exploded",
                                                    livemode=False, data={}))
        with pytest.raises(TypeError):
            transact(engine, lambda s: service.emit(s, merchant_id=merchant_id, event_type="payment.failed",
                                                    livemode=False, data={"amount": object()}))
        assert count(engine, WebhookEvent.__table__) == 0

    def test_every_published_type_can_be_emitted_and_filtered(self, shop, engine: Engine):
        merchant_client, merchant_id = shop
        endpoint = add_endpoint(merchant_client, list(service.EVENT_TYPES))
        for event_type in service.EVENT_TYPES:
            event_id = transact(engine, lambda s, t=event_type: service.emit(s, livemode=False, merchant_id=merchant_id,
                                                                             event_type=t, data={"t": t}))
            assert deliveries_of(engine, event_id) == {endpoint: "pending"}

    def test_deleting_an_endpoint_cancels_its_pending_deliveries(self, shop, engine: Engine):
        merchant_client, merchant_id = shop
        endpoint = add_endpoint(merchant_client, ["*"])
        event_id = transact(engine, lambda s: service.emit(s, livemode=False, merchant_id=merchant_id,
                                                           event_type="payment.failed", data={}))
        assert merchant_client.delete(f"/v1/webhook_endpoints/{endpoint}").status_code == 200
        assert deliveries_of(engine, event_id) == {endpoint: "canceled"}
        later = transact(engine, lambda s: service.emit(s, merchant_id=merchant_id, event_type="payment.failed",
                                                        livemode=False, data={}))
        assert deliveries_of(engine, later) == {}
