"""A carriage return on its own is text only inside a quoted field (docs/reconciliation.md, "Channel CSV").

Before, one in the middle of an unquoted field was kept in the value (``A\\r1`` became the reference), and one
after the last field failed with the ``csv`` module's advice about opening files in universal-newline mode.
Both paths are covered: the fast Polars reader hands such a file to the Python reader, which names the line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from clearhouse.reconciliation.errors import StatementInvalid
from clearhouse.reconciliation.formats.csvmap import CsvMapping, parse_csv

GERMAN = CsvMapping.model_validate({
    "delimiter": ";", "columns": {"our_ref": "Ref", "amount": "Betrag", "booked_on": "Datum", "indicator": "SH"},
    "amount_unit": "major", "decimal_separator": ",", "thousands_separator": ".", "sign": "indicator",
    "currency": "EUR", "date_format": "%d.%m.%Y", "credit_values": ["H"], "debit_values": ["S"]})
PLAIN = CsvMapping.model_validate({"columns": {"our_ref": "ref", "amount": "amount", "booked_on": "day"},
                                   "amount_unit": "major", "currency": "EUR", "date_format": "%Y-%m-%d"})
GERMAN_HEADER = "Ref;Datum;Betrag;SH\n"
PLAIN_HEADER = "ref,day,amount\n"


def _parse(tmp_path: Path, mapping: CsvMapping, text: str) -> list[str]:
    path = tmp_path / "statement.csv"
    path.write_bytes(text.encode())
    return parse_csv(path, mapping).lines["our_ref"].to_list()


@pytest.mark.parametrize(("mapping", "text"), [
    (GERMAN, GERMAN_HEADER + "A1;25.11.2026;1,00;H\nA\r2;25.11.2026;1,00;H\n"),
    (GERMAN, GERMAN_HEADER + "A1;25.11.2026;1,00;H\nA2;25.11.2026;1,00;H\rA3;25.11.2026;1,00;H\n"),
    (PLAIN, PLAIN_HEADER + "A1,2026-11-25,1.00\nA\r2,2026-11-25,1.00\n"),
    (PLAIN, PLAIN_HEADER + 'A1,2026-11-25,1.00\n"A2",2026-11-25,1.00\r\r\n'),
], ids=["exotic-in-field", "exotic-after-field", "plain-in-field", "plain-after-quoted-field"])
def test_outside_quotes_it_is_refused_naming_its_line(tmp_path, mapping, text):
    with pytest.raises(StatementInvalid) as refused:
        _parse(tmp_path, mapping, text)
    assert refused.value.line == 3
    assert "carriage return" in refused.value.detail and "universal-newline" not in refused.value.detail


@pytest.mark.parametrize(("mapping", "text", "refs"), [
    (GERMAN, GERMAN_HEADER + '"A\r1";25.11.2026;1,00;H\n', ["A\r1"]),
    (GERMAN, (GERMAN_HEADER + "A1;25.11.2026;1,00;H\n").replace("\n", "\r\n"), ["A1"]),
    (PLAIN, PLAIN_HEADER + '"A\r1",2026-11-25,1.00\n"B\n2\r",2026-11-25,2.00\n', ["A\r1", "B\n2"]),
    (PLAIN, (PLAIN_HEADER + "A1,2026-11-25,1.00\n").replace("\n", "\r\n"), ["A1"]),
], ids=["exotic-quoted", "exotic-crlf", "plain-quoted-across-lines", "plain-crlf"])
def test_inside_quotes_or_before_a_line_feed_it_is_read(tmp_path, mapping, text, refs):
    assert _parse(tmp_path, mapping, text) == refs
