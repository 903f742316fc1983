"""The two frame shapes the matching engine compares: statement lines and our own lines.

Every parser produces ``STATEMENT_SCHEMA`` and ``sources`` produces ``INTERNAL_SCHEMA``, so the engine
never knows where a line came from. Money is signed integer minor units: money coming to us is positive
(a payment, a settlement credit), money going back negative (a refund, a return). ``fee`` is what the
channel keeps on the line, positive when charged and negative when given back, so the money that
actually moves is ``amount - fee``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import polars as pl

from clearhouse.kit.money import MAX_AMOUNT
from clearhouse.reconciliation.errors import StatementInvalid

STATEMENT_TOTAL_MAX = (MAX_AMOUNT + 1) // 2
"""2**62: half the ledger's limit, so a statement's total less (or plus) ours still fits 2**63 - 1."""

KINDS = ("payment", "refund", "settlement", "fee", "other")
"""``settlement`` is one credit (or debit) that covers many lines, paid net of fees (matching pass 3)."""

STATUSES = ("succeeded", "failed")

STATEMENT_SCHEMA: dict[str, pl.DataType] = {
    "line_no": pl.Int64(),  # 1-based line (or entry) number in the source file, for errors and cases
    "our_ref": pl.String(),  # the reference we gave the channel (attempt reference, refund id, end-to-end id)
    "channel_ref": pl.String(),  # the channel's or bank's own id for the line
    "kind": pl.String(),  # one of KINDS
    "status": pl.String(),  # one of STATUSES
    "amount": pl.Int64(),  # signed minor units, gross
    "fee": pl.Int64(),  # minor units the channel kept (negative: given back)
    "currency": pl.String(),  # ISO 4217
    "booked_on": pl.Date(),  # the day the line belongs to, in the channel's calendar
    "value_on": pl.Date(),  # the day the money is available (bank statements), else null
    "description": pl.String(),  # remittance information or free text, else null
}

INTERNAL_SCHEMA: dict[str, pl.DataType] = {
    "our_id": pl.String(),  # the payment or refund id
    "our_ref": pl.String(),  # the reference we gave the channel
    "channel_ref": pl.String(),  # the channel's id for it, when it told us
    "kind": pl.String(),  # "payment" or "refund"
    "status": pl.String(),  # one of STATUSES, as the ledger sees it
    "amount": pl.Int64(),  # signed minor units, gross
    "fee": pl.Int64(),  # the channel cost we booked
    "currency": pl.String(),
    "booked_on": pl.Date(),  # in the channel's calendar
    "booked_at": pl.Datetime("us", "UTC"),  # when it became final, for the day-boundary (timing) rule
}


@dataclass(frozen=True, slots=True)
class StatementPart:
    """One statement of a bank file that may hold several (an MT940 ``:20:`` block, a camt.053 ``Stmt``).

    Its lines are those from ``first_line`` (where it starts in the file) up to the next part's: they are
    on its ``account``, which a file with statements of several accounts needs to post each case to its own.
    ``opening`` and ``closing`` are its balances (signed minor units: positive, money at the bank), the first at
    the file's line ``opening_line``, dated ``opened_on``."""

    account: str | None
    currency: str
    first_line: int
    opening: int = 0
    opening_line: int = 0
    opened_on: date | None = None
    closing: int = 0


IDENTITY_LIMITS = {"account": 64, "number": 35, "sequence": 16}
"""The longest account, statement number and sequence a bank statement's identity may have (its columns'
widths; MT940 writes at most 35, 5 and 5 characters, camt.053 34, 35 and 5)."""


def statement_number(text: str | None) -> str | None:
    """A bank's statement (or page) number as it is compared: digits without their leading zeros (MT940's
    ``:28C:00101`` is camt.053's ``<ElctrncSeqNb>101``), anything else as written, stripped; None if empty."""
    text = (text or "").strip()
    if not text:
        return None
    return (text.lstrip("0") or "0") if text.isascii() and text.isdigit() else text


@dataclass(frozen=True, slots=True)
class BankStatementIdentity:
    """How the bank numbers a statement: the statement with this number and page (``sequence``), of this
    account, closing on this day, is one statement whatever file it comes in (MT940 ``:25:`` and ``:28C:``;
    camt.053 ``Acct/Id``, ``ElctrncSeqNb`` else ``LglSeqNb`` else ``Stmt/Id``, and ``StmtPgntn/PgNb``). A statement
    without a page number is its page 1. ``closed_on`` (the closing balance's day) is part of it because banks
    start their numbers again every year, and some write the same number on every statement."""

    account: str
    number: str
    sequence: str
    closed_on: date

    @classmethod
    def of(cls, account: str | None, number: str | None, sequence: str | None, closed_on: date | None, *,
           line: int) -> BankStatementIdentity | None:
        """The identity, when the statement states its account, number and closing day (None otherwise).
        A part too long to be kept is ``StatementInvalid`` at ``line`` (where the statement starts)."""
        parts = {"account": (account or "").strip() or None, "number": statement_number(number),
                 "sequence": statement_number(sequence) or "1"}
        for part, value in parts.items():
            if value is not None and len(value) > IDENTITY_LIMITS[part]:
                raise StatementInvalid(f"the statement's {part} is longer than {IDENTITY_LIMITS[part]} characters",
                                       line=line)
        if parts["account"] is None or parts["number"] is None or closed_on is None:
            return None
        return cls(parts["account"], parts["number"], parts["sequence"], closed_on)

    def __str__(self) -> str:
        return (f"number {self.number} (sequence {self.sequence}) of account {self.account}, "
                f"closing {self.closed_on.isoformat()}")


@dataclass(frozen=True, slots=True)
class StatementMeta:
    """What a statement says about itself, beyond its lines."""

    format: str  # "csv", "mt940", "camt053", or a sandbox layout name
    account: str | None = None  # IBAN or account id (bank statements), merchant or app id (channel bills)
    currency: str | None = None
    statement_id: str | None = None  # the statement's own id (MT940 :20:/:28C:, camt.053 Stmt/Id)
    opening_balance: int | None = None  # minor units, signed (bank statements)
    closing_balance: int | None = None
    first_day: date | None = None
    last_day: date | None = None
    extra: dict[str, str] = field(default_factory=dict)
    parts: tuple[StatementPart, ...] = ()  # bank files: each statement, in file order (``account`` is the first's)
    identity: BankStatementIdentity | None = None  # bank files: how the bank numbers the (first) statement

    def account_of(self, line_no: int | None, currency: str) -> str | None:
        """The account a line of the file is on: its statement's. Without a line (one of ours the file lacks),
        the file's first statement in ``currency``; the file's (first) account when none is in it."""
        if not self.parts:
            return self.account
        if line_no is None:
            return next((part.account for part in self.parts if part.currency == currency), self.account)
        return self.accounts_of_lines(pl.Series([line_no], dtype=pl.Int64))[0]

    def accounts_of_lines(self, line_nos: pl.Series) -> pl.Series:
        """The account each of ``line_nos`` is on: its statement's, the one that starts last at or before it."""
        if not self.parts:
            return pl.Series([self.account] * len(line_nos), dtype=pl.String)
        starts = pl.Series([part.first_line for part in self.parts], dtype=pl.Int64)
        index = (starts.search_sorted(line_nos.cast(pl.Int64), side="right") - 1).clip(lower_bound=0)
        return pl.Series([part.account for part in self.parts], dtype=pl.String).gather(index)


@dataclass(frozen=True, slots=True)
class ParsedStatement:
    meta: StatementMeta
    lines: pl.DataFrame  # STATEMENT_SCHEMA, in file order


def empty_statement() -> pl.DataFrame:
    return pl.DataFrame(schema=STATEMENT_SCHEMA)


def empty_internal() -> pl.DataFrame:
    return pl.DataFrame(schema=INTERNAL_SCHEMA)
