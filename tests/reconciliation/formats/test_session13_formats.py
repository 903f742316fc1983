"""Statement parsers at the edges the exploratory session of 2026-11-24 found: a local time at a daylight-saving
change, a thousands separator where no thousands are, a mapping's time zone without a calendar, an unknown
encoding, and a bank file with statements of two accounts (every line on its own statement's account)."""

from __future__ import annotations

from datetime import date

import pytest

from clearhouse.reconciliation.formats import CsvMapping, parse_statement
from tests.reconciliation.formats.test_session12_formats import (
    IBAN,
    OTHER_IBAN,
    camt,
    camt_entry,
    camt_statement,
    invalid,
    line_of,
    mt940_statement,
    write,
)

STAMPED = {"columns": {"our_ref": "ref", "amount": "amount", "booked_on": "when"}, "currency": "EUR",
           "date_format": "%Y-%m-%d %H:%M:%S"}


def stamped(moment: str, **zones: str) -> tuple[str, CsvMapping]:
    return (f"ref,amount,when\nr1,1,2026-10-24 10:00:00\nr2,1,{moment}\n",
            CsvMapping(**STAMPED, **zones))


class TestALocalTimeAtADaylightSavingChange:
    def test_one_the_clocks_skipped_is_refused_at_its_line(self, tmp_path):
        content, mapping = stamped("2026-03-29 02:30:00", timezone="Europe/Berlin", calendar="UTC")
        error = invalid(write(tmp_path, content), "csv", mapping=mapping)
        assert error.line == 3 and "does not exist in Europe/Berlin" in error.detail

    @pytest.mark.parametrize(("zone", "moment", "day"), [
        ("Europe/Berlin", "2026-10-25 02:30:00", date(2026, 10, 25)),  # 00:30 or 01:30 UTC
        ("America/New_York", "2026-11-01 01:30:00", date(2026, 11, 1)),  # 05:30 or 06:30 UTC
    ])
    def test_one_the_clocks_passed_twice_is_its_day_when_both_instants_are_on_it(self, tmp_path, zone, moment, day):
        content, mapping = stamped(moment, timezone=zone, calendar="UTC")
        lines = parse_statement(write(tmp_path, content), "csv", mapping=mapping).lines
        assert lines["booked_on"].to_list() == [date(2026, 10, 24), day]

    def test_one_whose_two_instants_fall_on_two_days_of_the_calendar_is_refused(self, tmp_path):
        # 02:30 in Berlin on 25 October is 00:30 or 01:30 UTC: 23:30 on the 24th or 00:30 on the 25th at UTC-1.
        content, mapping = stamped("2026-10-25 02:30:00", timezone="Europe/Berlin", calendar="Etc/GMT+1")
        error = invalid(write(tmp_path, content), "csv", mapping=mapping)
        assert error.line == 3 and "occurs twice in Europe/Berlin" in error.detail

    def test_in_a_value_date_too_and_on_the_python_reader(self, tmp_path):
        # A ``#`` comment line sends the file through the Python reader; the value date is the one at the change.
        content = "# bank export\nref,amount,when,valued\nr1,1,2026-03-28 10:00:00,2026-03-29 02:30:00\n"
        mapping = CsvMapping(**{**STAMPED, "columns": {**STAMPED["columns"], "value_on": "valued"}},
                             comment_prefix="#", timezone="Europe/Berlin", calendar="UTC")
        error = invalid(write(tmp_path, content), "csv", mapping=mapping)
        assert error.line == 3 and "does not exist" in error.detail

    def test_without_a_move_between_zones_the_time_is_taken_as_written(self, tmp_path):
        content, mapping = stamped("2026-03-29 02:30:00", timezone="Europe/Berlin", calendar="Europe/Berlin")
        assert parse_statement(write(tmp_path, content), "csv", mapping=mapping).lines["booked_on"].to_list() == [
            date(2026, 10, 24), date(2026, 3, 29)]


def decimal_comma(**fields: object) -> CsvMapping:
    return CsvMapping(**{"columns": {"our_ref": "ref", "amount": "amount", "booked_on": "day"}, "currency": "EUR",
                         "delimiter": ";", "amount_unit": "major", "decimal_separator": ",",
                         "thousands_separator": ".", **fields})


class TestAThousandsSeparator:
    @pytest.mark.parametrize(("text", "minor"), [("1.234,56", 123_456), ("1.234.567,89", 123_456_789),
                                                 ("1234,56", 123_456), ("-1.000", -100_000), ("999,9", 99_990),
                                                 ("0,50", 50)])
    def test_between_groups_of_three_digits_it_is_read(self, tmp_path, text, minor):
        path = write(tmp_path, f"ref;amount;day\nr1;{text};2026-11-23\n")
        assert parse_statement(path, "csv", mapping=decimal_comma()).lines["amount"].to_list() == [minor]

    @pytest.mark.parametrize("text", ["12.34", "1.2.3.4,00", "1234.567,00", "1.234,5.6", ".123,00", "1.23",
                                      "0.123,00", "1..234,00", "1.234.", "12.3456"])
    def test_anywhere_else_the_line_is_refused(self, tmp_path, text):
        path = write(tmp_path, f"ref;amount;day\nr0;1,00;2026-11-23\nr1;{text};2026-11-23\n")
        error = invalid(path, "csv", mapping=decimal_comma())
        assert error.line == 3 and "amount" in error.detail

    def test_with_a_decimal_point_and_in_minor_units_alike(self, tmp_path):
        point = CsvMapping(columns={"our_ref": "ref", "amount": "amount", "booked_on": "day"}, currency="EUR",
                           amount_unit="major", thousands_separator=",")
        path = write(tmp_path, 'ref,amount,day\nr1,"1,234.50",2026-11-23\n')
        assert parse_statement(path, "csv", mapping=point).lines["amount"].to_list() == [123_450]
        assert invalid(write(tmp_path, 'ref,amount,day\nr1,"10,5",2026-11-23\n', "b.csv"), "csv",
                       mapping=point).line == 2
        minor = point.model_copy(update={"amount_unit": "minor"})
        grouped = write(tmp_path, 'ref,amount,day\nr1,"12,345",2026-11-23\n', "c.csv")
        assert parse_statement(grouped, "csv", mapping=minor).lines["amount"].to_list() == [12_345]
        assert invalid(write(tmp_path, 'ref,amount,day\nr1,"12,34",2026-11-23\n', "d.csv"), "csv",
                       mapping=minor).line == 2

    @pytest.mark.parametrize("separator", [",", "1", "-"])
    def test_one_that_is_the_decimal_separator_a_digit_or_a_sign_is_refused_in_the_mapping(self, separator):
        with pytest.raises(ValueError, match="thousands_separator"):
            decimal_comma(thousands_separator=separator)


class TestAMappingsTimezoneWithoutACalendar:
    MAPPING = CsvMapping(**STAMPED, timezone="UTC")

    def test_moves_timestamps_into_the_channels_calendar(self, tmp_path):
        path = write(tmp_path, "ref,amount,when\nr1,1,2026-11-24 15:59:59\nr2,1,2026-11-24 18:46:06\n")
        lines = parse_statement(path, "csv", mapping=self.MAPPING, calendar="Asia/Shanghai").lines
        assert lines["booked_on"].to_list() == [date(2026, 11, 24), date(2026, 11, 25)]

    def test_a_calendar_of_its_own_wins_over_the_channels(self, tmp_path):
        path = write(tmp_path, "ref,amount,when\nr1,1,2026-11-24 18:46:06\n")
        own = self.MAPPING.model_copy(update={"calendar": "UTC"})
        assert parse_statement(path, "csv", mapping=own, calendar="Asia/Shanghai").lines["booked_on"].to_list() == [
            date(2026, 11, 24)]


class TestAMappingsEncoding:
    @pytest.mark.parametrize("encoding", ["klingon", "rot13", "base64", "zlib"])
    def test_an_unknown_or_non_text_one_is_refused_when_the_mapping_is_made(self, encoding):
        with pytest.raises(ValueError, match="unknown text encoding"):
            CsvMapping(**STAMPED, encoding=encoding)

    @pytest.mark.parametrize("encoding", ["utf-8", "UTF_8", "utf-8-sig", "gbk", "gb18030", "latin-1", "utf-16"])
    def test_a_text_codec_is_kept(self, encoding):
        assert CsvMapping(**STAMPED, encoding=encoding).encoding == encoding


class TestABankFileWithStatementsOfTwoAccounts:
    def test_mt940_every_line_is_on_its_own_statements_account(self, tmp_path):
        text = (mt940_statement("1", IBAN, "C261122EUR10,00", ":61:2611231123C5,00NTRFA1//B1\n", "C261123EUR15,00")
                + mt940_statement("2", OTHER_IBAN, "C261122CNY0,", ":61:2611231123C7,00NTRFA2//B2\n",
                                  "C261123CNY7,00"))
        parsed = parse_statement(write(tmp_path, text, "two.sta"), "mt940")
        meta = parsed.meta
        assert meta.account == IBAN
        first, second = parsed.lines["line_no"].to_list()
        assert [meta.account_of(first, "EUR"), meta.account_of(second, "CNY")] == [IBAN, OTHER_IBAN]
        # A line of ours the file lacks: the file's statement in its currency, else the file's first.
        assert [meta.account_of(None, "CNY"), meta.account_of(None, "USD")] == [OTHER_IBAN, IBAN]

    def test_camt053_every_line_is_on_its_own_statements_account(self, tmp_path):
        text = camt(camt_statement("S1", IBAN, "10.00", "15.00", camt_entry("5.00", "B1")),
                    camt_statement("S2", OTHER_IBAN, "0.00", "7.00", camt_entry("7.00", "B2", currency="CNY"),
                                   currency="CNY"))
        parsed = parse_statement(write(tmp_path, text, "two.xml"), "camt053")
        lines = parsed.lines["line_no"].to_list()
        assert lines == [line_of(text, "<Ntry>"), line_of(text, "<Ntry>", 2)]
        assert [parsed.meta.account_of(line, "EUR") for line in lines] == [IBAN, OTHER_IBAN]
        assert parsed.meta.account_of(None, "CNY") == OTHER_IBAN


class TestTheLargestPaymentIsReadInEveryCurrency:
    """A payment may be 10**15 minor units in any currency: 16 digits of yen, which the sandbox's
    statements write. The reader's bound is on digits in minor units (18), not on major units."""

    @pytest.mark.parametrize(("currency", "text", "minor"), [
        ("JPY", "1000000000000000", 10**15),
        ("JPY", "999999999999999999", 10**18 - 1),
        ("CNY", "9999999999999999.99", 10**18 - 1),
        ("CLF", "99999999999999.9999", 10**18 - 1),
    ])
    def test_up_to_eighteen_digits_in_minor_units(self, tmp_path, currency, text, minor):
        mapping = CsvMapping(columns={"our_ref": "ref", "amount": "amount", "booked_on": "day"}, currency=currency,
                             amount_unit="major")
        lines = parse_statement(write(tmp_path, f"ref,amount,day\nr1,{text},2026-11-24\n"), "csv",
                                mapping=mapping).lines
        assert lines["amount"].to_list() == [minor]

    @pytest.mark.parametrize(("currency", "text"), [("JPY", "1000000000000000000"), ("CLF", "100000000000000.0")])
    def test_more_is_refused_at_its_line_never_wrapped(self, tmp_path, currency, text):
        mapping = CsvMapping(columns={"our_ref": "ref", "amount": "amount", "booked_on": "day"}, currency=currency,
                             amount_unit="major")
        error = invalid(write(tmp_path, f"ref,amount,day\nr1,{text},2026-11-24\n"), "csv", mapping=mapping)
        assert error.line == 2
