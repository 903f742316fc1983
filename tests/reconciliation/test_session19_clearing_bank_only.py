"""The daily clearing report of a day that only bank statements reconciled, through the HTTP API.

Bank statements show what arrived, never what the channel owed for the day; with no channel statement of the
day, ``expected`` is read from our own lines of the day (docs/reconciliation.md, "Clearing"). Before, it was 0,
and ``net_position`` said the channel had overpaid by everything it paid.
"""

from __future__ import annotations

from tests.payments.support import ledger_verifies
from tests.reconciliation.test_api import _line
from tests.reconciliation.test_session13 import DAY, _imported
from tests.reconciliation.test_session17_channel_payout import _camt, _charged, _clearing_row, _import, _net, sales

__all__ = ["sales"]  # the fixture, shared


class TestADayOnlyBankStatementsReconciled:
    def test_expected_is_what_our_ledger_booked_that_day(self, app, client, sales):
        owed = sum(_net(row) for row in sales)
        paid = _net(sales[0]) + _net(sales[1])
        _import(client, _camt([_charged(sales[0]), _charged(sales[1])], paid))
        row = _clearing_row(client)
        assert (row["expected"], row["reported"], row["received"]) == (owed, 0, paid)
        assert row["net_position"] == owed - paid == row["clearing_balance"]
        ledger_verifies(app)

    def test_a_channel_statement_of_the_day_still_gives_expected_and_reported(self, app, client, sales):
        owed = sum(_net(row) for row in sales)
        _imported(client, [_line(row, DAY) for row in sales], DAY, "card.csv")
        _import(client, _camt([_charged(sales[0])], _net(sales[0])))
        row = _clearing_row(client)
        assert (row["expected"], row["reported"], row["received"]) == (owed, owed, _net(sales[0]))
        assert row["net_position"] == owed - _net(sales[0])
