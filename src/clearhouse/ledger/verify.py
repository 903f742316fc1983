"""Proof that the ledger is whole: the hash chain, zero-sum, limits, balances = postings."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from clearhouse.kit.db import read_snapshot
from clearhouse.kit.money import MAX_AMOUNT
from clearhouse.kit.verification import Findings
from clearhouse.ledger import repository
from clearhouse.ledger.models import GENESIS_HASH
from clearhouse.ledger.service import _SLOT, CREDIT, DEBIT, PENDING, POSTED, RELEASE, entry_hash, limit_breach


@dataclass
class Report(Findings):
    entries_checked: int = 0
    postings_checked: int = 0
    accounts_checked: int = 0


def verify(session: Session) -> Report:
    """Recompute everything from the journal and compare it with what is stored.

    Walks the entries in chain order: each hash must follow from its predecessor and
    content, each entry must balance per currency and kind, postings must match their
    accounts' currencies, and no limit may be broken after any entry. Then every
    account's running balances must equal the sums of its postings. Whatever a row holds,
    it is reported, never raised on: the tables may have been written behind our back.
    """
    # Accounts, journal and chain head are read by several statements: one snapshot, or
    # a write committing in between would look like a broken ledger.
    read_snapshot(session)
    report = Report()
    accounts = {}
    unchecked_limits = set()  # accounts whose limit is not a number: reported, not checked against
    for row in repository.all_accounts(session):
        accounts[row.id] = row
        problem = _account_problem(row)
        if problem:
            unchecked_limits.add(row.id)
            report.fail("invalid_account", problem, account_id=_shown(row.id))
    sums = {account_id: [0, 0, 0, 0] for account_id in accounts}
    prev = GENESIS_HASH
    expected_seq = 1
    for entry, rows in repository.journal(session):
        if entry is None:
            report.fail("orphan_postings", "postings without an entry", seq=_shown(rows[0].seq))
            continue
        where = {"seq": entry.seq, "transfer_id": _shown(entry.id)}
        report.entries_checked += 1
        report.postings_checked += len(rows)
        if entry.seq != expected_seq:
            report.fail("chain_gap", f"expected entry {expected_seq}, found {entry.seq}", **where)
        expected_seq = entry.seq + 1
        problem = _entry_problem(entry)
        if problem is None:
            try:
                if entry_hash(prev, entry, rows) != entry.hash:
                    report.fail("hash_mismatch", "the entry's content or predecessor does not match its hash", **where)
            except TypeError as error:  # a value the canonical form has no spelling for (bytes, say)
                report.fail("invalid_entry", f"the entry's content cannot be hashed: {error}", **where)
        else:
            report.fail("invalid_entry", problem, **where)
        prev = entry.hash
        if len(rows) < 2:
            report.fail("too_few_postings", "an entry has at least two postings", **where)
        net: dict[tuple[str, str], int] = {}
        touched = set()
        for posting in rows:
            slot = _SLOT.get((posting.direction, posting.kind))
            if slot is None or _bad_amount(posting.amount):
                report.fail("invalid_posting", f"posting {_shown(posting.idx)}: {_posting_problem(posting)}", **where)
                continue
            account = accounts.get(posting.account_id)
            if account is None:
                report.fail("unknown_account", f"posting to missing account {posting.account_id}", **where)
                continue
            if account.currency != posting.currency:
                report.fail("currency_mismatch", f"{posting.currency} posting on {account.id}", **where)
            sign = 1 if posting.direction == "debit" else -1
            key = (posting.currency, posting.kind)
            net[key] = net.get(key, 0) + sign * posting.amount
            sums[account.id][slot[0]] += slot[1] * posting.amount
            touched.add(account.id)
        for (currency, kind), total in net.items():
            if total:
                report.fail("not_balanced", f"{kind} {currency} debits and credits differ by {total}", **where)
        for account_id in touched - unchecked_limits:
            problem = _limit_problem(accounts[account_id], sums[account_id])
            if problem:
                report.fail(problem, f"account {account_id} breaks its limit", account_id=_shown(account_id), **where)
    stray_entries, stray_postings = repository.rows_before_the_chain(session)
    if stray_entries or stray_postings:
        report.fail("outside_chain", f"{stray_entries} entries and {stray_postings} postings at seq 0 or below")
    head = repository.find_chain_head(session)
    if head is None:
        report.chain_head = {"seq": None, "hash": None}
        report.fail("chain_head", f"the chain head is missing, the journal ends at {expected_seq - 1}")
    else:
        head_seq, head_hash = head
        report.chain_head = {"seq": _shown(head_seq), "hash": _shown(head_hash)}
        if (head_seq, head_hash) != (expected_seq - 1, prev):
            report.fail("chain_head", f"head says entry {head_seq}, the journal ends at {expected_seq - 1}")
    for account_id, account in accounts.items():
        report.accounts_checked += 1
        stored = [account.debits_posted, account.credits_posted, account.debits_pending, account.credits_pending]
        if stored != sums[account_id]:
            report.fail(
                "balance_mismatch",
                f"stored balances {stored} differ from the sum of postings {sums[account_id]}",
                account_id=_shown(account_id),
            )
    return report


def _shown(value: Any) -> Any:
    """A stored value as a report can carry it (JSON): text and whole numbers as they are,
    anything else a tamperer wrote (bytes, a float) as its repr."""
    return value if value is None or isinstance(value, str) or type(value) is int else repr(value)


def _bad_amount(amount: Any) -> bool:
    return type(amount) is not int or not 0 < amount <= MAX_AMOUNT


def _entry_problem(entry: Any) -> str | None:
    """What in an entry's own columns no write of ours could have stored, short of its hash."""
    if not isinstance(entry.created_at, datetime):
        return f"created_at {entry.created_at!r} is not a time"
    if entry.timeout_at is not None and not isinstance(entry.timeout_at, datetime):
        return f"timeout_at {entry.timeout_at!r} is not a time"
    return None


def _posting_problem(posting: Any) -> str:
    """What is wrong with a posting that names no balance or carries no valid amount."""
    if posting.direction not in (DEBIT, CREDIT):
        return f"direction {posting.direction!r} is neither debit nor credit"
    if posting.kind not in (POSTED, PENDING, RELEASE):
        return f"kind {posting.kind!r} is not posted, pending or release"
    return f"amount {posting.amount!r} is not a whole number of minor units from 1 to {MAX_AMOUNT}"


def _account_problem(account: Any) -> str | None:
    limit = account.overdraft_limit
    if limit is not None and (type(limit) is not int or not 0 <= limit <= MAX_AMOUNT):
        return f"account {_shown(account.id)}: overdraft_limit {limit!r} is not a whole number from 0 to {MAX_AMOUNT}"
    return None


def _limit_problem(account: Any, values: list[int]) -> str | None:
    if min(values) < 0:
        return "negative_balance"
    breach = limit_breach(account, values)
    return breach.code if breach is not None else None
