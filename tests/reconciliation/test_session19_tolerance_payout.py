"""Recipe 4 for pairs matched within a tolerance, through the HTTP API on SQLite and PostgreSQL.

A bank line paired with one of ours within the channel's amount or fee tolerance is ``matched``: no case. The
bank booked a little more or less than ``channel_clearing:C`` held for the sale. The payout entry takes what the
clearing account held and books the difference as the channel's charge (``channel_cost:C``), so after the import
the clearing account holds nothing of a line that was paid, and ``bank:<account>`` rises by what the bank booked
(docs/accounting.md recipe 4, docs/reconciliation.md "The channel pays us").
"""

from __future__ import annotations

from typing import Any

import pytest

from clearhouse.ledger.chart import account_id
from tests.payments.support import ledger_verifies
from tests.reconciliation.formats.test_session12_formats import camt_entry
from tests.reconciliation.support import class_counts, sales_at_noon
from tests.reconciliation.test_api import CHANNEL
from tests.reconciliation.test_session13 import _rules
from tests.reconciliation.test_session17_channel_payout import (
    BANK_ACCOUNT,
    CLEARING,
    _camt,
    _charged,
    _clearing_row,
    _import,
    _major,
    _net,
    _payout,
    _posted,
)

COST = f"channel_cost:{CHANNEL}"


def _booked(row: Any, booked: int, charges: int | None = None) -> str:
    """A camt.053 credit naming ``row``'s channel id that booked ``booked``; with ``charges``, included in it."""
    if charges is None:
        return camt_entry(_major(booked), row.external_id, currency="CNY")
    return _charged(row).replace(f">{_major(_net(row))}</Amt>", f">{_major(booked)}</Amt>", 1).replace(
        f">{_major(row.channel_cost)}</Amt>", f">{_major(charges)}</Amt>", 1)


def _legs(client: Any, entry_id: str) -> dict[str, tuple[str, int]]:
    """An entry's postings by account name: (direction, amount)."""
    answer = client.get(f"/v1/ledger/transfers/{entry_id}")
    assert answer.status_code == 200, answer.text
    names = {account_id(name, "CNY"): name for name in (BANK_ACCOUNT, CLEARING, COST, "suspense")}
    return {names[leg["account_id"]]: (leg["direction"], leg["amount"]) for leg in answer.json()["postings"]}


@pytest.fixture
def sales(app, client, merchant_client_factory) -> list[Any]:
    """Three card sales at noon of the statement's day; 5 of amount and 1 of fee tolerated."""
    _rules(client, timing_cutoff_minutes=0, amount_tolerance_minor=5, fee_tolerance_minor=1)
    shop, _merchant_id = merchant_client_factory("Tolerant shop")
    return sales_at_noon(app, shop, [10_000, 10_100, 10_200])


class TestPairsMatchedWithinATolerance:
    def test_the_clearing_account_gives_up_what_it_held_and_the_difference_is_the_channels_charge(
            self, app, client, sales):
        clearing_before, cost_before = _posted(client, CLEARING), _posted(client, COST)
        assert clearing_before == sum(_net(row) for row in sales)
        entries = [
            _booked(sales[0], _net(sales[0]) - 3, charges=sales[0].channel_cost),  # amount 3 short
            _booked(sales[1], _net(sales[1]) - 1, charges=sales[1].channel_cost + 1),  # the fee 1 more
            _booked(sales[2], _net(sales[2]) + 2),  # no fee stated: 2 over our net
        ]
        banked = sum(_net(row) for row in sales) - 3 - 1 + 2
        run = _import(client, _camt(entries, banked))
        assert class_counts(run) == {"matched": 3} and run["case_count"] == 0, run

        assert _posted(client, CLEARING) == 0  # nothing of a paid sale is left in flight
        assert _posted(client, BANK_ACCOUNT) == banked  # what the bank booked
        assert _posted(client, COST) == cost_before + 2  # 3 + 1 short, 2 over
        entry_id = f"tr_rcb_{run['id']}_1"
        assert _legs(client, entry_id) == {BANK_ACCOUNT: ("debit", banked), CLEARING: ("credit", clearing_before),
                                           COST: ("debit", 2)}
        payout = _payout(client, run["id"]).json()
        assert payout["code"] == "channel_payout"
        assert payout["metadata"] == {"reconciliation_id": run["id"], "channel": CHANNEL, "account": BANK_ACCOUNT,
                                      "lines": 3, "tolerance_difference": -2}

        row = _clearing_row(client)
        assert (row["received"], row["clearing_balance"]) == (banked, 0)
        ledger_verifies(app)

    def test_a_bank_line_over_our_net_lowers_the_channels_cost(self, app, client, sales):
        cost_before = _posted(client, COST)
        run = _import(client, _camt([_booked(sales[0], _net(sales[0]) + 4)], _net(sales[0]) + 4))
        assert class_counts(run)["matched"] == 1, run
        assert _legs(client, f"tr_rcb_{run['id']}_1") == {
            BANK_ACCOUNT: ("debit", _net(sales[0]) + 4), CLEARING: ("credit", _net(sales[0])), COST: ("credit", 4)}
        assert _posted(client, COST) == cost_before - 4
        assert _posted(client, CLEARING) == sum(_net(row) for row in sales[1:])
        ledger_verifies(app)

    def test_beyond_the_tolerance_it_is_a_case_and_its_delta_waits_in_suspense(self, app, client, sales):
        cost_before = _posted(client, COST)
        run = _import(client, _camt([_booked(sales[0], _net(sales[0]) - 6)], _net(sales[0]) - 6))
        assert class_counts(run)["amount_mismatch"] == 1, run
        payout = _payout(client, run["id"]).json()
        assert "tolerance_difference" not in payout["metadata"] and payout["metadata"]["unexplained"] == -6
        assert _legs(client, payout["id"]) == {BANK_ACCOUNT: ("debit", _net(sales[0]) - 6),
                                               CLEARING: ("credit", _net(sales[0])), "suspense": ("debit", 6)}
        assert _posted(client, COST) == cost_before  # the case's resolution decides where the 6 go
        ledger_verifies(app)
