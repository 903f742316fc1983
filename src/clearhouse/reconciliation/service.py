"""Import a statement and reconcile it: parse, match against our lines, save the run and its cases.

One statement file is one reconciliation. The file is parsed completely before anything is
written, so a malformed file changes nothing; the statement row, the run, every case and the
automatic resolutions are then written in one transaction. The same file (by SHA-256) is
refused the second time, by a unique constraint as much as by the check before parsing; so is
a bank statement imported already in other bytes (its ``fingerprint``) or under the same bank's
number (its ``BankStatementIdentity``), by unique indexes as much as by the check before matching
(``_earlier_import``). Two imports racing past that check meet at the index: the loser's
transaction rolls back whole and it is refused like the check would have (``_raced``).

A bank statement's lines are money at the bank (docs/accounting.md, recipes 4 and 9): in the same transaction,
one entry per bank account and currency debits ``bank:<account>`` with what the bank booked (``post_payouts``).
What the lines that paired with ours paid (``matched``, and ``timing`` pairs: the money is in the bank, so it has
left the channel) comes from ``channel_clearing:C``; a pair that disagrees on the money (``amount_mismatch``,
``fee_mismatch``) takes our net from it, what the channel held for the line it paid. The rest, the lines that
did not pair and the mismatched pairs' deltas, goes to ``suspense``, where the cases' resolutions take it from.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl
from sqlalchemy import Engine, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from clearhouse.audit import service as audit
from clearhouse.kit import clock
from clearhouse.kit.db import bulk_insert, transact
from clearhouse.kit.ids import new_id, new_ids
from clearhouse.ledger import chart
from clearhouse.ledger import repository as ledger_repository
from clearhouse.ledger import service as ledger
from clearhouse.ledger.errors import LedgerError
from clearhouse.payments import postings
from clearhouse.reconciliation import sources
from clearhouse.reconciliation.errors import (
    ReconciliationNotFound,
    StatementAlreadyImported,
    StatementInvalid,
    UnknownStatementFormat,
)
from clearhouse.reconciliation.frames import BankStatementIdentity
from clearhouse.reconciliation.models import (
    BANK_STATEMENT_INDEX,
    CLASSES,
    FINGERPRINT_INDEX,
    ReconBankOpening,
    ReconCase,
    ReconCaseEvent,
    Reconciliation,
    ReconPaidLine,
    ReconRules,
    ReconStatement,
    statement_fingerprint,
)
from clearhouse.reconciliation.rules import MAX_WINDOW_DAYS

BANK_FORMATS = ("mt940", "camt053")

statements = ReconStatement.__table__
runs = Reconciliation.__table__
cases = ReconCase.__table__
paid_table = ReconPaidLine.__table__
openings_table = ReconBankOpening.__table__
case_events = ReconCaseEvent.__table__
rules_table = ReconRules.__table__

ProgressFn = Callable[[str, int, int], None]
STAGES = ("hash", "parse", "load", "match", "save")

CHANNEL_TIMEZONES = {"sandbox_alipay": "Asia/Shanghai", "sandbox_wechat": "Asia/Shanghai"}
"""Channels whose statement days are not UTC days (their own calendar: docs/channels.md)."""

SYSTEM = "system:reconciliation"
"""Who a case's events say acted, when reconciliation itself did."""
ACCOUNT_EVENT = "account"
"""A case's event naming the bank account its line is on, when not the statement's (``save_cases``)."""

PAYOUT_ENTRY_PREFIX = "tr_rcb_"
"""A channel payout's entry id: ``tr_rcb_<reconciliation id>_<n>`` (reserved in ``ledger.schemas``)."""
PAYOUT_CODE = "channel_payout"
PAYOUTS_KEY = "payouts"
"""In a bank statement's run, beside a currency's clearing figures: the payout entries posted for it (read by the
clearing report, not shown in the run)."""
PAYOUT_DIFFERENCE_ACCOUNT = postings.channel_cost
"""Where a payout's pairs matched within a tolerance put what the bank booked beyond (or short of) what the
channel owed: the channel's charge (``post_payouts``)."""
UNEXPLAINED_ACCOUNT = ("suspense", "liability")
"""Where a bank statement's money that paid none of ours as owed waits for its cases (recipe 9)."""
SUSPENSE_KEY = "suspense_on_import"
"""In a bank statement's run (``clearing_json``, per currency): what its import posted to ``suspense`` for its
cases. A run without it was imported before recipe 9 was posted on import: its cases post from the bank
account when resolved."""
OPENING_ENTRY_PREFIX = "tr_rco_"
"""A bank account's opening balance entry id: ``tr_rco_<reconciliation id>_<n>`` (reserved in ``ledger.schemas``)."""
OPENING_CODE = "bank_opening_balance"
OPENING_ACCOUNT = ("opening_balances", "equity")
OPENING_KEY = "bank_balances"
"""In a bank statement's run, per currency: how its opening balances continue the ledger (``take_up_balances``)."""
PAID_CLASSES = ("matched", "timing")
"""The classes of a bank statement line paired with ours that count as the channel paying it (recipe 4)."""
MISMATCHED_CLASSES = ("amount_mismatch", "fee_mismatch")
"""A bank statement line paired with ours that disagrees with it on the money: the channel paid that line of ours,
so our net leaves ``channel_clearing:C`` (recipe 4) and the case's delta, their net - our net, is the rest of what
the bank booked, posted by its adjustment (recipe 9)."""

_CASE_COLUMNS = ("our_id", "our_ref", "channel_ref", "line_no", "currency", "ours_amount", "theirs_amount",
                 "ours_fee", "theirs_fee", "ours_status", "theirs_status", "ours_booked_on", "theirs_booked_on",
                 "detail")


def _no_progress(_stage: str, _done: int, _total: int) -> None:
    return None


def file_digest(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


# -- rules ---------------------------------------------------------------------------------------------------------


def default_rules(channel: str) -> Any:
    from clearhouse.reconciliation.rules import MatchRules

    return MatchRules(timezone=CHANNEL_TIMEZONES.get(channel, "UTC"))


def rules_for(session: Session, channel: str) -> tuple[Any, dict[str, Any] | None]:
    """The channel's matching rules and its CSV mapping override (None: the built-in mapping)."""
    from pydantic import ValidationError

    from clearhouse.kit.errors import ValidationFailed
    from clearhouse.reconciliation.rules import MatchRules

    row = session.execute(select(rules_table).where(rules_table.c.channel == channel)).first()
    if row is None:
        return default_rules(channel), None
    mapping = orjson.loads(row.mapping_json) if row.mapping_json else None
    try:
        return MatchRules.model_validate_json(row.rules_json), mapping
    except ValidationError as error:  # saved before a check it now fails (a bound): a 422 to fix it, not a 500
        errors = error.errors(include_url=False, include_context=False, include_input=False)
        where = ".".join(map(str, errors[0]["loc"]))
        raise ValidationFailed(f"the channel's saved rules are invalid ({where}: {errors[0]['msg']}); "
                               f"PUT /v1/recon_rules/{channel} to replace them",
                               errors=[{**e, "loc": ("rules", *e["loc"])} for e in errors]) from None


def put_rules(session: Session, actor: audit.Actor, channel: str, rules: Any, mapping: dict[str, Any] | None) -> None:
    now = clock.now()
    values = {"rules_json": rules.model_dump_json(),
              "mapping_json": orjson.dumps(mapping).decode() if mapping else None,
              "updated_by": f"{actor.type}:{actor.id}", "updated_at": now}
    found = session.execute(select(rules_table.c.channel).where(rules_table.c.channel == channel)).first()
    if found is None:
        session.execute(rules_table.insert().values(channel=channel, **values))
    else:
        session.execute(update(rules_table).where(rules_table.c.channel == channel).values(**values))
    audit.record(session, actor, "recon.rules.update", "recon_rules", channel,
                 changes={"rules": rules.model_dump(mode="json"), "mapping": mapping})


def rules_view(session: Session, channel: str) -> dict[str, Any]:
    """The channel's rules; saved ones that a later check refuses are shown as saved, to be replaced."""
    from clearhouse.kit.errors import ValidationFailed

    try:
        rules, mapping = rules_for(session, channel)
    except ValidationFailed:
        row = session.execute(select(rules_table).where(rules_table.c.channel == channel)).one()
        return {"channel": channel, "rules": orjson.loads(row.rules_json),
                "mapping": orjson.loads(row.mapping_json) if row.mapping_json else None}
    return {"channel": channel, "rules": rules.model_dump(mode="json"), "mapping": mapping}


# -- reconcile -----------------------------------------------------------------------------------------------------


def _mapping_of(mapping: str | dict[str, Any] | None) -> Any:
    if isinstance(mapping, dict):
        from pydantic import ValidationError

        from clearhouse.kit.errors import ValidationFailed
        from clearhouse.reconciliation.formats.csvmap import CsvMapping

        try:
            return CsvMapping.model_validate(mapping)
        except ValidationError as error:  # saved before a check it now fails: a 422 to fix it, not a 500
            errors = error.errors(include_url=False, include_context=False)
            raise ValidationFailed(f"the channel's saved CSV mapping is invalid: {errors[0]['msg']}",
                                   errors=[{**e, "loc": ("mapping", *e["loc"])} for e in errors]) from None
    return mapping


def parse(path: Path, fmt: str, channel: str, mapping: Any, calendar: str | None = None) -> Any:
    """The statement file read (``calendar``: the channel's, its rules' ``timezone``)."""
    from clearhouse.reconciliation.formats import parse_statement

    return parse_statement(path, fmt, mapping=_mapping_of(mapping), channel=channel, calendar=calendar)


FIRST_DAY, LAST_DAY = date(1900, 1, 1), date(9998, 12, 31)
"""The days a statement may speak for. Our lines are read some weeks around them (the rules' windows, and
``MAX_WINDOW_DAYS`` more for earlier statements), and Python's dates end at 9999-12-31: a day near either end
would overflow there, a 500 instead of an answer."""


def check_statement_date(statement_date: date) -> date:
    """``statement_date`` if reconciliation can work with it, else ``422 validation_error``."""
    if not FIRST_DAY <= statement_date <= LAST_DAY:
        from clearhouse.kit.errors import ValidationFailed

        raise ValidationFailed(f"statement_date {statement_date.isoformat()} is out of range: a statement's day is "
                               f"from {FIRST_DAY.isoformat()} to {LAST_DAY.isoformat()}",
                               errors=[{"loc": ["statement_date"], "msg": "out of range", "type": "value_error"}])
    return statement_date


def period_of(meta: Any, fmt: str, statement_date: date) -> tuple[date, date]:
    """The days the statement speaks for: a bank statement says so itself; a channel file is its day."""
    if fmt != "csv" and meta.first_day is not None and meta.last_day is not None:
        return min(meta.first_day, statement_date), max(meta.last_day, statement_date)
    return statement_date, statement_date


def statement_period(meta: Any, fmt: str, statement_date: date) -> tuple[date, date]:
    """``period_of`` for a file being imported. A channel's statement speaks for its day, and may bring lines of
    earlier days (late ones); a file whose every line is of a later day than ``statement_date`` (say, the UTC
    date given for a file of the channel's next day) would reconcile another day's lines against this day's
    ledger, so it is refused, naming its days."""
    first, last = meta.first_day, meta.last_day
    check_statement_date(statement_date)
    outside = [day for day in (first, last) if day is not None and not FIRST_DAY <= day <= LAST_DAY]
    if outside:  # a bank statement speaks for its own days, and they are read around as much as statement_date
        raise StatementInvalid(f"the statement's lines are booked on {outside[0].isoformat()}, out of range: "
                               f"a statement's days are from {FIRST_DAY.isoformat()} to {LAST_DAY.isoformat()}")
    if fmt == "csv" and first is not None and last is not None and first > statement_date:
        days = first.isoformat() if first == last else f"{first.isoformat()} to {last.isoformat()}"
        raise StatementInvalid(f"statement_date {statement_date.isoformat()} is before every line of this statement: "
                               f"they are booked on {days} (in the channel's time zone); import it under its own day")
    return period_of(meta, fmt, statement_date)


def load_internal(session: Session, channel: str, period: tuple[date, date], rules: Any) -> pl.DataFrame:
    """Our lines for the period widened by the rules' windows (a line may be booked a day apart)."""
    widen = timedelta(days=max(rules.date_window_days, rules.batch_window_days))
    return sources.internal_lines(session, channel, period[0] - widen, period[1] + widen, rules.timezone)


def settled_before(session: Session, channel: str, fmt: str, period: tuple[date, date],
                   internal: pl.DataFrame) -> np.ndarray | None:
    """Which of our lines an earlier statement settled, by kind: for a bank statement, those a bank statement paid
    (``paid_before``: the money is in the bank, exactly once); for a channel's, ``settled_earlier``."""
    if fmt in BANK_FORMATS:
        return paid_before(session, internal)
    return settled_earlier(session, channel, fmt, period, internal)


def paid_before(session: Session, internal: pl.DataFrame) -> np.ndarray | None:
    """A flag per line of ours that a bank statement paid already (``recon_paid_lines``; None: none did). A bank
    statement adds to the earlier ones (it is never a re-issue: the same statement is refused), so a line one of
    them paid is paid, whatever day or page carried it; a later line that pays it again is a ``duplicate``."""
    if not internal.height:
        return None
    ids = internal["our_id"].to_list()
    paid: set[str] = set()
    for start in range(0, len(ids), 5000):
        paid.update(session.execute(select(paid_table.c.our_id).where(
            paid_table.c.our_id.in_(ids[start:start + 5000]))).scalars())
    if not paid:
        return None
    return internal.select(pl.col("our_id").is_in(pl.Series(sorted(paid), dtype=pl.String).implode()))[
        "our_id"].to_numpy()


def paid_ours(paying: pl.DataFrame, mismatched: pl.DataFrame) -> list[tuple[str, int]]:
    """(our id, statement line) of every line of ours this bank statement pays: the plain matches, the
    ``PAID_CLASSES`` pairs (a batch credit's line for each line of ours it pays) and the mismatched pairs
    ``mismatched_pairs`` posts (``paying``: ``_paying``; ``mismatched``: ``mismatched_pairs`` with their ids), each
    line of ours once (at the first line that pays it). What ``payouts_of`` posts the money of, line by line."""
    lines = pl.concat([paying.select("our_id", "line_no"),
                       mismatched.select("our_id", pl.col("line_no").cast(pl.Int64))]).unique(
        "our_id", keep="first", maintain_order=True).sort("our_id")
    return [(our_id, int(line_no)) for our_id, line_no in lines.iter_rows()]


def _paying(outcome: Any) -> pl.DataFrame:
    """``our_id``, ``line_no``, ``net`` (our amount less the channel cost we booked: what ``channel_clearing:C``
    holds for it) and ``ours_status`` of the lines of ours that the plain matches and the ``PAID_CLASSES`` pairs
    pay, in that order (``paid_ours``, ``paid_our_nets``)."""
    net = (pl.col("ours_amount") - pl.col("ours_fee").fill_null(0)).alias("net")
    columns = ["our_id", pl.col("line_no").cast(pl.Int64), net, "ours_status"]
    parts = []
    if outcome.plain.count:
        plain = outcome.plain
        parts.append(pl.concat([plain.theirs.select("line_no")[plain.lines],
                                plain.ours.select("our_id", "ours_amount", "ours_fee", "ours_status")[plain.our_rows]],
                               how="horizontal").select(columns))
    parts.append(_paid_pairs(outcome).filter(pl.col("our_id").is_not_null()).select(columns))
    return pl.concat(parts)


def settled_earlier(session: Session, channel: str, fmt: str, period: tuple[date, date],
                    internal: pl.DataFrame) -> np.ndarray | None:
    """Which of our lines an earlier statement of the channel reconciled (a flag per line; None: none).

    Matched pairs are not stored one by one, so this is read from the runs: a succeeded line of ours booked
    on a day outside ``period`` is settled when the latest earlier statement of the same kind (a channel's
    file, or a bank's) that spoke for that day was imported after the line became final and did not report
    it unpaired (``missing_in_statement`` or ``timing`` without a line). A statement line that repeats it is
    then a ``duplicate``, not a second match. Only the latest counts: a second file of a day is a re-issue
    that replaces the first, so a line the re-issue dropped is unpaired, whatever the replaced file said (a
    later statement that brings it pairs it). The statement's own days are never settled, for the same
    reason: this file may be that day's re-issue.

    A line an earlier statement paired as ``timing`` (a case with a line: the channel booked it on another day
    than we did, later, or earlier as with a payment made just before midnight that we booked just after) is
    settled too, on whatever day we booked it, while that statement is still the latest of the day it put the
    line on (``_paired_late``): a later statement lacks it rightly, and one that repeats it holds a duplicate."""
    outside = ~pl.col("booked_on").is_between(*period) & (pl.col("status") == "succeeded")
    days = internal.lazy().select(pl.col("booked_on").min().alias("earliest"),
                                  pl.col("booked_on").filter(outside).min().alias("first"),
                                  pl.col("booked_on").filter(outside).max().alias("last")).collect()
    earliest, first, last = days["earliest"][0], days["first"][0], days["last"][0]
    if earliest is None:
        return None
    # Every statement of the kind that spoke for a day from ``since`` on: those of the outside lines' own days,
    # and those that may have paired a line as ``timing`` (a pair is at most a date window apart).
    since = earliest - timedelta(days=MAX_WINDOW_DAYS)
    spoke_for = or_(runs.c.statement_date >= since, statements.c.last_day >= since)
    candidates = [run for run in session.execute(
        select(runs.c.id, runs.c.created_at, runs.c.statement_date, statements.c.format, statements.c.first_day,
               statements.c.last_day)
        .join(statements, statements.c.id == runs.c.statement_id)
        .where(runs.c.channel == channel, spoke_for)) if (run.format == "csv") == (fmt == "csv")]
    latest: dict[date, Any] = {}  # each day from ``since`` on -> the latest earlier statement that spoke for it
    for run in sorted(candidates, key=lambda run: (run.created_at, run.id)):
        spoke_from, spoke_to = period_of(run, run.format, run.statement_date)
        day = max(spoke_from, since)
        while day <= spoke_to:
            latest[day] = run
            day += timedelta(days=1)
    days_of: dict[str, list[date]] = {}
    for day, run in latest.items():
        if first is not None and first <= day <= last and not period[0] <= day <= period[1]:
            days_of.setdefault(run.id, []).append(day)
    earlier = [run for run in candidates if run.id in days_of]
    reached = []
    late = _paired_late(session, latest, period)
    if late:  # whatever day we booked it on: one the channel put on the day before ours is paired all the same
        reached.append(pl.col("our_id").is_in(pl.Series(late, dtype=pl.String).implode()))
    if not earlier and not reached:
        return None
    unpaired: dict[str, list[str]] = {}
    for run_id, our_id in session.execute(select(cases.c.reconciliation_id, cases.c.our_id).where(
            cases.c.reconciliation_id.in_([run.id for run in earlier]), cases.c.line_no.is_(None),
            cases.c.our_id.is_not(None))):
        unpaired.setdefault(run_id, []).append(our_id)
    reached += [outside & pl.col("booked_on").is_in(pl.Series(days_of[run.id], dtype=pl.Date).implode())
                & (pl.col("booked_at") < run.created_at)
                & ~pl.col("our_id").is_in(pl.Series(unpaired.get(run.id, []), dtype=pl.String).implode())
                for run in earlier]
    settled = internal.select(pl.any_horizontal(reached).alias("settled"))["settled"].to_numpy()
    return settled if settled.any() else None


def _paired_late(session: Session, latest: dict[date, Any], period: tuple[date, date]) -> list[str]:
    """Our ids that an earlier statement paired as ``timing`` (both sides present, booked on different days),
    each where that statement is still the latest (``latest``: day -> run) of the day the channel put the line
    on, and that day is not one of this statement's (this file may be its re-issue)."""
    runs_of_days: dict[str, set[date]] = {}
    for day, run in latest.items():
        if not period[0] <= day <= period[1]:
            runs_of_days.setdefault(run.id, set()).add(day)
    if not runs_of_days:
        return []
    pairs = session.execute(select(cases.c.reconciliation_id, cases.c.our_id, cases.c.theirs_booked_on).where(
        cases.c.reconciliation_id.in_(sorted(runs_of_days)), cases.c["class"] == "timing",
        cases.c.line_no.is_not(None), cases.c.our_id.is_not(None)))
    return sorted({our_id for run_id, our_id, day in pairs if day in runs_of_days[run_id]})


def run_match(lines: pl.DataFrame, internal: pl.DataFrame, rules: Any, period: tuple[date, date],
              settled: np.ndarray | None = None, *, bank_statement: bool = False) -> Any:
    """``matching.match``; ``bank_statement``: a bank's lines that state no fee are compared with our net."""
    from clearhouse.reconciliation.matching import match

    return match(lines, internal, rules, period=period, settled=settled, bank_statement=bank_statement)


def with_accounts(discrepancies: pl.DataFrame, meta: Any) -> pl.DataFrame:
    """The discrepancies with the bank ``account`` each is on, where a file holds statements of several accounts
    and it is not the statement's (its first): a line's is its own statement's, a line of ours the file lacks
    takes the file's first statement in its currency (``StatementMeta.account_of``). Null elsewhere: the
    statement's account is the case's, as for every file of one account."""
    if len({part.account for part in meta.parts}) < 2:
        return discrepancies
    accounts = [meta.account_of(line_no, currency)
                for line_no, currency in discrepancies.select("line_no", "currency").iter_rows()]
    return discrepancies.with_columns(pl.Series(
        "account", [None if account == meta.account else account for account in accounts], dtype=pl.String))


def with_delta(results: pl.DataFrame) -> pl.DataFrame:
    """Each result's delta: what the channel holds for us by its statement minus by our ledger, net of fees.

    A duplicate line counts only its own money (its original is paired with ours elsewhere). A fee
    mismatch is only the fees' gap, ours - theirs: its amounts agree within the tolerance, and an amount
    difference inside the tolerance is not the fee's to post (docs/reconciliation.md, the classes)."""
    theirs = pl.when(pl.col("theirs_status") == "succeeded").then(
        pl.col("theirs_amount").fill_null(0) - pl.col("theirs_fee").fill_null(0)).otherwise(0)
    ours = pl.when(pl.col("ours_status") == "succeeded").then(
        pl.col("ours_amount").fill_null(0) - pl.col("ours_fee").fill_null(0)).otherwise(0)
    fees = pl.col("ours_fee").fill_null(0) - pl.col("theirs_fee").fill_null(0)
    delta = (pl.when(pl.col("class") == "duplicate").then(theirs)
             .when(pl.col("class") == "fee_mismatch").then(fees).otherwise(theirs - ours))
    return results.with_columns(delta.cast(pl.Int64).alias("delta"))


LINE_NET = pl.col("amount") - pl.col("fee").fill_null(0)
"""A statement line's net: what the channel reports it paid (or the bank booked); no fee stated (null) is none."""


def _reported_frame(lines: pl.DataFrame) -> pl.LazyFrame:
    return (lines.lazy().filter(pl.col("status") == "succeeded")
            .group_by("currency").agg(LINE_NET.sum().alias("reported")))


def reported_of(lines: pl.DataFrame) -> dict[str, int]:
    """Per currency, the statement's net (``reported`` in ``clearing_of``), currencies of net 0 left out."""
    return {currency: int(net) for currency, net in _reported_frame(lines).collect().iter_rows() if net}


def _expected_frame(internal: pl.DataFrame, period: tuple[date, date]) -> pl.LazyFrame:
    """Per currency, our net (amount - fee) of the succeeded lines of ours booked in ``period``."""
    return (internal.lazy().filter((pl.col("status") == "succeeded") & pl.col("booked_on").is_between(*period))
            .group_by("currency").agg((pl.col("amount") - pl.col("fee")).sum().alias("expected")))


def expected_of(session: Session, channel: str, day: date, rules: Any) -> dict[str, int]:
    """Per currency, what our ledger expects ``channel`` to hold for ``day``, read now: the clearing report's
    ``expected`` on a day no channel statement reported (its bank statements alone say nothing of it)."""
    ours = _expected_frame(load_internal(session, channel, (day, day), rules), (day, day)).collect()
    return {currency: int(expected) for currency, expected in ours.iter_rows()}


def clearing_of(lines: pl.DataFrame, internal: pl.DataFrame, period: tuple[date, date]) -> dict[str, dict[str, int]]:
    """Per currency: what our ledger expects the channel to hold for the period, what its statement says."""
    ours = _expected_frame(internal, period)
    theirs = _reported_frame(lines)
    both = ours.join(theirs, on="currency", how="full", coalesce=True).fill_null(0).sort("currency").collect()
    return {row["currency"]: {"expected": int(row["expected"]), "reported": int(row["reported"]),
                              "difference": int(row["reported"]) - int(row["expected"])}
            for row in both.iter_rows(named=True)}


def statement_account_name(fmt: str, account: str | None, channel: str) -> str:
    """The ledger account a statement's money is on: ``bank:<account>`` for a bank statement (MT940, camt.053;
    the channel's name when the file names no account), ``channel_clearing:C`` for a channel's statement."""
    if fmt not in BANK_FORMATS:
        return postings.clearing(channel)[0]
    return f"bank:{account or channel}"


def paid_lines(outcome: Any) -> pl.Series:
    """The statement's line numbers that paired with ours as ``PAID_CLASSES`` (a split match's every line, a
    pass-3 credit once however many of ours it pays)."""
    plain = outcome.plain.theirs["line_no"].gather(outcome.plain.lines) if outcome.plain.count else None
    paired = _paid_pairs(outcome)
    batches = paired["batch_line_nos"].explode().drop_nulls()
    parts = [part.cast(pl.Int64) for part in (plain, paired["line_no"], batches) if part is not None]
    return pl.concat(parts).unique().sort() if parts else pl.Series("line_no", [], dtype=pl.Int64)


def _paid_pairs(outcome: Any) -> pl.DataFrame:
    """The pairs besides the plain matches that pay a statement line of ours (``PAID_CLASSES``, with a line)."""
    return outcome.others.filter(pl.col("class").is_in(PAID_CLASSES) & pl.col("line_no").is_not_null())


def mismatched_pairs(outcome: Any, *, with_ids: bool = False) -> pl.DataFrame:
    """The ``MISMATCHED_CLASSES`` pairs of a statement line (or a split's lines) with one of ours, both succeeded:
    ``line_no`` (the first line), ``lines`` (how many statement lines), ``currency``, our ``net``, and ``banked``:
    what the bank booked for them less the case's delta (``with_delta``), which is the case's. For an
    ``amount_mismatch`` that is our net; a ``fee_mismatch`` adds the amounts' gap within the tolerance."""
    pairs = with_delta(outcome.others.filter(
        pl.col("class").is_in(MISMATCHED_CLASSES) & pl.col("line_no").is_not_null() & pl.col("our_id").is_not_null()
        & (pl.col("ours_status") == "succeeded") & (pl.col("theirs_status") == "succeeded")))
    return pairs.select("line_no", pl.col("batch_line_nos").list.len().fill_null(1).cast(pl.Int64).alias("lines"),
                        "currency", (pl.col("ours_amount") - pl.col("ours_fee").fill_null(0)).alias("net"),
                        (pl.col("theirs_amount") - pl.col("theirs_fee").fill_null(0) - pl.col("delta")).alias("banked"),
                        *(["our_id"] if with_ids else []))


def paid_our_nets(paying: pl.DataFrame) -> pl.DataFrame:
    """``line_no`` and ``net``: our net of every succeeded line of ours a statement line pays as ``PAID_CLASSES``
    (``_paying``), against that line (a batch credit's line for each line of ours it pays, a split's first line).
    A pair matched within a tolerance shows here what the channel owed, where the statement's line shows what
    the bank booked."""
    return paying.filter(pl.col("ours_status") == "succeeded").select("line_no", "net")


@dataclass(frozen=True)
class Payout:
    """What one bank account's lines in one currency post on import (``payouts_of``, ``post_payouts``)."""

    booked: int
    """What the bank booked: every line's net (their amount less the fee they state)."""
    banked: int
    """Of it, what the lines that paired with ours paid (less the deltas of the mismatched pairs' cases)."""
    cleared: int
    """What those lines take from ``channel_clearing:C``: the nets of the lines of ours they paid."""
    lines: int
    """How many statement lines paid ours."""

    @property
    def tolerance_difference(self) -> int:
        """What the bank booked beyond what the channel owed, for pairs matched within a tolerance."""
        return self.banked - self.cleared

    @property
    def unexplained(self) -> int:
        """What the bank booked that paid none of ours as owed: the cases' (missing in our ledger, duplicates,
        status and money mismatches), posted to ``suspense`` until they are resolved (recipe 9)."""
        return self.booked - self.banked


def _per_account(meta: Any, frame: pl.DataFrame, sums: list[str]) -> dict[tuple[str | None, str], list[int]]:
    """``sums`` of ``frame`` (with ``line_no`` and ``currency``) per (bank account of the line, currency)."""
    grouped = frame.with_columns(meta.accounts_of_lines(frame["line_no"]).alias("__account")).group_by(
        "__account", "currency").agg(pl.col(name).sum() for name in sums)
    return {(account, currency): [int(value) for value in values] for account, currency, *values in grouped.iter_rows()}


def payouts_of(lines: pl.DataFrame, meta: Any, paid: pl.Series, ours: pl.DataFrame,
               mismatched: pl.DataFrame | None = None) -> dict[tuple[str | None, str], Payout]:
    """Per (bank account, currency) of a bank statement, what its lines post (``Payout``): what the bank booked,
    what the ``paid`` lines paid and took from ``channel_clearing:C`` (our nets of the lines of ours they pay,
    ``ours``: ``paid_our_nets``), and what the ``mismatched`` pairs (``mismatched_pairs``) paid of our net. The
    accounts where nothing moves are left out."""
    succeeded = lines.filter(pl.col("status") == "succeeded").select(pl.col("line_no").cast(pl.Int64), "currency",
                                                                     LINE_NET.alias("net"))
    booked = _per_account(meta, succeeded, ["net"])
    owed = ours.group_by("line_no").agg(pl.col("net").sum().alias("ours"))
    rows = succeeded.filter(pl.col("line_no").is_in(paid.implode())).select(
        "line_no", pl.lit(1, pl.Int64).alias("lines"), "currency", pl.col("net").alias("banked")).join(
        owed, on="line_no", how="left").with_columns(pl.col("ours").fill_null(0))
    if mismatched is not None and mismatched.height:
        rows = pl.concat([rows, mismatched.with_columns(pl.col("net").alias("ours")).select(rows.columns)
                         .cast(rows.schema)])
    paying = _per_account(meta, rows, ["banked", "ours", "lines"])
    found = {}
    for key in sorted(booked.keys() | paying.keys(), key=lambda key: (key[0] or "", key[1])):
        banked, cleared, count = paying.get(key, [0, 0, 0])
        payout = Payout(booked.get(key, [0])[0], banked, cleared, count)
        if payout.booked or payout.banked or payout.cleared:
            found[key] = payout
    return found


def take_up_balances(session: Session, statement_id: str, run_id: str, channel: str, fmt: str, meta: Any,
                     now: Any) -> dict[str, list[dict[str, Any]]]:
    """A bank statement's balances, before its lines post (``post_payouts``), per account and currency it has.

    ``bank:<account>`` holds the opening balance of the account's earliest statement imported plus the lines of
    every statement imported, so once every statement up to a day is in, it stands at that day's closing balance
    (accounting.md's invariant), whatever the order they came in:

    - the account's first statement takes it up: its opening balance is posted, Dr ``bank:<account>``, Cr
      ``opening_balances`` (equity; the reverse for an overdrawn account), for what the ledger lacks of it (all of
      it on a new account, the difference on one whose earlier statements were imported before this rule);
    - a statement earlier than that one (its opening balance dated before, or the same day's page that closes
      where it opens), unless it opens where the account stands (which continues it), moves the take-up back to
      its own opening balance: the difference is posted the same way, as that one's opening balance held this
      one's lines, which now post themselves;
    - each answer says how the statement continues the ledger (``gap``): 0 when it opens where the statements
      imported so far left the account; otherwise what lies between: a statement's lines not imported yet, or
      minus the lines of a later statement imported first. Nothing is refused for it: the missing statement
      brings its lines when it comes.

    The account's row (``recon_bank_openings``) is locked first, so two imports of one account run one after
    the other; two taking up a new account at once meet at its primary key (the import runs again). Entries
    ``tr_rco_<run id>_<n>``. Returns per currency, what each account's statement found and posted."""
    firsts: dict[tuple[str, str], Any] = {}
    lasts: dict[tuple[str, str], Any] = {}
    for part in meta.parts:
        key = (statement_account_name(fmt, part.account, channel), part.currency)
        firsts.setdefault(key, part)
        lasts[key] = part
    found: dict[str, list[dict[str, Any]]] = {}
    for n, ((name, currency), part) in enumerate(sorted(firsts.items()), 1):
        closing = lasts[name, currency].closing
        where = (openings_table.c.account == name, openings_table.c.currency == currency)
        taken = session.execute(select(openings_table).where(*where).with_for_update()).first()
        account = ledger_repository.get_account(session, chart.account_id(name, currency))
        stands = 0 if account is None else ledger.balance_of(
            account.type, account.debits_posted, account.credits_posted, account.debits_pending,
            account.credits_pending).posted
        took_up, amount = None, 0
        gap = part.opening - stands
        if taken is None:
            took_up, amount, gap = "first", part.opening - stands, 0
            # First: another import taking up this account at the same moment meets the primary key here.
            session.execute(openings_table.insert().values(
                account=name, currency=currency, statement_id=statement_id, opening_balance=part.opening,
                opened_on=part.opened_on, created_at=now))
        elif part.opening != stands and _earlier(part, closing, taken):
            # A statement that opens where the account stands continues it, whatever its day: the next page of a
            # day that returns to the balance it started from is not the day's earlier page.
            took_up, amount, gap = "earlier", part.opening - taken.opening_balance, taken.opening_balance - closing
        entry_id = None
        if took_up is not None:
            if amount:
                entry_id = f"{OPENING_ENTRY_PREFIX}{run_id}_{n}"
                _post_opening(session, entry_id, run_id, channel, name, currency, amount, part.opening, stands)
            session.execute(openings_table.update().where(*where).values(
                statement_id=statement_id, opening_balance=part.opening, opened_on=part.opened_on,
                entry_id=entry_id or (taken.entry_id if taken is not None else None)))
        found.setdefault(currency, []).append({
            "account": name, "opening_balance": part.opening, "ledger_balance": stands, "took_up": took_up,
            "amount": amount, "entry_id": entry_id, "gap": gap})
    return found


def _earlier(part: Any, closing: int, taken: Any) -> bool:
    """Whether a statement (``part``, its first in the file; ``closing``, its last's closing balance) comes before
    the one an account was taken up at: its opening balance dated before, or on the same day closing where that
    one opens (the day's earlier page)."""
    if part.opened_on is None or taken.opened_on is None:
        return False
    return part.opened_on < taken.opened_on or (part.opened_on == taken.opened_on
                                                 and closing == taken.opening_balance
                                                 and part.opening != taken.opening_balance)


def _post_opening(session: Session, entry_id: str, run_id: str, channel: str, name: str, currency: str,
                  amount: int, opening: int, stood: int) -> None:
    """Dr ``bank:<account>`` ``amount``, Cr ``opening_balances`` (the other way round when negative)."""
    legs = postings.leg_postings(session, currency, [
        (name, "asset", ledger.DEBIT, amount, {}),
        (*OPENING_ACCOUNT, ledger.CREDIT, amount, {}),
    ])
    try:
        ledger.create_transfer(session, ledger.EntryRequest(
            postings=legs, id=entry_id, code=OPENING_CODE, reference=run_id,
            metadata={"reconciliation_id": run_id, "channel": channel, "account": name, "opening_balance": opening,
                      "ledger_balance": stood}))
    except LedgerError as error:
        raise type(error)(f"the opening balance of {name} in {currency} could not be posted: {error.detail}; "
                          "nothing was imported", errors=error.errors, **error.extra) from None


def post_payouts(session: Session, run_id: str, channel: str, fmt: str,
                 payouts: dict[tuple[str | None, str], Payout]) -> dict[str, list[dict[str, Any]]]:
    """Recipes 4 and 9 on import, per bank account and currency: Dr ``bank:<account>`` what the bank booked, Cr
    ``channel_clearing:C`` what the lines that paid ours took from it (the reverse when money goes back), Cr
    ``suspense`` what no line of ours explains (the cases': recipe 9, resolving one moves it from ``suspense``).
    When pairs matched within a tolerance, the bank booked a little more or less than the channel owed: the
    difference is the channel's charge, Cr ``channel_cost:C`` when more, Dr when less. So ``bank:<account>``
    moves by exactly the statement's lines, and the clearing account holds nothing of a line that was paid.
    Entry ids ``tr_rcb_<run id>_<n>``, in (account, currency) order, so an entry is written once.
    A posting the ledger refuses (an account closed, or in another currency) refuses the whole import: the
    error says so, and the caller's transaction rolls back, leaving nothing of the import."""
    posted: dict[str, list[dict[str, Any]]] = {}
    clearing_name, clearing_type = postings.clearing(channel)
    for n, ((account, currency), payout) in enumerate(payouts.items(), 1):
        entry_id, bank_name = f"{PAYOUT_ENTRY_PREFIX}{run_id}_{n}", statement_account_name(fmt, account, channel)
        metadata = {"reconciliation_id": run_id, "channel": channel, "account": bank_name, "lines": payout.lines}
        record = {"entry_id": entry_id, "account": bank_name, "amount": payout.cleared, "lines": payout.lines}
        for name in ("tolerance_difference", "unexplained"):
            if getattr(payout, name):
                metadata[name] = record[name] = getattr(payout, name)
        if payout.booked != payout.cleared:
            record["booked"] = payout.booked
        try:
            legs = postings.leg_postings(session, currency, [
                (bank_name, "asset", ledger.DEBIT, payout.booked, {}),
                (clearing_name, clearing_type, ledger.CREDIT, payout.cleared, {}),
                (*PAYOUT_DIFFERENCE_ACCOUNT(channel), ledger.CREDIT, payout.tolerance_difference, {}),
                (*UNEXPLAINED_ACCOUNT, ledger.CREDIT, payout.unexplained, {}),
            ])
            ledger.create_transfer(session, ledger.EntryRequest(
                postings=legs, id=entry_id, code=PAYOUT_CODE, reference=run_id, metadata=metadata))
        except LedgerError as error:
            raise type(error)(f"the payout of the bank statement's {payout.lines} line(s) paying ours in {currency} "
                              f"could not be posted to {bank_name} from {clearing_name}: {error.detail}; "
                              "nothing was imported", errors=error.errors, **error.extra) from None
        posted.setdefault(currency, []).append(record)
    return posted


def reconcile_file(engine: Engine, *, channel: str, path: Path, fmt: str, statement_date: date,
                   mapping: str | dict[str, Any] | None = None, internal: pl.DataFrame | None = None,
                   actor: audit.Actor | str = "cli", file_name: str | None = None,
                   progress: ProgressFn = _no_progress, approval_threshold: int | None = None,
                   _rematched: bool = False) -> dict[str, Any]:
    """Import ``path`` as ``channel``'s statement of ``statement_date`` and reconcile it; returns the run's view.

    ``internal`` replaces our lines read from the database (the benchmark's generated ledger side).
    ``approval_threshold`` bounds what an ``auto_resolve`` rule may post (None: the configured one)."""
    started = time.perf_counter()
    check_statement_date(statement_date)  # before the file is read: nothing is imported
    who = actor if isinstance(actor, audit.Actor) else audit.Actor(type="system", id=actor)
    rules, custom_mapping = transact(engine, lambda s: rules_for(s, channel))
    chosen_mapping = mapping if mapping is not None else custom_mapping
    def known(sha: str) -> bool:
        return transact(engine, lambda s: _known(s, sha))

    parsed, (sha256, size) = _parse_beside_digest(path, fmt, channel, chosen_mapping, rules.timezone, progress,
                                                  known)
    period = statement_period(parsed.meta, fmt, statement_date)
    fingerprint = bank_fingerprint(fmt, statement_date, parsed.meta, parsed.lines.height, reported_of(parsed.lines))
    identity = parsed.meta.identity if fmt in BANK_FORMATS else None
    refusal = transact(engine, lambda s: _earlier_import(s, parsed.meta, fingerprint, identity))
    if refusal is not None:  # refused before the work of matching it
        raise refusal
    progress("load", 0, 1)
    given_internal = internal
    if internal is None:
        internal = transact(engine, lambda s: load_internal(s, channel, period, rules))
    ours = internal  # bound for the closure: ``internal`` is reassigned above
    settled = transact(engine, lambda s: settled_before(s, channel, fmt, period, ours))
    progress("load", 1, 1)
    progress("match", 0, 1)
    outcome = run_match(parsed.lines, internal, rules, period, settled, bank_statement=fmt in BANK_FORMATS)
    progress("match", 1, 1)
    classes = _all_classes(outcome)
    discrepancies = with_accounts(with_delta(outcome.others.filter(pl.col("class") != "matched")), parsed.meta)
    clearing = clearing_of(parsed.lines, internal, period)
    # A channel's statement is its report, not money arriving: only a bank statement posts (recipes 4 and 9).
    payouts: dict[tuple[str | None, str], Payout] = {}
    paid_now: list[tuple[str, int]] = []
    if fmt in BANK_FORMATS:
        paying, mismatched = _paying(outcome), mismatched_pairs(outcome, with_ids=True)
        payouts = payouts_of(parsed.lines, parsed.meta, paid_lines(outcome), paid_our_nets(paying), mismatched)
        paid_now = paid_ours(paying, mismatched)
    mapping_name = chosen_mapping if isinstance(chosen_mapping, str) else ("custom" if chosen_mapping else None)

    def work(session: Session) -> str:
        statement_id, run_id, now = new_id("stm"), new_id("rec"), clock.now()
        meta = parsed.meta
        # First in the transaction: another import of this statement saved while this one matched is refused
        # here by the unique indexes, before anything else is written (``_raced`` says which).
        session.execute(statements.insert().values(
            id=statement_id, sha256=sha256, channel=channel, format=fmt, mapping=mapping_name,
            file_name=(file_name or path.name)[:255], size_bytes=size, line_count=parsed.lines.height,
            statement_date=statement_date, first_day=meta.first_day, last_day=meta.last_day,
            account=meta.account, currency=meta.currency, opening_balance=meta.opening_balance,
            closing_balance=meta.closing_balance, imported_by=f"{who.type}:{who.id}", imported_at=now,
            fingerprint=fingerprint, bank_account=identity and identity.account,
            bank_statement_number=identity and identity.number,
            bank_statement_sequence=identity and identity.sequence,
            bank_statement_closed_on=identity and identity.closed_on))
        taken = take_up_balances(session, statement_id, run_id, channel, fmt, meta, now) \
            if fmt in BANK_FORMATS else {}
        posted = post_payouts(session, run_id, channel, fmt, payouts)
        figures = {currency: dict(values) for currency, values in clearing.items()}
        for key, found in ((OPENING_KEY, taken), (PAYOUTS_KEY, posted)):
            for currency, entries in found.items():
                figures.setdefault(currency, {"expected": 0, "reported": 0, "difference": 0})[key] = entries
        if fmt in BANK_FORMATS:
            for currency, values in figures.items():
                values[SUSPENSE_KEY] = sum(p.unexplained for (_account, paid_in), p in payouts.items()
                                           if paid_in == currency)
        session.execute(runs.insert().values(
            id=run_id, statement_id=statement_id, channel=channel, statement_date=statement_date,
            rules_json=rules.model_dump_json(), classes_json=orjson.dumps(classes).decode(),
            statement_lines=parsed.lines.height, internal_lines=internal.height, case_count=discrepancies.height,
            clearing_json=orjson.dumps(figures).decode(),
            duration_ms=int((time.perf_counter() - started) * 1000), created_by=f"{who.type}:{who.id}",
            created_at=now))
        if paid_now:  # each line paid once: another import paying one of them meets the primary key
            session.execute(paid_table.insert(), [{"our_id": our_id, "reconciliation_id": run_id, "line_no": line_no,
                                                   "created_at": now} for our_id, line_no in paid_now])
        save_cases(session, run_id, channel, discrepancies, now, progress)
        from clearhouse.reconciliation import cases as case_service

        expired: case_service.Expired = []
        resolved = [] if fmt in case_service.BANK_FORMATS else case_service.supersede(
            session, run_id, channel, statement_date, now, expired)
        resolved += case_service.settle_timing(session, run_id, channel, outcome.with_lines, now, expired)
        resolved += case_service.settle_paid(session, run_id, channel, {our_id for our_id, _line in paid_now}, now,
                                             expired)
        resolved += case_service.apply_rules(session, run_id, rules, now, approval_threshold, expired)
        case_service.record_resolutions(session, resolved, expired)
        audit.record(session, who, "recon.import", "reconciliation", run_id,
                     changes={"channel": channel, "statement_date": statement_date.isoformat(), "sha256": sha256,
                              "lines": parsed.lines.height, "cases": discrepancies.height,
                              "payout_entries": [p["entry_id"] for paid in posted.values() for p in paid],
                              "opening_entries": [t["entry_id"] for found in taken.values() for t in found
                                                  if t["entry_id"]],
                              "balance_gaps": {f"{t['account']} {currency}": t["gap"]
                                               for currency, found in taken.items() for t in found if t["gap"]}})
        return run_id

    progress("save", 0, 1)
    for attempt in (1, 2):
        try:
            run_id = transact(engine, work)
            break
        except IntegrityError as error:  # rolled back whole: nothing of this import is written
            if paid_table.name in str(error.orig) and not _rematched:
                # Another bank statement paid some of these lines while this one matched: match again, so
                # that they are duplicates here and their money is not posted twice.
                return reconcile_file(engine, channel=channel, path=path, fmt=fmt, statement_date=statement_date,
                                      mapping=mapping, internal=given_internal, actor=actor, file_name=file_name,
                                      progress=progress, approval_threshold=approval_threshold, _rematched=True)
            violated = _violated(error)
            refusal = transact(engine, lambda s, violated=violated: _raced(s, violated, sha256, parsed.meta,
                                                                           fingerprint, identity))
            if refusal is not None:
                raise refusal from error
            if violated is not None or attempt == 2:
                raise
            # No rule of the statements: most likely a ledger account the payout opens (``bank:<account>``)
            # opened at the same moment by another transaction. It is there now; the import runs once more.
    progress("save", 1, 1)
    return transact(engine, lambda s: run_view(s, run_id))


def _parse_beside_digest(path: Path, fmt: str, channel: str, mapping: Any, calendar: str, progress: ProgressFn,
                         known: Callable[[str], bool]) -> tuple[Any, tuple[str, int]]:
    """The parsed statement and the file's SHA-256 and size, the digest taken on a second thread while
    the file is parsed (hashlib lets go of the GIL for large buffers). A file imported before (``known``)
    is refused as such, whether it parses or not."""

    def digest() -> tuple[str, int]:
        found = file_digest(path)
        progress("hash", 1, 1)
        return found

    progress("hash", 0, 1)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="recon-digest") as pool:
        hashed = pool.submit(digest)
        progress("parse", 0, 1)
        try:
            parsed = parse(path, fmt, channel, mapping, calendar)
        except (StatementInvalid, UnknownStatementFormat):
            sha256 = hashed.result()[0]
            if known(sha256):
                raise _already_imported(sha256) from None
            raise
        progress("parse", 1, 1)
        sha256, size = hashed.result()
    if known(sha256):
        raise _already_imported(sha256)
    return parsed, (sha256, size)


def bank_fingerprint(fmt: str, statement_date: date, meta: Any, lines: int, reported: dict[str, int]) -> str | None:
    """A bank statement's fingerprint (``models.statement_fingerprint``); None for a channel's statement.

    Bank statements of a day add up (two accounts, two pages), so a second file of the day is no re-issue:
    the same statement imported again (as CR LF and as LF, or as MT940 and as camt.053) would count its lines
    and its money in ``received`` twice. The file's bytes cannot tell, so what the bank says of the statement
    does: its account, currency, opening and closing balances, the days of its lines, how many there are and
    what they add up to per currency (``reported``)."""
    if fmt not in BANK_FORMATS:
        return None
    return statement_fingerprint(account=meta.account, currency=meta.currency, opening_balance=meta.opening_balance,
                                 closing_balance=meta.closing_balance, first_day=meta.first_day,
                                 last_day=meta.last_day, lines=lines, net=reported, statement_date=statement_date)


def _earlier_import(session: Session, meta: Any, fingerprint: str | None,
                    identity: BankStatementIdentity | None) -> StatementAlreadyImported | None:
    """The refusal of a bank statement imported already (None: it was not): the same statement, by its
    fingerprint, else another statement under the same bank's number (``BankStatementIdentity``)."""
    if fingerprint is not None:
        run_id = _run_of(session, statements.c.fingerprint == fingerprint)
        if run_id is not None:
            earlier = session.execute(select(statements.c.bank_statement_number, statements.c.bank_statement_sequence)
                                      .join(runs, runs.c.statement_id == statements.c.id)
                                      .where(runs.c.id == run_id)).one()
            return _bank_statement_refused(run_id, meta, earlier)
    if identity is not None:
        run_id = _run_of(session, *_identity_is(identity))
        if run_id is not None:
            return _bank_number_used(run_id, identity)
    return None


def _identity_is(identity: BankStatementIdentity) -> list[Any]:
    return [statements.c.bank_account == identity.account, statements.c.bank_statement_number == identity.number,
            statements.c.bank_statement_sequence == identity.sequence,
            statements.c.bank_statement_closed_on == identity.closed_on]


def _run_of(session: Session, *where: Any) -> str | None:
    """The (earliest) reconciliation of a statement that fits ``where``."""
    return session.execute(select(runs.c.id).join(statements, statements.c.id == runs.c.statement_id).where(*where)
                           .order_by(runs.c.created_at, runs.c.id).limit(1)).scalar()


SHA256_CONSTRAINT = "uq_recon_statements_sha256"
_SQLITE_UNIQUE = {
    ("sha256",): SHA256_CONSTRAINT,
    ("fingerprint",): FINGERPRINT_INDEX,
    ("bank_account", "bank_statement_number", "bank_statement_sequence", "bank_statement_closed_on"):
        BANK_STATEMENT_INDEX,
}
"""SQLite names the columns of a unique index an insert broke, not the index."""


def _violated(error: IntegrityError) -> str | None:
    """The name of the statements' unique constraint or index that ``error`` broke; None for any other error."""
    diag = getattr(error.orig, "diag", None)  # PostgreSQL (psycopg) names it
    if diag is not None:
        return getattr(diag, "constraint_name", None)
    message = str(error.orig)
    prefix = f"UNIQUE constraint failed: {statements.name}."
    if not message.startswith(prefix):
        return None
    named = message.split(":", 1)[1].split(",")
    columns = tuple(column.strip().removeprefix(f"{statements.name}.") for column in named)
    return _SQLITE_UNIQUE.get(columns)


def _raced(session: Session, violated: str | None, sha256: str, meta: Any, fingerprint: str | None,
           identity: BankStatementIdentity | None) -> StatementAlreadyImported | None:
    """The refusal of an import that another one of the same statement (or file) beat to the commit, naming
    the winner, as the check before matching would have said it; None when ``violated`` is no rule of
    ``recon_statements`` (the error is then no refusal, and goes on up)."""
    if violated == SHA256_CONSTRAINT:
        return _already_imported(sha256) if _known(session, sha256) else None
    if violated in (FINGERPRINT_INDEX, BANK_STATEMENT_INDEX):
        # Whichever index the database checked first, the answer is the check's: the same statement, else the number.
        return _earlier_import(session, meta, fingerprint, identity)
    return None


def _bank_statement_refused(run_id: str, meta: Any, earlier: Any) -> StatementAlreadyImported:
    """``earlier``: the earlier import's bank number and sequence (named: a file may number the same statement
    otherwise, and the operator looks for the one imported)."""
    number = earlier.bank_statement_number
    named = "" if number is None else f", statement number {number} (sequence {earlier.bank_statement_sequence})"
    own = meta.identity
    renumbered = "" if own is None or own.number == number else f"; this file numbers it {own.number}"
    return StatementAlreadyImported(f"this bank statement (account {meta.account}{named}, the same balances, days "
                                    f"and lines) was imported already, in reconciliation {run_id}{renumbered}")


def _bank_number_used(run_id: str, identity: BankStatementIdentity) -> StatementAlreadyImported:
    return StatementAlreadyImported(
        f"the bank's statement number {identity.number} (sequence {identity.sequence}) of account "
        f"{identity.account}, closing {identity.closed_on.isoformat()}, was already used by reconciliation "
        f"{run_id}, for a statement with other balances, days or lines: a bank statement is imported once, and "
        "one corrected or issued again under its number would count its money twice; nothing was imported")


def _known(session: Session, sha256: str) -> bool:
    return session.execute(select(statements.c.id).where(statements.c.sha256 == sha256)).first() is not None


def _already_imported(sha256: str) -> StatementAlreadyImported:
    return StatementAlreadyImported(f"this file (sha256 {sha256}) was imported already")


def _all_classes(outcome: Any) -> dict[str, dict[str, Any]]:
    """Every class with its count, its amount (over every currency, as it always was) and its amounts per
    currency (``amounts``, shown apart by ``_classes_view``)."""
    summary, amounts = outcome.summary(), outcome.amounts()
    return {name: {"count": int(summary[name]["count"]), "amount": int(summary[name]["amount"]),
                   "amounts": amounts[name]} for name in CLASSES}


def _classes_view(classes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``classes`` (count and amount per class, the shape they always had) and ``amounts_by_currency`` (per class
    with lines, its amounts per currency): a sum of CNY and USD is no amount of money, but readers of ``classes``
    compare its entries whole. A run saved before amounts were kept per currency has none."""
    return {"classes": {name: {"count": figures["count"], "amount": figures["amount"]}
                        for name, figures in classes.items()},
            "amounts_by_currency": {name: figures["amounts"] for name, figures in classes.items()
                                    if figures.get("amounts")}}


def save_cases(session: Session, run_id: str, channel: str, discrepancies: pl.DataFrame, now: Any,
               progress: ProgressFn = _no_progress, chunk: int = 20_000) -> None:
    """Every discrepancy as an open case, inserted in chunks (a large day holds tens of
    thousands) through ``bulk_insert``: COPY on PostgreSQL, multi-row INSERTs on SQLite.

    The cases go in by class with ascending ids, so three of the table's four b-trees
    (the key, the run's cases by class, the open queue) are appended to, not split. A case on
    another bank account than the statement's (``with_accounts``) gets an ``account`` event naming it:
    its adjustment posts to that account (cases have no column for it)."""
    total = discrepancies.height
    ordered = discrepancies.sort("class", maintain_order=True)
    frame = ordered.select("class", *_CASE_COLUMNS[:-1], pl.col("detail").fill_null("").str.slice(0, 500), "delta")
    columns = ("id", "reconciliation_id", "channel", "state", "created_at", "updated_at",
               "class", *_CASE_COLUMNS, "delta")
    fixed = (run_id, channel, "open", now, now)
    case_ids = sorted(new_ids("rcs", total))
    ids = iter(case_ids)
    done = 0
    for part in frame.iter_slices(chunk):
        rows = [(next(ids), *fixed, *row) for row in part.iter_rows()]
        bulk_insert(session, cases, columns, rows)
        done += len(rows)
        progress("save", done, total)
    if "account" in ordered.columns:
        elsewhere = [(case_id, account) for case_id, account in zip(case_ids, ordered["account"], strict=True)
                     if account is not None]
        bulk_insert(session, case_events, ("id", "case_id", "type", "actor", "body", "detail_json", "created_at"), [
            (event_id, case_id, ACCOUNT_EVENT, SYSTEM, f"on bank account {account}",
             orjson.dumps({"account": account}).decode(), now)
            for event_id, (case_id, account) in zip(sorted(new_ids("rce", len(elsewhere))), elsewhere, strict=True)])


def run_view(session: Session, run_id: str) -> dict[str, Any]:
    row = session.execute(select(runs).where(runs.c.id == run_id)).first()
    if row is None:
        raise ReconciliationNotFound(f"no reconciliation {run_id}")
    statement = session.execute(select(statements).where(statements.c.id == row.statement_id)).one()
    states = dict(session.execute(select(cases.c.state, func.count()).where(cases.c.reconciliation_id == run_id)
                                  .group_by(cases.c.state).order_by(cases.c.state)).all())
    clearing = orjson.loads(row.clearing_json)
    return {
        "id": row.id, "object": "reconciliation", "channel": row.channel, "statement_date": row.statement_date,
        "statement": {
            "id": statement.id, "file_name": statement.file_name, "format": statement.format,
            "mapping": statement.mapping, "sha256": statement.sha256, "size_bytes": statement.size_bytes,
            "lines": statement.line_count, "account": statement.account, "currency": statement.currency,
            "opening_balance": statement.opening_balance, "closing_balance": statement.closing_balance,
            "first_day": statement.first_day, "last_day": statement.last_day,
            "bank_statement": None if statement.bank_statement_number is None else {
                "account": statement.bank_account, "number": statement.bank_statement_number,
                "sequence": statement.bank_statement_sequence, "closed_on": statement.bank_statement_closed_on},
        },
        **_classes_view(orjson.loads(row.classes_json)), "statement_lines": row.statement_lines,
        "internal_lines": row.internal_lines, "case_count": row.case_count, "case_states": states,
        "clearing": {currency: {name: value for name, value in figures.items()
                                if name not in (PAYOUTS_KEY, OPENING_KEY)} for currency, figures in clearing.items()},
        "bank_balances": [{**taken, "currency": currency} for currency, figures in sorted(clearing.items())
                          for taken in figures.get(OPENING_KEY, [])],
        "rules": orjson.loads(row.rules_json),
        "duration_ms": row.duration_ms, "created_by": row.created_by, "created_at": row.created_at,
    }


def list_runs(session: Session, *, channel: str | None, limit: int,
              starting_after: str | None) -> tuple[list[str], bool]:
    query = select(runs.c.id).order_by(runs.c.id.desc()).limit(limit + 1)
    if channel:
        query = query.where(runs.c.channel == channel)
    if starting_after:
        query = query.where(runs.c.id < starting_after)
    ids = [r.id for r in session.execute(query)]
    return ids[:limit], len(ids) > limit


def dry_run(engine: Engine, *, channel: str, path: Path, fmt: str, statement_date: date, rules: Any,
            mapping: str | dict[str, Any] | None = None) -> dict[str, Any]:
    """What ``rules`` would make of this file, without saving anything (the file is not even recorded)."""
    check_statement_date(statement_date)
    parsed = parse(path, fmt, channel, mapping, rules.timezone)
    period = statement_period(parsed.meta, fmt, statement_date)
    internal = transact(engine, lambda s: load_internal(s, channel, period, rules))
    settled = transact(engine, lambda s: settled_before(s, channel, fmt, period, internal))
    outcome = run_match(parsed.lines, internal, rules, period, settled, bank_statement=fmt in BANK_FORMATS)
    sample = with_accounts(with_delta(outcome.others.filter(pl.col("class") != "matched").head(100)), parsed.meta)
    return {"channel": channel, "statement_date": statement_date, "statement_lines": parsed.lines.height,
            "internal_lines": internal.height, **_classes_view(_all_classes(outcome)),
            "clearing": clearing_of(parsed.lines, internal, period),
            "discrepancies": [_json_row(r) for r in sample.iter_rows(named=True)]}


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, date) else v) for k, v in row.items()}


def new_event(session: Session, case_id: str, type_: str, actor: str, *, body: str | None = None,
              detail: dict[str, Any] | None = None, now: Any = None) -> None:
    session.execute(case_events.insert().values(
        id=new_id("rce"), case_id=case_id, type=type_, actor=actor, body=body,
        detail_json=orjson.dumps(detail or {}).decode(), created_at=now or clock.now()))
