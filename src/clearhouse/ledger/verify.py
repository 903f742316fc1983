"""Proof that the ledger is whole: the hash chain, zero-sum, limits, balances = postings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from clearhouse.kit.db import read_snapshot
from clearhouse.kit.verification import Findings
from clearhouse.ledger import repository
from clearhouse.ledger.models import GENESIS_HASH
from clearhouse.ledger.service import _SLOT, entry_hash, limit_breach


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
    account's running balances must equal the sums of its postings.
    """
    # Accounts, journal and chain head are read by several statements: one snapshot, or
    # a write committing in between would look like a broken ledger.
    read_snapshot(session)
    report = Report()
    accounts = {row.id: row for row in repository.all_accounts(session)}
    sums = {account_id: [0, 0, 0, 0] for account_id in accounts}
    prev = GENESIS_HASH
    expected_seq = 1
    for entry, rows in repository.journal(session):
        if entry is None:
            report.fail("orphan_postings", "postings without an entry", seq=rows[0].seq)
            continue
        where = {"seq": entry.seq, "transfer_id": entry.id}
        report.entries_checked += 1
        report.postings_checked += len(rows)
        if entry.seq != expected_seq:
            report.fail("chain_gap", f"expected entry {expected_seq}, found {entry.seq}", **where)
        expected_seq = entry.seq + 1
        if entry_hash(prev, entry, rows) != entry.hash:
            report.fail("hash_mismatch", "the entry's content or predecessor does not match its hash", **where)
        prev = entry.hash
        if len(rows) < 2:
            report.fail("too_few_postings", "an entry has at least two postings", **where)
        net: dict[tuple[str, str], int] = {}
        touched = set()
        for posting in rows:
            account = accounts.get(posting.account_id)
            if account is None:
                report.fail("unknown_account", f"posting to missing account {posting.account_id}", **where)
                continue
            if account.currency != posting.currency:
                report.fail("currency_mismatch", f"{posting.currency} posting on {account.id}", **where)
            sign = 1 if posting.direction == "debit" else -1
            key = (posting.currency, posting.kind)
            net[key] = net.get(key, 0) + sign * posting.amount
            slot, slot_sign = _SLOT[(posting.direction, posting.kind)]
            sums[account.id][slot] += slot_sign * posting.amount
            touched.add(account.id)
        for (currency, kind), total in net.items():
            if total:
                report.fail("not_balanced", f"{kind} {currency} debits and credits differ by {total}", **where)
        for account_id in touched:
            problem = _limit_problem(accounts[account_id], sums[account_id])
            if problem:
                report.fail(problem, f"account {account_id} breaks its limit", account_id=account_id, **where)
    stray_entries, stray_postings = repository.rows_before_the_chain(session)
    if stray_entries or stray_postings:
        report.fail("outside_chain", f"{stray_entries} entries and {stray_postings} postings at seq 0 or below")
    head_seq, head_hash = repository.chain_head(session)
    report.chain_head = {"seq": head_seq, "hash": head_hash}
    if (head_seq, head_hash) != (expected_seq - 1, prev):
        report.fail("chain_head", f"head says entry {head_seq}, the journal ends at {expected_seq - 1}")
    for account_id, account in accounts.items():
        report.accounts_checked += 1
        stored = [account.debits_posted, account.credits_posted, account.debits_pending, account.credits_pending]
        if stored != sums[account_id]:
            report.fail(
                "balance_mismatch",
                f"stored balances {stored} differ from the sum of postings {sums[account_id]}",
                account_id=account_id,
            )
    return report


def _limit_problem(account: Any, values: list[int]) -> str | None:
    if min(values) < 0:
        return "negative_balance"
    breach = limit_breach(account, values)
    return breach.code if breach is not None else None
