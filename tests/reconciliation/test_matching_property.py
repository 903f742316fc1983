"""Property: a random set of our lines, its statement written from it, random mutations on disjoint lines;
the engine finds exactly the injected discrepancies (same class, same our_id and statement line), no
more and no fewer, and everything else is matched.

The statement speaks for 23 November 2026 (UTC). Our lines become final between 01:00 and 21:00, away
from the 60-minute cut-off before midnight, so no line is ``timing`` by the cut-off by accident. Stray
lines get references nothing like ours and amounts larger than all our money together, so neither the
fuzzy pass nor the batch pass can take them for one of ours.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearhouse.reconciliation.frames import INTERNAL_SCHEMA, STATEMENT_SCHEMA
from clearhouse.reconciliation.matching import match
from clearhouse.reconciliation.rules import MatchRules
from tests.reconciliation.support import changed_amount

DAY = date(2026, 11, 23)
YESTERDAY = DAY - timedelta(days=1)
MUTATIONS = ("keep", "drop", "duplicate", "amount", "fee", "shift", "status")
EXPECTED = {"drop": "missing_in_statement", "amount": "amount_mismatch", "fee": "fee_mismatch",
            "shift": "timing", "status": "status_mismatch"}

our_line = st.fixed_dictionaries({
    "amount": st.integers(100, 2_000_000),
    "refund": st.booleans(),
    "failed": st.integers(0, 9).map(lambda n: n == 0),
    "fee_permille": st.integers(0, 30),
    "minute": st.integers(60, 21 * 60),
    "mutation": st.sampled_from(MUTATIONS),
    "change": st.integers(1, 5_000),
    "earlier": st.booleans(),
})
batch_line = st.fixed_dictionaries({"amount": st.integers(100, 2_000_000), "fee_permille": st.integers(0, 30),
                                    "minute": st.integers(60, 21 * 60)})


def _ours(index: int, spec: dict[str, Any], day: date) -> dict[str, Any]:
    failed = spec.get("failed", False)
    refund = spec.get("refund", False)
    amount = -spec["amount"] if refund else spec["amount"]
    fee = 0 if failed or refund else spec["amount"] * spec["fee_permille"] // 1_000
    return {"our_id": f"pay_{index:05d}", "our_ref": f"att_{index:05d}", "channel_ref": f"ch_{index:05d}",
            "kind": "refund" if refund else "payment", "status": "failed" if failed else "succeeded",
            "amount": amount, "fee": fee, "currency": "EUR", "booked_on": day,
            "booked_at": datetime.combine(day, time(), UTC) + timedelta(minutes=spec["minute"])}


def _statement_line(ours: dict[str, Any]) -> dict[str, Any]:
    return {"our_ref": ours["our_ref"], "channel_ref": ours["channel_ref"], "kind": ours["kind"],
            "status": ours["status"], "amount": ours["amount"], "fee": ours["fee"], "currency": "EUR",
            "booked_on": ours["booked_on"], "value_on": None, "description": None}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(our_line, min_size=1, max_size=25), batch=st.lists(batch_line, max_size=6),
       strays=st.integers(0, 3), order=st.randoms(use_true_random=False))
def test_exactly_the_injected_discrepancies_are_found(lines: list[dict[str, Any]], batch: list[dict[str, Any]],
                                                      strays: int, order: random.Random) -> None:
    internal: list[dict[str, Any]] = []
    statement: list[tuple[dict[str, Any], tuple[str, str | None]]] = []  # line, (class, our_id) expected
    repeats: list[tuple[dict[str, Any], tuple[str, str | None]]] = []
    expected: set[tuple[str, str | None, str | None]] = set()  # class, our_id, marker of the statement line
    for index, spec in enumerate(lines):
        ours = _ours(index, spec, DAY)
        internal.append(ours)
        mutation = spec["mutation"]
        if mutation == "drop":
            if ours["status"] == "succeeded":  # a failed line nobody claims is not reported
                expected.add(("missing_in_statement", ours["our_id"], None))
            continue
        theirs = _statement_line(ours)
        if mutation == "amount":
            theirs["amount"] = changed_amount(theirs["amount"], spec["change"] if spec["earlier"] else -spec["change"])
        elif mutation == "fee":
            theirs["fee"] += spec["change"]
        elif mutation == "shift":
            theirs["booked_on"] += timedelta(days=-1 if spec["earlier"] else 1)
        elif mutation == "status":
            theirs["status"] = "succeeded" if ours["status"] == "failed" else "failed"
        statement.append((theirs, (EXPECTED.get(mutation, "matched"), ours["our_id"])))
        if mutation == "duplicate":
            repeats.append((dict(theirs), ("duplicate", ours["our_id"])))

    # A whole previous day paid as one net settlement credit: each of its lines is matched by pass 3.
    if len(batch) >= 2:
        members = [_ours(1_000 + index, spec, YESTERDAY) for index, spec in enumerate(batch)]
        internal.extend(members)
        net = sum(m["amount"] - m["fee"] for m in members)
        credit = {"our_ref": "stl_20261122_eur", "channel_ref": "ch_settlement", "kind": "settlement",
                  "status": "succeeded", "amount": net, "fee": 0, "currency": "EUR", "booked_on": DAY,
                  "value_on": None, "description": "net settlement of 22 November"}
        statement.append((credit, ("settlement", None)))
    else:
        members = []
    ceiling = 2_000_000 * (len(lines) + len(batch) + 1)
    for index in range(strays):
        stray = {"our_ref": f"zz-unknown-{'qwxyvk'[index]}", "channel_ref": None, "kind": "payment",
                 "status": "succeeded", "amount": ceiling + 7 * index, "fee": 0, "currency": "EUR",
                 "booked_on": DAY, "value_on": None, "description": None}
        statement.append((stray, ("missing_in_ledger", None)))

    order.shuffle(statement)
    numbered = [({**line, "line_no": number}, label)
                for number, (line, label) in enumerate([*statement, *repeats], start=2)]
    settlement_line = next((line["line_no"] for line, label in numbered if label[0] == "settlement"), None)
    truth = set()
    for line, (class_, our_id) in numbered:
        if class_ == "settlement":
            truth.update(("matched", member["our_id"], line["line_no"]) for member in members)
        else:
            truth.add((class_, our_id, line["line_no"]))
    truth.update((class_, our_id, None) for class_, our_id, _ in expected)

    outcome = match(pl.DataFrame([line for line, _ in numbered], schema=STATEMENT_SCHEMA),
                    pl.DataFrame(internal, schema=INTERNAL_SCHEMA), MatchRules(), period=(DAY, DAY))
    results = outcome.results
    found = set(results.select("class", "our_id", "line_no").iter_rows())
    assert found == truth
    assert results.height == len(truth)  # no row twice
    batched = results.filter(pl.col("line_no") == settlement_line) if settlement_line else results.clear()
    assert batched["pass_no"].to_list() == [3] * len(members)
    pairs = results.filter(pl.col("line_no").is_not_null() & pl.col("our_id").is_not_null()
                           & (pl.col("class") != "duplicate"))
    assert pairs["pass_no"].is_not_null().all()
    summary = outcome.summary()
    assert sum(figures["count"] for figures in summary.values()) == len(truth)
