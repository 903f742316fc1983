"""The matching engine: a statement's lines against our own lines, in three passes, on Polars frames.

``match(statement, internal, rules, period=(first, last))`` is a pure function: no database, no clock.
``statement`` is ``frames.STATEMENT_SCHEMA`` (the channel's or bank's lines for the days ``first`` to
``last``), ``internal`` is ``frames.INTERNAL_SCHEMA`` (our lines booked in the period widened by
``max(date_window_days, batch_window_days)`` on each side, so a line the channel books a day apart is
still there to be paired). The answer is ``MatchOutcome.results`` (``RESULT_SCHEMA``): every statement
line and every one of our lines booked in the period is in exactly one row (the lines of a batch share
theirs), and ``summary()`` counts them per class. ``results`` is built on demand from ``others`` (every
row but the plain pass-1 matches) and ``plain`` (those matches as row positions); a run saves ``others``.

Pass 1, exact (one hash join over the whole frames; everything after it sees only what is left):
  the statement's ``our_ref`` equals ours; for statement lines still unpaired, its ``channel_ref``
  equals the channel id we stored. Several statement lines with one key: when they share currency
  and status and their amounts add up to ours, they are one many-to-one match (pass 3: a split
  capture, a partial settlement; ``line_no`` is the first, ``batch_line_nos`` all of them); otherwise
  the best line (equal amount first, then the lowest ``line_no``) is the pair and every other line
  with that key is a ``duplicate`` (it carries the ``our_id`` it repeats). A statement line whose
  ``channel_ref`` names one of ours that pass 1 paired already is a ``duplicate`` too; by the
  ``channel_ref`` only lines of one direction pair (money in, or money back: a channel may give a
  refund its payment's id). When one statement line finds several of ours (we reused a reference), it
  takes the one with the same amount, then the lowest ``our_id``; the others stay unpaired.
  Only lines of one currency pair: a line in another currency than the one of ours it names is not
  its pair (its amount is other money, not a difference a tolerance could explain), so the line is
  ``missing_in_ledger`` in its currency and ours, unless another line pairs it, unpaired in ours. By our
  reference too, only lines of one direction pair: a bank's return of a payment carries its reference.
  Our lines that ``settled`` marks (an earlier statement reconciled them: ``service.settled_earlier``)
  are paired already: a line that names one is a ``duplicate``, pass 2 does not offer them, and one of the
  period that no line names is not ``missing_in_statement`` (the channel put it on an earlier day).

A pair (from any pass) is then classified, first rule that applies:
  ``status_mismatch`` (we say failed and the channel succeeded, or the reverse), ``amount_mismatch``
  (|theirs - ours| beyond the amount tolerance: the larger of ``amount_tolerance_minor`` and
  ``amount_tolerance_percent`` of our amount; exactly at the tolerance is within), ``fee_mismatch``
  (|theirs - ours| beyond ``fee_tolerance_minor``; a statement without a fee for the line does not
  count), ``timing`` (booked on different days: the pair crosses a day boundary), else ``matched``.
  ``difference`` is theirs - ours for the amount and fee mismatches.

What a statement line's amount is compared with (passes 1 and 2, and a split's lines added up): our gross
  amount, for a channel's line (its amount is gross, its fee beside it, stated or not) and for a bank's line that
  states its fee (a camt.053 entry with ``Chrgs``: the parser adds charges included in the booked amount back,
  so its amount is gross too); our net (``amount - fee``, what ``channel_clearing:C`` holds for the line) for a
  bank's line that states no fee (``bank_statement``: every MT940 line, a camt.053 entry without charges), which
  is the money the channel paid into the bank, its fee kept back. The tolerance is of the amount compared with,
  and so is ``difference``: for such a line it is their net - our net, the case's delta.

Pass 2, fuzzy (only what pass 1 left; settlement lines are kept for pass 3): same currency, amount
  within the amount tolerance, booked at most ``date_window_days`` apart, and a reference similarity
  of at least ``reference_similarity``: RapidFuzz's normalized Indel similarity, the best of the
  statement's ``our_ref`` against our ``our_ref``, its ``channel_ref`` against our ``channel_ref``, and
  its free-text ``description`` against our ``our_ref`` (partial alignment, the reference inside a
  sentence). Candidates come from a range join on the amount over the small residue. Pairs are made
  one to one, best similarity first, ties by the smaller amount difference, then ``line_no``, then
  ``our_id``, so the answer never depends on row order.

Pass 3, batch (if ``batch_matching``): an unpaired statement line of kind ``settlement`` (or any
  unpaired credit that no single line matched, then against days of at least two lines: one line
  would be a match on the amount alone, which pass 2 refused) whose amount, or amount less the fee it states, equals
  the net (``amount - fee``) sum of ALL our unpaired succeeded lines of one booking day, in its
  currency, between ``batch_window_days`` before the line and the line's own day. Every one of those
  lines is ``matched`` with pass 3 and the credit's ``line_no``, carrying its own amount and fee as its
  share. Whole booking days only, the nearest day first, statement lines in ``line_no`` order, each day
  taken once: there is no subset-sum search (it is exponential, and a channel that pays part of a day
  pays it in lines that pass 1 can pair).

Leftovers: statement lines are ``missing_in_ledger``. Our succeeded lines booked inside the period
are ``timing`` when they became final (``booked_at``) within ``timing_cutoff_minutes`` of the end of
the period's last day in the channel's ``timezone`` (the channel will book them on the next
statement), else ``missing_in_statement``. Our lines outside the period and our failed lines that
nobody claims are not reported.

Performance: pass 1 is one hash join of 64-bit hashes of the two reference columns (the pairs checked
with a second hash), ``bincount`` over the row positions to find repeated keys, and no sort. The clean
one-to-one pairs (nearly all) are classified on numpy copies of the compared columns gathered by
position, status and currency as exact integer codes; they stay row positions (``PlainMatches``) and
only the pairs that are not plain matches are built as rows. Passes 2 and 3 and every detail sentence
run on the residue only. 10M x 10M lines with 0.1% discrepancies of every class: about 4 s on 2 cores
(``MatchOutcome.seconds`` per pass).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np
import polars as pl
from rapidfuzz import fuzz, process

from clearhouse.kit.money import Currency, UnknownCurrency
from clearhouse.reconciliation.models import CLASSES
from clearhouse.reconciliation.rules import MatchRules
from clearhouse.reconciliation.sources import day_bounds

RESULT_SCHEMA: dict[str, pl.DataType] = {
    "class": pl.String(),
    "pass_no": pl.Int8(),  # 1 exact, 2 fuzzy, 3 batch or split; null when unmatched
    "our_id": pl.String(),
    "our_ref": pl.String(),
    "channel_ref": pl.String(),
    "line_no": pl.Int64(),  # the statement line; null when the statement has none
    "batch_line_nos": pl.List(pl.Int64()),  # the several statement lines of a many-to-one match
    "ours_amount": pl.Int64(),
    "theirs_amount": pl.Int64(),
    "ours_fee": pl.Int64(),
    "theirs_fee": pl.Int64(),
    "currency": pl.String(),
    "ours_status": pl.String(),
    "theirs_status": pl.String(),
    "ours_booked_on": pl.Date(),
    "theirs_booked_on": pl.Date(),
    "difference": pl.Int64(),  # theirs - ours for amount and fee mismatches
    "detail": pl.String(),  # a sentence for people; null on plain pass-1 matches
}

# The working columns: the statement's side ...
_THEIRS: dict[str, pl.DataType] = {
    "line_no": pl.Int64(), "t_our_ref": pl.String(), "t_channel_ref": pl.String(), "t_kind": pl.String(),
    "theirs_status": pl.String(), "theirs_amount": pl.Int64(), "theirs_fee": pl.Int64(),
    "t_currency": pl.String(), "theirs_booked_on": pl.Date(), "t_description": pl.String(),
    "t_net": pl.Boolean(),  # a bank's line that states no fee: the money received, compared with our net
}
# ... and ours (``row`` is our line's position, a cheap integer key).
_OURS: dict[str, pl.DataType] = {
    "row": pl.UInt32(), "our_id": pl.String(), "our_ref": pl.String(), "channel_ref": pl.String(),
    "ours_status": pl.String(), "ours_amount": pl.Int64(), "ours_fee": pl.Int64(), "currency": pl.String(),
    "ours_booked_on": pl.Date(), "booked_at": pl.Datetime("us", "UTC"),
}


@dataclass(frozen=True)
class PlainMatches:
    """The pass-1 pairs that are plainly ``matched`` (nearly every line of a day), kept as row positions.

    Ten million result rows of strings would cost seconds and gigabytes to build and nobody reads
    them: a run saves and shows only what is not matched. ``rows()`` builds them when asked."""

    theirs: pl.DataFrame  # the statement's working columns (``_THEIRS``)
    ours: pl.DataFrame  # ours (``_OURS``)
    lines: np.ndarray  # statement positions, ascending
    our_rows: np.ndarray  # our positions, beside them
    amount: int  # the sum of our absolute amounts
    amounts: dict[str, int] = field(default_factory=dict)  # the same per currency

    @property
    def count(self) -> int:
        return int(self.lines.size)

    def rows(self) -> pl.DataFrame:
        """``RESULT_SCHEMA`` rows, in statement order."""
        if not self.count:
            return pl.DataFrame(schema=RESULT_SCHEMA)
        pairs = pl.concat([self.theirs[self.lines], self.ours[self.our_rows]], how="horizontal")
        return _emit(pairs.with_columns(pl.lit("matched").alias("class")), pass_no=1, detail=False,
                     both_sides=True)


@dataclass(frozen=True)
class MatchOutcome:
    others: pl.DataFrame  # RESULT_SCHEMA: every row but the plain pass-1 matches
    plain: PlainMatches
    seconds: dict[str, float] = field(default_factory=dict, compare=False)  # time per pass, for benchmarks

    @property
    def results(self) -> pl.DataFrame:
        """Every row (``RESULT_SCHEMA``): the plain matches built out, then the others."""
        return pl.concat([self.plain.rows(), self.others], rechunk=False)

    def summary(self) -> dict[str, dict[str, int]]:
        """Per class: how many rows and the sum of their absolute amounts (minor units, all currencies: see
        ``amounts`` for them apart).

        The amount of a row is our amount where we have the line; the statement's for ``missing_in_ledger``
        and ``duplicate`` (the repeated money is theirs)."""
        found: dict[str, dict[str, int]] = {name: {"count": 0, "amount": 0} for name in CLASSES}
        for name, _currency, count, total in self._per_currency():
            found[name]["count"] += count
            found[name]["amount"] += total
        found["matched"]["count"] += self.plain.count
        return found

    def amounts(self) -> dict[str, dict[str, int]]:
        """Per class: the sum of its rows' absolute amounts (as ``summary``) per currency, minor units: one sum
        over CNY and EUR would add different money."""
        found: dict[str, dict[str, int]] = {name: {} for name in CLASSES}
        for name, currency, _count, total in self._per_currency():
            found[name][currency] = found[name].get(currency, 0) + total
        return found

    def _per_currency(self) -> list[tuple[str, str, int, int]]:
        """(class, currency, rows, sum of their absolute amounts), the plain matches' rows counted apart."""
        theirs_only = pl.col("class").is_in(["missing_in_ledger", "duplicate"])
        amount = pl.when(theirs_only).then(pl.col("theirs_amount")).otherwise(
            pl.coalesce("ours_amount", "theirs_amount")).abs()
        grouped = self.others.group_by("class", "currency").agg(pl.len().alias("count"), amount.sum().alias("amount"))
        rows = [("matched", currency, 0, total) for currency, total in self.plain.amounts.items()]
        rows += [(name, currency, int(count), int(total or 0)) for name, currency, count, total
                 in grouped.select("class", "currency", "count", "amount").iter_rows()]
        return sorted(rows, key=lambda row: (row[0], row[1] or ""))

    def with_lines(self, our_ids: list[str]) -> set[str]:
        """Those of ``our_ids`` that a statement line of this run paired (any class but ``duplicate``: a line that
        repeats one of ours paired elsewhere is not its line arriving)."""
        wanted = pl.Series(sorted(set(our_ids)), dtype=pl.String).implode()
        found = set(self.others.filter(pl.col("line_no").is_not_null() & pl.col("our_id").is_in(wanted)
                                       & (pl.col("class") != "duplicate"))["our_id"])
        named = np.flatnonzero(self.plain.ours["our_id"].is_in(wanted).to_numpy())
        if named.size:
            paired = np.zeros(self.plain.ours.height, dtype=bool)
            paired[self.plain.our_rows] = True
            found.update(self.plain.ours["our_id"].gather(named[paired[named]]).to_list())
        return found


def match(statement: pl.DataFrame, internal: pl.DataFrame, rules: MatchRules, *,
          period: tuple[date, date], settled: np.ndarray | None = None, bank_statement: bool = False) -> MatchOutcome:
    """Pair ``statement`` with ``internal`` under ``rules`` for the days ``period`` (first, last).

    ``settled`` (a flag per line of ``internal``, or None) marks our lines that an earlier statement of the
    channel reconciled already: a statement line that names one repeats it (a ``duplicate``).
    ``bank_statement``: the statement is a bank's (MT940, camt.053), whose line that states no fee is the money
    the bank received, net of the channel's fee: it is compared with our net (module docstring)."""
    clock = _Stopwatch()
    theirs = statement.select(
        "line_no", pl.col("our_ref").alias("t_our_ref"), pl.col("channel_ref").alias("t_channel_ref"),
        pl.col("kind").alias("t_kind"), pl.col("status").alias("theirs_status"),
        pl.col("amount").alias("theirs_amount"), pl.col("fee").alias("theirs_fee"),
        pl.col("currency").alias("t_currency"), pl.col("booked_on").alias("theirs_booked_on"),
        pl.col("description").alias("t_description"),
        (pl.lit(bank_statement) & pl.col("fee").is_null()).alias("t_net"))
    ours = internal.with_row_index("row").select(
        "row", "our_id", "our_ref", "channel_ref", pl.col("status").alias("ours_status"),
        pl.col("amount").alias("ours_amount"), pl.col("fee").alias("ours_fee"), "currency",
        pl.col("booked_on").alias("ours_booked_on"), "booked_at")
    parts: list[pl.DataFrame] = []

    # Pass 1a: our reference. One hash join of the two key columns gives (statement row, our row) pairs;
    # counting each side's pairs separates the clean one-to-one pairs (almost all) from repeated keys.
    line_rows, our_rows = _equal_references(statement["our_ref"], internal["our_ref"])
    currencies = _equal_codes(statement["currency"], internal["currency"])  # hashed once, for both uses
    same = _same_currency(statement["currency"], internal["currency"], currencies, line_rows, our_rows)
    foreign = [] if same.all() else [
        _foreign(pl.concat([theirs[line_rows[~same]], ours[our_rows[~same]]], how="horizontal"))]
    # Money going the other way is not the pair either: a bank's return of a payment carries its reference.
    one_way = (statement["amount"].to_numpy()[line_rows] < 0) == (internal["amount"].to_numpy()[our_rows] < 0)
    if not one_way.all():
        foreign.append(_other_way(pl.concat([theirs[line_rows[same & ~one_way]], ours[our_rows[same & ~one_way]]],
                                            how="horizontal")))
        same &= one_way
    if foreign:
        line_rows, our_rows = line_rows[same], our_rows[same]
    pairs_per_line = np.bincount(line_rows, minlength=statement.height)
    pairs_per_ours = np.bincount(our_rows, minlength=internal.height)
    repeated = (pairs_per_line[line_rows] > 1) | (pairs_per_ours[our_rows] > 1)
    partner = np.full(statement.height, -1, dtype=np.int64)
    partner[line_rows[~repeated]] = our_rows[~repeated]
    clean_lines = np.flatnonzero(partner >= 0)  # statement order: the same input gives the same rows
    clean_ours = partner[clean_lines]
    earlier = np.zeros(internal.height, dtype=bool) if settled is None else np.asarray(settled, dtype=bool)
    if settled is not None and earlier[clean_ours].any():
        again = earlier[clean_ours]
        repeats = pl.concat([theirs[clean_lines[again]], ours[clean_ours[again]]], how="horizontal")
        parts.append(_emit(repeats.with_columns(pl.lit("duplicate").alias("class"), _repeat_sentence(True)),
                           pass_no=None, keep_pass=False))
        clean_lines, clean_ours = clean_lines[~again], clean_ours[~again]
    ours_paired = earlier.copy()
    ours_paired[clean_ours] = True
    tangled = pl.concat([theirs[line_rows[repeated]], ours[our_rows[repeated]]], how="horizontal")
    theirs_left = theirs.filter(pairs_per_line == 0)
    ours_left = ours.filter(pairs_per_ours == 0)
    del partner, line_rows, our_rows
    clock.lap("pass1_join")
    # The clean pairs are classified on the compared columns alone (integers: no string is copied for
    # millions of pairs); only the few that are not plain matches are then built whole, with sentences.
    compared = _compared_pairs(theirs, clean_lines, ours, clean_ours, currencies).with_columns(_class_code(rules))
    plain = (compared["class_code"] == 0).to_numpy()
    odd = ~plain
    if odd.any():
        wrong = pl.concat([theirs[clean_lines[odd]], ours[clean_ours[odd]]], how="horizontal")
        parts.append(_emit(_with_sentences(_classify(wrong, rules)), pass_no=1, detail=False, both_sides=True))
    plain_lines, plain_ours = clean_lines[plain], clean_ours[plain]
    plain_amounts = ours.select("currency", "ours_amount")[plain_ours].group_by("currency").agg(
        pl.col("ours_amount").abs().sum())
    amounts = {currency: int(amount) for currency, amount in plain_amounts.iter_rows()}
    matched = PlainMatches(theirs, ours, plain_lines, plain_ours, sum(amounts.values()), amounts)
    del clean_lines, clean_ours, compared, plain, odd
    clock.lap("pass1_classify")

    # Pass 1b: the channel's id, for what our reference did not pair. A line naming one of ours that is
    # paired already repeats it. Only lines of one currency and one direction pair: a channel gives a
    # refund its payment's id (Alipay's 支付宝交易号), and a refund we never booked is not that payment.
    by_channel = pl.DataFrame(schema={**_THEIRS, **_OURS, "taken": pl.Boolean(), "earlier": pl.Boolean()})
    wanted = theirs_left.filter(pl.col("t_channel_ref").is_not_null())
    if wanted.height:
        named = ours.filter(pl.col("channel_ref").is_in(wanted["t_channel_ref"].unique().implode()))
        if named.height:
            by_channel = wanted.join(named, left_on="t_channel_ref", right_on="channel_ref", how="inner",
                                     coalesce=False).filter(
                (pl.col("theirs_amount") < 0).eq_missing(pl.col("ours_amount") < 0))
            in_currency = pl.col("t_currency").eq_missing(pl.col("currency"))
            foreign.append(_foreign(by_channel.filter(~in_currency)))
            by_channel = by_channel.filter(in_currency)
            rows = by_channel["row"].to_numpy()
            by_channel = by_channel.with_columns(pl.Series("taken", ours_paired[rows], dtype=pl.Boolean),
                                                 pl.Series("earlier", earlier[rows], dtype=pl.Boolean))
    tangled_rows = tangled["row"].to_numpy()
    tangled = pl.concat([tangled.with_columns(pl.Series("taken", earlier[tangled_rows], dtype=pl.Boolean),
                                              pl.Series("earlier", earlier[tangled_rows], dtype=pl.Boolean)),
                         by_channel.select(*tangled.columns, "taken", "earlier")], how="vertical_relaxed")
    if tangled.height:
        pairs, splits, duplicates = _untangle(tangled)
        parts.append(_emit(_classify(pairs, rules), pass_no=1))
        parts.append(_emit(_classify(splits, rules), pass_no=3))
        parts.append(_emit(duplicates.with_columns(pl.lit("duplicate").alias("class")), pass_no=None,
                           keep_pass=False))
        used_lines = pl.concat([pairs["line_no"], splits["batch_line_nos"].explode(), duplicates["line_no"]])
        used_rows = pl.concat([pairs["row"], splits["row"]])
        theirs_left = theirs_left.filter(~pl.col("line_no").is_in(used_lines.implode()))
        ours_left = ours_left.filter(~pl.col("row").is_in(used_rows.implode()))
    clock.lap("pass1_repeats")

    # Pass 2: fuzzy, on the residue. Our lines settled by an earlier statement are not offered (pass 1
    # makes a line that names one a duplicate); a settlement credit of pass 3 may still pay them.
    offered = ours_left if settled is None else ours_left.filter(pl.Series(~earlier[ours_left["row"].to_numpy()]))
    fuzzy = _fuzzy_pairs(theirs_left.filter(pl.col("t_kind").ne_missing("settlement")), offered, rules)
    if fuzzy.height:
        parts.append(_emit(_classify(fuzzy, rules), pass_no=2))
        theirs_left = theirs_left.filter(~pl.col("line_no").is_in(fuzzy["line_no"].implode()))
        ours_left = ours_left.filter(~pl.col("row").is_in(fuzzy["row"].implode()))
    clock.lap("pass2")

    # Pass 3: a settlement credit against a whole booking day of ours. A bank's credit is money paid: it does not
    # pay a line a bank statement paid already (``settled`` is then exactly those); a channel's settlement report
    # may name lines an earlier report of the channel reconciled.
    if rules.batch_matching:
        payable = ours_left if settled is None or not bank_statement else ours_left.filter(
            pl.Series(~earlier[ours_left["row"].to_numpy()]))
        batched = _batches(theirs_left, payable, rules)
        if batched.height:
            parts.append(_emit(batched, pass_no=3))
            theirs_left = theirs_left.filter(~pl.col("line_no").is_in(batched["line_no"].unique().implode()))
            ours_left = ours_left.filter(~pl.col("row").is_in(batched["row"].implode()))
    clock.lap("pass3")

    # Leftovers.
    lonely = _complete(theirs_left).with_columns(pl.lit("missing_in_ledger").alias("class"))
    if foreign:
        # A line that named one of ours in another currency says so (the generic sentence would not).
        named = pl.concat(foreign).unique("line_no", keep="first", maintain_order=True)
        lonely = lonely.drop("detail").join(named, on="line_no", how="left", maintain_order="left")
    parts.append(_emit(lonely, pass_no=None, keep_pass=False))
    if settled is not None:  # paired by an earlier statement: nobody's claim is missing (the day before ours)
        ours_left = ours_left.filter(pl.Series(~earlier[ours_left["row"].to_numpy()]))
    parts.append(_emit(_unclaimed(ours_left, rules, period), pass_no=None, keep_pass=False))
    others = pl.concat([part for part in parts if part.height] or [pl.DataFrame(schema=RESULT_SCHEMA)],
                       rechunk=False)
    clock.lap("leftovers")
    return MatchOutcome(others, matched, clock.seconds)


_HASH_SEEDS = (20_261_123, 5_000_011)


def _equal_references(theirs: pl.Series, ours: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """Positions (statement row, our row) of every pair with the same non-null reference.

    The join is on a 64-bit hash (a hash join on integers is several times cheaper than on strings);
    the pairs found are then checked with a second hash of another seed, so a false pair would need
    two independent 64-bit collisions on the same two references."""
    first, second = _HASH_SEEDS
    left = pl.DataFrame({"line_row": np.arange(theirs.len(), dtype=np.uint32), "key": theirs.hash(first)})
    right = pl.DataFrame({"our_row": np.arange(ours.len(), dtype=np.uint32), "key": ours.hash(first)})
    if theirs.null_count():
        left = left.filter(theirs.is_not_null())
    if ours.null_count():
        right = right.filter(ours.is_not_null())
    found = left.join(right, on="key", how="inner")
    line_rows = found["line_row"].to_numpy().astype(np.int64)
    our_rows = found["our_row"].to_numpy().astype(np.int64)
    # Checked on numpy copies: gathering from a column in many chunks is several times slower.
    same = theirs.hash(second).to_numpy()[line_rows] == ours.hash(second).to_numpy()[our_rows]
    if not same.all():
        line_rows, our_rows = line_rows[same], our_rows[same]
    return line_rows, our_rows


def _with_sentences(classified: pl.DataFrame) -> pl.DataFrame:
    """``detail`` on the discrepancies only (few), written into place: the matched rows (most) stay null."""
    wrong = np.flatnonzero((classified["class"] != "matched").to_numpy())
    detail = pl.Series("detail", [], dtype=pl.String).extend_constant(None, classified.height)
    if wrong.size:
        sentences = _complete(classified[wrong]).select(_sentence().alias("detail"))["detail"]
        detail = detail.scatter(wrong, sentences)
    return classified.with_columns(detail)


# -- pairs -----------------------------------------------------------------------------------------------------------


_PAIR_CLASSES = ("matched", "status_mismatch", "amount_mismatch", "fee_mismatch", "timing")


def _class_code(rules: MatchRules) -> pl.Expr:
    """Each pair's class as a small code (its index in ``_PAIR_CLASSES``), first rule that applies
    (module docstring). Only equality is asked of status and currency, so it holds for their strings
    and for the integer codes ``_compared_pairs`` gives them alike."""
    amount_gap = pl.col("theirs_amount") - _ours_compared()
    fee_gap = pl.col("theirs_fee") - pl.col("ours_fee")
    within = ((amount_gap.abs() <= _amount_tolerance(rules, _ours_compared()))
              & (pl.col("t_currency") == pl.col("currency")))
    status_differs = pl.col("theirs_status") != pl.col("ours_status")
    fee_differs = fee_gap.abs().fill_null(0) > rules.fee_tolerance_minor
    return (pl.when(status_differs).then(1).when(~within).then(2).when(fee_differs).then(3)
            .when(pl.col("theirs_booked_on") != pl.col("ours_booked_on")).then(4).otherwise(0)
            ).cast(pl.UInt8).alias("class_code")


def _ours_compared() -> pl.Expr:
    """Our amount as a statement line's amount is compared with it: our net (amount less the channel cost we
    booked) for a bank's line that states no fee (``t_net``: the bank booked what the channel paid, net of its
    fee), else our gross amount (a channel's line, and a camt.053 entry with its charges added back)."""
    net = pl.col("t_net").fill_null(False)
    return pl.when(net).then(pl.col("ours_amount") - pl.col("ours_fee").fill_null(0)).otherwise(pl.col("ours_amount"))


def _amount_tolerance(rules: MatchRules, compared: pl.Expr | None = None) -> pl.Expr:
    """``MatchRules.amount_tolerance`` of each of our lines, in integers (no rounding, no float): of the amount of
    ours the line is compared with (``compared``, our gross amount by default).

    |ours| * p / 100 is taken in whole parts and a remainder, never as the product itself: our amount (up
    to 10^15) times the percentage's numerator (up to 10^6) would wrap around 64 bits. The tolerances are
    bounded by ``MAX_TOLERANCE_MINOR`` (rules.py), so that our amount plus or minus one fits as well."""
    fixed = pl.lit(rules.amount_tolerance_minor, pl.Int64)
    if not rules.amount_tolerance_percent:
        return fixed
    numerator, denominator = rules.amount_tolerance_percent.as_integer_ratio()
    # numerator <= scale (at most 100%), so (|ours| // scale) * numerator is at most |ours|, and the
    # remainder's product is below scale^2 = 10^12.
    scale = 100 * denominator
    ours = (pl.col("ours_amount") if compared is None else compared).abs()
    return pl.max_horizontal(fixed, (ours // scale) * numerator + (ours % scale) * numerator // scale)


def _classify(pairs: pl.DataFrame, rules: MatchRules) -> pl.DataFrame:
    """``class`` and ``difference`` of each pair (``_class_code``)."""
    coded = pairs.with_columns(_class_code(rules))
    names = pl.Series("class", _PAIR_CLASSES, dtype=pl.String).gather(coded["class_code"])
    difference = (pl.when(pl.col("class_code") == 2).then(pl.col("theirs_amount") - _ours_compared())
                  .when(pl.col("class_code") == 3).then(pl.col("theirs_fee") - pl.col("ours_fee")).otherwise(None))
    return coded.with_columns(names, difference.alias("difference")).drop("class_code")


_COMPARED = (("theirs_amount", "ours_amount"), ("theirs_fee", "ours_fee"), ("theirs_booked_on", "ours_booked_on"))
_EQUATED = (("theirs_status", "ours_status"), ("t_currency", "currency"))


def _compared_pairs(theirs: pl.DataFrame, lines: np.ndarray, ours: pl.DataFrame, rows: np.ndarray,
                    currencies: tuple[np.ndarray, np.ndarray] | None) -> pl.DataFrame:
    """The columns ``_class_code`` compares, for the pairs (``theirs`` row ``lines[i]``, ``ours`` row ``rows[i]``):
    numpy copies gathered by position, status and currency as integer codes (``_equal_codes``; the
    currencies' are given, computed once for pass 1).

    A compared column with nulls (a statement without fees) takes the slower way: the columns gathered as they are."""
    columns: dict[str, np.ndarray] = {}
    for left, right in _COMPARED:
        left_values, right_values = _numbers(theirs[left]), _numbers(ours[right])
        if left_values is None or right_values is None:
            return _gathered_pairs(theirs, lines, ours, rows)
        columns[left], columns[right] = left_values[lines], right_values[rows]
    for left, right in _EQUATED:
        codes = currencies if left == "t_currency" else _equal_codes(theirs[left], ours[right])
        if codes is None:
            return _gathered_pairs(theirs, lines, ours, rows)
        columns[left], columns[right] = codes[0][lines], codes[1][rows]
    # Every line here states its fee (the fee column has no null), so none is a bank's net line (``t_net``).
    columns["t_net"] = np.zeros(lines.size, dtype=bool)
    return pl.DataFrame(columns)


def _gathered_pairs(theirs: pl.DataFrame, lines: np.ndarray, ours: pl.DataFrame, rows: np.ndarray) -> pl.DataFrame:
    needed_theirs = [left for left, _right in (*_COMPARED, *_EQUATED)] + ["t_net"]
    needed_ours = [right for _left, right in (*_COMPARED, *_EQUATED)]
    return pl.concat([theirs.select(needed_theirs)[lines], ours.select(needed_ours)[rows]], how="horizontal")


def _numbers(column: pl.Series) -> np.ndarray | None:
    """The column's integers (a date's day number) as one numpy array; None when it has nulls."""
    if column.null_count():
        return None
    return column.to_physical().to_numpy()


def _equal_codes(left: pl.Series, right: pl.Series) -> tuple[np.ndarray, np.ndarray] | None:
    """Integer codes of two string columns, equal exactly where the strings are equal.

    The codes are 64-bit hashes; the few distinct values on either side (statuses, currencies) are
    checked to have distinct hashes, so equality of codes is equality of values, not a likelihood.
    None when either side has nulls or two values share a hash (the caller compares strings)."""
    if left.null_count() or right.null_count():
        return None
    seed = _HASH_SEEDS[0]
    values = pl.concat([left.unique(), right.unique()]).unique()
    if values.hash(seed).n_unique() != values.len():
        return None
    return left.hash(seed).to_numpy(), right.hash(seed).to_numpy()


def _untangle(tangled: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Pairs, many-to-one splits and duplicates from the candidate pairs whose key was not unique.

    ``taken``: the candidate of ours was paired already (pass 1a), so the statement line repeats it."""
    same_money = (pl.col("t_currency") == pl.col("currency")) & (pl.col("theirs_amount") == _ours_compared())
    # One of ours per statement line: a free one first, the same money, then the lowest our_id.
    chosen = (tangled.with_columns(same_money.fill_null(False).alias("same_money"))
              .sort(["line_no", "taken", "same_money", "our_id"], descending=[False, False, True, False])
              .unique(subset="line_no", keep="first", maintain_order=True))
    group = pl.col("row")
    chosen = chosen.with_columns(
        pl.len().over(group).alias("lines"),
        pl.col("theirs_amount").sum().over(group).alias("lines_total"),
        ((pl.col("theirs_status").n_unique().over(group) == 1)
         & (pl.col("t_currency").n_unique().over(group) == 1)
         & (pl.col("t_net").n_unique().over(group) == 1)  # all compared with our net, or all with our gross
         & (pl.col("t_currency") == pl.col("currency")).all().over(group)).alias("uniform"),
        _ours_compared().alias("compared"),
    )
    is_split = ((pl.col("lines") > 1) & ~pl.col("taken") & pl.col("uniform")
                & (pl.col("lines_total") == pl.col("compared")))
    chosen = chosen.with_columns(is_split.fill_null(False).alias("split"))
    ranked = chosen.filter(~pl.col("split")).sort(["row", "same_money", "line_no"], descending=[False, True, False])
    best = ranked.with_columns((pl.col("row").is_first_distinct() & ~pl.col("taken")).alias("best"))
    pairs = best.filter(pl.col("best")).drop("best", "same_money", "lines", "lines_total", "uniform", "split",
                                             "taken", "compared")
    duplicates = best.filter(~pl.col("best")).with_columns(_repeat_sentence(pl.col("earlier")))
    parts = chosen.filter(pl.col("split")).sort("line_no")
    splits = parts.group_by("row", maintain_order=True).agg(
        pl.col("line_no").first(), pl.col("line_no").alias("batch_line_nos"),
        pl.col("t_our_ref").first(), pl.col("t_channel_ref").first(), pl.col("t_kind").first(),
        pl.col("theirs_status").first(), pl.col("theirs_amount").sum(),
        # Lines that state no fee make a split that states none (null), not a fee of 0.
        pl.when(pl.col("theirs_fee").is_not_null().any()).then(pl.col("theirs_fee").sum()).alias("theirs_fee"),
        pl.col("t_currency").first(), pl.col("theirs_booked_on").max(), pl.col("t_description").first(),
        pl.col("t_net").first(), *[pl.col(name).first() for name in _OURS if name != "row"])
    splits = splits.with_columns(pl.concat_str([
        pl.lit("statement lines "), pl.col("batch_line_nos").cast(pl.List(pl.String)).list.join(", "),
        pl.lit(" add up to our line (a split)")]).alias("detail"))
    return pairs, splits, duplicates


def _repeat_sentence(earlier: pl.Expr | bool) -> pl.Expr:
    """A duplicate's ``detail``: the line repeats one of ours paired in this statement, or in an earlier one."""
    earlier = earlier if isinstance(earlier, pl.Expr) else pl.lit(earlier)
    where = pl.when(earlier).then(pl.lit(", reconciled already by an earlier statement")).otherwise(pl.lit(""))
    return pl.concat_str([pl.lit("statement line "), pl.col("line_no").cast(pl.String),
                          pl.lit(" repeats the line already paired with "), pl.col("our_id"), where]).alias("detail")


def _same_currency(theirs: pl.Series, ours: pl.Series, codes: tuple[np.ndarray, np.ndarray] | None,
                   line_rows: np.ndarray, our_rows: np.ndarray) -> np.ndarray:
    """Which of the pairs (statement row, our row) are in one currency (``codes``: ``_equal_codes`` of the two
    columns): a line in another currency than ours is not its pair, whatever its reference (its amount is
    another money, not a difference that a tolerance could explain)."""
    if codes is None:
        return theirs.gather(line_rows).eq_missing(ours.gather(our_rows)).to_numpy()
    return codes[0][line_rows] == codes[1][our_rows]


def _foreign(pairs: pl.DataFrame) -> pl.DataFrame:
    """``line_no`` and ``detail`` of statement lines whose reference named one of ours in another currency."""
    return pairs.select("line_no", pl.format(
        "statement line {} names our {}, booked in {}: a line in {} is not its pair", pl.col("line_no"),
        pl.col("our_ref"), pl.col("currency"), pl.col("t_currency")).alias("detail"))


def _other_way(pairs: pl.DataFrame) -> pl.DataFrame:
    """``line_no`` and ``detail`` of statement lines whose reference named one of ours going the other way (money
    back naming a payment: a return, a chargeback; money in naming a refund)."""
    return pairs.select("line_no", pl.format(
        "statement line {} names our {}, money {}: a line of money {} is not its pair", pl.col("line_no"),
        pl.col("our_ref"), pl.when(pl.col("ours_amount") < 0).then(pl.lit("back")).otherwise(pl.lit("in")),
        pl.when(pl.col("theirs_amount") < 0).then(pl.lit("back")).otherwise(pl.lit("in"))).alias("detail"))


def _fuzzy_pairs(theirs: pl.DataFrame, ours: pl.DataFrame, rules: MatchRules) -> pl.DataFrame:
    """Pass 2 pairs, one to one, with ``similarity`` and a ``detail`` sentence."""
    if not theirs.height or not ours.height:
        return pl.DataFrame()
    found = []
    # A bank's line that states no fee is sought around our net, any other around our gross (``_ours_compared``).
    for net in (False, True):
        lines = theirs.filter(pl.col("t_net").fill_null(False) == net)
        if not lines.height:
            continue
        compared = pl.col("ours_amount") - pl.col("ours_fee").fill_null(0) if net else pl.col("ours_amount")
        tolerance = _amount_tolerance(rules, compared)
        found.append(_within_amounts(lines, ours.with_columns((compared - tolerance).alias("low"),
                                                              (compared + tolerance).alias("high"))))
    window = rules.date_window_days
    candidates = pl.concat(found).filter(
        (pl.col("theirs_booked_on") - pl.col("ours_booked_on")).dt.total_days().abs() <= window)
    if not candidates.height:
        return pl.DataFrame()
    score = np.maximum.reduce([
        _similarity(candidates["t_our_ref"], candidates["our_ref"], fuzz.ratio),
        _similarity(candidates["t_channel_ref"], candidates["channel_ref"], fuzz.ratio),
        _similarity(candidates["t_description"], candidates["our_ref"], fuzz.partial_ratio),
    ]) / 100.0
    candidates = candidates.with_columns(pl.Series("similarity", score)).filter(
        pl.col("similarity") >= rules.reference_similarity - 1e-9)
    if not candidates.height:
        return pl.DataFrame()
    candidates = candidates.with_columns(
        (pl.col("theirs_amount") - _ours_compared()).abs().alias("gap")
    ).sort(["similarity", "gap", "line_no", "our_id"], descending=[True, False, False, False])
    taken_lines: set[int] = set()
    taken_rows: set[int] = set()
    keep = []
    for index, (line_no, row) in enumerate(candidates.select("line_no", "row").iter_rows()):
        if line_no in taken_lines or row in taken_rows:
            continue
        taken_lines.add(line_no)
        taken_rows.add(row)
        keep.append(index)
    chosen = candidates[keep]
    return chosen.with_columns(pl.format(
        "paired by amount, date and reference: {} against our {} ({} similar)",
        pl.coalesce("t_our_ref", "t_channel_ref", "t_description"), pl.col("our_ref"),
        (pl.col("similarity") * 100).round(0).cast(pl.Int64).cast(pl.String) + "%").alias("detail")
    ).drop("low", "high", "gap", "similarity")


def _within_amounts(theirs: pl.DataFrame, ours: pl.DataFrame) -> pl.DataFrame:
    """Every (statement line, our line) of one currency whose amount lies in our ``low``..``high``.

    A range join by binary search on the sorted statement amounts, per currency: the work is the number
    of candidates, never the product of the two sides."""
    found = []
    theirs = theirs.filter(pl.col("theirs_amount").is_not_null() & pl.col("t_currency").is_not_null())
    for currency in sorted(set(theirs["t_currency"].unique()) & set(ours["currency"].drop_nulls().unique())):
        lines = theirs.filter(pl.col("t_currency") == currency).sort("theirs_amount", "line_no")
        mine = ours.filter(pl.col("currency") == currency)
        amounts = lines["theirs_amount"].to_numpy()
        first = np.searchsorted(amounts, mine["low"].to_numpy(), side="left")
        after = np.searchsorted(amounts, mine["high"].to_numpy(), side="right")
        counts = np.maximum(after - first, 0)
        if not counts.sum():
            continue
        our_index = np.repeat(np.arange(mine.height), counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        found.append(pl.concat([lines[np.repeat(first, counts) + offsets], mine[our_index]], how="horizontal"))
    if not found:
        return pl.DataFrame(schema={**theirs.schema, **ours.schema})
    return pl.concat(found)


def _similarity(left: pl.Series, right: pl.Series, scorer: Any) -> np.ndarray:
    """Pairwise similarity 0..100 of two string columns; 0 where either side is missing or empty."""
    missing = (left.is_null() | right.is_null() | (left.str.len_chars() == 0) | (right.str.len_chars() == 0))
    scores = process.cpdist(left.fill_null("").to_list(), right.fill_null("").to_list(), scorer=scorer,
                            workers=-1)
    return np.where(missing.to_numpy(), 0.0, scores)


def _batches(theirs: pl.DataFrame, ours: pl.DataFrame, rules: MatchRules) -> pl.DataFrame:
    """Pass 3: our lines paid by one statement credit, whole booking days only (module docstring)."""
    credits = theirs.filter((pl.col("t_kind") == "settlement") | (pl.col("theirs_amount") > 0))
    succeeded = ours.filter(pl.col("ours_status") == "succeeded")
    if not credits.height or not succeeded.height:
        return pl.DataFrame()
    days = succeeded.group_by("currency", "ours_booked_on").agg(
        (pl.col("ours_amount") - pl.col("ours_fee")).sum().alias("net"), pl.len().alias("lines"))
    candidates = credits.join(days, left_on="t_currency", right_on="currency", how="inner").filter(
        pl.col("ours_booked_on") <= pl.col("theirs_booked_on"),
        pl.col("ours_booked_on") >= pl.col("theirs_booked_on") - timedelta(days=rules.batch_window_days),
        (pl.col("net") == pl.col("theirs_amount"))
        | (pl.col("net") == pl.col("theirs_amount") - pl.col("theirs_fee").fill_null(0)),
        # A plain credit against a day of one line would be an amount-only match, which pass 2 refused.
        (pl.col("t_kind") == "settlement") | (pl.col("lines") > 1),
    ).sort(["line_no", "ours_booked_on"], descending=[False, True])
    if not candidates.height:
        return pl.DataFrame()
    used_lines: set[int] = set()
    used_days: set[tuple[str, date]] = set()
    chosen: list[tuple[int, str, date]] = []
    for line_no, currency, day in candidates.select("line_no", "t_currency", "ours_booked_on").iter_rows():
        if line_no in used_lines or (currency, day) in used_days:
            continue
        used_lines.add(line_no)
        used_days.add((currency, day))
        chosen.append((line_no, currency, day))
    picked = pl.DataFrame(chosen, schema={"line_no": pl.Int64, "currency": pl.String, "ours_booked_on": pl.Date},
                          orient="row")
    lines = picked.join(credits, on="line_no").join(days, on=["currency", "ours_booked_on"])
    members = succeeded.join(lines.select("line_no", "currency", "ours_booked_on", "t_our_ref", "t_channel_ref",
                                          "t_kind", "theirs_status", "t_currency", "theirs_booked_on",
                                          "t_description", pl.col("lines").alias("batch_size"),
                                          pl.col("theirs_amount").alias("credit")),
                             on=["currency", "ours_booked_on"], how="inner")
    return members.with_columns(
        pl.lit("matched").alias("class"), pl.col("ours_amount").alias("theirs_amount"),
        pl.col("ours_fee").alias("theirs_fee"), pl.lit(None, pl.Int64).alias("difference"),
        pl.format("one of {} lines of {} paid net by statement line {}", pl.col("batch_size"),
                  pl.col("ours_booked_on").cast(pl.String), pl.col("line_no")).alias("detail"),
    ).sort("line_no", "our_id")


def _unclaimed(ours: pl.DataFrame, rules: MatchRules, period: tuple[date, date]) -> pl.DataFrame:
    """Our lines nobody claimed: succeeded lines of the period, ``timing`` near the last day's end."""
    first, last = period
    _start, end = day_bounds(last, last, rules.timezone)
    cutoff = end - timedelta(minutes=rules.timing_cutoff_minutes)
    shown = ours.filter((pl.col("ours_status") == "succeeded") & pl.col("ours_booked_on").is_between(first, last))
    late = pl.col("booked_at") >= pl.lit(cutoff, pl.Datetime("us", "UTC"))
    return _complete(shown).with_columns(
        pl.when(late).then(pl.lit("timing")).otherwise(pl.lit("missing_in_statement")).alias("class"))


# -- the result rows -------------------------------------------------------------------------------------------------


def _complete(frame: pl.DataFrame) -> pl.DataFrame:
    """The frame with every working column, missing ones as typed nulls (a one-sided row)."""
    wanted = {**_THEIRS, **_OURS, "batch_line_nos": pl.List(pl.Int64()), "difference": pl.Int64(),
              "detail": pl.String()}
    missing = [pl.lit(None, dtype).alias(name) for name, dtype in wanted.items() if name not in frame.columns]
    return frame.with_columns(missing) if missing else frame


def _emit(frame: pl.DataFrame, *, pass_no: int | None, detail: bool = True, keep_pass: bool = True,
          both_sides: bool = False) -> pl.DataFrame:
    """``RESULT_SCHEMA`` rows; ``pass_no`` only on rows with both sides (a pair), null on the others."""
    if not frame.height:
        return pl.DataFrame(schema=RESULT_SCHEMA)
    frame = _complete(frame)
    if detail:
        frame = frame.with_columns(pl.coalesce("detail", _sentence()).alias("detail"))
    paired = pl.col("line_no").is_not_null() & pl.col("our_id").is_not_null()
    if both_sides:
        pass_col = pl.lit(pass_no, pl.Int8)
    elif keep_pass and pass_no:
        pass_col = pl.when(paired).then(pl.lit(pass_no, pl.Int8)).otherwise(None)
    else:
        pass_col = pl.lit(None, pl.Int8)
    return frame.select(
        pl.col("class"), pass_col.alias("pass_no"), pl.col("our_id"),
        (pl.col("our_ref") if both_sides else pl.coalesce("our_ref", "t_our_ref")).alias("our_ref"),
        pl.coalesce("t_channel_ref", "channel_ref").alias("channel_ref"),
        pl.col("line_no"), pl.col("batch_line_nos"),
        pl.col("ours_amount"), pl.col("theirs_amount"), pl.col("ours_fee"), pl.col("theirs_fee"),
        pl.coalesce("currency", "t_currency").alias("currency"),
        pl.col("ours_status"), pl.col("theirs_status"), pl.col("ours_booked_on"), pl.col("theirs_booked_on"),
        pl.col("difference"), pl.col("detail"),
    ).cast(RESULT_SCHEMA)


def _sentence() -> pl.Expr:
    """What a person reads on a discrepancy, money in major units (e.g. "channel fee 0.45 against 0.38 booked")."""
    currency = pl.coalesce("currency", "t_currency")
    exponent = currency.map_elements(_exponent, return_dtype=pl.Int64)
    ours_amount, theirs_amount = _major(pl.col("ours_amount"), exponent), _major(pl.col("theirs_amount"), exponent)
    ours_on = pl.col("ours_booked_on").cast(pl.String)
    theirs_on = pl.col("theirs_booked_on").cast(pl.String)
    class_ = pl.col("class")
    fees = pl.concat_str([pl.lit("channel fee "), _major(pl.col("theirs_fee"), exponent), pl.lit(" against "),
                          _major(pl.col("ours_fee"), exponent), pl.lit(" booked")])
    # An amount mismatch is the first class that applies, so a fee gap beside it has no case of its own: the
    # sentence names it, as the delta counts it.
    fee_beside = pl.when(pl.col("theirs_fee").is_not_null() & (pl.col("theirs_fee") != pl.col("ours_fee"))).then(
        pl.concat_str([pl.lit("; "), fees])).otherwise(pl.lit(""))
    # A bank's line without a fee was compared with our net: the sentence shows both figures of it.
    net_line = pl.col("t_net").fill_null(False)
    return (
        pl.when((class_ == "amount_mismatch") & net_line).then(pl.concat_str([
            pl.lit("bank amount "), theirs_amount, pl.lit(" (no fee stated: the money received) against our net "),
            _major(pl.col("ours_amount") - pl.col("ours_fee").fill_null(0), exponent), pl.lit(" ("), ours_amount,
            pl.lit(" booked less channel fee "), _major(pl.col("ours_fee").fill_null(0), exponent), pl.lit(")")]))
        .when(class_ == "amount_mismatch").then(pl.concat_str([
            pl.lit("channel amount "), theirs_amount, pl.lit(" against "), ours_amount, pl.lit(" booked"),
            fee_beside]))
        .when(class_ == "fee_mismatch").then(fees)
        .when(class_ == "status_mismatch").then(pl.concat_str([
            pl.lit("the channel says "), pl.col("theirs_status"), pl.lit(", we say "), pl.col("ours_status")]))
        .when((class_ == "timing") & pl.col("line_no").is_not_null()).then(pl.concat_str([
            pl.lit("the channel booked it on "), theirs_on, pl.lit(", we on "), ours_on]))
        .when(class_ == "timing").then(pl.concat_str([
            pl.lit("became final at "), pl.col("booked_at").dt.strftime("%Y-%m-%d %H:%M UTC"),
            pl.lit(", close to the day's end: due in the next statement")]))
        .when(class_ == "missing_in_ledger").then(pl.concat_str([
            pl.lit("statement line "), pl.col("line_no").cast(pl.String), pl.lit(" ("),
            pl.col("t_kind").fill_null("line"), pl.lit(" of "), theirs_amount, pl.lit(" "), currency,
            pl.lit(" on "), theirs_on, pl.lit(") matches none of our lines")]))
        .when(class_ == "missing_in_statement").then(pl.concat_str([
            pl.lit("we booked "), ours_amount, pl.lit(" "), currency, pl.lit(" on "), ours_on,
            pl.lit("; the statement does not have it")]))
        .otherwise(None)
    )


def _major(minor: pl.Expr, exponent: pl.Expr) -> pl.Expr:
    """Minor units as a major-unit string, exactly (12345, 2 -> "123.45"; -5, 2 -> "-0.05"; 7, 0 -> "7")."""
    scale = pl.lit(10, pl.Int64).pow(exponent)
    whole = (minor.abs() // scale).cast(pl.String)
    fraction = (minor.abs() % scale).cast(pl.String).str.zfill(exponent)
    sign = pl.when(minor < 0).then(pl.lit("-")).otherwise(pl.lit(""))
    return pl.when(exponent > 0).then(pl.concat_str([sign, whole, pl.lit("."), fraction])).otherwise(
        pl.concat_str([sign, whole]))


def _exponent(code: str) -> int:
    try:
        return Currency.of(code).exponent
    except UnknownCurrency:
        return 2


class _Stopwatch:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._at = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._at, 4)
        self._at = now

