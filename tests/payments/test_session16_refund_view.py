"""Session 16: a refund says what it takes from the merchant's balance.

Under ``refund_cost_bearer: merchant`` the merchant pays what the channel keeps of its fee,
but no field of the refund said so: the merchant saw ``amount`` 30.00 and ``fee_refunded``
0.18 and could not explain the 29.93 taken (the tester could only find it in the ledger,
which merchant keys may not read)."""

from __future__ import annotations

import pytest

from clearhouse.ledger.chart import account_id
from tests.payments.support import card_body, ledger_verifies


@pytest.mark.parametrize(("policy", "fee_back", "cost"), [("proportional", 18, 11), ("none", 0, 11)])
def test_the_refund_shows_the_fee_given_back_and_the_channel_cost_charged(app, client, merchant_client_factory,
                                                                           policy, fee_back, cost):
    shop, merchant_id = merchant_client_factory("Bearer shop")
    plan = client.put(f"/v1/fee_plans/{merchant_id}", json={"rules": [
        {"percent": "0.6", "refund_fee_policy": policy, "refund_cost_bearer": "merchant"}]})
    assert plan.status_code == 200, plan.text
    payment = shop.post("/v1/payments", json=card_body(10000)).json()
    assert payment["status"] == "succeeded", payment
    refund = shop.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 3000})
    assert refund.status_code == 201, refund.text
    shown = refund.json()
    assert (shown["status"], shown["fee_refunded"], shown["channel_cost_charged"]) == ("succeeded", fee_back, cost)
    assert shop.get(f"/v1/refunds/{shown['id']}").json()["channel_cost_charged"] == cost
    # What the view says the merchant pays is what the ledger took from its balance.
    entry = client.get(f"/v1/ledger/transfers/{shown['ledger_transfer_id']}").json()
    merchant = account_id(f"merchant_pending:{merchant_id}", "CNY")
    taken = sum(p["amount"] if p["direction"] == "debit" else -p["amount"]
                for p in entry["postings"] if p["account_id"] == merchant)
    assert taken == shown["amount"] - shown["fee_refunded"] + shown["channel_cost_charged"]
    ledger_verifies(app)


def test_a_platform_bearing_the_cost_charges_the_merchant_nothing_of_it(client, merchant_client_factory):
    shop, merchant_id = merchant_client_factory("Platform bears")
    client.put(f"/v1/fee_plans/{merchant_id}", json={"rules": [{"percent": "0.6"}]})
    payment = shop.post("/v1/payments", json=card_body(10000)).json()
    shown = shop.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 3000}).json()
    assert (shown["fee_refunded"], shown["channel_cost_charged"]) == (18, 0)
