"""Rows changed behind the application's back are caught.

First the database itself refuses to rewrite history (immutability triggers). Then,
with the triggers out of the way (dropped on SQLite; ``session_replication_role =
replica`` for one transaction on PostgreSQL, so the shared schema keeps its triggers),
each kind of tampering is made and both ``GET /v1/ledger/verify`` and the CLI
``clearhouse ledger verify`` must report it, naming the first failing entry or account.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from clearhouse.kit.db import transact
from clearhouse.ledger import repository, service
from tests.ledger.support import assert_verified, open_account, transfer_body

CLI = Path(sys.executable).with_name("clearhouse")


def write_ledger(client) -> SimpleNamespace:
    """Four entries, seq 1-4: opening, a three-leg payment with metadata, two payments."""
    bank = open_account(client, "asset", code="bank:B")
    merchant = open_account(client, "liability", code="merchant_pending:M")
    other = open_account(client, "liability", code="merchant_pending:N")
    fee = open_account(client, "revenue", code="fee_revenue")
    response = client.post(
        "/v1/ledger/transfers",
        json={
            "linked": True,
            "transfers": [
                transfer_body(bank, merchant, 10000, id="opening"),
                {
                    "id": "pay-1001",
                    "metadata": {"order": "1001"},
                    "postings": [
                        {
                            "account_id": bank,
                            "direction": "debit",
                            "amount": 5000,
                            "currency": "CNY",
                        },
                        {
                            "account_id": merchant,
                            "direction": "credit",
                            "amount": 4970,
                            "currency": "CNY",
                        },
                        {"account_id": fee, "direction": "credit", "amount": 30, "currency": "CNY"},
                    ],
                },
                transfer_body(bank, merchant, 2000, id="pay-1002"),
                transfer_body(bank, other, 700, id="pay-1003"),
            ],
        },
    )
    assert response.status_code == 200, response.text
    seqs = {
        tid: client.get(f"/v1/ledger/transfers/{tid}").json()["seq"]
        for tid in ("opening", "pay-1001", "pay-1002", "pay-1003")
    }
    assert seqs == {"opening": 1, "pay-1001": 2, "pay-1002": 3, "pay-1003": 4}
    assert_verified(client)
    return SimpleNamespace(bank=bank, merchant=merchant, other=other, fee=fee)


@contextmanager
def behind_the_applications_back(engine, backend) -> Iterator[object]:
    """A connection on which the immutability triggers do not fire."""
    with engine.begin() as connection:
        if backend == "postgresql":
            # For this transaction only: the schema is shared, its triggers stay in place.
            connection.execute(text("SET LOCAL session_replication_role = replica"))
        else:
            for table in ("ledger_transfers", "ledger_postings"):
                for action in ("update", "delete"):
                    connection.execute(text(f"DROP TRIGGER {table}_no_{action}"))
            for trigger in ("ledger_chain_no_delete", "ledger_chain_forward", "ledger_chain_one_row"):
                connection.execute(text(f"DROP TRIGGER {trigger}"))
        yield connection


def run_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``clearhouse`` command in its own process, against the test database."""
    env = {**os.environ, "CLEARHOUSE_DATABASE_URL": database_url}
    command = (
        [str(CLI)]
        if CLI.exists()
        else [sys.executable, "-c", "from clearhouse.cli import main; main()"]
    )
    return subprocess.run(
        [*command, "ledger", "verify", *args], env=env, capture_output=True, text=True, timeout=120
    )


def assert_caught(client, database_url, first_failure, *, only=False, cli=True):
    """``GET /v1/ledger/verify`` and ``clearhouse ledger verify --json`` both report
    ok=false with ``first_failure`` (a subset of it), and the CLI exits 1.

    ``cli=False`` checks the API alone: each CLI run costs seconds of interpreter start-up,
    so the CLI is run for the main kinds of tampering and the API for the rest."""
    report = client.get("/v1/ledger/verify").json()
    assert report["ok"] is False
    assert report["first_failure"] == report["failures"][0]
    assert first_failure.items() <= report["first_failure"].items(), report["first_failure"]
    if only:
        assert report["failures"] == [report["first_failure"]], report["failures"]
    if not cli:
        return report
    command = run_cli(database_url, "--json")
    assert command.returncode == 1, command.stderr
    cli_report = json.loads(command.stdout)
    assert cli_report["ok"] is False
    assert cli_report["first_failure"] == report["first_failure"]
    assert cli_report["failures"] == report["failures"]
    return report


class TestImmutability:
    def test_the_database_refuses_to_update_or_delete_entries_and_postings(
        self, client, engine, backend
    ):
        write_ledger(client)
        refused = [
            ("UPDATE ledger_postings SET amount = amount + 1 WHERE seq = 2", "UPDATE", "postings"),
            ("UPDATE ledger_postings SET account_id = account_id", "UPDATE", "postings"),
            ("DELETE FROM ledger_postings WHERE seq = 2", "DELETE", "postings"),
            # A plain transfer keeps its two legs on its own row (migration 0011).
            ("UPDATE ledger_transfers SET amount = amount + 1 WHERE seq = 4", "UPDATE", "transfers"),
            ("UPDATE ledger_transfers SET credit_account = debit_account WHERE seq = 3", "UPDATE", "transfers"),
            (
                "UPDATE ledger_transfers SET metadata_json = '{}' WHERE seq = 2",
                "UPDATE",
                "transfers",
            ),
            ("UPDATE ledger_transfers SET hash = hash WHERE seq = 1", "UPDATE", "transfers"),
            ("DELETE FROM ledger_transfers WHERE seq = 4", "DELETE", "transfers"),
        ]
        if backend == "postgresql":
            refused.append(("TRUNCATE ledger_postings", "TRUNCATE", "postings"))
        for statement, action, table in refused:
            message = f"ledger rows are immutable: {action} on ledger_{table} refused"
            with pytest.raises(DBAPIError, match=message), engine.begin() as connection:
                connection.execute(text(statement))
        report = assert_verified(client)
        assert (report["entries_checked"], report["postings_checked"]) == (4, 9)

    def test_intact_ledger_verifies_in_the_cli_with_exit_0(self, client, database_url):
        write_ledger(client)
        cli = run_cli(database_url)
        assert cli.returncode == 0, cli.stderr
        assert "ledger verified" in cli.stderr
        assert "4 entries, 9 postings, 4 accounts" in cli.stderr


class TestTamperingIsCaught:
    def test_a_changed_amount_is_caught_at_its_entry(self, client, engine, backend, database_url):
        books = write_ledger(client)
        with behind_the_applications_back(engine, backend) as db:
            db.execute(text("UPDATE ledger_postings SET amount = 5100 WHERE seq = 2 AND idx = 0"))
        report = assert_caught(
            client,
            database_url,
            {"check": "hash_mismatch", "seq": 2, "transfer_id": "pay-1001"},
        )
        checks = [(f["check"], f.get("seq"), f.get("account_id")) for f in report["failures"]]
        assert ("not_balanced", 2, None) in checks
        assert ("balance_mismatch", None, books.bank) in checks

    def test_a_posting_moved_to_another_account_is_caught(
        self, client, engine, backend, database_url
    ):
        books = write_ledger(client)
        with behind_the_applications_back(engine, backend) as db:
            db.execute(
                text("UPDATE ledger_postings SET account_id = :other WHERE seq = 2 AND idx = 1"),
                {"other": books.other},
            )
        report = assert_caught(
            client,
            database_url,
            {"check": "hash_mismatch", "seq": 2, "transfer_id": "pay-1001"},
        )
        mismatched = {
            f["account_id"] for f in report["failures"] if f["check"] == "balance_mismatch"
        }
        assert mismatched == {books.merchant, books.other}

    def test_a_row_leg_moved_to_another_account_number_is_caught(
        self, client, engine, backend, database_url
    ):
        """A plain transfer keeps its legs on its row as account numbers (migration 0011):
        pointing one at another account breaks the hash and both accounts' sums."""
        books = write_ledger(client)
        with behind_the_applications_back(engine, backend) as db:
            db.execute(
                text(
                    "UPDATE ledger_transfers SET credit_account = "
                    "(SELECT num FROM ledger_accounts WHERE id = :other) WHERE seq = 3"
                ),
                {"other": books.other},
            )
        report = assert_caught(
            client,
            database_url,
            {"check": "hash_mismatch", "seq": 3, "transfer_id": "pay-1002"},
            cli=False,
        )
        mismatched = {
            f["account_id"] for f in report["failures"] if f["check"] == "balance_mismatch"
        }
        assert mismatched == {books.merchant, books.other}

    def test_changed_metadata_is_caught_by_the_hash_alone(
        self, client, engine, backend, database_url
    ):
        write_ledger(client)
        with behind_the_applications_back(engine, backend) as db:
            db.execute(
                text(
                    'UPDATE ledger_transfers SET metadata_json = \'{"order":"9999"}\' WHERE seq = 2'
                )
            )
        assert_caught(
            client,
            database_url,
            {"check": "hash_mismatch", "seq": 2, "transfer_id": "pay-1001"},
            only=True,
        )

    def test_a_deleted_entry_is_caught_as_a_gap_at_the_next_one(
        self, client, engine, backend, database_url
    ):
        books = write_ledger(client)
        with behind_the_applications_back(engine, backend) as db:
            db.execute(text("DELETE FROM ledger_postings WHERE seq = 3"))
            db.execute(text("DELETE FROM ledger_transfers WHERE seq = 3"))
        report = assert_caught(
            client, database_url, {"check": "chain_gap", "seq": 4, "transfer_id": "pay-1003"}
        )
        assert "expected entry 3" in report["first_failure"]["detail"]
        mismatched = {
            f["account_id"] for f in report["failures"] if f["check"] == "balance_mismatch"
        }
        assert mismatched == {books.bank, books.merchant}

    def test_an_entry_deleted_without_its_postings_leaves_orphans_that_are_reported(
        self, client, engine, backend, database_url
    ):
        write_ledger(client)
        with behind_the_applications_back(engine, backend) as db:
            db.execute(text("DELETE FROM ledger_transfers WHERE seq = 2"))
        report = assert_caught(
            client,
            database_url,
            {"check": "chain_gap", "seq": 3, "transfer_id": "pay-1002"},
            cli=False,
        )
        orphans = [f for f in report["failures"] if f["check"] == "orphan_postings"]
        assert [f["seq"] for f in orphans] == [2]

    def test_deleting_the_newest_entry_is_caught_by_the_chain_head(
        self, client, engine, backend, database_url
    ):
        write_ledger(client)
        with behind_the_applications_back(engine, backend) as db:
            db.execute(text("DELETE FROM ledger_postings WHERE seq = 4"))
            db.execute(text("DELETE FROM ledger_transfers WHERE seq = 4"))
        report = assert_caught(client, database_url, {"check": "chain_head"}, cli=False)
        assert "head says entry 4" in report["first_failure"]["detail"]

    def test_a_changed_stored_balance_is_caught_naming_the_account(
        self, client, engine, backend, database_url
    ):
        books = write_ledger(client)
        # Accounts carry running balances and are updated by every write: no trigger to pass.
        with engine.begin() as db:
            db.execute(
                text(
                    "UPDATE ledger_accounts SET credits_posted = credits_posted + 100 "
                    "WHERE id = :id"
                ),
                {"id": books.merchant},
            )
        report = assert_caught(
            client,
            database_url,
            {"check": "balance_mismatch", "account_id": books.merchant},
            only=True,
            cli=False,
        )
        assert "16970" in report["first_failure"]["detail"]  # what the postings add up to
        # The CLI without --json says it in words on stderr (wrapped to the terminal width).
        command = run_cli(database_url)
        assert command.returncode == 1
        said = " ".join(command.stderr.split())
        assert "ledger verification failed" in said
        assert "balance_mismatch" in said and books.merchant in said

    def test_a_consistent_rewrite_of_both_legs_and_balances_is_still_caught(
        self, client, engine, backend, database_url
    ):
        books = write_ledger(client)
        with behind_the_applications_back(engine, backend) as db:
            db.execute(text("UPDATE ledger_transfers SET amount = 20 WHERE seq = 3"))  # a row-legs transfer
            db.execute(
                text(
                    "UPDATE ledger_accounts SET debits_posted = debits_posted - 1980 WHERE id = :id"
                ),
                {"id": books.bank},
            )
            db.execute(
                text(
                    "UPDATE ledger_accounts SET credits_posted = credits_posted - 1980 "
                    "WHERE id = :id"
                ),
                {"id": books.merchant},
            )
        assert_caught(
            client,
            database_url,
            {"check": "hash_mismatch", "seq": 3, "transfer_id": "pay-1002"},
            only=True,
            cli=False,
        )

    def test_rehashing_a_changed_entry_moves_the_break_to_the_next_entry(
        self, client, engine, backend, database_url
    ):
        write_ledger(client)

        def forged_hash(session: Session) -> str:
            (opening, _), (entry, rows) = (
                repository.entries_with_postings(session, [tid])[tid]
                for tid in ("opening", "pay-1001")
            )
            forged = SimpleNamespace(**{**entry._asdict(), "metadata_json": '{"order":"9999"}'})
            return service.entry_hash(opening.hash, forged, rows)

        new_hash = transact(engine, forged_hash)
        with behind_the_applications_back(engine, backend) as db:
            db.execute(
                text(
                    'UPDATE ledger_transfers SET metadata_json = \'{"order":"9999"}\', '
                    "hash = :hash WHERE seq = 2"
                ),
                {"hash": new_hash},
            )
        assert_caught(
            client,
            database_url,
            {"check": "hash_mismatch", "seq": 3, "transfer_id": "pay-1002"},
            only=True,
            cli=False,
        )


class TestALimitChangedBehindTheApplicationsBack:
    """An account's limit flags and overdraft are part of what ``verify`` checks: balances the
    application would never have let through under the limit the account now carries are
    reported, naming the account and the limit it breaks."""

    def test_a_debit_limit_the_balance_breaks_is_insufficient_funds(self, client, engine, database_url):
        books = write_ledger(client)  # the bank (an asset) has 17,700 of debits and no credits
        with engine.begin() as db:
            db.execute(text("UPDATE ledger_accounts SET debits_must_not_exceed_credits = :yes, "
                            "overdraft_limit = 17700 WHERE id = :id"), {"yes": True, "id": books.bank})
        assert_verified(client)  # an overdraft of exactly the balance holds
        with engine.begin() as db:
            db.execute(text("UPDATE ledger_accounts SET overdraft_limit = 17699 WHERE id = :id"), {"id": books.bank})
        assert_caught(client, database_url, {"check": "insufficient_funds", "account_id": books.bank}, only=True)

    def test_a_credit_limit_the_balance_breaks_is_exceeds_credit_limit(self, client, engine, database_url):
        books = write_ledger(client)  # the merchant (a liability) has 16,970 of credits and no debits
        with engine.begin() as db:
            db.execute(text("UPDATE ledger_accounts SET credits_must_not_exceed_debits = :yes WHERE id = :id"),
                       {"yes": True, "id": books.merchant})
        report = assert_caught(client, database_url, {"check": "exceeds_credit_limit", "account_id": books.merchant,
                                                      "seq": 1}, cli=False)
        # Every entry after which the balance breaks the limit is named, and nothing else.
        assert [(f["check"], f["account_id"], f["seq"]) for f in report["failures"]] == [
            ("exceeds_credit_limit", books.merchant, seq) for seq in (1, 2, 3)]
