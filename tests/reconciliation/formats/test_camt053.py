"""camt.053 written by hand from the ISO 20022 message definitions (.001.02 with a default namespace,
.001.08 with a prefix), every defect named by its XML line, and a large generated file read with flat
memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tracemalloc
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from clearhouse.reconciliation.errors import StatementInvalid
from clearhouse.reconciliation.formats import parse_statement
from clearhouse.reconciliation.frames import STATEMENT_SCHEMA

SAMPLES = Path(__file__).parent.parent / "samples"
V02 = SAMPLES / "camt053_v02.xml"
V08 = SAMPLES / "camt053_v08.xml"


def broken(tmp_path: Path, content: str | bytes) -> StatementInvalid:
    path = tmp_path / "broken.xml"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(StatementInvalid) as caught:
        parse_statement(path, "camt053")
    return caught.value


def edit(source: Path, old: str, new: str) -> str:
    text = source.read_text()
    assert old in text
    return text.replace(old, new, 1)


def test_version_02_booked_entries_only_with_a_batch_and_its_charges():
    parsed = parse_statement(V02, "camt053")  # no charges on an entry: the bank states no fee (null, not 0)
    assert parsed.lines.schema == pl.Schema(STATEMENT_SCHEMA)
    assert parsed.lines.rows() == [
        (28, "att_1", "CT20261123001", "payment", "succeeded", 10_000, None, "EUR", date(2026, 11, 23),
         date(2026, 11, 24), "CH-NM8E-PVBP"),
        (43, "re_1", "RT20261123002", "refund", "succeeded", -3_000, None, "EUR", date(2026, 11, 23),
         date(2026, 11, 24), "Refund order 1001"),
        # the PDNG entry (line 57) is not a line; the batch credit is one settlement line, net of 0.63 charges
        (64, "BATCH-7", "ST20261123003", "settlement", "succeeded", 7_737, 63, "EUR", date(2026, 11, 23),
         date(2026, 11, 23), None),
    ]
    meta = parsed.meta
    assert (meta.format, meta.account, meta.currency, meta.statement_id) == (
        "camt053", "DE89370400440532013000", "EUR", "STMT-2026-11-23")
    assert (meta.opening_balance, meta.closing_balance, meta.first_day, meta.last_day) == (
        100_000, 114_737, date(2026, 11, 23), date(2026, 11, 23))


def test_version_08_prefixed_sts_code_datetime_booking_included_charges_and_a_reversal():
    parsed = parse_statement(V08, "camt053")
    assert parsed.lines.rows() == [
        # booked 249.50 net of a 0.50 charge included in it: 250.00 gross
        (23, "att_7", "CT20261124001", "payment", "succeeded", 25_000, 50, "EUR", date(2026, 11, 24),
         date(2026, 11, 24), "Order 1007 Tea set"),
        (46, None, "RV20261124002", "other", "succeeded", 100, None, "EUR", date(2026, 11, 24), date(2026, 11, 24),
         "Reversal of a wrong debit"),  # NOTPROVIDED is no reference; INFO entry skipped
    ]
    assert (parsed.meta.account, parsed.meta.opening_balance, parsed.meta.closing_balance) == (
        "0532013000", 114_737, 139_787)


def test_balances_that_do_not_add_up_name_the_closing_balance(tmp_path):
    error = broken(tmp_path, edit(V02, '<Amt Ccy="EUR">1147.37</Amt>', '<Amt Ccy="EUR">1147.36</Amt>'))
    assert error.line == 22 and "closing balance" in error.detail  # the CLBD <Bal>
    # a pending entry turned booked is money the balance does not cover
    assert broken(tmp_path, edit(V02, "<Sts>PDNG</Sts>", "<Sts>BOOK</Sts>")).line == 22


@pytest.mark.parametrize(("old", "new", "line", "what"), [
    ('<Amt Ccy="EUR">100.00</Amt>', '<Amt Ccy="EUR">100.0O</Amt>', 28, "not a decimal"),
    ('<Amt Ccy="EUR">100.00</Amt>', '<Amt Ccy="EUR">100.001</Amt>', 28, "minor units"),
    ('<Amt Ccy="EUR">100.00</Amt>', '<Amt Ccy="EUX">100.00</Amt>', 28, "ISO 4217"),
    ('<Amt Ccy="EUR">100.00</Amt>', '<Amt Ccy="EUR">-100.00</Amt>', 28, "not a decimal"),
    ("<BookgDt><Dt>2026-11-23</Dt></BookgDt>\n        <ValDt><Dt>2026-11-24</Dt></ValDt>\n"
     "        <AcctSvcrRef>CT20261123001",
     "<BookgDt><Dt>2026-11-31</Dt></BookgDt>\n        <ValDt><Dt>2026-11-24</Dt></ValDt>\n"
     "        <AcctSvcrRef>CT20261123001", 28, "date"),
    ("<CdtDbtInd>DBIT</CdtDbtInd>\n        <Sts>BOOK", "<CdtDbtInd>DEBIT</CdtDbtInd>\n        <Sts>BOOK", 43,
     "CdtDbtInd"),
    ("<Sts>BOOK</Sts>", "", 28, "Sts"),
])
def test_a_bad_entry_names_its_xml_line(tmp_path, old, new, line, what):
    error = broken(tmp_path, edit(V02, old, new))
    assert error.line == line and what in error.detail


def test_truncated_or_malformed_xml_names_the_line_lxml_reports(tmp_path):
    text = V02.read_text()
    error = broken(tmp_path, text[:text.index("<Ntry>", text.index("RT20261123002"))])  # cut at line 55
    assert error.line is not None and error.line >= 55 and "XML" in error.detail
    error = broken(tmp_path, edit(V02, "<AcctSvcrRef>RT20261123002</AcctSvcrRef>", "<AcctSvcrRef>RT2026</Acct>"))
    assert error.line == 49


def test_empty_wrong_encoding_and_not_camt053(tmp_path):
    assert broken(tmp_path, b"").line == 1
    latin1 = edit(V02, "Refund order 1001", "Rückerstattung").encode("latin-1")  # declared UTF-8
    assert broken(tmp_path, latin1).line == 53
    assert broken(tmp_path, "<?xml version='1.0'?>\n<Document><Other/></Document>\n").line == 1
    assert broken(tmp_path, "our_ref,amount\n").line == 1


def test_a_statement_without_balances_is_refused(tmp_path):
    text = V02.read_text()
    start, end = text.index("      <Bal>"), text.index("      <Ntry>")
    assert "balance" in broken(tmp_path, text[:start] + text[end:]).detail


# --------------------------------------------------------------------------- a large file

ENTRY = ('<Ntry><Amt Ccy="EUR">{major}</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts><Cd>BOOK</Cd></Sts>'
         "<BookgDt><Dt>2026-11-23</Dt></BookgDt><ValDt><Dt>2026-11-24</Dt></ValDt>"
         "<AcctSvcrRef>CT{i:09d}</AcctSvcrRef><NtryDtls><TxDtls><Refs><EndToEndId>att_{i}</EndToEndId></Refs>"
         "<RmtInf><Ustrd>Order {i}: a remittance text as long as banks like to write them</Ustrd></RmtInf>"
         "</TxDtls></NtryDtls></Ntry>\n")


def generate(path: Path, entries: int) -> Path:
    """One statement of ``entries`` credits of 0.01, 0.02, ... with balances that add up."""
    total = entries * (entries + 1) // 2
    with path.open("w") as out:
        out.write('<?xml version="1.0"?>\n<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.08">'
                  "<BkToCstmrStmt><Stmt><Id>BIG</Id>\n")
        for code, minor in (("OPBD", 0), ("CLBD", total)):
            out.write(f'<Bal><Tp><CdOrPrtry><Cd>{code}</Cd></CdOrPrtry></Tp><Amt Ccy="EUR">{minor // 100}.'
                      f"{minor % 100:02d}</Amt><CdtDbtInd>CRDT</CdtDbtInd><Dt><Dt>2026-11-23</Dt></Dt></Bal>\n")
        for i in range(1, entries + 1):
            out.write(ENTRY.format(major=f"{i // 100}.{i % 100:02d}", i=i))
        out.write("</Stmt></BkToCstmrStmt></Document>\n")
    return path


PEAK_RSS = textwrap.dedent("""
    import resource, sys
    from clearhouse.reconciliation.formats import parse_statement
    lines = parse_statement(sys.argv[1], "camt053").lines
    assert lines.height == int(sys.argv[2]) and lines["amount"].sum() == int(sys.argv[2]) * (int(sys.argv[2]) + 1) // 2
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
""")


def peak_rss(path: Path, entries: int) -> int:
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, str(path), str(entries)], capture_output=True, text=True,
                          check=True)
    return int(done.stdout.strip())


def test_a_large_file_is_streamed_with_flat_memory(tmp_path):
    """libxml2's tree lives outside Python (tracemalloc cannot see it), so the whole process is measured:
    the peak resident memory reading 100,000 entries (about 38 MB of XML) exceeds that of reading 1,000
    by far less than the file's size; a parser that kept the tree would need several times the file."""
    big = generate(tmp_path / "big.xml", 100_000)
    small = generate(tmp_path / "small.xml", 1_000)
    size = big.stat().st_size
    assert size > 35_000_000
    growth = peak_rss(big, 100_000) - peak_rss(small, 1_000)
    assert growth < size / 2, (growth, size)


def test_python_memory_stays_flat_as_the_file_grows(tmp_path):
    """Python's own peak (tracemalloc) reading 10,000 entries is about that of reading 2,500: rows move
    into Polars chunks as they come and every entry is dropped once read."""

    def peak(entries: int) -> tuple[int, int]:
        path = generate(tmp_path / f"{entries}.xml", entries)
        tracemalloc.start()
        try:
            parsed = parse_statement(path, "camt053")
            highest = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert parsed.lines.height == entries and parsed.meta.closing_balance == entries * (entries + 1) // 2
        return highest, path.stat().st_size

    small, _ = peak(2_500)
    large, size = peak(10_000)
    assert large - small < size / 10, (small, large, size)


def test_several_statements_in_one_document_each_add_up(tmp_path):
    text = V02.read_text()
    start, end = text.index("    <Stmt>"), text.index("  </BkToCstmrStmt>")
    second = (text[start:end].replace("STMT-2026-11-23", "STMT-2026-11-24").replace(">1147.37<", ">1294.74<")
              .replace(">1000.00<", ">1147.37<").replace("2026-11-23", "2026-11-24"))
    path = tmp_path / "two.xml"
    path.write_text(text[:end] + second + text[end:])
    parsed = parse_statement(path, "camt053")
    assert parsed.lines.height == 6 and parsed.lines["line_no"].to_list()[3] > parsed.lines["line_no"].to_list()[2]
    meta = parsed.meta
    assert (meta.opening_balance, meta.closing_balance, meta.first_day, meta.last_day, meta.statement_id) == (
        100_000, 129_474, date(2026, 11, 23), date(2026, 11, 24), "STMT-2026-11-23")
    assert meta.extra == {"statements": "2", "last_statement_id": "STMT-2026-11-24"}
    path.write_text(text[:end] + second.replace(">1294.74<", ">1294.75<") + text[end:])
    with pytest.raises(StatementInvalid) as caught:  # the second one does not add up: nothing is returned
        parse_statement(path, "camt053")
    assert caught.value.line is not None and caught.value.line > text[:end].count("\n")


STRAY = ('<Ntry><Amt Ccy="EUR">500.00</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts>BOOK</Sts>'
         "<BookgDt><Dt>2026-11-23</Dt></BookgDt><AcctSvcrRef>STRAY</AcctSvcrRef></Ntry>")


@pytest.mark.parametrize(("old", "new"), [
    ("    </Stmt>\n", "    </Stmt>\n" + STRAY + "\n"),  # after the statement, inside BkToCstmrStmt
    ("    </Stmt>\n", "      <Other>\n" + STRAY + "\n      </Other>\n    </Stmt>\n"),  # not a child of Stmt
])
def test_an_entry_outside_a_statement_is_malformed_not_imported_unchecked(tmp_path, old, new):
    text = edit(V02, old, new)
    error = broken(tmp_path, text)
    stray = text[:text.index(STRAY)].count("\n") + 1
    assert error.line == stray and "outside a statement" in error.detail


@pytest.mark.parametrize(("old", "new", "what"), [
    ('<Amt Ccy="EUR">0.63</Amt>', '<Amt Ccy="USD">0.63</Amt>', "charges in USD on an entry in EUR"),
    ("<BookgDt><Dt>2026-11-23</Dt></BookgDt>", "<BookgDt><Dt>2026-11-23garbage</Dt></BookgDt>", "ISO date"),
])
def test_charges_in_another_currency_and_dates_with_trailing_text_are_refused(tmp_path, old, new, what):
    assert old in V02.read_text()
    error = broken(tmp_path, edit(V02, old, new))
    assert error.line is not None and what in error.detail


def test_a_booking_date_time_with_its_offset_is_its_day(tmp_path):
    text = V02.read_text().replace("<BookgDt><Dt>2026-11-23</Dt></BookgDt>",
                                   "<BookgDt><DtTm>2026-11-23T23:30:00+08:00</DtTm></BookgDt>", 1)
    path = tmp_path / "dttm.xml"
    path.write_text(text)
    lines = parse_statement(path, "camt053").lines
    assert str(lines["booked_on"][0]) == "2026-11-23"
