"""Accounting recipe 4, the channel pays us, through the HTTP API on SQLite and PostgreSQL.

Four card sales of one day (100.00, 101.00, 102.00, 103.00; the acquirer keeps 0.38%) debit
``channel_clearing:sandbox_card`` with their nets. A bank statement imported under the channel's name that pays
them (single credits, and one credit for several of them: pass 3) moves what it paid from
``channel_clearing:sandbox_card`` to ``bank:<account>`` in one entry per account and currency
(``tr_rcb_<reconciliation id>_<n>``, code ``channel_payout``), in the import's own transaction:

1. the clearing account drops by exactly what the statement paid, the bank account rises by it, the daily clearing
   report's ``clearing_balance`` shows it, and the ledger verifies;
2. a bank line paired with ours on another day (``timing``) is money that arrived too;
3. an unexplained bank credit waits in suspense from its import (recipe 9), and a channel's CSV posts nothing;
4. a posting the ledger refuses (an account in another currency, a closed one) refuses the whole import, with a
   problem+json answer and nothing written;
5. a client cannot take a payout's id first.
"""

from __future__ import annotations

from typing import Any

import pytest

from clearhouse.ledger.chart import account_id
from tests.payments.support import ledger_verifies
from tests.reconciliation.formats.test_session12_formats import camt, camt_entry, camt_statement, mt940_statement
from tests.reconciliation.support import cases_of, class_counts, sales_at_noon
from tests.reconciliation.test_api import CHANNEL, _line
from tests.reconciliation.test_session13 import CNY_IBAN, DAY, NEXT_DAY, _imported, _rules, _runs, _upload_file

BANK_ACCOUNT = f"bank:{CNY_IBAN}"
CLEARING = f"channel_clearing:{CHANNEL}"


@pytest.fixture
def sales(app, client, merchant_client_factory) -> list[Any]:
    """Four card sales at noon of ``DAY``; the timing cut-off off, so the clock cannot matter."""
    _rules(client, timing_cutoff_minutes=0)
    shop, _merchant_id = merchant_client_factory("Payout shop")
    return sales_at_noon(app, shop, [10_000 + i * 100 for i in range(4)])


def _major(minor: int) -> str:
    return f"{minor // 100}.{minor % 100:02d}"


def _net(row: Any) -> int:
    return row.amount - row.channel_cost


def _charged(row: Any) -> str:
    """A camt.053 credit of ``row``'s net, naming its channel id, the acquirer's fee included in it (the booked
    amount is the net, the gross is the amount plus the charges: docs/reconciliation.md)."""
    charges = (f'        <Chrgs><Rcrd><Amt Ccy="CNY">{_major(row.channel_cost)}</Amt><CdtDbtInd>DBIT</CdtDbtInd>'
               "<ChrgInclInd>true</ChrgInclInd></Rcrd></Chrgs>\n")
    return camt_entry(_major(_net(row)), row.external_id, charges, currency="CNY")


def _camt(entries: list[str], total: int, opening: int = 0) -> bytes:
    return camt(camt_statement("S17", CNY_IBAN, _major(opening), _major(opening + total), "".join(entries),
                               currency="CNY")).encode()


def _posted(client: Any, name: str, currency: str = "CNY") -> int | None:
    """A chart account's posted balance through the API (None: never opened)."""
    answer = client.get(f"/v1/ledger/accounts/{account_id(name, currency)}/balance")
    if answer.status_code == 404:
        return None
    assert answer.status_code == 200, answer.text
    return answer.json()["posted"]


def _import(client: Any, content: bytes, fmt: str = "camt053", name: str = "bank.xml", day: Any = DAY) -> dict:
    answer = _upload_file(client, content, fmt=fmt, channel=CHANNEL, day=day, name=name)
    assert answer.status_code == 201, answer.text
    return answer.json()


def _payout(client: Any, run_id: str, n: int = 1) -> Any:
    return client.get(f"/v1/ledger/transfers/tr_rcb_{run_id}_{n}")


def _clearing_row(client: Any, day: Any = DAY) -> dict[str, Any]:
    report = client.get("/v1/clearing/daily", params={"date": day.isoformat(), "channel": CHANNEL})
    assert report.status_code == 200, report.text
    (row,) = report.json()["channels"]
    return row


def _entries_of(client: Any, name: str) -> list[str]:
    answer = client.get(f"/v1/ledger/accounts/{account_id(name, 'CNY')}/entries")
    assert answer.status_code == 200, answer.text
    return sorted({line["transfer_id"] for line in answer.json()["data"]})


# ------------------------------------------------------------------------------------------------ 1


class TestABankStatementPayingTheDaysSales:
    def test_single_credits_and_a_batch_credit_move_what_they_paid_from_clearing_to_the_bank(self, app, client,
                                                                                              sales):
        clearing_before = _posted(client, CLEARING)
        assert clearing_before == sum(_net(row) for row in sales)
        # Two sales paid one by one, the other two by one credit of their nets (pass 3).
        batch = _net(sales[2]) + _net(sales[3])
        entries = [_charged(sales[0]), _charged(sales[1]), camt_entry(_major(batch), "BATCH-17", currency="CNY")]
        paid = _net(sales[0]) + _net(sales[1]) + batch
        run = _import(client, _camt(entries, paid))
        assert class_counts(run) == {"matched": 4} and run["case_count"] == 0, run

        assert _posted(client, CLEARING) == clearing_before - paid == 0
        assert _posted(client, BANK_ACCOUNT) == paid
        payout = _payout(client, run["id"])
        assert payout.status_code == 200, payout.text
        entry = payout.json()
        assert (entry["code"], entry["reference"], entry["amount"], entry["currency"]) == (
            "channel_payout", run["id"], paid, "CNY")
        assert (entry["debit_account_id"], entry["credit_account_id"]) == (account_id(BANK_ACCOUNT, "CNY"),
                                                                           account_id(CLEARING, "CNY"))
        assert entry["metadata"] == {"reconciliation_id": run["id"], "channel": CHANNEL, "account": BANK_ACCOUNT,
                                     "lines": 3}
        assert _payout(client, run["id"], 2).status_code == 404  # one account, one currency: one entry
        assert _entries_of(client, BANK_ACCOUNT) == [f"tr_rcb_{run['id']}_1"]

        row = _clearing_row(client)  # imported days after the statement's day: it still counts for that day
        assert (row["received"], row["clearing_balance"]) == (paid, 0)
        ledger_verifies(app)
        assert client.get("/v1/ledger/verify").json()["ok"] is True

    def test_an_mt940_credit_for_the_whole_day_leaves_only_what_it_did_not_pay_in_flight(self, app, client, sales):
        paid = sum(_net(row) for row in sales)
        text = mt940_statement("00017", CNY_IBAN, "C261122CNY1000,00",
                               f":61:2611231123C{paid // 100},{paid % 100:02d}NTRFNONREF//SETTLE17\n",
                               f"C261123CNY{(100_000 + paid) // 100},{(100_000 + paid) % 100:02d}")
        run = _import(client, text.encode(), fmt="mt940", name="bank.sta")
        assert class_counts(run) == {"matched": 4}, run
        # The account taken up at the statement's opening balance of 1,000.00 (session 20), then the credit.
        assert (_posted(client, CLEARING), _posted(client, BANK_ACCOUNT)) == (0, 100_000 + paid)
        assert _payout(client, run["id"]).json()["metadata"]["lines"] == 1  # one credit paid four sales

        row = _clearing_row(client)
        assert (row["received"], row["clearing_balance"]) == (paid, 0)
        ledger_verifies(app)

    def test_a_part_paid_leaves_the_rest_in_flight_and_its_case_open(self, app, client, sales):
        before = _posted(client, CLEARING)
        run = _import(client, _camt([_charged(sales[0])], _net(sales[0])))
        assert class_counts(run) == {"matched": 1, "missing_in_statement": 3}, run
        assert _posted(client, CLEARING) == before - _net(sales[0])
        assert _posted(client, BANK_ACCOUNT) == _net(sales[0])
        assert _clearing_row(client)["clearing_balance"] == before - _net(sales[0])
        ledger_verifies(app)


# ------------------------------------------------------------------------------------------------ 2


class TestABankLinePairedOnAnotherDay:
    def test_a_timing_pair_is_money_that_arrived(self, app, client, sales):
        late = _charged(sales[0]).replace("2026-11-23", NEXT_DAY.isoformat())
        content = camt(camt_statement("S17T", CNY_IBAN, "1000.00", _major(100_000 + _net(sales[0])), late,
                                      currency="CNY").replace("2026-11-23", NEXT_DAY.isoformat())).encode()
        run = _import(client, content, day=NEXT_DAY)
        assert class_counts(run).get("timing") == 1, run
        assert _posted(client, BANK_ACCOUNT) == 100_000 + _net(sales[0])  # its opening balance and the credit
        assert _payout(client, run["id"]).json()["metadata"]["lines"] == 1
        ledger_verifies(app)


# ------------------------------------------------------------------------------------------------ 3


class TestWhatPostsNoPayout:
    def test_an_unexplained_bank_credit_waits_in_suspense_from_its_import(self, app, client, sales):
        """Recipe 9 (session 19): the stray credit is the bank's money, posted on import to suspense beside the
        payout, never to the channel's clearing account; settling its case to suspense then posts nothing."""
        app.state.settings = app.state.settings.model_copy(update={"recon_approval_threshold": 1_000_000})
        before = _posted(client, CLEARING)
        paid = _net(sales[0])
        run = _import(client, _camt([_charged(sales[0]), camt_entry("50.00", "STRAY-17", currency="CNY")],
                                    paid + 5_000))
        assert class_counts(run) == {"matched": 1, "missing_in_ledger": 1, "missing_in_statement": 3}, run
        metadata = _payout(client, run["id"]).json()["metadata"]
        assert (metadata["lines"], metadata["unexplained"]) == (1, 5_000)  # the stray 50.00 is not the channel's
        assert (_posted(client, CLEARING), _posted(client, BANK_ACCOUNT), _posted(client, "suspense")) == (
            before - paid, paid + 5_000, 5_000)
        assert _clearing_row(client)["clearing_balance"] == before - paid

        (stray,) = [case for case in cases_of(client, run["id"]) if case["class"] == "missing_in_ledger"]
        resolved = client.post(f"/v1/recon_cases/{stray['id']}/resolve",
                               json={"action": "adjust", "reason": "unexplained credit"})
        assert resolved.status_code == 200, resolved.text
        assert resolved.json()["ledger_entry_id"] is None
        assert (_posted(client, CLEARING), _posted(client, BANK_ACCOUNT), _posted(client, "suspense")) == (
            before - paid, paid + 5_000, 5_000)
        assert _entries_of(client, BANK_ACCOUNT) == [f"tr_rcb_{run['id']}_1"]
        ledger_verifies(app)

    def test_a_channel_csv_statement_posts_nothing_and_the_bank_statement_after_it_posts_once(self, app, client,
                                                                                             sales):
        before = _posted(client, CLEARING)
        run = _imported(client, [_line(row, DAY) for row in sales], DAY, "card.csv")
        assert class_counts(run) == {"matched": 4}, run
        assert _payout(client, run["id"]).status_code == 404
        assert (_posted(client, CLEARING), _posted(client, BANK_ACCOUNT)) == (before, None)
        assert _clearing_row(client)["clearing_balance"] == before

        paid = sum(_net(row) for row in sales)
        bank = _import(client, _camt([_charged(row) for row in sales], paid))
        assert (_posted(client, CLEARING), _posted(client, BANK_ACCOUNT)) == (before - paid, paid)
        row = _clearing_row(client)
        assert (row["expected"], row["reported"], row["received"], row["clearing_balance"]) == (paid, paid, paid, 0)
        assert row["reconciliations"] == [run["id"], bank["id"]]
        ledger_verifies(app)


# ------------------------------------------------------------------------------------------------ 4


def _open_bank_account(app: Any, currency: str) -> str:
    """``bank:<CNY_IBAN>``'s CNY account id, opened ahead of reconciliation in ``currency``: by the ledger's
    service, since the API refuses a client the chart's ids (an older version's client could take it)."""
    from clearhouse.kit.db import transact
    from clearhouse.ledger import service as ledger

    found = account_id(BANK_ACCOUNT, "CNY")
    transact(app.state.engine, lambda s: ledger.create_account(s, id=found, type="asset", currency=currency,
                                                               code=BANK_ACCOUNT))
    return found


class TestAPayoutTheLedgerRefuses:
    @pytest.mark.parametrize(("spoil", "status", "code"), [("currency", 422, "currency_mismatch"),
                                                          ("closed", 409, "account_closed")])
    def test_refuses_the_whole_import_with_a_problem_and_writes_nothing(self, app, client, sales, spoil, status,
                                                                        code):
        found = _open_bank_account(app, "EUR" if spoil == "currency" else "CNY")
        if spoil == "closed":
            assert client.post(f"/v1/ledger/accounts/{found}/close").status_code == 200
        before = _posted(client, CLEARING)
        content = _camt([_charged(row) for row in sales], sum(_net(row) for row in sales))
        answer = _upload_file(client, content, fmt="camt053", channel=CHANNEL, day=DAY, name="bank.xml")
        assert answer.status_code == status, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
        problem = answer.json()
        assert problem["code"] == code and "nothing was imported" in problem["detail"], problem
        assert "payout" in problem["detail"]
        assert _runs(client, CHANNEL) == []
        assert client.get("/v1/recon_cases", params={"channel": CHANNEL}).json()["data"] == []
        assert _posted(client, CLEARING) == before
        ledger_verifies(app)


# ------------------------------------------------------------------------------------------------ 5


class TestAPayoutsIdIsTheSystems:
    def test_a_client_cannot_take_it_first(self, client):
        taken = client.post("/v1/ledger/transfers", json={
            "id": "tr_rcb_rec_01kmxyz_1", "debit_account_id": account_id(CLEARING, "CNY"),
            "credit_account_id": account_id("fee_revenue", "CNY"), "amount": 1, "currency": "CNY"})
        assert taken.status_code == 422, taken.text
        assert taken.json()["code"] == "validation_error"
        assert "tr_rcb_" in taken.text
