"""A client cannot open an account under the id of one of the chart's named accounts (``ledger.chart``).

Taken first in another currency, or closed, ``fee_revenue``'s id made every payment of that currency fail
to post; a merchant's balance or a bank account the same (found while building recipe 4's payouts)."""

from __future__ import annotations

from clearhouse.ledger.chart import account_id
from clearhouse.ledger.schemas import CHART_ACCOUNT_ID
from tests.payments.support import card_body


def test_the_shape_refused_is_the_charts_own():
    for name, currency in (("fee_revenue", "CNY"), ("merchant_pending:mch_x", "USD"), ("bank:DE89", "EUR")):
        assert CHART_ACCOUNT_ID.fullmatch(account_id(name, currency))


def test_a_chart_id_is_refused_and_the_charts_account_is_opened_by_the_payment(client, merchant_client_factory):
    squatted = account_id("fee_revenue", "CNY")
    answer = client.post("/v1/ledger/accounts", json={"id": squatted, "type": "revenue", "currency": "USD",
                                                      "code": "fee_revenue"})
    assert (answer.status_code, answer.json()["code"]) == (422, "validation_error"), answer.text
    assert client.get(f"/v1/ledger/accounts/{squatted}").status_code == 404
    shop, _merchant = merchant_client_factory("Shop")
    paid = shop.post("/v1/payments", json=card_body(10000))
    assert paid.json()["status"] == "succeeded", paid.text
    fees = client.get(f"/v1/ledger/accounts/{squatted}").json()
    assert (fees["currency"], fees["code"], fees["balance"]["credits_posted"]) == ("CNY", "fee_revenue", 60)


def test_ordinary_ids_still_work(client):
    for chosen in ("acct_my_bank", "acct_01m88tnp2qvekdtw1g01j5djcg", "cash-on-hand"):
        answer = client.post("/v1/ledger/accounts", json={"id": chosen, "type": "asset", "currency": "CNY",
                                                          "code": "mine"})
        assert answer.status_code == 201, answer.text
