"""Session 14: with ``refund_cost_bearer: merchant``, the merchant bears what the channel keeps of its fee,
whatever order a payment's refunds complete in. The QR wallets give their fee back in the order refunds are
asked for; two refunds completing the other way round charged the merchant 0.01 the channel never kept."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from clearhouse.channels.connectors import sandbox
from clearhouse.kit import clock
from clearhouse.ledger.chart import account_id
from tests.payments.support import ledger_verifies, paid_by_customer

NOON_IN_CHINA = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)


@pytest.mark.parametrize("b_first", [False, True], ids=["in_order", "the_second_completes_first"])
def test_the_merchant_bears_only_what_the_channel_kept(app, client, anonymous_client, merchant_client_factory,
                                                        b_first):
    shop, merchant_id = merchant_client_factory("Bearer shop")
    plan = client.put(f"/v1/fee_plans/{merchant_id}",
                      json={"rules": [{"percent": "1", "refund_cost_bearer": "merchant"}]})
    assert plan.status_code == 200, plan.text
    with clock.frozen(NOON_IN_CHINA):
        paid = paid_by_customer(app, shop, anonymous_client, "sandbox_wechat", 6600)  # WeChat keeps 0.40 (0.6 %)
        first = shop.post(f"/v1/payments/{paid['id']}/refunds", json={"amount": 1}).json()  # gets 0.00 back
        second = shop.post(f"/v1/payments/{paid['id']}/refunds", json={"amount": 82}).json()  # 0.01: 0.83's share
        assert (first["status"], second["status"]) == ("pending", "pending")
        if b_first:
            app.state.channels["sandbox_wechat"].query(second["id"])  # the channel completes the second first
        sandbox.deliver_due(app.state.settings, lambda path, headers, body: anonymous_client.post(
            path, content=body, headers=headers).status_code)
    merchant = account_id(f"merchant_pending:{merchant_id}", "CNY")
    debits = 0
    for refund in (first, second):
        entry = client.get(f"/v1/ledger/transfers/tr_{refund['id']}").json()
        debits += sum(p["amount"] for p in entry["postings"] if p["direction"] == "debit"
                      and p["account_id"] == merchant)
        assert shop.get(f"/v1/refunds/{refund['id']}").json()["status"] == "succeeded"
    # 0.83 refunded gives back 0.01 of the merchant's 0.66 fee; WeChat gave back its whole share of its fee
    # (0.01 of 0.40 on 0.83), so the merchant bears none of it: 0.83 - 0.01.
    assert debits == 82
    ledger_verifies(app)
