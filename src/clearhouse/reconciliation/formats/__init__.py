"""Statement files -> ``ParsedStatement``: channel CSV through a declarative mapping, MT940, camt.053.

One entry point, ``parse_statement``, so the import service never knows a format. Every parser is
all-or-nothing: a defect anywhere raises ``StatementInvalid`` naming the first bad line of the file,
and no line is returned.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from clearhouse.reconciliation.errors import UnknownStatementFormat
from clearhouse.reconciliation.formats.csvmap import CsvMapping, parse_csv
from clearhouse.reconciliation.formats.mappings import MAPPINGS, default_mapping
from clearhouse.reconciliation.frames import ParsedStatement

FORMATS = ("csv", "mt940", "camt053")

__all__ = ["FORMATS", "MAPPINGS", "CsvMapping", "mapping_named", "parse_statement"]


def mapping_named(name: str) -> CsvMapping:
    try:
        return MAPPINGS[name]
    except KeyError:
        raise UnknownStatementFormat(f"no CSV mapping {name!r}; built in: {sorted(MAPPINGS)}") from None


def parse_statement(path: Path, fmt: str, *, mapping: str | CsvMapping | None = None,
                    channel: str | None = None, progress: Callable[[int], None] | None = None) -> ParsedStatement:
    """Read one statement file. ``mapping`` only matters for CSV: a built-in name or a ``CsvMapping``;
    without one, the channel's default mapping. ``progress`` is told how many lines are done."""
    path = Path(path)
    if fmt == "csv":
        if mapping is None:
            mapping = default_mapping(channel)
        chosen = mapping_named(mapping) if isinstance(mapping, str) else mapping
        return parse_csv(path, chosen, progress=progress)
    if fmt == "mt940":
        from clearhouse.reconciliation.formats.mt940 import parse_mt940

        return parse_mt940(path, progress=progress)
    if fmt == "camt053":
        from clearhouse.reconciliation.formats.camt053 import parse_camt053

        return parse_camt053(path, progress=progress)
    raise UnknownStatementFormat(f"no statement format {fmt!r}; known: {list(FORMATS)}")
