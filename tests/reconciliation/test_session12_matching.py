"""Matching and rules, corrected: bounded tolerances, a line an earlier statement reconciled, a line in another
currency than ours, a refund that carries its payment's channel id. Through the HTTP API where a person sees it,
on the engine where the edge is arithmetic."""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import orjson
import polars as pl
import pytest
from sqlalchemy import text

from clearhouse.kit import clock
from clearhouse.kit.db import transact
from clearhouse.reconciliation.frames import INTERNAL_SCHEMA, STATEMENT_SCHEMA
from clearhouse.reconciliation.matching import match
from clearhouse.reconciliation.rules import MAX_TOLERANCE_MINOR, MatchRules
from tests.payments.support import paid_by_customer
from tests.reconciliation.support import NOON, cases_of, class_counts, sales_at_noon
from tests.reconciliation.test_api import CHANNEL, HEADER, _line, _upload
from tests.reconciliation.test_qr_refunds import NOON_IN_CHINA

DAY = date(2026, 11, 23)


@pytest.fixture
def paid_day(app, client, merchant_client_factory) -> dict[str, Any]:
    """Seven card payments at noon of one fixed day, as ``test_api.paid_day`` has them (its cut-off off)."""
    assert client.put(f"/v1/recon_rules/{CHANNEL}", json={"rules": {"timing_cutoff_minutes": 0}}).status_code == 200
    shop, _merchant_id = merchant_client_factory("Recon shop")
    return {"rows": sales_at_noon(app, shop, [10_000 + i * 100 for i in range(7)]), "day": NOON.date()}


def _on(day: date) -> Any:
    """The clock at 08:00 UTC of ``day``: a statement is imported after the day it speaks for."""
    return clock.frozen(datetime.combine(day, time(8), UTC))


def _dry_run(client: Any, content: str, day: date, rules: dict[str, Any] | None = None) -> Any:
    data = {"format": "csv", "statement_date": day.isoformat(), "mapping": "clearhouse_v1"}
    if rules is not None:
        data["rules"] = orjson.dumps({"rules": rules}).decode()
    return client.post(f"/v1/recon_rules/{CHANNEL}/dry_run", data=data,
                       files={"file": ("s.csv", io.BytesIO(content.encode()), "text/csv")})


class TestToleranceBounds:
    @pytest.mark.parametrize("field", ["amount_tolerance_minor", "fee_tolerance_minor"])
    @pytest.mark.parametrize("value", [MAX_TOLERANCE_MINOR + 1, 2**63 - 1, 2**63])
    def test_a_tolerance_beyond_the_largest_payment_is_a_422_on_put_and_dry_run(self, client, field, value):
        answer = client.put(f"/v1/recon_rules/{CHANNEL}", json={"rules": {field: value}})
        assert answer.status_code == 422 and answer.json()["code"] == "validation_error", answer.text
        assert client.get(f"/v1/recon_rules/{CHANNEL}").json()["rules"][field] == 0
        dry = _dry_run(client, f"{HEADER}\n", DAY, {field: value})
        assert dry.status_code == 422 and dry.json()["code"] == "validation_error", dry.text
        assert client.put(f"/v1/recon_rules/{CHANNEL}", json={"rules": {field: MAX_TOLERANCE_MINOR}}).status_code == 200

    def test_rules_saved_before_the_bound_are_a_422_naming_the_field_on_import_not_a_500(self, app, client,
                                                                                          paid_day):
        rows, day = paid_day["rows"], paid_day["day"]
        saved = {**client.get(f"/v1/recon_rules/{CHANNEL}").json()["rules"], "amount_tolerance_minor": 2**63}
        # As a release before the bound saved it.
        transact(app.state.engine, lambda s: s.execute(
            text("UPDATE recon_rules SET rules_json = :r WHERE channel = :c"), {"r": json.dumps(saved), "c": CHANNEL}))
        content = f"{HEADER}\n{_line(rows[0], day)}\n"
        for answer in (_upload(client, content, day), _dry_run(client, content, day)):
            assert answer.status_code == 422 and answer.json()["code"] == "validation_error", answer.text
            assert "amount_tolerance_minor" in answer.json()["detail"]
            assert f"PUT /v1/recon_rules/{CHANNEL}" in answer.json()["detail"]
        # What is saved stays readable, to be replaced; then the channel imports again.
        shown = client.get(f"/v1/recon_rules/{CHANNEL}")
        assert shown.status_code == 200 and shown.json()["rules"]["amount_tolerance_minor"] == 2**63
        assert client.put(f"/v1/recon_rules/{CHANNEL}", json={"rules": {"timing_cutoff_minutes": 0}}).status_code == 200
        assert _upload(client, content, day).status_code == 201

    def test_the_largest_tolerance_never_pairs_fewer_lines_than_a_small_one(self):
        # A mistyped reference with the exact amount: pass 2 pairs it at any tolerance (it wrapped around 2^63).
        statement = pl.DataFrame([{"line_no": 2, "our_ref": "att_p1z", "channel_ref": None, "kind": "payment",
                                   "status": "succeeded", "amount": 66_600, "fee": 0, "currency": "EUR",
                                   "booked_on": DAY, "value_on": None, "description": None}], schema=STATEMENT_SCHEMA)
        for tolerance in (0, MAX_TOLERANCE_MINOR):
            outcome = match(statement, _ours_frame(66_600), MatchRules(amount_tolerance_minor=tolerance),
                            period=(DAY, DAY))
            assert outcome.results.select("class", "pass_no").rows() == [("matched", 2)], tolerance

    @pytest.mark.parametrize("percent", ["99.9999", "100", "0.0001"])
    def test_a_percentage_of_the_largest_payment_is_exact_not_wrapped(self, percent):
        # 10^15 times the percentage's numerator (999999 over 10^6) is beyond 64 bits; the tolerance is not.
        ours = MAX_TOLERANCE_MINOR
        rules = MatchRules(amount_tolerance_percent=Decimal(percent))
        tolerance = rules.amount_tolerance(ours)
        for theirs, expected in ((ours - tolerance, "matched"), (ours - tolerance - 1, "amount_mismatch")):
            statement = pl.DataFrame([{"line_no": 2, "our_ref": "att_p1", "channel_ref": None, "kind": "payment",
                                       "status": "succeeded", "amount": theirs, "fee": 0, "currency": "EUR",
                                       "booked_on": DAY, "value_on": None, "description": None}],
                                     schema=STATEMENT_SCHEMA)
            outcome = match(statement, _ours_frame(ours), rules, period=(DAY, DAY))
            if theirs < 0:  # 100 %: money going back is never a payment's pair, whatever the tolerance
                expected = ["missing_in_ledger", "missing_in_statement"]
            assert outcome.results["class"].to_list() == ([expected] if isinstance(expected, str) else expected), (
                percent, theirs)


def _ours_frame(amount: int) -> pl.DataFrame:
    return pl.DataFrame([{"our_id": "p1", "our_ref": "att_p1", "channel_ref": None, "kind": "payment",
                          "status": "succeeded", "amount": amount, "fee": 0, "currency": "EUR", "booked_on": DAY,
                          "booked_at": datetime(2026, 11, 23, 12, tzinfo=UTC)}], schema=INTERNAL_SCHEMA)


class TestALineAnEarlierStatementReconciled:
    def test_repeated_in_a_later_days_statement_it_is_a_duplicate_not_a_second_match(self, client, paid_day):
        rows, day = paid_day["rows"], paid_day["day"]
        with _on(day + timedelta(days=1)):
            first = _upload(client, "\n".join([HEADER, *[_line(r, day) for r in rows]]) + "\n", day).json()
        assert class_counts(first) == {"matched": 7}
        later = day + timedelta(days=2)
        with _on(later + timedelta(days=1)):
            # The channel lists the payment of two days ago again (its own booking day, same money).
            again = _upload(client, f"{HEADER}\n{_line(rows[0], day)}\n", later, name="later.csv")
        assert again.status_code == 201, again.text
        run = again.json()
        assert class_counts(run) == {"duplicate": 1}
        (case,) = cases_of(client, run["id"])
        net = rows[0].amount - rows[0].channel_cost
        assert (case["class"], case["our_ref"], case["delta"], case["state"]) == (
            "duplicate", rows[0].reference, net, "open")
        assert "reconciled already by an earlier statement" in case["detail"]
        assert run["clearing"]["CNY"]["difference"] == net  # the case accounts for the run's clearing difference

    def test_a_re_issue_of_the_same_day_is_matched_again(self, client, paid_day):
        rows, day = paid_day["rows"], paid_day["day"]
        with _on(day + timedelta(days=1)):
            first = _upload(client, "\n".join([HEADER, *[_line(r, day) for r in rows]]) + "\n", day).json()
            reissue = _upload(client, "\n".join([HEADER, *[_line(r, day) for r in reversed(rows)]]) + "\n", day,
                              name="reissue.csv").json()
        assert class_counts(first) == class_counts(reissue) == {"matched": 7}

    def test_a_line_the_days_statement_lacked_is_matched_when_a_later_one_brings_it(self, client, paid_day):
        rows, day = paid_day["rows"], paid_day["day"]
        with _on(day + timedelta(days=1)):
            first = _upload(client, "\n".join([HEADER, *[_line(r, day) for r in rows[1:]]]) + "\n", day).json()
        assert class_counts(first) == {"matched": 6, "missing_in_statement": 1}
        later = day + timedelta(days=2)
        with _on(later + timedelta(days=1)):
            run = _upload(client, "\n".join([HEADER, _line(rows[0], day), _line(rows[1], day)]) + "\n", later,
                          name="later.csv").json()
        assert class_counts(run) == {"matched": 1, "duplicate": 1}
        (case,) = cases_of(client, run["id"])
        assert (case["class"], case["our_ref"]) == ("duplicate", rows[1].reference)

    def test_a_dry_run_says_so_too(self, client, paid_day):
        rows, day = paid_day["rows"], paid_day["day"]
        with _on(day + timedelta(days=1)):
            _upload(client, "\n".join([HEADER, *[_line(r, day) for r in rows]]) + "\n", day)
            dry = _dry_run(client, f"{HEADER}\n{_line(rows[0], day)}\n", day + timedelta(days=2))
        assert dry.status_code == 200 and class_counts(dry.json()) == {"duplicate": 1}, dry.text


class TestALineInAnotherCurrency:
    def test_it_is_not_a_zero_difference_that_a_rounding_rule_accepts(self, client, paid_day):
        rules = {"timing_cutoff_minutes": 0, "auto_resolve": [
            {"class": "amount_mismatch", "max_difference_minor": 1, "action": "accept", "reason": "rounding"}]}
        assert client.put(f"/v1/recon_rules/{CHANNEL}", json={"rules": rules}).status_code == 200
        rows, day = paid_day["rows"], paid_day["day"]
        # The channel reports our 100.00 CNY payment as 100.00 USD; every other line as booked.
        in_dollars = _line(rows[0], day).replace(",CNY,", ",USD,")
        run = _upload(client, "\n".join([HEADER, in_dollars, *[_line(r, day) for r in rows[1:]]]) + "\n", day).json()
        assert class_counts(run) == {"matched": 6, "missing_in_ledger": 1, "missing_in_statement": 1}
        assert run["case_states"] == {"open": 2}
        net = rows[0].amount - rows[0].channel_cost
        found = {case["class"]: case for case in cases_of(client, run["id"])}
        theirs, ours = found["missing_in_ledger"], found["missing_in_statement"]
        assert (theirs["currency"], theirs["delta"], theirs["line_no"]) == ("USD", net, 2)
        assert (ours["currency"], ours["delta"], ours["our_ref"]) == ("CNY", -net, rows[0].reference)
        assert theirs["detail"] == f"statement line 2 names our {rows[0].reference}, booked in CNY: a line in USD " \
                                   "is not its pair"
        # Each currency's clearing difference is its case's delta.
        assert run["clearing"]["USD"]["difference"] == net and run["clearing"]["CNY"]["difference"] == -net

    def test_by_the_channels_id_too(self):
        statement = pl.DataFrame([{"line_no": 2, "our_ref": None, "channel_ref": "ch_1", "kind": "payment",
                                   "status": "succeeded", "amount": 10_000, "fee": 0, "currency": "USD",
                                   "booked_on": DAY, "value_on": None, "description": None}], schema=STATEMENT_SCHEMA)
        internal = _ours_frame(10_000).with_columns(pl.lit("ch_1").alias("channel_ref"))
        results = match(statement, internal, MatchRules(), period=(DAY, DAY)).results
        assert sorted(results.select("class", "currency").rows()) == [("missing_in_ledger", "USD"),
                                                                      ("missing_in_statement", "EUR")]


class TestARefundCarryingItsPaymentsChannelId:
    def test_an_alipay_refund_we_never_booked_is_missing_in_ledger_not_a_duplicate_of_the_payment(
            self, app, client, anonymous_client, merchant_client_factory):
        shop, _merchant_id = merchant_client_factory("QR shop")
        with clock.frozen(NOON_IN_CHINA):
            paid = paid_by_customer(app, shop, anonymous_client, "sandbox_alipay", 10_000)
            statement = app.state.channels["sandbox_alipay"].statement(NOON_IN_CHINA.date())
        assert client.put("/v1/recon_rules/sandbox_alipay", json={"rules": {"timing_cutoff_minutes": 0}}
                          ).status_code == 200
        text_lines = statement.content.decode("gbk").splitlines()
        payment = next(line for line in text_lines if ",交易," in line).split(",")
        assert payment[1] == paid["attempts"][0]["id"]
        # Refunded in the Alipay console: the bill gives it the trade's 支付宝交易号 and its own 退款批次号.
        refund = [payment[0], payment[1], "退款", "", payment[4], payment[5], "CNY", payment[7], "-10.00",
                  "CONSOLE_REFUND_1", "0.06", ""]
        last = max(i for i, line in enumerate(text_lines) if not line.startswith("#"))
        text_lines.insert(last + 1, ",".join(refund))
        run = client.post("/v1/reconciliations", data={
            "format": "csv", "channel": "sandbox_alipay", "mapping": statement.layout,
            "statement_date": NOON_IN_CHINA.date().isoformat(),
        }, files={"file": ("bill.csv", io.BytesIO(("\n".join(text_lines) + "\n").encode("gbk")), "text/csv")})
        assert run.status_code == 201, run.text
        assert class_counts(run.json()) == {"matched": 1, "missing_in_ledger": 1}
        (case,) = cases_of(client, run.json()["id"])
        assert (case["class"], case["our_id"], case["our_ref"], case["delta"]) == (
            "missing_in_ledger", None, "CONSOLE_REFUND_1", -1_000 + 6)  # 10.00 taken back, its fee 0.06 returned

    def test_a_second_line_of_the_same_direction_still_repeats_the_paired_one(self):
        lines = [{"line_no": n, "our_ref": ref, "channel_ref": "ch_1", "kind": "payment", "status": "succeeded",
                  "amount": 10_000, "fee": 0, "currency": "EUR", "booked_on": DAY, "value_on": None,
                  "description": None} for n, ref in ((2, "att_p1"), (3, "other"))]
        internal = _ours_frame(10_000).with_columns(pl.lit("ch_1").alias("channel_ref"))
        results = match(pl.DataFrame(lines, schema=STATEMENT_SCHEMA), internal, MatchRules(), period=(DAY, DAY))
        assert sorted(results.results.select("class", "line_no").rows()) == [("duplicate", 3), ("matched", 2)]
