"""A validation error's limits read whole (the integrator tester, session 20): the largest amount, 10^15, has
16 digits, and the card-number masking of every problem turned "less than or equal to 1000000000000000" into
"1000000*****0000", in payments, refunds, captures, top-ups and product prices alike."""

from __future__ import annotations

from tests.payments.support import card_body


def test_the_largest_amount_is_named_whole(merchant_client_factory):
    shop, _ = merchant_client_factory()
    answer = shop.post("/v1/payments", json=card_body(10**15 + 1))
    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["errors"]
    assert (error["loc"], error["type"]) == (["body", "amount"], "less_than_equal")
    assert error["msg"] == "Input should be less than or equal to 1,000,000,000,000,000"
    assert "*" not in answer.text

