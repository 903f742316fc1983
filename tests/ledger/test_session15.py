"""Session 15: the chain head is guarded by the database (migration 0014), and a missing
head stops writes with a stable code while balances and histories still read."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.ledger.support import assert_problem, balance, transfer
from tests.ledger.test_tampering import behind_the_applications_back, write_ledger

REFUSED = {
    "DELETE FROM ledger_chain": "never deleted",
    "UPDATE ledger_chain SET seq = seq - 1": "only moves forward",
    "UPDATE ledger_chain SET hash = :zeros": "only moves forward",
    "UPDATE ledger_chain SET id = 2": "only moves forward",
    "INSERT INTO ledger_chain (id, seq, hash) VALUES (2, 99, :zeros)": "one head",
}


@pytest.mark.parametrize("statement", list(REFUSED))
def test_the_database_refuses_to_move_the_chain_head_back_or_remove_it(client, engine, statement):
    write_ledger(client)
    with engine.connect() as db:
        head = db.execute(text("SELECT id, seq, hash FROM ledger_chain")).all()
    with pytest.raises(DBAPIError) as refused, engine.begin() as db:
        db.execute(text(statement), {"zeros": "0" * 64})
    assert REFUSED[statement] in str(refused.value)
    with engine.connect() as db:
        assert db.execute(text("SELECT id, seq, hash FROM ledger_chain")).all() == head
    assert client.get("/v1/ledger/verify").json()["ok"] is True


def test_the_chain_head_still_moves_forward_with_every_write(client, engine):
    accounts = write_ledger(client)
    assert transfer(client, accounts.bank, accounts.merchant, 100, id="after").status_code == 201
    with engine.connect() as db:
        assert db.execute(text("SELECT seq FROM ledger_chain")).scalar_one() == 5


def test_without_its_chain_head_the_ledger_refuses_writes_and_still_reads(client, engine, backend):
    """A head removed past the guard: a write is 503 ledger_chain_broken (not a 500), and
    balances, histories and verify answer from the journal itself."""
    accounts = write_ledger(client)
    with behind_the_applications_back(engine, backend) as db:
        db.execute(text("DELETE FROM ledger_chain"))
    before = balance(client, accounts.merchant)
    assert_problem(transfer(client, accounts.bank, accounts.merchant, 100, id="lost"), 503, "ledger_chain_broken")
    assert balance(client, accounts.merchant) == before
    assert client.get("/v1/ledger/transfers/lost").status_code == 404
    history = client.get(f"/v1/ledger/accounts/{accounts.merchant}/entries")
    assert history.status_code == 200, history.text
    assert [item["transfer_id"] for item in history.json()["data"]] == ["opening", "pay-1001", "pay-1002"]
    report = client.get("/v1/ledger/verify")
    assert report.status_code == 200 and report.json()["ok"] is False
