"""Reconciliation, session 14:

- a line of ours first paired by a later statement (it came a day late) is reconciled from then on, so a
  further statement that repeats it is a ``duplicate``, never a second match that would count the
  channel's payment twice in the clearing report;
- a payment the customer paid just before the channel's midnight, whose notification reached us just after
  (the channel's day D, ours D+1), pairs as ``timing`` in D's statement and raises nothing in D+1's;
- a re-issued statement replaces the first for its day: the first import's cases still open are closed
  (accepted by the system, posting nothing, a held resolution expired), the re-issue's are the day's."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest

from clearhouse.kit import clock
from tests.payments.support import ledger_verifies, paid_by_customer
from tests.reconciliation.formats.test_session12_formats import camt, camt_entry, camt_statement
from tests.reconciliation.support import cases_of, class_counts
from tests.reconciliation.test_api import CHANNEL, _line
from tests.reconciliation.test_session13 import (  # noqa: F401
    CNY_IBAN,
    DAY,
    EUR_IBAN,
    NEXT_DAY,
    _at,
    _case,
    _imported,
    _rules,
    _upload_file,
    people,
    sales,
)

THIRD_DAY = NEXT_DAY + timedelta(days=1)


def _late_then_repeated(client, sales, *, reissued: bool) -> tuple[dict, dict, object]:  # noqa: F811
    """Day 1's statement lacks sales[3]; day 2's brings it (a timing pair); day 3's repeats it."""
    _rules(client, timing_cutoff_minutes=0, date_window_days=3)
    dropped = sales[3]
    with _at(NEXT_DAY, 8):
        first = _imported(client, [_line(row, DAY) for row in sales[:3]], DAY, "day.csv")
    assert class_counts(first) == {"matched": 3, "missing_in_statement": 1}
    with _at(THIRD_DAY, 8):
        late = _imported(client, [_line(dropped, NEXT_DAY)], NEXT_DAY, "next-day.csv")
    assert class_counts(late) == {"timing": 1}
    if reissued:  # day 2's statement re-issued without the line: it is not paired any more
        with _at(THIRD_DAY, 9):
            _imported(client, [], NEXT_DAY, "next-day-reissued.csv")
    with _at(THIRD_DAY + timedelta(days=1), 8):
        repeat = _imported(client, [_line(dropped, THIRD_DAY)], THIRD_DAY, "third-day.csv")
    return late, repeat, dropped


class TestALinePairedLateIsReconciledFromThenOn:
    def test_a_statement_repeating_it_afterwards_is_a_duplicate(self, client, sales):  # noqa: F811
        _late, repeat, dropped = _late_then_repeated(client, sales, reissued=False)
        (case,) = cases_of(client, repeat["id"])
        net = dropped.amount - dropped.channel_cost
        assert (case["class"], case["our_ref"], case["delta"]) == ("duplicate", dropped.reference, net)
        assert "reconciled already by an earlier statement" in case["detail"]

    def test_unless_the_late_statement_was_re_issued_without_it(self, client, sales):  # noqa: F811
        _late, repeat, dropped = _late_then_repeated(client, sales, reissued=True)
        assert class_counts(repeat) == {"timing": 1}
        (case,) = cases_of(client, repeat["id"])
        assert (case["class"], case["our_ref"], case["delta"]) == ("timing", dropped.reference, 0)


def _open_cases(client) -> list[dict]:
    return client.get("/v1/recon_cases", params={"state": "open", "channel": CHANNEL}).json()["data"]


class TestAReIssueClosesTheFirstImportsOpenCases:
    def test_a_line_the_first_file_lacked_and_the_re_issue_has_leaves_nothing_open(self, app, client, sales):  # noqa: F811
        _rules(client, timing_cutoff_minutes=0)
        with _at(NEXT_DAY, 8):
            first = _imported(client, [_line(row, DAY) for row in sales[:3]], DAY, "day.csv")
        (missing,) = cases_of(client, first["id"])
        assert missing["class"] == "missing_in_statement"
        with _at(NEXT_DAY, 9):
            reissue = _imported(client, [_line(row, DAY) for row in sales], DAY, "day-reissued.csv")
        assert class_counts(reissue) == {"matched": 4}
        closed = _case(client, missing["id"])
        assert (closed["state"], closed["resolution"], closed["ledger_entry_id"]) == ("resolved", "accept", None)
        assert closed["resolved_by"] == "system:reconciliation"
        assert reissue["id"] in closed["resolution_reason"]
        assert _open_cases(client) == []
        ledger_verifies(app)

    def test_a_discrepancy_the_re_issue_still_has_is_one_open_case_and_a_held_resolution_expires(
            self, app, client, sales, people):  # noqa: F811
        maker, checker = people
        _rules(client, timing_cutoff_minutes=0)
        wrong = [_line(row, DAY, amount=row.amount + 5_000 if n == 1 else None) for n, row in enumerate(sales)]
        with _at(NEXT_DAY, 8):
            first = _imported(client, wrong, DAY, "day.csv")
        (mismatch,) = cases_of(client, first["id"])
        held = maker.post(f"/v1/recon_cases/{mismatch['id']}/resolve", json={"action": "adjust", "reason": "short"})
        assert held.status_code == 202, held.text
        with _at(NEXT_DAY, 9):
            reissue = _imported(client, wrong[::-1], DAY, "day-reissued.csv")  # the same lines, another file
        (again,) = cases_of(client, reissue["id"])
        assert (again["class"], again["state"]) == ("amount_mismatch", "open")
        assert _case(client, mismatch["id"])["state"] == "resolved"
        assert checker.get(f"/v1/approvals/{held.json()['approval_id']}").json()["status"] == "expired"
        assert [case["id"] for case in _open_cases(client)] == [again["id"]]
        ledger_verifies(app)

    def test_a_statement_of_the_next_day_closes_nothing_of_the_day_before(self, client, sales):  # noqa: F811
        _rules(client, timing_cutoff_minutes=0)
        with _at(NEXT_DAY, 8):
            first = _imported(client, [_line(row, DAY) for row in sales[:3]], DAY, "day.csv")
        with _at(NEXT_DAY + timedelta(days=1), 8):
            _imported(client, [], NEXT_DAY, "next-day.csv")
        (missing,) = cases_of(client, first["id"])
        assert missing["state"] == "open"

    def test_a_discrepancy_adjusted_before_the_re_issue_is_not_adjusted_twice(self, app, client, sales):  # noqa: F811
        _rules(client, timing_cutoff_minutes=0)
        app.state.settings = app.state.settings.model_copy(update={"recon_approval_threshold": 1_000_000})
        wrong = [_line(row, DAY, amount=row.amount - 200 if n == 2 else None) for n, row in enumerate(sales)]
        with _at(NEXT_DAY, 8):
            first = _imported(client, wrong, DAY, "day.csv")
        (short,) = cases_of(client, first["id"])
        adjusted = client.post(f"/v1/recon_cases/{short['id']}/resolve", json={"action": "adjust", "reason": "short"})
        assert adjusted.status_code == 200, adjusted.text
        entry = adjusted.json()["ledger_entry_id"]
        with _at(NEXT_DAY, 9):
            reissue = _imported(client, wrong[::-1], DAY, "day-reissued.csv")
        (again,) = cases_of(client, reissue["id"])
        assert (again["class"], again["state"], again["resolution"]) == ("amount_mismatch", "resolved", "accept")
        assert again["ledger_entry_id"] is None
        assert short["id"] in again["resolution_reason"] and entry in again["resolution_reason"]
        assert _open_cases(client) == []
        ledger_verifies(app)

    def test_bank_statements_of_one_day_add_up_and_close_nothing_of_each_other(self, client):
        """Two accounts' statements of one day (two files): each one's cases are its own."""
        cny = camt(camt_statement("S1", CNY_IBAN, "1000.00", "1250.00", camt_entry("250.00", "BR1", currency="CNY"),
                                  currency="CNY")).encode()
        eur = camt(camt_statement("S9", EUR_IBAN, "10.00", "15.00", camt_entry("5.00", "BR9"))).encode()
        first = _upload_file(client, cny, fmt="camt053", channel="bank_two", day=DAY, name="cny.xml")
        assert first.status_code == 201, first.text
        second = _upload_file(client, eur, fmt="camt053", channel="bank_two", day=DAY, name="eur.xml")
        assert second.status_code == 201, second.text
        (stray,) = cases_of(client, first.json()["id"])
        assert (stray["class"], _case(client, stray["id"])["state"]) == ("missing_in_ledger", "open")


BEFORE_MIDNIGHT_IN_CHINA = datetime(2026, 11, 25, 15, 59, 50, tzinfo=UTC)  # 23:59:50 on 25 Nov in Asia/Shanghai
BEFORE_MIDNIGHT_UTC = datetime(2026, 11, 25, 23, 59, 50, tzinfo=UTC)


def _sandbox_statement_cases(app, client, channel, day) -> list[tuple]:
    statement = app.state.channels[channel].statement(day)
    run = client.post("/v1/reconciliations", data={"format": "csv", "channel": channel,
                                                   "statement_date": day.isoformat()},
                      files={"file": (statement.filename, io.BytesIO(statement.content), "text/csv")})
    assert run.status_code == 201, run.text
    return [(c["class"], c["delta"], c["state"]) for c in cases_of(client, run.json()["id"])]


class TestAPaymentPaidJustBeforeTheChannelsMidnight:
    @pytest.mark.parametrize("channel", ["sandbox_alipay", "sandbox_wechat", "sandbox_bank"])
    def test_pairs_on_the_channels_day_and_is_not_missing_from_the_next(self, app, client, anonymous_client,
                                                                        merchant_client_factory, channel):
        shop, _ = merchant_client_factory("Night shop")
        paid_at = BEFORE_MIDNIGHT_UTC if channel == "sandbox_bank" else BEFORE_MIDNIGHT_IN_CHINA
        with clock.frozen(paid_at):
            paid_by_customer(app, shop, anonymous_client, channel, 10_000)  # notified after midnight
        day = (paid_at + timedelta(hours=0 if channel == "sandbox_bank" else 8)).date()
        with clock.frozen(paid_at + timedelta(days=1, hours=2)):
            first = _sandbox_statement_cases(app, client, channel, day)
            second = _sandbox_statement_cases(app, client, channel, day + timedelta(days=1))
        assert [(kind, delta) for kind, delta, _state in first] == [("timing", 0)]
        assert second == []
        ledger_verifies(app)


class TestAReIssueThatWithdrawsADiscrepancyReversesItsAdjustment:
    def test_the_line_back_in_the_re_issue_reverses_the_entry_posted_for_its_absence(self, app, client, sales):  # noqa: F811
        _rules(client, timing_cutoff_minutes=0)
        app.state.settings = app.state.settings.model_copy(update={"recon_approval_threshold": 1_000_000})
        dropped = sales[1]
        with _at(NEXT_DAY, 8):
            first = _imported(client, [_line(row, DAY) for n, row in enumerate(sales) if n != 1], DAY, "day.csv")
        (missing,) = cases_of(client, first["id"])
        net = dropped.amount - dropped.channel_cost
        assert (missing["class"], missing["delta"]) == ("missing_in_statement", -net)
        clearing = f"acct_channel_clearing_{CHANNEL}_cny"
        before = client.get(f"/v1/ledger/accounts/{clearing}/balance").json()
        adjusted = client.post(f"/v1/recon_cases/{missing['id']}/resolve", json={"action": "adjust", "reason": "lost"})
        assert adjusted.status_code == 200, adjusted.text
        entry = adjusted.json()["ledger_entry_id"]

        with _at(NEXT_DAY, 9):
            reissue = _imported(client, [_line(row, DAY) for row in sales], DAY, "day-reissued.csv")

        assert class_counts(reissue) == {"matched": 4}
        reversal = client.get(f"/v1/ledger/transfers/{entry}_reversed").json()
        original = client.get(f"/v1/ledger/transfers/{entry}").json()
        assert sorted((p["account_id"], p["direction"], p["amount"]) for p in reversal["postings"]) == sorted(
            (p["account_id"], "credit" if p["direction"] == "debit" else "debit", p["amount"])
            for p in original["postings"])
        assert (reversal["code"], reversal["reference"]) == ("recon_adjustment_reversal", missing["id"])
        assert client.get(f"/v1/ledger/accounts/{clearing}/balance").json() == before
        (reversed_event,) = [e for e in _case(client, missing["id"])["events"] if e["type"] == "reversed"]
        assert f"entry {entry}_reversed reverses {entry}" in reversed_event["body"]
        ledger_verifies(app)


class TestAChannelStatementUnderAnotherDay:
    def test_is_refused_naming_its_days_and_nothing_is_imported(self, client, sales):  # noqa: F811
        from tests.reconciliation.test_api import _upload
        from tests.reconciliation.test_session13 import _statement

        content = _statement([_line(row, NEXT_DAY) for row in sales])
        refused = _upload(client, content, DAY, name="next-day.csv")
        assert refused.status_code == 422, refused.text
        problem = refused.json()
        assert problem["code"] == "statement_invalid"
        assert f"statement_date {DAY.isoformat()}" in problem["detail"] and NEXT_DAY.isoformat() in problem["detail"]
        assert client.get("/v1/reconciliations", params={"channel": CHANNEL}).json()["data"] == []
        assert _upload(client, content, NEXT_DAY, name="next-day.csv").status_code == 201  # under its own day
