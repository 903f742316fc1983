"""A line of ours is paid out once (recipe 4), however many bank statements carry it.

Found by the accountant tester: bank statements add up (one is never a re-issue of another), but matched pairs are
not stored, so a line a first statement paid was paired and paid again by another page of the same day, by the next
day's statement, and by a settlement credit for the whole day; ``channel_clearing:sandbox_card`` went below zero.
Now ``recon_paid_lines`` holds each line a bank statement paid (primary key: the line), and a later line that pays it
again is a ``duplicate``: a case, and no money posted. Through the HTTP API, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from tests.payments.support import ledger_verifies
from tests.reconciliation.formats.test_session12_formats import mt940_statement
from tests.reconciliation.support import cases_of, class_counts
from tests.reconciliation.test_session13 import CNY_IBAN
from tests.reconciliation.test_session17_bank_net import _eref, _mt940, _mt940_import, sales  # noqa: F401
from tests.reconciliation.test_session17_channel_payout import BANK_ACCOUNT, CLEARING, _import, _net, _payout, _posted


def _paid(app: Any, client: Any) -> tuple[int | None, int | None]:
    ledger_verifies(app)
    assert client.get("/v1/ledger/verify").json()["ok"] is True
    return _posted(client, CLEARING), _posted(client, BANK_ACCOUNT)


def test_a_second_statement_carrying_a_paid_line_does_not_pay_it_again(app, client, sales):  # noqa: F811
    sale, other = sales
    first = _mt940_import(client, [(_net(sale), _eref(sale.reference))])
    assert class_counts(first)["matched"] == 1
    assert _paid(app, client) == (_net(other), _net(sale))

    # Another statement (the next page, or the next day's) that carries the same credit and the other sale's.
    # It opens where the first closed: the account's statements follow each other (session 20).
    text = _mt940([(_net(sale), _eref(sale.reference)), (_net(other), _eref(other.reference))],
                  opening=_net(sale), number="01718")
    answer = client.post("/v1/reconciliations", files={"file": ("bank2.sta", text)},
                         data={"channel": "sandbox_card", "format": "mt940", "statement_date": "2026-11-23"})
    assert answer.status_code == 201, answer.text
    second = answer.json()
    assert class_counts(second) == {"matched": 1, "duplicate": 1}, second
    (repeat,) = cases_of(client, second["id"])
    assert (repeat["class"], repeat["our_id"]) == ("duplicate", sale.id)
    # Only the other sale's money left clearing: it is empty, not below zero. The repeated credit is the bank's
    # money all the same, waiting in suspense for its case (recipe 9, on import: session 19).
    assert _paid(app, client) == (0, 2 * _net(sale) + _net(other))
    assert _posted(client, "suspense") == _net(sale)
    metadata = _payout(client, second["id"]).json()["metadata"]
    assert (metadata["lines"], metadata["unexplained"]) == (1, _net(sale))


def test_a_mismatched_pair_paid_once_is_not_paid_again(app, client, sales):  # noqa: F811
    sale, other = sales
    first = _mt940_import(client, [(sale.amount, _eref(sale.reference))])  # gross: our net posted, a 0.38 case
    assert class_counts(first)["amount_mismatch"] == 1
    assert _paid(app, client) == (_net(other), sale.amount)  # our net from clearing, the 0.38 from suspense
    text = _mt940([(_net(sale), _eref(sale.reference))], opening=sale.amount, number="01719")
    answer = client.post("/v1/reconciliations", files={"file": ("bank3.sta", text)},
                         data={"channel": "sandbox_card", "format": "mt940", "statement_date": "2026-11-23"})
    assert answer.status_code == 201, answer.text
    assert class_counts(answer.json()).get("duplicate") == 1, answer.json()
    assert _paid(app, client) == (_net(other), sale.amount + _net(sale))  # clearing paid once
    assert _posted(client, "suspense") == sale.channel_cost + _net(sale)  # the first 0.38, the repeat
    metadata = _payout(client, answer.json()["id"]).json()["metadata"]
    assert (metadata["lines"], metadata["unexplained"]) == (0, _net(sale))


def test_a_settlement_credit_does_not_pay_a_line_paid_already(app, client, sales):  # noqa: F811
    sale, other = sales
    _mt940_import(client, [(_net(sale), _eref(sale.reference))])
    whole_day = _net(sale) + _net(other)  # as if the acquirer paid the day again in one credit
    opening = _net(sale)  # where the first statement closed
    closing = opening + whole_day
    text = mt940_statement("01720", CNY_IBAN, f"C261122CNY{opening // 100},{opening % 100:02d}",
                           f":61:2611231123C{whole_day // 100},{whole_day % 100:02d}NTRFNONREF//SETTLE\n",
                           f"C261123CNY{closing // 100},{closing % 100:02d}")
    run = _import(client, text.encode(), fmt="mt940", name="bank4.sta")
    assert class_counts(run).get("matched", 0) == 0, run  # the credit pays more than the unpaid sale
    assert _paid(app, client) == (_net(other), _net(sale) + whole_day)  # the credit waits in suspense
    assert _posted(client, "suspense") == whole_day
    metadata = _payout(client, run["id"]).json()["metadata"]
    assert (metadata["lines"], metadata["unexplained"]) == (0, whole_day)


def test_a_camt053_written_on_one_line_pays_only_its_paired_entries(app, client, sales):  # noqa: F811
    """Entries were numbered by the line they start on, so in a file on one line every entry had one number and a
    credit for nobody was paid out beside the paired one (the accountant tester's minified camt.053)."""
    from tests.reconciliation.formats.test_session12_formats import camt_entry
    from tests.reconciliation.test_session17_channel_payout import _camt, _major

    sale, other = sales
    content = _camt([camt_entry(_major(_net(sale)), sale.external_id, currency="CNY"),
                     camt_entry("5.00", "NOBODY-1", currency="CNY")], _net(sale) + 500)
    one_line = b"".join(part.strip() for part in content.splitlines())
    run = _import(client, one_line, name="one-line.xml")
    assert class_counts(run) == {"matched": 1, "missing_in_ledger": 1, "missing_in_statement": 1}, run
    numbers = [case["line_no"] for case in cases_of(client, run["id"]) if case["line_no"] is not None]
    assert len(numbers) == 1 and numbers[0] > 1  # the unpaired credit has a number of its own
    assert _paid(app, client) == (_net(other), _net(sale) + 500)  # the 5.00 for nobody: the bank's money...
    assert _posted(client, "suspense") == 500  # ...waiting for its case


def test_adjusting_a_line_the_bank_statement_lacks_moves_clearing_not_the_bank(app, client, sales):  # noqa: F811
    """A bank statement's ``missing_in_statement`` case is money that never reached the bank: it is still the
    channel's. Its adjustment used to credit ``bank:<account>`` for it, taking the bank below what it holds."""
    from tests.reconciliation.test_session17_bank_net import _adjust

    app.state.settings = app.state.settings.model_copy(update={"recon_approval_threshold": 1_000_000})
    sale, other = sales
    run = _mt940_import(client, [(_net(sale), _eref(sale.reference))])
    (missing,) = [case for case in cases_of(client, run["id"]) if case["class"] == "missing_in_statement"]
    assert (missing["our_id"], missing["line_no"], missing["delta"]) == (other.id, None, -_net(other))
    assert _paid(app, client) == (_net(other), _net(sale))
    _adjust(client, missing["id"])  # the operator gives up on it: to suspense
    assert _paid(app, client) == (0, _net(sale))  # the bank holds what the statement says, clearing is empty
    assert _posted(client, "suspense") == -_net(other)


def test_a_renumbered_copy_is_refused_naming_the_earlier_imports_number(client):
    """The same figures under another statement number: refused, and the detail names the number that was
    imported (it named the refused file's, which the operator could not find among the imports)."""
    from tests.reconciliation.test_session17_statement_identity import (
        STATEMENT_1,
        _already_imported,
        _imported,
        _mt940_upload,
    )

    first = _imported(client, STATEMENT_1, "statement.sta")
    renumbered = STATEMENT_1.replace(":28C:00101/001", ":28C:00777/001")
    assert renumbered != STATEMENT_1
    detail = _already_imported(_mt940_upload(client, renumbered, "renumbered.sta"), first["id"])
    assert "statement number 101 (sequence 1)" in detail and "this file numbers it 777" in detail, detail


def test_a_later_days_payout_imported_early_counts_for_its_own_day(app, client, sales):  # noqa: F811
    """The clearing report's ``clearing_balance`` of day D left out the payout of a statement of D+1 imported
    during D (the accountant tester's L1): a payout counts for its statement's day, whenever it is imported."""
    from datetime import timedelta

    from clearhouse.kit import clock
    from tests.reconciliation.support import NOON
    from tests.reconciliation.test_session13 import DAY, NEXT_DAY, _upload_file
    from tests.reconciliation.test_session17_bank_net import _comma
    from tests.reconciliation.test_session17_channel_payout import _clearing_row

    sale, other = sales
    opening = _net(other)  # where D's statement, imported after it, closes
    closing = opening + _net(sale)
    text = mt940_statement("01730", CNY_IBAN, f"C261123CNY{_comma(opening)}",
                           f":61:2611241124C{_comma(_net(sale))}NTRFNONREF//B1\n:86:{_eref(sale.reference)}\n",
                           f"C261124CNY{_comma(closing)}")
    with clock.frozen(NOON + timedelta(hours=6)):  # 18:00 of DAY: the next day's statement arrives early
        answer = _upload_file(client, text.encode(), fmt="mt940", channel="sandbox_card", day=NEXT_DAY,
                              name="next-day.sta")
    assert answer.status_code == 201, answer.text
    assert class_counts(answer.json()).get("matched") == 1 or class_counts(answer.json()).get("timing") == 1
    # The account is taken up at this statement's opening balance (session 20): the bank's closing balance.
    assert _paid(app, client) == (_net(other), closing)
    # D's own statement, imported now (after D): it pays the other sale. It comes before the one the account was
    # taken up at, which moves back to D's opening balance (0): D's credit was in D+1's opening balance.
    earlier = _mt940_import(client, [(_net(other), _eref(other.reference))])
    assert [(b["took_up"], b["amount"], b["gap"]) for b in earlier["bank_balances"]] == [("earlier", -opening, 0)]
    assert _paid(app, client) == (0, _net(sale) + _net(other))
    assert _posted(client, "opening_balances") == 0
    assert _clearing_row(client, DAY)["clearing_balance"] == _net(sale)  # D paid the other; the sale, on D+1


def test_the_clearing_report_refuses_a_channel_no_channel_could_be_named(client):
    """``channel=BAD NAME`` answered 200 with an empty report, as if the channel had nothing (session 16's tester);
    it is a 422, as ``recon clearing --channel`` is a usage error."""
    refused = client.get("/v1/clearing/daily", params={"date": "2026-11-23", "channel": "BAD NAME"})
    assert (refused.status_code, refused.json()["code"]) == (422, "validation_error"), refused.text
    assert client.get("/v1/clearing/daily", params={"date": "2026-11-23", "channel": "sandbox_card"}).status_code == 200
