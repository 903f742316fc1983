"""A ledger writer for ``test_crash_safety``: it writes until it is killed with SIGKILL.

python tests/ledger/crash_writer.py write RUN SEED
    Write batches of transfers to CLEARHOUSE_DATABASE_URL until killed. Before each batch
    print ``{"begin": ...}``; after its commit, ``{"ack": ...}`` with the transfers that
    were created (and those refused); each line flushed before the next batch starts.

python tests/ledger/crash_writer.py zygote
    Import everything once, then fork writers (and ``clearhouse ledger verify`` runs) on
    request, so that twenty crashes do not pay twenty interpreter start-ups. Commands
    on stdin, one per line, each answered with one line on stdout:
      writer RUN SEED OUT -> pid    (the writer's stdout is the file OUT)
      cli OUT             -> pid    (``clearhouse ledger verify``; stdout and stderr to OUT)
      wait PID            -> status (exit code, or minus the signal that ended it)
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

from clearhouse.kit.db import make_engine, transact
from clearhouse.ledger import service
from clearhouse.ledger.service import EntryRequest

CURRENCY = "USD"
BATCH_SIZE = 200
# (id, type, debits_must_not_exceed_credits, credits_must_not_exceed_debits, funding)
ACCOUNTS = [
    ("crash-wallet-0", "liability", True, False, 50_000),
    ("crash-wallet-1", "liability", True, False, 20_000),
    ("crash-wallet-2", "liability", True, False, 5_000),
    ("crash-card-0", "asset", False, True, 30_000),
    ("crash-card-1", "asset", False, True, 10_000),
    ("crash-clearing", "asset", False, False, 0),
    ("crash-fees", "revenue", False, False, 0),
    ("crash-equity", "equity", False, False, 0),
]
UNLIMITED = ["crash-clearing", "crash-fees", "crash-equity"]


def open_accounts(engine) -> None:
    """Open and fund the accounts the writers use (run once, by the test, before any writer)."""

    def work(session) -> None:
        funding = []
        for account_id, type_, debit_limited, credit_limited, amount in ACCOUNTS:
            service.create_account(
                session,
                id=account_id,
                type=type_,
                currency=CURRENCY,
                code=account_id,
                debits_must_not_exceed_credits=debit_limited,
                credits_must_not_exceed_debits=credit_limited,
            )
            if debit_limited:
                funding.append(
                    EntryRequest.transfer("crash-equity", account_id, amount, CURRENCY, id=f"fund-{account_id}")
                )
            elif credit_limited:
                funding.append(
                    EntryRequest.transfer(account_id, "crash-equity", amount, CURRENCY, id=f"fund-{account_id}")
                )
        outcomes = service.create_transfers(session, funding, linked=True)
        assert all(o.status == "created" for o in outcomes), outcomes

    transact(engine, work)


def plan_batch(rng: random.Random, run: int, number: int) -> tuple[bool, list[EntryRequest]]:
    """One batch: linked ones are mostly valid (and sometimes carry one refused member, so the
    whole batch is refused); unlinked ones mix transfers that fit and ones that break limits."""
    ids = [account[0] for account in ACCOUNTS]
    linked = rng.random() < 0.3
    requests = []
    for i in range(BATCH_SIZE):
        transfer_id = f"crash-{run}-{number}-{i}"
        if linked:
            debit, credit = rng.sample(UNLIMITED, 2)
            amount = rng.randint(1, 1_000)
        else:
            debit, credit = rng.sample(ids, 2)
            amount = rng.randint(1, 5_000)
        pending = rng.random() < 0.1
        requests.append(EntryRequest.transfer(debit, credit, amount, CURRENCY, id=transfer_id, pending=pending))
    if linked and rng.random() < 0.3:
        # More than every wallet holds: insufficient funds, so nothing of this batch may be written.
        spoiler = requests[rng.randrange(BATCH_SIZE)]
        spoiler.postings[0].account_id = "crash-wallet-2"
        spoiler.postings[0].amount = spoiler.postings[1].amount = 10**12
    return linked, requests


def emit(message: dict) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def write_until_killed(run: int, seed: int) -> None:
    engine = make_engine(os.environ["CLEARHOUSE_DATABASE_URL"], pool_size=1)
    rng = random.Random(seed)
    number = 0
    while True:
        linked, requests = plan_batch(rng, run, number)
        emit({"begin": number, "linked": linked, "ids": [r.id for r in requests]})
        outcomes = transact(engine, lambda s, r=requests, lk=linked: service.create_transfers(s, r, linked=lk))
        created, refused = [], []
        for request, outcome in zip(requests, outcomes, strict=True):
            if outcome.status == "created":
                debit, credit = request.postings
                created.append([outcome.id, debit.account_id, credit.account_id, debit.amount, request.pending])
            else:
                refused.append(outcome.id)
        emit({"ack": number, "created": created, "refused": refused})
        number += 1
        # A short pause now and then, so that kills land between batches as well as inside them
        # (and the ledger stays small enough to verify twenty times in the time budget).
        time.sleep(rng.uniform(0, 0.03))


def _fork(out_path: str, child) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        child()
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:  # noqa: BLE001 - a child reports its crash in its own output
        import traceback

        traceback.print_exc()
        code = 3
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _run_cli() -> None:
    from clearhouse.cli import main

    sys.argv = ["clearhouse", "ledger", "verify"]
    main()


def zygote() -> None:
    import clearhouse.cli  # noqa: F401 - loaded once here, inherited by every fork

    for line in sys.stdin:
        command, *args = line.split()
        if command == "writer":
            run, seed, out = int(args[0]), int(args[1]), args[2]
            answer = _fork(out, lambda run=run, seed=seed: write_until_killed(run, seed))
        elif command == "cli":
            answer = _fork(args[0], _run_cli)
        elif command == "wait":
            _pid, status = os.waitpid(int(args[0]), 0)
            answer = os.waitstatus_to_exitcode(status)
        else:
            return
        print(answer, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "zygote":
        zygote()
    else:
        write_until_killed(int(sys.argv[2]), int(sys.argv[3]))
