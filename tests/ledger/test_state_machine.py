"""Random sequences of ledger operations never break the books.

A hypothesis state machine drives ``ledger.service`` with accounts of every type and
limit, plain and multi-leg entries (some unbalanced or in the wrong currency), pending
transfers with and without a timeout, posts (full and partial) and voids, linked and
unlinked batches with invalid members, and replays of existing ids. A pure-Python model
of the rules predicts every outcome and every balance; after each step the stored
ledger must equal the model, balance per currency, respect every limit and pass
``verify``.
"""

from __future__ import annotations

import copy
import itertools
import shutil
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from clearhouse.kit import clock
from clearhouse.kit.db import make_engine, transact
from clearhouse.ledger import errors, service
from clearhouse.ledger.models import accounts as accounts_table
from clearhouse.ledger.models import chain as chain_table
from clearhouse.ledger.models import entries as entries_table
from clearhouse.ledger.service import EntryRequest, PostingRequest
from clearhouse.ledger.verify import verify
from tests.conftest import reset_postgres

# The model's own copies of the rules' constants, so a change in the service shows here.
MAX_AMOUNT = 2**63 - 1
CURRENCIES = ("USD", "EUR", "JPY")
ACCOUNT_TYPES = ("asset", "liability", "equity", "revenue", "expense")
DEBIT_NORMAL = {"asset", "expense"}
START = datetime(2030, 1, 1, tzinfo=UTC)

settings.register_profile(
    "ledger-state-machine",
    max_examples=30,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,  # the same programs on every run, so CI is reproducible
    database=None,  # nothing written under .hypothesis/
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
STATE_MACHINE_SETTINGS = settings.get_profile("ledger-state-machine")


# ---------------------------------------------------------------- the model


class Rejected(Exception):
    """The model's prediction that the service refuses a request, with the codes it may give."""

    def __init__(self, *codes: str):
        super().__init__(", ".join(codes))
        self.codes = frozenset(codes)


@dataclass
class ModelAccount:
    id: str
    type: str
    currency: str
    debits_must_not_exceed_credits: bool
    credits_must_not_exceed_debits: bool
    overdraft_limit: int | None
    closed: bool = False
    # debits_posted, credits_posted, debits_pending, credits_pending
    balances: list[int] = field(default_factory=lambda: [0, 0, 0, 0])

    def breach(self, values: list[int]) -> str | None:
        debits_posted, credits_posted, debits_pending, credits_pending = values
        limit = self.overdraft_limit or 0
        if self.debits_must_not_exceed_credits and debits_posted + debits_pending > credits_posted + limit:
            return errors.InsufficientFunds.code
        if self.credits_must_not_exceed_debits and credits_posted + credits_pending > debits_posted + limit:
            return errors.ExceedsCreditLimit.code
        if max(values) > MAX_AMOUNT:
            return errors.BalanceOverflow.code
        return None


@dataclass
class ModelEntry:
    request: EntryRequest  # as the client sent it, id filled in
    pending: bool = False
    reserved: list[tuple[str, str, int, str]] = field(default_factory=list)  # a pending entry's postings
    timeout_at: datetime | None = None
    posted_amount: int | None = None  # a post resolution: how much it moved


@dataclass
class Expected:
    status: str  # created | exists | failed
    codes: frozenset[str] = frozenset()


@dataclass
class Plan:
    """What the model expects a batch to do, and what to record once the service has done it."""

    expected: list[Expected]
    created: list[tuple[int, ModelEntry]]
    balances: dict[str, list[int]]
    resolutions: dict[str, str]


# Which balance a posting moves, and by which sign (the model's own table).
SLOT = {
    ("debit", "posted"): (0, 1),
    ("credit", "posted"): (1, 1),
    ("debit", "pending"): (2, 1),
    ("credit", "pending"): (3, 1),
    ("debit", "release"): (2, -1),
    ("credit", "release"): (3, -1),
}


def valid_amount(amount: object) -> bool:
    return type(amount) is int and 0 < amount <= MAX_AMOUNT


def largest_remainder(total: int, weights: list[int]) -> list[int]:
    """Split ``total`` in proportion to ``weights``; leftover units go to the largest remainders,
    ties to the earlier weight."""
    weight_sum = sum(weights)
    parts = [total * w // weight_sum for w in weights]
    remainders = [total * w % weight_sum for w in weights]
    for i in sorted(range(len(weights)), key=lambda i: (-remainders[i], i))[: total - sum(parts)]:
        parts[i] += 1
    return parts


def posting_tuples(request: EntryRequest) -> list[tuple[str, str, int, str]]:
    return [(p.account_id, p.direction, p.amount, p.currency) for p in request.postings]


def same_request(a: EntryRequest, b: EntryRequest) -> bool:
    """Two requests in one batch with one id are the same only if every field is equal."""
    return (
        posting_tuples(a) == posting_tuples(b)
        and (a.pending, a.timeout_seconds, a.pending_id, a.resolution, a.amount)
        == (b.pending, b.timeout_seconds, b.pending_id, b.resolution, b.amount)
        and (a.code, a.reference, a.metadata or {}) == (b.code, b.reference, b.metadata or {})
    )


class LedgerModel:
    def __init__(self) -> None:
        self.accounts: dict[str, ModelAccount] = {}
        self.entries: dict[str, ModelEntry] = {}
        self.resolutions: dict[str, str] = {}  # pending id -> "post" | "void"
        self.now = START

    # -- replays

    def matches_stored(self, request: EntryRequest, entry: ModelEntry) -> bool:
        """A replay of a stored id is accepted if it asks for the same effect."""
        stored = entry.request
        if (
            request.code,
            request.reference,
            request.pending_id,
            request.resolution,
            request.metadata or {},
        ) != (
            stored.code,
            stored.reference,
            stored.pending_id,
            stored.resolution,
            stored.metadata or {},
        ):
            return False
        if stored.pending_id is None:
            return (request.pending, request.timeout_seconds) == (
                stored.pending,
                stored.timeout_seconds,
            ) and posting_tuples(request) == posting_tuples(stored)
        if stored.resolution == "void":
            return request.amount is None
        pending_total = sum(m for _a, d, m, _c in self.entries[stored.pending_id].reserved if d == "debit")
        return entry.posted_amount == (request.amount if request.amount is not None else pending_total)

    # -- one batch

    def plan(self, requests: list[EntryRequest], linked: bool) -> Plan:
        balances = {key: list(account.balances) for key, account in self.accounts.items()}
        in_batch: dict[str, ModelEntry] = {}
        resolved_in_batch: dict[str, str] = {}
        expected: list[Expected] = []
        created: list[tuple[int, ModelEntry]] = []
        for index, request in enumerate(requests):
            try:
                if request.id is not None and (request.id in in_batch or request.id in self.entries):
                    earlier = in_batch.get(request.id)
                    same = (
                        same_request(request, earlier.request)
                        if earlier is not None
                        else self.matches_stored(request, self.entries[request.id])
                    )
                    if not same:
                        raise Rejected(errors.TransferExists.code)
                    expected.append(Expected("exists"))
                    continue
                if request.pending_id is None:
                    entry, rows = self.new_entry(request)
                else:
                    entry, rows = self.resolution(request, in_batch, resolved_in_batch)
                self.apply(rows, balances, new_entry=request.pending_id is None)
            except Rejected as rejected:
                expected.append(Expected("failed", rejected.codes))
                if linked:
                    failed_at = index
                    return Plan(
                        [
                            expected[-1]
                            if i == failed_at
                            else Expected("failed", frozenset({errors.LINKED_EVENT_FAILED}))
                            for i in range(len(requests))
                        ],
                        [],
                        self.snapshot_balances(),
                        dict(self.resolutions),
                    )
                continue
            if request.id is not None:
                in_batch[request.id] = entry
            if request.pending_id is not None:
                resolved_in_batch[request.pending_id] = request.resolution or ""
            created.append((index, entry))
            expected.append(Expected("created"))
        resolutions = dict(self.resolutions)
        resolutions.update(resolved_in_batch)
        return Plan(expected, created, balances, resolutions)

    def snapshot_balances(self) -> dict[str, list[int]]:
        return {key: list(account.balances) for key, account in self.accounts.items()}

    def commit(self, plan: Plan, ids: list[str]) -> None:
        for index, entry in plan.created:
            entry.request.id = ids[index]
            self.entries[ids[index]] = entry
        for key, values in plan.balances.items():
            self.accounts[key].balances = values
        self.resolutions = plan.resolutions

    def new_entry(self, request: EntryRequest) -> tuple[ModelEntry, list[tuple]]:
        postings = request.postings
        if len(postings) < 2:
            raise Rejected(errors.TooFewPostings.code)
        if request.timeout_seconds is not None and not (request.pending and request.timeout_seconds > 0):
            raise Rejected(errors.ValidationFailed.code)
        net: dict[str, int] = {}
        for posting in postings:
            if not valid_amount(posting.amount):
                raise Rejected(errors.InvalidAmount.code)
            sign = 1 if posting.direction == "debit" else -1
            net[posting.currency] = net.get(posting.currency, 0) + sign * posting.amount
        if any(net.values()):
            raise Rejected(errors.EntryNotBalanced.code)
        if len(postings) == 2 and postings[0].account_id == postings[1].account_id:
            raise Rejected(errors.AccountsMustDiffer.code)
        kind = "pending" if request.pending else "posted"
        rows = [(a, d, kind, m, c) for a, d, m, c in posting_tuples(request)]
        entry = ModelEntry(copy.deepcopy(request), pending=request.pending)
        if request.pending:
            entry.reserved = posting_tuples(request)
            if request.timeout_seconds:
                entry.timeout_at = self.now + timedelta(seconds=request.timeout_seconds)
        return entry, rows

    def resolution(
        self,
        request: EntryRequest,
        in_batch: dict[str, ModelEntry],
        resolved_in_batch: dict[str, str],
    ) -> tuple[ModelEntry, list[tuple]]:
        pending_id = request.pending_id
        assert pending_id is not None
        if request.resolution not in ("post", "void"):
            raise Rejected(errors.ValidationFailed.code)
        pending = self.entries.get(pending_id) or in_batch.get(pending_id)
        if pending is None:
            raise Rejected(errors.PendingTransferNotFound.code)
        if not pending.pending:
            raise Rejected(errors.NotPending.code)
        done = self.resolutions.get(pending_id) or resolved_in_batch.get(pending_id)
        if done == "post":
            raise Rejected(errors.PendingAlreadyPosted.code)
        if done == "void":
            raise Rejected(errors.PendingAlreadyVoided.code)
        release = [(a, d, "release", m, c) for a, d, m, c in pending.reserved]
        entry = ModelEntry(copy.deepcopy(request))
        if request.resolution == "void":
            if request.amount is not None:
                raise Rejected(errors.ValidationFailed.code)
            return entry, release
        if pending.timeout_at is not None and pending.timeout_at <= self.now:
            raise Rejected(errors.PendingExpired.code)
        debits = [(a, m, c) for a, d, m, c in pending.reserved if d == "debit"]
        credits = [(a, m, c) for a, d, m, c in pending.reserved if d == "credit"]
        total = sum(m for _a, m, _c in debits)
        if request.amount is not None and len({c for _a, _d, _m, c in pending.reserved}) != 1:
            raise Rejected(errors.PartialPostMultiCurrency.code)  # no one number is its amount
        if request.amount is None or request.amount == total:
            entry.posted_amount = total
            return entry, release + [(a, d, "posted", m, c) for a, d, m, c in pending.reserved]
        if not valid_amount(request.amount):
            raise Rejected(errors.InvalidAmount.code)
        if request.amount > total:
            raise Rejected(errors.AmountExceedsPending.code)
        rows = list(release)
        for side, direction in ((debits, "debit"), (credits, "credit")):
            parts = largest_remainder(request.amount, [m for _a, m, _c in side])
            rows.extend((a, direction, "posted", part, c) for (a, _m, c), part in zip(side, parts, strict=True) if part)
        entry.posted_amount = request.amount
        return entry, rows

    def apply(self, rows: list[tuple], balances: dict[str, list[int]], *, new_entry: bool) -> None:
        touched: dict[str, list[int]] = {}
        # ledger.md: every posting is looked at first, then one rule is reported, in this order
        # (an unknown account, a currency mismatch, a closed account), whatever the postings' order.
        broken = set()
        for account_id, _direction, _kind, _amount, currency in rows:
            account = self.accounts.get(account_id)
            if account is None:
                broken.add(errors.AccountNotFound.code)
            elif account.currency != currency:
                broken.add(errors.CurrencyMismatch.code)
            elif new_entry and account.closed:
                broken.add(errors.AccountClosed.code)
        for code in (errors.AccountNotFound.code, errors.CurrencyMismatch.code, errors.AccountClosed.code):
            if code in broken:
                raise Rejected(code)
        for account_id, direction, kind, amount, _currency in rows:
            values = touched.setdefault(account_id, list(balances[account_id]))
            slot, sign = SLOT[(direction, kind)]
            values[slot] += sign * amount
        # Which of several broken limits is reported first is not a rule: any of them will do.
        breaches = {code for key, values in touched.items() if (code := self.accounts[key].breach(values))}
        if breaches:
            raise Rejected(*breaches)
        balances.update(touched)


# ---------------------------------------------------------------- strategies

small_amounts = st.integers(1, 300)
amounts = st.one_of(
    *[small_amounts] * 5,
    st.integers(1, 5_000),
    # Two invalid amounts, and one that overflows any balance it meets a second time.
    st.sampled_from([0, -7, MAX_AMOUNT]),
)
# Equal legs make ties in a partial post's allocation, where rounding rules show.
leg_amounts = st.one_of(st.integers(1, 400), st.sampled_from([60, 100, 100, 250]))
timeouts = st.sampled_from([None, None, 1, 30, 120])
account_specs = st.tuples(
    st.sampled_from(ACCOUNT_TYPES),
    st.sampled_from(CURRENCIES),
    st.sampled_from(["none", "none", "debits_must_not_exceed_credits", "credits_must_not_exceed_debits"]),
    st.one_of(st.none(), st.none(), st.integers(0, 2_000)),
)


# ---------------------------------------------------------------- the machine


class LedgerStateMachine(RuleBasedStateMachine):
    """One example: a fresh database, a frozen clock, and a model that must agree with both."""

    def __init__(self, fresh_database: Callable[[], tuple[Engine, Callable[[], None]]]):
        super().__init__()
        self.engine, self._drop_database = fresh_database()
        self._stack = ExitStack()
        self.clock = self._stack.enter_context(clock.frozen(START))
        self.model = LedgerModel()
        self.ids = itertools.count(1)

    def teardown(self) -> None:
        self._stack.close()
        self._drop_database()

    # -- helpers

    def new_id(self, prefix: str = "tr") -> str:
        return f"{prefix}-{next(self.ids)}"

    def pick_account(
        self,
        data: st.DataObject,
        currency: str | None = None,
        avoid: str | None = None,
        *,
        exact: bool = False,
    ) -> str:
        """Mostly an open account of ``currency`` other than ``avoid``; now and then (never if
        ``exact``) any account."""
        candidates = sorted(
            key
            for key, a in self.model.accounts.items()
            if (currency is None or a.currency == currency) and key != avoid and not a.closed
        )
        if not candidates or (not exact and data.draw(st.integers(0, 7), label="any") == 0):
            candidates = sorted(self.model.accounts)
        return data.draw(st.sampled_from(candidates), label="account")

    def entry_id(self, data: st.DataObject) -> str | None:
        return self.new_id() if data.draw(st.integers(0, 3), label="client id") else None

    def gen_transfer(
        self,
        data: st.DataObject,
        *,
        pending: bool | None = None,
        amount: st.SearchStrategy[int] = amounts,
        exact: bool = False,
    ) -> EntryRequest:
        debit = self.pick_account(data, exact=exact)
        currency = self.model.accounts[debit].currency
        credit = self.pick_account(data, currency, avoid=debit, exact=exact)
        if not exact and data.draw(st.integers(0, 7), label="other currency") == 0:
            currency = data.draw(st.sampled_from(CURRENCIES), label="currency")
        if pending is None:
            pending = data.draw(st.booleans(), label="pending")
        return EntryRequest.transfer(
            debit,
            credit,
            data.draw(amount, label="amount"),
            currency,
            id=self.entry_id(data),
            pending=pending,
            timeout_seconds=data.draw(timeouts, label="timeout") if pending else None,
            reference=data.draw(st.sampled_from([None, "invoice-1", "invoice-2"]), label="reference"),
        )

    def gen_multi_leg(self, data: st.DataObject, shape: str, *, exact: bool = False) -> EntryRequest:
        """A journal entry of several legs: ``balanced``, ``unbalanced``, ``two_currencies``
        (balanced in each) or ``mismatch`` (balanced, but a leg's currency is not its account's)."""
        groups = 2 if shape == "two_currencies" else 1
        currencies = data.draw(st.permutations(CURRENCIES), label="currencies")[:groups]
        postings: list[PostingRequest] = []
        for currency in currencies:
            debit_amounts = data.draw(st.lists(leg_amounts, min_size=1, max_size=3), label="debits")
            credit_count = data.draw(st.integers(1, 3), label="credit legs")
            total = sum(debit_amounts)
            cuts = (
                sorted(
                    data.draw(
                        st.lists(
                            st.integers(1, max(1, total - 1)),
                            min_size=credit_count - 1,
                            max_size=credit_count - 1,
                            unique=True,
                        ),
                        label="cuts",
                    )
                )
                if total > credit_count
                else []
            )
            credit_amounts = [b - a for a, b in itertools.pairwise([0, *cuts, total])]
            for amount in debit_amounts:
                postings.append(
                    PostingRequest(self.pick_account(data, currency, exact=exact), "debit", amount, currency)
                )
            for amount in credit_amounts:
                postings.append(
                    PostingRequest(self.pick_account(data, currency, exact=exact), "credit", amount, currency)
                )
        if shape == "unbalanced":
            leg = data.draw(st.integers(0, len(postings) - 1), label="unbalanced leg")
            postings[leg].amount += data.draw(st.sampled_from([1, -1]) if postings[leg].amount > 1 else st.just(1))
        if shape == "mismatch":
            leg = data.draw(st.integers(0, len(postings) - 1), label="mismatched leg")
            own = postings[leg].currency
            others = sorted(k for k, a in self.model.accounts.items() if a.currency != own)
            if others:
                postings[leg].account_id = data.draw(st.sampled_from(others), label="foreign account")
        pending = data.draw(st.booleans(), label="pending")
        return EntryRequest(
            postings=postings,
            id=self.entry_id(data),
            pending=pending,
            timeout_seconds=data.draw(timeouts, label="timeout") if pending else None,
            code="journal",
        )

    def gen_resolution(
        self,
        data: st.DataObject,
        in_batch_pending: dict[str, EntryRequest] | None = None,
        *,
        likely_valid: bool = False,
    ) -> EntryRequest:
        """A post or void: mostly of a pending transfer still open, sometimes of one already
        resolved, of a transfer that is not pending, or of no transfer at all."""
        reserved = {
            key: [m for _a, d, m, _c in e.reserved if d == "debit"]
            for key, e in self.model.entries.items()
            if e.pending
        }
        for key, request in (in_batch_pending or {}).items():
            reserved[key] = [p.amount for p in request.postings if p.direction == "debit"]
        open_ids = [key for key in reserved if key not in self.model.resolutions]
        other_ids = [k for k, e in self.model.entries.items() if not e.pending]
        choice = data.draw(st.integers(0 if not likely_valid else 4, 9), label="which pending")
        if open_ids and choice >= 4:
            pending_id = data.draw(st.sampled_from(open_ids), label="open pending id")
        elif reserved and choice >= 2:
            pending_id = data.draw(st.sampled_from(list(reserved)), label="pending id")
        elif other_ids and choice == 1:
            pending_id = data.draw(st.sampled_from(other_ids), label="not pending")
        else:
            pending_id = "tr-does-not-exist"
        amounts_reserved = reserved.get(pending_id, [])
        total = sum(a for a in amounts_reserved if type(a) is int) or 100
        hows = ["void", "post", "post", "post_exact", "partial"]
        how = data.draw(
            st.sampled_from(hows if likely_valid else [*hows, "over", "void_amount"]),
            label="resolution",
        )
        resolution, amount = {
            "void": ("void", None),
            "void_amount": ("void", 1),
            "post": ("post", None),
            "post_exact": ("post", total),
            "partial": (
                "post",
                data.draw(st.integers(1, max(1, total - 1)), label="partial amount"),
            ),
            "over": ("post", total + 1),
        }[how]
        return EntryRequest(id=self.entry_id(data), pending_id=pending_id, resolution=resolution, amount=amount)

    def gen_replay(self, data: st.DataObject, *, same: bool) -> EntryRequest:
        entry_id = data.draw(st.sampled_from(list(self.model.entries)), label="replayed id")
        request = copy.deepcopy(self.model.entries[entry_id].request)
        if not same:
            change = data.draw(st.sampled_from(["reference", "amount", "code"]), label="changed field")
            if change == "amount" and request.postings:
                request.postings[0].amount += 1
            elif change == "code":
                request.code = (request.code or "") + "-other"
            else:
                request.reference = (request.reference or "") + "-other"
        return request

    def gen_invalid(self, data: st.DataObject) -> EntryRequest:
        """A request the ledger must refuse whatever state it is in."""
        kind = data.draw(
            st.sampled_from(["zero", "unbalanced", "missing_account", "same_account", "one_leg"]),
            label="invalid kind",
        )
        account = self.pick_account(data)
        other = self.pick_account(data, self.model.accounts[account].currency, avoid=account)
        currency = self.model.accounts[account].currency
        if kind == "zero":
            return EntryRequest.transfer(account, other, 0, currency, id=self.new_id())
        if kind == "missing_account":
            return EntryRequest.transfer(account, "acct-missing", 5, currency, id=self.new_id())
        if kind == "same_account":
            return EntryRequest.transfer(account, account, 5, currency, id=self.new_id())
        if kind == "one_leg":
            return EntryRequest(postings=[PostingRequest(account, "debit", 5, currency)], id=self.new_id())
        return EntryRequest(
            postings=[
                PostingRequest(account, "debit", 5, currency),
                PostingRequest(other, "credit", 4, currency),
            ],
            id=self.new_id(),
        )

    def gen_batch_member(
        self,
        data: st.DataObject,
        in_batch_pending: dict[str, EntryRequest],
        *,
        likely_valid: bool = False,
    ) -> EntryRequest:
        """A batch member; ``likely_valid`` leaves out the kinds that are refused on purpose, so
        that linked batches succeed often enough to matter."""
        kinds = ["transfer", "transfer", "pending", "multi_leg", "resolution", "replay"]
        kind = data.draw(st.sampled_from(kinds + ([] if likely_valid else ["invalid"])), label="kind")
        if kind in ("transfer", "pending"):
            request = self.gen_transfer(
                data,
                pending=kind == "pending",
                amount=small_amounts if likely_valid else amounts,
                exact=likely_valid,
            )
            if request.pending and request.id is not None:
                in_batch_pending[request.id] = request
            return request
        if kind == "multi_leg":
            shape = data.draw(st.sampled_from(["balanced", "two_currencies"]), label="shape")
            return self.gen_multi_leg(data, shape, exact=likely_valid)
        if kind == "resolution":
            open_pending = [k for k, e in self.model.entries.items() if e.pending]
            if likely_valid and not (in_batch_pending or set(open_pending) - set(self.model.resolutions)):
                return self.gen_transfer(data, amount=small_amounts, exact=True)
            return self.gen_resolution(data, in_batch_pending, likely_valid=likely_valid)
        if kind == "replay" and self.model.entries:
            same = likely_valid or data.draw(st.booleans(), label="same fields")
            return self.gen_replay(data, same=same)
        return self.gen_invalid(data)

    # -- the one path every write takes: model plan, real call, comparison

    def snapshot(self) -> tuple:
        def read(session: Session) -> tuple:
            rows = session.execute(select(accounts_table).order_by(accounts_table.c.id)).all()
            head = session.execute(select(chain_table.c.seq, chain_table.c.hash)).one()
            return tuple(tuple(r) for r in rows), tuple(head)

        return transact(self.engine, read)

    def submit(self, requests: list[EntryRequest], *, linked: bool = False) -> list[service.Outcome]:
        plan = self.model.plan(requests, linked)
        before = self.snapshot()
        sent = copy.deepcopy(requests)  # the model keeps its own copies
        outcomes = transact(self.engine, lambda s: service.create_transfers(s, sent, linked=linked))
        assert len(outcomes) == len(requests)
        for index, (request, expected, outcome) in enumerate(zip(requests, plan.expected, outcomes, strict=True)):
            assert outcome.index == index
            got = (outcome.status, outcome.code)
            assert outcome.status == expected.status, f"request {index} {request}: expected {expected}, got {got}"
            if expected.codes:
                assert outcome.code in expected.codes, f"request {index} {request}: expected {expected}, got {got}"
            if request.id is not None:
                assert outcome.id == request.id
        self.model.commit(plan, [o.id for o in outcomes])
        after = self.snapshot()
        created = sum(1 for e in plan.expected if e.status == "created")
        if created == 0:
            assert after == before, "a request that wrote nothing changed the ledger"
        else:
            assert after[1][0] == before[1][0] + created
        return outcomes

    # -- rules

    def open_account(self, spec: tuple) -> str:
        account_type, currency, flag, overdraft = spec
        account_id = self.new_id("acct")
        debit_limited = flag == "debits_must_not_exceed_credits"
        credit_limited = flag == "credits_must_not_exceed_debits"
        row, created = transact(
            self.engine,
            lambda s: service.create_account(
                s,
                id=account_id,
                type=account_type,
                currency=currency,
                code=f"{account_type}:{account_id}",
                debits_must_not_exceed_credits=debit_limited,
                credits_must_not_exceed_debits=credit_limited,
                overdraft_limit=overdraft,
            ),
        )
        assert created
        if overdraft is not None and not (debit_limited or credit_limited):
            # An overdraft without a flag limits the account on its normal side.
            debit_limited = account_type not in DEBIT_NORMAL
            credit_limited = account_type in DEBIT_NORMAL
        self.model.accounts[account_id] = ModelAccount(
            account_id, account_type, currency, debit_limited, credit_limited, overdraft
        )
        return account_id

    @initialize(
        specs=st.lists(account_specs, min_size=3, max_size=6),
        funding=st.lists(st.integers(0, 3_000), min_size=6, max_size=6),
    )
    def open_first_accounts(self, specs: list[tuple], funding: list[int]) -> None:
        """A few accounts, plus an unlimited equity account per currency that funds them, so that
        limited accounts start with something to spend (or, credit-limited, to take in)."""
        equity = {currency: self.open_account(("equity", currency, "none", None)) for currency in CURRENCIES}
        for spec, amount in zip(specs, funding, strict=False):
            account = self.model.accounts[self.open_account(spec)]
            if amount and account.debits_must_not_exceed_credits:
                self.submit([EntryRequest.transfer(equity[account.currency], account.id, amount, account.currency)])
            elif amount and account.credits_must_not_exceed_debits:
                self.submit([EntryRequest.transfer(account.id, equity[account.currency], amount, account.currency)])

    @rule(spec=account_specs)
    def open_another_account(self, spec: tuple) -> None:
        self.open_account(spec)

    @rule()
    def account_with_both_limit_flags_is_refused(self) -> None:
        before = self.snapshot()
        try:
            transact(
                self.engine,
                lambda s: service.create_account(
                    s,
                    id="acct-both",
                    type="asset",
                    currency="USD",
                    code="both",
                    debits_must_not_exceed_credits=True,
                    credits_must_not_exceed_debits=True,
                ),
            )
        except errors.ValidationFailed:
            pass
        else:
            raise AssertionError("an account with both limit flags was opened")
        assert self.snapshot() == before

    @rule(data=st.data(), same=st.booleans())
    def replay_account(self, data: st.DataObject, same: bool) -> None:
        account = self.model.accounts[self.pick_account(data)]
        currency = account.currency
        if not same:
            currency = data.draw(st.sampled_from([c for c in CURRENCIES if c != account.currency]))
        before = self.snapshot()

        def call(session: Session) -> tuple:
            return service.create_account(
                session,
                id=account.id,
                type=account.type,
                currency=currency,
                code=f"{account.type}:{account.id}",
                debits_must_not_exceed_credits=account.debits_must_not_exceed_credits,
                credits_must_not_exceed_debits=account.credits_must_not_exceed_debits,
                overdraft_limit=account.overdraft_limit,
            )

        if same:
            _row, created = transact(self.engine, call)
            assert not created
        else:
            try:
                transact(self.engine, call)
            except errors.AccountExists:
                pass
            else:
                raise AssertionError("an account id was reused with another currency")
        assert self.snapshot() == before

    @precondition(lambda self: sum(not a.closed for a in self.model.accounts.values()) > 5)
    @rule(data=st.data())
    def close_account(self, data: st.DataObject) -> None:
        account = self.model.accounts[self.pick_account(data)]
        dp, cp, dpend, cpend = account.balances
        empty = dp == cp and not dpend and not cpend
        try:
            row = transact(self.engine, lambda s: service.close_account(s, account.id))
        except errors.AccountNotEmpty:
            assert not empty, f"{account.id} is empty but could not be closed"
            return
        assert empty, f"{account.id} was closed with balances {account.balances}"
        assert row.closed
        account.closed = True

    @rule(data=st.data())
    def transfer(self, data: st.DataObject) -> None:
        self.submit([self.gen_transfer(data)])

    @rule(data=st.data(), timeout=timeouts)
    def pending_transfer(self, data: st.DataObject, timeout: int | None) -> None:
        request = self.gen_transfer(data, pending=True)
        request.timeout_seconds = timeout
        self.submit([request])

    @rule(
        data=st.data(),
        shape=st.sampled_from(["balanced", "unbalanced", "two_currencies", "mismatch"]),
    )
    def multi_leg_entry(self, data: st.DataObject, shape: str) -> None:
        outcomes = self.submit([self.gen_multi_leg(data, shape)])
        if shape == "unbalanced":
            assert outcomes[0].code == errors.EntryNotBalanced.code

    @rule(data=st.data())
    def resolve_pending(self, data: st.DataObject) -> None:
        self.submit([self.gen_resolution(data)])

    @precondition(lambda self: any(e.pending for e in self.model.entries.values()))
    @rule(data=st.data())
    def resolve_twice(self, data: st.DataObject) -> None:
        """A second post or void of the same pending transfer is refused."""
        pending_id = data.draw(st.sampled_from([k for k, e in self.model.entries.items() if e.pending]))
        first = data.draw(st.sampled_from(["post", "void"]), label="first")
        second = data.draw(st.sampled_from(["post", "void"]), label="second")
        (done,) = self.submit([EntryRequest(id=self.new_id(), pending_id=pending_id, resolution=first)])
        (again,) = self.submit([EntryRequest(id=self.new_id(), pending_id=pending_id, resolution=second)])
        if done.status == "created":
            assert (again.status, again.code) == (
                "failed",
                {
                    "post": errors.PendingAlreadyPosted.code,
                    "void": errors.PendingAlreadyVoided.code,
                }[first],
            )

    @rule(data=st.data(), size=st.integers(1, 6))
    def linked_batch(self, data: st.DataObject, size: int) -> None:
        in_batch_pending: dict[str, EntryRequest] = {}
        self.submit(
            [self.gen_batch_member(data, in_batch_pending, likely_valid=True) for _ in range(size)],
            linked=True,
        )

    @rule(data=st.data(), size=st.integers(1, 5))
    def linked_batch_with_an_invalid_member(self, data: st.DataObject, size: int) -> None:
        in_batch_pending: dict[str, EntryRequest] = {}
        requests = [self.gen_batch_member(data, in_batch_pending) for _ in range(size)]
        requests.insert(data.draw(st.integers(0, size), label="position"), self.gen_invalid(data))
        outcomes = self.submit(requests, linked=True)
        assert all(o.status == "failed" for o in outcomes)

    @rule(data=st.data(), size=st.integers(1, 8))
    def unlinked_batch(self, data: st.DataObject, size: int) -> None:
        in_batch_pending: dict[str, EntryRequest] = {}
        requests = [self.gen_batch_member(data, in_batch_pending) for _ in range(size)]
        if data.draw(st.booleans(), label="with an invalid member"):
            requests.insert(data.draw(st.integers(0, size), label="position"), self.gen_invalid(data))
        self.submit(requests)

    @precondition(lambda self: self.model.entries)
    @rule(data=st.data(), same=st.booleans())
    def replay(self, data: st.DataObject, same: bool) -> None:
        outcomes = self.submit([self.gen_replay(data, same=same)])
        assert outcomes[0].status == ("exists" if same else "failed")
        if not same:
            assert outcomes[0].code == errors.TransferExists.code

    @rule(seconds=st.integers(1, 90))
    def time_passes(self, seconds: int) -> None:
        self.model.now = self.clock.tick(seconds=seconds)

    @rule(data=st.data(), legs=st.integers(3, 6))
    def partial_post_of_a_multi_leg_pending(self, data: st.DataObject, legs: int) -> None:
        """A partial post spreads the amount over the pending legs by largest remainder."""
        request = self.gen_multi_leg(data, "balanced", exact=True)
        while len(request.postings) < legs:
            extra = self.gen_multi_leg(data, "balanced", exact=True)
            if extra.postings[0].currency == request.postings[0].currency:
                request.postings.extend(extra.postings)
        request.id, request.pending, request.timeout_seconds = self.new_id(), True, None
        (outcome,) = self.submit([request])
        if outcome.status != "created":
            return
        total = sum(p.amount for p in request.postings if p.direction == "debit")
        amount = data.draw(st.integers(1, total), label="posted amount")
        # The model predicts the outcome (a post can still overflow a balance near 2^63-1).
        self.submit([EntryRequest(id=self.new_id(), pending_id=request.id, resolution="post", amount=amount)])

    @precondition(
        lambda self: any(
            e.timeout_at is not None and e.timeout_at > self.model.now and k not in self.model.resolutions
            for k, e in self.model.entries.items()
        )
    )
    @rule(data=st.data(), offset=st.sampled_from([-1, 0]))
    def post_at_the_deadline(self, data: st.DataObject, offset: int) -> None:
        """A pending transfer can be posted up to the second before its timeout, not at it."""
        pending_id = data.draw(
            st.sampled_from(
                [
                    k
                    for k, e in self.model.entries.items()
                    if e.timeout_at is not None and e.timeout_at > self.model.now and k not in self.model.resolutions
                ]
            ),
            label="pending id",
        )
        deadline = self.model.entries[pending_id].timeout_at
        self.model.now = self.clock.tick(seconds=(deadline - self.model.now).total_seconds() + offset)
        (outcome,) = self.submit([EntryRequest(id=self.new_id(), pending_id=pending_id, resolution="post")])
        assert (outcome.code == errors.PendingExpired.code) == (offset >= 0)

    @rule()
    def worker_voids_expired(self) -> None:
        expired = sorted(
            key
            for key, e in self.model.entries.items()
            if e.pending
            and key not in self.model.resolutions
            and e.timeout_at is not None
            and e.timeout_at <= self.model.now
        )
        before = self.snapshot()
        assert transact(self.engine, service.void_expired) == len(expired)
        if not expired:
            assert self.snapshot() == before
            return
        views = transact(self.engine, lambda s: {key: service.get_transfer(s, key) for key in expired})
        requests = [EntryRequest(id=views[key]["resolved_by"], pending_id=key, resolution="void") for key in expired]
        assert all(view["status"] == "voided" for view in views.values())
        # The worker's voids are what the model would do with the same requests.
        plan = self.model.plan(requests, linked=False)
        assert all(e.status == "created" for e in plan.expected)
        self.model.commit(plan, [r.id for r in requests])

    # -- invariants

    @invariant()
    def books_are_whole(self) -> None:
        def read(session: Session) -> tuple:
            report = verify(session)  # first: it sets the transaction's snapshot on PostgreSQL
            rows = session.execute(select(accounts_table)).all()
            ids = set(session.scalars(select(entries_table.c.id)))
            head = session.execute(select(chain_table.c.seq)).scalar_one()
            return rows, ids, head, report

        rows, ids, head, report = transact(self.engine, read)
        assert report.ok, report.first_failure
        assert {r.id for r in rows} == set(self.model.accounts)
        totals: dict[str, list[int]] = {c: [0, 0, 0, 0] for c in CURRENCIES}
        for row in rows:
            account = self.model.accounts[row.id]
            stored = [
                row.debits_posted,
                row.credits_posted,
                row.debits_pending,
                row.credits_pending,
            ]
            assert stored == account.balances, f"{row.id}: stored {stored}, model {account.balances}"
            assert (row.type, row.currency, row.closed, row.overdraft_limit) == (
                account.type,
                account.currency,
                account.closed,
                account.overdraft_limit,
            )
            assert (row.debits_must_not_exceed_credits, row.credits_must_not_exceed_debits) == (
                account.debits_must_not_exceed_credits,
                account.credits_must_not_exceed_debits,
            )
            assert account.breach(stored) is None, f"{row.id} breaks its limit: {stored}"
            assert min(stored) >= 0
            totals[row.currency] = [t + v for t, v in zip(totals[row.currency], stored, strict=True)]
        for currency, (dp, cp, dpend, cpend) in totals.items():
            assert dp == cp, f"{currency}: posted debits {dp} != credits {cp}"
            assert dpend == cpend, f"{currency}: pending debits {dpend} != credits {cpend}"
        assert ids == set(self.model.entries), (
            f"written but not expected: {sorted(ids - set(self.model.entries))}, "
            f"expected but missing: {sorted(set(self.model.entries) - ids)}"
        )
        assert head == len(self.model.entries)


# ---------------------------------------------------------------- the test


@pytest.mark.slow  # a long random walk (20 to 30 s a database)
class TestRandomLedgerOperations:
    def test_random_operations_keep_the_books_whole(self, backend, request, tmp_path: Path) -> None:
        """The same derandomized programs run on both databases, each example on an empty ledger."""
        engines: list[Engine] = []
        if backend == "sqlite":
            template = request.getfixturevalue("sqlite_template")
            examples = itertools.count()

            def fresh_database() -> tuple[Engine, Callable[[], None]]:
                path = tmp_path / f"example-{next(examples)}.db"
                shutil.copyfile(template, path)
                engine = make_engine(f"sqlite:///{path}", pool_size=2)

                def drop() -> None:
                    engine.dispose()
                    for suffix in ("", "-wal", "-shm"):
                        Path(f"{path}{suffix}").unlink(missing_ok=True)

                return engine, drop
        else:
            engines.append(make_engine(request.getfixturevalue("postgres_migrated"), pool_size=2))

            def fresh_database() -> tuple[Engine, Callable[[], None]]:
                reset_postgres(engines[0])
                return engines[0], lambda: None

        try:
            run_state_machine_as_test(lambda: LedgerStateMachine(fresh_database), settings=STATE_MACHINE_SETTINGS)
        finally:
            for engine in engines:
                engine.dispose()
