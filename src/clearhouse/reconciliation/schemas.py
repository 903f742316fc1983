"""Reconciliation request and response shapes."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints

from clearhouse.identity.schemas import ApprovalOut
from clearhouse.kit.api import Model

CHANNEL_NAME = r"^[a-z0-9][a-z0-9_.:-]{0,39}$"
"""A channel's (or bank account's) name, in the API and on the command line alike."""
ChannelName = Annotated[str, StringConstraints(pattern=CHANNEL_NAME)]
Reason = Annotated[str, StringConstraints(min_length=3, max_length=500, strip_whitespace=True)]
Owner = Annotated[str, StringConstraints(min_length=1, max_length=80)]
CommentText = Annotated[str, StringConstraints(min_length=1, max_length=4000)]


class ClassFigures(BaseModel):
    count: int
    amount: int = Field(description="Sum of the lines' absolute amounts over every currency, minor units (kept as "
                                    "it was: with several currencies it adds different money; see "
                                    "amounts_by_currency)")


AMOUNTS_BY_CURRENCY = Field(default_factory=dict, description=(
    "Per class, the sum of its lines' absolute amounts per currency, minor units (classes without lines left out; "
    "empty for a run imported before 2026-11-25)"))


class ClearingFigures(BaseModel):
    expected: int
    reported: int
    difference: int


class RunClearingFigures(ClearingFigures):
    suspense_on_import: int | None = Field(default=None, description=(
        "A bank statement's: what its import posted to `suspense` for its cases in this currency (recipe 9); "
        "null for a channel's statement and a bank statement imported before 2026-11-25"))


class BankStatementOut(BaseModel):
    """How the bank numbers the (first) statement of a bank file, which is imported once
    (docs/reconciliation.md, "Import a statement")."""

    account: str
    number: str = Field(description="MT940 `:28C:` statement number; camt.053 `ElctrncSeqNb`, else `LglSeqNb`, "
                                    "else `Stmt/Id` (digits without their leading zeros)")
    sequence: str = Field(description="MT940 `:28C:` sequence number; camt.053 `StmtPgntn/PgNb`; 1 when not given")
    closed_on: date = Field(description="The day of the statement's closing balance")


class StatementOut(BaseModel):
    id: str
    file_name: str
    format: str
    mapping: str | None
    sha256: str
    size_bytes: int
    lines: int
    account: str | None
    currency: str | None
    opening_balance: int | None
    closing_balance: int | None
    first_day: date | None
    last_day: date | None
    bank_statement: BankStatementOut | None = None
    """Null for a channel's statement, a bank statement without a number, and one imported before migration 0015."""


class BankBalanceOut(BaseModel):
    """How a bank statement's opening balance continues the ledger's account (docs/reconciliation.md, "The bank's
    balance")."""

    account: str = Field(description="The ledger account, `bank:<account>`")
    currency: str
    opening_balance: int = Field(description="The statement's opening balance, signed minor units")
    ledger_balance: int = Field(description="What `bank:<account>` held before this statement (0 for a new account)")
    took_up: Literal["first", "earlier"] | None = Field(description=(
        "`first`: the account's first statement, its opening balance posted; `earlier`: a statement before the one "
        "the account was taken up at, the take-up moved back to it; null: it continues the account"))
    amount: int = Field(description="What was posted from `opening_balances` to the account (0: nothing)")
    entry_id: str | None = Field(description="The ledger entry that posted `amount`; null when it is 0")
    gap: int = Field(description=(
        "Lines between this statement and the ones imported before it that no imported statement has brought "
        "(a statement missing; negative when a later one was imported first): 0 when it continues them"))


class ReconciliationOut(BaseModel):
    id: str
    object: Literal["reconciliation"]
    channel: str
    statement_date: date
    statement: StatementOut
    classes: dict[str, ClassFigures]
    amounts_by_currency: dict[str, dict[str, int]] = AMOUNTS_BY_CURRENCY
    statement_lines: int
    internal_lines: int
    case_count: int
    case_states: dict[str, int]
    clearing: dict[str, RunClearingFigures]
    bank_balances: list[BankBalanceOut] = Field(default_factory=list, description=(
        "A bank statement's accounts: how each opening balance continues the ledger's `bank:<account>` (empty for "
        "a channel's statement and a bank statement imported before 2026-11-25)"))
    rules: dict[str, Any]
    duration_ms: int
    created_by: str
    created_at: datetime


class Side(BaseModel):
    amount: int | None
    fee: int | None
    status: str | None
    booked_on: date | None


class CaseEventOut(BaseModel):
    id: str
    type: str
    actor: str
    body: str | None
    created_at: datetime


class CaseOut(BaseModel):
    id: str
    object: Literal["recon_case"]
    reconciliation_id: str
    channel: str
    class_: str = Field(alias="class", serialization_alias="class")
    state: str
    owner: str | None
    our_id: str | None
    our_ref: str | None
    channel_ref: str | None
    line_no: int | None
    currency: str
    ours: Side
    theirs: Side
    difference: int
    delta: int = Field(description="What the channel holds for us by its statement minus by our ledger, net of "
                       "fees: the amount an adjustment posts to channel_clearing")
    detail: str
    resolution: str | None
    resolution_reason: str | None
    ledger_entry_id: str | None
    approval_id: str | None
    resolved_by: str | None
    resolved_at: datetime | None
    created_at: datetime
    updated_at: datetime
    events: list[CaseEventOut] | None = None
    approval: ApprovalOut | None = None

    model_config = {"populate_by_name": True}


class CaseUpdate(Model):
    owner: Owner | None = None
    state: Literal["investigating"] | None = None


class CaseComment(Model):
    body: CommentText


class CaseResolve(Model):
    action: Literal["accept", "adjust", "write_off"]
    reason: Reason
    account: Literal["suspense", "channel_cost"] = Field(
        default="suspense", description="The counter-account of an adjust (write_off always uses losses:writeoff)")


class RulesIn(Model):
    rules: dict[str, Any] = Field(default_factory=dict, description="MatchRules fields (docs/reconciliation.md)")
    mapping: dict[str, Any] | None = Field(default=None, description="A CSV mapping that replaces the built-in one")


class RulesOut(BaseModel):
    channel: str
    rules: dict[str, Any]
    mapping: dict[str, Any] | None


class DryRunOut(BaseModel):
    channel: str
    statement_date: date
    statement_lines: int
    internal_lines: int
    classes: dict[str, ClassFigures]
    amounts_by_currency: dict[str, dict[str, int]] = AMOUNTS_BY_CURRENCY
    clearing: dict[str, ClearingFigures]
    discrepancies: list[dict[str, Any]]


class ClearingLine(BaseModel):
    channel: str
    currency: str
    expected: int
    reported: int
    received: int
    net_position: int
    clearing_balance: int | None
    discrepancies: int
    open_cases: int
    reconciliations: list[str]


class ClearingReportOut(BaseModel):
    object: Literal["clearing_report"]
    date: date
    channels: list[ClearingLine]
