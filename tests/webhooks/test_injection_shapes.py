"""Injection-shaped strings in every string field, query and path parameter of the webhook
routes: never a 500, a 4xx is problem+json with a code, and what is stored is shown literally.

(The project-wide walk in tests/test_injection.py covers these routes once app.py includes
them; this keeps the webhook routes honest on their own until then.)"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from clearhouse.kit.db import transact
from clearhouse.kit.masking import scrub
from clearhouse.webhooks import service
from tests.injection_support import PAYLOADS

URL_PAYLOADS = [(name, payload) for name, payload in PAYLOADS if name not in ("lone_surrogate", "nul")]


def as_json(body) -> dict:
    """Raw JSON bytes with escapes (``\\ud800`` is valid JSON that no encoder would send)."""
    return {"content": json.dumps(body).encode(), "headers": {"content-type": "application/json"}}


def problem_or_ok(response, expected_ok: tuple[int, ...] = (200, 201, 202)) -> None:
    assert response.status_code < 500, response.text
    if response.status_code not in expected_ok:
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"]


@pytest.fixture
def shop(merchant_client_factory):
    return merchant_client_factory("Shop")


class TestInjectionShapes:
    @pytest.mark.parametrize("name, payload", PAYLOADS, ids=[name for name, _ in PAYLOADS])
    def test_body_fields(self, shop, engine, name: str, payload: str):
        merchant_client, merchant_id = shop
        base = {"url": "https://shop.example.com/hooks", "event_types": ["*"]}
        for field, value in (("url", payload), ("url", "https://shop.example.com/" + payload),
                             ("event_types", [payload]), ("description", payload), ("merchant_id", payload)):
            response = merchant_client.post("/v1/webhook_endpoints", **as_json({**base, field: value}))
            problem_or_ok(response)
            if response.status_code == 201 and field == "description":
                made = merchant_client.get(f"/v1/webhook_endpoints/{response.json()['id']}").json()
                assert made["description"] == scrub(payload)  # free text is stored masked
            if response.status_code == 201 and field == "url":
                assert merchant_client.get(f"/v1/webhook_endpoints/{response.json()['id']}").json()["url"] == value
        endpoint = merchant_client.post("/v1/webhook_endpoints", json=base).json()
        for body in ({"description": payload}, {"url": payload}, {"event_types": [payload]}):
            problem_or_ok(merchant_client.patch(f"/v1/webhook_endpoints/{endpoint['id']}", **as_json(body)))
        event_id = transact(engine, lambda s: service.emit(s, merchant_id=merchant_id, event_type="payment.failed",
                                                           livemode=False, data={}))
        problem_or_ok(merchant_client.post(f"/v1/events/{event_id}/redeliver", **as_json({"endpoint_id": payload})))

    @pytest.mark.parametrize("name, payload", URL_PAYLOADS, ids=[name for name, _ in URL_PAYLOADS])
    def test_query_and_path_parameters(self, shop, client, name: str, payload: str):
        merchant_client, _ = shop
        quoted = quote(payload, safe="")
        for caller in (merchant_client, client):
            for path in (
                f"/v1/webhook_endpoints/{quoted}", f"/v1/webhook_endpoints/{quoted}/deliveries",
                f"/v1/events/{quoted}", f"/v1/webhook_endpoints?merchant_id={quoted}",
                f"/v1/webhook_endpoints?starting_after={quoted}", f"/v1/events?type={quoted}",
                f"/v1/events?merchant_id={quoted}", f"/v1/events?starting_after={quoted}",
            ):
                problem_or_ok(caller.get(path))
            problem_or_ok(caller.patch(f"/v1/webhook_endpoints/{quoted}", json={"enabled": False}))
            problem_or_ok(caller.delete(f"/v1/webhook_endpoints/{quoted}"))
            problem_or_ok(caller.post(f"/v1/webhook_endpoints/{quoted}/rotate_secret"))
            problem_or_ok(caller.post(f"/v1/events/{quoted}/redeliver"))
