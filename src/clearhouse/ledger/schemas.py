"""Ledger request and response models (the Core shapes of api.md)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, StrictBool

from clearhouse.kit.api import Amount, ClientId, CurrencyCode, MetadataIn, Model, ShortText, UtcTime
from clearhouse.kit.money import MAX_AMOUNT

AccountType = Literal["asset", "liability", "equity", "revenue", "expense"]
Metadata = dict[str, Any]
MAX_TIMEOUT_SECONDS = 366 * 24 * 3600

SYSTEM_ENTRY_ID = re.compile(r"tr_(pay|re|rcs|rcb|rco)_")
"""The ids the system gives its own entries: ``tr_<payment id>`` (and its ``_capture``, ``_release``...),
``tr_<refund id>``, ``tr_<reconciliation case id>``, ``tr_rcb_<reconciliation id>_<n>`` (a channel's payout
seen on a bank statement), ``tr_rco_<reconciliation id>_<n>`` (a bank account's opening balance)."""


def _not_a_system_id(value: str | None) -> str | None:
    # Taken first by a client, such an id made the system's own entry fail: a payment paid at the channel
    # was never recorded, a capture taken at the channel was refused, a case could not be resolved.
    if value is not None and SYSTEM_ENTRY_ID.match(value):
        raise ValueError("ids starting tr_pay_, tr_re_, tr_rcs_, tr_rcb_ or tr_rco_ are the system's own (payments, "
                         "refunds, reconciliation cases, channel payouts, bank opening balances): choose another")
    return value


EntryId = Annotated[ClientId, AfterValidator(_not_a_system_id)]

CHART_ACCOUNT_ID = re.compile(r"acct_[a-z2-7]{32}")
"""The shape of a named account's id (``chart.account_id``: ``acct_`` and 32 base32 characters of a hash of
its name and currency). Ids a client does not choose are ``acct_`` and a 26-character ULID, or ``acct_ik`` and
26 hex digits (from an Idempotency-Key): never this shape."""


def _not_a_chart_id(value: str | None) -> str | None:
    # Taken first by a client (in another currency, or then closed), the chart's account made every
    # payment, refund or payout that posts to it fail: fee_revenue, a merchant's balance, a bank account.
    if value is not None and CHART_ACCOUNT_ID.fullmatch(value):
        raise ValueError("ids of the shape acct_ and 32 letters a-z and digits 2-7 are the chart's named accounts "
                         "(fee_revenue, merchant_pending:..., bank:...): choose another")
    return value


AccountId = Annotated[ClientId, AfterValidator(_not_a_chart_id)]


class AccountFlags(Model):
    debits_must_not_exceed_credits: StrictBool = False
    credits_must_not_exceed_debits: StrictBool = False


class AccountCreate(Model):
    id: AccountId | None = None
    type: AccountType
    currency: CurrencyCode
    code: str = Field(min_length=1, max_length=128)
    owner_id: str | None = Field(default=None, min_length=1, max_length=128)
    flags: AccountFlags = AccountFlags()
    overdraft_limit: int | None = Field(default=None, strict=True, ge=0, le=MAX_AMOUNT)
    metadata: MetadataIn | None = None


class BalanceOut(BaseModel):
    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int
    posted: int = Field(description="Credits minus debits for liability, equity and revenue; the reverse otherwise")
    available: int = Field(description="Posted balance less outgoing pending amounts")


class AccountOut(BaseModel):
    id: str
    type: AccountType
    currency: str
    code: str
    owner_id: str | None
    flags: AccountFlags
    overdraft_limit: int | None
    closed: bool
    metadata: Metadata
    created_at: UtcTime
    balance: BalanceOut


class AccountBalanceOut(BalanceOut):
    account_id: str
    currency: str
    as_of: UtcTime | None


class EntryFields(Model):
    """What every new entry carries, whether a plain transfer or a multi-leg entry."""

    id: EntryId | None = None
    code: str | None = Field(default=None, max_length=128)
    reference: ShortText | None = None
    pending: StrictBool = False
    timeout_seconds: int | None = Field(default=None, strict=True, gt=0, le=MAX_TIMEOUT_SECONDS)
    metadata: MetadataIn | None = None


class TransferCreate(EntryFields):
    """A plain transfer: one debit and one credit of the same amount."""

    debit_account_id: str = Field(min_length=1, max_length=64)
    credit_account_id: str = Field(min_length=1, max_length=64)
    amount: Amount
    currency: CurrencyCode


class PostingIn(Model):
    account_id: str = Field(min_length=1, max_length=64)
    direction: Literal["debit", "credit"]
    amount: Amount
    currency: CurrencyCode


class EntryCreate(EntryFields):
    """A multi-leg journal entry: two or more postings summing to zero per currency."""

    postings: list[PostingIn] = Field(min_length=2, max_length=1000)


class TransferBatch(Model):
    transfers: list[dict[str, Any]] = Field(description="Up to 8190 transfers or multi-leg entries")
    linked: StrictBool = False


class PostPending(Model):
    id: EntryId | None = Field(default=None, description="Optional id for the posting entry (idempotency)")
    amount: Amount | None = Field(default=None, description="Post part of the pending amount; all by default")


class VoidPending(Model):
    id: EntryId | None = None


class PostingOut(BaseModel):
    account_id: str
    direction: Literal["debit", "credit"]
    kind: Literal["posted", "pending", "release"]
    amount: int
    currency: str


class TransferOut(BaseModel):
    id: str
    seq: int
    status: Literal["posted", "pending", "voided"]
    debit_account_id: str | None
    credit_account_id: str | None
    amount: int | None = Field(description="The amount moved; null for an entry in several currencies")
    currency: str | None
    pending: bool
    pending_id: str | None
    resolution: Literal["post", "void"] | None
    resolved_by: str | None = None
    timeout_seconds: int | None
    timeout_at: UtcTime | None
    code: str | None
    reference: str | None
    metadata: Metadata
    created_at: UtcTime
    hash: str
    postings: list[PostingOut]


class BatchResult(BaseModel):
    index: int
    id: str
    status: Literal["created", "exists", "failed"]
    code: str | None = None
    detail: str | None = None


class BatchOut(BaseModel):
    results: list[BatchResult]


class EntryLine(BaseModel):
    """One posting on the account, with the entry it belongs to."""

    cursor: str
    transfer_id: str
    seq: int
    direction: Literal["debit", "credit"]
    kind: Literal["posted", "pending", "release"]
    amount: int
    currency: str
    code: str | None
    reference: str | None
    created_at: UtcTime


class VerifyOut(BaseModel):
    ok: bool
    entries_checked: int
    postings_checked: int
    accounts_checked: int
    chain_head: dict[str, Any]
    first_failure: dict[str, Any] | None
    failures: list[dict[str, Any]]
