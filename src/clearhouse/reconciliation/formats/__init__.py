"""Statement files -> ``ParsedStatement``: channel CSV through a declarative mapping, MT940, camt.053.

One entry point, ``parse_statement``, so the import service never knows a format. Every parser is
all-or-nothing: a defect anywhere raises ``StatementInvalid`` naming the first bad line of the file,
and no line is returned.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl

from clearhouse.reconciliation.errors import StatementInvalid, UnknownStatementFormat
from clearhouse.reconciliation.formats.csvmap import CsvMapping, parse_csv
from clearhouse.reconciliation.formats.mappings import MAPPINGS, default_mapping
from clearhouse.reconciliation.frames import STATEMENT_TOTAL_MAX, ParsedStatement

FORMATS = ("csv", "mt940", "camt053")

__all__ = ["FORMATS", "MAPPINGS", "CsvMapping", "mapping_named", "parse_statement"]


def mapping_named(name: str) -> CsvMapping:
    try:
        return MAPPINGS[name]
    except KeyError:
        raise UnknownStatementFormat(f"no CSV mapping {name!r}; built in: {sorted(MAPPINGS)}") from None


def parse_statement(path: Path, fmt: str, *, mapping: str | CsvMapping | None = None,
                    channel: str | None = None, calendar: str | None = None,
                    progress: Callable[[int], None] | None = None) -> ParsedStatement:
    """Read one statement file. ``mapping`` only matters for CSV: a built-in name or a ``CsvMapping``;
    without one, the channel's default mapping. ``calendar`` is the channel's (its rules' ``timezone``): the
    days a mapping that states the file's ``timezone`` and no ``calendar`` of its own moves timestamps into.
    ``progress`` is told how many lines are done."""
    path = Path(path)
    if fmt == "csv":
        if mapping is None:
            mapping = default_mapping(channel)
        chosen = mapping_named(mapping) if isinstance(mapping, str) else mapping
        if chosen.timezone is not None and chosen.calendar is None and calendar is not None:
            chosen = chosen.model_copy(update={"calendar": calendar})
        return _summable(parse_csv(path, chosen, progress=progress))
    if fmt == "mt940":
        from clearhouse.reconciliation.formats.mt940 import parse_mt940

        return _summable(parse_mt940(path, progress=progress))
    if fmt == "camt053":
        from clearhouse.reconciliation.formats.camt053 import parse_camt053

        return _summable(parse_camt053(path, progress=progress))
    raise UnknownStatementFormat(f"no statement format {fmt!r}; known: {list(FORMATS)}")


def _summable(parsed: ParsedStatement) -> ParsedStatement:
    """The statement, if its amounts and fees add up (as magnitudes) to at most ``STATEMENT_TOTAL_MAX``
    (2**62) minor units: every net amount and total made of its lines, and every difference against
    one of our lines (each at most ``MAX_PAYMENT_AMOUNT``), then fits the ledger's 64-bit integers
    instead of wrapping around. Else ``StatementInvalid`` at the line where the running total passes it."""
    magnitude = sum(pl.col(column).cast(pl.Int128).abs().fill_null(0) for column in ("amount", "fee"))
    if (parsed.lines.select(magnitude.sum()).item() or 0) > STATEMENT_TOTAL_MAX:
        over = parsed.lines.filter(magnitude.cum_sum() > STATEMENT_TOTAL_MAX)["line_no"][0]
        # Separated, as ``csvmap.bounded`` writes it: 19 digits in a row would be masked as a card number.
        raise StatementInvalid(f"the file's amounts and fees add up beyond 2^62 ({STATEMENT_TOTAL_MAX:,}) minor "
                               "units: its totals and differences would not fit the ledger's integers", line=over)
    return parsed
