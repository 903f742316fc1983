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


class TestTheOpenAPIDocument:
    def test_every_bound_of_an_integer_is_an_exact_integer(self, anonymous_client):
        """A bound written as a float (2^63 as 9.223372036854776e+18) is one past the real limit."""
        document = anonymous_client.get("/openapi.json").json()
        bounds = []

        def walk(node, path):
            if isinstance(node, dict):
                for key, value in node.items():
                    if key in ("maximum", "minimum", "exclusiveMaximum", "exclusiveMinimum") \
                            and node.get("type") == "integer":
                        bounds.append((path, key, value))
                    walk(value, f"{path}/{key}")
            elif isinstance(node, list):
                for n, value in enumerate(node):
                    walk(value, f"{path}/{n}")

        walk(document, "")
        assert bounds
        assert [b for b in bounds if not isinstance(b[2], int)] == []
        amount = document["components"]["schemas"]["PostPending"]["properties"]["amount"]["anyOf"][0]
        assert amount["maximum"] == 2**63 - 1


class TestAnEntryInSeveralCurrencies:
    def test_is_posted_whole_without_an_amount(self, client):
        cny_a, cny_b = open_account(client, "asset"), open_account(client, "liability")
        kwd_a, kwd_b = open_account(client, "asset", "KWD"), open_account(client, "liability", "KWD")
        held = client.post(TRANSFERS, json={"pending": True, "postings": [
            {"account_id": cny_a, "direction": "debit", "amount": 100, "currency": "CNY"},
            {"account_id": cny_b, "direction": "credit", "amount": 100, "currency": "CNY"},
            {"account_id": kwd_a, "direction": "debit", "amount": 5, "currency": "KWD"},
            {"account_id": kwd_b, "direction": "credit", "amount": 5, "currency": "KWD"}]})
        assert held.status_code == 201, held.text
        for amount in (105, 104, 100):  # 100 fen and 5 fils are not 105 of anything
            answer = client.post(f"{TRANSFERS}/{held.json()['id']}/post", json={"amount": amount})
            assert_problem(answer, 422, "partial_post_requires_single_currency")
        assert client.post(f"{TRANSFERS}/{held.json()['id']}/post", json={}).status_code == 200
        assert (balance(client, cny_b)["posted"], balance(client, kwd_b)["posted"]) == (100, 5)
        assert_verified(client)


class TestAnEmptyOwnerFilter:
    def test_is_refused_not_dropped(self, client):
        open_account(client, "asset", owner_id="someone")
        answer = client.get("/v1/ledger/accounts", params={"owner_id": ""})
        assert_problem(answer, 422, "validation_error")
