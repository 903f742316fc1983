"""Statement parsers at their edges: amounts that do not fit the ledger's integers, a gap between two
statements of one account, text that only looks like a line end, a column named twice, a line with no
amount, and a 29 February that does not exist. Every one is ``StatementInvalid`` naming its line."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from clearhouse.reconciliation.errors import StatementInvalid
from clearhouse.reconciliation.formats import CsvMapping, parse_statement
from clearhouse.reconciliation.formats.mappings import CLEARHOUSE_V1

HEADER = "our_ref,channel_ref,kind,status,amount,fee,currency,booked_on,value_on,description\n"


def write(tmp_path: Path, content: str | bytes, name: str = "statement") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def invalid(path: Path, fmt: str, **options) -> StatementInvalid:
    with pytest.raises(StatementInvalid) as caught:
        parse_statement(path, fmt, **options)
    return caught.value


def line_of(text: str, part: str, occurrence: int = 1) -> int:
    at = -1
    for _ in range(occurrence):
        at = text.index(part, at + 1)
    return text[:at].count("\n") + 1


def mt940(*statements: str) -> str:
    return "".join(statements)


def mt940_statement(number: str, account: str, opening: str, movements: str, closing: str) -> str:
    """One MT940 statement (:20: to -) in the layout of tests/reconciliation/samples/mt940_two_statements.sta."""
    return (f":20:STMT{number}\n:25:{account}\n:28C:{number}/001\n:60F:{opening}\n{movements}:62F:{closing}\n-\n")


def camt_statement(identifier: str, iban: str, opening: str, closing: str, entries: str = "",
                   currency: str = "EUR") -> str:
    """One ``Stmt`` of a camt.053.001.02 document, its balances credit balances, as in camt053_v02.xml."""
    def balance(code: str, amount: str) -> str:
        return (f"      <Bal>\n        <Tp><CdOrPrtry><Cd>{code}</Cd></CdOrPrtry></Tp>\n"
                f'        <Amt Ccy="{currency}">{amount}</Amt>\n        <CdtDbtInd>CRDT</CdtDbtInd>\n'
                "        <Dt><Dt>2026-11-23</Dt></Dt>\n      </Bal>\n")
    return (f"    <Stmt>\n      <Id>{identifier}</Id>\n      <Acct>\n        <Id><IBAN>{iban}</IBAN></Id>\n"
            f"      </Acct>\n{balance('OPBD', opening)}{balance('CLBD', closing)}{entries}    </Stmt>\n")


def camt_entry(amount: str, reference: str, charges: str = "", currency: str = "EUR") -> str:
    return (f'      <Ntry>\n        <Amt Ccy="{currency}">{amount}</Amt>\n        <CdtDbtInd>CRDT</CdtDbtInd>\n'
            "        <Sts>BOOK</Sts>\n        <BookgDt><Dt>2026-11-23</Dt></BookgDt>\n"
            f"        <AcctSvcrRef>{reference}</AcctSvcrRef>\n{charges}      </Ntry>\n")


def camt(*statements: str) -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.02">\n  <BkToCstmrStmt>\n'
            "    <GrpHdr><MsgId>MSG-1</MsgId><CreDtTm>2026-11-24T06:00:00+01:00</CreDtTm></GrpHdr>\n"
            + "".join(statements) + "  </BkToCstmrStmt>\n</Document>\n")


IBAN = "DE89370400440532013000"
OTHER_IBAN = "FR1420041010050500013M02606"


class TestAmountsBeyondTheLedgersIntegers:
    def test_an_mt940_movement_of_fifteen_digits_in_clf_names_its_line(self, tmp_path):
        # CLF has 4 decimals: 999 999 999 999 999.9999 is 10**19 - 1 minor units, beyond 2**63 - 1.
        text = mt940_statement("1", IBAN, "C261123CLF0,", ":61:2611241124C999999999999999,9999NTRFREF1//B1\n",
                               "C261124CLF999999999999999,9999")
        error = invalid(write(tmp_path, text), "mt940")
        assert error.line == line_of(text, ":61:") == 5 and "2^62" in error.detail

    def test_an_mt940_balance_beyond_the_limit_names_its_line(self, tmp_path):
        text = mt940_statement("1", IBAN, "C261123CLF999999999999999,9999", "", "C261124CLF999999999999999,9999")
        assert invalid(write(tmp_path, text), "mt940").line == 4

    def test_a_camt053_entry_beyond_the_limit_names_its_xml_line(self, tmp_path):
        text = camt(camt_statement("S1", IBAN, "0", "1.00", camt_entry("99999999999999999999.00", "AS1")))
        error = invalid(write(tmp_path, text), "camt053")
        assert error.line == line_of(text, "<Ntry>") and "2^62" in error.detail

    def test_a_camt053_balance_beyond_the_limit_names_its_xml_line(self, tmp_path):
        text = camt(camt_statement("S1", IBAN, "0", "99999999999999999999.00",
                                   camt_entry("99999999999999999999.00", "AS1")))
        assert invalid(write(tmp_path, text), "camt053").line == line_of(text, "<Bal>", 2)

    def test_camt053_charges_that_add_up_beyond_the_limit_name_their_entry(self, tmp_path):
        # Four charges of 3 * 10**18 minor units each fit alone; their sum (1.2 * 10**19) does not fit an Int64.
        record = '<Rcrd><Amt Ccy="EUR">30000000000000000.00</Amt><CdtDbtInd>DBIT</CdtDbtInd></Rcrd>'
        charges = f"        <Chrgs>{record * 4}</Chrgs>\n"
        text = camt(camt_statement("S1", IBAN, "0", "1.00", camt_entry("1.00", "AS1", charges)))
        error = invalid(write(tmp_path, text), "camt053")
        assert error.line == line_of(text, "<Ntry>") and "2^62" in error.detail

    def test_the_largest_amount_that_fits_still_reads(self, tmp_path):
        # 2**62 minor units of CLF is 461 168 601 842 738.7904: the limit itself is allowed.
        text = mt940_statement("1", IBAN, "C261123CLF0,", ":61:2611241124C461168601842738,7904NTRFREF1//B1\n",
                               "C261124CLF461168601842738,7904")
        assert parse_statement(write(tmp_path, text), "mt940").lines["amount"].to_list() == [2**62]


class TestConsecutiveStatementsChain:
    """A bank's statements of one account follow each other: each opens at the previous one's closing
    balance. Anything else is movements missing between them, refused at the later opening balance."""

    def test_an_mt940_gap_between_two_statements_of_one_account_names_the_second_opening(self, tmp_path):
        # 1000.00 + 100.00 = 1100.00, then the next statement opens at 5000.00: 3900.00 of movements are missing.
        text = mt940(
            mt940_statement("00231", IBAN, "C261123EUR1000,00", ":61:2611241124C100,00NTRFREF1//B1\n",
                            "C261124EUR1100,00"),
            mt940_statement("00232", IBAN, "C261124EUR5000,00", ":61:2611251125D50,00NTRFREF2//B2\n",
                            "C261125EUR4950,00"))
        error = invalid(write(tmp_path, text), "mt940")
        assert error.line == line_of(text, ":60F:", 2) == 11
        assert "previous statement (line 6)" in error.detail and "500000" in error.detail

    def test_mt940_statements_that_chain_read_and_other_accounts_or_currencies_are_independent(self, tmp_path):
        text = mt940(
            mt940_statement("00231", IBAN, "C261123EUR1000,00", ":61:2611241124C100,00NTRFREF1//B1\n",
                            "C261124EUR1100,00"),
            mt940_statement("00007", "FR1420041010050500013M02606", "C261123EUR5000,00", "", "C261124EUR5000,00"),
            mt940_statement("00008", IBAN, "C261123USD70,00", "", "C261124USD70,00"),
            mt940_statement("00232", IBAN, "C261124EUR1100,00", ":61:2611251125D50,00NTRFREF2//B2\n",
                            "C261125EUR1050,00"))
        parsed = parse_statement(write(tmp_path, text), "mt940")
        assert parsed.lines["amount"].to_list() == [10_000, -5_000]
        assert parsed.meta.extra["statements"] == "4"

    def test_a_camt053_gap_between_two_statements_of_one_account_names_the_second_opening(self, tmp_path):
        text = camt(camt_statement("S1", IBAN, "1000.00", "1100.00", camt_entry("100.00", "AS1")),
                    camt_statement("S2", IBAN, "9100.00", "9150.00", camt_entry("50.00", "AS2")))
        error = invalid(write(tmp_path, text), "camt053")
        assert error.line == line_of(text, "<Bal>", 3) and "previous statement" in error.detail

    def test_camt053_statements_that_chain_read_and_other_accounts_or_currencies_are_independent(self, tmp_path):
        text = camt(camt_statement("S1", IBAN, "1000.00", "1100.00", camt_entry("100.00", "AS1")),
                    camt_statement("X1", OTHER_IBAN, "9100.00", "9100.00"),
                    camt_statement("U1", IBAN, "70.00", "70.00", currency="USD"),
                    camt_statement("S2", IBAN, "1100.00", "1150.00", camt_entry("50.00", "AS2")))
        parsed = parse_statement(write(tmp_path, text), "camt053")
        assert parsed.lines["amount"].to_list() == [10_000, 5_000]


WECHAT_STYLE = CsvMapping(name="bom_backticks", encoding="utf-8-sig", strip_prefix="`", amount_unit="major",
                          columns={"our_ref": "ref", "amount": "amt", "currency": "ccy", "booked_on": "day",
                                   "description": "desc"})
"""Read by the Python reader (BOM, backticks), as WeChat's bill is."""


class TestThePythonReaderSplitsRowsOnlyAtLineEnds:
    @pytest.mark.parametrize("char", ["\u2028", "\u2029", "\x85", "\x0c", "\x0b", "\x1c", "\x1d", "\x1e"])
    def test_unicode_line_separators_inside_a_field_are_text(self, tmp_path, char):
        body = (f"\ufeffref,amt,ccy,day,desc\r\n`r1,`1.00,`CNY,`2026-11-24,`Gift{char}card\r\n"
                "`r2,`2.00,`CNY,`2026-11-24,`ok\r\n`r3,`oops,`CNY,`2026-11-24,`bad\r\n")
        path = write(tmp_path, body)
        error = invalid(path, "csv", mapping=WECHAT_STYLE)
        assert error.line == 4 and "amount" in error.detail  # the line numbers after the character are right
        path.write_text(body.rsplit("`r3", 1)[0], encoding="utf-8")
        parsed = parse_statement(path, "csv", mapping=WECHAT_STYLE)
        assert parsed.lines.select("line_no", "amount", "description").rows() == [
            (2, 100, f"Gift{char}card"), (3, 200, "ok")]

    def test_a_lone_carriage_return_is_kept_in_a_quoted_field_and_refused_in_an_unquoted_one(self, tmp_path):
        quoted = '\ufeffref,amt,ccy,day,desc\n`r1,`1.00,`CNY,`2026-11-24,"Gift\rcard"\n`r2,`2.00,`CNY,`2026-11-24,`ok\n'
        parsed = parse_statement(write(tmp_path, quoted), "csv", mapping=WECHAT_STYLE)
        assert parsed.lines.select("line_no", "description").rows() == [(2, "Gift\rcard"), (3, "ok")]
        error = invalid(write(tmp_path, quoted.replace('"Gift\rcard"', "`Gift\rcard")), "csv", mapping=WECHAT_STYLE)
        assert error.line == 2


class TestAColumnNamedTwice:
    @pytest.mark.parametrize("mapping", [CLEARHOUSE_V1, CLEARHOUSE_V1.model_copy(update={"encoding": "utf-8-sig",
                                                                                         "strip_prefix": "`"})],
                             ids=["fast path", "python reader"])
    def test_is_refused_at_the_header_on_both_paths(self, tmp_path, mapping):
        path = write(tmp_path, HEADER.replace("description\n", "description,amount\n")
                     + "att_1,ch_1,payment,succeeded,1000,0,EUR,2026-11-23,,hello,5\n")
        error = invalid(path, "csv", mapping=mapping)
        assert error.line == 1 and "names a column twice" in error.detail

    def test_is_refused_at_the_header_after_skipped_lines(self, tmp_path):
        path = write(tmp_path, "Account,DE89\nPeriod,2026-11\n" + HEADER.replace("kind,", "kind,kind,")
                     + "att_1,ch_1,payment,payment,succeeded,1000,0,EUR,2026-11-23,,hello\n")
        error = invalid(path, "csv", mapping=CLEARHOUSE_V1.model_copy(update={"skip_lines": 2}))
        assert error.line == 3 and "names a column twice" in error.detail

    def test_a_column_whose_own_name_ends_like_a_renamed_duplicate_is_not_one(self, tmp_path):
        path = write(tmp_path, HEADER.replace("description\n", "description,amount_duplicated_0\n")
                     + "att_1,ch_1,payment,succeeded,1000,0,EUR,2026-11-23,,hello,5\n")
        assert parse_statement(path, "csv", mapping=CLEARHOUSE_V1).lines["amount"].to_list() == [1000]


SPLIT = CsvMapping(name="split", sign="split", amount_unit="major", currency="CNY",
                   columns={"our_ref": "ref", "credit": "cr", "debit": "dr", "booked_on": "day"})


class TestSplitColumnsWithNoAmount:
    @pytest.mark.parametrize("mapping", [SPLIT, SPLIT.model_copy(update={"encoding": "utf-8-sig"})],
                             ids=["fast path", "python reader"])
    def test_a_row_with_both_columns_empty_is_refused_at_its_line(self, tmp_path, mapping):
        body = "ref,cr,dr,day\nr1,100.00,,2026-11-24\nr2,,30.00,2026-11-24\nr3,,,2026-11-24\n"
        error = invalid(write(tmp_path, body), "csv", mapping=mapping)
        assert error.line == 4 and "both the credit and the debit amount are empty" in error.detail

    def test_a_written_zero_is_an_amount_of_zero(self, tmp_path):
        body = "ref,cr,dr,day\nr1,0.00,,2026-11-24\nr2,,0,2026-11-24\n"
        assert parse_statement(write(tmp_path, body), "csv", mapping=SPLIT).lines["amount"].to_list() == [0, 0]


class TestAnImpossibleEntryDateInMT940:
    def test_29_february_of_a_common_year_names_the_61_line(self, tmp_path):
        text = mt940_statement("1", IBAN, "C270227EUR1000,00", ":61:2702270229C100,00NTRFREF1//B1\n",
                               "C270228EUR1100,00")
        error = invalid(write(tmp_path, text), "mt940")
        assert error.line == 5 and "'270229' is not a date" in error.detail

    def test_29_february_of_a_leap_year_is_booked(self, tmp_path):
        text = mt940_statement("1", IBAN, "C280227EUR1000,00", ":61:2802270229C100,00NTRFREF1//B1\n",
                               "C280229EUR1100,00")
        parsed = parse_statement(write(tmp_path, text), "mt940")
        assert parsed.lines.select("booked_on", "value_on").rows() == [(date(2028, 2, 29), date(2028, 2, 27))]
