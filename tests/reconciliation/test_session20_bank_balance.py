"""The ledger's bank account stands at the bank's closing balance once its statements are in (accounting.md:
"``bank:{account}`` equals the bank statement's closing balance after reconciliation of that day").

Before session 20 a bank statement's lines moved ``bank:<account>`` but its opening balance was never posted, so the
account stood at the closing balance less the first statement's opening balance, and nothing said when a statement
between two imported ones was missing. Now the account's earliest statement takes it up (its opening balance posted
against ``opening_balances``, equity), and every import says how its opening balance continues the ledger. Through
the HTTP API, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import delete

from clearhouse.reconciliation.models import ReconBankOpening
from tests.payments.support import ledger_verifies
from tests.reconciliation.formats.test_session12_formats import mt940_statement
from tests.reconciliation.test_session13 import CNY_IBAN, DAY, _upload_file
from tests.reconciliation.test_session17_bank_net import _comma, _mark
from tests.reconciliation.test_session17_channel_payout import _entries_of, _posted

BANK = f"bank:{CNY_IBAN}"
CHANNEL = "bank_cny"  # a bank account seen on its own: none of our payments, every line waits in suspense


def _balance(value: int, day: date) -> str:
    return f"{_mark(value)}{day:%y%m%d}CNY{_comma(abs(value))}"


def _statement(number: int, opening: int, credits: list[int], opened: date) -> tuple[bytes, int]:
    """The bank's statement ``number`` of ``CNY_IBAN``: its opening balance dated ``opened``, the credits (signed
    minor units) booked the next day, its closing balance; and that closing balance."""
    booked = opened + timedelta(days=1)
    lines = "".join(f":61:{booked:%y%m%d}{booked:%m%d}{'C' if amount > 0 else 'D'}{_comma(abs(amount))}"
                    f"NTRFNONREF//S{number}L{n}\n:86:nobody we know {number}/{n}\n"
                    for n, amount in enumerate(credits, 1))
    closing = opening + sum(credits)
    text = mt940_statement(f"{number:05d}", CNY_IBAN, _balance(opening, opened), lines, _balance(closing, booked))
    return text.encode(), closing


def _import(client: Any, content: bytes, opened: date) -> dict[str, Any]:
    answer = _upload_file(client, content, fmt="mt940", channel=CHANNEL, day=opened + timedelta(days=1),
                          name=f"{opened}.sta")
    assert answer.status_code == 201, answer.text
    return answer.json()


def _continuity(run: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(b["account"], b["currency"], b["opening_balance"], b["ledger_balance"], b["took_up"], b["amount"],
             b["gap"]) for b in run["bank_balances"]]


def _verified(app: Any, client: Any) -> None:
    ledger_verifies(app)
    assert client.get("/v1/ledger/verify").json()["ok"] is True


class TestTheFirstStatementTakesTheAccountUp:
    def test_its_opening_balance_is_posted_against_opening_balances(self, app, client):
        content, closing = _statement(101, 1_000_000, [2_500, -700], DAY)
        run = _import(client, content, DAY)
        (taken,) = run["bank_balances"]
        assert _continuity(run) == [(BANK, "CNY", 1_000_000, 0, "first", 1_000_000, 0)]
        assert taken["entry_id"] == f"tr_rco_{run['id']}_1"
        # The bank account stands at the statement's closing balance; the lines wait in suspense for their cases.
        assert (_posted(client, BANK), _posted(client, "opening_balances"), _posted(client, "suspense")) == (
            closing, 1_000_000, 1_800)
        entry = client.get(f"/v1/ledger/transfers/{taken['entry_id']}").json()
        assert (entry["code"], entry["reference"]) == ("bank_opening_balance", run["id"])
        assert entry["metadata"] == {"reconciliation_id": run["id"], "channel": CHANNEL, "account": BANK,
                                     "opening_balance": 1_000_000, "ledger_balance": 0}
        assert sorted(_entries_of(client, BANK)) == sorted([taken["entry_id"], f"tr_rcb_{run['id']}_1"])
        _verified(app, client)

    def test_an_overdrawn_account_is_taken_up_below_zero(self, app, client):
        content, closing = _statement(102, -50_000, [20_000], DAY)
        run = _import(client, content, DAY)
        assert _continuity(run) == [(BANK, "CNY", -50_000, 0, "first", -50_000, 0)]
        assert (_posted(client, BANK), _posted(client, "opening_balances")) == (closing, -50_000)
        assert closing == -30_000
        _verified(app, client)

    def test_an_account_moved_before_the_rule_is_taken_up_for_the_difference(self, app, client):
        """A database upgraded to 0020: the account's earlier statements moved it by their lines only, and no row
        says where it was taken up. Its next statement posts what the ledger lacks of its opening balance."""
        content, closing = _statement(103, 0, [4_000], DAY)
        _import(client, content, DAY)
        assert _posted(client, BANK) == 4_000
        with app.state.engine.begin() as connection:  # as before migration 0020: no take-up remembered
            connection.execute(delete(ReconBankOpening.__table__))
        content, closing = _statement(104, 250_000 + 4_000, [1_000], DAY + timedelta(days=1))
        run = _import(client, content, DAY + timedelta(days=1))
        assert _continuity(run) == [(BANK, "CNY", 254_000, 4_000, "first", 250_000, 0)]
        assert (_posted(client, BANK), _posted(client, "opening_balances")) == (closing, 250_000)
        _verified(app, client)


class TestLaterStatements:
    def test_one_that_continues_posts_nothing_more_and_says_so(self, app, client):
        first, closing = _statement(201, 300_000, [1_000], DAY)
        _import(client, first, DAY)
        second, final = _statement(202, closing, [-2_000, 500], DAY + timedelta(days=1))
        run = _import(client, second, DAY + timedelta(days=1))
        assert _continuity(run) == [(BANK, "CNY", closing, closing, None, 0, 0)]
        assert run["bank_balances"][0]["entry_id"] is None
        assert (_posted(client, BANK), _posted(client, "opening_balances")) == (final, 300_000)
        _verified(app, client)

    def test_a_missing_statement_shows_as_a_gap_until_it_comes(self, app, client):
        day_1, closing_1 = _statement(301, 100_000, [1_000], DAY)
        day_2, closing_2 = _statement(302, closing_1, [7_000], DAY + timedelta(days=1))
        day_3, closing_3 = _statement(303, closing_2, [-300], DAY + timedelta(days=2))
        _import(client, day_1, DAY)
        third = _import(client, day_3, DAY + timedelta(days=2))  # day 2's statement has not come
        assert _continuity(third) == [(BANK, "CNY", closing_2, closing_1, None, 0, 7_000)]
        assert _posted(client, BANK) == closing_1 - 300  # short of the bank by day 2's lines, as the gap says
        second = _import(client, day_2, DAY + timedelta(days=1))
        # It opens where day 1 closed, but the ledger holds day 3's lines already: a later one came first.
        assert _continuity(second) == [(BANK, "CNY", closing_1, closing_1 - 300, None, 0, 300)]
        assert (_posted(client, BANK), _posted(client, "opening_balances")) == (closing_3, 100_000)
        _verified(app, client)

    def test_an_earlier_statement_moves_the_take_up_back(self, app, client):
        day_1, closing_1 = _statement(401, 80_000, [5_000, -1_000], DAY)
        day_2, closing_2 = _statement(402, closing_1, [2_000], DAY + timedelta(days=1))
        later = _import(client, day_2, DAY + timedelta(days=1))
        assert _continuity(later) == [(BANK, "CNY", closing_1, 0, "first", closing_1, 0)]
        earlier = _import(client, day_1, DAY)
        # Day 2's opening balance held day 1's lines, which now post themselves: the take-up moves to day 1's.
        assert _continuity(earlier) == [(BANK, "CNY", 80_000, closing_2, "earlier", 80_000 - closing_1, 0)]
        assert earlier["bank_balances"][0]["entry_id"] == f"tr_rco_{earlier['id']}_1"
        assert (_posted(client, BANK), _posted(client, "opening_balances")) == (closing_2, 80_000)
        _verified(app, client)

    def test_the_same_days_earlier_page_moves_it_back_too(self, app, client):
        """Two pages of one day share their opening balance's date: the earlier is the one closing where the other
        opens."""
        page_1, closing_1 = _statement(501, 10_000, [1_000], DAY)
        page_2, closing_2 = _statement(502, closing_1, [3_000], DAY)
        _import(client, page_2, DAY)
        earlier = _import(client, page_1, DAY)
        assert _continuity(earlier) == [(BANK, "CNY", 10_000, closing_2, "earlier", 10_000 - closing_1, 0)]
        assert (_posted(client, BANK), _posted(client, "opening_balances")) == (closing_2, 10_000)
        _verified(app, client)


def test_a_client_cannot_take_an_opening_balance_entry_id(client):
    answer = client.post("/v1/ledger/transfers", json={
        "id": "tr_rco_rec_01abc_1", "debit_account_id": "acct_a", "credit_account_id": "acct_b", "amount": 1,
        "currency": "CNY"})
    assert answer.status_code == 422, answer.text
    assert "tr_rco_" in answer.text


@pytest.mark.slow  # a real process (about 4 s of CPU): in the slow run
def test_recon_run_says_where_the_account_was_taken_up_and_what_is_missing(client, database_url, tmp_path):
    from tests.test_cli import clearhouse, ok

    day_1, closing_1 = _statement(601, 20_000, [1_000], DAY)
    day_2, closing_2 = _statement(602, closing_1, [2_000], DAY + timedelta(days=1))
    day_3, _closing_3 = _statement(603, closing_2, [3_000], DAY + timedelta(days=2))
    runs = []
    for content, opened in ((day_1, DAY), (day_3, DAY + timedelta(days=2))):
        path = tmp_path / f"{opened}.sta"
        path.write_bytes(content)
        result = ok(clearhouse("recon", "run", "--channel", CHANNEL, "--file", str(path), "--format", "mt940",
                               "--date", (opened + timedelta(days=1)).isoformat(), url=database_url, cwd=tmp_path))
        runs.append(" ".join(result.stderr.split()))  # rich wraps long lines
    assert f"{BANK} CNY: taken up at this statement's opening balance 20000 (its first statement; 20000 posted " \
           "from opening_balances)" in runs[0]
    assert "are in no imported statement" not in runs[0]
    assert f"{BANK} CNY: 2000 minor units of lines between this statement and the account's others are in no " \
           "imported statement: one is missing (or came out of order)" in runs[1]
    assert "taken up" not in runs[1]
    assert _posted(client, BANK) == closing_1 + 3_000


class TestTheAccountantsFindings:
    """The treasury accountant tester (session 20), on this file's first version."""

    def test_a_days_next_page_that_returns_to_where_it_began_continues_the_account(self, app, client):
        """Page 1 goes 3,000.00 to 3,100.00, page 2 back to 3,000.00, one day: page 2, imported second, was taken
        for the day's earlier page (it closes where page 1 opens), and the account stood 100.00 above the bank."""
        page_1, closing_1 = _statement(701, 300_000, [10_000], DAY)
        page_2, closing_2 = _statement(702, closing_1, [-10_000], DAY)
        _import(client, page_1, DAY)
        second = _import(client, page_2, DAY)
        assert _continuity(second) == [(BANK, "CNY", closing_1, closing_1, None, 0, 0)]
        assert (_posted(client, BANK), _posted(client, "opening_balances")) == (closing_2, 300_000)
        _verified(app, client)

    def test_a_statement_opening_after_it_closes_is_refused(self, client):
        content, _closing = _statement(703, 1_000, [100], DAY)
        backwards = content.replace(f"{_mark(1_000)}{DAY:%y%m%d}".encode(),
                                    f"{_mark(1_000)}{DAY + timedelta(days=5):%y%m%d}".encode(), 1)
        assert backwards != content
        answer = _upload_file(client, backwards, fmt="mt940", channel=CHANNEL, day=DAY, name="backwards.sta")
        assert (answer.status_code, answer.json()["code"]) == (422, "statement_invalid"), answer.text
        assert "after the closing balance" in answer.json()["detail"]

    def test_a_camt053_balance_without_its_date_is_refused(self, client):
        from tests.reconciliation.formats.test_session12_formats import camt, camt_statement

        dated = camt(camt_statement("S704", CNY_IBAN, "10.00", "10.00", currency="CNY"))
        undated = dated.replace("        <Dt><Dt>2026-11-23</Dt></Dt>\n", "", 1)
        assert undated != dated
        answer = _upload_file(client, undated.encode(), fmt="camt053", channel=CHANNEL, day=DAY, name="undated.xml")
        assert (answer.status_code, answer.json()["code"]) == (422, "statement_invalid"), answer.text
        assert "opening balance has no date" in answer.json()["detail"]


def test_the_run_shows_what_its_import_put_in_suspense(client):
    """reconciliation.md says each currency of a bank statement's run shows it; the answer's model dropped it."""
    content, _closing = _statement(801, 5_000, [2_500, -700], DAY)
    run = _import(client, content, DAY)
    assert run["clearing"]["CNY"]["suspense_on_import"] == 1_800
    assert client.get(f"/v1/reconciliations/{run['id']}").json()["clearing"]["CNY"]["suspense_on_import"] == 1_800
