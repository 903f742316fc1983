"""MT940 statements written by hand from the SWIFT MT940 field specification: several statements in a
file, credits and debits, an RC reversal, a multi-line :86:, NONREF, SEPA's EREF+, a SWIFT envelope,
an entry date in the next year. Every defect names its line and nothing is returned."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import polars as pl
import pytest

from clearhouse.reconciliation.errors import StatementInvalid
from clearhouse.reconciliation.formats import parse_statement
from clearhouse.reconciliation.frames import STATEMENT_SCHEMA

SAMPLES = Path(__file__).parent.parent / "samples"
TWO = SAMPLES / "mt940_two_statements.sta"


def broken(tmp_path: Path, content: str | bytes) -> StatementInvalid:
    path = tmp_path / "broken.sta"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(StatementInvalid) as caught:
        parse_statement(path, "mt940")
    return caught.value


def edit(old: str, new: str) -> str:
    text = TWO.read_text()
    assert old in text
    return text.replace(old, new, 1)


def test_two_statements_in_one_file():
    parsed = parse_statement(TWO, "mt940")
    assert parsed.lines.schema == pl.Schema(STATEMENT_SCHEMA)
    columns = ("line_no", "our_ref", "channel_ref", "kind", "amount", "booked_on", "value_on")
    assert parsed.lines.select(columns).rows() == [
        (5, "att_1", "CT20261123001", "payment", 10_000, date(2026, 11, 23), date(2026, 11, 23)),  # EREF+ wins
        (7, "re_1", "RT20261123002", "refund", -3_000, date(2026, 11, 23), date(2026, 11, 23)),
        (10, None, "CT20261123003", "payment", 4_567, date(2026, 11, 23), date(2026, 11, 23)),  # NONREF
        (12, None, "RV20261123004", "other", -1_234, date(2026, 11, 23), date(2026, 11, 23)),  # RC: a reversal
        (20, "att_7", "CT20261124001", "payment", 25_000, date(2026, 11, 24), date(2026, 11, 24)),
        (22, None, "FE20261124002", "fee", -50, date(2026, 11, 25), date(2026, 11, 24)),  # entry after value
    ]
    descriptions = parsed.lines["description"].to_list()
    assert descriptions[0] == "Order 1001 Tea set"  # SEPA SVWZ+
    assert descriptions[1] == "Return of part of order 1001, customer asked for a smaller set"  # two lines
    assert set(parsed.lines["currency"]) == {"EUR"} and set(parsed.lines["fee"]) == {None}  # MT940 states no fees
    meta = parsed.meta
    assert (meta.format, meta.account, meta.currency, meta.statement_id) == (
        "mt940", "DE89370400440532013000", "EUR", "00231/001")
    assert (meta.opening_balance, meta.closing_balance) == (100_000, 135_283)
    assert (meta.first_day, meta.last_day) == (date(2026, 11, 23), date(2026, 11, 25))
    assert meta.extra["statements"] == "2"


def test_envelope_intermediate_balances_zero_decimal_currency_and_a_year_end():
    parsed = parse_statement(SAMPLES / "mt940_year_end.sta", "mt940")
    assert parsed.lines.select("our_ref", "kind", "amount", "booked_on", "value_on", "currency").rows() == [
        ("att_900", "payment", 120_000, date(2027, 1, 2), date(2026, 12, 31), "JPY"),
        (None, "fee", -2_500, date(2027, 1, 2), date(2026, 12, 31), "JPY"),
    ]
    assert (parsed.meta.opening_balance, parsed.meta.closing_balance) == (500_000, 617_500)


def test_balances_that_do_not_add_up_name_the_closing_balance(tmp_path):
    error = broken(tmp_path, edit(":62F:C261123EUR1103,33", ":62F:C261123EUR1103,30"))
    assert error.line == 14 and "closing balance" in error.detail
    error = broken(tmp_path, edit(":62F:C261124EUR1352,83", ":62F:D261124EUR1352,83"))  # the second statement
    assert error.line == 24


def test_a_debit_booked_as_a_credit_breaks_the_balance(tmp_path):
    assert broken(tmp_path, edit("1123D30,00", "1123C30,00")).line == 14


@pytest.mark.parametrize(("old", "new", "line", "what"), [
    ("C100,00NTRF", "C1O0,00NTRF", 5, ":61:"),  # the library would silently drop this line
    ("C100,00NTRF", "C100,001NTRF", 5, "minor units"),  # 3 decimals in EUR
    (":61:2611231123C100", ":61:2613321123C100", 5, "date"),
    (":61:2611231123C100", ":61:2611231131C100", 5, "date"),  # entry date 31 November
    (":60F:C261120EUR1000,00", ":60F:C261120EUX1000,00", 4, "ISO 4217"),
    (":60F:C261120EUR1000,00", ":60F:C26112EUR1000,00", 4, ":60F:"),
    (":25:DE89370400440532013000\n:28C:00231", "garbage line\n:28C:00231", 2, "not an MT940 line"),
])
def test_a_malformed_field_names_its_line(tmp_path, old, new, line, what):
    error = broken(tmp_path, edit(old, new))
    assert error.line == line and what in error.detail


def test_a_truncated_file_is_refused(tmp_path):
    text = TWO.read_text()
    error = broken(tmp_path, text[:text.index(":62F:C261124")])
    assert error.line == 22 and "truncated" in error.detail


def test_empty_not_mt940_and_not_utf8(tmp_path):
    assert broken(tmp_path, "").line == 1
    assert broken(tmp_path, "our_ref,amount\nx,1\n").line == 1
    assert broken(tmp_path, TWO.read_bytes().replace(b"Tea set", b"Tea \xe4set")).line == 5 + 1
