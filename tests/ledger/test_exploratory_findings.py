"""Reproductions from an exploratory test of the ledger API: each was a bug (a 500, a value
read differently from what was sent, an error code that leaked Python or depended on the
order of postings) and stays fixed."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from clearhouse.kit import clock
from tests.ledger.support import (
    MAX_AMOUNT,
    assert_problem,
    assert_refused_without_trace,
    assert_verified,
    balance,
    balances,
    open_account,
    transfer,
    transfer_body,
)

ACCOUNTS = "/v1/ledger/accounts"
TRANSFERS = "/v1/ledger/transfers"
T0 = datetime(2031, 3, 1, 9, 0, 0, tzinfo=UTC)
LATER = "2031-03-01T10:00:00Z"


def post_raw(client, path: str, raw: bytes):
    return client.post(path, content=raw, headers={"content-type": "application/json"})


def reserve_and_void(client, postings_or_transfer: dict) -> None:
    held = client.post(TRANSFERS, json={**postings_or_transfer, "pending": True})
    assert held.status_code == 201, held.text
    voided = client.post(f"{TRANSFERS}/{held.json()['id']}/void")
    assert voided.status_code == 200, voided.text


class TestBalanceAsOfPastTwoToThe63:
    """Pending and release totals only grow (every reservation ever made): their sums pass
    2^63-1 long before any running total does, and SQLite's sum() stops at 2^63."""

    def test_two_voided_reservations_of_the_largest_amount_on_transfer_rows(self, client):
        with clock.frozen(T0):
            customer = open_account(client, "liability", code="customer_wallet:C")
            merchant = open_account(client, "liability", code="merchant_pending:M")
            for _ in range(2):
                reserve_and_void(client, transfer_body(customer, merchant, MAX_AMOUNT))
            now = balance(client, customer)
            assert now["debits_pending"] == 0
            assert balance(client, customer, as_of=LATER) == now
            assert balance(client, merchant, as_of=LATER) == balance(client, merchant)
        assert_verified(client)

    def test_two_voided_reservations_of_the_largest_amount_on_posting_rows(self, client):
        with clock.frozen(T0):
            customer = open_account(client, "liability", code="customer_wallet:C")
            merchant = open_account(client, "liability", code="merchant_pending:M")
            fees = open_account(client, "revenue", code="fees")
            entry = {"postings": [
                {"account_id": customer, "direction": "debit", "amount": MAX_AMOUNT, "currency": "CNY"},
                {"account_id": merchant, "direction": "credit", "amount": MAX_AMOUNT - 600, "currency": "CNY"},
                {"account_id": fees, "direction": "credit", "amount": 600, "currency": "CNY"},
            ]}
            for _ in range(2):
                reserve_and_void(client, entry)
            for account in (customer, merchant, fees):
                assert balance(client, account, as_of=LATER) == balance(client, account)

    def test_an_open_reservation_after_them_is_exact_not_rounded(self, client):
        """2^64 - 2 + 3 reserved and 2^64 - 2 released: a float would lose the 3."""
        with clock.frozen(T0) as frozen:
            customer = open_account(client, "liability", code="customer_wallet:C")
            merchant = open_account(client, "liability", code="merchant_pending:M")
            for _ in range(2):
                reserve_and_void(client, transfer_body(customer, merchant, MAX_AMOUNT))
            frozen.tick(seconds=1)
            assert transfer(client, customer, merchant, 3, pending=True).status_code == 201
            assert balance(client, customer, as_of=clock.rfc3339(T0))["debits_pending"] == 0
            assert balance(client, customer, as_of=LATER)["debits_pending"] == 3
            assert balance(client, merchant, as_of=LATER)["credits_pending"] == 3


class TestAsOfIsAnRfc3339Time:
    @pytest.mark.parametrize("as_of", ["1893456000", "0", "-1", "1893456000.5", "1e9", " 1893456000"])
    @pytest.mark.parametrize("path", ["balance", "entries"])
    def test_a_number_is_a_422_on_the_parameter(self, client, path, as_of):
        account = open_account(client, "asset")
        response = client.get(f"{ACCOUNTS}/{account}/{path}", params={"as_of": as_of})
        body = assert_problem(response, 422, "validation_error")
        assert [e["loc"] for e in body["errors"]] == [["query", "as_of"]]

    @pytest.mark.parametrize("as_of", ["2031-03-01", "2031-03-01T09:00Z", "2031-03-01T09:00:00+0800"])
    def test_other_forms_that_are_not_rfc_3339_are_a_422(self, client, as_of):
        account = open_account(client, "asset")
        response = client.get(f"{ACCOUNTS}/{account}/balance", params={"as_of": as_of})
        assert_problem(response, 422, "validation_error")

    @pytest.mark.parametrize("as_of", ["2031-03-01T09:00:00Z", "2031-03-01t09:00:00z",
                                       "2031-03-01 17:00:00+08:00", "2031-03-01T09:00:00.000000001Z"])
    def test_rfc_3339_times_are_read(self, client, as_of):
        account = open_account(client, "asset")
        response = client.get(f"{ACCOUNTS}/{account}/balance", params={"as_of": as_of})
        assert response.status_code == 200, response.text
        assert response.json()["as_of"] == "2031-03-01T09:00:00.000000Z"


class TestValidationErrorLocations:
    def test_a_batch_index_in_loc_is_an_integer(self, client):
        bank = open_account(client, "asset")
        wallet = open_account(client, "liability")
        body = {"transfers": [transfer_body(bank, wallet, 5), transfer_body(bank, wallet, "x")]}
        problem = assert_problem(client.post(TRANSFERS, json=body), 422, "validation_error")
        assert [e["loc"] for e in problem["errors"]] == [["body", "transfers", 1, "amount"]]

    def test_a_list_index_from_the_schema_is_an_integer(self, client):
        bank = open_account(client, "asset")
        body = {"postings": [{"account_id": bank, "direction": "debit", "amount": 5, "currency": "CNY"},
                             {"account_id": bank, "direction": "sideways", "amount": 5, "currency": "CNY"}]}
        problem = assert_problem(client.post(TRANSFERS, json=body), 422, "validation_error")
        assert [e["loc"] for e in problem["errors"]] == [["body", "postings", 1, "direction"]]

    def test_a_numeric_looking_key_stays_a_string(self, client):
        problem = assert_problem(
            client.post(ACCOUNTS, json={"type": "asset", "currency": "CNY", "code": "x", "0": 1}),
            422, "validation_error",
        )
        assert [e["loc"] for e in problem["errors"]] == [["body", "0"]]


class TestAWrongTypeInsideTheBodyIsA422:
    @pytest.mark.parametrize("flags", [None, 5, [], "x"])
    def test_flags_of_the_wrong_type(self, client, flags):
        body = {"type": "asset", "currency": "CNY", "code": "x", "flags": flags}
        problem = assert_problem(client.post(ACCOUNTS, json=body), 422, "validation_error")
        assert [e["loc"] for e in problem["errors"]] == [["body", "flags"]]

    @pytest.mark.parametrize("raw", [b"[]", b"5", b'"x"', b"null"])
    def test_a_body_that_is_not_an_object_is_still_a_400(self, client, raw):
        assert_problem(post_raw(client, ACCOUNTS, raw), 400, "malformed_request")
        assert_problem(post_raw(client, TRANSFERS, raw), 400, "malformed_request")


class TestARepeatedKeyIsRefused:
    def test_a_transfer_naming_its_amount_twice_moves_nothing(self, client):
        bank = open_account(client, "asset")
        wallet = open_account(client, "liability")
        before = balances(client, bank, wallet)
        raw = (f'{{"debit_account_id":"{bank}","credit_account_id":"{wallet}",'
               f'"amount":5,"amount":7,"currency":"CNY"}}').encode()
        problem = assert_refused_without_trace(client, post_raw(client, TRANSFERS, raw), 400,
                                               "malformed_request", before)
        assert '"amount"' in problem["detail"] and "more than once" in problem["detail"]

    def test_a_repeated_key_deep_in_a_batch(self, client):
        bank = open_account(client, "asset")
        wallet = open_account(client, "liability")
        raw = (f'{{"transfers":[{{"debit_account_id":"{bank}","credit_account_id":"{wallet}","amount":5,'
               f'"currency":"CNY","metadata":{{"order":1,"order":2}}}}]}}').encode()
        problem = assert_problem(post_raw(client, TRANSFERS, raw), 400, "malformed_request")
        assert '"order"' in problem["detail"]

    def test_the_same_key_in_two_objects_is_fine(self, client):
        bank = open_account(client, "asset")
        wallet = open_account(client, "liability")
        raw = (f'{{"debit_account_id":"{bank}","credit_account_id":"{wallet}","amount":5,"currency":"CNY",'
               f'"metadata":{{"amount":1}}}}').encode()
        assert post_raw(client, TRANSFERS, raw).status_code == 201

    def test_bodies_read_by_the_framework_refuse_it_too(self, client):
        raw = b'{"type":"asset","currency":"CNY","code":"x","code":"y"}'
        problem = assert_problem(post_raw(client, ACCOUNTS, raw), 400, "malformed_request")
        assert '"code"' in problem["detail"]
        bank = open_account(client, "asset")
        wallet = open_account(client, "liability")
        held = transfer(client, bank, wallet, 10, pending=True).json()["id"]
        response = post_raw(client, f"{TRANSFERS}/{held}/post", b'{"amount":5,"amount":7}')
        assert_problem(response, 400, "malformed_request")
        assert client.get(f"{TRANSFERS}/{held}").json()["status"] == "pending"


class TestANumberWithTooManyDigits:
    HUGE = b"1" + b"0" * 4999

    @pytest.mark.parametrize("path", [TRANSFERS, ACCOUNTS])
    def test_is_a_clean_400(self, client, path):
        raw = b'{"debit_account_id":"a","credit_account_id":"b","amount":' + self.HUGE + b',"currency":"CNY"}'
        if path == ACCOUNTS:
            raw = b'{"type":"asset","currency":"CNY","code":"x","overdraft_limit":' + self.HUGE + b"}"
        response = post_raw(client, path, raw)
        problem = assert_problem(response, 400, "malformed_request")
        assert problem["detail"] == "a number in the body has too many digits"
        for leaked in ("4300", "sys.", "set_int_max_str_digits", "integer string conversion"):
            assert leaked not in response.text

    def test_nan_still_says_what_is_wrong(self, client):
        problem = assert_problem(post_raw(client, TRANSFERS, b'{"amount": NaN}'), 400, "malformed_request")
        assert "NaN" in problem["detail"]


class TestAnUnknownAccountIsReportedWhateverThePostingOrder:
    @pytest.fixture
    def closed_and_open(self, client):
        closed = open_account(client, "liability", code="closed")
        assert client.post(f"{ACCOUNTS}/{closed}/close").status_code == 200
        return closed, open_account(client, "asset", code="open")

    def test_closed_debit_and_unknown_credit(self, client, closed_and_open):
        closed, _open = closed_and_open
        assert_problem(transfer(client, closed, "acct_nobody", 5), 422, "account_not_found")

    def test_unknown_debit_and_closed_credit(self, client, closed_and_open):
        closed, _open = closed_and_open
        assert_problem(transfer(client, "acct_nobody", closed, 5), 422, "account_not_found")

    def test_in_a_multi_leg_entry_and_a_batch(self, client, closed_and_open):
        closed, open_ = closed_and_open
        entry = {"postings": [
            {"account_id": closed, "direction": "debit", "amount": 5, "currency": "CNY"},
            {"account_id": open_, "direction": "credit", "amount": 2, "currency": "CNY"},
            {"account_id": "acct_nobody", "direction": "credit", "amount": 3, "currency": "CNY"},
        ]}
        assert_problem(client.post(TRANSFERS, json=entry), 422, "account_not_found")
        batch = client.post(TRANSFERS, json={"transfers": [transfer_body(closed, "acct_nobody", 5), entry]})
        assert [r["code"] for r in batch.json()["results"]] == ["account_not_found", "account_not_found"]

    def test_a_currency_mismatch_is_reported_before_a_closed_account(self, client, closed_and_open):
        closed, _open = closed_and_open
        usd = open_account(client, "asset", currency="USD")
        for debit, credit in ((closed, usd), (usd, closed)):
            assert_problem(transfer(client, debit, credit, 5), 422, "currency_mismatch")
