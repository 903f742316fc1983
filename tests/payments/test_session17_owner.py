"""The merchant's balance account, opened by its first payment, names the merchant as its owner, so
``GET /v1/ledger/accounts?owner_id=`` finds it (found by the chief accountant tester: it had no owner)."""

from __future__ import annotations

from clearhouse.ledger.chart import account_id
from tests.payments.support import card_body


def test_the_merchants_pending_account_is_found_by_its_owner(client, merchant_client_factory):
    shop, merchant_id = merchant_client_factory("Owned Shop")
    assert shop.post("/v1/payments", json=card_body(10000)).json()["status"] == "succeeded"
    owned = client.get("/v1/ledger/accounts", params={"owner_id": merchant_id}).json()["data"]
    assert [(a["id"], a["code"]) for a in owned] == [
        (account_id(f"merchant_pending:{merchant_id}", "CNY"), f"merchant_pending:{merchant_id}")]
    assert owned[0]["balance"]["credits_posted"] == 9940
