"""Each line of ours leaves the clearing account once, whatever statements and resolutions come in what order.

Found by the accountant tester (session 19), through the HTTP API on SQLite and PostgreSQL:

1. a bank debit naming one of our sales by its reference (a return carries it) was that sale's pair, so the sale
   counted as paid; money going the other way is no pair, by our reference as by the channel's id;
2. a channel statement's case on a line of ours (a fee the channel reported otherwise), adjusted against the
   clearing account, was never squared with the bank's payment of that line: the payout took our whole net from
   the clearing account as well. The payment now reverses such an entry (or accepts such a case still open),
   and afterwards such a case can only be accepted: the difference is the bank statement's case, in suspense;
3. two bank statements of one day (two pages) each found the same line missing, and both cases could be
   adjusted: the line left the clearing account twice. A second entry for one line's clearing money is refused.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.payments.support import ledger_verifies
from tests.reconciliation.support import cases_of, class_counts
from tests.reconciliation.test_api import _line
from tests.reconciliation.test_session13 import DAY, _imported
from tests.reconciliation.test_session17_bank_net import _eref, _mt940, _mt940_import, sales
from tests.reconciliation.test_session17_channel_payout import BANK_ACCOUNT, CLEARING, _net, _posted
from tests.reconciliation.test_session19_paid_later import _case, _resolve

__all__ = ["sales"]  # the fixture, shared

COST = "channel_cost:sandbox_card"


@pytest.fixture(autouse=True)
def no_second_person(app) -> None:
    app.state.settings = app.state.settings.model_copy(update={"recon_approval_threshold": 1_000_000})


def _case_of(client: Any, run: dict[str, Any], class_: str) -> dict[str, Any]:
    (case,) = [c for c in cases_of(client, run["id"]) if c["class"] == class_]
    return case


class TestMoneyGoingTheOtherWay:
    def test_a_bank_debit_naming_a_sale_is_not_its_payment(self, app, client, sales):
        sale, other = sales
        before = _posted(client, CLEARING)
        run = _mt940_import(client, [(-sale.amount, _eref(sale.reference))])  # a return of the whole sale
        assert class_counts(run) == {"missing_in_ledger": 1, "missing_in_statement": 2}, run
        stray = _case_of(client, run, "missing_in_ledger")
        assert (stray["delta"], stray["our_id"]) == (-sale.amount, None)
        assert "money back: a line of money back is not its pair" not in stray["detail"]
        assert f"names our {sale.reference}, money in: a line of money back is not its pair" in stray["detail"]
        assert _posted(client, CLEARING) == before  # the channel still owes the sale
        assert (_posted(client, BANK_ACCOUNT), _posted(client, "suspense")) == (-sale.amount, -sale.amount)

        # The channel then pays the sale: it is its payment, not a duplicate.
        paid = _mt940([(_net(sale), _eref(sale.reference))], opening=100_000 - sale.amount, number="01790")
        answer = client.post("/v1/reconciliations", files={"file": ("bank2.sta", paid)},
                             data={"channel": "sandbox_card", "format": "mt940", "statement_date": DAY.isoformat()})
        assert answer.status_code == 201, answer.text
        assert class_counts(answer.json())["matched"] == 1, answer.json()
        assert _posted(client, CLEARING) == before - _net(sale)
        ledger_verifies(app)


class TestAChannelStatementsCaseAndTheBanksPayment:
    def test_adjusted_first_its_entry_is_reversed_when_the_bank_pays_and_the_difference_is_posted_once(
            self, app, client, sales):
        sale, other = sales
        cost_before = _posted(client, COST)
        report = _imported(client, [_line(sale, DAY, fee=sale.channel_cost + 380), _line(other, DAY)], DAY, "c.csv")
        fee_case = _case_of(client, report, "fee_mismatch")
        assert fee_case["delta"] == -380
        assert _resolve(client, fee_case["id"], "adjust", account="channel_cost").status_code == 200
        assert _posted(client, COST) == cost_before + 380

        # The bank pays what the channel really paid for the sale (its fee kept back), and the other sale.
        bank = _mt940_import(client, [(_net(sale) - 380, _eref(sale.reference)), (_net(other), _eref(other.reference))])
        assert class_counts(bank) == {"matched": 1, "amount_mismatch": 1}, bank
        assert _posted(client, CLEARING) == 0  # each sale left the clearing account once
        assert _posted(client, COST) == cost_before  # the report's adjustment is reversed...
        assert _posted(client, "suspense") == -380  # ...and the difference is the bank's case, once
        assert "reversed" in [event["type"] for event in _case(client, fee_case["id"])["events"]]
        bank_case = _case_of(client, bank, "amount_mismatch")
        assert _resolve(client, bank_case["id"], "adjust", account="channel_cost").status_code == 200
        assert (_posted(client, COST), _posted(client, "suspense")) == (cost_before + 380, 0)
        ledger_verifies(app)

    def test_open_when_the_bank_pays_it_is_accepted_and_afterwards_only_accept_is_possible(self, app, client, sales):
        sale, other = sales
        report = _imported(client, [_line(sale, DAY, fee=sale.channel_cost + 380), _line(other, DAY)], DAY, "c.csv")
        fee_case = _case_of(client, report, "fee_mismatch")
        bank = _mt940_import(client, [(_net(sale) - 380, _eref(sale.reference)), (_net(other), _eref(other.reference))])
        after = _case(client, fee_case["id"])
        assert (after["state"], after["resolution"]) == ("resolved", "auto_paid")

        # A channel's report of the day imported after the bank paid it: its case moves nothing.
        again = _imported(client, [_line(other, DAY), _line(sale, DAY, fee=sale.channel_cost + 380)], DAY, "c2.csv")
        late = _case_of(client, again, "fee_mismatch")
        refused = _resolve(client, late["id"], "adjust", account="channel_cost")
        assert refused.status_code == 409, refused.text
        assert bank["id"] in refused.json()["detail"] and "only accept" in refused.json()["detail"]
        assert _resolve(client, late["id"], "accept").status_code == 200
        assert _posted(client, CLEARING) == 0
        ledger_verifies(app)


class TestTwoPagesFindingOneLineMissing:
    def test_the_second_adjustment_of_the_line_is_refused(self, app, client, sales):
        sale, other = sales
        first = _mt940_import(client, [(_net(sale), _eref(sale.reference))])
        page2 = _mt940([], opening=100_000 + _net(sale), number="01791")
        second = client.post("/v1/reconciliations", files={"file": ("page2.sta", page2)},
                             data={"channel": "sandbox_card", "format": "mt940", "statement_date": DAY.isoformat()})
        assert second.status_code == 201, second.text
        one, two = (_case_of(client, run, "missing_in_statement") for run in (first, second.json()))
        assert one["our_id"] == two["our_id"] == other.id

        assert _resolve(client, one["id"], "write_off").status_code == 200
        refused = _resolve(client, two["id"], "write_off")
        assert refused.status_code == 409, refused.text
        assert one["id"] in refused.json()["detail"] and "twice" in refused.json()["detail"]
        assert _posted(client, CLEARING) == 0  # the line left once
        assert _resolve(client, two["id"], "accept").status_code == 200
        ledger_verifies(app)
