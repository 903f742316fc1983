"""Channel CSV files read through a declarative mapping.

A channel's bill is a CSV file in the channel's own dialect: its encoding, its preamble and
footer, its column names, its way of writing a date, an amount and a sign. ``CsvMapping`` says
all of that as plain data (it is stored as JSON per channel), so supporting one more channel is
one more mapping, not one more parser.

Speed: the benchmark reads ten million lines, so a plain UTF-8 file goes straight from disk into
Polars as strings and every conversion and every check is a vectorised expression; no Python runs
per line. Only the exotic dialects (GBK, backticks, ``#`` comment lines, footers) are decoded and
split in Python first; those files are small channel bills.

Validation never guesses: an amount is parsed from its decimal string exactly (``"12.345"`` in CNY
is an error, never rounded), and the first failing row is reported by its line in the file.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Literal, NamedTuple

import iso4217
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from clearhouse.kit import clock
from clearhouse.kit.money import Currency, UnknownCurrency
from clearhouse.reconciliation.errors import StatementInvalid
from clearhouse.reconciliation.frames import (
    KINDS,
    STATEMENT_SCHEMA,
    STATEMENT_TOTAL_MAX,
    STATUSES,
    ParsedStatement,
    StatementMeta,
)

FIELDS = ("our_ref", "channel_ref", "kind", "status", "amount", "fee", "currency", "booked_on", "booked_time",
          "value_on", "description", "indicator", "credit", "debit")
"""What a mapping can name a file column for. ``indicator`` is a debit/credit mark column,
``credit`` and ``debit`` are the two unsigned amount columns of the ``split`` sign convention."""

MAX_MINOR_DIGITS = 18
"""Digits of an amount in minor units we read (the integer part's digits plus the currency's exponent):
below 10**18, so it fits Int64 whatever the exponent. A payment's largest amount (``MAX_PAYMENT_AMOUNT``,
10**15 minor units) is 16 digits of yen and 14 of a 4-decimal currency's major units: always read."""


class CsvMapping(BaseModel):
    """How one channel writes its statement CSV. Plain data: it round-trips through JSON."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "custom"
    encoding: str = "utf-8"
    delimiter: str = ","
    quote_char: str | None = '"'
    comment_prefix: str | None = None
    """Lines starting with this are not data (Alipay's ``#`` title, period and totals lines)."""
    skip_lines: int = Field(0, ge=0)
    """Physical lines before the header (the bank's ``Account;`` preamble)."""
    footer_markers: tuple[str, ...] = ()
    """A row whose first field starts with one of these ends the data (WeChat's summary header)."""
    strip_prefix: str | None = None
    """Removed from the start of every field (WeChat's backtick, which keeps ids as text in spreadsheets)."""
    account_label: str | None = None
    """A preamble line ``<label><delimiter><value>`` that names the account (the bank's ``Account``)."""
    columns: dict[str, str | list[str]]
    """Our field -> the file's column. A list means: the first of these that has a value (a refund row
    carries the refund id, a payment row only the order id)."""
    null_values: tuple[str, ...] = ("",)
    """Values that mean "none" in the text columns (references, description): WeChat writes ``0``."""
    date_format: str = "%Y-%m-%d"
    """``strftime`` format of ``booked_on`` and ``value_on``; with a time part when the column is a timestamp."""
    time_format: str | None = None
    """Format of the ``booked_time`` column, used to move a timestamp from ``timezone`` to ``calendar``."""
    amount_unit: Literal["major", "minor"] = "minor"
    decimal_separator: str = "."
    thousands_separator: str | None = None
    sign: Literal["signed", "indicator", "split"] = "signed"
    """``signed``: the amount carries its sign. ``indicator``: unsigned amount plus a debit/credit column.
    ``split``: an unsigned credit column and an unsigned debit column; amount = credit - debit."""
    credit_values: tuple[str, ...] = ("C", "CR", "CRDT", "credit")
    debit_values: tuple[str, ...] = ("D", "DR", "DBIT", "debit")
    fee_sign: Literal["positive", "negative"] = "positive"
    """How the file writes a fee the channel charged: ``negative`` is flipped to our positive fee."""
    kind_map: dict[str, str] = Field(default_factory=dict)
    """File value -> our kind; the key ``"*"`` catches every other value (without it they are errors)."""
    kind_default: str | None = "payment"
    """The kind of a row with no value (or of every row, with no kind column); ``None`` makes it an error."""
    status_map: dict[str, str] = Field(default_factory=dict)
    status_default: str | None = "succeeded"
    currency: str | None = None
    """The currency of every row, when the file has no currency column."""
    timezone: str | None = None
    """The zone the file's times are written in; without it they are taken as written (the statement's days)."""
    calendar: str | None = None
    """The zone of the statement's days. A timestamp written in ``timezone`` is moved into it (a date without a
    time stays as written). None: the channel's calendar (its rules' ``timezone``), given by the import."""

    @field_validator("columns")
    @classmethod
    def _known_fields(cls, columns: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        unknown = sorted(set(columns) - set(FIELDS))
        if unknown:
            raise ValueError(f"unknown fields {unknown}; known: {list(FIELDS)}")
        return columns

    @field_validator("timezone", "calendar")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        """An IANA zone, checked when the mapping is made (saved), not at every import."""
        return value if value is None else clock.known_zone(value)

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        """A text codec Python knows, checked when the mapping is made (saved): an unknown one would otherwise
        surface at the first import as a fault of the statement file."""
        try:
            # One byte, since an empty one is decoded without a look-up. A LookupError for an unknown codec and
            # for one that is no text encoding (``rot13``, ``hex``); a known codec may still refuse the byte.
            b"\x00".decode(value)
        except LookupError:
            raise ValueError(f"unknown text encoding {value!r} (use a codec name such as utf-8 or gbk)") from None
        except UnicodeDecodeError:
            pass
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CsvMapping:
        need = {"signed": ("amount",), "indicator": ("amount", "indicator"), "split": ("credit", "debit")}[self.sign]
        missing = [name for name in need if name not in self.columns]
        if "booked_on" not in self.columns:
            missing.append("booked_on")
        if "currency" not in self.columns and self.currency is None:
            missing.append("currency")
        if missing:
            raise ValueError(f"the mapping must name a column for {missing}")
        for value in [*self.kind_map.values(), self.kind_default]:
            if value is not None and value not in KINDS:
                raise ValueError(f"kind {value!r} is not one of {KINDS}")
        for value in [*self.status_map.values(), self.status_default]:
            if value is not None and value not in STATUSES:
                raise ValueError(f"status {value!r} is not one of {STATUSES}")
        if self.currency is not None:
            Currency.of(self.currency)
        if len(self.delimiter) != 1 or (self.quote_char is not None and len(self.quote_char) != 1):
            raise ValueError("delimiter and quote_char are single characters")
        if self.quote_char == self.delimiter:
            raise ValueError("quote_char cannot be the delimiter")
        if self.thousands_separator and (self.thousands_separator == self.decimal_separator
                                         or any(char.isdigit() or char in "+-" for char in self.thousands_separator)):
            raise ValueError("thousands_separator cannot be the decimal_separator, a digit or a sign")
        return self

    def sources(self, field: str) -> list[str]:
        named = self.columns.get(field)
        return [] if named is None else [named] if isinstance(named, str) else list(named)

    @property
    def plain(self) -> bool:
        """Can Polars read the file directly (the fast path)?"""
        return (self.encoding.replace("_", "-").lower() in ("utf-8", "utf8", "utf-8-sig")
                and not (self.comment_prefix or self.footer_markers or self.strip_prefix or self.account_label))


# --------------------------------------------------------------------------- scalar helpers (MT940, camt.053)


def exponent_of(code: str, *, line: int | None = None) -> int:
    try:
        return Currency.of(code).exponent
    except UnknownCurrency:
        raise StatementInvalid(f"currency {code!r} is not an ISO 4217 currency", line=line) from None


def to_minor(text: str | Decimal, currency: str, *, line: int | None = None) -> int:
    """An exact decimal amount in major units -> integer minor units; lost digits are an error."""
    exponent = exponent_of(currency, line=line)
    try:
        value = (text if isinstance(text, Decimal) else Decimal(str(text).strip().replace(",", "."))).scaleb(exponent)
    except InvalidOperation:
        raise StatementInvalid(f"amount {text!r} is not a number", line=line) from None
    if not value.is_finite() or value != value.to_integral_value():
        raise StatementInvalid(f"amount {text} is not a whole number of {currency} minor units", line=line)
    return bounded(int(value), line=line)


def bounded(minor: int, *, line: int | None = None) -> int:
    """``minor`` if its magnitude is at most ``STATEMENT_TOTAL_MAX`` (2**62). One amount beyond it passes the
    statement's total limit on its own, and beyond 2**63 - 1 it does not even fit the Int64 frame: refused at
    its own line here, instead of an overflow while the frame is built (a 500 naming no line)."""
    if abs(minor) > STATEMENT_TOTAL_MAX:
        # Written with thousands separators: a run of 13 to 19 digits in an error's detail is masked as a card
        # number (kit.masking.scrub), which 2^62's 19 digits (and a long amount's) would be.
        raise StatementInvalid(f"amount {minor:,} minor units is beyond 2^62 ({STATEMENT_TOTAL_MAX:,}): the "
                               "statement's totals and differences would not fit the ledger's integers", line=line)
    return minor


def check_chained(closed_before: dict[tuple[str, str], tuple[int, int]], account: str, currency: str, opened: int,
                  line: int) -> None:
    """A bank statement of an account and currency already seen in the file (``closed_before``: its closing
    balance and line) opens where the previous one closed: a bank's consecutive statements, and the pages of
    one, chain. Anything else is movements missing between them (a lost statement or page), which no balance
    inside either statement shows. Statements of other accounts or currencies are independent."""
    if (account, currency) in closed_before and closed_before[account, currency][0] != opened:
        closed, close_line = closed_before[account, currency]
        raise StatementInvalid(
            f"opening balance {opened} {currency} minor units of account {account} is not the closing balance"
            f" {closed} of its previous statement (line {close_line}): movements between them are missing",
            line=line)


def check_dated(opened_on: date, closed_on: date, line: int) -> None:
    """A bank statement's opening balance is not dated after its closing balance: reconciliation orders an
    account's statements by these dates (``service.take_up_balances``)."""
    if opened_on > closed_on:
        raise StatementInvalid(f"the opening balance is dated {opened_on}, after the closing balance ({closed_on})",
                               line=line)


# --------------------------------------------------------------------------- reading


def _problem(field: str, mapping: CsvMapping) -> str:
    return {
        "amount": f"amount is not a {'decimal' if mapping.amount_unit == 'major' else 'whole'} number"
                  f" of {mapping.amount_unit} units in the currency",
        "fee": "fee is not a valid amount",
        "currency": "currency is not an ISO 4217 currency",
        "booked_on": f"booking date does not match {mapping.date_format!r}",
        "value_on": f"value date does not match {mapping.date_format!r}",
        "kind": "kind is not known to the mapping",
        "status": "status is not known to the mapping",
        "indicator": f"debit/credit mark is neither {list(mapping.credit_values)} nor {list(mapping.debit_values)}",
        "split": "both the credit and the debit amount are empty",
        "skipped_time": f"the local time does not exist in {mapping.timezone}: the clocks skipped it"
                        " (daylight saving time began)",
        "repeated_time": f"the local time occurs twice in {mapping.timezone} (daylight saving time ended) and"
                         f" its two instants fall on different days in {mapping.calendar}",
    }[field]


def _scan_plain(path: Path, mapping: CsvMapping) -> tuple[pl.LazyFrame, int, list[str]]:
    """Polars straight from the file, every column a string, as a lazy plan: reading, converting and
    checking then run as one fused pass. Line numbers are the row index plus the preamble and the
    header (a blank line comes back as a row of nulls, so it keeps the count). A quoted field spanning
    several lines would shift them: ``_short_rows`` then finds a line with a quote and the wrong field
    count, and the file is read again by the Python reader, which counts lines as CSV does."""
    plan = pl.scan_csv(path, separator=mapping.delimiter, quote_char=mapping.quote_char, skip_rows=mapping.skip_lines,
                       has_header=True, infer_schema=False, encoding="utf8", raise_if_empty=True,
                       truncate_ragged_lines=False, null_values=[""])
    try:
        header = list(plan.collect_schema())
    except pl.exceptions.NoDataError:
        raise StatementInvalid("the file is empty", line=1) from None
    header_line = mapping.skip_lines + 1
    # Polars renames a second column of one name ``<name>_duplicated_0``, and the mapping would silently
    # read the first: refused as the Python reader does. Only a header with that suffix is read again.
    if any("_duplicated_" in name for name in header):
        names = pl.read_csv(path, separator=mapping.delimiter, quote_char=mapping.quote_char,
                            skip_rows=mapping.skip_lines, has_header=False, n_rows=1, infer_schema=False).row(0)
        if len(set(names)) != len(names):
            raise StatementInvalid("the header names a column twice", line=header_line)
    return plan.with_row_index("__line", offset=header_line + 1), header_line, header


def _short_rows(path: Path, mapping: CsvMapping, header_line: int, width: int) -> pl.LazyFrame:
    """The first data line whose field count is not the header's (``line``, ``fields``; null when every
    line is whole) and whether any line has a quote (``quoted``), as one row. Polars pads a short row
    with nulls (a truncated last line ``...,CNY,20`` would read as an empty fee), so the fields are
    counted from the raw lines: delimiters outside quoted parts, vectorised (the quoted parts are only
    cut out of lines that have a quote). With a quote in the file the count may be wrong (a quoted
    field spanning lines): the Python reader, which knows CSV quoting, then decides."""
    line = pl.col("line")
    text = line
    has_quote = pl.lit(False)
    if mapping.quote_char:
        quote = _regex_escape(mapping.quote_char)
        has_quote = line.str.contains(mapping.quote_char, literal=True)
        text = pl.when(has_quote).then(line.str.replace_all(f"{quote}[^{quote}]*{quote}", "")).otherwise(line)
    fields = text.str.count_matches(mapping.delimiter, literal=True) + 1
    blank = line.str.strip_chars().str.len_bytes() == 0
    data = pl.scan_lines(path).with_row_index("__line", offset=1).filter(pl.col("__line") > header_line)
    first_short = data.filter((fields != width) & ~blank).select(
        pl.col("__line").first().cast(pl.Int64).alias("line"), fields.first().alias("fields"))
    # Any quote anywhere: the lines inside a quoted field spanning three or more lines hold none, so
    # the short line itself cannot tell; the Python reader then decides for the whole file. So it does for a
    # carriage return on its own (``cr``): Polars would keep it in an unquoted field, which CSV refuses.
    lone_cr = line.str.contains("\r", literal=True)  # ``scan_lines`` ends a line at LF and at CR LF
    return pl.concat([first_short, data.select(has_quote.any().alias("quoted"), lone_cr.any().alias("cr"))],
                     how="horizontal")


def _decode(content: bytes, encoding: str) -> str:
    codec = encoding.replace("_", "-").lower()
    if codec not in ("utf-8", "utf8", "utf-8-sig"):
        # A UTF-8 file declared as GBK (or any other legacy codec) often decodes into nonsense
        # without an error; UTF-8 that is valid and not plain ASCII is almost never GBK text.
        try:
            utf8 = content.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            if not utf8.isascii():
                first = next(n for n, text in enumerate(_physical_lines(utf8), 1) if not text.isascii())
                raise StatementInvalid(f"the file is UTF-8, not {encoding}", line=first)
    try:
        return content.decode(encoding)
    except UnicodeDecodeError as error:
        line = content[:error.start].count(b"\n") + 1
        raise StatementInvalid(f"bytes that are not {encoding} ({error.reason})", line=line) from None
    except LookupError:
        raise StatementInvalid(f"unknown encoding {encoding!r}") from None


def _physical_lines(text: str) -> list[str]:
    r"""The file's lines as the fast path and the ``csv`` module count them: ended by ``\n`` or ``\r\n`` only.
    ``str.splitlines`` also ends a line at U+2028, NEL, form feed, ``\x1c``-``\x1e`` and a lone ``\r``: text
    inside a field (a merchant's product name) that would cut its row in two and shift every later line number.
    A lone ``\r`` is left to the ``csv`` module: kept in a quoted field, refused in an unquoted one."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _lone_carriage_return(kept: list[tuple[int, str]], quote_char: str | None) -> int | None:
    """The first kept line with a ``\r`` outside a quoted field (the ``csv`` module would keep one in the middle
    of an unquoted field, or fail with a message about opening files), or None. Quotes are followed across
    lines, as a quoted field may span them."""
    quoted = False
    for number, raw in kept:
        if "\r" not in raw and not (quote_char and quote_char in raw):
            continue  # nothing here changes whether the next line starts inside quotes
        for char in raw:
            if char == quote_char:
                quoted = not quoted
            elif char == "\r" and not quoted:
                return number
    return None


def _read_exotic(path: Path, mapping: CsvMapping) -> tuple[pl.DataFrame, int, dict[str, str]]:
    """Decode and split in Python (small channel bills): comment lines, preamble, footer, backticks."""
    content = path.read_bytes()
    if not content.strip():
        raise StatementInvalid("the file is empty", line=1)
    text = _decode(content, mapping.encoding)
    if text.startswith("\ufeff"):
        text = text[1:]
    physical = _physical_lines(text)
    extra: dict[str, str] = {}
    for raw in physical[:mapping.skip_lines]:
        label, _, value = raw.partition(mapping.delimiter)
        if mapping.account_label is not None and label.strip() == mapping.account_label:
            extra["account"] = value.strip()
    # Keep each kept line's number so the rows can be traced back after filtering.
    kept: list[tuple[int, str]] = []
    for number, raw in enumerate(physical[mapping.skip_lines:], mapping.skip_lines + 1):
        if mapping.comment_prefix and raw.startswith(mapping.comment_prefix):
            continue
        if not raw.strip():
            continue
        kept.append((number, raw))
    if not kept:
        raise StatementInvalid("the file has no header row", line=max(len(physical), 1))
    stray = _lone_carriage_return(kept, mapping.quote_char)
    if stray is not None:
        raise StatementInvalid("a carriage return (\\r) outside a quoted field: lines end with a line feed "
                               "(or CR LF), and a carriage return on its own is text only inside quotes", line=stray)
    quoting = csv.QUOTE_MINIMAL if mapping.quote_char else csv.QUOTE_NONE
    reader = csv.reader(io.StringIO("\n".join(raw for _, raw in kept)), delimiter=mapping.delimiter,
                        quotechar=mapping.quote_char or '"', quoting=quoting, strict=True)
    prefix = mapping.strip_prefix or ""

    def strip(value: str) -> str | None:
        value = (value[len(prefix):] if prefix and value.startswith(prefix) else value).strip()
        return value or None

    rows: list[list[str | None]] = []
    lines: list[int] = []
    header: list[str | None] | None = None
    header_line = kept[0][0]
    try:
        for record in reader:
            number = kept[reader.line_num - 1][0]
            fields = [strip(value) for value in record]
            if header is None:
                header, header_line = fields, number
                continue
            if fields and any((fields[0] or "").startswith(marker) for marker in mapping.footer_markers):
                break
            if len(fields) != len(header):
                raise StatementInvalid(f"{len(fields)} fields where the header has {len(header)}", line=number)
            rows.append(fields)
            lines.append(number)
    except csv.Error as error:
        raise StatementInvalid(f"not CSV: {error}", line=kept[min(reader.line_num, len(kept)) - 1][0]) from None
    names = [name or "" for name in header or []]
    if len(set(names)) != len(names):
        raise StatementInvalid("the header names a column twice", line=header_line)
    data = {name: [row[index] for row in rows] for index, name in enumerate(names)}
    frame = pl.DataFrame(data, schema=dict.fromkeys(names, pl.String))
    return frame.with_columns(pl.Series("__line", lines, dtype=pl.Int64)), header_line, extra


def _text(mapping: CsvMapping, field: str) -> pl.Expr:
    """The first non-empty of the field's columns. Empty fields are already null (Polars reads them
    so, the Python reader strips and nulls them); other ``null_values`` are nulled here."""
    sources = mapping.sources(field)
    if not sources:
        return pl.lit(None, dtype=pl.String)
    others = [value for value in mapping.null_values if value]
    cleaned = [pl.col(name) if not others else pl.when(pl.col(name).is_in(others)).then(None).otherwise(pl.col(name))
               for name in sources]
    return pl.coalesce(cleaned) if len(cleaned) > 1 else cleaned[0]


def _empty(mapping: CsvMapping, field: str) -> pl.Expr:
    """Every one of the field's columns is an empty cell (read as null on both paths)."""
    return pl.all_horizontal([pl.col(name).is_null() for name in mapping.sources(field)])


def _minor(text: pl.Expr, exponent: pl.Expr, mapping: CsvMapping) -> tuple[pl.Expr, pl.Expr]:
    """A decimal (or integer) string -> (Int64 minor units, "failed" flag), exactly.

    Major units are split on the decimal separator: the integer part times 10**exponent plus the
    first ``exponent`` fraction digits; any further fraction digit must be zero or the row fails
    (nothing is ever rounded). Empty text is a failure too: the caller decides what may be empty.
    A thousands separator is only one between groups of three digits (``1.234.567,89``); anywhere else
    (``12.34``, ``1.2.3,00``, one after the decimal separator) the row fails: ``12.34`` in a decimal-comma
    file is no amount, and reading it as 1234 would be a guess a hundred times too large."""
    value = text
    if mapping.thousands_separator:
        separator = mapping.thousands_separator
        fraction = "" if mapping.amount_unit == "minor" else f"(?:{_regex_escape(mapping.decimal_separator)}[0-9]*)?"
        grouped = rf"^[+-]?[1-9][0-9]{{0,2}}(?:{_regex_escape(separator)}[0-9]{{3}})+{fraction}$"
        value = (pl.when(~value.str.contains(separator, literal=True)).then(value)
                 .when(value.str.contains(grouped)).then(value.str.replace_all(separator, "", literal=True)))
    if mapping.amount_unit == "minor":
        # Polars' integer cast accepts exactly [+-]digits (no spaces, no decimal point, no overflow).
        number = value.cast(pl.Int64, strict=False)
        return number, number.is_null()
    separator = mapping.decimal_separator
    pattern = r"^([+-]?)([0-9]{1," + str(MAX_MINOR_DIGITS) + r"})(?:" + _regex_escape(separator) + r"([0-9]{1,18}))?$"
    parts = value.str.extract_groups(pattern)
    sign = parts.struct.field("1")
    whole = parts.struct.field("2")
    fraction = pl.concat_str([parts.struct.field("3").fill_null(""), pl.lit("0" * 18)]).str.slice(0, 18)
    kept = fraction.str.slice(0, exponent)
    dropped = fraction.str.slice(exponent)
    scale = pl.lit(10, dtype=pl.Int64).pow(exponent.cast(pl.Int64))
    magnitude = whole.cast(pl.Int64, strict=False) * scale + pl.when(exponent > 0).then(
        kept.cast(pl.Int64, strict=False)).otherwise(0)
    number = pl.when(sign == "-").then(-magnitude).otherwise(magnitude)
    too_long = whole.str.len_chars().cast(pl.Int64) + exponent.cast(pl.Int64) > MAX_MINOR_DIGITS  # would wrap
    failed = whole.is_null() | too_long | dropped.str.contains("[1-9]") | magnitude.is_null()
    return pl.when(~failed).then(number), failed


def _regex_escape(text: str) -> str:
    return "".join("\\" + char if not char.isalnum() else char for char in text)


class _Day(NamedTuple):
    """A date column read into the statement's calendar, with what kept a local time from being one day."""

    day: pl.Expr  # Date; null when the text does not parse or is no single day
    skipped: pl.Expr  # the local time does not exist in ``timezone`` (the clocks went forward over it)
    repeated: pl.Expr  # it occurs twice there (the clocks went back) and its two instants fall on different days


def _date(text: pl.Expr, mapping: CsvMapping, time_text: pl.Expr | None = None) -> _Day:
    """A date column (possibly a timestamp) -> Date in the statement's calendar.

    A local time at a daylight-saving change is no single instant. One the clocks skipped never happened:
    refused (``skipped``). One they passed twice is read at both offsets: when both instants fall on the
    same day of the calendar (nearly always: the day is all that is kept), that day; otherwise refused
    (``repeated``). Nothing is guessed, and no ``ComputeError`` escapes as a 500."""
    value = text
    fmt = mapping.date_format
    has_time = any(code in fmt for code in ("%H", "%T", "%M", "%S"))
    move = mapping.timezone and mapping.calendar and mapping.timezone != mapping.calendar
    if move and time_text is not None and mapping.time_format and not has_time:
        value = pl.concat_str([value, pl.lit(" "), time_text])
        fmt, has_time = f"{fmt} {mapping.time_format}", True
    if not has_time:
        return _Day(value.str.strptime(pl.Date, fmt, strict=False), pl.lit(False), pl.lit(False))
    moment = value.str.strptime(pl.Datetime("us"), fmt, strict=False)
    if not move:
        return _Day(moment.dt.date(), pl.lit(False), pl.lit(False))
    earliest, latest = (moment.dt.replace_time_zone(mapping.timezone, ambiguous=which, non_existent="null")
                        .dt.convert_time_zone(mapping.calendar).dt.date() for which in ("earliest", "latest"))
    skipped = moment.is_not_null() & earliest.is_null()
    repeated = earliest != latest
    return _Day(pl.when(earliest == latest).then(earliest), skipped.fill_null(False), repeated.fill_null(False))


def _mapped(text: pl.Expr, table: dict[str, str], default: str | None, allowed: tuple[str, ...]) -> pl.Expr:
    """File values -> ours. A missing value takes ``default``; a value outside the table (with no table:
    outside ``allowed``) takes the table's ``"*"`` entry, or is null (an error): never silently guessed."""
    if table:
        known = text.replace_strict({k: v for k, v in table.items() if k != "*"},
                                    default=pl.lit(table.get("*"), dtype=pl.String), return_dtype=pl.String)
    else:  # the file already speaks our words (when/is_in is several times faster than replace_strict)
        known = pl.when(text.is_in(list(allowed))).then(text)
    return pl.when(text.is_null()).then(pl.lit(default, dtype=pl.String)).otherwise(known)


def parse_csv(path: Path, mapping: CsvMapping, *,
              progress: Callable[[int], None] | None = None) -> ParsedStatement:
    """Read ``path`` through ``mapping``: every line, or ``StatementInvalid`` for the first bad one."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise StatementInvalid("the file is empty", line=1)
    extra: dict[str, str] = {}
    frame: pl.DataFrame | None = None
    plain = mapping.plain
    if plain:
        try:
            plan, header_line, header = _scan_plain(path, mapping)
        except pl.exceptions.ComputeError:  # the header itself is not UTF-8: the Python reader says where
            plain = False
    if not plain:
        frame, header_line, extra = _read_exotic(path, mapping)
        plan, header = frame.lazy(), [name for name in frame.columns if name != "__line"]
    missing = sorted({name for field in FIELDS for name in mapping.sources(field)} - set(header))
    if missing:
        raise StatementInvalid(f"the header has no column {', '.join(map(repr, missing))}", line=header_line)
    if progress is not None:
        progress(0)
    converted = plan.filter(~pl.all_horizontal(pl.col(header).is_null())).select(_conversions(mapping))
    short: dict[str, object] = {"line": None}
    reread = False
    try:
        if plain:
            lines, counted = pl.collect_all([converted, _short_rows(path, mapping, header_line, len(header))])
            short = counted.row(0, named=True)
            reread = (short["line"] is not None and bool(short["quoted"])) or bool(short["cr"])
        else:
            lines = converted.collect()
    except pl.exceptions.ComputeError:
        if not plain:
            raise
        reread = True
    if reread:
        # Invalid UTF-8, a ragged row, or quoting the line count cannot see through: the Python reader
        # finds the line and says what is wrong (or reads a quoted field spanning lines correctly).
        short = {"line": None}
        frame, header_line, extra = _read_exotic(path, mapping)
        lines = frame.lazy().select(_conversions(mapping)).collect()
    flags = [name for name in lines.columns if name.startswith("__bad_")]
    summary = lines.select(
        *[pl.col("line_no").filter(pl.col(flag)).min().alias(flag) for flag in flags],
        pl.col("booked_on").min().alias("__first"), pl.col("booked_on").max().alias("__last"),
        pl.col("currency").first().alias("__currency"),
        (pl.col("currency") != pl.col("currency").first()).any().alias("__mixed"),
    ).row(0, named=True)
    failures = {flag[6:]: summary[flag] for flag in flags if summary[flag] is not None}
    if short["line"] is not None:
        failures["fields"] = short["line"]
    if failures:
        # A short row's missing fields make other checks fail on the same line: its field count is the news.
        field = min(failures, key=lambda name: (failures[name], name != "fields"))
        if field == "fields":
            raise StatementInvalid(f"{short['fields']} fields where the header has {len(header)}", line=short["line"])
        _refuse(path, mapping, field, failures[field], header_line, frame)
    lines = lines.select(list(STATEMENT_SCHEMA))
    if lines.schema != pl.Schema(STATEMENT_SCHEMA):
        lines = lines.cast(STATEMENT_SCHEMA)
    if progress is not None:
        progress(lines.height)
    meta = StatementMeta(format=mapping.name, account=extra.pop("account", None),
                         currency=None if summary["__mixed"] else summary["__currency"],
                         first_day=_day(summary["__first"]), last_day=_day(summary["__last"]), extra=extra)
    return ParsedStatement(meta, lines)


def _conversions(mapping: CsvMapping) -> list[pl.Expr]:
    """Every output column and one failure flag per check, as expressions over the file's strings."""
    fixed = pl.lit(mapping.currency, dtype=pl.String)
    currency = _text(mapping, "currency") if "currency" in mapping.columns else fixed
    # Minor units need no exponent, only a valid code; the lookup is paid only for major units.
    exponent = currency.replace_strict(_EXPONENTS, default=None, return_dtype=pl.Int32)
    checks: dict[str, pl.Expr] = {"currency": ~currency.is_in(list(_EXPONENTS)).fill_null(False)}
    if mapping.sign == "split":
        credit, credit_failed = _minor(_text(mapping, "credit").fill_null("0"), exponent, mapping)
        debit, debit_failed = _minor(_text(mapping, "debit").fill_null("0"), exponent, mapping)
        amount = credit.abs() - debit.abs()
        checks["amount"] = credit_failed | debit_failed
        # One empty side means nothing moved that way; both empty is a line that states no amount at all
        # (an explicit 0, or a ``null_values`` entry such as WeChat's ``0``, is still an amount of 0).
        checks["split"] = _empty(mapping, "credit") & _empty(mapping, "debit")
    else:
        amount, checks["amount"] = _minor(pl.col(mapping.sources("amount")[0]), exponent, mapping)
        if mapping.sign == "indicator":
            mark = pl.col(mapping.sources("indicator")[0])
            is_credit, is_debit = mark.is_in(list(mapping.credit_values)), mark.is_in(list(mapping.debit_values))
            checks["indicator"] = ~(is_credit | is_debit).fill_null(False)
            amount = pl.when(is_debit).then(-amount.abs()).otherwise(amount.abs())
    # A statement that says nothing of a line's fee (an empty cell, no fee column) gives a null fee, never 0:
    # "no fee stated" is not "no fee charged", and matching makes no fee_mismatch of it.
    if "fee" in mapping.columns:
        fee_text = _text(mapping, "fee")
        fee, checks["fee"] = _minor(fee_text.fill_null("0"), exponent, mapping)
        fee = pl.when(fee_text.is_not_null()).then(-fee if mapping.fee_sign == "negative" else fee)
    else:
        fee = pl.lit(None, dtype=pl.Int64)
    booked_time = pl.col(mapping.sources("booked_time")[0]) if "booked_time" in mapping.columns else None
    booked = _date(pl.col(mapping.sources("booked_on")[0]), mapping, booked_time)
    booked_on = booked.day
    checks["booked_on"] = booked_on.is_null() & ~booked.skipped & ~booked.repeated
    checks["skipped_time"], checks["repeated_time"] = booked.skipped, booked.repeated
    if "value_on" in mapping.columns:
        value_text = _text(mapping, "value_on")
        valued = _date(value_text, mapping)
        value_on = valued.day
        checks["value_on"] = value_text.is_not_null() & value_on.is_null() & ~valued.skipped & ~valued.repeated
        checks["skipped_time"] = checks["skipped_time"] | valued.skipped
        checks["repeated_time"] = checks["repeated_time"] | valued.repeated
    else:
        value_on = pl.lit(None, dtype=pl.Date)
    kind = _mapped(_text(mapping, "kind"), mapping.kind_map, mapping.kind_default, KINDS)
    status = _mapped(_text(mapping, "status"), mapping.status_map, mapping.status_default, STATUSES)
    checks["kind"], checks["status"] = kind.is_null(), status.is_null()
    return [
        pl.col("__line").cast(pl.Int64).alias("line_no"),
        _text(mapping, "our_ref").alias("our_ref"),
        _text(mapping, "channel_ref").alias("channel_ref"),
        kind.alias("kind"),
        status.alias("status"),
        amount.alias("amount"),
        fee.alias("fee"),
        currency.alias("currency"),
        booked_on.alias("booked_on"),
        value_on.alias("value_on"),
        _text(mapping, "description").alias("description"),
        *[failed.alias(f"__bad_{name}") for name, failed in checks.items()],
    ]


def _refuse(path: Path, mapping: CsvMapping, field: str, line: int, header_line: int,
            frame: pl.DataFrame | None) -> None:
    """Raise for the first bad line, showing its fields (read again: only that one row)."""
    shown: dict[str, object] = {}
    if frame is None:
        row = pl.scan_csv(path, separator=mapping.delimiter, quote_char=mapping.quote_char,
                          skip_rows=mapping.skip_lines, infer_schema=False,
                          null_values=[""]).slice(line - header_line - 1, 1).collect()
        shown = row.row(0, named=True) if row.height else {}
    else:
        rows = frame.filter(pl.col("__line") == line).drop("__line")
        shown = rows.row(0, named=True) if rows.height else {}
    raise StatementInvalid(f"{_problem(field, mapping)}" + (f": {shown}" if shown else ""), line=line)


_EXPONENTS = {currency.code: currency.exponent for currency in iso4217.Currency if currency.exponent is not None}
"""Every ISO 4217 code with a minor unit -> its exponent (what ``kit.money.Currency.of`` accepts)."""


def _day(value: object) -> date | None:
    return value if isinstance(value, date) else None
