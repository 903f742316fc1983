"""The matching engine on small worked examples: every class, every pass, the tolerance edges, determinism.

Amounts are minor units of EUR (10_000 is 100.00). Our lines become final at noon UTC unless a test
says otherwise; the statement speaks for 23 November 2026.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import polars as pl
import pytest
from pydantic import ValidationError

from clearhouse.reconciliation.frames import INTERNAL_SCHEMA, STATEMENT_SCHEMA
from clearhouse.reconciliation.matching import CLASSES, RESULT_SCHEMA, match
from clearhouse.reconciliation.rules import AutoResolveRule, MatchRules, auto_resolution

DAY = date(2026, 11, 23)
PERIOD = (DAY, DAY)


def ours(our_id: str, amount: int, fee: int = 0, *, ref: str | None = None, channel_ref: str | None = None,
         status: str = "succeeded", on: date = DAY, at: time = time(12), currency: str = "EUR") -> dict[str, Any]:
    return {"our_id": our_id, "our_ref": ref if ref is not None else f"att_{our_id}", "channel_ref": channel_ref,
            "kind": "payment" if amount >= 0 else "refund", "status": status, "amount": amount, "fee": fee,
            "currency": currency, "booked_on": on, "booked_at": datetime.combine(on, at, UTC)}


def line(line_no: int, ref: str | None, amount: int, fee: int | None = 0, *, channel_ref: str | None = None,
         status: str = "succeeded", on: date = DAY, kind: str = "payment", currency: str = "EUR",
         description: str | None = None) -> dict[str, Any]:
    return {"line_no": line_no, "our_ref": ref, "channel_ref": channel_ref, "kind": kind, "status": status,
            "amount": amount, "fee": fee, "currency": currency, "booked_on": on, "value_on": None,
            "description": description}


def run(lines: list[dict[str, Any]], our_lines: list[dict[str, Any]], rules: MatchRules | None = None,
        period: tuple[date, date] = PERIOD) -> pl.DataFrame:
    statement = pl.DataFrame(lines, schema=STATEMENT_SCHEMA)
    internal = pl.DataFrame(our_lines, schema=INTERNAL_SCHEMA)
    outcome = match(statement, internal, rules or MatchRules(), period=period)
    assert outcome.results.schema == pl.Schema(RESULT_SCHEMA)
    return outcome.results


def classes(results: pl.DataFrame) -> list[tuple[str, str | None, int | None]]:
    """(class, our_id, line_no) of every result, sorted: what a case would say."""
    return sorted(results.select("class", "our_id", "line_no").iter_rows(),
                  key=lambda r: (r[0], r[1] or "", r[2] or 0))


def only(results: pl.DataFrame) -> dict[str, Any]:
    assert results.height == 1, results
    return results.row(0, named=True)


class TestPassOneExact:
    def test_the_same_line_on_both_sides_is_matched_by_our_reference(self):
        result = only(run([line(2, "att_p1", 10_000, 170)], [ours("p1", 10_000, 170)]))
        assert (result["class"], result["pass_no"], result["our_id"], result["line_no"]) == ("matched", 1, "p1", 2)
        assert result["difference"] is None and result["detail"] is None

    def test_a_statement_without_fees_compares_everything_but_the_fee(self):
        results = run([line(2, "att_p1", 10_000, None), line(3, "att_p2", 9_000, None, status="failed")],
                      [ours("p1", 10_000, 170), ours("p2", 9_000, 150)])
        assert classes(results) == [("matched", "p1", 2), ("status_mismatch", "p2", 3)]

    def test_currencies_and_statuses_are_compared_exactly(self):
        results = run([line(2, "att_p1", 10_000, currency="USD"), line(3, "att_p2", 10_000, status="failed"),
                       line(4, "att_p3", 10_000)],
                      [ours("p1", 10_000), ours("p2", 10_000), ours("p3", 10_000, currency="EUR")])
        assert classes(results) == [("matched", "p3", 4), ("missing_in_ledger", None, 2),
                                    ("missing_in_statement", "p1", None), ("status_mismatch", "p2", 3)]

    def test_the_channel_reference_pairs_a_line_without_ours(self):
        result = only(run([line(2, None, 10_000, 170, channel_ref="ch_9")],
                          [ours("p1", 10_000, 170, channel_ref="ch_9")]))
        assert (result["class"], result["pass_no"], result["our_ref"], result["channel_ref"]) == (
            "matched", 1, "att_p1", "ch_9")

    def test_amount_exactly_at_the_absolute_tolerance_matches_one_unit_more_does_not(self):
        rules = MatchRules(amount_tolerance_minor=5)
        at_edge = run([line(2, "att_p1", 10_005)], [ours("p1", 10_000)], rules)
        assert only(at_edge)["class"] == "matched"
        beyond = only(run([line(2, "att_p1", 10_006)], [ours("p1", 10_000)], rules))
        assert (beyond["class"], beyond["difference"]) == ("amount_mismatch", 6)
        assert beyond["detail"] == "channel amount 100.06 against 100.00 booked"

    def test_the_percentage_tolerance_is_of_our_amount_and_the_larger_tolerance_wins(self):
        # 0.1% of 250.00 is 0.25; the absolute tolerance 0.10 is smaller, so 0.25 applies.
        rules = MatchRules(amount_tolerance_minor=10, amount_tolerance_percent=Decimal("0.1"))
        assert only(run([line(2, "att_p1", 24_975)], [ours("p1", 25_000)], rules))["class"] == "matched"
        beyond = only(run([line(2, "att_p1", 24_974)], [ours("p1", 25_000)], rules))
        assert (beyond["class"], beyond["difference"]) == ("amount_mismatch", -26)

    def test_fee_exactly_at_the_fee_tolerance_matches_one_unit_more_does_not(self):
        rules = MatchRules(fee_tolerance_minor=2)
        assert only(run([line(2, "att_p1", 10_000, 40)], [ours("p1", 10_000, 38)], rules))["class"] == "matched"
        beyond = only(run([line(2, "att_p1", 10_000, 45)], [ours("p1", 10_000, 38)], rules))
        assert (beyond["class"], beyond["difference"]) == ("fee_mismatch", 7)
        assert beyond["detail"] == "channel fee 0.45 against 0.38 booked"

    def test_a_statement_without_a_fee_for_the_line_is_no_fee_mismatch(self):
        assert only(run([line(2, "att_p1", 10_000, None)], [ours("p1", 10_000, 38)]))["class"] == "matched"

    @pytest.mark.parametrize(("we_say", "they_say"), [("failed", "succeeded"), ("succeeded", "failed")])
    def test_status_mismatch_either_way_comes_before_amounts(self, we_say, they_say):
        result = only(run([line(2, "att_p1", 9_000, status=they_say)], [ours("p1", 10_000, status=we_say)]))
        assert (result["class"], result["ours_status"], result["theirs_status"]) == (
            "status_mismatch", we_say, they_say)
        assert result["difference"] is None

    def test_a_pair_booked_on_different_days_is_timing(self):
        result = only(run([line(2, "att_p1", 10_000, on=DAY + timedelta(days=1))], [ours("p1", 10_000)]))
        assert (result["class"], result["pass_no"]) == ("timing", 1)
        assert (result["ours_booked_on"], result["theirs_booked_on"]) == (DAY, DAY + timedelta(days=1))
        assert result["detail"] == "the channel booked it on 2026-11-24, we on 2026-11-23"

    def test_the_same_line_twice_is_one_match_and_one_duplicate(self):
        results = run([line(2, "att_p1", 10_000), line(3, "att_p2", 5_000), line(4, "att_p1", 10_000)],
                      [ours("p1", 10_000), ours("p2", 5_000)])
        assert classes(results) == [("duplicate", "p1", 4), ("matched", "p1", 2), ("matched", "p2", 3)]
        duplicate = results.filter(pl.col("class") == "duplicate").row(0, named=True)
        assert duplicate["theirs_amount"] == 10_000 and duplicate["pass_no"] is None

    def test_the_line_with_our_amount_is_the_pair_and_the_other_the_duplicate(self):
        results = run([line(2, "att_p1", 9_999), line(3, "att_p1", 10_000)], [ours("p1", 10_000)])
        assert classes(results) == [("duplicate", "p1", 2), ("matched", "p1", 3)]

    def test_a_repeat_by_the_channel_reference_is_a_duplicate(self):
        results = run([line(2, "att_p1", 10_000, channel_ref="ch_1"), line(3, None, 10_000, channel_ref="ch_1")],
                      [ours("p1", 10_000, channel_ref="ch_1")])
        assert classes(results) == [("duplicate", "p1", 3), ("matched", "p1", 2)]

    def test_lines_that_add_up_to_ours_are_one_split_match(self):
        # A capture of 100.00 settled in two parts: 60.00 (fee 1.00) and 40.00 (fee 0.70).
        result = only(run([line(2, "att_p1", 6_000, 100), line(5, "att_p1", 4_000, 70)],
                          [ours("p1", 10_000, 170)]))
        assert (result["class"], result["pass_no"], result["line_no"], result["batch_line_nos"]) == (
            "matched", 3, 2, [2, 5])
        assert (result["theirs_amount"], result["theirs_fee"]) == (10_000, 170)

    def test_a_split_whose_lines_state_no_fee_states_none(self):
        result = only(run([line(2, "att_p1", 6_000, None), line(5, "att_p1", 4_000, None)],
                          [ours("p1", 10_000, 170)]))
        assert (result["class"], result["theirs_amount"], result["theirs_fee"]) == ("matched", 10_000, None)

    def test_a_split_whose_fees_differ_is_a_fee_mismatch(self):
        result = only(run([line(2, "att_p1", 6_000, 100), line(3, "att_p1", 4_000, 90)], [ours("p1", 10_000, 170)]))
        assert (result["class"], result["pass_no"], result["difference"]) == ("fee_mismatch", 3, 20)


class TestPassTwoFuzzy:
    def test_a_reference_with_a_typo_is_paired_by_amount_date_and_similarity(self):
        result = only(run([line(2, "att_2026112300O42", 12_345, 198)],
                          [ours("p42", 12_345, 198, ref="att_20261123000042")]))
        assert (result["class"], result["pass_no"], result["our_id"]) == ("matched", 2, "p42")
        assert "att_2026112300O42" in result["detail"]

    def test_the_reference_inside_a_description_counts(self):
        result = only(run([line(2, None, 12_345, description="payment att_20261123000042 thank you")],
                          [ours("p42", 12_345, ref="att_20261123000042")]))
        assert (result["class"], result["pass_no"]) == ("matched", 2)

    def test_a_fuzzy_pair_a_day_apart_is_timing(self):
        result = only(run([line(2, "att_2026112300O42", 12_345, on=DAY + timedelta(days=1))],
                          [ours("p42", 12_345, ref="att_20261123000042")], period=(DAY, DAY + timedelta(days=1))))
        assert (result["class"], result["pass_no"]) == ("timing", 2)

    def test_too_far_apart_in_days_amount_or_words_is_no_pair(self):
        our_line = ours("p42", 12_345, ref="att_20261123000042")
        for statement_line in (line(2, "att_2026112300O42", 12_345, on=DAY + timedelta(days=2)),
                               line(2, "att_2026112300O42", 12_346),
                               line(2, "zz_unrelated_9999", 12_345)):
            results = run([statement_line], [our_line], period=(DAY, DAY + timedelta(days=2)))
            assert classes(results) == [("missing_in_ledger", None, 2), ("missing_in_statement", "p42", None)]

    def test_one_to_one_best_similarity_first_then_the_smaller_amount_gap(self):
        rules = MatchRules(amount_tolerance_minor=10)
        results = run([line(2, "att_2026112300O42", 10_005), line(3, "att_2026112300O42", 10_000)],
                      [ours("p42", 10_000, ref="att_20261123000042")], rules)
        assert classes(results) == [("matched", "p42", 3), ("missing_in_ledger", None, 2)]


class TestPassThreeBatch:
    def previous_day(self) -> list[dict[str, Any]]:
        yesterday = DAY - timedelta(days=1)
        return [ours("p1", 10_000, 170, on=yesterday), ours("p2", 20_000, 305, on=yesterday),
                ours("p3", 5_000, 95, on=yesterday), ours("p4", 7_000, 0, status="failed", on=yesterday)]

    def test_a_settlement_credit_pays_a_whole_day_net_of_fees(self):
        # 98.30 + 196.95 + 49.05 = 344.30: the failed p4 moves no money and is not part of it.
        results = run([line(7, "stl_20261122", 34_430, kind="settlement")], self.previous_day())
        assert classes(results) == [("matched", "p1", 7), ("matched", "p2", 7), ("matched", "p3", 7)]
        assert set(results["pass_no"].to_list()) == {3}
        assert results["theirs_amount"].sum() - results["theirs_fee"].sum() == 34_430

    def test_a_credit_that_is_not_the_day_net_is_missing_in_ledger_and_the_old_day_is_not_reported(self):
        results = run([line(7, "stl_20261122", 34_431, kind="settlement")], self.previous_day())
        assert classes(results) == [("missing_in_ledger", None, 7)]

    def test_batch_matching_can_be_switched_off(self):
        results = run([line(7, "stl_20261122", 34_430, kind="settlement")], self.previous_day(),
                      MatchRules(batch_matching=False))
        assert classes(results) == [("missing_in_ledger", None, 7)]

    def test_a_day_beyond_the_batch_window_is_not_paid_by_the_credit(self):
        results = run([line(7, "stl_20261122", 34_430, kind="settlement", on=DAY + timedelta(days=1))],
                      self.previous_day(), MatchRules(batch_window_days=1), period=(DAY + timedelta(days=1),) * 2)
        assert classes(results) == [("missing_in_ledger", None, 7)]


class TestLeftovers:
    def test_a_line_we_never_booked_is_missing_in_ledger(self):
        result = only(run([line(9, "ext_1", 2_500, 10, currency="CNY")], []))
        assert (result["class"], result["pass_no"], result["theirs_amount"], result["currency"]) == (
            "missing_in_ledger", None, 2_500, "CNY")
        assert result["detail"] == "statement line 9 (payment of 25.00 CNY on 2026-11-23) matches none of our lines"

    def test_a_line_the_statement_lacks_is_missing_in_statement(self):
        result = only(run([], [ours("p1", 10_000, 170)]))
        assert (result["class"], result["our_id"], result["ours_amount"]) == ("missing_in_statement", "p1", 10_000)
        assert result["detail"] == "we booked 100.00 EUR on 2026-11-23; the statement does not have it"

    def test_a_line_final_within_the_cutoff_of_the_day_end_is_timing(self):
        # The channel's day ends at midnight UTC; the cut-off is 60 minutes: 23:00:00 is in, 22:59:59 is not.
        results = run([], [ours("p1", 10_000, at=time(23, 0)), ours("p2", 10_000, at=time(22, 59, 59))])
        assert classes(results) == [("missing_in_statement", "p2", None), ("timing", "p1", None)]

    def test_the_cutoff_is_in_the_channel_time_zone(self):
        # Shanghai's 23 November ends at 16:00 UTC; 15:30 UTC is within 60 minutes of it.
        rules = MatchRules(timezone="Asia/Shanghai")
        results = run([], [ours("p1", 10_000, at=time(15, 30)), ours("p2", 10_000, at=time(14, 30))], rules)
        assert classes(results) == [("missing_in_statement", "p2", None), ("timing", "p1", None)]

    def test_failed_lines_nobody_claims_and_lines_outside_the_period_are_not_reported(self):
        results = run([], [ours("p1", 10_000, status="failed"), ours("p2", 10_000, on=DAY - timedelta(days=1)),
                           ours("p3", 10_000, on=DAY + timedelta(days=1))])
        assert results.height == 0


class TestTheWholeOutcome:
    def statement_and_ours(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        lines = [line(2, "att_a", 10_000, 170), line(3, "att_c", 5_100, 95), line(4, "att_d", 3_000, 60),
                 line(5, "att_e", 4_000, 80), line(6, "att_e", 4_000, 80), line(7, "att_f", 2_000, 40),
                 line(8, "ext_x", 1_234, 0), line(9, "att_g", 900, 20, on=DAY + timedelta(days=1))]
        our_lines = [ours("a", 10_000, 170), ours("b", 7_500, 130), ours("c", 5_000, 95), ours("d", 3_000, 50),
                     ours("e", 4_000, 80), ours("f", 2_000, 40, status="failed"), ours("g", 900, 20)]
        return lines, our_lines

    def test_every_class_once_and_every_line_in_exactly_one_row(self):
        results = run(*self.statement_and_ours())
        assert classes(results) == [
            ("amount_mismatch", "c", 3), ("duplicate", "e", 6), ("fee_mismatch", "d", 4), ("matched", "a", 2),
            ("matched", "e", 5), ("missing_in_ledger", None, 8), ("missing_in_statement", "b", None),
            ("status_mismatch", "f", 7), ("timing", "g", 9)]
        assert sorted(results["line_no"].drop_nulls().to_list()) == list(range(2, 10))

    def test_the_summary_counts_and_sums_each_class(self):
        lines, our_lines = self.statement_and_ours()
        outcome = match(pl.DataFrame(lines, schema=STATEMENT_SCHEMA), pl.DataFrame(our_lines, schema=INTERNAL_SCHEMA),
                        MatchRules(), period=PERIOD)
        summary = outcome.summary()
        assert list(summary) == list(CLASSES)
        assert summary["matched"] == {"count": 2, "amount": 14_000}
        assert summary["duplicate"] == {"count": 1, "amount": 4_000}
        assert summary["missing_in_ledger"] == {"count": 1, "amount": 1_234}
        assert summary["missing_in_statement"] == {"count": 1, "amount": 7_500}

    def test_plain_matches_are_kept_as_positions_and_built_only_when_asked(self):
        lines, our_lines = self.statement_and_ours()
        outcome = match(pl.DataFrame(lines, schema=STATEMENT_SCHEMA), pl.DataFrame(our_lines, schema=INTERNAL_SCHEMA),
                        MatchRules(), period=PERIOD)
        # a is a plain pair; e's reference is on two lines, so its match (and the duplicate) are worked out
        # whole, with the other rows.
        assert outcome.plain.count == 1 and outcome.plain.amount == 10_000
        assert outcome.others.filter(pl.col("class") == "matched")["our_id"].to_list() == ["e"]
        plain = outcome.plain.rows()
        assert plain.schema == pl.Schema(RESULT_SCHEMA)
        assert plain.select("class", "pass_no", "our_id", "line_no").rows() == [("matched", 1, "a", 2)]
        assert outcome.results.height == plain.height + outcome.others.height

    def test_with_lines_names_our_ids_a_statement_line_reached_in_any_class(self):
        lines, our_lines = self.statement_and_ours()
        outcome = match(pl.DataFrame(lines, schema=STATEMENT_SCHEMA), pl.DataFrame(our_lines, schema=INTERNAL_SCHEMA),
                        MatchRules(), period=PERIOD)
        # a and e plainly matched, c an amount mismatch, g timing; b has no line, "zz" is nobody.
        assert outcome.with_lines(["a", "b", "c", "e", "g", "zz"]) == {"a", "c", "e", "g"}
        assert outcome.with_lines([]) == set()

    def test_the_answer_does_not_depend_on_row_order(self):
        lines, our_lines = self.statement_and_ours()
        forward = run(lines, our_lines)
        backward = run(lines[::-1], our_lines[::-1])
        assert forward.equals(run(lines, our_lines))
        order = ["class", "line_no", "our_id"]
        assert forward.sort(order, nulls_last=True).equals(backward.sort(order, nulls_last=True))

    def test_empty_frames_give_no_rows(self):
        assert run([], []).height == 0


class TestRules:
    def test_rules_are_plain_data_that_round_trip_through_json(self):
        rules = MatchRules.model_validate({
            "amount_tolerance_percent": "0.25", "timezone": "Asia/Shanghai",
            "auto_resolve": [{"class": "fee_mismatch", "max_difference_minor": 1, "action": "accept",
                              "reason": "rounding"}]})
        dumped = rules.model_dump(mode="json")
        assert dumped["amount_tolerance_percent"] == "0.25" and dumped["auto_resolve"][0]["class"] == "fee_mismatch"
        assert MatchRules.model_validate_json(rules.model_dump_json()) == rules
        assert MatchRules.model_validate(dumped) == rules

    @pytest.mark.parametrize("bad", [{"date_window_days": -1}, {"timezone": "Mars/Olympus"},
                                     {"reference_similarity": 1.5}, {"amount_tolerance_percent": "-1"},
                                     {"surprise": 1}, {"auto_resolve": [{"class": "matched", "reason": "x"}]},
                                     {"amount_tolerance_percent": 0.1}, {"amount_tolerance_percent": "1e2"},
                                     {"amount_tolerance_percent": " 1"},
                                     {"auto_resolve": [{"class": "timing", "reason": "x",
                                                        "max_difference_minor": 10**15 + 1}]}])
    def test_wrong_rules_are_refused(self, bad):
        with pytest.raises(ValidationError):
            MatchRules.model_validate(bad)

    def test_the_percentage_is_a_decimal(self):
        assert MatchRules(amount_tolerance_percent="0.1").amount_tolerance_percent == Decimal("0.1")
        assert MatchRules(amount_tolerance_percent="0.1").amount_tolerance(25_000) == 25
        assert MatchRules.model_validate({"amount_tolerance_percent": 2}).amount_tolerance_percent == Decimal(2)

    def test_auto_resolution_picks_the_first_rule_that_fits(self):
        rounding = AutoResolveRule.model_validate({"class": "fee_mismatch", "max_difference_minor": 1,
                                                   "action": "accept", "reason": "rounding"})
        fee_back = AutoResolveRule.model_validate({"class": "fee_mismatch", "action": "adjust",
                                                   "account": "channel_cost", "reason": "fee given back"})
        rules = MatchRules(auto_resolve=[rounding, fee_back])
        assert auto_resolution(rules, "fee_mismatch", -1) == rounding
        assert auto_resolution(rules, "fee_mismatch", 2) == fee_back
        assert auto_resolution(rules, "amount_mismatch", 1) is None
        assert auto_resolution(MatchRules(), "fee_mismatch", 0) is None
