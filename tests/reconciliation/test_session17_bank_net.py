"""A bank statement's line that states no fee is the money the channel paid into the bank: net of its fee.

Through the HTTP API on SQLite and PostgreSQL. A card sale of 100.00 (the acquirer keeps 0.38) debits
``channel_clearing:sandbox_card`` with 99.62 (accounting.md, recipe 1); the acquirer pays 99.62 into our bank, and
the MT940 credit says 99.62, with no fee (MT940 has none). That credit pairs with our net:

1. a credit (or a camt.053 entry without charges) of our net is ``matched`` and its payout (recipe 4) moves 99.62
   from clearing to ``bank:<account>``, by the exact reference (pass 1) or by its text (pass 2);
2. a credit of another amount (the gross 100.00, or 99.00) is an ``amount_mismatch`` whose difference and delta
   are their net - our net (0.38, -0.62): the payout moves our net, so clearing is back to what is still in
   flight, and the case's adjustment moves the delta between the bank and ``suspense`` (recipe 9), so the bank
   holds what the statement says;
3. a camt.053 entry that states its charges is compared gross, fee beside, as before;
4. a refund's debit the same way: an Alipay refund of 30.00 gives back 0.17 of the fee, so the bank's debit
   is 29.83;
5. the engine's property: exactly the injected discrepancies are found in a bank statement of net lines.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearhouse.kit import clock
from clearhouse.reconciliation.frames import INTERNAL_SCHEMA, STATEMENT_SCHEMA
from clearhouse.reconciliation.matching import match
from clearhouse.reconciliation.rules import MatchRules
from clearhouse.reconciliation.service import with_delta
from tests.payments.support import ledger_verifies, paid_by_customer
from tests.reconciliation.formats.test_session12_formats import camt_entry, mt940_statement
from tests.reconciliation.support import booked, cases_of, changed_amount, class_counts, sales_at_noon
from tests.reconciliation.test_api import CHANNEL
from tests.reconciliation.test_matching_property import DAY as PROPERTY_DAY
from tests.reconciliation.test_matching_property import YESTERDAY, batch_line, our_line
from tests.reconciliation.test_matching_property import _ours as _property_ours
from tests.reconciliation.test_qr_refunds import NOON_IN_CHINA, RATES, _half_up
from tests.reconciliation.test_session13 import CNY_IBAN, DAY, _case, _rules, _upload_file
from tests.reconciliation.test_session17_channel_payout import (
    BANK_ACCOUNT,
    CLEARING,
    _camt,
    _charged,
    _clearing_row,
    _import,
    _major,
    _net,
    _payout,
    _posted,
)

ALIPAY = "sandbox_alipay"


def _comma(minor: int) -> str:
    """Minor units as MT940 writes them: 9962 -> ``99,62``."""
    return _major(minor).replace(".", ",")


def _eref(reference: str) -> str:
    """A structured (GVC) ``:86:`` whose ``?20`` is ``EREF+`` the end-to-end reference we gave: our reference."""
    return f"166?00GUTSCHRIFT?20EREF+{reference}"


def _mt940(movements: list[tuple[int, str]], opening: int = 0, number: str = "01717") -> bytes:
    """One MT940 statement of ``CNY_IBAN`` on ``DAY``: each movement (signed minor units, :86: text) a ``:61:``
    line with its ``:86:``, ``_eref`` naming our reference (pass 1) or free text (pass 2 reads it)."""
    lines = "".join(f":61:2611231123{'C' if amount > 0 else 'D'}{_comma(abs(amount))}NTRFNONREF//B{n}\n:86:{text}\n"
                    for n, (amount, text) in enumerate(movements, 1))
    closing = opening + sum(amount for amount, _text in movements)
    return mt940_statement(number, CNY_IBAN, f"{_mark(opening)}261122CNY{_comma(abs(opening))}", lines,
                           f"{_mark(closing)}261123CNY{_comma(abs(closing))}").encode()


def _mark(balance: int) -> str:
    """An MT940 balance's mark: C for money at the bank, D for an overdrawn account."""
    return "C" if balance >= 0 else "D"


def _mt940_import(client: Any, movements: list[tuple[int, str]], channel: str = CHANNEL) -> dict[str, Any]:
    answer = _upload_file(client, _mt940(movements), fmt="mt940", channel=channel, day=DAY, name="bank.sta")
    assert answer.status_code == 201, answer.text
    return answer.json()


def _adjust(client: Any, case_id: str, **extra: Any) -> dict[str, Any]:
    answer = client.post(f"/v1/recon_cases/{case_id}/resolve",
                         json={"action": "adjust", "reason": "the acquirer paid another amount", **extra})
    assert answer.status_code == 200, answer.text
    return answer.json()


def _verified(app: Any, client: Any) -> None:
    ledger_verifies(app)
    assert client.get("/v1/ledger/verify").json()["ok"] is True


@pytest.fixture
def sales(app, client, merchant_client_factory) -> list[Any]:
    """Two card sales at noon of ``DAY`` (100.00 and 101.00; the acquirer keeps 0.38%); no timing cut-off."""
    _rules(client, timing_cutoff_minutes=0)
    shop, _merchant_id = merchant_client_factory("Net shop")
    return sales_at_noon(app, shop, [10_000, 10_100])


# ------------------------------------------------------------------------------------------------ 1


class TestABankCreditOfOurNet:
    def test_an_mt940_credit_of_99_62_for_a_sale_of_100_00_is_matched_and_paid(self, app, client, sales):
        sale, other = sales
        assert (sale.amount, sale.channel_cost, _net(sale)) == (10_000, 38, 9_962)
        assert _posted(client, CLEARING) == 9_962 + _net(other)
        run = _mt940_import(client, [(9_962, _eref(sale.reference))])
        assert class_counts(run) == {"matched": 1, "missing_in_statement": 1}, run

        # Recipe 4: Dr bank 99.62, Cr clearing 99.62; clearing back to the other sale, still in flight.
        assert (_posted(client, CLEARING), _posted(client, BANK_ACCOUNT)) == (_net(other), 9_962)
        assert _payout(client, run["id"]).json()["amount"] == 9_962
        assert _clearing_row(client)["clearing_balance"] == _net(other)
        (missing,) = cases_of(client, run["id"])
        assert (missing["class"], missing["our_id"]) == ("missing_in_statement", other.id)
        _verified(app, client)

    def test_a_credit_naming_the_sale_only_in_its_text_pairs_by_pass_2_at_our_net(self, app, client, sales):
        sale, other = sales
        run = _mt940_import(client, [(_net(sale), f"card acquirer payout {sale.reference} thank you"),
                                     (_net(other), _eref(other.reference))])
        assert class_counts(run) == {"matched": 2}, run
        assert (_posted(client, CLEARING), _posted(client, BANK_ACCOUNT)) == (0, _net(sale) + _net(other))
        _verified(app, client)

    def test_a_camt053_entry_without_charges_is_the_money_received_too(self, app, client, sales):
        sale, other = sales
        run = _import(client, _camt([camt_entry(_major(_net(sale)), sale.external_id, currency="CNY"),
                                     camt_entry(_major(_net(other)), other.external_id, currency="CNY")],
                                    _net(sale) + _net(other)))
        assert class_counts(run) == {"matched": 2}, run
        assert (_posted(client, CLEARING), _posted(client, BANK_ACCOUNT)) == (0, _net(sale) + _net(other))
        _verified(app, client)


# ------------------------------------------------------------------------------------------------ 2


class TestABankCreditOfAnotherAmount:
    @pytest.mark.parametrize(("credit", "delta"), [(10_000, 38), (9_900, -62)], ids=["gross", "short"])
    def test_is_an_amount_mismatch_of_the_nets_and_its_adjustment_makes_the_bank_what_the_statement_says(
            self, app, client, sales, credit, delta):
        app.state.settings = app.state.settings.model_copy(update={"recon_approval_threshold": 1_000_000})
        sale, other = sales
        run = _mt940_import(client, [(credit, _eref(sale.reference)), (_net(other), _eref(other.reference))])
        assert class_counts(run) == {"matched": 1, "amount_mismatch": 1}, run
        (case,) = cases_of(client, run["id"])
        assert (case["class"], case["our_id"], case["delta"], case["difference"]) == (
            "amount_mismatch", sale.id, delta, delta)  # 100.00 against our net 99.62: the fee, 0.38
        assert (case["theirs"]["amount"], case["theirs"]["fee"], case["ours"]["amount"], case["ours"]["fee"]) == (
            credit, None, 10_000, 38)
        assert "our net 99.62" in case["detail"], case["detail"]

        # The channel paid the sale: our net leaves clearing with the matched line's, nothing is in flight. The
        # bank holds what the statement says, and the case's delta waits in suspense (recipe 9, on import).
        assert (_posted(client, CLEARING), _posted(client, BANK_ACCOUNT), _posted(client, "suspense")) == (
            0, credit + _net(other), delta)
        assert _payout(client, run["id"]).json()["metadata"] == {
            "reconciliation_id": run["id"], "channel": CHANNEL, "account": BANK_ACCOUNT, "lines": 2,
            "unexplained": delta}

        resolved = _adjust(client, case["id"])  # to suspense, where it is: nothing to post
        assert resolved["state"] == "resolved" and resolved["ledger_entry_id"] is None, resolved
        assert (_posted(client, CLEARING), _posted(client, BANK_ACCOUNT), _posted(client, "suspense")) == (
            0, credit + _net(other), delta)
        assert _clearing_row(client)["clearing_balance"] == 0
        _verified(app, client)

    def test_the_acquirer_keeping_no_fee_is_adjusted_against_the_channel_cost(self, app, client, sales):
        sale, other = sales
        run = _mt940_import(client, [(sale.amount, _eref(sale.reference)),
                                     (_net(other), _eref(other.reference))])
        (case,) = cases_of(client, run["id"])
        _adjust(client, case["id"], account="channel_cost")
        assert (_posted(client, CLEARING), _posted(client, BANK_ACCOUNT)) == (0, sale.amount + _net(other))
        # Dr bank 0.38, Cr channel_cost: the sale cost us nothing after all; the other sale's cost stays.
        assert _posted(client, f"channel_cost:{CHANNEL}") == other.channel_cost
        _verified(app, client)


# ------------------------------------------------------------------------------------------------ 3


class TestACamtEntryWithItsCharges:
    def test_is_compared_gross_with_its_fee_beside_and_matched(self, app, client, sales):
        run = _import(client, _camt([_charged(row) for row in sales], sum(_net(row) for row in sales)))
        assert class_counts(run) == {"matched": 2} and run["case_count"] == 0, run
        assert (_posted(client, CLEARING), _posted(client, BANK_ACCOUNT)) == (0, sum(_net(row) for row in sales))
        _verified(app, client)


# ------------------------------------------------------------------------------------------------ 4


@pytest.fixture
def refunded(app, client, anonymous_client, merchant_client_factory) -> tuple[Any, dict[str, Any]]:
    """An Alipay sale of 100.00 (Alipay keeps 0.55) and a refund of 30.00 of it (Alipay gives 0.17 back), both on
    ``DAY`` in China's calendar; no timing cut-off."""
    _rules(client, channel=ALIPAY, timing_cutoff_minutes=0)
    shop, _merchant_id = merchant_client_factory("Net QR shop")
    with clock.frozen(NOON_IN_CHINA):
        payment = paid_by_customer(app, shop, anonymous_client, ALIPAY, 10_000)
        refund = shop.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 3_000})
        assert refund.status_code == 201 and refund.json()["status"] == "succeeded", refund.text
    return booked(app, [payment["id"]])[payment["id"]], refund.json()


class TestARefundsBankDebit:
    def test_a_debit_of_the_refund_less_the_fee_given_back_is_matched(self, app, client, refunded):
        sale, refund = refunded
        assert (sale.channel_cost, _half_up(3_000, RATES[ALIPAY])) == (55, 17)
        clearing = f"channel_clearing:{ALIPAY}"
        assert _posted(client, clearing) == 9_945 - 2_983
        run = _mt940_import(client, [(9_945, _eref(sale.reference)), (-2_983, _eref(refund['id']))],
                            channel=ALIPAY)
        assert class_counts(run) == {"matched": 2}, run
        assert (_posted(client, clearing), _posted(client, BANK_ACCOUNT)) == (0, 9_945 - 2_983)
        _verified(app, client)

    def test_a_debit_of_the_whole_refund_is_a_mismatch_of_the_fee_given_back(self, app, client, refunded):
        app.state.settings = app.state.settings.model_copy(update={"recon_approval_threshold": 1_000_000})
        sale, refund = refunded
        clearing = f"channel_clearing:{ALIPAY}"
        run = _mt940_import(client, [(9_945, _eref(sale.reference)), (-3_000, _eref(refund['id']))],
                            channel=ALIPAY)
        assert class_counts(run) == {"matched": 1, "amount_mismatch": 1}, run
        (case,) = cases_of(client, run["id"])
        assert (case["our_id"], case["delta"], case["difference"]) == (refund["id"], -17, -17)
        # Dr suspense 0.17, Cr bank 0.17 on import: the bank holds 99.45 - 30.00, as its statement says.
        assert (_posted(client, clearing), _posted(client, BANK_ACCOUNT), _posted(client, "suspense")) == (
            0, 9_945 - 3_000, -17)
        _adjust(client, case["id"], account="channel_cost")  # the channel gave back none of its fee
        assert _case(client, case["id"])["state"] == "resolved"
        assert (_posted(client, BANK_ACCOUNT), _posted(client, "suspense")) == (9_945 - 3_000, 0)
        _verified(app, client)


# ------------------------------------------------------------------------------------------------ 5


BANK_EXPECTED = {"drop": "missing_in_statement", "amount": "amount_mismatch", "shift": "timing",
                 "status": "status_mismatch"}


def _bank_ours(index: int, spec: dict[str, Any], day: Any) -> dict[str, Any]:
    """``test_matching_property``'s line of ours, a refund giving back part of its fee as the QR wallets do."""
    ours = _property_ours(index, spec, day)
    if spec.get("refund") and not spec.get("failed"):
        ours["fee"] = -(spec["amount"] * spec["fee_permille"] // 2_000)
    return ours


def _bank_line(ours: dict[str, Any], charges: bool) -> dict[str, Any]:
    """The bank's line for one of ours: the money it received (our net), no fee; or, with ``charges`` (a camt.053
    entry stating them), gross with the fee beside it."""
    net = ours["amount"] - ours["fee"]
    return {"our_ref": ours["our_ref"], "channel_ref": None, "kind": ours["kind"], "status": "succeeded",
            "amount": ours["amount"] if charges else net, "fee": ours["fee"] if charges else None,
            "currency": "EUR", "booked_on": ours["booked_on"], "value_on": None, "description": None}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(our_line, min_size=1, max_size=25), charges=st.lists(st.booleans(), min_size=25, max_size=25),
       batch=st.lists(batch_line, max_size=6), strays=st.integers(0, 3), order=st.randoms(use_true_random=False))
def test_a_bank_statement_of_net_lines_shows_exactly_the_injected_discrepancies(
        lines: list[dict[str, Any]], charges: list[bool], batch: list[dict[str, Any]], strays: int,
        order: random.Random) -> None:
    """``test_matching_property`` for a bank's statement: each line the money received (no fee) or, at random, a
    camt.053 entry with its charges (gross, fee beside). Mutations: ``fee`` becomes the defect's line, our gross
    amount with no fee (an ``amount_mismatch`` of the fee, ``matched`` when the fee is 0) or, with charges, a fee
    of another amount. Half the lines kept as they are name ours only in their text (pass 2 pairs them). Every
    ``amount_mismatch``'s difference and delta are their net - our net."""
    internal: list[dict[str, Any]] = []
    statement: list[tuple[dict[str, Any], tuple[str, str | None]]] = []
    repeats: list[tuple[dict[str, Any], tuple[str, str | None]]] = []
    expected: set[tuple[str, str | None, None]] = set()
    gaps: dict[str, int] = {}  # our_id -> their net - our net of an amount mismatch
    for index, spec in enumerate(lines):
        ours = _bank_ours(index, spec, PROPERTY_DAY)
        internal.append(ours)
        mutation, charged = spec["mutation"], charges[index]
        if ours["status"] == "failed" and mutation != "status":
            mutation = "drop"  # a bank line is money received: for a failed line of ours only a status case
        if mutation == "drop":
            if ours["status"] == "succeeded":
                expected.add(("missing_in_statement", ours["our_id"], None))
            continue
        theirs = _bank_line(ours, charged)
        class_ = BANK_EXPECTED.get(mutation, "matched")
        if mutation == "amount":
            theirs["amount"] = changed_amount(theirs["amount"], spec["change"] if spec["earlier"] else -spec["change"])
            gaps[ours["our_id"]] = theirs["amount"] - (theirs["fee"] or 0) - (ours["amount"] - ours["fee"])
        elif mutation == "fee" and charged:
            theirs["fee"] += spec["change"]
            class_ = "fee_mismatch"
        elif mutation == "fee":  # the gross amount, as if it were the money received
            theirs["amount"] = ours["amount"]
            if ours["fee"]:
                class_ = "amount_mismatch"
                gaps[ours["our_id"]] = ours["fee"]
        elif mutation == "shift":
            theirs["booked_on"] += timedelta(days=-1 if spec["earlier"] else 1)
        elif mutation == "status":
            theirs["status"] = "succeeded" if ours["status"] == "failed" else "failed"
        if mutation == "keep" and spec["earlier"]:
            # Named only in its text: pass 2 pairs it by the amount compared (our net, or gross with charges).
            theirs["our_ref"], theirs["description"] = None, f"payout {ours['our_ref']} thank you"
        statement.append((theirs, (class_, ours["our_id"])))
        if mutation == "duplicate":
            repeats.append((dict(theirs), ("duplicate", ours["our_id"])))

    if len(batch) >= 2:  # an MT940 credit of a whole previous day's nets: pass 3, as before
        members = [_bank_ours(1_000 + index, spec, YESTERDAY) for index, spec in enumerate(batch)]
        internal.extend(members)
        credit = {"our_ref": None, "channel_ref": "B-SETTLE", "kind": "payment", "status": "succeeded",
                  "amount": sum(m["amount"] - m["fee"] for m in members), "fee": None, "currency": "EUR",
                  "booked_on": PROPERTY_DAY, "value_on": None, "description": "net settlement of 22 November"}
        statement.append((credit, ("settlement", None)))
    else:
        members = []
    ceiling = 2_000_000 * (len(lines) + len(batch) + 1)
    for index in range(strays):
        stray = {"our_ref": f"zz-unknown-{'qwxyvk'[index]}", "channel_ref": None, "kind": "payment",
                 "status": "succeeded", "amount": ceiling + 7 * index, "fee": None, "currency": "EUR",
                 "booked_on": PROPERTY_DAY, "value_on": None, "description": None}
        statement.append((stray, ("missing_in_ledger", None)))

    order.shuffle(statement)
    numbered = [({**line, "line_no": number}, label)
                for number, (line, label) in enumerate([*statement, *repeats], start=2)]
    truth = set()
    for line, (class_, our_id) in numbered:
        if class_ == "settlement":
            truth.update(("matched", member["our_id"], line["line_no"]) for member in members)
        else:
            truth.add((class_, our_id, line["line_no"]))
    truth.update(expected)

    outcome = match(pl.DataFrame([line for line, _ in numbered], schema=STATEMENT_SCHEMA),
                    pl.DataFrame(internal, schema=INTERNAL_SCHEMA), MatchRules(), period=(PROPERTY_DAY, PROPERTY_DAY),
                    bank_statement=True)
    results = outcome.results
    assert set(results.select("class", "our_id", "line_no").iter_rows()) == truth
    assert results.height == len(truth)
    mismatches = with_delta(results.filter(pl.col("class") == "amount_mismatch"))
    for our_id, difference, delta in mismatches.select("our_id", "difference", "delta").iter_rows():
        assert difference == delta == gaps[our_id], (our_id, difference, delta)
