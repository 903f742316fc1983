"""ISO 20022 camt.053 bank-to-customer statements, streamed.

A bank's month of a busy account is gigabytes of XML, so the document is never built: ``iterparse``
hands over one ``Ntry`` at a time, it becomes a row, and the entry and everything before it are
dropped. Rows are gathered in Polars chunks, so Python memory stays flat however big the file is.
Element names are matched by local name, so every version from camt.053.001.02 to .08 reads the same.

Only booked entries are lines (``Sts`` BOOK; pending and information-only entries move no money yet).
Each statement must add up: its opening balance (OPBD, else PRCD) plus its booked movements is its
closing balance (CLBD, else CLAV), so an entry must be a child of a ``Stmt``; statements of one account
and currency follow each other, each opening at the previous one's closing balance. ``meta.parts`` gives
each statement's account (``Acct``), so every line is known to be on its own statement's. Any defect raises
``StatementInvalid`` at the entry's XML line. The first statement's account, number (``ElctrncSeqNb``, else
``LglSeqNb``, else ``Id``), page (``StmtPgntn/PgNb``) and closing balance day are how the bank numbers it
(``meta.identity``): a bank statement is imported once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any

import polars as pl
from lxml import etree

from clearhouse.reconciliation.errors import StatementInvalid
from clearhouse.reconciliation.formats.csvmap import bounded, check_chained, check_dated, to_minor
from clearhouse.reconciliation.frames import (
    STATEMENT_SCHEMA,
    BankStatementIdentity,
    ParsedStatement,
    StatementMeta,
    StatementPart,
)

CHUNK = 1_024
"""Rows kept as Python objects before they are moved into a Polars chunk."""
OPENING = ("OPBD", "PRCD")
CLOSING = ("CLBD", "CLAV")
COLUMNS = list(STATEMENT_SCHEMA)


def _local(element: Any) -> str:
    tag = element.tag
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


def _text(element: Any, path: str) -> str | None:
    found = element.find(path)
    if found is None or found.text is None:
        return None
    return found.text.strip() or None


def _day(element: Any, path: str, line: int) -> date | None:
    """``<Dt>`` or ``<DtTm>`` under ``path``: the calendar day as the bank wrote it."""
    holder = element.find(path)
    if holder is None:
        return None
    return _iso_day(_text(holder, "{*}Dt"), _text(holder, "{*}DtTm"), line)


def _money(element: Any | None, line: int, what: str) -> tuple[int, str]:
    """An ``<Amt Ccy="...">`` (or balance/charge amount) -> (minor units, currency), exactly."""
    if element is None or element.text is None:
        raise StatementInvalid(f"{what} has no amount", line=line)
    currency = element.get("Ccy")
    if not currency:
        raise StatementInvalid(f"{what} amount has no Ccy", line=line)
    text = element.text.strip()
    if not text or not all(char.isdigit() or char == "." for char in text) or text.count(".") > 1:
        raise StatementInvalid(f"{what} amount {text!r} is not a decimal number", line=line)
    return to_minor(text, currency, line=line), currency


def _signed(element: Any, minor: int, line: int) -> int:
    mark = _text(element, "{*}CdtDbtInd")
    if mark not in ("CRDT", "DBIT"):
        raise StatementInvalid(f"CdtDbtInd is {mark!r}, not CRDT or DBIT", line=line)
    return minor if mark == "CRDT" else -minor


def _reference(text: str | None) -> str | None:
    return None if text in (None, "NOTPROVIDED", "NONREF") else text


def _charges(holder: Any, line: int, currency: str) -> tuple[int, bool]:
    """The charges of an entry or transaction (positive when charged) and whether they are included
    in the booked amount. camt.053.001.02: repeated ``Chrgs/Amt``; .04 and later: ``Chrgs/Rcrd/Amt``
    with ``TtlChrgsAndTaxAmt`` as their total when given. Charges in another currency than the
    entry's are refused: a fee is kept in the entry's minor units, and no rate is given to convert."""
    charges = holder.findall("{*}Chrgs")
    if not charges:
        return 0, False
    total_element = holder.find("{*}Chrgs/{*}TtlChrgsAndTaxAmt")
    records = holder.findall("{*}Chrgs/{*}Rcrd")
    included = any((_text(record, "{*}ChrgInclInd") or "").lower() == "true" for record in records)
    if total_element is not None:
        return _same_currency(_money(total_element, line, "TtlChrgsAndTaxAmt"), currency, line), included
    fee = 0
    for record in records or charges:
        minor = _same_currency(_money(record.find("{*}Amt"), line, "charge"), currency, line)
        fee += -minor if _text(record, "{*}CdtDbtInd") == "CRDT" else minor
    return fee, included


def _same_currency(money: tuple[int, str], currency: str, line: int) -> int:
    minor, charged_in = money
    if charged_in != currency:
        raise StatementInvalid(f"charges in {charged_in} on an entry in {currency}", line=line)
    return minor


DESCEND = frozenset({"Sts", "BookgDt", "ValDt", "NtryDtls", "NtryDtls/Btch", "NtryDtls/TxDtls",
                     "NtryDtls/TxDtls/Refs", "NtryDtls/TxDtls/RmtInf"})
"""The containers whose insides a line needs; the rest (parties, agents, amount details, bank
transaction codes: most of a real entry) is never walked."""


def _index(element: Any, prefix: str = "", into: dict[str, list[Any]] | None = None) -> dict[str, list[Any]]:
    """The descendants a line needs, by their path of local names (``NtryDtls/TxDtls/Refs/EndToEndId``):
    one walk per entry instead of a namespace-wildcard search per field, which is several times slower."""
    into = {} if into is None else into
    for child in element:
        tag = child.tag
        if not isinstance(tag, str):  # a comment or processing instruction
            continue
        path = prefix + tag[tag.rfind("}") + 1:]
        into.setdefault(path, []).append(child)
        if path in DESCEND:
            _index(child, path + "/", into)
    return into


def _first(index: dict[str, list[Any]], path: str) -> str | None:
    found = index.get(path)
    text = found[0].text if found else None
    return (text.strip() or None) if text else None


def _day_of(index: dict[str, list[Any]], path: str, line: int) -> date | None:
    return _iso_day(_first(index, path + "/Dt"), _first(index, path + "/DtTm"), line)


ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
"""A ``Dt`` (ISODate): the day alone. A time or an offset after it would be a date-time written in the
wrong element, and reading it as a day in some zone would be a guess."""
ISO_DATE_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
                           r"(?:Z|[+-][0-9]{2}:[0-9]{2})?")
"""A ``DtTm`` (ISODateTime), with its offset when given; its own day counts."""


def _iso_day(day: str | None, day_time: str | None, line: int) -> date | None:
    """The day of a ``Dt`` (``day``) or, without one, a ``DtTm`` (``day_time``) element's text."""
    kind, text, shape = ("Dt", day, ISO_DATE) if day is not None else ("DtTm", day_time, ISO_DATE_TIME)
    if text is None:
        return None
    text = text.strip()
    try:
        if not shape.fullmatch(text):
            raise ValueError(text)
        return date.fromisoformat(text) if kind == "Dt" else datetime.fromisoformat(text).date()
    except ValueError:
        what = "an ISO date (YYYY-MM-DD)" if kind == "Dt" else "an ISO date-time (YYYY-MM-DDThh:mm:ss)"
        raise StatementInvalid(f"{kind} {text!r} is not {what}", line=line) from None


def _entry(entry: Any) -> dict[str, Any] | None:
    line = entry.sourceline or 0
    index = _index(entry)
    status = _first(index, "Sts/Cd") or _first(index, "Sts")
    if status is None:
        raise StatementInvalid("entry has no Sts", line=line)
    if status != "BOOK":
        return None
    minor, currency = _money((index.get("Amt") or [None])[0], line, "entry")
    mark = _first(index, "CdtDbtInd")
    if mark not in ("CRDT", "DBIT"):
        raise StatementInvalid(f"CdtDbtInd is {mark!r}, not CRDT or DBIT", line=line)
    booked = minor if mark == "CRDT" else -minor
    booked_on = _day_of(index, "BookgDt", line)
    if booked_on is None:
        raise StatementInvalid("booked entry has no BookgDt", line=line)
    transactions = index.get("NtryDtls/TxDtls", [])
    batch = "NtryDtls/Btch" in index
    reversal = (_first(index, "RvslInd") or "").lower() == "true"
    # No charges on the entry or its transactions: the bank says nothing of a fee (null, not 0).
    fee: int | None = None
    included = False
    if "Chrgs" in index:
        fee, included = _charges(entry, line, currency)
    elif "NtryDtls/TxDtls/Chrgs" in index:
        fee = 0
        for tx in transactions:
            tx_fee, tx_included = _charges(tx, line, currency)
            fee, included = fee + tx_fee, included or tx_included
    if batch or len(transactions) > 1:
        kind = "settlement"
        our_ref = _reference(_first(index, "NtryDtls/Btch/PmtInfId") or _first(index, "NtryDtls/Btch/MsgId"))
    else:
        kind = "other" if reversal else "payment" if booked > 0 else "refund"
        our_ref = _reference(_first(index, "NtryDtls/TxDtls/Refs/EndToEndId"))
    texts = [item.text.strip() for item in index.get("NtryDtls/TxDtls/RmtInf/Ustrd", []) if item.text]
    description = " ".join(texts) or _first(index, "AddtlNtryInf")
    # Our amount is gross: when the bank booked it net of its charges, the charges are added back.
    amount = booked + fee if included and fee is not None else booked
    return {
        "line_no": line, "our_ref": our_ref, "channel_ref": _first(index, "AcctSvcrRef"), "kind": kind,
        "status": "succeeded",
        # Each amount is bounded, but several charges (or charges added back) can add up beyond the frame's Int64.
        "amount": bounded(amount, line=line), "fee": None if fee is None else bounded(fee, line=line),
        "currency": currency, "booked_on": booked_on,
        "value_on": _day_of(index, "ValDt", line), "description": description, "_booked": booked,
    }


def _balance(balance: Any) -> tuple[str | None, int, str, date | None]:
    line = balance.sourceline or 0
    code = _text(balance, "{*}Tp/{*}CdOrPrtry/{*}Cd") or _text(balance, "{*}Tp/{*}CdOrPrtry/{*}Prtry")
    minor, currency = _money(balance.find("{*}Amt"), line, f"balance {code}")
    return code, _signed(balance, minor, line), currency, _day(balance, "{*}Dt", line)


class _Statement:
    """What one ``Stmt`` has said so far: its balances and the sum of its booked entries."""

    def __init__(self, first_line: int) -> None:
        self.first_line = first_line  # where it starts: its entries are the file's lines from here to the next
        self.balances: dict[str, tuple[int, str, int]] = {}
        self.balance_days: dict[str, date | None] = {}
        self.moved: dict[str, int] = {}
        self.identifier: str | None = None
        self.account: str | None = None
        self.numbers: dict[str, str | None] = {}  # ElctrncSeqNb, LglSeqNb, StmtPgntn/PgNb: how the bank numbers it

    @property
    def opening(self) -> tuple[int, str, int] | None:
        """(minor units, currency, XML line) of the opening balance: OPBD, else PRCD."""
        return next((self.balances[code] for code in OPENING if code in self.balances), None)

    @property
    def opened_on(self) -> date | None:
        return next((self.balance_days[code] for code in OPENING if code in self.balances), None)

    @property
    def closing(self) -> tuple[int, str, int] | None:
        return next((self.balances[code] for code in CLOSING if code in self.balances), None)

    @property
    def closed_on(self) -> date | None:
        return next((self.balance_days[code] for code in CLOSING if code in self.balances), None)

    def identity(self) -> BankStatementIdentity | None:
        """The bank's number of the statement: its electronic sequence number, else its legal one, else its
        ``Id``; its page (``StmtPgntn/PgNb``); its account; the day of its closing balance."""
        number = self.numbers.get("ElctrncSeqNb") or self.numbers.get("LglSeqNb") or self.identifier
        return BankStatementIdentity.of(self.account, number, self.numbers.get("PgNb"), self.closed_on,
                                        line=self.first_line)


def parse_camt053(path: Path, *, progress: Callable[[int], None] | None = None) -> ParsedStatement:
    path = Path(path)
    if path.stat().st_size == 0:
        raise StatementInvalid("the file is empty", line=1)
    chunks: list[pl.DataFrame] = []
    rows: list[tuple[Any, ...]] = []
    count = 0
    statements: list[_Statement] = []
    closed_before: dict[tuple[str, str], tuple[int, int]] = {}
    current: _Statement | None = None
    identity: BankStatementIdentity | None = None
    seen_root = False
    numbered = 0  # the last number given to a statement or an entry (``_number``)

    def _number(sourceline: int | None) -> int:
        """A statement's or an entry's ``line_no``: the line of the file it starts on, or, when it starts on a line
        an earlier one started on (a file written on one line, as many banks send them), the number after the
        earlier one's. Each entry has a number of its own, in file order, and the statements' numbers bound their
        entries' (``StatementMeta.account_of``); in a file of one element a line, the numbers are the lines."""
        nonlocal numbered
        numbered = max(sourceline or 0, numbered + 1)
        return numbered

    events = etree.iterparse(str(path), events=("start", "end"), tag=("{*}Document", "{*}Stmt", "{*}Bal", "{*}Ntry",
                                                                       "{*}Id", "{*}Acct", "{*}ElctrncSeqNb",
                                                                       "{*}LglSeqNb", "{*}StmtPgntn"),
                             resolve_entities=False, no_network=True, huge_tree=True, remove_comments=True)
    try:
        for event, element in events:
            name = _local(element)
            if event == "start":
                if name == "Document":
                    seen_root = True
                elif name == "Stmt":
                    current = _Statement(_number(element.sourceline))
                    statements.append(current)
                continue
            parent = element.getparent()
            in_statement = parent is not None and _local(parent) == "Stmt" and current is not None
            if name == "Ntry":
                if not in_statement or current is None:
                    # An entry belongs to one Stmt, whose balances it must add up to: one anywhere else
                    # (after </Stmt>, inside another element) would be imported unchecked.
                    raise StatementInvalid("entry (Ntry) outside a statement (Stmt)", line=element.sourceline)
                row = _entry(element)
                if row is not None:
                    row["line_no"] = _number(row["line_no"])
                    current.moved[row["currency"]] = current.moved.get(row["currency"], 0) + row.pop("_booked")
                    rows.append(tuple(row[column] for column in COLUMNS))
                    count += 1
                    if len(rows) >= CHUNK:
                        chunks.append(pl.DataFrame(rows, schema=STATEMENT_SCHEMA, orient="row"))
                        rows.clear()
                        if progress is not None:
                            progress(count)
                _forget(element)
            elif in_statement and current is not None and name == "Bal":
                code, amount, currency, day = _balance(element)
                if code is not None and code not in current.balances:
                    current.balances[code] = (amount, currency, element.sourceline or 0)
                    current.balance_days[code] = day
            elif in_statement and current is not None and name == "Id":
                current.identifier = (element.text or "").strip() or None
            elif in_statement and current is not None and name == "Acct":
                current.account = _text(element, "{*}Id/{*}IBAN") or _text(element, "{*}Id/{*}Othr/{*}Id")
            elif in_statement and current is not None and name in ("ElctrncSeqNb", "LglSeqNb"):
                current.numbers.setdefault(name, (element.text or "").strip() or None)
            elif in_statement and current is not None and name == "StmtPgntn":  # camt.053.001.04 and later
                current.numbers.setdefault("PgNb", _text(element, "{*}PgNb"))
            elif name == "Stmt" and current is not None:
                _chain(current, closed_before)
                _check(current, element.sourceline or 0)
                if current is statements[0]:  # the file's identity, as its account is: checked where it ends
                    identity = current.identity()
                _forget(element)
                current = None
    except etree.XMLSyntaxError as error:
        line = error.lineno or (error.position[0] if error.position else None)
        raise StatementInvalid(f"not well-formed XML: {error.msg}", line=line) from None
    if not seen_root or not statements:
        raise StatementInvalid("no camt.053 statement (Document/BkToCstmrStmt/Stmt) in the file", line=1)
    if rows:
        chunks.append(pl.DataFrame(rows, schema=STATEMENT_SCHEMA, orient="row"))
    lines = pl.concat(chunks, rechunk=True) if chunks else pl.DataFrame(schema=STATEMENT_SCHEMA)
    if progress is not None:
        progress(count)
    return ParsedStatement(_meta(statements, lines, identity), lines)


def _forget(element: Any) -> None:
    """Drop the element and every sibling before it, so the tree never grows."""
    element.clear(keep_tail=True)
    parent = element.getparent()
    if parent is not None:
        while element.getprevious() is not None:
            del parent[0]


def _check(statement: _Statement, line: int) -> None:
    opening, closing = statement.opening, statement.closing
    if opening is None or closing is None:
        raise StatementInvalid("statement has no opening (OPBD/PRCD) or closing (CLBD/CLAV) balance", line=line)
    (opened, currency, opening_line), (closed, closing_currency, closing_line) = opening, closing
    if closing_currency != currency:
        raise StatementInvalid(f"closing balance in {closing_currency}, opening in {currency}", line=closing_line)
    # ISO 20022 requires each balance's date (Bal/Dt); reconciliation orders an account's statements by them.
    opened_on, closed_on = statement.opened_on, statement.closed_on
    if opened_on is None:
        raise StatementInvalid("the opening balance has no date (Bal/Dt)", line=opening_line)
    if closed_on is None:
        raise StatementInvalid("the closing balance has no date (Bal/Dt)", line=closing_line)
    check_dated(opened_on, closed_on, opening_line)
    other = sorted(set(statement.moved) - {currency})
    if other:
        raise StatementInvalid(f"entries in {other[0]} on a {currency} account", line=line)
    moved = statement.moved.get(currency, 0)
    if opened + moved != closed:
        raise StatementInvalid(
            f"opening balance {opened} + booked entries {moved} = {opened + moved} {currency} minor units,"
            f" but the closing balance is {closed}", line=closing_line)


def _chain(statement: _Statement, closed_before: dict[tuple[str, str], tuple[int, int]]) -> None:
    """Checked before the statement's own sum, so a gap is named at its opening balance, the earlier line.
    A statement without an account chains to none."""
    opening, closing = statement.opening, statement.closing
    if statement.account is None or opening is None or closing is None:
        return  # no balances: ``_check`` says so
    (opened, currency, open_line), (closed, _, close_line) = opening, closing
    check_chained(closed_before, statement.account, currency, opened, open_line)
    closed_before[statement.account, currency] = (closed, close_line)


def _meta(statements: list[_Statement], lines: pl.DataFrame, identity: BankStatementIdentity | None) -> StatementMeta:
    first, last = statements[0], statements[-1]
    opening, closing = first.opening, last.closing
    assert opening is not None and closing is not None  # every statement was checked
    one_currency = len({s_currency for s in statements for _, s_currency, _ in s.balances.values()}) == 1
    days = lines.select(pl.col("booked_on").min(), pl.col("booked_on").max().alias("last")).row(0)
    return StatementMeta(
        format="camt053", account=first.account, currency=opening[1] if one_currency else None,
        statement_id=first.identifier, opening_balance=opening[0] if one_currency else None,
        closing_balance=closing[0] if one_currency else None, first_day=days[0], last_day=days[1],
        extra={"statements": str(len(statements)), "last_statement_id": last.identifier or ""},
        parts=tuple(StatementPart(s.account, s.opening[1], s.first_line, s.opening[0], s.opening[2], s.opened_on,
                                  s.closing[0] if s.closing else 0)
                    for s in statements if s.opening),
        identity=identity,
    )
