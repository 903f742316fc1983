"""Reconciliation, session 14: a line of ours first paired by a later statement (it came a day late) is
reconciled from then on, so a further statement that repeats it is a ``duplicate``, never a second match
that would count the channel's payment twice in the clearing report."""

from __future__ import annotations

from datetime import timedelta

from tests.reconciliation.support import cases_of, class_counts
from tests.reconciliation.test_api import _line
from tests.reconciliation.test_session13 import DAY, NEXT_DAY, _at, _imported, _rules, sales  # noqa: F401

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
