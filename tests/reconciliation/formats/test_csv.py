"""Channel CSV through a declarative mapping: exact money, dates, signs, and every defect named by its
line in the file (header and skipped lines counted) with nothing returned."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearhouse.reconciliation.errors import StatementInvalid, UnknownStatementFormat
from clearhouse.reconciliation.formats import FORMATS, CsvMapping, parse_statement
from clearhouse.reconciliation.formats.mappings import ALIPAY_BILL_V1, CLEARHOUSE_V1, MAPPINGS, default_mapping
from clearhouse.reconciliation.frames import STATEMENT_SCHEMA

SAMPLES = Path(__file__).parent.parent / "samples"
HEADER = "our_ref,channel_ref,kind,status,amount,fee,currency,booked_on,value_on,description\n"


def write(tmp_path: Path, content: str | bytes, name: str = "statement.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def invalid(path: Path, **options) -> StatementInvalid:
    with pytest.raises(StatementInvalid) as caught:
        parse_statement(path, options.pop("fmt", "csv"), **options)
    return caught.value


class TestClearhouseV1:
    def test_the_sample_reads_into_the_statement_schema_exactly(self):
        parsed = parse_statement(SAMPLES / "clearhouse_v1.csv", "csv")
        assert parsed.lines.schema == pl.Schema(STATEMENT_SCHEMA)
        assert parsed.lines.rows() == [
            (2, "att_1", "ch_1", "payment", "succeeded", 10000, 38, "EUR", date(2026, 11, 23), None, "Tea set"),
            (3, "re_1", "ch_2", "refund", "succeeded", -3000, 0, "EUR", date(2026, 11, 23), date(2026, 11, 24),
             "Refund, partial"),
            (4, "att_2", "ch_3", "payment", "failed", 2500, 0, "EUR", date(2026, 11, 24), None, None),
            (5, None, "ch_4", "settlement", "succeeded", -9962, 38, "EUR", date(2026, 11, 24), date(2026, 11, 25),
             "Payout batch 7"),
            (6, "att_3", "ch_5", "payment", "succeeded", 1500, 12, "JPY", date(2026, 11, 24), None, None),
        ]
        meta = parsed.meta
        assert (meta.format, meta.currency, meta.first_day, meta.last_day) == (
            "clearhouse_v1", None, date(2026, 11, 23), date(2026, 11, 24))

    def test_progress_is_told_the_line_count(self):
        seen: list[int] = []
        parse_statement(SAMPLES / "clearhouse_v1.csv", "csv", progress=seen.append)
        assert seen[-1] == 5

    def test_a_header_only_file_is_an_empty_statement(self, tmp_path):
        parsed = parse_statement(write(tmp_path, HEADER), "csv")
        assert parsed.lines.height == 0 and parsed.lines.schema == pl.Schema(STATEMENT_SCHEMA)

    def test_blank_lines_keep_the_line_numbers_of_the_file(self, tmp_path):
        path = write(tmp_path, HEADER + "a,,payment,,1,0,EUR,2026-11-23,,\n\nb,,payment,,2,0,EUR,2026-11-23,,\n")
        assert parse_statement(path, "csv").lines["line_no"].to_list() == [2, 4]

    @pytest.mark.parametrize(("row", "what"), [
        ("a,,payment,,12.50,0,EUR,2026-11-23,,", "amount"),  # minor units are whole numbers
        ("a,,payment,,ten,0,EUR,2026-11-23,,", "amount"),
        ("a,,payment,,,0,EUR,2026-11-23,,", "amount"),
        ("a,,payment,,99999999999999999999,0,EUR,2026-11-23,,", "amount"),  # does not fit: not wrapped
        ("a,,payment,,100,x,EUR,2026-11-23,,", "fee"),
        ("a,,payment,,100,0,EUR,2026-11-31,,", "booking date"),
        ("a,,payment,,100,0,EUR,23.11.2026,,", "booking date"),
        ("a,,payment,,100,0,EUR,2026-11-23,tomorrow,", "value date"),
        ("a,,payment,,100,0,EUR,,,", "booking date"),
        ("a,,payment,,100,0,EURO,2026-11-23,,", "currency"),
        ("a,,payment,,100,0,XAU,2026-11-23,,", "currency"),  # a metal, no minor unit: not money
        ("a,,payment,,100,0,eur,2026-11-23,,", "currency"),
        ("a,,charge,,100,0,EUR,2026-11-23,,", "kind"),
        ("a,,payment,paid,100,0,EUR,2026-11-23,,", "status"),
    ])
    def test_a_bad_value_names_its_line_and_nothing_is_returned(self, tmp_path, row, what):
        good = "ok,,payment,,100,0,EUR,2026-11-23,,\n"
        error = invalid(write(tmp_path, HEADER + good + good + row + "\n" + good))
        assert error.line == 4 and what in error.detail and error.code == "statement_invalid"

    def test_the_first_bad_line_wins_whatever_is_wrong_with_it(self, tmp_path):
        rows = ["ok,,payment,,100,0,EUR,2026-11-23,,", "a,,payment,,100,0,EUR,2026-13-01,,",
                "b,,payment,,1.5,0,EUR,2026-11-23,,"]
        assert invalid(write(tmp_path, HEADER + "\n".join(rows) + "\n")).line == 3

    def test_a_missing_required_column_names_the_header_line(self, tmp_path):
        error = invalid(write(tmp_path, HEADER.replace(",amount", ",sum") + "a,,payment,,1,0,EUR,2026-11-23,,\n"))
        assert error.line == 1 and "'amount'" in error.detail

    def test_an_empty_file_is_refused(self, tmp_path):
        assert invalid(write(tmp_path, b"")).line == 1
        assert invalid(write(tmp_path, b"\n\n", "blank.csv")).line == 1

    def test_invalid_utf8_names_the_line(self, tmp_path):
        content = (HEADER + "a,,payment,,1,0,EUR,2026-11-23,,fine\n").encode()
        content += b"b,,payment,,1,0,EUR,2026-11-23,,\xff\xfe\n"
        error = invalid(write(tmp_path, content))
        assert error.line == 3 and "utf-8" in error.detail.lower()

    def test_a_gbk_file_declared_utf8_is_refused_at_its_first_chinese_line(self, tmp_path):
        content = (HEADER + "a,,payment,,1,0,CNY,2026-11-23,,tea\n" + "b,,payment,,1,0,CNY,2026-11-23,,茶具\n")
        error = invalid(write(tmp_path, content.encode("gbk")))
        assert error.line == 3

    def test_an_empty_fee_cell_is_no_fee_stated_not_a_fee_of_zero(self, tmp_path):
        path = write(tmp_path, HEADER + "a,,payment,,100,,EUR,2026-11-23,,\nb,,payment,,100,0,EUR,2026-11-23,,\n")
        assert parse_statement(path, "csv").lines["fee"].to_list() == [None, 0]

    def test_a_ragged_row_names_its_line(self, tmp_path):
        rows = "a,,payment,,1,0,EUR,2026-11-23,,\nb,,payment,,1,0,EUR,2026-11-23,,,x\n"
        error = invalid(write(tmp_path, HEADER + rows))
        assert error.line == 3 and "fields" in error.detail
        short = invalid(write(tmp_path, HEADER + "a,,payment,,1,0,EUR,2026-11-23,,\nb,,payment,,1\n", "x.csv"))
        assert short.line == 3 and "5 fields where the header has 10" in short.detail

    @pytest.mark.parametrize("cut", [
        "b,,payment,succeeded,2000,20",  # the fee would read as empty, then 0
        "b,,payment,succeeded,2000,20,CNY,2026-11-23,",  # one field short: only the empty description lacks
    ])
    def test_a_truncated_last_line_is_refused_not_padded(self, tmp_path, cut):
        good = "a,,payment,succeeded,1000,10,CNY,2026-11-23,,\n"
        error = invalid(write(tmp_path, HEADER + good + good + cut))
        assert error.line == 4 and f"{cut.count(',') + 1} fields where the header has 10" in error.detail

    def test_a_short_row_of_a_custom_mapping_is_refused(self, tmp_path):
        mapping = custom(columns={"our_ref": "ref", "amount": "amount", "fee": "fee", "booked_on": "day"})
        error = invalid(write(tmp_path, "ref,day,amount,fee\nr1,2026-11-23,1.00,0.01\nr2,2026-11-23,20\n"),
                        mapping=mapping)
        assert error.line == 3 and "3 fields where the header has 4" in error.detail

    def test_an_earlier_bad_value_still_wins_over_a_later_short_row(self, tmp_path):
        rows = "a,,payment,,1,0,EUR,2026-13-01,,\nb,,payment,,1,0\n"
        error = invalid(write(tmp_path, HEADER + rows))
        assert error.line == 2 and "booking date" in error.detail

    def test_quoted_delimiters_and_quoted_line_breaks_are_not_short_rows(self, tmp_path):
        rows = ('a,,payment,,1,0,EUR,2026-11-23,,"tea, green"\n'
                'b,,payment,,2,0,EUR,2026-11-23,,"two\nlines, one field"\n'
                '"c",,payment,,3,"0",EUR,2026-11-23,,"say ""hi"", then go"\n'
                'e,,payment,,5,0,EUR,2026-11-23,,"first\nmiddle, no quote\nend"\n')
        parsed = parse_statement(write(tmp_path, HEADER + rows), "csv")
        assert parsed.lines["description"].to_list() == ["tea, green", "two\nlines, one field", 'say "hi", then go',
                                                         "first\nmiddle, no quote\nend"]
        short = invalid(write(tmp_path, HEADER + rows + 'd,,payment,,4,0,EUR,2026-11-23,"x, y"\n', "x.csv"))
        assert short.line == 9 and "9 fields where the header has 10" in short.detail


def custom(**fields) -> CsvMapping:
    values = {"name": "custom", "columns": {"our_ref": "ref", "amount": "amount", "booked_on": "day"},
              "amount_unit": "major", "currency": "CNY"}
    values.update(fields)
    return CsvMapping(**values)


class TestExactMoney:
    @pytest.mark.parametrize(("text", "currency", "minor"), [
        ("12.34", "CNY", 1234), ("-12.34", "CNY", -1234), ("+7.5", "CNY", 750), ("12", "CNY", 1200),
        ("0.01", "CNY", 1), ("12.340", "CNY", 1234),  # a trailing zero loses nothing
        ("1500", "JPY", 1500), ("1.234", "BHD", 1234), ("99999999999999.99", "CNY", 9999999999999999),
    ])
    def test_major_units_become_exact_minor_units(self, tmp_path, text, currency, minor):
        path = write(tmp_path, f"ref,amount,day,ccy\nr,{text},2026-11-23,{currency}\n")
        mapping = custom(columns={"our_ref": "ref", "amount": "amount", "booked_on": "day", "currency": "ccy"})
        assert parse_statement(path, "csv", mapping=mapping).lines["amount"].to_list() == [minor]

    @pytest.mark.parametrize(("text", "currency"), [
        ("12.345", "CNY"), ("1.5", "JPY"), ("12;34", "CNY"), ("1e3", "CNY"), ("12.", "CNY"), (".5", "CNY"),
        ("- 1", "CNY"), ("12345678901234567", "CNY"),
    ])
    def test_digits_that_would_be_lost_are_an_error_not_rounding(self, tmp_path, text, currency):
        path = write(tmp_path, f"ref,amount,day,ccy\nr,1.00,2026-11-23,CNY\nr,{text},2026-11-23,{currency}\n")
        mapping = custom(columns={"our_ref": "ref", "amount": "amount", "booked_on": "day", "currency": "ccy"})
        error = invalid(path, mapping=mapping)
        assert error.line == 3 and "amount" in error.detail

    def test_decimal_commas_thousands_separators_and_a_debit_credit_mark(self, tmp_path):
        path = write(tmp_path, 'ref;amount;dc;day\nr1;"1.234,56";C;23.11.2026\nr2;0,50;D;24.11.2026\n')
        mapping = custom(delimiter=";", decimal_separator=",", thousands_separator=".", date_format="%d.%m.%Y",
                         sign="indicator",
                         columns={"our_ref": "ref", "amount": "amount", "indicator": "dc", "booked_on": "day"})
        parsed = parse_statement(path, "csv", mapping=mapping)
        assert parsed.lines.select("amount", "booked_on").rows() == [(123456, date(2026, 11, 23)),
                                                                    (-50, date(2026, 11, 24))]
        error = invalid(write(tmp_path, "ref;amount;dc;day\nr1;1,00;X;23.11.2026\n", "x.csv"), mapping=mapping)
        assert error.line == 2 and "debit/credit" in error.detail

    def test_separate_credit_and_debit_columns_and_a_fee_written_negative(self, tmp_path):
        path = write(tmp_path, "ref,in,out,fee,day\nr1,100.00,,-0.60,2026-11-23\nr2,,30.00,0.18,2026-11-23\n")
        mapping = custom(sign="split", fee_sign="negative",
                         columns={"our_ref": "ref", "credit": "in", "debit": "out", "fee": "fee", "booked_on": "day"})
        assert parse_statement(path, "csv", mapping=mapping).lines.select("amount", "fee").rows() == [
            (10000, 60), (-3000, -18)]

    def test_a_minus_in_split_or_indicated_amounts_is_ignored_the_column_or_mark_gives_the_sign(self, tmp_path):
        path = write(tmp_path, "ref,in,out,day\nr1,,-30.00,2026-11-23\nr2,-5.00,,2026-11-23\n")
        split = custom(sign="split", columns={"our_ref": "ref", "credit": "in", "debit": "out", "booked_on": "day"})
        assert parse_statement(path, "csv", mapping=split).lines["amount"].to_list() == [-3000, 500]
        path = write(tmp_path, "ref,amount,dc,day\nr1,-30.00,D,2026-11-23\nr2,-5.00,C,2026-11-23\n", "i.csv")
        marked = custom(sign="indicator", credit_values=["C"], debit_values=["D"],
                        columns={"our_ref": "ref", "amount": "amount", "indicator": "dc", "booked_on": "day"})
        assert parse_statement(path, "csv", mapping=marked).lines["amount"].to_list() == [-3000, 500]

    def test_a_mapping_without_a_fee_column_states_no_fee(self, tmp_path):
        path = write(tmp_path, "ref,amount,day\nr1,1.00,2026-11-23\n")
        lines = parse_statement(path, "csv", mapping=custom()).lines
        assert lines["fee"].to_list() == [None] and lines.schema == pl.Schema(STATEMENT_SCHEMA)

    def test_kind_and_status_maps_with_defaults(self, tmp_path):
        path = write(tmp_path, "ref,amount,day,type,state\nr1,1,2026-11-23,SALE,OK\nr2,-1,2026-11-23,RFND,KO\n"
                               "r3,1,2026-11-23,ADJ,OK\n")
        columns = {"our_ref": "ref", "amount": "amount", "booked_on": "day", "kind": "type", "status": "state"}
        mapping = custom(columns=columns, kind_map={"SALE": "payment", "RFND": "refund", "*": "other"},
                         status_map={"OK": "succeeded", "KO": "failed"}, status_default=None)
        assert parse_statement(path, "csv", mapping=mapping).lines.select("kind", "status").rows() == [
            ("payment", "succeeded"), ("refund", "failed"), ("other", "succeeded")]
        strict = mapping.model_copy(update={"kind_map": {"SALE": "payment", "RFND": "refund"}})
        assert invalid(path, mapping=strict).line == 4
        no_status = write(tmp_path, "ref,amount,day,type,state\nr1,1,2026-11-23,SALE,\n", "x.csv")
        assert invalid(no_status, mapping=mapping).line == 2  # no status and no default: an error

    def test_an_empty_kind_in_our_own_layout_is_an_error_an_empty_status_means_succeeded(self, tmp_path):
        assert invalid(write(tmp_path, HEADER + "a,,,,1,0,EUR,2026-11-23,,\n")).line == 2

    def test_timestamps_are_moved_into_the_statements_calendar(self, tmp_path):
        """A file written in UTC, read for a channel whose day is China time: 17:30 UTC is the next day."""
        path = write(tmp_path, "ref,amount,day,time\nr1,1,2026-11-23,15:59:59\nr2,1,2026-11-23,16:00:00\n")
        mapping = custom(columns={"our_ref": "ref", "amount": "amount", "booked_on": "day", "booked_time": "time"},
                         time_format="%H:%M:%S", timezone="UTC", calendar="Asia/Shanghai")
        assert parse_statement(path, "csv", mapping=mapping).lines["booked_on"].to_list() == [
            date(2026, 11, 23), date(2026, 11, 24)]


class TestMappings:
    def test_a_mapping_is_plain_data_that_round_trips_through_json(self):
        for mapping in MAPPINGS.values():
            assert CsvMapping.model_validate_json(mapping.model_dump_json()) == mapping

    @pytest.mark.parametrize("fields", [
        {"columns": {"amount": "a"}},  # no booking date
        {"columns": {"amount": "a", "booked_on": "d", "colour": "c"}},
        {"columns": {"amount": "a", "booked_on": "d"}, "kind_map": {"x": "sale"}},
        {"columns": {"amount": "a", "booked_on": "d"}, "currency": "XYZ"},
        {"columns": {"amount": "a", "booked_on": "d"}, "sign": "split"},
        {"columns": {"amount": "a", "booked_on": "d"}, "timezone": "Mars/Base", "calendar": "UTC"},
        {"columns": {"amount": "a", "booked_on": "d"}, "timezone": "UTC", "calendar": "Mars/Base"},
        {"columns": {"amount": "a", "booked_on": "d"}, "timezone": "../../etc/passwd"},
        {"columns": {"amount": "a", "booked_on": "d"}, "quote_char": ","},  # would read every line as nothing
        {"columns": {"amount": "a", "booked_on": "d"}, "timezone": "America"},  # a directory of zones, not one
    ])
    def test_an_inconsistent_mapping_is_refused(self, fields):
        with pytest.raises(ValueError):
            CsvMapping(**{"currency": "EUR", **fields})

    def test_default_mapping_per_channel(self):
        assert [default_mapping(c) for c in ("sandbox_card", "sandbox_alipay", "sandbox_wechat", "sandbox_bank",
                                              "acme_pay", None)] == [
            "sandbox_card_v1", "alipay_bill_v1", "wechat_bill_v1", "sandbox_bank_v1", "clearhouse_v1",
            "clearhouse_v1"]
        assert CLEARHOUSE_V1.plain and not ALIPAY_BILL_V1.plain

    def test_unknown_format_or_mapping(self):
        assert FORMATS == ("csv", "mt940", "camt053")
        with pytest.raises(UnknownStatementFormat):
            parse_statement(SAMPLES / "clearhouse_v1.csv", "xlsx")
        with pytest.raises(UnknownStatementFormat):
            parse_statement(SAMPLES / "clearhouse_v1.csv", "csv", mapping="nope_v9")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(amounts=st.lists(st.integers(min_value=-(10**14 - 1), max_value=10**14 - 1), min_size=1, max_size=40),
       currency=st.sampled_from(["CNY", "JPY", "BHD", "EUR"]))
def test_any_amount_written_in_major_units_reads_back_to_the_same_minor_units(tmp_path, amounts, currency):
    """Whatever the exponent, the text a channel writes (``major_units``) parses back exactly."""
    from clearhouse.channels.connectors.sandbox import major_units

    path = write(tmp_path, "ref,amount,day,ccy\n" + "".join(
        f"r{n},{major_units(minor, currency)},2026-11-23,{currency}\n" for n, minor in enumerate(amounts)))
    mapping = custom(columns={"our_ref": "ref", "amount": "amount", "booked_on": "day", "currency": "ccy"})
    assert parse_statement(path, "csv", mapping=mapping).lines["amount"].to_list() == amounts


class TestTotals:
    HEADER = "our_ref,channel_ref,kind,status,amount,fee,currency,booked_on,value_on,description\n"

    def test_amounts_adding_up_beyond_the_ledgers_integers_are_refused_at_the_line_that_passes(self, tmp_path):
        path = tmp_path / "huge.csv"
        path.write_text(self.HEADER + f"a_1,,payment,succeeded,{2**62 - 10},0,CNY,2026-11-23,,x\n"
                        f"a_2,,refund,succeeded,-11,0,CNY,2026-11-23,,x\n")
        with pytest.raises(StatementInvalid) as caught:
            parse_statement(path, "csv", mapping="clearhouse_v1")
        assert caught.value.line == 3 and "add up beyond" in caught.value.detail

    def test_one_line_at_the_limit_is_accepted(self, tmp_path):
        path = tmp_path / "edge.csv"
        path.write_text(self.HEADER + f"a_1,,payment,succeeded,{2**62 - 5},5,CNY,2026-11-23,,x\n")
        assert parse_statement(path, "csv", mapping="clearhouse_v1").lines["amount"][0] == 2**62 - 5

    def test_a_fee_that_would_push_a_net_amount_past_the_limit_is_refused(self, tmp_path):
        path = tmp_path / "net.csv"
        path.write_text(self.HEADER + f"a_1,,payment,succeeded,{2**62},-1,CNY,2026-11-23,,x\n")
        with pytest.raises(StatementInvalid) as caught:
            parse_statement(path, "csv", mapping="clearhouse_v1")
        assert caught.value.line == 2
