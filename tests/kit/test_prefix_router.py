"""``kit.api.PrefixRouter``: skipping routers whose routes cannot match changes no answer."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from clearhouse.kit.api import PrefixRouter


@pytest.fixture
def client() -> TestClient:
    ledger = PrefixRouter(prefix="/v1/ledger")
    ledger.get("/accounts")(lambda: {"route": "ledger accounts"})
    ledger.get("/accounts/{account_id}")(lambda account_id: {"route": "ledger account", "id": account_id})
    wide = PrefixRouter(prefix="/v1")
    wide.get("/payments/{payment_id}/refunds")(lambda payment_id: {"route": "refunds", "id": payment_id})
    wide.post("/payments")(lambda: {"route": "create payment"})
    wide.get("/{kind}/search")(lambda kind: {"route": "search", "kind": kind})  # a parameter first: no shortcut
    nested_outer, nested_inner = PrefixRouter(prefix="/nested"), PrefixRouter(prefix="/inner")
    nested_inner.get("/leaf")(lambda: {"route": "nested leaf"})
    nested_outer.include_router(nested_inner)
    mounted = PrefixRouter()
    mounted.get("/thing")(lambda: {"route": "mounted thing"})
    empty = PrefixRouter(prefix="/v1/empty")
    app = FastAPI()
    for router in (ledger, wide, nested_outer, empty):
        app.include_router(router)
    app.include_router(mounted, prefix="/extra")  # a prefix added at inclusion
    app.get("/healthz")(lambda: {"route": "healthz"})
    return TestClient(app)


@pytest.mark.parametrize("path,answer", [
    ("/v1/ledger/accounts", {"route": "ledger accounts"}),
    ("/v1/ledger/accounts/acct_1", {"route": "ledger account", "id": "acct_1"}),
    ("/v1/payments/pay_1/refunds", {"route": "refunds", "id": "pay_1"}),
    ("/v1/ledger/search", {"route": "search", "kind": "ledger"}),
    ("/nested/inner/leaf", {"route": "nested leaf"}),
    ("/extra/thing", {"route": "mounted thing"}),
    ("/healthz", {"route": "healthz"}),
])
def test_every_route_is_reached_with_its_parameters(client, path, answer):
    response = client.get(path)
    assert response.status_code == 200, response.text
    assert response.json() == answer


def test_a_path_matched_with_another_method_is_405_and_an_unknown_path_404(client):
    assert client.get("/v1/payments").status_code == 405
    assert client.post("/v1/payments").json() == {"route": "create payment"}
    for path in ("/v1/ledger/nothing/here", "/v1/empty/x", "/thing", "/extra/other", "/v1", "/"):
        assert client.get(path).status_code == 404, path
