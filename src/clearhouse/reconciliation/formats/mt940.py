"""SWIFT MT940 customer statements, read with the ``mt-940`` library.

The library is lenient by design (a ``:61:`` line it cannot match is silently dropped, a currency is
never checked), which is right for a viewer and wrong for reconciliation: a dropped line is money we
would never look at. So every tag line is first checked here against the field formats of the SWIFT
MT940 specification, the library then reads each statement (balances, the ``:86:`` sub-fields such
as SEPA's ``EREF+``), and its transactions must be exactly the ``:61:`` lines we counted. Each
statement must add up: opening balance plus its movements is its closing balance.

A file may hold several statements (one ``:20:`` block each); ``meta`` covers them all, and its ``parts``
give each statement's account (``:25:``), so every line is known to be on its own statement's account.
Those of one account and currency follow each other: each opens at the previous one's closing balance.
The first statement's ``:25:``, ``:28C:`` (statement number and sequence, 5n[/5n]) and closing balance day
are how the bank numbers it (``meta.identity``): a bank statement is imported once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import mt940 as mt940_library
import polars as pl

from clearhouse.reconciliation.errors import StatementInvalid
from clearhouse.reconciliation.formats.csvmap import check_chained, check_dated, exponent_of, to_minor
from clearhouse.reconciliation.frames import (
    STATEMENT_SCHEMA,
    BankStatementIdentity,
    ParsedStatement,
    StatementMeta,
    StatementPart,
)

TAG = re.compile(r"^:(\d{2}[A-Z]?):(.*)$")
BALANCE = re.compile(r"^(?P<mark>[CD])(?P<date>\d{6})(?P<currency>[A-Z]{3})(?P<amount>\d{1,15},\d*)$")
"""``:60F:`` / ``:60M:`` / ``:62F:`` / ``:62M:``: 1!a6!n3!a15d."""
MOVEMENT = re.compile(
    r"^(?P<value>\d{6})(?P<entry>\d{4})?(?P<mark>R?[CD])(?P<funds>[A-Z])?(?P<amount>\d{1,15},\d*)"
    r"(?P<type>[NSF][A-Z0-9]{3})(?P<customer>.{1,16}?)(?://(?P<bank>.{1,16}))?$")
"""``:61:``: 6!n[4!n]2a[1!a]15d1!a3!c16x[//16x] (the supplementary details line follows, if any)."""
STATEMENT_NUMBER = re.compile(r"^(?P<number>\d{1,5})(?:/(?P<sequence>\d{1,5}))?$")
"""``:28C:``: 5n[/5n], the statement's number and its page (sequence) within the statement."""
FEE_CODES = {"CHG", "COM", "INT", "BRF"}
"""Transaction type codes (after N/S/F) of the bank's own charges, commissions, interest and fees."""


@dataclass
class _Movement:
    line: int
    match: re.Match[str]
    details: list[str] = field(default_factory=list)


@dataclass
class _Statement:
    first_line: int
    text: list[str] = field(default_factory=list)
    movements: list[_Movement] = field(default_factory=list)
    tags: dict[str, tuple[int, str]] = field(default_factory=dict)


def _date(text: str, line: int) -> date:
    try:
        return date(2000 + int(text[:2]), int(text[2:4]), int(text[4:6]))
    except ValueError:
        raise StatementInvalid(f"{text!r} is not a date (YYMMDD)", line=line) from None


def _split(lines: list[str]) -> list[_Statement]:
    """Cut the file into ``:20:`` blocks and check every tag line's format on the way."""
    statements: list[_Statement] = []
    current: _Statement | None = None
    last_tag = ""
    details: list[str] | None = None  # the :86: being read, when it belongs to a :61:
    for number, raw in enumerate(lines, 1):
        text = raw.rstrip()
        if text in ("-", "") or text.startswith(("{1:", "{2:", "{3:", "{4:", "-}")):
            if text == "-" or text.startswith("-}"):
                last_tag = ""
            continue
        tagged = TAG.match(text)
        if tagged is None:
            if current is None or last_tag not in ("86", "61"):
                raise StatementInvalid(f"not an MT940 line: {text[:40]!r}", line=number)
            if last_tag == "86" and details is not None:  # a :86: field continues over several lines
                details.append(text)
            current.text.append(raw)
            continue
        tag, value = tagged.groups()
        if tag == "20":
            current = _Statement(number)
            statements.append(current)
        elif current is None:
            raise StatementInvalid(f"tag :{tag}: before the statement's :20:", line=number)
        last_tag = tag
        details = None
        current.text.append(raw)
        if tag == "61":
            movement = MOVEMENT.match(value)
            if movement is None:
                raise StatementInvalid(f"statement line :61: does not follow the MT940 format: {value!r}", line=number)
            _date(movement["value"], number)
            if movement["entry"]:
                # The library gives the entry date the value date's year before moving it across a year end
                # (only when they are 330 days apart, which 29 February never is): so checked in that year.
                _date(movement["value"][:2] + movement["entry"], number)
            current.movements.append(_Movement(number, movement))
        elif tag == "86":
            previous = lines[number - 2].lstrip() if number > 1 else ""
            if current.movements and not current.movements[-1].details and not previous.startswith((":62", ":60")):
                details = current.movements[-1].details
                details.append(value)
        elif tag == "28C" and tag not in current.tags:
            # The library reads ``123456`` as number 12345, page 6: a number it guessed is no identity.
            if STATEMENT_NUMBER.match(value.strip()) is None:
                raise StatementInvalid(f"statement number :28C: does not follow the MT940 format (5n[/5n]): "
                                       f"{value!r}", line=number)
            current.tags[tag] = (number, value)
        elif tag in ("60F", "60M", "62F", "62M"):
            if BALANCE.match(value) is None:
                raise StatementInvalid(f"balance :{tag}: does not follow the MT940 format: {value!r}", line=number)
            current.tags[tag[:2]] = (number, value)
        else:
            current.tags.setdefault(tag, (number, value))
    return statements


def _balance(value: str, line: int) -> tuple[int, str, date]:
    found = BALANCE.match(value)
    assert found is not None  # checked by _split
    amount = to_minor(found["amount"].replace(",", "."), found["currency"], line=line)
    return (amount if found["mark"] == "C" else -amount), found["currency"], _date(found["date"], line)


def _read(statement: _Statement) -> list[Any]:
    """The library's transactions of one statement (its ``:86:`` sub-fields, its dates)."""
    parsed = mt940_library.models.Transactions()
    try:
        parsed.parse("\n".join(statement.text))
    except (ValueError, RuntimeError, KeyError) as error:
        raise StatementInvalid(f"MT940 statement cannot be read: {error}", line=statement.first_line) from None
    transactions = list(parsed)
    if len(transactions) != len(statement.movements):
        raise StatementInvalid(f"{len(statement.movements)} :61: lines but {len(transactions)} transactions read",
                               line=statement.first_line)
    return transactions


def _reference(value: Any) -> str | None:
    text = (str(value).strip() if value is not None else "") or None
    return None if text in (None, "NONREF", "NOTPROVIDED") else text


def parse_mt940(path: Path, *, progress: Callable[[int], None] | None = None) -> ParsedStatement:
    content = Path(path).read_bytes()
    if not content.strip():
        raise StatementInvalid("the file is empty", line=1)
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = content[:error.start].count(b"\n") + 1
        raise StatementInvalid(f"bytes that are not UTF-8 or ASCII ({error.reason})", line=line) from None
    lines = text.splitlines()
    statements = _split(lines)
    if not statements:
        raise StatementInvalid("no MT940 statement (:20:) in the file", line=1)
    rows: list[dict[str, Any]] = []
    opening = closing = None
    currencies: set[str] = set()
    closed_before: dict[tuple[str, str], tuple[int, int]] = {}
    parts: list[StatementPart] = []
    identity: BankStatementIdentity | None = None  # the first statement's: the file's, as its account is
    for statement in statements:
        for tag in ("25", "60", "62"):
            if tag not in statement.tags:
                end = statement.movements[-1].line if statement.movements else statement.first_line
                raise StatementInvalid(f"statement has no :{tag}: (truncated?)", line=end)
        open_line, open_text = statement.tags["60"]
        close_line, close_text = statement.tags["62"]
        opened, currency, opened_on = _balance(open_text, open_line)
        exponent_of(currency, line=open_line)
        account = statement.tags["25"][1].strip()
        check_chained(closed_before, account, currency, opened, open_line)
        moved = 0
        for movement, transaction in zip(statement.movements, _read(statement), strict=True):
            rows.append(_row(movement, transaction, currency))
            moved += rows[-1]["amount"]
        # Read after the movements, which come first in the file: the first bad line is the one named.
        closed, closing_currency, closed_on = _balance(close_text, close_line)
        if identity is None and statement is statements[0]:
            number = STATEMENT_NUMBER.match(statement.tags["28C"][1].strip()) if "28C" in statement.tags else None
            identity = BankStatementIdentity.of(account, number and number["number"], number and number["sequence"],
                                                closed_on, line=statement.first_line)
        if closing_currency != currency:
            raise StatementInvalid(f"closing balance in {closing_currency}, opening in {currency}", line=close_line)
        check_dated(opened_on, closed_on, open_line)
        closed_before[account, currency] = (closed, close_line)
        if opened + moved != closed:
            raise StatementInvalid(
                f"opening balance {opened} + movements {moved} = {opened + moved} {currency} minor units,"
                f" but the closing balance is {closed}", line=close_line)
        opening = opened if opening is None else opening
        closing = closed
        currencies.add(currency)
        parts.append(StatementPart(account, currency, statement.first_line, opened, open_line, opened_on, closed))
        if progress is not None:
            progress(len(rows))
    frame = pl.DataFrame(rows, schema=STATEMENT_SCHEMA) if rows else pl.DataFrame(schema=STATEMENT_SCHEMA)
    days = [row["booked_on"] for row in rows]
    first, last = statements[0], statements[-1]
    meta = StatementMeta(
        format="mt940", account=first.tags["25"][1].strip(),
        currency=next(iter(currencies)) if len(currencies) == 1 else None,
        statement_id=(first.tags.get("28C") or first.tags["20"])[1].strip(),
        opening_balance=opening if len(currencies) == 1 else None,
        closing_balance=closing if len(currencies) == 1 else None,
        first_day=min(days) if days else None, last_day=max(days) if days else None,
        extra={"statements": str(len(statements)), "last_statement_id": (last.tags.get("28C") or last.tags["20"])[1]},
        parts=tuple(parts), identity=identity,
    )
    return ParsedStatement(meta, frame)


def _row(movement: _Movement, transaction: Any, currency: str) -> dict[str, Any]:
    """One movement as a line; MT940 carries no fees, so ``fee`` is null (unknown), never 0."""
    found, data = movement.match, transaction.data
    magnitude = to_minor(Decimal(found["amount"].replace(",", ".")), currency, line=movement.line)
    # C and RD (the reversal of a debit) bring money in; D and RC take it out.
    amount = magnitude if found["mark"] in ("C", "RD") else -magnitude
    if found["type"][1:] in FEE_CODES:
        kind = "fee"
    elif found["mark"].startswith("R"):
        kind = "other"
    else:
        kind = "payment" if amount > 0 else "refund"
    value_on = _date(found["value"], movement.line)
    entry = data.get("guessed_entry_date") or data.get("entry_date") or value_on
    booked_on = date(entry.year, entry.month, entry.day)
    # SEPA's end-to-end id (EREF+ in :86:) is the reference we gave; else the :61: customer reference.
    our_ref = _reference(data.get("end_to_end_reference")) or _reference(found["customer"])
    details = "".join(movement.details).strip()
    description = (data.get("purpose") or "").strip() or (re.sub(r"\s+", " ", details) if details else None)
    return {"line_no": movement.line, "our_ref": our_ref, "channel_ref": _reference(found["bank"]), "kind": kind,
            "status": "succeeded", "amount": amount, "fee": None, "currency": currency, "booked_on": booked_on,
            "value_on": value_on, "description": description}
