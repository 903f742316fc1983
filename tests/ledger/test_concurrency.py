"""Many writers on a few hot accounts: limits hold, nothing is lost, no database error escapes.

Every transfer is its own transaction through ``kit.db.transact``, the boundary the API and
the worker use. Deadlocks and serialization failures are the boundary's to retry; the
caller may only ever see a business outcome (created, exists, or a broken rule).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from clearhouse.kit.db import transact
from clearhouse.ledger import errors, service
from clearhouse.ledger.models import accounts as accounts_table
from clearhouse.ledger.models import chain as chain_table
from clearhouse.ledger.service import EntryRequest
from clearhouse.ledger.verify import verify

pytestmark = pytest.mark.slow

CURRENCY = "EUR"
# (id, type, debits_must_not_exceed_credits, credits_must_not_exceed_debits, overdraft, funding)
# Funding is a credit for the debit-limited accounts and a debit for the credit-limited ones.
HOT_ACCOUNTS = [
    ("hot-0", "liability", True, False, None, 20_000),
    ("hot-1", "liability", True, False, None, 20_000),
    ("hot-2", "liability", True, False, None, 10_000),
    ("hot-3", "liability", True, False, None, 5_000),
    ("hot-4", "liability", False, False, 4_000, 2_000),  # overdraft on the normal side: debit-limited
    ("hot-5", "asset", False, True, None, 20_000),
    ("hot-6", "asset", False, True, None, 10_000),
    ("hot-7", "asset", False, False, 3_000, 0),  # overdraft on the normal side: credit-limited
    ("hot-8", "equity", False, False, None, 0),  # the platform's clearing accounts: no limit
    ("hot-9", "revenue", False, False, None, 0),
]
DEBIT_LIMITED = ["hot-0", "hot-1", "hot-2", "hot-3", "hot-4"]
CREDIT_LIMITED = ["hot-5", "hot-6", "hot-7"]
BUSINESS_REFUSALS = {
    errors.InsufficientFunds.code,
    errors.ExceedsCreditLimit.code,
    errors.LINKED_EVENT_FAILED,
}


def open_hot_accounts(engine: Engine) -> dict[str, list[int]]:
    """Open and fund the hot accounts; returns their balances [debits_posted, credits_posted]."""
    balances = {spec[0]: [0, 0] for spec in HOT_ACCOUNTS}

    def work(session: Session) -> None:
        funding = []
        for account_id, type_, debit_limited, credit_limited, overdraft, amount in HOT_ACCOUNTS:
            service.create_account(
                session,
                id=account_id,
                type=type_,
                currency=CURRENCY,
                code=account_id,
                debits_must_not_exceed_credits=debit_limited,
                credits_must_not_exceed_debits=credit_limited,
                overdraft_limit=overdraft,
            )
            if not amount:
                continue
            if debit_limited or (overdraft is not None and type_ == "liability"):
                funding.append(EntryRequest.transfer("hot-8", account_id, amount, CURRENCY, id=f"fund-{account_id}"))
            else:
                funding.append(EntryRequest.transfer(account_id, "hot-8", amount, CURRENCY, id=f"fund-{account_id}"))
        outcomes = service.create_transfers(session, funding, linked=True)
        assert all(o.status == "created" for o in outcomes), outcomes
        for request in funding:
            debit, credit = request.postings
            balances[debit.account_id][0] += debit.amount
            balances[credit.account_id][1] += credit.amount

    transact(engine, work)
    return balances


def stored_state(engine: Engine) -> tuple[dict, int, object]:
    def read(session: Session) -> tuple[dict, int, object]:
        report = verify(session)  # first: it sets the transaction's snapshot on PostgreSQL
        rows = {row.id: row for row in session.execute(select(accounts_table))}
        head = session.execute(select(chain_table.c.seq)).scalar_one()
        return rows, head, report

    return transact(engine, read)


def assert_within_limits(row) -> None:
    """The limit rule, written out independently of the service."""
    limit = row.overdraft_limit or 0
    if row.debits_must_not_exceed_credits:
        assert row.debits_posted + row.debits_pending <= row.credits_posted + limit, row
    if row.credits_must_not_exceed_debits:
        assert row.credits_posted + row.credits_pending <= row.debits_posted + limit, row


@dataclass
class WriterLog:
    """What one thread saw: the transfers it was told were created, and every refusal."""

    created: list[tuple[str, str, int]] = field(default_factory=list)
    entries: int = 0
    refusals: Counter = field(default_factory=Counter)
    escaped: list[BaseException] = field(default_factory=list)


def run_writers(engine: Engine, threads: int, per_thread: int, seed: int) -> list[WriterLog]:
    ids = [spec[0] for spec in HOT_ACCOUNTS]
    logs = [WriterLog() for _ in range(threads)]
    start = threading.Barrier(threads)

    def writer(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        log = logs[number]
        start.wait()
        for _ in range(per_thread):
            # Mostly single transfers; one in ten is a linked pair through three accounts,
            # so writers lock overlapping sets of rows in different combinations.
            draw = rng.random()
            if draw < 0.1:
                a, b, c = rng.sample(ids, 3)
                requests = [
                    EntryRequest.transfer(a, b, rng.randint(1, 3_000), CURRENCY),
                    EntryRequest.transfer(b, c, rng.randint(1, 3_000), CURRENCY),
                ]
                linked = True
            else:
                a, b = rng.sample(ids, 2)
                if draw < 0.25:
                    # Limited accounts drift away from their limits under uniform traffic (their
                    # refused side stops moving), so push some money towards the limits on purpose.
                    a, b = rng.choice([("hot-8", rng.choice(CREDIT_LIMITED)), (rng.choice(DEBIT_LIMITED), "hot-9")])
                requests = [EntryRequest.transfer(a, b, rng.randint(1, 3_000), CURRENCY)]
                linked = False
            try:
                outcomes = transact(engine, lambda s, r=requests, lk=linked: service.create_transfers(s, r, linked=lk))
            except BaseException as error:  # noqa: BLE001 - anything escaping the boundary is the finding
                log.escaped.append(error)
                return
            for request, outcome in zip(requests, outcomes, strict=True):
                if outcome.status == "created":
                    debit, credit = request.postings
                    log.created.append((debit.account_id, credit.account_id, debit.amount))
                    log.entries += 1
                else:
                    log.refusals[outcome.code] += 1

    workers = [threading.Thread(target=writer, args=(n,), name=f"writer-{n}") for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=600)
    assert not any(worker.is_alive() for worker in workers), "a writer is stuck"
    return logs


class TestHotAccountsUnderConcurrentWriters:
    def test_concurrent_transfers_keep_limits_and_lose_nothing(self, backend: str, engine: Engine) -> None:
        """PostgreSQL: 8 threads x 2,000 transfers on 10 hot accounts; SQLite: 4 x 300."""
        threads, per_thread = (8, 2_000) if backend == "postgresql" else (4, 300)
        expected = open_hot_accounts(engine)
        _rows, head_before, _report = stored_state(engine)

        logs = run_writers(engine, threads, per_thread, seed=7)

        escaped = [error for log in logs for error in log.escaped]
        assert not escaped, f"{len(escaped)} errors reached a caller, first: {escaped[0]!r}"
        refusals = sum((log.refusals for log in logs), Counter())
        assert set(refusals) <= BUSINESS_REFUSALS, refusals
        # The limits were really in play, from both sides.
        assert refusals[errors.InsufficientFunds.code] > 0, refusals
        assert refusals[errors.ExceedsCreditLimit.code] > 0, refusals

        for log in logs:
            for debit, credit, amount in log.created:
                expected[debit][0] += amount
                expected[credit][1] += amount
        rows, head, report = stored_state(engine)
        assert report.ok, report.first_failure
        assert head == head_before + sum(log.entries for log in logs)
        assert sum(log.entries for log in logs) > threads * per_thread // 4
        for account_id, (debits, credits) in expected.items():
            row = rows[account_id]
            assert (row.debits_posted, row.credits_posted) == (debits, credits), account_id
            assert (row.debits_pending, row.credits_pending) == (0, 0)
            assert_within_limits(row)
        assert sum(r.debits_posted for r in rows.values()) == sum(r.credits_posted for r in rows.values())


class TestSameTransferIdFromManyThreads:
    """The unique transfer id makes idempotency safe under concurrency: no check-then-act."""

    def sizes(self, backend: str) -> tuple[int, int]:
        return (8, 200) if backend == "postgresql" else (4, 50)

    def race(self, engine: Engine, threads: int, requests_for) -> list[list[service.Outcome]]:
        """Every thread sends its version of request ``i`` at the same moment, for each ``i``."""
        rounds = len(requests_for(0))
        results: list[list] = [[None] * threads for _ in range(rounds)]
        barrier = threading.Barrier(threads)
        escaped: list[BaseException] = []

        def sender(number: int) -> None:
            for i, request in enumerate(requests_for(number)):
                barrier.wait()
                try:
                    # retry_integrity: how the API calls the ledger, so that losing the race on
                    # the unique id is retried and answered from the stored transfer.
                    (outcome,) = transact(
                        engine, lambda s, r=request: service.create_transfers(s, [r]), retry_integrity=True
                    )
                except BaseException as error:  # noqa: BLE001
                    escaped.append(error)
                    barrier.abort()
                    return
                results[i][number] = outcome

        workers = [threading.Thread(target=sender, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=600)
        assert not escaped, f"{len(escaped)} errors reached a caller, first: {escaped[0]!r}"
        return results

    def test_same_request_is_created_once_and_exists_for_the_rest(self, backend: str, engine: Engine) -> None:
        threads, count = self.sizes(backend)
        open_hot_accounts(engine)
        _rows, head_before, _report = stored_state(engine)

        def requests_for(_thread: int) -> list[EntryRequest]:
            return [EntryRequest.transfer("hot-8", "hot-9", i + 1, CURRENCY, id=f"dup-{i}") for i in range(count)]

        for i, outcomes in enumerate(self.race(engine, threads, requests_for)):
            statuses = Counter(o.status for o in outcomes)
            assert statuses == {"created": 1, "exists": threads - 1}, (i, outcomes)
        rows, head, report = stored_state(engine)
        assert report.ok, report.first_failure
        assert head == head_before + count
        assert rows["hot-9"].credits_posted == sum(range(1, count + 1))

    def test_same_id_with_different_amounts_keeps_only_the_winner(self, backend: str, engine: Engine) -> None:
        threads, count = self.sizes(backend)
        open_hot_accounts(engine)
        _rows, head_before, _report = stored_state(engine)

        def requests_for(thread: int) -> list[EntryRequest]:
            return [
                EntryRequest.transfer("hot-8", "hot-9", 100 * (i + 1) + thread, CURRENCY, id=f"clash-{i}")
                for i in range(count)
            ]

        winners = 0
        for i, outcomes in enumerate(self.race(engine, threads, requests_for)):
            statuses = Counter(o.status for o in outcomes)
            assert statuses["created"] == 1, (i, outcomes)
            assert {o.code for o in outcomes if o.status != "created"} == {errors.TransferExists.code}
            winner = next(n for n, o in enumerate(outcomes) if o.status == "created")
            winners += 100 * (i + 1) + winner
        rows, head, report = stored_state(engine)
        assert report.ok, report.first_failure
        assert head == head_before + count
        assert rows["hot-9"].credits_posted == winners


class TestPendingResolvedOnceUnderConcurrency:
    def test_racing_posts_and_voids_resolve_each_pending_once(self, backend: str, engine: Engine) -> None:
        threads, count = (8, 100) if backend == "postgresql" else (4, 30)
        expected = open_hot_accounts(engine)
        pending = [
            EntryRequest.transfer("hot-0", "hot-8", 10 + i, CURRENCY, id=f"hold-{i}", pending=True)
            for i in range(count)
        ]
        assert all(o.status == "created" for o in transact(engine, lambda s: service.create_transfers(s, pending)))

        results: list[list] = [[None] * threads for _ in range(count)]
        barrier = threading.Barrier(threads)
        escaped: list[BaseException] = []

        def resolver(number: int) -> None:
            for i in range(count):
                resolution = "post" if (i + number) % 2 else "void"
                request = EntryRequest(id=f"resolve-{i}-{number}", pending_id=f"hold-{i}", resolution=resolution)
                barrier.wait()
                try:
                    (outcome,) = transact(
                        engine, lambda s, r=request: service.create_transfers(s, [r]), retry_integrity=True
                    )
                except BaseException as error:  # noqa: BLE001
                    escaped.append(error)
                    barrier.abort()
                    return
                results[i][number] = (resolution, outcome)

        workers = [threading.Thread(target=resolver, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=600)
        assert not escaped, f"{len(escaped)} errors reached a caller, first: {escaped[0]!r}"

        for i, attempts in enumerate(results):
            won = [(resolution, o) for resolution, o in attempts if o.status == "created"]
            assert len(won) == 1, (i, attempts)
            resolution = won[0][0]
            already = {"post": errors.PendingAlreadyPosted.code, "void": errors.PendingAlreadyVoided.code}[resolution]
            assert {o.code for _r, o in attempts if o.status != "created"} == {already}
            if resolution == "post":
                expected["hot-0"][0] += 10 + i
                expected["hot-8"][1] += 10 + i
        rows, _head, report = stored_state(engine)
        assert report.ok, report.first_failure
        for account_id in ("hot-0", "hot-8"):
            row = rows[account_id]
            assert [row.debits_posted, row.credits_posted] == expected[account_id]
            assert (row.debits_pending, row.credits_pending) == (0, 0)


class TestVerifyWhileWriting:
    def test_verify_reports_ok_while_transfers_are_committed(self, engine: Engine) -> None:
        """``ledger verify`` (CLI and ``/v1/ledger/verify``) runs on a live ledger, so it must
        judge one consistent snapshot, not a mix of before and after concurrent commits."""
        open_hot_accounts(engine)
        stop = threading.Event()
        escaped: list[BaseException] = []

        def writer(number: int) -> None:
            rng = random.Random(number)
            try:
                while not stop.is_set():
                    batch = [EntryRequest.transfer("hot-8", "hot-9", rng.randint(1, 100), CURRENCY) for _ in range(20)]
                    transact(engine, lambda s, b=batch: service.create_transfers(s, b))
            except BaseException as error:  # noqa: BLE001
                escaped.append(error)

        workers = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
        for worker in workers:
            worker.start()
        failures = []
        _rows, head_before, _report = stored_state(engine)
        try:
            # At least 30 verifies, and on until the writers have written (a loaded machine may
            # hand them little time during the first 30), for 30 s at most.
            deadline, verifies = time.monotonic() + 30, 0
            while verifies < 30 or (stored_state(engine)[1] <= head_before + 100 and time.monotonic() < deadline):
                report = transact(engine, verify)
                verifies += 1
                if not report.ok:
                    failures.append(report.first_failure)
                # SQLite's verify holds the database lock; without a gap its writers would starve.
                time.sleep(0.01)
        finally:
            stop.set()
            for worker in workers:
                worker.join(timeout=60)
        assert not escaped, escaped[0]
        _rows, head_after, final = stored_state(engine)
        assert final.ok, final.first_failure  # the ledger itself is sound
        assert head_after > head_before + 100, f"the writers hardly wrote while verify ran: {head_after - head_before}"
        assert not failures, f"{len(failures)} of {verifies} verifies failed during writes, first: {failures[0]}"


class TestClosingWhileWriting:
    def test_an_account_closes_only_when_empty_and_takes_nothing_after(self, backend: str, engine: Engine) -> None:
        """Writers move money into an account and out again, each leg its own transaction, while
        another thread keeps trying to close it. The close wins only at a moment the account is
        empty, and no leg lands after it: the closed account holds nothing, and every refusal a
        writer meets is a business answer (``account_closed``), never a database error."""
        writers, rounds = (6, 40) if backend == "postgresql" else (3, 25)
        open_hot_accounts(engine)
        transact(engine, lambda s: service.create_account(s, type="liability", currency=CURRENCY, code="closing",
                                                         id="closing"))
        closed = threading.Event()
        escaped: list[BaseException] = []
        refused: Counter[str] = Counter()
        legs_after_close = []

        def one(request: EntryRequest) -> str:
            (outcome,) = transact(engine, lambda s: service.create_transfers(s, [request]), retry_integrity=True)
            return outcome.status if outcome.status == "created" else outcome.code

        def writer(number: int) -> None:
            try:
                for i in range(rounds):
                    amount = 1 + (number * rounds + i) % 97
                    went_in = one(EntryRequest.transfer("hot-8", "closing", amount, CURRENCY, id=f"in-{number}-{i}"))
                    if went_in != "created":
                        refused[went_in] += 1
                        continue
                    if closed.is_set():
                        legs_after_close.append(f"in-{number}-{i}")
                    # Out again; while the money is in, the account cannot be closed, so this never meets a close.
                    assert one(EntryRequest.transfer("closing", "hot-8", amount, CURRENCY,
                                                     id=f"out-{number}-{i}")) == "created"
            except BaseException as error:  # noqa: BLE001
                escaped.append(error)

        def closer() -> None:
            try:
                while not closed.is_set():
                    try:
                        transact(engine, lambda s: service.close_account(s, "closing"))
                        closed.set()
                    except errors.AccountNotEmpty:
                        time.sleep(0.002)
            except BaseException as error:  # noqa: BLE001
                escaped.append(error)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
        threads.append(threading.Thread(target=closer))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        assert not escaped, f"{len(escaped)} errors reached a caller, first: {escaped[0]!r}"
        assert closed.is_set()
        assert set(refused) <= {errors.AccountClosed.code}, refused
        rows, _head, report = stored_state(engine)
        assert report.ok, report.first_failure
        row = rows["closing"]
        assert row.closed
        assert (row.debits_posted, row.debits_pending, row.credits_pending) == (row.credits_posted, 0, 0)
        assert not legs_after_close, legs_after_close
