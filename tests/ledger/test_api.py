"""The ledger HTTP API as a client uses it: accounts, transfers, batches, refusals, history.

Every refused request is followed by two checks: the balances of the accounts it named
did not move, and ``GET /v1/ledger/verify`` still proves the ledger whole.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from clearhouse.kit import clock
from clearhouse.ledger import service
from tests.ledger.support import (
    MAX_AMOUNT,
    assert_problem,
    assert_refused_without_trace,
    assert_verified,
    balance,
    balances,
    open_account,
    race_behind_an_open_write,
    transfer,
    transfer_body,
)


@pytest.fixture
def books(client: Any) -> SimpleNamespace:
    """A small chart: a bank (asset), a wallet that may not go below zero holding CNY 100.00,
    a merchant (liability), and a USD account."""
    bank = open_account(client, "asset", code="bank:B")
    wallet = open_account(
        client,
        "liability",
        code="customer_wallet:C",
        flags={"debits_must_not_exceed_credits": True},
    )
    merchant = open_account(client, "liability", code="merchant_pending:M")
    usd = open_account(client, "liability", currency="USD", code="merchant_pending:M:usd")
    response = transfer(client, bank, wallet, 10000)
    assert response.status_code == 201, response.text
    return SimpleNamespace(bank=bank, wallet=wallet, merchant=merchant, usd=usd)


# ---------------------------------------------------------------- accounts


class TestAccounts:
    def test_new_account_has_an_id_a_creation_time_and_zero_balances(self, client):
        response = client.post(
            "/v1/ledger/accounts",
            json={
                "type": "liability",
                "currency": "CNY",
                "code": "merchant_pending:M",
                "owner_id": "mch_1",
                "metadata": {"region": "east"},
            },
        )
        assert response.status_code == 201
        account = response.json()
        assert account["id"].startswith("acct_")
        assert account["created_at"].endswith("Z")
        assert account["closed"] is False
        assert account["metadata"] == {"region": "east"}
        assert account["balance"] == {
            "debits_posted": 0,
            "credits_posted": 0,
            "debits_pending": 0,
            "credits_pending": 0,
            "posted": 0,
            "available": 0,
        }
        assert client.get(f"/v1/ledger/accounts/{account['id']}").json() == account

    def test_posted_balance_is_on_the_accounts_normal_side(self, client):
        bank = open_account(client, "asset", code="bank:B")
        merchant = open_account(client, "liability", code="merchant_pending:M")
        assert transfer(client, bank, merchant, 2500).status_code == 201
        assert balance(client, bank) == {
            "debits_posted": 2500,
            "credits_posted": 0,
            "debits_pending": 0,
            "credits_pending": 0,
            "posted": 2500,
            "available": 2500,
        }
        assert balance(client, merchant) == {
            "debits_posted": 0,
            "credits_posted": 2500,
            "debits_pending": 0,
            "credits_pending": 0,
            "posted": 2500,
            "available": 2500,
        }

    def test_same_client_id_and_fields_returns_the_account_with_200(self, client):
        body = {
            "id": "acct_merchant_m",
            "type": "liability",
            "currency": "CNY",
            "code": "merchant_pending:M",
        }
        first = client.post("/v1/ledger/accounts", json=body)
        again = client.post("/v1/ledger/accounts", json=body)
        assert (first.status_code, again.status_code) == (201, 200)
        assert again.json()["created_at"] == first.json()["created_at"]

    def test_same_client_id_with_other_fields_is_a_conflict(self, client):
        body = {
            "id": "acct_merchant_m",
            "type": "liability",
            "currency": "CNY",
            "code": "merchant_pending:M",
        }
        client.post("/v1/ledger/accounts", json=body)
        response = client.post("/v1/ledger/accounts", json={**body, "currency": "USD"})
        assert_problem(response, 409, "account_exists_with_different_fields")
        assert client.get("/v1/ledger/accounts/acct_merchant_m").json()["currency"] == "CNY"

    def test_unknown_account_or_transfer_is_404(self, client):
        assert_problem(client.get("/v1/ledger/accounts/acct_nope"), 404, "not_found")
        assert_problem(client.get("/v1/ledger/accounts/acct_nope/balance"), 404, "not_found")
        assert_problem(client.get("/v1/ledger/accounts/acct_nope/entries"), 404, "not_found")
        assert_problem(client.post("/v1/ledger/accounts/acct_nope/close"), 404, "not_found")
        assert_problem(client.get("/v1/ledger/transfers/tr_nope"), 404, "transfer_not_found")

    def test_account_in_an_unknown_currency_is_refused(self, client):
        for currency in ("XYZ", "cny", "XAU", "CN"):
            response = client.post("/v1/ledger/accounts", json={"type": "asset", "currency": currency, "code": "x"})
            body = assert_problem(response, 422, "validation_error")
            assert [e["loc"] for e in body["errors"]] == [["body", "currency"]], currency
        assert client.get("/v1/ledger/accounts").json()["data"] == []

    def test_account_breaking_a_rule_is_refused(self, client):
        both_flags = {
            "debits_must_not_exceed_credits": True,
            "credits_must_not_exceed_debits": True,
        }
        for fields in (
            {"type": "liability", "flags": both_flags},  # at most one limit flag
            {"type": "income"},  # not an account type
            {"type": "liability", "overdraft_limit": -1},
            {"type": "liability", "overdraft_limit": 1.0},
            {"type": "liability", "code": ""},
        ):
            response = client.post("/v1/ledger/accounts", json={"currency": "CNY", "code": "x", **fields})
            assert_problem(response, 422, "validation_error")
        assert client.get("/v1/ledger/accounts").json()["data"] == []

    def test_metadata_that_cannot_be_stored_exactly_is_refused_not_a_500(self, client):
        for metadata in (
            b'{"n": 100000000000000000000000}',  # beyond 64 bits: canonical JSON cannot hold it
            b'{"n": "\\ud800"}',  # a lone surrogate is not UTF-8
        ):
            raw = b'{"type": "asset", "currency": "CNY", "code": "x", "metadata": ' + metadata + b"}"
            response = client.post("/v1/ledger/accounts", content=raw, headers={"content-type": "application/json"})
            body = assert_problem(response, 422, "validation_error")
            assert [e["loc"] for e in body["errors"]] == [["body", "metadata"]], metadata
        # Not JSON at all, though Python's parser takes it: the body is malformed, as for a transfer.
        raw = b'{"type": "asset", "currency": "CNY", "code": "x", "metadata": {"n": NaN}}'
        response = client.post("/v1/ledger/accounts", content=raw, headers={"content-type": "application/json"})
        assert "NaN" in assert_problem(response, 400, "malformed_request")["detail"]
        assert client.get("/v1/ledger/accounts").json()["data"] == []


class TestAccountClose:
    def test_account_with_a_balance_cannot_be_closed(self, client, books):
        before = balances(client, books.wallet)
        response = client.post(f"/v1/ledger/accounts/{books.wallet}/close")
        assert_refused_without_trace(client, response, 409, "account_not_empty", before)
        assert client.get(f"/v1/ledger/accounts/{books.wallet}").json()["closed"] is False

    def test_account_with_only_a_pending_amount_cannot_be_closed(self, client, books):
        assert transfer(client, books.bank, books.merchant, 700, pending=True).status_code == 201
        before = balances(client, books.merchant)
        assert before[books.merchant]["posted"] == 0
        response = client.post(f"/v1/ledger/accounts/{books.merchant}/close")
        assert_refused_without_trace(client, response, 409, "account_not_empty", before)

    def test_emptied_account_closes_and_then_refuses_new_transfers(self, client, books):
        assert transfer(client, books.wallet, books.bank, 10000).status_code == 201
        closed = client.post(f"/v1/ledger/accounts/{books.wallet}/close")
        assert closed.status_code == 200
        assert closed.json()["closed"] is True
        before = balances(client, books.wallet, books.bank)
        for response in (
            transfer(client, books.bank, books.wallet, 1),
            transfer(client, books.wallet, books.bank, 1),
        ):
            assert_refused_without_trace(client, response, 409, "account_closed", before)


# ---------------------------------------------------------------- transfers


class TestTransfers:
    def test_transfer_moves_exactly_the_amount_between_two_accounts(self, client, books):
        response = transfer(
            client,
            books.wallet,
            books.merchant,
            1999,
            code="purchase",
            reference="order 42",
            metadata={"order": 42},
        )
        assert response.status_code == 201
        created = response.json()
        assert created["id"].startswith("tr_")
        assert (created["status"], created["amount"], created["currency"]) == (
            "posted",
            1999,
            "CNY",
        )
        assert (created["debit_account_id"], created["credit_account_id"]) == (
            books.wallet,
            books.merchant,
        )
        assert (created["code"], created["reference"], created["metadata"]) == (
            "purchase",
            "order 42",
            {"order": 42},
        )
        assert [(p["account_id"], p["direction"], p["kind"], p["amount"]) for p in created["postings"]] == [
            (books.wallet, "debit", "posted", 1999),
            (books.merchant, "credit", "posted", 1999),
        ]
        assert balance(client, books.wallet)["posted"] == 10000 - 1999
        assert balance(client, books.merchant)["posted"] == 1999
        assert client.get(f"/v1/ledger/transfers/{created['id']}").json() == created
        assert_verified(client)

    def test_largest_amount_a_column_holds_is_accepted_but_a_balance_cannot_overflow(self, client):
        equity = open_account(client, "equity", code="opening")
        bank = open_account(client, "asset", code="bank:B")
        response = transfer(client, bank, equity, MAX_AMOUNT)
        assert response.status_code == 201
        assert response.json()["amount"] == MAX_AMOUNT
        assert balance(client, bank)["posted"] == MAX_AMOUNT
        assert_verified(client)
        before = balances(client, bank, equity)
        assert_refused_without_trace(client, transfer(client, bank, equity, 1), 422, "balance_overflow", before)

    def test_multi_leg_entry_moves_every_account(self, client, books):
        fee = open_account(client, "revenue", code="fee_revenue")
        response = client.post(
            "/v1/ledger/transfers",
            json={
                "postings": [
                    {
                        "account_id": books.wallet,
                        "direction": "debit",
                        "amount": 5000,
                        "currency": "CNY",
                    },
                    {
                        "account_id": books.merchant,
                        "direction": "credit",
                        "amount": 4970,
                        "currency": "CNY",
                    },
                    {"account_id": fee, "direction": "credit", "amount": 30, "currency": "CNY"},
                ]
            },
        )
        assert response.status_code == 201, response.text
        entry = response.json()
        assert (entry["debit_account_id"], entry["credit_account_id"], entry["amount"]) == (
            None,
            None,
            5000,
        )
        assert len(entry["postings"]) == 3
        assert [balance(client, a)["posted"] for a in (books.wallet, books.merchant, fee)] == [
            5000,
            4970,
            30,
        ]
        assert_verified(client)

    def test_unbalanced_multi_leg_entry_is_refused(self, client, books):
        fee = open_account(client, "revenue", code="fee_revenue")
        before = balances(client, books.wallet, books.merchant, fee)
        response = client.post(
            "/v1/ledger/transfers",
            json={
                "postings": [
                    {
                        "account_id": books.wallet,
                        "direction": "debit",
                        "amount": 5000,
                        "currency": "CNY",
                    },
                    {
                        "account_id": books.merchant,
                        "direction": "credit",
                        "amount": 4970,
                        "currency": "CNY",
                    },
                    {"account_id": fee, "direction": "credit", "amount": 29, "currency": "CNY"},
                ]
            },
        )
        assert_refused_without_trace(client, response, 422, "entry_not_balanced", before)

    def test_entry_with_one_posting_is_refused(self, client, books):
        before = balances(client, books.wallet)
        posting = {
            "account_id": books.wallet,
            "direction": "debit",
            "amount": 5000,
            "currency": "CNY",
        }
        response = client.post("/v1/ledger/transfers", json={"postings": [posting]})
        body = assert_refused_without_trace(client, response, 422, "validation_error", before)
        assert body["errors"][0]["loc"] == ["body", "postings"]

    def test_transfers_are_chained_in_order(self, client, books):
        first = transfer(client, books.wallet, books.merchant, 1).json()
        second = transfer(client, books.wallet, books.merchant, 2).json()
        assert second["seq"] == first["seq"] + 1
        assert len({first["hash"], second["hash"]}) == 2
        report = assert_verified(client)
        assert report["chain_head"] == {"seq": second["seq"], "hash": second["hash"]}
        assert report["entries_checked"] == 3  # the funding transfer and these two


# ---------------------------------------------------------------- batches


class TestBatches:
    def test_unlinked_batch_keeps_what_succeeds_and_reports_what_fails(self, client, books):
        response = client.post(
            "/v1/ledger/transfers",
            json={
                "transfers": [
                    transfer_body(books.wallet, books.merchant, 6000),
                    transfer_body(books.wallet, books.merchant, 6000),  # only 4000 left: refused
                    transfer_body(books.wallet, books.merchant, 4000),
                ]
            },
        )
        assert response.status_code == 200
        results = response.json()["results"]
        assert [(r["index"], r["status"], r["code"]) for r in results] == [
            (0, "created", None),
            (1, "failed", "insufficient_funds"),
            (2, "created", None),
        ]
        assert balance(client, books.wallet)["posted"] == 0
        assert balance(client, books.merchant)["posted"] == 10000
        assert_problem(client.get(f"/v1/ledger/transfers/{results[1]['id']}"), 404, "transfer_not_found")
        assert_verified(client)

    def test_linked_batch_writes_all_members(self, client, books):
        response = client.post(
            "/v1/ledger/transfers",
            json={
                "linked": True,
                "transfers": [
                    transfer_body(books.wallet, books.merchant, 3000),
                    transfer_body(books.merchant, books.bank, 1000),  # the liability shrinks, the asset too
                ],
            },
        )
        assert response.status_code == 200
        assert [r["status"] for r in response.json()["results"]] == ["created", "created"]
        assert balance(client, books.merchant)["posted"] == 2000
        assert balance(client, books.bank)["posted"] == 10000 - 1000
        assert_verified(client)

    def test_a_later_member_sees_the_balance_left_by_an_earlier_one(self, client, books):
        response = client.post(
            "/v1/ledger/transfers",
            json={
                "linked": True,
                "transfers": [
                    transfer_body(books.bank, books.wallet, 500),
                    transfer_body(books.wallet, books.merchant, 10500),  # needs the 500 just credited
                ],
            },
        )
        assert response.status_code == 200, response.text
        assert balance(client, books.wallet)["posted"] == 0

    def test_batch_of_8190_transfers_is_accepted(self, client, books):
        response = client.post(
            "/v1/ledger/transfers",
            json={
                "transfers": [transfer_body(books.bank, books.merchant, 1) for _ in range(8190)],
            },
        )
        assert response.status_code == 200
        results = response.json()["results"]
        assert len(results) == 8190
        assert {r["status"] for r in results} == {"created"}
        assert len({r["id"] for r in results}) == 8190
        assert balance(client, books.merchant)["posted"] == 8190
        assert assert_verified(client)["entries_checked"] == 8191

    def test_batch_can_mix_transfers_and_multi_leg_entries_or_be_empty(self, client, books):
        fee = open_account(client, "revenue", code="fee_revenue")
        response = client.post(
            "/v1/ledger/transfers",
            json={
                "transfers": [
                    transfer_body(books.wallet, books.merchant, 100),
                    {
                        "postings": [
                            {
                                "account_id": books.wallet,
                                "direction": "debit",
                                "amount": 100,
                                "currency": "CNY",
                            },
                            {
                                "account_id": books.merchant,
                                "direction": "credit",
                                "amount": 99,
                                "currency": "CNY",
                            },
                            {
                                "account_id": fee,
                                "direction": "credit",
                                "amount": 1,
                                "currency": "CNY",
                            },
                        ]
                    },
                ]
            },
        )
        assert [r["status"] for r in response.json()["results"]] == ["created", "created"]
        assert [balance(client, a)["posted"] for a in (books.wallet, books.merchant, fee)] == [
            9800,
            199,
            1,
        ]
        empty = client.post("/v1/ledger/transfers", json={"transfers": []})
        assert (empty.status_code, empty.json()) == (200, {"results": []})
        assert assert_verified(client)["entries_checked"] == 3


# ---------------------------------------------------------------- bad input


class TestBadInput:
    """Each refused request: the right problem, and no trace in balances or in the journal."""

    def test_malformed_json_is_400(self, client, books):
        before = balances(client, books.wallet, books.merchant)
        response = client.post(
            "/v1/ledger/transfers",
            content=b'{"debit_account_id": "' + books.wallet.encode(),
            headers={"content-type": "application/json"},
        )
        assert_refused_without_trace(client, response, 400, "malformed_request", before)

    def test_a_body_that_is_not_a_json_object_is_400(self, client, books):
        before = balances(client, books.wallet)
        for raw in (b"", b"[1, 2]", b"null", b'"transfer"'):
            response = client.post("/v1/ledger/transfers", content=raw, headers={"content-type": "application/json"})
            assert_refused_without_trace(client, response, 400, "malformed_request", before)

    def test_unknown_account_is_422_account_not_found(self, client, books):
        before = balances(client, books.wallet)
        response = transfer(client, books.wallet, "acct_does_not_exist", 100)
        body = assert_refused_without_trace(client, response, 422, "account_not_found", before)
        assert "acct_does_not_exist" in body["detail"]

    def refused_amounts(self, client, books, amounts):
        before = balances(client, books.wallet, books.merchant)
        for amount in amounts:
            response = transfer(client, books.wallet, books.merchant, amount)
            body = assert_refused_without_trace(client, response, 422, "validation_error", before)
            assert [e["loc"] for e in body["errors"]] == [["body", "amount"]], amount

    def test_zero_and_negative_amounts_are_422(self, client, books):
        self.refused_amounts(client, books, [0, -1, -10000, -MAX_AMOUNT])

    def test_amount_above_2_63_minus_1_is_422(self, client, books):
        self.refused_amounts(client, books, [MAX_AMOUNT + 1, 2**64, 10**30])

    def test_float_amount_is_422_even_when_it_is_whole(self, client, books):
        self.refused_amounts(client, books, [1.5, 1.0, 100.0])

    def test_numeric_string_boolean_null_and_missing_amounts_are_422(self, client, books):
        self.refused_amounts(client, books, ["100", True, None, [100], {"minor": 100}])
        before = balances(client, books.wallet, books.merchant)
        body = transfer_body(books.wallet, books.merchant, 1)
        del body["amount"]
        response = client.post("/v1/ledger/transfers", json=body)
        assert_refused_without_trace(client, response, 422, "validation_error", before)

    def test_currency_other_than_the_accounts_is_422_currency_mismatch(self, client, books):
        before = balances(client, books.wallet, books.usd)
        response = transfer(client, books.wallet, books.usd, 100, "CNY")
        assert_refused_without_trace(client, response, 422, "currency_mismatch", before)
        response = transfer(client, books.wallet, books.merchant, 100, "USD")
        assert_refused_without_trace(client, response, 422, "currency_mismatch", before)

    def test_unknown_currency_is_422(self, client, books):
        before = balances(client, books.wallet, books.merchant)
        for currency in ("XYZ", "cny", "XAU", "", "CNYY"):
            response = transfer(client, books.wallet, books.merchant, 100, currency)
            body = assert_refused_without_trace(client, response, 422, "validation_error", before)
            assert [e["loc"] for e in body["errors"]] == [["body", "currency"]], currency

    def test_batch_of_8191_is_422_batch_too_large(self, client, books):
        before = balances(client, books.wallet, books.merchant)
        response = client.post(
            "/v1/ledger/transfers",
            json={
                "transfers": [transfer_body(books.wallet, books.merchant, 1) for _ in range(8191)],
            },
        )
        assert_refused_without_trace(client, response, 422, "batch_too_large", before)
        assert assert_verified(client)["entries_checked"] == 1

    def test_linked_batch_with_one_bad_member_writes_nothing(self, client, books):
        before = balances(client, books.wallet, books.merchant, books.bank)
        response = client.post(
            "/v1/ledger/transfers",
            json={
                "linked": True,
                "transfers": [
                    transfer_body(books.wallet, books.merchant, 100),
                    transfer_body(books.wallet, "acct_does_not_exist", 100),
                    transfer_body(books.bank, books.merchant, 100),
                ],
            },
        )
        body = assert_refused_without_trace(client, response, 422, "linked_batch_failed", before)
        assert [(r["index"], r["status"], r["code"]) for r in body["results"]] == [
            (0, "failed", "linked_event_failed"),
            (1, "failed", "account_not_found"),
            (2, "failed", "linked_event_failed"),
        ]
        for result in body["results"]:
            assert_problem(client.get(f"/v1/ledger/transfers/{result['id']}"), 404, "transfer_not_found")
        assert assert_verified(client)["entries_checked"] == 1

    def test_linked_batch_fails_as_one_on_insufficient_funds(self, client, books):
        before = balances(client, books.wallet, books.merchant)
        response = client.post(
            "/v1/ledger/transfers",
            json={
                "linked": True,
                "transfers": [
                    transfer_body(books.wallet, books.merchant, 6000),
                    transfer_body(books.wallet, books.merchant, 6000),
                ],
            },
        )
        body = assert_refused_without_trace(client, response, 422, "linked_batch_failed", before)
        assert [r["code"] for r in body["results"]] == ["linked_event_failed", "insufficient_funds"]

    def test_linked_batch_with_an_invalid_member_is_refused_whole(self, client, books):
        before = balances(client, books.wallet, books.merchant)
        response = client.post(
            "/v1/ledger/transfers",
            json={
                "linked": True,
                "transfers": [
                    transfer_body(books.wallet, books.merchant, 100),
                    transfer_body(books.wallet, books.merchant, 0),
                ],
            },
        )
        body = assert_refused_without_trace(client, response, 422, "validation_error", before)
        assert [e["loc"] for e in body["errors"]] == [["body", "transfers", 1, "amount"]]

    def test_debit_and_credit_on_the_same_account_is_422(self, client, books):
        before = balances(client, books.wallet)
        response = transfer(client, books.wallet, books.wallet, 100)
        assert_refused_without_trace(client, response, 422, "accounts_must_differ", before)

    def test_misspelt_field_is_refused_not_ignored(self, client, books):
        before = balances(client, books.wallet, books.merchant)
        body = transfer_body(books.wallet, books.merchant, 100, refrence="typo")
        assert_refused_without_trace(
            client, client.post("/v1/ledger/transfers", json=body), 422, "validation_error", before
        )

    def test_timeout_without_pending_is_422(self, client, books):
        before = balances(client, books.wallet, books.merchant)
        response = transfer(client, books.wallet, books.merchant, 100, timeout_seconds=60)
        assert_refused_without_trace(client, response, 422, "validation_error", before)

    def test_client_chosen_id_outside_the_id_alphabet_is_422(self, client, books):
        before = balances(client, books.wallet, books.merchant)
        for transfer_id in ("has space", "", "x" * 65, "-leading-dash", 42):
            response = transfer(client, books.wallet, books.merchant, 100, id=transfer_id)
            body = assert_refused_without_trace(client, response, 422, "validation_error", before)
            assert [e["loc"] for e in body["errors"]] == [["body", "id"]], transfer_id


# ---------------------------------------------------------------- limits


class TestLimits:
    def test_wallet_cannot_pay_more_than_it_holds(self, client, books):
        before = balances(client, books.wallet, books.merchant)
        response = transfer(client, books.wallet, books.merchant, 10001)
        body = assert_refused_without_trace(client, response, 409, "insufficient_funds", before)
        assert books.wallet in body["detail"]

    def test_wallet_can_pay_exactly_what_it_holds(self, client, books):
        assert transfer(client, books.wallet, books.merchant, 10000).status_code == 201
        assert balance(client, books.wallet)["posted"] == 0
        before = balances(client, books.wallet, books.merchant)
        assert_refused_without_trace(
            client,
            transfer(client, books.wallet, books.merchant, 1),
            409,
            "insufficient_funds",
            before,
        )

    def test_asset_flagged_credits_must_not_exceed_debits_cannot_be_overdrawn(self, client):
        equity = open_account(client, "equity", code="opening")
        bank = open_account(client, "asset", code="bank:B", flags={"credits_must_not_exceed_debits": True})
        assert transfer(client, bank, equity, 5000).status_code == 201
        assert transfer(client, equity, bank, 5000).status_code == 201
        before = balances(client, bank, equity)
        assert_refused_without_trace(client, transfer(client, equity, bank, 1), 409, "exceeds_credit_limit", before)

    def test_overdraft_limit_allows_a_bounded_overdraft(self, client, books):
        merchant = open_account(client, "liability", code="merchant_available:M", overdraft_limit=500)
        account = client.get(f"/v1/ledger/accounts/{merchant}").json()
        assert account["overdraft_limit"] == 500
        assert account["flags"]["debits_must_not_exceed_credits"] is True
        assert transfer(client, books.bank, merchant, 1000).status_code == 201
        assert transfer(client, merchant, books.bank, 1300).status_code == 201
        assert balance(client, merchant)["posted"] == -300
        assert transfer(client, merchant, books.bank, 200).status_code == 201
        assert balance(client, merchant)["posted"] == -500
        before = balances(client, merchant, books.bank)
        assert_refused_without_trace(
            client, transfer(client, merchant, books.bank, 1), 409, "insufficient_funds", before
        )
        assert_verified(client)

    def test_reserved_amounts_count_against_the_limit(self, client, books):
        assert transfer(client, books.wallet, books.merchant, 8000, pending=True).status_code == 201
        assert balance(client, books.wallet)["available"] == 2000
        before = balances(client, books.wallet, books.merchant)
        assert_refused_without_trace(
            client,
            transfer(client, books.wallet, books.merchant, 2001),
            409,
            "insufficient_funds",
            before,
        )
        assert transfer(client, books.wallet, books.merchant, 2000).status_code == 201


# ---------------------------------------------------------------- idempotency


class TestIdempotency:
    def test_same_id_and_fields_replays_with_200_and_moves_nothing(self, client, books):
        body = transfer_body(books.wallet, books.merchant, 2500, id="order-42-payment", metadata={"order": 42})
        first = client.post("/v1/ledger/transfers", json=body)
        assert first.status_code == 201
        after_first = balances(client, books.wallet, books.merchant)
        again = client.post("/v1/ledger/transfers", json=body)
        assert again.status_code == 200
        assert again.json() == first.json()
        assert balances(client, books.wallet, books.merchant) == after_first
        assert after_first[books.wallet]["posted"] == 7500
        assert assert_verified(client)["entries_checked"] == 2

    def test_same_id_in_a_batch_reports_exists(self, client, books):
        twice = transfer_body(books.wallet, books.merchant, 300, id="order-41-payment")
        response = client.post("/v1/ledger/transfers", json={"transfers": [twice, twice]})
        assert [r["status"] for r in response.json()["results"]] == ["created", "exists"]
        body = transfer_body(books.wallet, books.merchant, 2500, id="order-42-payment")
        client.post("/v1/ledger/transfers", json=body)
        after_first = balances(client, books.wallet, books.merchant)
        response = client.post(
            "/v1/ledger/transfers",
            json={
                "transfers": [
                    body,
                    transfer_body(books.wallet, books.merchant, 100, id="order-43-payment"),
                ]
            },
        )
        assert response.status_code == 200
        assert [(r["id"], r["status"]) for r in response.json()["results"]] == [
            ("order-42-payment", "exists"),
            ("order-43-payment", "created"),
        ]
        assert balance(client, books.wallet)["posted"] == after_first[books.wallet]["posted"] - 100
        assert balance(client, books.merchant)["posted"] == 300 + 2500 + 100  # each written once

    def test_same_id_with_other_fields_is_409(self, client, books):
        body = transfer_body(books.wallet, books.merchant, 2500, id="order-42-payment", metadata={"order": 42})
        client.post("/v1/ledger/transfers", json=body)
        before = balances(client, books.wallet, books.merchant, books.bank)
        changes = [
            {"amount": 2501},
            {"amount": 2499},
            {"credit_account_id": books.bank},
            {"currency": "USD"},
            {"metadata": {"order": 43}},
            {"metadata": None},
            {"reference": "other"},
            {"code": "refund"},
            {"pending": True},
        ]
        for change in changes:
            response = client.post("/v1/ledger/transfers", json={**body, **change})
            assert_refused_without_trace(client, response, 409, "transfer_exists_with_different_fields", before)
        assert client.get("/v1/ledger/transfers/order-42-payment").json()["amount"] == 2500

    def test_replay_succeeds_even_when_the_funds_are_gone_since(self, client, books):
        body = transfer_body(books.wallet, books.merchant, 6000, id="p-1")
        assert client.post("/v1/ledger/transfers", json=body).status_code == 201
        assert transfer(client, books.wallet, books.merchant, 4000).status_code == 201
        assert client.post("/v1/ledger/transfers", json=body).status_code == 200
        assert balance(client, books.wallet)["posted"] == 0

    def test_without_an_id_two_identical_requests_are_two_transfers(self, client, books):
        first = transfer(client, books.wallet, books.merchant, 100)
        second = transfer(client, books.wallet, books.merchant, 100)
        assert (first.status_code, second.status_code) == (201, 201)
        assert first.json()["id"] != second.json()["id"]
        assert balance(client, books.merchant)["posted"] == 200

    def test_a_replay_that_raced_the_first_request_is_200_not_500(self, http, engine, backend):
        bank = open_account(http, "asset", code="bank:B")
        merchant = open_account(http, "liability", code="merchant_pending:M")
        body = transfer_body(bank, merchant, 2500, id="order-42-payment")
        entry = service.EntryRequest.transfer(bank, merchant, 2500, "CNY", id="order-42-payment")
        second = race_behind_an_open_write(
            engine,
            backend,
            lambda session: service.create_transfer(session, entry),
            lambda: http.post("/v1/ledger/transfers", json=body),
        )
        assert second.status_code == 200, second.text
        assert second.json()["id"] == "order-42-payment"
        assert balance(http, merchant)["posted"] == 2500
        assert_verified(http)

    def test_idempotency_key_header_replays_the_first_response(self, client, books):
        body = transfer_body(books.wallet, books.merchant, 100)
        headers = {"Idempotency-Key": "retry-7f3a"}
        first = client.post("/v1/ledger/transfers", json=body, headers=headers)
        assert first.status_code == 201
        again = client.post("/v1/ledger/transfers", json=body, headers=headers)
        assert again.status_code == 201
        assert again.headers.get("Idempotent-Replayed") == "true"
        assert again.json() == first.json()
        assert balance(client, books.merchant)["posted"] == 100
        before = balances(client, books.wallet, books.merchant)
        other = transfer_body(books.wallet, books.merchant, 101)
        reused = client.post("/v1/ledger/transfers", json=other, headers=headers)
        assert_refused_without_trace(client, reused, 409, "idempotency_key_reused", before)


# ---------------------------------------------------------------- history


T0 = datetime(2031, 3, 1, 9, 0, 0, tzinfo=UTC)


def rfc3339(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class TestBalancesAsOf:
    def test_balance_as_of_a_past_time_sees_only_what_was_written_by_then(self, client):
        with clock.frozen(T0) as frozen:
            bank = open_account(client, "asset", code="bank:B")
            merchant = open_account(client, "liability", code="merchant_pending:M")
            t1 = frozen.tick(minutes=1)
            transfer(client, bank, merchant, 1000)
            t2 = frozen.tick(minutes=1)
            transfer(client, bank, merchant, 250)
            t3 = frozen.tick(minutes=1)
            transfer(client, bank, merchant, 40, pending=True)
            frozen.tick(minutes=1)
            assert balance(client, merchant, as_of=rfc3339(t1 - timedelta(microseconds=1)))["posted"] == 0
            assert balance(client, merchant, as_of=rfc3339(t1))["posted"] == 1000
            assert balance(client, merchant, as_of=rfc3339(t2 - timedelta(seconds=1)))["posted"] == 1000
            assert balance(client, merchant, as_of=rfc3339(t2))["posted"] == 1250
            at_t2 = balance(client, merchant, as_of=rfc3339(t2))
            assert (at_t2["credits_pending"], at_t2["available"]) == (0, 1250)
            at_t3 = balance(client, merchant, as_of=rfc3339(t3))
            assert (at_t3["posted"], at_t3["credits_pending"]) == (1250, 40)
            assert balance(client, bank, as_of=rfc3339(t3)) == balance(client, bank)
            at_t3 = balance(client, bank, as_of=rfc3339(t3))
            # an incoming reservation on the asset side does not count until posted
            assert (at_t3["debits_pending"], at_t3["available"]) == (40, 1250)

    def test_as_of_with_an_offset_means_the_same_instant(self, client):
        with clock.frozen(T0) as frozen:
            bank = open_account(client, "asset", code="bank:B")
            merchant = open_account(client, "liability", code="merchant_pending:M")
            t1 = frozen.tick(minutes=1)
            transfer(client, bank, merchant, 1000)
            beijing = (t1 - timedelta(seconds=1)).astimezone(ZoneInfo("Asia/Shanghai"))
            response = client.get(f"/v1/ledger/accounts/{merchant}/balance", params={"as_of": beijing.isoformat()})
            assert response.status_code == 200
            assert response.json()["posted"] == 0
            assert response.json()["as_of"] == rfc3339(t1 - timedelta(seconds=1))

    def test_as_of_without_a_time_zone_or_not_a_time_is_422_naming_the_parameter(self, client, books):
        for path in ("balance", "entries"):
            for as_of in ("2031-03-01T09:00:00", "yesterday"):
                response = client.get(f"/v1/ledger/accounts/{books.wallet}/{path}", params={"as_of": as_of})
                body = assert_problem(response, 422, "validation_error")
                assert body["errors"][0]["loc"] == ["query", "as_of"], (path, as_of)


class TestEntriesHistory:
    def test_history_lists_every_posting_oldest_first_and_sums_to_the_balance(self, client, books):
        transfer(client, books.wallet, books.merchant, 1500)
        transfer(client, books.merchant, books.wallet, 500)
        response = client.get(f"/v1/ledger/accounts/{books.wallet}/entries")
        assert response.status_code == 200
        page = response.json()
        assert (page["has_more"], page["next_cursor"]) == (False, None)
        assert [(e["direction"], e["kind"], e["amount"]) for e in page["data"]] == [
            ("credit", "posted", 10000),
            ("debit", "posted", 1500),
            ("credit", "posted", 500),
        ]
        seqs = [e["seq"] for e in page["data"]]
        assert seqs == sorted(seqs)
        signed = sum(e["amount"] if e["direction"] == "credit" else -e["amount"] for e in page["data"])
        assert signed == balance(client, books.wallet)["posted"] == 9000

    def test_history_as_of_stops_at_that_time(self, client):
        with clock.frozen(T0) as frozen:
            bank = open_account(client, "asset", code="bank:B")
            merchant = open_account(client, "liability", code="merchant_pending:M")
            frozen.tick(minutes=1)
            transfer(client, bank, merchant, 1000, reference="first")
            t2 = frozen.tick(minutes=1)
            transfer(client, bank, merchant, 250, reference="second")
            response = client.get(
                f"/v1/ledger/accounts/{merchant}/entries",
                params={"as_of": rfc3339(t2 - timedelta(microseconds=1))},
            )
            assert [e["reference"] for e in response.json()["data"]] == ["first"]
            assert response.json()["data"][0]["created_at"] == rfc3339(T0 + timedelta(minutes=1))

    def test_history_of_a_pending_transfer_shows_the_reservation_and_its_release(self, client, books):
        held = transfer(client, books.wallet, books.merchant, 300, pending=True).json()
        client.post(f"/v1/ledger/transfers/{held['id']}/post")
        lines = client.get(f"/v1/ledger/accounts/{books.merchant}/entries").json()["data"]
        assert [(e["kind"], e["direction"], e["amount"]) for e in lines] == [
            ("pending", "credit", 300),
            ("release", "credit", 300),
            ("posted", "credit", 300),
        ]
        assert lines[0]["transfer_id"] == held["id"]


class TestPagination:
    def test_entries_page_through_with_cursors_without_gaps_or_repeats(self, client, books):
        for amount in (1, 2, 3, 4):
            transfer(client, books.wallet, books.merchant, amount)
        seen, cursor, pages = [], None, 0
        while True:
            params: dict[str, Any] = {"limit": 2}
            if cursor:
                params["starting_after"] = cursor
            page = client.get(f"/v1/ledger/accounts/{books.merchant}/entries", params=params).json()
            pages += 1
            seen.extend(e["amount"] for e in page["data"])
            if not page["has_more"]:
                assert page["next_cursor"] is None
                break
            assert page["next_cursor"] == page["data"][-1]["cursor"]
            cursor = page["next_cursor"]
        assert seen == [1, 2, 3, 4]
        assert pages == 2

    def test_odd_count_ends_with_a_short_last_page(self, client, books):
        for amount in (1, 2, 3):
            transfer(client, books.wallet, books.merchant, amount)
        first = client.get(f"/v1/ledger/accounts/{books.merchant}/entries", params={"limit": 2}).json()
        assert ([e["amount"] for e in first["data"]], first["has_more"]) == ([1, 2], True)
        second = client.get(
            f"/v1/ledger/accounts/{books.merchant}/entries",
            params={"limit": 2, "starting_after": first["next_cursor"]},
        ).json()
        assert (
            [e["amount"] for e in second["data"]],
            second["has_more"],
            second["next_cursor"],
        ) == ([3], False, None)

    def test_cursor_that_this_list_did_not_give_or_a_bad_limit_is_422(self, client, books):
        for cursor in ("garbage", "1:x", "1:2:3"):
            response = client.get(f"/v1/ledger/accounts/{books.wallet}/entries", params={"starting_after": cursor})
            assert_problem(response, 422, "validation_error")
        for path in (f"/v1/ledger/accounts/{books.wallet}/entries", "/v1/ledger/accounts"):
            for limit in (0, 501, -1, "ten"):
                response = client.get(path, params={"limit": limit})
                body = assert_problem(response, 422, "validation_error")
                assert body["errors"][0]["loc"] == ["query", "limit"]

    def test_accounts_page_through_by_id_and_filter_by_owner(self, client):
        ids = sorted(
            open_account(client, "liability", code=f"m{i}", owner_id="mch_a" if i % 2 else "mch_b") for i in range(5)
        )
        first = client.get("/v1/ledger/accounts", params={"limit": 3}).json()
        assert [a["id"] for a in first["data"]] == ids[:3]
        assert (first["has_more"], first["next_cursor"]) == (True, ids[2])
        rest = client.get("/v1/ledger/accounts", params={"limit": 3, "starting_after": first["next_cursor"]}).json()
        assert ([a["id"] for a in rest["data"]], rest["has_more"], rest["next_cursor"]) == (
            ids[3:],
            False,
            None,
        )
        owned = client.get("/v1/ledger/accounts", params={"owner_id": "mch_a"}).json()["data"]
        assert len(owned) == 2 and {a["owner_id"] for a in owned} == {"mch_a"}


# ---------------------------------------------------------------- error shape


class TestProblemDetails:
    def test_every_kind_of_error_is_problem_json(self, client, books):
        cases = [
            (client.get("/v1/ledger/nothing-here"), 404, "not_found"),
            (client.delete(f"/v1/ledger/accounts/{books.wallet}"), 405, "method_not_allowed"),
            (
                client.post(
                    "/v1/ledger/transfers",
                    content=b"{",
                    headers={"content-type": "application/json"},
                ),
                400,
                "malformed_request",
            ),
            (
                client.post(
                    "/v1/ledger/accounts",
                    content=b"{",
                    headers={"content-type": "application/json"},
                ),
                400,
                "malformed_request",
            ),
            (transfer(client, books.wallet, books.merchant, 10**6), 409, "insufficient_funds"),
            (transfer(client, books.wallet, books.merchant, -5), 422, "validation_error"),
            (client.post("/v1/ledger/transfers/tr_nope/void"), 404, "pending_transfer_not_found"),
        ]
        for response, status, code in cases:
            assert_problem(response, status, code)

    def test_validation_errors_list_each_field(self, client, books):
        response = client.post("/v1/ledger/transfers", json={"debit_account_id": books.wallet, "amount": "1"})
        body = assert_problem(response, 422, "validation_error")
        locs = sorted(tuple(e["loc"]) for e in body["errors"])
        assert locs == [("body", "amount"), ("body", "credit_account_id"), ("body", "currency")]
        assert all(e["msg"] and e["type"] for e in body["errors"])


# ---------------------------------------------------------------- real HTTP


class TestOverRealHTTP:
    """The same API through a real uvicorn server and socket."""

    def test_pay_replay_refuse_and_verify_end_to_end(self, http):
        bank = open_account(http, "asset", code="bank:B")
        wallet = open_account(
            http,
            "liability",
            code="customer_wallet:C",
            flags={"debits_must_not_exceed_credits": True},
        )
        merchant = open_account(http, "liability", code="merchant_pending:M")
        assert transfer(http, bank, wallet, 5000).status_code == 201
        pay = transfer_body(wallet, merchant, 1999, id="order-1")
        assert http.post("/v1/ledger/transfers", json=pay).status_code == 201
        assert http.post("/v1/ledger/transfers", json=pay).status_code == 200
        before = balances(http, wallet, merchant)
        assert before[wallet]["posted"] == 3001 and before[merchant]["posted"] == 1999
        assert_refused_without_trace(http, transfer(http, wallet, merchant, 3002), 409, "insufficient_funds", before)
        assert_refused_without_trace(http, transfer(http, wallet, merchant, 1.5), 422, "validation_error", before)
        response = http.post(
            "/v1/ledger/transfers",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        assert_refused_without_trace(http, response, 400, "malformed_request", before)

    def test_concurrent_payments_never_overdraw_a_wallet(self, http):
        bank = open_account(http, "asset", code="bank:B")
        wallet = open_account(
            http,
            "liability",
            code="customer_wallet:C",
            flags={"debits_must_not_exceed_credits": True},
        )
        merchant = open_account(http, "liability", code="merchant_pending:M")
        transfer(http, bank, wallet, 1000)
        with ThreadPoolExecutor(max_workers=8) as pool:
            responses = list(pool.map(lambda _: transfer(http, wallet, merchant, 100), range(16)))
        codes = sorted(r.status_code for r in responses)
        assert codes == [201] * 10 + [409] * 6
        assert {r.json()["code"] for r in responses if r.status_code == 409} == {"insufficient_funds"}
        assert balance(http, wallet)["posted"] == 0
        assert balance(http, merchant)["posted"] == 1000
        assert_verified(http)
