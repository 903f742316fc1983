"""Defects a second exploratory test of the ledger found (2026-11-24, session 12), each held by a
test through the API."""

from __future__ import annotations

import pytest

from tests.ledger.support import assert_problem, assert_verified, balance, open_account, transfer

TRANSFERS = "/v1/ledger/transfers"


class TestANullBody:
    @pytest.mark.parametrize("action", ["post", "void"])
    def test_is_refused_not_read_as_no_body(self, client, action):
        a, b = open_account(client, "asset"), open_account(client, "liability")
        held = transfer(client, a, b, 500, pending=True).json()
        answer = client.post(f"{TRANSFERS}/{held['id']}/{action}", content=b"null",
                             headers={"content-type": "application/json"})
        assert_problem(answer, 400, "malformed_request")
        assert "null" in answer.json()["detail"]
        assert client.get(f"{TRANSFERS}/{held['id']}").json()["status"] == "pending"  # neither posted nor voided
        assert balance(client, b)["posted"] == 0
        assert client.post(f"{TRANSFERS}/{held['id']}/{action}").status_code == 200  # no body: the defaults
        assert_verified(client)

    def test_a_payment_capture_with_null_is_refused_too(self, merchant_client_factory):
        from tests.payments.orders.support import CARD

        shop, _ = merchant_client_factory()
        payment = shop.post("/v1/payments", json={"amount": 2000, "currency": "CNY", "method": "card",
                                                  "capture_method": "manual", "payment_details": CARD}).json()
        answer = shop.post(f"/v1/payments/{payment['id']}/capture", content=b"null",
                           headers={"content-type": "application/json"})
        assert_problem(answer, 400, "malformed_request")
        assert shop.get(f"/v1/payments/{payment['id']}").json()["status"] == "requires_capture"


class TestFundsCodes:
    @pytest.mark.parametrize(("code", "ok"), [("CLF", True), ("USN", True), ("XTS", False), ("XDR", False)])
    def test_have_a_minor_unit_and_are_currencies_as_the_docs_say(self, client, code, ok):
        answer = client.post("/v1/ledger/accounts", json={"type": "asset", "currency": code, "code": "fund"})
        assert answer.status_code == (201 if ok else 422), answer.text
