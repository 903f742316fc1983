"""Worked examples: the recipes of docs/accounting.md, posted through the API.

Each test is a textbook exercise: the scenario, the journal entry with its numbers
written out, and every resulting balance in minor units (fen for CNY, cents for USD).
Balances are on each account's normal side: assets and expenses grow with debits;
liabilities, revenue and equity grow with credits.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from types import SimpleNamespace

import pytest

from tests.ledger.support import assert_problem, assert_verified, balances, open_account

CHART = [
    # (name in this file, code in the chart of accounts, type, currency, flags)
    ("clearing", "channel_clearing:card", "asset", "CNY", {}),
    ("bank", "bank:B", "asset", "CNY", {}),
    ("in_transit", "payouts_in_transit", "asset", "CNY", {}),
    ("pending", "merchant_pending:M", "liability", "CNY", {}),
    ("available", "merchant_available:M", "liability", "CNY", {}),
    ("reserve", "merchant_reserve:M", "liability", "CNY", {}),
    ("wallet", "customer_wallet:C", "liability", "CNY", {"debits_must_not_exceed_credits": True}),
    ("suspense", "suspense", "liability", "CNY", {}),
    ("fee", "fee_revenue", "revenue", "CNY", {}),
    ("fx_revenue", "fx_revenue", "revenue", "CNY", {}),
    ("cost", "channel_cost:card", "expense", "CNY", {}),
    ("fx_cny", "fx_position:CNY", "equity", "CNY", {}),
    ("clearing_usd", "channel_clearing:card", "asset", "USD", {}),
    ("fx_usd", "fx_position:USD", "equity", "USD", {}),
]
DEBIT_NORMAL = {"asset", "expense"}


def cents(amount: str) -> int:
    """``"99.62"`` -> 9962: the written amount in minor units, exactly."""
    return int(Decimal(amount).scaleb(2))


@pytest.fixture
def books(client):
    ids = {
        name: open_account(client, type_, currency=currency, code=code, flags=flags)
        for name, code, type_, currency, flags in CHART
    }
    return SimpleNamespace(client=client, **ids)


def post_entry(books, *lines, **fields):
    """One journal entry. Lines are ``("Dr" | "Cr", account name, "99.62"[, currency])``."""
    postings = [
        {
            "account_id": getattr(books, name),
            "direction": {"Dr": "debit", "Cr": "credit"}[side],
            "amount": cents(amount),
            "currency": currency[0] if currency else "CNY",
        }
        for side, name, amount, *currency in lines
    ]
    response = books.client.post("/v1/ledger/transfers", json={"postings": postings, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def all_posted(books):
    """Every account's posted balance on its normal side, by name, from one list call."""
    accounts = books.client.get("/v1/ledger/accounts", params={"limit": 500}).json()["data"]
    by_id = {account["id"]: account["balance"]["posted"] for account in accounts}
    return {name: by_id[getattr(books, name)] for name, *_rest in CHART}


def posted(books, *names):
    """Posted balances on each account's normal side, by name."""
    everything = all_posted(books)
    return {name: everything[name] for name in names}


def assert_trial_balance(books):
    """Per currency, the debit-normal balances equal the credit-normal balances."""
    everything = all_posted(books)
    totals: dict[str, list[int]] = {}
    for name, _code, type_, currency, _flags in CHART:
        side = 0 if type_ in DEBIT_NORMAL else 1
        totals.setdefault(currency, [0, 0])[side] += everything[name]
    for currency, (debit_side, credit_side) in totals.items():
        assert debit_side == credit_side, f"{currency}: {debit_side} != {credit_side}"
    assert_verified(books.client)


def card_payment(books):
    """Recipe 1: Merchant M sells CNY 100.00 by card. Fee 0.6%, channel cost 0.38%.

    Dr channel_clearing:card 99.62, Dr channel_cost:card 0.38,
    Cr merchant_pending:M 99.40, Cr fee_revenue 0.60.
    """
    return post_entry(
        books,
        ("Dr", "clearing", "99.62"),
        ("Dr", "cost", "0.38"),
        ("Cr", "pending", "99.40"),
        ("Cr", "fee", "0.60"),
        code="payment",
        reference="pay_M_order_1001",
    )


class TestCardPayment:
    def test_the_numbers_of_recipe_1_follow_from_the_rates(self):
        price = Decimal("100.00")
        fee = (price * Decimal("0.006")).quantize(Decimal("0.01"), ROUND_HALF_UP)
        channel_cost = (price * Decimal("0.0038")).quantize(Decimal("0.01"), ROUND_HALF_UP)
        assert (fee, channel_cost) == (Decimal("0.60"), Decimal("0.38"))
        assert price - channel_cost == Decimal("99.62")  # what the channel will pay us
        assert price - fee == Decimal("99.40")  # what we owe M
        assert cents("99.62") + cents("0.38") == cents("99.40") + cents("0.60") == 10000

    def test_merchant_sells_100_by_card_fee_0_6_percent_channel_cost_0_38_percent(self, books):
        entry = card_payment(books)
        assert [(p["direction"], p["amount"]) for p in entry["postings"]] == [
            ("debit", 9962),
            ("debit", 38),
            ("credit", 9940),
            ("credit", 60),
        ]
        assert entry["amount"] == 10000  # debits 100.00 = credits 100.00
        assert posted(books, "clearing", "cost", "pending", "fee") == {
            "clearing": 9962,
            "cost": 38,
            "pending": 9940,
            "fee": 60,
        }
        assert_trial_balance(books)


class TestPartialRefund:
    def test_partial_refund_of_30_returns_fees_proportionally_and_merchant_bears_channel_fee(
        self, books
    ):
        card_payment(books)
        # Refund 30.00 of 100.00: the fee comes back in proportion, 0.60 x 30% = 0.18.
        #   Dr merchant_pending:M 29.82, Dr fee_revenue 0.18, Cr channel_clearing:card 30.00
        post_entry(
            books,
            ("Dr", "pending", "29.82"),
            ("Dr", "fee", "0.18"),
            ("Cr", "clearing", "30.00"),
            code="refund",
        )
        # The channel keeps its refund fee of 0.11; this plan makes the merchant bear it.
        #   Dr merchant_pending:M 0.11, Cr fee_revenue 0.11
        post_entry(books, ("Dr", "pending", "0.11"), ("Cr", "fee", "0.11"), code="refund_fee")
        assert posted(books, "clearing", "cost", "pending", "fee") == {
            "clearing": 9962 - 3000,  # 69.62 still to come from the channel
            "cost": 38,
            "pending": 9940 - 2982 - 11,  # 69.47 owed to M
            "fee": 60 - 18 + 11,  # 0.53 earned
        }
        assert_trial_balance(books)

    def test_when_the_platform_bears_the_channel_refund_fee_nothing_more_is_posted(self, books):
        card_payment(books)
        post_entry(
            books, ("Dr", "pending", "29.82"), ("Dr", "fee", "0.18"), ("Cr", "clearing", "30.00")
        )
        assert posted(books, "clearing", "pending", "fee") == {
            "clearing": 6962,
            "pending": 6958,
            "fee": 42,
        }
        assert_trial_balance(books)

    def test_a_refund_that_does_not_balance_is_refused_and_leaves_no_trace(self, books):
        card_payment(books)
        before = balances(books.client, books.pending, books.fee, books.clearing)
        response = books.client.post(
            "/v1/ledger/transfers",
            json={
                "postings": [
                    {
                        "account_id": books.pending,
                        "direction": "debit",
                        "amount": 2982,
                        "currency": "CNY",
                    },
                    {
                        "account_id": books.fee,
                        "direction": "debit",
                        "amount": 17,
                        "currency": "CNY",
                    },
                    {
                        "account_id": books.clearing,
                        "direction": "credit",
                        "amount": 3000,
                        "currency": "CNY",
                    },
                ]
            },
        )
        assert_problem(response, 422, "entry_not_balanced")
        assert balances(books.client, books.pending, books.fee, books.clearing) == before


class TestSettlementWithReserve:
    def test_channel_pays_us_and_clearing_returns_to_what_is_in_flight(self, books):
        card_payment(books)
        # Recipe 4, seen on the bank statement: Dr bank:B 99.62, Cr channel_clearing:card 99.62
        post_entry(books, ("Dr", "bank", "99.62"), ("Cr", "clearing", "99.62"))
        assert posted(books, "bank", "clearing") == {"bank": 9962, "clearing": 0}
        assert_trial_balance(books)

    def test_settlement_with_10_percent_reserve_then_release(self, books):
        card_payment(books)
        # Recipe 5: reserve 10% of 99.40 = 9.94; available 99.40 - 9.94 = 89.46.
        #   Dr merchant_pending:M 99.40, Cr merchant_available:M 89.46, Cr merchant_reserve:M 9.94
        assert Decimal("99.40") * Decimal("0.10") == Decimal("9.94")
        post_entry(
            books,
            ("Dr", "pending", "99.40"),
            ("Cr", "available", "89.46"),
            ("Cr", "reserve", "9.94"),
            code="settlement",
        )
        owed = posted(books, "pending", "available", "reserve")
        assert owed == {"pending": 0, "available": 8946, "reserve": 994}
        assert sum(owed.values()) == 9940  # what we owe M did not change, only where it sits
        # Release later: Dr merchant_reserve:M 9.94, Cr merchant_available:M 9.94
        post_entry(books, ("Dr", "reserve", "9.94"), ("Cr", "available", "9.94"), code="release")
        assert posted(books, "pending", "available", "reserve") == {
            "pending": 0,
            "available": 9940,
            "reserve": 0,
        }
        assert_trial_balance(books)


class TestPayout:
    def settle(self, books):
        card_payment(books)
        post_entry(books, ("Dr", "bank", "99.62"), ("Cr", "clearing", "99.62"))
        post_entry(
            books,
            ("Dr", "pending", "99.40"),
            ("Cr", "available", "89.46"),
            ("Cr", "reserve", "9.94"),
        )

    def test_payout_of_89_46_leaves_the_bank_with_reserve_plus_margin(self, books):
        self.settle(books)
        # Recipe 6: Dr merchant_available:M 89.46, Cr payouts_in_transit 89.46
        post_entry(
            books, ("Dr", "available", "89.46"), ("Cr", "in_transit", "89.46"), code="payout"
        )
        assert posted(books, "available", "in_transit") == {"available": 0, "in_transit": -8946}
        # The bank confirms: Dr payouts_in_transit 89.46, Cr bank:B 89.46
        post_entry(
            books, ("Dr", "in_transit", "89.46"), ("Cr", "bank", "89.46"), code="payout_paid"
        )
        assert posted(books, "bank", "in_transit", "available", "reserve", "fee", "cost") == {
            "bank": 9962 - 8946,  # 10.16 left at the bank ...
            "in_transit": 0,
            "available": 0,
            "reserve": 994,  # ... = 9.94 still held for M
            "fee": 60,  #     + 0.60 our fee
            "cost": 38,  #    - 0.38 the channel's cost
        }
        assert 994 + 60 - 38 == 1016
        assert_trial_balance(books)

    def test_a_returned_payout_reverses_both_steps(self, books):
        self.settle(books)
        post_entry(books, ("Dr", "available", "89.46"), ("Cr", "in_transit", "89.46"))
        post_entry(books, ("Dr", "in_transit", "89.46"), ("Cr", "bank", "89.46"))
        # The bank returns it (account closed): reverse the confirmation, then the payout.
        post_entry(
            books,
            ("Dr", "bank", "89.46"),
            ("Cr", "in_transit", "89.46"),
            code="payout_returned",
            metadata={"reason": "beneficiary account closed"},
        )
        post_entry(
            books,
            ("Dr", "in_transit", "89.46"),
            ("Cr", "available", "89.46"),
            code="payout_returned",
        )
        assert posted(books, "bank", "in_transit", "available") == {
            "bank": 9962,
            "in_transit": 0,
            "available": 8946,
        }
        assert_trial_balance(books)


class TestWallet:
    def top_up_and_pay(self, books):
        # Recipe 7: top-up of 100.00 by card:
        #   Dr channel_clearing:card 99.62, Dr channel_cost:card 0.38, Cr customer_wallet:C 100.00
        post_entry(
            books,
            ("Dr", "clearing", "99.62"),
            ("Dr", "cost", "0.38"),
            ("Cr", "wallet", "100.00"),
            code="wallet_top_up",
        )
        # Paying M 50.00 from the wallet (fee 0.6% = 0.30):
        #   Dr customer_wallet:C 50.00, Cr merchant_pending:M 49.70, Cr fee_revenue 0.30
        post_entry(
            books,
            ("Dr", "wallet", "50.00"),
            ("Cr", "pending", "49.70"),
            ("Cr", "fee", "0.30"),
            code="wallet_payment",
        )

    def test_top_up_100_then_pay_merchant_50(self, books):
        self.top_up_and_pay(books)
        assert posted(books, "clearing", "cost", "wallet", "pending", "fee") == {
            "clearing": 9962,
            "cost": 38,
            "wallet": 5000,
            "pending": 4970,
            "fee": 30,
        }
        assert_trial_balance(books)

    def test_the_wallet_never_goes_below_zero(self, books):
        self.top_up_and_pay(books)
        before = balances(books.client, books.wallet, books.pending, books.fee)
        response = books.client.post(
            "/v1/ledger/transfers",
            json={
                "postings": [
                    {
                        "account_id": books.wallet,
                        "direction": "debit",
                        "amount": 5001,
                        "currency": "CNY",
                    },
                    {
                        "account_id": books.pending,
                        "direction": "credit",
                        "amount": 4971,
                        "currency": "CNY",
                    },
                    {
                        "account_id": books.fee,
                        "direction": "credit",
                        "amount": 30,
                        "currency": "CNY",
                    },
                ]
            },
        )
        assert_problem(response, 409, "insufficient_funds")
        assert balances(books.client, books.wallet, books.pending, books.fee) == before
        # exactly the 50.00 left is fine
        post_entry(
            books, ("Dr", "wallet", "50.00"), ("Cr", "pending", "49.70"), ("Cr", "fee", "0.30")
        )
        assert posted(books, "wallet") == {"wallet": 0}


class TestLostDispute:
    def test_lost_dispute_of_100_with_15_fee_can_leave_the_merchant_owing_us(self, books):
        card_payment(books)
        post_entry(
            books,
            ("Dr", "pending", "99.40"),
            ("Cr", "available", "89.46"),
            ("Cr", "reserve", "9.94"),
        )
        # Recipe 8: Dr merchant_available:M 115.00, Cr channel_clearing:card 100.00,
        #           Cr fee_revenue 15.00
        post_entry(
            books,
            ("Dr", "available", "115.00"),
            ("Cr", "clearing", "100.00"),
            ("Cr", "fee", "15.00"),
            code="dispute_lost",
        )
        assert posted(books, "available", "reserve", "clearing", "fee") == {
            "available": 8946 - 11500,  # -25.54: a receivable from M, to be reported
            "reserve": 994,
            "clearing": 9962 - 10000,
            "fee": 60 + 1500,
        }
        assert_trial_balance(books)


class TestUnexplainedBankCredit:
    def test_money_parks_in_suspense_until_explained(self, books):
        # Recipe 9: a bank credit of 250.00 nobody expected: Dr bank:B 250.00, Cr suspense 250.00
        post_entry(books, ("Dr", "bank", "250.00"), ("Cr", "suspense", "250.00"), code="unmatched")
        assert posted(books, "bank", "suspense") == {"bank": 25000, "suspense": 25000}
        # Reconciliation finds it was the channel settling card payments: move it there.
        post_entry(books, ("Dr", "suspense", "250.00"), ("Cr", "clearing", "250.00"))
        assert posted(books, "bank", "suspense", "clearing") == {
            "bank": 25000,
            "suspense": 0,
            "clearing": -25000,
        }
        assert_trial_balance(books)


class TestFX:
    def test_customer_pays_usd_10_merchant_settles_in_cny_at_7_1_with_0_7_percent_spread(
        self, books
    ):
        # Recipe 10: 10.00 USD x 7.1000 = 71.00 CNY; spread 0.7% x 71.00 = 0.497 -> 0.50
        # (half up, to the fen); M gets 71.00 - 0.50 = 70.50.
        cny = (Decimal("10.00") * Decimal("7.1000")).quantize(Decimal("0.01"), ROUND_HALF_UP)
        spread = (cny * Decimal("0.007")).quantize(Decimal("0.01"), ROUND_HALF_UP)
        assert (cny, spread, cny - spread) == (Decimal("71.00"), Decimal("0.50"), Decimal("70.50"))
        # One entry, two currencies, each balancing on its own:
        #   USD: Dr channel_clearing:card 10.00, Cr fx_position:USD 10.00
        #   CNY: Dr fx_position:CNY 71.00, Cr merchant_pending:M 70.50, Cr fx_revenue 0.50
        entry = post_entry(
            books,
            ("Dr", "clearing_usd", "10.00", "USD"),
            ("Cr", "fx_usd", "10.00", "USD"),
            ("Dr", "fx_cny", "71.00"),
            ("Cr", "pending", "70.50"),
            ("Cr", "fx_revenue", "0.50"),
            code="fx_payment",
            metadata={"rate": "7.1000", "spread": "0.007"},
        )
        assert [(p["currency"], p["direction"], p["amount"]) for p in entry["postings"]] == [
            ("USD", "debit", 1000),
            ("USD", "credit", 1000),
            ("CNY", "debit", 7100),
            ("CNY", "credit", 7050),
            ("CNY", "credit", 50),
        ]
        assert posted(books, "clearing_usd", "fx_usd") == {"clearing_usd": 1000, "fx_usd": 1000}
        assert posted(books, "fx_cny", "pending", "fx_revenue") == {
            "fx_cny": -7100,  # the platform is short 71.00 CNY and long 10.00 USD
            "pending": 7050,
            "fx_revenue": 50,
        }
        assert_trial_balance(books)

    def test_an_fx_entry_must_balance_in_each_currency_not_in_total(self, books):
        names = ("clearing_usd", "fx_usd", "fx_cny", "pending", "fx_revenue")
        before = balances(books.client, *(getattr(books, n) for n in names))
        unbalanced = [
            # 10.00 USD against 10.00 CNY: equal numbers, different money
            [("debit", "clearing_usd", 1000, "USD"), ("credit", "pending", 1000, "CNY")],
            # CNY short by one fen, USD fine
            [
                ("debit", "clearing_usd", 1000, "USD"),
                ("credit", "fx_usd", 1000, "USD"),
                ("debit", "fx_cny", 7100, "CNY"),
                ("credit", "pending", 7050, "CNY"),
                ("credit", "fx_revenue", 49, "CNY"),
            ],
        ]
        for legs in unbalanced:
            response = books.client.post(
                "/v1/ledger/transfers",
                json={
                    "postings": [
                        {
                            "account_id": getattr(books, name),
                            "direction": direction,
                            "amount": amount,
                            "currency": currency,
                        }
                        for direction, name, amount, currency in legs
                    ]
                },
            )
            assert_problem(response, 422, "entry_not_balanced")
        assert balances(books.client, *(getattr(books, n) for n in names)) == before
        assert_verified(books.client)
