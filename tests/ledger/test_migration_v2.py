"""Migration 0011 (ledger v2) keeps every entry, its legs, its hash and every balance.

A journal is written in the 0010 layout (entry rows plus posting rows, hashes from the
one canonical form), then migrated: plain debit-then-credit entries move onto their
transfer row, the rest stay posting rows, and ``verify`` still walks an unbroken chain.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from clearhouse.bench import PostgresServer
from clearhouse.kit import clock
from clearhouse.kit.db import make_engine, transact, upgrade
from clearhouse.ledger import service
from clearhouse.ledger.models import GENESIS_HASH
from clearhouse.ledger.verify import verify

CREATED = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
ACCOUNTS = ("acct_bank", "acct_merchant", "acct_fee", "acct_other")

# (id, pending, pending_id, resolution, legs as (account, direction, kind, amount))
LEGACY = [
    ("opening", False, None, None, [("acct_bank", "debit", "posted", 100_000),
                                    ("acct_other", "credit", "posted", 100_000)]),
    ("pay-1", False, None, None, [("acct_bank", "debit", "posted", 5_000),
                                  ("acct_merchant", "credit", "posted", 4_970),
                                  ("acct_fee", "credit", "posted", 30)]),
    # Credit first: stays as posting rows, since the row form is debit then credit.
    ("refund-1", False, None, None, [("acct_merchant", "credit", "posted", 200),
                                     ("acct_bank", "debit", "posted", 200)]),
    ("hold-1", True, None, None, [("acct_bank", "debit", "pending", 700),
                                  ("acct_merchant", "credit", "pending", 700)]),
    ("void-1", False, "hold-1", "void", [("acct_bank", "debit", "release", 700),
                                         ("acct_merchant", "credit", "release", 700)]),
    ("hold-2", True, None, None, [("acct_bank", "debit", "pending", 900),
                                  ("acct_merchant", "credit", "pending", 900)]),
    ("post-2", False, "hold-2", "post", [("acct_bank", "debit", "release", 900),
                                         ("acct_merchant", "credit", "release", 900),
                                         ("acct_bank", "debit", "posted", 900),
                                         ("acct_merchant", "credit", "posted", 900)]),
]
MOVED = {"opening", "hold-1", "void-1", "hold-2"}


@pytest.fixture
def legacy_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A database of its own, migrated only to 0010."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'legacy.db'}"
        return
    server = PostgresServer(os.environ["CLEARHOUSE_TEST_POSTGRES_URL"], "the tests' server")
    with server.fresh_database("legacy") as url:
        yield url


def write_legacy_journal(url: str) -> tuple[dict[str, list[int]], str]:
    """The journal in the 0010 layout, by hand; returns each account's balances and the head hash."""
    engine = make_engine(url, pool_size=1)
    sums = {a: [0, 0, 0, 0] for a in ACCOUNTS}
    slot = service._SLOT
    try:
        with engine.begin() as connection:
            for account in ACCOUNTS:
                connection.execute(
                    text("INSERT INTO ledger_accounts (id, type, currency, code, created_at) "
                         "VALUES (:id, 'asset', 'USD', 'legacy', :at)"),
                    {"id": account, "at": CREATED},
                )
            prev = GENESIS_HASH
            for seq, (entry_id, pending, pending_id, resolution, legs) in enumerate(LEGACY, start=1):
                rows = [(a, d, k, amount, "USD") for a, d, k, amount in legs]
                prev = service.chain_hash(prev, seq, entry_id, clock.rfc3339(CREATED), pending, pending_id,
                                          resolution, None, None, None, None, "{}", rows)
                connection.execute(
                    text("INSERT INTO ledger_transfers (seq, id, pending, pending_id, resolution, metadata_json, "
                         "created_at, hash) VALUES (:seq, :id, :pending, :pending_id, :resolution, '{}', :at, :hash)"),
                    {"seq": seq, "id": entry_id, "pending": pending, "pending_id": pending_id,
                     "resolution": resolution, "at": CREATED, "hash": prev},
                )
                for idx, (a, d, k, amount, currency) in enumerate(rows):
                    connection.execute(
                        text("INSERT INTO ledger_postings (seq, idx, account_id, direction, kind, amount, currency) "
                             "VALUES (:seq, :idx, :a, :d, :k, :amount, :c)"),
                        {"seq": seq, "idx": idx, "a": a, "d": d, "k": k, "amount": amount, "c": currency},
                    )
                    position, sign = slot[(d, k)]
                    sums[a][position] += sign * amount
            for account, (dp, cp, dpend, cpend) in sums.items():
                connection.execute(
                    text("UPDATE ledger_accounts SET debits_posted = :dp, credits_posted = :cp, "
                         "debits_pending = :dpend, credits_pending = :cpend WHERE id = :id"),
                    {"dp": dp, "cp": cp, "dpend": dpend, "cpend": cpend, "id": account},
                )
            connection.execute(text("UPDATE ledger_chain SET seq = :seq, hash = :hash WHERE id = 1"),
                               {"seq": len(LEGACY), "hash": prev})
    finally:
        engine.dispose()
    return sums, prev


def test_the_move_keeps_entries_hashes_and_balances(legacy_url: str) -> None:
    upgrade(legacy_url, "0010_reconciliation")
    sums, head = write_legacy_journal(legacy_url)
    balances_before = {a: service.balance_of("asset", *sums[a]) for a in ACCOUNTS}

    upgrade(legacy_url)
    engine = make_engine(legacy_url, pool_size=1)
    try:
        report = transact(engine, verify)
        assert report.ok, report.failures
        assert (report.entries_checked, report.postings_checked) == (7, 17)
        assert report.chain_head == {"seq": 7, "hash": head}
        with engine.connect() as connection:
            on_rows = set(connection.scalars(text("SELECT id FROM ledger_transfers WHERE kind IS NOT NULL")))
            posting_seqs = set(connection.scalars(text("SELECT DISTINCT seq FROM ledger_postings")))
            nums = list(connection.scalars(text("SELECT num FROM ledger_accounts ORDER BY num")))
        assert on_rows == MOVED
        assert posting_seqs == {2, 3, 7}
        assert nums == [1, 2, 3, 4]
        for seq, (entry_id, *_rest, legs) in enumerate(LEGACY, start=1):
            view = transact(engine, lambda s, i=entry_id: service.get_transfer(s, i))
            assert view["seq"] == seq
            assert [(p["account_id"], p["direction"], p["kind"], p["amount"]) for p in view["postings"]] == legs
        for account in ACCOUNTS:
            assert transact(engine, lambda s, a=account: service.account_balance(s, a)[1]) == balances_before[account]
            as_of = transact(engine, lambda s, a=account: service.account_balance(s, a, as_of=clock.now())[1])
            assert as_of == balances_before[account]
        lines, more = transact(engine, lambda s: service.account_entries(s, "acct_bank", limit=100))
        assert not more
        assert [(line.seq, line.idx, line.kind, line.amount) for line in lines] == [
            (1, 0, "posted", 100_000), (2, 0, "posted", 5_000), (3, 1, "posted", 200), (4, 0, "pending", 700),
            (5, 0, "release", 700), (6, 0, "pending", 900), (7, 0, "release", 900), (7, 2, "posted", 900),
        ]
        # New writes after the move continue the same chain.
        transact(engine, lambda s: service.create_transfer(
            s, service.EntryRequest.transfer("acct_fee", "acct_bank", 10, "USD", id="after-move")))
        assert transact(engine, verify).ok
    finally:
        engine.dispose()
