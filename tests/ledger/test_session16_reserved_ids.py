"""Session 16: a client cannot take the ids the system gives its own entries.

A platform key created ``tr_pay_<id>`` before the payment's own entry: the customer paid at the channel and the
payment was never recorded (the entry's id was taken "with other fields"); ``tr_pay_<id>_release`` made a capture
taken at the channel fail; ``tr_rcs_<id>`` made a case unresolvable."""

from __future__ import annotations

import pytest

from tests.payments.support import card_body


@pytest.mark.parametrize("entry_id", ["tr_pay_01abc", "tr_pay_01abc_release", "tr_re_01abc", "tr_rcs_01abc",
                                      "tr_rcs_01abc_reversed", "tr_rcb_rec_01abc_1", "tr_rco_rec_01abc_1"])
def test_a_system_id_is_refused_and_nothing_is_written(client, entry_id):
    for account_id in ("acct_s16a", "acct_s16b"):
        client.post("/v1/ledger/accounts",
                    json={"id": account_id, "type": "asset", "currency": "CNY", "code": account_id})
    answer = client.post("/v1/ledger/transfers", json={"id": entry_id, "debit_account_id": "acct_s16a",
                                                       "credit_account_id": "acct_s16b", "amount": 1,
                                                       "currency": "CNY"})
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "validation_error"
    assert client.get(f"/v1/ledger/transfers/{entry_id}").status_code == 404


def test_a_payment_is_recorded_under_its_own_id_and_an_ordinary_id_still_works(client, merchant_client_factory):
    shop, _merchant = merchant_client_factory("Shop")
    held = shop.post("/v1/payments", json=card_body(1000, capture_method="manual")).json()
    for account_id in ("acct_s16c", "acct_s16d"):
        client.post("/v1/ledger/accounts",
                    json={"id": account_id, "type": "asset", "currency": "CNY", "code": account_id})
    squat = client.post("/v1/ledger/transfers", json={"id": f"tr_{held['id']}_release", "debit_account_id":
                                                      "acct_s16c", "credit_account_id": "acct_s16d", "amount": 1,
                                                      "currency": "CNY"})
    assert squat.status_code == 422
    captured = shop.post(f"/v1/payments/{held['id']}/capture", json={"amount": 600})
    assert captured.status_code == 200 and captured.json()["status"] == "succeeded", captured.text
    ordinary = client.post("/v1/ledger/transfers", json={"id": "tr_my_own_1", "debit_account_id": "acct_s16c",
                                                         "credit_account_id": "acct_s16d", "amount": 1,
                                                         "currency": "CNY"})
    assert ordinary.status_code == 201, ordinary.text
