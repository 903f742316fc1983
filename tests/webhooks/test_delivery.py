"""Delivery to a real HTTP receiver on 127.0.0.1: signatures, retries, giving up, dead
endpoints, redirects, secret rotation, redelivery and concurrent workers."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from sqlalchemy import Engine, select

from clearhouse.kit import clock
from clearhouse.kit.db import transact
from clearhouse.webhooks import delivery, service
from clearhouse.webhooks.delivery import BACKOFF, JITTER, WebhookVerificationError, verify
from clearhouse.webhooks.models import WebhookAttempt, WebhookDelivery
from tests.webhooks.support import Received, Receiver, answer, refused_url, standard_webhooks_valid

PAYMENT = {"id": "pay_1", "amount": 1999, "currency": "CNY", "status": "succeeded"}


def start() -> datetime:
    """A frozen 'now' ahead of the real clock (time only moves forward along the audit chain)."""
    return (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)


@pytest.fixture
def shop(merchant_client_factory):
    return merchant_client_factory("Shop")


def add_endpoint(merchant_client, url: str, event_types=("*",), **extra) -> dict:
    response = merchant_client.post("/v1/webhook_endpoints",
                                    json={"url": url, "event_types": list(event_types), **extra})
    assert response.status_code == 201, response.text
    return response.json()


def emit(engine: Engine, merchant_id: str, event_type: str = "payment.succeeded", data=None) -> str:
    return transact(engine, lambda s: service.emit(s, livemode=False, merchant_id=merchant_id, event_type=event_type,
                                                   data=PAYMENT if data is None else data))


def advance(frozen, by: timedelta) -> None:
    """Move the frozen clock by exactly ``by`` (to the microsecond: a float of seconds could
    land one microsecond short of a due time)."""
    frozen.tick(microseconds=by // timedelta(microseconds=1))


def deliver(app, settings=None, **kwargs) -> int:
    return delivery.deliver_due(app.state.engine, settings or app.state.settings, app.state.cipher, **kwargs)


def delivery_rows(engine: Engine, event_id: str | None = None) -> list:
    table = WebhookDelivery.__table__
    query = select(table).order_by(table.c.id)
    if event_id is not None:
        query = query.where(table.c.event_id == event_id)
    with engine.connect() as connection:
        return connection.execute(query).all()


def attempt_rows(engine: Engine, delivery_id: str) -> list:
    table = WebhookAttempt.__table__
    with engine.connect() as connection:
        return connection.execute(select(table).where(table.c.delivery_id == delivery_id)
                                  .order_by(table.c.attempt_number)).all()


class TestSignedDelivery:
    def test_a_delivery_is_signed_per_standard_webhooks(self, app, shop, receiver: Receiver):
        merchant_client, merchant_id = shop
        endpoint = add_endpoint(merchant_client, receiver.url())
        with clock.frozen(start()):
            event_id = emit(app.state.engine, merchant_id)
            assert deliver(app) == 1
            now = int(clock.now().timestamp())
        [request] = receiver.at("/hook")
        assert request.headers["webhook-id"] == event_id
        assert request.headers["webhook-timestamp"] == str(now)
        assert request.headers["content-type"] == "application/json"
        assert standard_webhooks_valid(endpoint["secret"], request.headers, request.body, now)
        body = orjson.loads(request.body)
        assert set(body) == {"type", "timestamp", "data"}
        assert body["type"] == "payment.succeeded" and body["data"] == PAYMENT
        # The copyable helper agrees, and refuses a changed body, another secret and an old stamp.
        assert verify(endpoint["secret"], request.headers, request.body, now=now) == body
        with pytest.raises(WebhookVerificationError):
            verify(endpoint["secret"], request.headers, request.body.replace(b"1999", b"9999"), now=now)
        with pytest.raises(WebhookVerificationError):
            verify(service.new_secret(), request.headers, request.body, now=now)
        with pytest.raises(WebhookVerificationError):
            verify(endpoint["secret"], request.headers, request.body, now=now + 301)
        assert not standard_webhooks_valid(endpoint["secret"], request.headers, request.body + b" ", now)

        [row] = delivery_rows(app.state.engine, event_id)
        assert row.status == "delivered" and row.attempt_count == 1 and row.next_attempt_at is None
        log = merchant_client.get(f"/v1/webhook_endpoints/{endpoint['id']}/deliveries").json()["data"]
        assert [(d["event_id"], d["status"], d["event_type"]) for d in log] == [
            (event_id, "delivered", "payment.succeeded")]
        [attempt] = log[0]["attempts"]
        assert attempt["status_code"] == 200 and attempt["error"] is None and attempt["response_excerpt"] == "ok"
        assert deliver(app) == 0  # nothing left to do

    def test_retries_until_a_2xx_with_the_same_webhook_id(self, app, shop, receiver: Receiver):
        merchant_client, merchant_id = shop
        endpoint = add_endpoint(merchant_client, receiver.url())
        receiver.script("/hook", answer(500, b"database down"), answer(503, b""), answer(204, b""))
        with clock.frozen(start()) as frozen:
            event_id = emit(app.state.engine, merchant_id)
            assert deliver(app) == 1
            [row] = delivery_rows(app.state.engine, event_id)
            assert row.status == "pending" and row.last_status_code == 500
            wait = row.next_attempt_at - clock.now()
            assert BACKOFF[0] * (1 - JITTER) <= wait <= BACKOFF[0] * (1 + JITTER)
            assert deliver(app) == 0  # not due yet
            advance(frozen, wait)
            assert deliver(app) == 1
            [row] = delivery_rows(app.state.engine, event_id)
            wait = row.next_attempt_at - clock.now()
            assert BACKOFF[1] * (1 - JITTER) <= wait <= BACKOFF[1] * (1 + JITTER)
            advance(frozen, wait)
            assert deliver(app) == 1
        requests = receiver.at("/hook")
        assert [r.headers["webhook-id"] for r in requests] == [event_id] * 3
        assert len({r.headers["webhook-timestamp"] for r in requests}) == 3
        assert len({r.body for r in requests}) == 1  # byte for byte the same body each time
        [row] = delivery_rows(app.state.engine, event_id)
        assert row.status == "delivered" and row.attempt_count == 3
        log = merchant_client.get(f"/v1/webhook_endpoints/{endpoint['id']}/deliveries").json()["data"]
        assert [(a["status_code"], a["error"], a["response_excerpt"]) for a in log[0]["attempts"]] == [
            (500, "HTTP 500", "database down"), (503, "HTTP 503", None), (204, None, None)]

    def test_gives_up_after_the_retry_window(self, app, shop, receiver: Receiver, settings):
        merchant_client, merchant_id = shop
        add_endpoint(merchant_client, receiver.url())
        receiver.script("/hook", answer(500))
        with clock.frozen(start()) as frozen:
            event_id = emit(app.state.engine, merchant_id)
            created = clock.now()
            give_up_at = created + timedelta(hours=settings.webhook_retry_hours)
            for _ in range(40):
                assert deliver(app) == 1
                [row] = delivery_rows(app.state.engine, event_id)
                if row.status != "pending":
                    break
                advance(frozen, row.next_attempt_at - clock.now())
        assert row.status == "failed" and row.next_attempt_at is None
        attempts = attempt_rows(app.state.engine, row.id)
        times = [a.started_at for a in attempts]
        assert times[0] == created and times[-1] == give_up_at  # the last retry lands on the window's end
        gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
        for number, gap in enumerate(gaps[:-1], start=1):
            base = BACKOFF[min(number, len(BACKOFF)) - 1]
            assert base * (1 - JITTER) <= gap <= base * (1 + JITTER), (number, gap)
        assert len(attempts) == row.attempt_count >= 10
        assert len(receiver.at("/hook")) == len(attempts)
        with clock.frozen(give_up_at + timedelta(days=30)):
            assert deliver(app) == 0

    def test_redirects_are_not_followed(self, app, shop, receiver: Receiver):
        merchant_client, merchant_id = shop
        add_endpoint(merchant_client, receiver.url("/old"))
        receiver.script("/old", answer(301, b"", {"location": receiver.url("/new")}))
        with clock.frozen(start()):
            event_id = emit(app.state.engine, merchant_id)
            deliver(app)
        assert receiver.at("/new") == []
        [row] = delivery_rows(app.state.engine, event_id)
        assert row.status == "pending" and row.last_status_code == 301


class TestDeadEndpoints:
    def test_a_dead_and_a_slow_endpoint_do_not_hold_up_a_healthy_one(self, app, shop, receiver: Receiver, settings):
        merchant_client, merchant_id = shop
        refused = add_endpoint(merchant_client, refused_url(), event_types=["payment.succeeded"])
        slow = add_endpoint(merchant_client, receiver.url("/slow"), event_types=["payment.failed"])
        healthy = add_endpoint(merchant_client, receiver.url("/healthy"), event_types=["payment.succeeded"])
        healthy_arrived = threading.Event()
        seen_while_slow_was_open: list[bool] = []
        timeout = 3.0

        def slow_answer(_receiver: Receiver, _request: Received):
            # Our client waits `timeout` s for this answer; the healthy request arriving
            # inside the first 2 s proves it was sent while this one was still open.
            arrived = time.monotonic()
            seen_while_slow_was_open.append(healthy_arrived.wait(timeout=2.0))
            time.sleep(max(0.0, arrived + timeout + 0.5 - time.monotonic()))
            return 200, b"too late", {}

        def healthy_answer(_receiver: Receiver, _request: Received):
            healthy_arrived.set()
            return 200, b"ok", {}

        receiver.script("/slow", slow_answer)
        receiver.script("/healthy", healthy_answer)
        with clock.frozen(start()) as frozen:
            # The slow endpoint's delivery is due first, so it is the first one sent.
            emit(app.state.engine, merchant_id, "payment.failed")
            frozen.tick(seconds=1)
            emit(app.state.engine, merchant_id, "payment.succeeded")
            assert deliver(app, settings.model_copy(update={"webhook_timeout_seconds": timeout})) == 3
        assert seen_while_slow_was_open == [True]
        by_endpoint = {row.endpoint_id: row for row in delivery_rows(app.state.engine)}
        assert by_endpoint[healthy["id"]].status == "delivered"
        assert by_endpoint[slow["id"]].status == "pending"
        assert "timeout" in by_endpoint[slow["id"]].last_error
        assert by_endpoint[refused["id"]].status == "pending"
        assert by_endpoint[refused["id"]].last_status_code is None
        assert "ConnectError" in by_endpoint[refused["id"]].last_error

    def test_a_dead_endpoints_backlog_leaves_room_for_others(self, app, shop, receiver: Receiver):
        merchant_client, merchant_id = shop
        add_endpoint(merchant_client, refused_url(), event_types=["payment.failed"])
        healthy = add_endpoint(merchant_client, receiver.url(), event_types=["payment.succeeded"])
        with clock.frozen(start()):
            for _ in range(3 * delivery.PER_ENDPOINT):
                emit(app.state.engine, merchant_id, "payment.failed")
            emit(app.state.engine, merchant_id, "payment.succeeded")
            # Room for 12 in this run: at most PER_ENDPOINT go to the dead endpoint.
            assert deliver(app, limit=delivery.PER_ENDPOINT + 2) == delivery.PER_ENDPOINT + 1
        statuses = {row.endpoint_id: row.status for row in delivery_rows(app.state.engine)
                    if row.endpoint_id == healthy["id"]}
        assert statuses == {healthy["id"]: "delivered"}

    def test_disabled_endpoints_wait_and_resume(self, app, shop, receiver: Receiver):
        merchant_client, merchant_id = shop
        endpoint = add_endpoint(merchant_client, receiver.url())
        with clock.frozen(start()):
            event_id = emit(app.state.engine, merchant_id)
            merchant_client.patch(f"/v1/webhook_endpoints/{endpoint['id']}", json={"enabled": False})
            assert deliver(app) == 0
            assert emit(app.state.engine, merchant_id) and len(delivery_rows(app.state.engine)) == 1
            merchant_client.patch(f"/v1/webhook_endpoints/{endpoint['id']}", json={"enabled": True})
            assert deliver(app) == 1
        assert [r.headers["webhook-id"] for r in receiver.at("/hook")] == [event_id]


class TestConcurrentWorkers:
    def test_two_workers_never_send_the_same_attempt(self, app, shop, receiver: Receiver):
        merchant_client, merchant_id = shop
        add_endpoint(merchant_client, receiver.url())

        def slow_ok(_receiver: Receiver, _request: Received):
            time.sleep(0.05)
            return 200, b"ok", {}

        receiver.script("/hook", slow_ok)
        with clock.frozen(start()):
            events = [emit(app.state.engine, merchant_id) for _ in range(delivery.PER_ENDPOINT)]
            counts: list[int] = []
            barrier = threading.Barrier(3)

            def worker():
                barrier.wait()
                counts.append(deliver(app))

            threads = [threading.Thread(target=worker) for _ in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert sum(counts) == len(events)
        assert sorted(r.headers["webhook-id"] for r in receiver.at("/hook")) == sorted(events)
        assert all(row.status == "delivered" and row.attempt_count == 1 for row in delivery_rows(app.state.engine))

    def test_a_crashed_workers_lease_runs_out_and_the_delivery_is_retried(self, app, shop, receiver: Receiver):
        merchant_client, merchant_id = shop
        add_endpoint(merchant_client, receiver.url())
        with clock.frozen(start()) as frozen:
            event_id = emit(app.state.engine, merchant_id)
            # A worker claims and dies before sending anything.
            claimed = transact(app.state.engine, lambda s: delivery.repository.claim_due(
                s, now=clock.now(), limit=10, per_endpoint=10, lease_until=clock.now() + timedelta(minutes=5)))
            assert [c.id for c in claimed] == [delivery_rows(app.state.engine)[0].id]
            assert deliver(app) == 0  # leased
            frozen.tick(minutes=5)
            assert deliver(app) == 1
        [row] = delivery_rows(app.state.engine, event_id)
        assert row.status == "delivered" and row.attempt_count == 2
        assert [a.attempt_number for a in attempt_rows(app.state.engine, row.id)] == [2]


    def test_a_result_recorded_after_the_lease_was_taken_over_does_not_undo_the_newer_attempt(
            self, app, shop, receiver: Receiver, settings):
        merchant_client, merchant_id = shop
        add_endpoint(merchant_client, receiver.url())
        with clock.frozen(start()) as frozen:
            event_id = emit(app.state.engine, merchant_id)
            [stale] = transact(app.state.engine, lambda s: delivery.repository.claim_due(
                s, now=clock.now(), limit=10, per_endpoint=10, lease_until=clock.now() + timedelta(minutes=5)))
            frozen.tick(minutes=5)
            assert deliver(app) == 1  # the second claim delivers
            late = delivery.Outcome(
                delivery_id=stale.id, attempt_number=stale.attempt_count, delivery_created_at=stale.created_at,
                started_at=clock.now(), duration_ms=5000, status_code=None, error="timeout", response_excerpt=None)
            transact(app.state.engine, lambda s: delivery._record(
                s, [late], timedelta(hours=settings.webhook_retry_hours)))
        [row] = delivery_rows(app.state.engine, event_id)
        assert row.status == "delivered" and row.attempt_count == 2 and row.last_error is None
        # The late attempt is still in the log, as it happened.
        assert [(a.attempt_number, a.error) for a in attempt_rows(app.state.engine, row.id)] == [
            (1, "timeout"), (2, None)]

class TestRotationAndRedelivery:
    def test_after_rotation_both_secrets_sign_for_24_hours(self, app, shop, receiver: Receiver):
        merchant_client, merchant_id = shop
        endpoint = add_endpoint(merchant_client, receiver.url())
        with clock.frozen(start()) as frozen:
            rotated = merchant_client.post(f"/v1/webhook_endpoints/{endpoint['id']}/rotate_secret").json()
            emit(app.state.engine, merchant_id)
            deliver(app)
            during = int(clock.now().timestamp())
            frozen.tick(hours=24, seconds=1)
            emit(app.state.engine, merchant_id)
            deliver(app)
            after = int(clock.now().timestamp())
        first, second = receiver.at("/hook")
        assert len(first.headers["webhook-signature"].split()) == 2
        assert standard_webhooks_valid(rotated["secret"], first.headers, first.body, during)
        assert standard_webhooks_valid(endpoint["secret"], first.headers, first.body, during)
        assert len(second.headers["webhook-signature"].split()) == 1
        assert standard_webhooks_valid(rotated["secret"], second.headers, second.body, after)
        assert not standard_webhooks_valid(endpoint["secret"], second.headers, second.body, after)

    def test_manual_redelivery(self, app, shop, receiver: Receiver, engine: Engine):
        merchant_client, merchant_id = shop
        first = add_endpoint(merchant_client, receiver.url("/a"))
        second = add_endpoint(merchant_client, receiver.url("/b"), event_types=["payment.succeeded"])
        add_endpoint(merchant_client, receiver.url("/c"), event_types=["refund.failed"])
        with clock.frozen(start()):
            event_id = emit(engine, merchant_id)
            deliver(app)
            everyone = merchant_client.post(f"/v1/events/{event_id}/redeliver")
            assert everyone.status_code == 202, everyone.text
            assert sorted(d["endpoint_id"] for d in everyone.json()["deliveries"]) == sorted(
                [first["id"], second["id"]])
            assert all(d["manual"] and d["status"] == "pending" for d in everyone.json()["deliveries"])
            one = merchant_client.post(f"/v1/events/{event_id}/redeliver", json={"endpoint_id": first["id"]})
            assert [d["endpoint_id"] for d in one.json()["deliveries"]] == [first["id"]]
            assert deliver(app) == 3
        assert [r.headers["webhook-id"] for r in receiver.at("/a")] == [event_id] * 3
        assert [r.headers["webhook-id"] for r in receiver.at("/b")] == [event_id] * 2
        assert receiver.at("/c") == []
        merchant_client.patch(f"/v1/webhook_endpoints/{first['id']}", json={"enabled": False})
        disabled = merchant_client.post(f"/v1/events/{event_id}/redeliver", json={"endpoint_id": first["id"]})
        assert disabled.status_code == 409 and disabled.json()["code"] == "webhook_endpoint_disabled"
        missing = merchant_client.post(f"/v1/events/{event_id}/redeliver", json={"endpoint_id": "we_nope"})
        assert missing.status_code == 404 and missing.json()["code"] == "webhook_endpoint_not_found"
        unknown_event = merchant_client.post("/v1/events/evt_nope/redeliver")
        assert unknown_event.status_code == 404 and unknown_event.json()["code"] == "event_not_found"
        log = merchant_client.get(f"/v1/webhook_endpoints/{first['id']}/deliveries?status=delivered").json()
        assert len(log["data"]) == 3 and [d["manual"] for d in log["data"]] == [True, True, False]
        page = merchant_client.get(f"/v1/webhook_endpoints/{first['id']}/deliveries?limit=2").json()
        assert page["has_more"] and len(page["data"]) == 2
        rest = merchant_client.get(f"/v1/webhook_endpoints/{first['id']}/deliveries?starting_after="
                                   f"{page['next_cursor']}").json()
        assert [d["id"] for d in page["data"] + rest["data"]] == [d["id"] for d in log["data"]]

    def test_another_merchant_cannot_redeliver_to_its_endpoint(self, app, merchant_client_factory, engine: Engine):
        shop_a, merchant_a = merchant_client_factory("A")
        shop_b, _ = merchant_client_factory("B")
        endpoint_b = add_endpoint(shop_b, "https://b.example.com/hooks")
        event_id = emit(engine, merchant_a)
        # A's event to B's endpoint: the endpoint is not A's, so it does not exist for A.
        response = shop_a.post(f"/v1/events/{event_id}/redeliver", json={"endpoint_id": endpoint_b["id"]})
        assert response.status_code == 404 and response.json()["code"] == "webhook_endpoint_not_found"
