"""Session 15: on SQLite, ``INSERT OR REPLACE`` deletes the rows it conflicts with without
firing their DELETE triggers. Migration 0014 makes the chain heads refuse any INSERT while
their row exists and audit events refuse an INSERT over a taken seq or id, so nobody with the
application's database can drop the newest events and move the head back unseen."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.audit.support import ADMIN, cli_report, record, verify


def _trail(engine) -> list[tuple]:
    with engine.connect() as db:
        return db.execute(text("SELECT seq, id, actor_id, hash FROM audit_events ORDER BY seq")).all()


def _head(engine) -> list[tuple]:
    with engine.connect() as db:
        return db.execute(text("SELECT id, seq, hash FROM audit_chain")).all()


@pytest.fixture
def trail(engine):
    for n in range(3):
        record(engine, ADMIN, "merchant.update", "merchant", f"mer_{n}", changes={"name": [f"a{n}", f"b{n}"]})
    return _trail(engine), _head(engine)


def _refused(engine, backend, statement: str, message: str) -> None:
    if backend != "sqlite" and "OR REPLACE" in statement:
        pytest.skip("INSERT OR REPLACE is SQLite's")
    with pytest.raises(DBAPIError) as refused, engine.begin() as db:
        db.execute(text(statement))
    assert message in str(refused.value)


def test_the_newest_event_cannot_be_replaced_away(engine, backend, trail):
    """The tester's recipe: a row at seq 2 carrying event 3's id, then the head back to 2."""
    events, head = trail
    _refused(engine, backend,
             "INSERT OR REPLACE INTO audit_events SELECT 2, (SELECT id FROM audit_events WHERE seq = 3), "
             "occurred_at, actor_type, actor_id, actor_role, merchant_id, source_ip, request_id, action, "
             "object_type, object_id, changes_json, prev_hash, hash FROM audit_events WHERE seq = 2",
             "INSERT over an event refused")
    assert _trail(engine) == events and _head(engine) == head


@pytest.mark.parametrize("statement", [
    "INSERT OR REPLACE INTO audit_chain (id, seq, hash) VALUES (1, 1, 'x')",
    "INSERT INTO audit_chain (id, seq, hash) VALUES (2, 1, 'x')",
])
def test_the_audit_chain_head_cannot_be_inserted_over(engine, backend, trail, statement):
    events, head = trail
    _refused(engine, backend, statement, "the audit chain has one head")
    assert _trail(engine) == events and _head(engine) == head
    assert verify(engine).ok


@pytest.mark.parametrize("statement", [
    "INSERT OR REPLACE INTO ledger_chain (id, seq, hash) VALUES (1, 0, 'x')",
    "INSERT INTO ledger_chain (id, seq, hash) VALUES (2, 0, 'x')",
])
def test_the_ledger_chain_head_cannot_be_inserted_over(engine, backend, statement):
    with engine.connect() as db:
        before = db.execute(text("SELECT id, seq, hash FROM ledger_chain")).all()
    _refused(engine, backend, statement, "the ledger chain has one head")
    with engine.connect() as db:
        assert db.execute(text("SELECT id, seq, hash FROM ledger_chain")).all() == before


def test_a_replaced_ledger_entry_is_seen_by_verify(client, engine, backend, database_url):
    """The ledger's own rows are left to verify (the migration says why): a REPLACE that drops
    the newest entry leaves the head past the journal's end."""
    if backend != "sqlite":
        pytest.skip("INSERT OR REPLACE is SQLite's")
    from tests.ledger.test_tampering import assert_caught, write_ledger

    write_ledger(client)
    with engine.begin() as db:
        db.execute(text("INSERT OR REPLACE INTO ledger_transfers SELECT * FROM ledger_transfers WHERE seq = 3"))
        columns = [row[1] for row in db.execute(text("PRAGMA table_info(ledger_transfers)"))]
        values = ", ".join("(SELECT id FROM ledger_transfers WHERE seq = 4)" if c == "id" else c for c in columns)
        db.execute(text(f"INSERT OR REPLACE INTO ledger_transfers SELECT {values} FROM ledger_transfers WHERE seq = 3"))
    report = assert_caught(client, database_url, {"check": "hash_mismatch", "seq": 3}, cli=False)
    assert "chain_head" in [failure["check"] for failure in report["failures"]]


def test_the_cli_still_verifies_an_untouched_trail(database_url, trail):
    code, report = cli_report(database_url)
    assert code == 0 and report["ok"] is True
