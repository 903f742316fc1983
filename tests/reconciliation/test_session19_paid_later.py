"""A line of ours reported missing, then paid by a bank statement, through the HTTP API on SQLite and PostgreSQL.

A ``missing_in_statement`` case says the channel has not shown a line of ours. When a bank statement imported
later pays that line (recipe 4), nothing is missing any more:

1. an open case of an earlier statement is accepted by the import (``auto_paid``), posting nothing;
2. a case resolved with an entry (adjusted, written off: our net left ``channel_clearing:C``) has that entry
   reversed in the import, because the payout takes the line's net out of the clearing account too; without it
   the line would leave the clearing account twice;
3. a case about a paid line can only be accepted afterwards: an adjustment or write-off is refused (409).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.payments.support import ledger_verifies
from tests.reconciliation.formats.test_session12_formats import camt, camt_statement
from tests.reconciliation.support import cases_of, class_counts
from tests.reconciliation.test_api import _line
from tests.reconciliation.test_session13 import DAY, _imported
from tests.reconciliation.test_session17_channel_payout import (
    BANK_ACCOUNT,
    CLEARING,
    _camt,
    _charged,
    _import,
    _major,
    _net,
    _posted,
    sales,
)

__all__ = ["sales"]  # the fixture, shared

OTHER_IBAN = "CN9900000000000000000002"
WRITEOFF = "losses:writeoff"


@pytest.fixture(autouse=True)
def no_second_person(app) -> None:
    app.state.settings = app.state.settings.model_copy(update={"recon_approval_threshold": 1_000_000})


def _missing(client: Any, run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The run's ``missing_in_statement`` cases by our id."""
    return {case["our_id"]: case for case in cases_of(client, run["id"]) if case["class"] == "missing_in_statement"}


def _resolve(client: Any, case_id: str, action: str, **more: Any) -> Any:
    return client.post(f"/v1/recon_cases/{case_id}/resolve", json={"action": action, "reason": "test", **more})


def _case(client: Any, case_id: str) -> dict[str, Any]:
    answer = client.get(f"/v1/recon_cases/{case_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()


class TestALineReportedMissingThenPaid:
    def test_an_open_case_of_an_earlier_bank_statement_is_accepted_when_another_pays_its_line(self, app, client,
                                                                                              sales):
        first = _import(client, _camt([_charged(sales[0])], _net(sales[0])))
        missing = _missing(client, first)
        assert set(missing) == {row.id for row in sales[1:]}, missing
        paid = _net(sales[1]) + _net(sales[2])
        other = camt(camt_statement("S19B", OTHER_IBAN, "0.00", _major(paid),
                                    _charged(sales[1]) + _charged(sales[2]), currency="CNY")).encode()
        second = _import(client, other, name="other.xml")
        assert class_counts(second)["matched"] == 2, second

        for row in sales[1:3]:
            case = _case(client, missing[row.id]["id"])
            assert (case["state"], case["resolution"], case["ledger_entry_id"]) == ("resolved", "auto_paid", None)
            assert f"paid by the bank statement of reconciliation {second['id']}" in case["resolution_reason"]
        assert _case(client, missing[sales[3].id]["id"])["state"] == "open"  # still unpaid
        assert _posted(client, CLEARING) == _net(sales[3])
        ledger_verifies(app)

    def test_a_written_off_line_paid_later_has_its_write_off_reversed(self, app, client, sales):
        writeoff_before = _posted(client, WRITEOFF) or 0
        report = _imported(client, [_line(row, DAY) for row in sales[1:]], DAY, "card.csv")
        (case,) = _missing(client, report).values()
        assert case["our_id"] == sales[0].id
        assert _resolve(client, case["id"], "write_off").status_code == 200
        assert _posted(client, WRITEOFF) == writeoff_before + _net(sales[0])
        assert _posted(client, CLEARING) == sum(_net(row) for row in sales[1:])

        paid = sum(_net(row) for row in sales)
        bank = _import(client, _camt([_charged(row) for row in sales], paid))
        assert class_counts(bank) == {"matched": 4}, bank
        assert _posted(client, CLEARING) == 0  # each line left the clearing account once
        assert _posted(client, BANK_ACCOUNT) == paid
        assert _posted(client, WRITEOFF) == writeoff_before  # the loss was not one

        after = _case(client, case["id"])
        assert after["state"] == "written_off"
        (reversed_,) = [event for event in after["events"] if event["type"] == "reversed"]
        assert reversed_["body"] == (f"paid by the bank statement of reconciliation {bank['id']}: "
                                     f"entry tr_{case['id']}_reversed reverses tr_{case['id']}")
        reversal = client.get(f"/v1/ledger/transfers/tr_{case['id']}_reversed")
        assert reversal.status_code == 200, reversal.text
        assert reversal.json()["code"] == "recon_adjustment_reversal"
        ledger_verifies(app)

    def test_an_adjusted_line_is_reversed_once_whatever_statements_follow(self, app, client, sales):
        first = _import(client, _camt([_charged(sales[0])], _net(sales[0])))
        adjusted = _missing(client, first)[sales[1].id]
        assert _resolve(client, adjusted["id"], "adjust").status_code == 200
        assert _posted(client, "suspense") == -_net(sales[1])  # Dr suspense: the channel will not pay it

        rest = sum(_net(row) for row in sales[1:])
        other = camt(camt_statement("S19C", OTHER_IBAN, "0.00", _major(rest),
                                    "".join(_charged(row) for row in sales[1:]), currency="CNY")).encode()
        _import(client, other, name="other.xml")
        assert (_posted(client, CLEARING), _posted(client, "suspense")) == (0, 0)
        events = [event["type"] for event in _case(client, adjusted["id"])["events"]]
        assert events.count("reversed") == 1

        # A later report of the channel's, a re-issue or not, moves nothing of what was paid.
        _imported(client, [_line(row, DAY) for row in sales], DAY, "card.csv")
        assert (_posted(client, CLEARING), _posted(client, "suspense")) == (0, 0)
        assert [event["type"] for event in _case(client, adjusted["id"])["events"]].count("reversed") == 1
        ledger_verifies(app)


class TestACaseAboutAPaidLine:
    def test_can_only_be_accepted(self, app, client, sales):
        paid = sum(_net(row) for row in sales)
        bank = _import(client, _camt([_charged(row) for row in sales], paid))
        assert class_counts(bank) == {"matched": 4}, bank
        report = _imported(client, [_line(row, DAY) for row in sales[1:]], DAY, "card.csv")
        (case,) = _missing(client, report).values()  # the channel's report lacks a line the bank paid

        for action in ("adjust", "write_off"):
            refused = _resolve(client, case["id"], action)
            assert refused.status_code == 409, refused.text
            assert refused.json()["code"] == "recon_case_state_conflict"
            assert bank["id"] in refused.json()["detail"] and "only accept" in refused.json()["detail"]
        assert _posted(client, CLEARING) == 0
        accepted = _resolve(client, case["id"], "accept")
        assert accepted.status_code == 200, accepted.text
        ledger_verifies(app)
