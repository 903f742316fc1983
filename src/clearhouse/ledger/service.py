"""The ledger's business rules: accounts, journal entries, two-phase transfers, balances.

Services flush and never commit: the caller's transaction boundary (``kit.db.transact``)
commits once. Every write locks the chain head first, then the accounts it touches in id
order, so the journal is one total order, each entry's hash covers its predecessor, and
ledger writers queue on one lock instead of deadlocking on accounts. While a writer holds
the chain, no other writer can move a balance: only ``close_account`` changes an account
concurrently, and the plain-transfer path guards against it (``WHERE NOT closed``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Row
from sqlalchemy.orm import Session

from clearhouse.kit import clock
from clearhouse.kit.canonical import canonical_json
from clearhouse.kit.ids import new_id, new_ids
from clearhouse.kit.money import MAX_AMOUNT, allocate, is_currency
from clearhouse.ledger import errors, repository

MAX_BATCH = 8190
ACCOUNT_TYPES = ("asset", "liability", "equity", "revenue", "expense")
DEBIT_NORMAL = frozenset({"asset", "expense"})

DEBIT, CREDIT = "debit", "credit"
POSTED, PENDING, RELEASE = "posted", "pending", "release"

# Which running balance (index into Balances.values) a posting moves, and by which sign.
_SLOT = {
    (DEBIT, POSTED): (0, 1), (CREDIT, POSTED): (1, 1),
    (DEBIT, PENDING): (2, 1), (CREDIT, PENDING): (3, 1),
    (DEBIT, RELEASE): (2, -1), (CREDIT, RELEASE): (3, -1),
}


# ---------------------------------------------------------------- requests and results


@dataclass(slots=True)
class PostingRequest:
    account_id: str
    direction: str
    amount: int
    currency: str


@dataclass(slots=True)
class EntryRequest:
    """A new journal entry (two or more postings), or the post/void of a pending one."""

    postings: list[PostingRequest] = field(default_factory=list)
    id: str | None = None
    code: str | None = None
    reference: str | None = None
    metadata: dict[str, Any] | None = None
    pending: bool = False
    timeout_seconds: int | None = None
    # Resolution of a pending entry: ``pending_id`` plus "post" (optionally partial) or "void".
    pending_id: str | None = None
    resolution: str | None = None
    amount: int | None = None

    @classmethod
    def transfer(
        cls, debit_account_id: str, credit_account_id: str, amount: int, currency: str, **kw: Any
    ) -> EntryRequest:
        return cls(
            postings=[
                PostingRequest(debit_account_id, DEBIT, amount, currency),
                PostingRequest(credit_account_id, CREDIT, amount, currency),
            ],
            **kw,
        )


@dataclass(slots=True)
class Outcome:
    index: int
    id: str
    status: str  # created | exists | failed
    code: str | None = None
    detail: str | None = None


class _Failure(Exception):
    def __init__(self, error: type[errors.LedgerError], detail: str):
        self.error = error
        self.detail = detail


def limit_breach(account: Any, values: list[int]) -> type[errors.LedgerError] | None:
    """The limit rule that ``values`` (dp, cp, dpend, cpend) would break for ``account``, if any.

    Pending debits count against a debit limit at once (they are reserved); pending
    credits do not count until posted.
    """
    dp, cp, dpend, cpend = values
    limit = account.overdraft_limit or 0
    if account.debits_must_not_exceed_credits and dp + dpend > cp + limit:
        return errors.InsufficientFunds
    if account.credits_must_not_exceed_debits and cp + cpend > dp + limit:
        return errors.ExceedsCreditLimit
    if max(values) > MAX_AMOUNT:
        return errors.BalanceOverflow
    return None


class _Balances:
    """An account's running balances while a batch is checked, before anything is written."""

    __slots__ = ("id", "num", "currency", "closed", "limited", "row", "values", "start")

    def __init__(self, row: Row):
        self.id = row.id
        self.num = row.num
        self.currency = row.currency
        self.closed = row.closed
        self.limited = row.debits_must_not_exceed_credits or row.credits_must_not_exceed_debits
        self.row = row
        self.values = [row.debits_posted, row.credits_posted, row.debits_pending, row.credits_pending]
        self.start = self.values

    def check(self, values: list[int]) -> None:
        if not self.limited and max(values) <= MAX_AMOUNT:
            return  # the common case: an account with no limit, far from overflow
        breach = limit_breach(self.row, values)
        if breach is not None:
            raise _Failure(breach, f"account {self.id}: {breach.title.lower()}")


# ---------------------------------------------------------------- accounts


def create_account(
    session: Session,
    *,
    type: str,
    currency: str,
    code: str,
    id: str | None = None,
    owner_id: str | None = None,
    debits_must_not_exceed_credits: bool = False,
    credits_must_not_exceed_debits: bool = False,
    overdraft_limit: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> tuple[Row, bool]:
    """Open an account; returns (account, created). The same id with the same fields is a replay.

    An ``overdraft_limit`` without a flag limits the account on its normal side: a
    credit-normal account (liability, equity, revenue) may go that far below zero.
    """
    if type not in ACCOUNT_TYPES:
        raise errors.ValidationFailed(f"type must be one of {', '.join(ACCOUNT_TYPES)}")
    if not is_currency(currency):
        raise errors.UnknownCurrency(f"{currency!r} is not an ISO 4217 currency")
    if debits_must_not_exceed_credits and credits_must_not_exceed_debits:
        raise errors.ValidationFailed("an account takes at most one of the two limit flags")
    if overdraft_limit is not None:
        if not 0 <= overdraft_limit <= MAX_AMOUNT:
            raise errors.InvalidAmount("overdraft_limit must be between 0 and 2^63-1")
        if not (debits_must_not_exceed_credits or credits_must_not_exceed_debits):
            if type in DEBIT_NORMAL:
                credits_must_not_exceed_debits = True
            else:
                debits_must_not_exceed_credits = True
    values = {
        "id": id or new_id("acct"),
        "type": type,
        "currency": currency,
        "code": code,
        "owner_id": owner_id,
        "metadata_json": canonical_json(metadata or {}),
        "debits_must_not_exceed_credits": debits_must_not_exceed_credits,
        "credits_must_not_exceed_debits": credits_must_not_exceed_debits,
        "overdraft_limit": overdraft_limit,
        "closed": False,
        "debits_posted": 0,
        "credits_posted": 0,
        "debits_pending": 0,
        "credits_pending": 0,
    }
    if id is not None:
        existing = repository.get_account(session, id)
        if existing is not None:
            same = all(getattr(existing, k) == v for k, v in values.items() if k not in _BALANCE_AND_STATE)
            if not same:
                raise errors.AccountExists(f"account {id} exists with other fields")
            return existing, False
    values["created_at"] = clock.now()
    repository.insert_account(session, values)
    return repository.get_account(session, values["id"]), True


_BALANCE_AND_STATE = {"closed", "debits_posted", "credits_posted", "debits_pending", "credits_pending"}


def get_account(session: Session, account_id: str) -> Row:
    row = repository.get_account(session, account_id)
    if row is None:
        raise errors.NotFound(f"no account {account_id}")
    return row


def list_accounts(session: Session, *, limit: int = 50, starting_after: str | None = None,
                  owner_id: str | None = None) -> tuple[list[Row], bool]:
    rows = repository.list_accounts(session, limit=limit + 1, starting_after=starting_after, owner_id=owner_id)
    return rows[:limit], len(rows) > limit


def close_account(session: Session, account_id: str) -> Row:
    """Close an account with nothing on it; it takes no new entries afterwards."""
    row = repository.lock_accounts(session, [account_id]).get(account_id)
    if row is None:
        raise errors.NotFound(f"no account {account_id}")
    if row.debits_pending or row.credits_pending or row.debits_posted != row.credits_posted:
        raise errors.AccountNotEmpty(f"account {account_id} has a balance or pending amounts")
    repository.set_account_closed(session, account_id)
    return get_account(session, account_id)


@dataclass(frozen=True, slots=True)
class Balance:
    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int
    posted: int
    available: int


def balance_of(account_type: str, dp: int, cp: int, dpend: int, cpend: int) -> Balance:
    """Posted and available balance on the account's normal side.

    Available holds back outgoing reservations and does not count incoming ones yet.
    """
    if account_type in DEBIT_NORMAL:
        posted = dp - cp
        available = posted - cpend
    else:
        posted = cp - dp
        available = posted - dpend
    return Balance(dp, cp, dpend, cpend, posted, available)


def account_balance(session: Session, account_id: str, as_of: datetime | None = None) -> tuple[Row, Balance]:
    """The account and its balance now (from the running totals) or as of a past time
    (from the postings)."""
    row = get_account(session, account_id)
    if as_of is None:
        return row, balance_of(row.type, row.debits_posted, row.credits_posted, row.debits_pending,
                               row.credits_pending)
    sums = _signed_sums(repository.balance_sums(session, account_id, repository.last_seq_at(session, as_of)))
    return row, balance_of(row.type, *sums)


def _signed_sums(sums: dict[tuple[str, str], int]) -> list[int]:
    values = [0, 0, 0, 0]
    for (direction, kind), total in sums.items():
        slot, sign = _SLOT[(direction, kind)]
        values[slot] += sign * total
    return values


_CURSOR = re.compile(r"([0-9]+):([0-9]+)")


def account_entries(
    session: Session, account_id: str, *, limit: int = 50, starting_after: str | None = None,
    as_of: datetime | None = None,
) -> tuple[list[Row], bool]:
    """The postings behind an account's balance, oldest first; cursor is ``seq:idx``."""
    get_account(session, account_id)
    after = None
    if starting_after:
        # Digits as the list spells them: int() would also take spaces, signs, "_" and non-ASCII digits.
        cursor = _CURSOR.fullmatch(starting_after)
        after = (int(cursor[1]), int(cursor[2])) if cursor else None
        if after is None or not (after[0] <= MAX_AMOUNT and after[1] <= MAX_AMOUNT):
            raise errors.ValidationFailed("starting_after is not a cursor from this list")
    up_to = repository.last_seq_at(session, as_of) if as_of is not None else None
    rows = repository.account_history(session, account_id, after=after, up_to_seq=up_to, limit=limit + 1)
    return rows[:limit], len(rows) > limit


# ---------------------------------------------------------------- writing entries


@dataclass(slots=True)
class _Prepared:
    index: int
    id: str
    request: EntryRequest
    rows: list[tuple[str, str, str, int, str]]  # (account, direction, kind, amount, currency)
    metadata_json: str


def create_transfers(session: Session, requests: list[EntryRequest], *, linked: bool = False) -> list[Outcome]:
    """Write a batch of entries (up to 8190), in order.

    Unlinked: each entry succeeds or fails on its own. Linked: all or none; the first
    failure is reported with its code, the others with ``linked_event_failed``.
    A client-chosen id that exists with the same fields is ``exists`` and changes nothing.
    """
    if len(requests) > MAX_BATCH:
        raise errors.BatchTooLarge(f"a batch holds at most {MAX_BATCH} transfers, got {len(requests)}")
    if not requests:
        return []
    generated = iter(new_ids("tr", sum(1 for r in requests if r.id is None)))
    ids = [r.id if r.id is not None else next(generated) for r in requests]
    head = repository.lock_chain(session)
    if all(map(_is_plain, requests)):
        outcomes = _create_plain_transfers(session, requests, ids, head)
        if outcomes is not None:
            return outcomes

    client_ids = [r.id for r in requests if r.id is not None]
    existing = repository.existing_ids(session, client_ids) if client_ids else set()
    stored = repository.entries_with_postings(session, existing) if existing else {}

    pending_ids = {r.pending_id for r in requests if r.pending_id is not None}
    pending_stored = repository.entries_with_postings(session, pending_ids) if pending_ids else {}
    resolved = repository.resolutions_of(session, pending_ids) if pending_ids else {}

    account_ids: set[str] = set()
    for request in requests:
        for posting in request.postings:
            account_ids.add(posting.account_id)
    for _row, rows in pending_stored.values():
        for posting in rows:
            account_ids.add(posting.account_id)
    balances = {key: _Balances(row) for key, row in repository.lock_accounts(session, account_ids).items()}

    now = clock.now()
    outcomes: list[Outcome] = []
    prepared: list[_Prepared] = []
    in_batch: dict[str, _Prepared] = {}
    resolved_in_batch: dict[str, str] = {}
    failed = False
    for index, (entry_id, request) in enumerate(zip(ids, requests, strict=True)):
        try:
            if entry_id in in_batch or entry_id in existing:
                earlier = in_batch.get(entry_id)
                same = (
                    _same_request(request, earlier.request)
                    if earlier is not None
                    else _matches_stored(request, *stored[entry_id])
                )
                if not same:
                    raise _Failure(errors.TransferExists, f"transfer {entry_id} exists with other fields")
                outcomes.append(Outcome(index, entry_id, "exists"))
                continue
            if request.pending_id is not None:
                rows = _resolution_rows(request, pending_stored, in_batch, resolved, resolved_in_batch, now)
            else:
                rows = _entry_rows(request)
            _apply(rows, balances, new_entry=request.pending_id is None)
        except _Failure as failure:
            outcomes.append(Outcome(index, entry_id, "failed", failure.error.code, failure.detail))
            if linked:
                failed = True
                break
            continue
        item = _Prepared(index, entry_id, request, rows, canonical_json(request.metadata or {}))
        prepared.append(item)
        in_batch[entry_id] = item
        if request.pending_id is not None:
            resolved_in_batch[request.pending_id] = request.resolution or ""
        outcomes.append(Outcome(index, entry_id, "created"))

    if linked and failed:
        first = outcomes[-1]
        return [
            first if i == first.index else Outcome(i, ids[i], "failed", errors.LINKED_EVENT_FAILED,
                                                   "a linked batch fails as one")
            for i in range(len(requests))
        ]
    if prepared:
        _write(session, prepared, balances, head)
    return outcomes


# ---------------------------------------------------------------- the plain-transfer path


def _is_plain(request: EntryRequest) -> bool:
    """A posted two-leg transfer, debit then credit: what bulk loads are made of."""
    postings = request.postings
    return (
        len(postings) == 2 and postings[0].direction == DEBIT and postings[1].direction == CREDIT
        and not request.pending and request.pending_id is None and request.timeout_seconds is None
        and request.resolution is None and request.amount is None
    )


def _create_plain_transfers(
    session: Session, requests: list[EntryRequest], ids: list[str], head: tuple[int, str]
) -> list[Outcome] | None:
    """Write a batch of plain transfers in one tight loop, or return None (having written
    nothing) for the general path to handle it: a replayed or repeated id, any rule broken,
    an account with a limit that a transfer would break.

    The same rows, hashes and balances as the general path; what it leaves out is the
    per-entry bookkeeping (dicts of touched accounts, prepared objects, generic leg rows)
    that only entries which can fail or resolve need, and the row locks on accounts: the
    caller holds the chain, so no other writer moves these balances. Accounts' numbers and
    currencies come from memory once seen (``repository.plain_accounts``); the balance
    update checks them, refuses a closed account and a total past 2^63-1, and then
    nothing of the batch stays written.
    """
    if len(set(ids)) != len(ids):
        return None
    account_ids = set()
    for request in requests:
        account_ids.add(request.postings[0].account_id)
        account_ids.add(request.postings[1].account_id)
    accounts = repository.plain_accounts(session, account_ids)
    if accounts is None:
        return None
    facts, limited_rows = accounts
    # Per account: [number, currency, debits added, credits added]; limited accounts also
    # keep running values checked after every transfer, as the general path does.
    moves = {account_id: [num, currency, 0, 0] for account_id, (num, currency) in facts.items()}
    limited = {
        account_id: [row.debits_posted, row.credits_posted, row.debits_pending, row.credits_pending]
        for account_id, row in limited_rows.items()
    }
    seq, prev = head
    created_at = clock.now()  # under the chain lock, so time never runs backwards along the chain
    created = clock.rfc3339(created_at)
    sha256, dumps = hashlib.sha256, orjson.dumps
    rows = []
    for entry_id, request in zip(ids, requests, strict=True):
        debit, credit = request.postings
        amount, currency = debit.amount, debit.currency
        if type(amount) is not int or not 0 < amount <= MAX_AMOUNT or type(credit.amount) is not int \
                or credit.amount != amount:
            return None
        debit_id, credit_id = debit.account_id, credit.account_id
        d, c = moves[debit_id], moves[credit_id]
        if d is c or d[1] != currency or c[1] != currency or credit.currency != currency:
            return None
        d[2] += amount
        c[3] += amount
        if limited and (debit_id in limited or credit_id in limited):
            for account_id, slot in ((debit_id, 0), (credit_id, 1)):
                values = limited.get(account_id)
                if values is not None:
                    values[slot] += amount
                    if limit_breach(limited_rows[account_id], values) is not None:
                        return None
        seq += 1
        metadata_json = canonical_json(request.metadata) if request.metadata else "{}"
        prev = sha256(dumps([
            prev, seq, entry_id, created, False, None, None, None, None, request.code, request.reference,
            metadata_json, [(debit_id, DEBIT, POSTED, amount, currency), (credit_id, CREDIT, POSTED, amount, currency)],
        ])).hexdigest()
        rows.append((seq, entry_id, request.code, request.reference, metadata_json, prev, d[0], c[0], amount, currency))
    deltas = []
    for account_id, (num, currency, debits, credits) in moves.items():
        if debits > MAX_AMOUNT or credits > MAX_AMOUNT:
            return None
        deltas.append((num, account_id, currency, account_id in limited, debits, credits))
    deltas.sort()  # in number order: neighbouring rows of the accounts table and its index
    if not repository.write_plain_transfers(session, rows, created_at, deltas):
        # A taken id, or an account not as remembered (closed, altered): the general path says which.
        repository.forget_accounts(session, account_ids)
        return None
    repository.advance_chain(session, seq, prev)
    return [Outcome(index, entry_id, "created") for index, entry_id in enumerate(ids)]


def _check_amount(amount: Any) -> None:
    if type(amount) is not int or not 0 < amount <= MAX_AMOUNT:
        raise _Failure(errors.InvalidAmount, "amount must be an integer from 1 to 2^63-1 minor units")


def _entry_rows(request: EntryRequest) -> list[tuple[str, str, str, int, str]]:
    postings = request.postings
    if len(postings) < 2:
        raise _Failure(errors.TooFewPostings, "an entry has at least two postings")
    if request.timeout_seconds is not None and (
        not request.pending or type(request.timeout_seconds) is not int or request.timeout_seconds <= 0
    ):
        raise _Failure(errors.ValidationFailed, "timeout_seconds is a positive integer, for pending transfers")
    kind = PENDING if request.pending else POSTED
    net: dict[str, int] = {}
    rows = []
    for posting in postings:
        _check_amount(posting.amount)
        if posting.direction == DEBIT:
            net[posting.currency] = net.get(posting.currency, 0) + posting.amount
        elif posting.direction == CREDIT:
            net[posting.currency] = net.get(posting.currency, 0) - posting.amount
        else:
            raise _Failure(errors.ValidationFailed, "direction is debit or credit")
        rows.append((posting.account_id, posting.direction, kind, posting.amount, posting.currency))
    if any(net.values()):
        raise _Failure(errors.EntryNotBalanced, "the debits of each currency must equal its credits")
    if len(postings) == 2 and postings[0].account_id == postings[1].account_id:
        raise _Failure(errors.AccountsMustDiffer, "debit and credit accounts must differ")
    return rows


def _resolution_rows(
    request: EntryRequest,
    pending_stored: dict[str, tuple[Row, list[Row]]],
    in_batch: dict[str, _Prepared],
    resolved: dict[str, Row],
    resolved_in_batch: dict[str, str],
    now: datetime,
) -> list[tuple[str, str, str, int, str]]:
    pending_id = request.pending_id
    assert pending_id is not None
    if request.resolution not in ("post", "void"):
        raise _Failure(errors.ValidationFailed, "resolution is post or void")
    if pending_id in pending_stored:
        entry, stored_rows = pending_stored[pending_id]
        if not entry.pending:
            raise _Failure(errors.NotPending, f"transfer {pending_id} is not pending")
        reserved = [(p.account_id, p.direction, p.amount, p.currency) for p in stored_rows]
        timeout_at = entry.timeout_at
    elif pending_id in in_batch and in_batch[pending_id].request.pending:
        earlier = in_batch[pending_id]
        reserved = [(a, d, amount, c) for a, d, _k, amount, c in earlier.rows]
        seconds = earlier.request.timeout_seconds
        timeout_at = now + timedelta(seconds=seconds) if seconds else None
    elif pending_id in in_batch:
        raise _Failure(errors.NotPending, f"transfer {pending_id} is not pending")
    else:
        raise _Failure(errors.PendingTransferNotFound, f"no pending transfer {pending_id}")
    done = resolved[pending_id].resolution if pending_id in resolved else resolved_in_batch.get(pending_id)
    if done == "post":
        raise _Failure(errors.PendingAlreadyPosted, f"pending transfer {pending_id} was already posted")
    if done == "void":
        raise _Failure(errors.PendingAlreadyVoided, f"pending transfer {pending_id} was already voided")

    rows = [(a, d, RELEASE, amount, c) for a, d, amount, c in reserved]
    if request.resolution == "void":
        if request.amount is not None:
            raise _Failure(errors.ValidationFailed, "a void takes no amount")
        return rows
    if timeout_at is not None and timeout_at <= now:
        raise _Failure(errors.PendingExpired, f"pending transfer {pending_id} expired at {timeout_at}")
    debits = [(a, amount, c) for a, d, amount, c in reserved if d == DEBIT]
    credits = [(a, amount, c) for a, d, amount, c in reserved if d == CREDIT]
    if request.amount is None:
        return rows + [(a, d, POSTED, amount, c) for a, d, amount, c in reserved]
    if len({c for _a, _d, _m, c in reserved}) != 1:
        # No one number is the amount of an entry in several currencies (100 CNY and 5 KWD are not
        # "105"): it is posted whole, with no amount, or not at all.
        raise _Failure(errors.PartialPostMultiCurrency,
                       "an entry in several currencies is posted whole, without an amount")
    total = sum(amount for _a, amount, _c in debits)
    if request.amount == total:
        return rows + [(a, d, POSTED, amount, c) for a, d, amount, c in reserved]
    _check_amount(request.amount)
    if request.amount > total:
        raise _Failure(errors.AmountExceedsPending, f"{request.amount} is more than the pending {total}")
    for side, direction in ((debits, DEBIT), (credits, CREDIT)):
        parts = allocate(request.amount, [amount for _a, amount, _c in side])
        rows.extend((a, direction, POSTED, part, c) for (a, _m, c), part in zip(side, parts, strict=True) if part)
    return rows


def _apply(rows: list[tuple[str, str, str, int, str]], balances: dict[str, _Balances], *, new_entry: bool) -> None:
    """Check an entry against its accounts and move their in-memory balances.

    Nothing moves unless every account passes, so a failed entry leaves no trace.
    Balance lists are replaced, never mutated, so ``start`` keeps the value read from
    the database and the delta written at the end is exact.
    """
    # Every posting is looked at before any rule is reported, and the rules are reported in
    # one order (an unknown account, then a currency mismatch, then a closed account), so
    # the answer never depends on the order of the postings.
    touched: dict[str, list[int]] = {}
    mismatch: str | None = None
    closed: str | None = None
    for account_id, direction, kind, amount, currency in rows:
        account = balances.get(account_id)
        if account is None:
            raise _Failure(errors.AccountNotFound, f"no account {account_id}")
        if account.currency != currency and mismatch is None:
            mismatch = f"account {account_id} holds {account.currency}, the posting is in {currency}"
        if new_entry and account.closed and closed is None:
            closed = f"account {account_id} is closed"
        values = touched.get(account_id)
        if values is None:
            values = touched[account_id] = list(account.values)
        slot, sign = _SLOT[(direction, kind)]
        values[slot] += sign * amount
    if mismatch is not None:
        raise _Failure(errors.CurrencyMismatch, mismatch)
    if closed is not None:
        raise _Failure(errors.AccountClosed, closed)
    for account_id, values in touched.items():
        balances[account_id].check(values)
    for account_id, values in touched.items():
        balances[account_id].values = values


def chain_hash(
    prev: str, seq: int, entry_id: str, created_at: str, pending: bool, pending_id: str | None,
    resolution: str | None, timeout_seconds: int | None, timeout_at: str | None, code: str | None,
    reference: str | None, metadata_json: str, rows: list[tuple[str, str, str, int, str]],
) -> str:
    """SHA-256 over the previous hash and an entry's canonical content (docs/ledger.md).

    The one definition of the canonical form: writing and verifying both call it.
    Times are RFC 3339 strings (``clock.rfc3339``).
    """
    content = orjson.dumps([
        prev, seq, entry_id, created_at, pending, pending_id, resolution,
        timeout_seconds, timeout_at, code, reference, metadata_json, rows,
    ])
    return hashlib.sha256(content).hexdigest()


def entry_hash(prev: str, entry: Row, posting_rows: list[Row]) -> str:
    """The hash of a stored entry, recomputed from its rows (used by verify)."""
    return chain_hash(
        prev, entry.seq, entry.id, clock.rfc3339(entry.created_at), entry.pending, entry.pending_id,
        entry.resolution, entry.timeout_seconds,
        clock.rfc3339(entry.timeout_at) if entry.timeout_at is not None else None,
        entry.code, entry.reference, entry.metadata_json,
        [(p.account_id, p.direction, p.kind, p.amount, p.currency) for p in posting_rows],
    )


_NO_ROW_LEGS = (None, None, None, None, None)


def _row_legs(rows: list[tuple[str, str, str, int, str]], balances: dict[str, _Balances]) -> tuple:
    """(debit_account, credit_account, amount, currency, kind) when the entry's legs fit on
    its own row (debit then credit, same kind, amount and currency, two accounts), else
    ``_NO_ROW_LEGS`` and the legs become posting rows."""
    if len(rows) != 2:
        return _NO_ROW_LEGS
    (debit, d_dir, d_kind, d_amount, d_cur), (credit, c_dir, c_kind, c_amount, c_cur) = rows
    if (d_dir, c_dir) != (DEBIT, CREDIT) or d_kind != c_kind or d_amount != c_amount or d_cur != c_cur \
            or debit == credit:
        return _NO_ROW_LEGS
    debit_num, credit_num = balances[debit].num, balances[credit].num
    if debit_num is None or credit_num is None:  # an account inserted around create_account
        return _NO_ROW_LEGS
    return (debit_num, credit_num, d_amount, d_cur, d_kind)


def _write(
    session: Session, prepared: list[_Prepared], balances: dict[str, _Balances], head: tuple[int, str]
) -> None:
    seq, prev = head
    created_at = clock.now()  # read under the chain lock, so time never runs backwards along the chain
    created = clock.rfc3339(created_at)
    entry_rows: list[tuple] = []
    posting_rows: list[tuple] = []
    for item in prepared:
        seq += 1
        request = item.request
        timeout_at = (
            created_at + timedelta(seconds=request.timeout_seconds)
            if request.pending and request.timeout_seconds
            else None
        )
        prev = chain_hash(
            prev, seq, item.id, created, request.pending, request.pending_id, request.resolution,
            request.timeout_seconds, clock.rfc3339(timeout_at) if timeout_at is not None else None,
            request.code, request.reference, item.metadata_json, item.rows,
        )
        legs = _row_legs(item.rows, balances)
        entry_rows.append((
            seq, item.id, request.pending, request.pending_id, request.resolution, request.timeout_seconds,
            timeout_at, request.code, request.reference, item.metadata_json, created_at, prev, *legs,
        ))
        if legs is _NO_ROW_LEGS:
            posting_rows.extend((seq, idx, *row) for idx, row in enumerate(item.rows))
    deltas = []
    for account in balances.values():
        delta = [now - start for now, start in zip(account.values, account.start, strict=True)]
        if any(delta):
            deltas.append((account.id, *delta))
    repository.write_journal(session, entry_rows, posting_rows, deltas)
    repository.advance_chain(session, seq, prev)


# ---------------------------------------------------------------- idempotent replays


def _same_request(a: EntryRequest, b: EntryRequest) -> bool:
    return (
        [(p.account_id, p.direction, p.amount, p.currency) for p in a.postings]
        == [(p.account_id, p.direction, p.amount, p.currency) for p in b.postings]
        and a.pending == b.pending and a.timeout_seconds == b.timeout_seconds
        and a.pending_id == b.pending_id and a.resolution == b.resolution and a.amount == b.amount
        and a.code == b.code and a.reference == b.reference
        and canonical_json(a.metadata or {}) == canonical_json(b.metadata or {})
    )


def _matches_stored(request: EntryRequest, entry: Row, rows: list[Row]) -> bool:
    if (request.code, request.reference, request.pending_id, request.resolution) != (
        entry.code, entry.reference, entry.pending_id, entry.resolution
    ) or canonical_json(request.metadata or {}) != entry.metadata_json:
        return False
    if entry.pending_id is None:
        return (
            request.pending == entry.pending
            and request.timeout_seconds == entry.timeout_seconds
            and [(p.account_id, p.direction, p.amount, p.currency) for p in request.postings]
            == [(p.account_id, p.direction, p.amount, p.currency) for p in rows]
        )
    if request.resolution == "void":
        return request.amount is None
    posted = sum(p.amount for p in rows if p.kind == POSTED and p.direction == DEBIT)
    reserved = sum(p.amount for p in rows if p.kind == RELEASE and p.direction == DEBIT)
    return posted == (request.amount if request.amount is not None else reserved)


# ---------------------------------------------------------------- single operations


def raise_failed(outcome: Outcome) -> None:
    if outcome.status == "failed":
        raise errors.BY_CODE.get(outcome.code or "", errors.LedgerError)(outcome.detail or "")


def create_transfer(session: Session, request: EntryRequest) -> tuple[str, bool]:
    """Write one entry; returns (id, created). Raises the rule it broke."""
    (outcome,) = create_transfers(session, [request])
    raise_failed(outcome)
    return outcome.id, outcome.status == "created"


def resolve_pending(
    session: Session, pending_id: str, resolution: str, *, amount: int | None = None, id: str | None = None
) -> tuple[str, bool]:
    """Post (fully or partly) or void a pending transfer, once."""
    request = EntryRequest(id=id, pending_id=pending_id, resolution=resolution, amount=amount)
    return create_transfer(session, request)


def void_expired(session: Session, *, limit: int = MAX_BATCH) -> int:
    """Void pending transfers past their timeout; returns how many. Run by the worker."""
    ids = repository.expired_pending_ids(session, clock.now(), limit)
    if not ids:
        return 0
    outcomes = create_transfers(session, [EntryRequest(pending_id=i, resolution="void") for i in ids])
    return sum(1 for o in outcomes if o.status == "created")


# ---------------------------------------------------------------- reading transfers


def get_transfer(session: Session, transfer_id: str) -> dict[str, Any]:
    """A transfer as the API shows it, with its postings and (for pending ones) its state."""
    found = repository.entries_with_postings(session, [transfer_id])
    if transfer_id not in found:
        raise errors.TransferNotFound(f"no transfer {transfer_id}")
    entry, rows = found[transfer_id]
    view: dict[str, Any] = {
        "id": entry.id,
        "seq": entry.seq,
        "pending": entry.pending,
        "pending_id": entry.pending_id,
        "resolution": entry.resolution,
        "timeout_seconds": entry.timeout_seconds,
        "timeout_at": entry.timeout_at,
        "code": entry.code,
        "reference": entry.reference,
        "metadata": orjson.loads(entry.metadata_json),
        "created_at": entry.created_at,
        "hash": entry.hash,
        "postings": [
            {"account_id": p.account_id, "direction": p.direction, "kind": p.kind,
             "amount": p.amount, "currency": p.currency}
            for p in rows
        ],
    }
    if entry.pending:
        resolution = repository.resolutions_of(session, [entry.id]).get(entry.id)
        view["status"] = {None: "pending", "post": "posted", "void": "voided"}[
            resolution.resolution if resolution is not None else None
        ]
        view["resolved_by"] = resolution.id if resolution is not None else None
        shown = rows
    elif entry.resolution is not None:
        view["status"] = "posted" if entry.resolution == "post" else "voided"
        shown = [p for p in rows if p.kind == (POSTED if entry.resolution == "post" else RELEASE)]
    else:
        view["status"] = "posted"
        shown = rows
    debits = [p for p in shown if p.direction == DEBIT]
    credits = [p for p in shown if p.direction == CREDIT]
    if len(debits) == 1 and len(credits) == 1:
        view.update(
            debit_account_id=debits[0].account_id,
            credit_account_id=credits[0].account_id,
            amount=debits[0].amount,
            currency=debits[0].currency,
        )
    else:
        # A multi-leg entry has an amount only when it is in one currency.
        currencies = {p.currency for p in debits}
        single = len(currencies) == 1
        view.update(
            debit_account_id=None, credit_account_id=None,
            amount=sum(p.amount for p in debits) if single else None,
            currency=currencies.pop() if single else None,
        )
    return view

