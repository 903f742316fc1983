"""Races a payment system must win: one payment per idempotency key however many arrive at
once, and refunds that never exceed the captured amount under concurrent requests. Real
HTTP against a live server, many threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
from sqlalchemy import func, select

from clearhouse.identity.signing import ClearhouseAuth
from clearhouse.kit.db import transact
from clearhouse.payments.models import Payment
from tests.conftest import make_key, make_merchant
from tests.payments.support import card_body, ledger_verifies


def _merchant_http(app, live_server):
    merchant = make_merchant(app, "Racer")
    key = make_key(app, merchant_id=merchant.merchant_id, mode="test")
    return lambda: httpx.Client(base_url=live_server, auth=ClearhouseAuth(key.key_id, key.secret), timeout=60)


class TestIdempotentCreation:
    def test_fifty_concurrent_requests_with_one_key_make_one_payment(self, app, live_server):
        new_client = _merchant_http(app, live_server)
        body = card_body(2500)

        def send(_: int) -> httpx.Response:
            with new_client() as http:
                return http.post("/v1/payments", json=body, headers={"Idempotency-Key": "order-42"})

        with ThreadPoolExecutor(max_workers=16) as pool:
            responses = list(pool.map(send, range(50)))
        created = [r for r in responses if r.status_code == 201]
        assert created, [r.text for r in responses[:3]]
        assert {r.json()["id"] for r in created} == {created[0].json()["id"]}
        assert all(r.status_code in (201, 409) for r in responses)
        assert all(r.json()["code"] == "idempotency_key_in_use" for r in responses if r.status_code == 409)
        count = transact(app.state.engine, lambda s: s.execute(select(func.count()).select_from(Payment)).scalar())
        assert count == 1
        ledger_verifies(app)


class TestConcurrentRefunds:
    def test_concurrent_refunds_never_exceed_the_captured_amount(self, app, live_server):
        new_client = _merchant_http(app, live_server)
        with new_client() as http:
            payment = http.post("/v1/payments", json=card_body(10000)).json()
        assert payment["status"] == "succeeded"

        def refund(_: int) -> httpx.Response:
            with new_client() as http:
                return http.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 700})

        with ThreadPoolExecutor(max_workers=16) as pool:
            responses = list(pool.map(refund, range(30)))
        ok = [r for r in responses if r.status_code == 201]
        refused = [r for r in responses if r.status_code == 409]
        assert len(ok) == 14  # 14 x 7.00 = 98.00; a 15th would pass 100.00
        assert len(refused) == 16
        assert all(r.json()["code"] == "refund_exceeds_captured" for r in refused)
        with new_client() as http:
            view = http.get(f"/v1/payments/{payment['id']}").json()
        assert view["amount_refunded"] == 9800
        ledger_verifies(app)
