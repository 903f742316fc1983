"""Session 14 findings: verify reports whatever a tamperer wrote, the entries cursor is
strict, and the OpenAPI document says what the server answers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import text

from tests.ledger.support import assert_problem, open_account, transfer
from tests.ledger.test_tampering import assert_caught, behind_the_applications_back, write_ledger


@contextmanager
def past_a_check_constraint(engine, backend, table: str, name: str) -> Iterator[object]:
    """A connection on which neither the immutability triggers nor the CHECK ``name`` on
    ``table`` stop a write. On PostgreSQL the CHECK comes back NOT VALID: it holds again for
    new rows, and the rows written here stay as they are."""
    with behind_the_applications_back(engine, backend) as db:
        if backend == "postgresql":
            definition = db.scalar(text("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = :n"),
                                   {"n": name})
            db.execute(text(f"ALTER TABLE {table} DROP CONSTRAINT {name}"))
        else:
            db.exec_driver_sql("PRAGMA ignore_check_constraints = ON")
        yield db
        if backend == "postgresql":
            db.execute(text(f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition} NOT VALID"))
        else:
            db.exec_driver_sql("PRAGMA ignore_check_constraints = OFF")


def checks(report) -> list[tuple[str, object]]:
    return [(failure["check"], failure.get("seq")) for failure in report["failures"]]


class TestVerifyReportsWhatATampererWroteInsteadOfFailing:
    """Whatever a row holds, ``GET /v1/ledger/verify`` answers 200 with ok=false and the CLI
    exits 1 with its report: neither raises on a value no write of ours could store."""

    def test_a_posting_of_an_unknown_kind_is_an_invalid_posting_at_its_entry(
        self, client, engine, backend, database_url
    ):
        write_ledger(client)
        with past_a_check_constraint(engine, backend, "ledger_postings", "ck_ledger_postings_kind") as db:
            db.execute(text("UPDATE ledger_postings SET kind = 'bogus' WHERE seq = 2 AND idx = 1"))
        report = assert_caught(client, database_url, {"check": "hash_mismatch", "seq": 2, "transfer_id": "pay-1001"})
        invalid = [f for f in report["failures"] if f["check"] == "invalid_posting"]
        assert [(f["seq"], f["transfer_id"]) for f in invalid] == [(2, "pay-1001")]
        assert "'bogus'" in invalid[0]["detail"]

    def test_a_posting_of_an_unknown_direction_is_an_invalid_posting_at_its_entry(
        self, client, engine, backend, database_url
    ):
        write_ledger(client)
        with past_a_check_constraint(engine, backend, "ledger_postings", "ck_ledger_postings_direction") as db:
            db.execute(text("UPDATE ledger_postings SET direction = 'upward' WHERE seq = 2 AND idx = 2"))
        report = assert_caught(client, database_url, {"check": "hash_mismatch", "seq": 2}, cli=False)
        assert ("invalid_posting", 2) in checks(report)

    def test_a_plain_transfer_row_of_an_unknown_kind_is_reported_for_both_its_legs(
        self, client, engine, backend, database_url
    ):
        """A plain transfer keeps its legs on its own row (migration 0011)."""
        write_ledger(client)
        with past_a_check_constraint(engine, backend, "ledger_transfers", "ck_ledger_transfers_legs") as db:
            db.execute(text("UPDATE ledger_transfers SET kind = 'bogus' WHERE seq = 3"))
        report = assert_caught(client, database_url, {"check": "hash_mismatch", "seq": 3, "transfer_id": "pay-1002"})
        assert checks(report).count(("invalid_posting", 3)) == 2

    def test_a_deleted_chain_head_is_reported_as_the_chain_head_check(self, client, engine, backend, database_url):
        """Deleting its one row takes the guard of migration 0014 out of the way first."""
        write_ledger(client)
        with behind_the_applications_back(engine, backend) as db:
            db.execute(text("DELETE FROM ledger_chain"))
        report = assert_caught(client, database_url, {"check": "chain_head"}, only=True)
        assert report["chain_head"] == {"seq": None, "hash": None}
        assert "the journal ends at 4" in report["first_failure"]["detail"]


class TestWhatOnlySQLiteLetsATampererStore:
    """SQLite keeps any value in any column (text in an integer or a timestamp, bytes in text,
    text that is not UTF-8), and verify still reports it instead of failing on it."""

    @pytest.fixture
    def tamper(self, client, engine, backend):
        if backend != "sqlite":
            pytest.skip("PostgreSQL stores only values of the column's type")

        def run(*statements: str) -> None:
            write_ledger(client)
            with behind_the_applications_back(engine, backend) as db:
                for statement in statements:
                    db.execute(text(statement))

        return run

    def test_text_in_an_amount_is_an_invalid_posting(self, client, database_url, tamper):
        tamper("UPDATE ledger_postings SET amount = 'abc' WHERE seq = 2 AND idx = 0",
               "UPDATE ledger_transfers SET amount = 'abc' WHERE seq = 4")
        report = assert_caught(client, database_url, {"check": "hash_mismatch", "seq": 2}, cli=False)
        assert ("invalid_posting", 2) in checks(report)
        assert checks(report).count(("invalid_posting", 4)) == 2

    def test_a_creation_time_that_is_not_a_time_is_an_invalid_entry(self, client, database_url, tamper):
        tamper("UPDATE ledger_transfers SET created_at = 'garbage' WHERE seq = 3")
        report = assert_caught(client, database_url, {"check": "invalid_entry", "seq": 3, "transfer_id": "pay-1002"},
                               only=True)
        assert "'garbage'" in report["first_failure"]["detail"]

    def test_bytes_in_a_hashed_column_are_an_invalid_entry(self, client, database_url, tamper):
        tamper("UPDATE ledger_transfers SET reference = X'00FF' WHERE seq = 3")
        assert_caught(client, database_url, {"check": "invalid_entry", "seq": 3}, only=True, cli=False)

    def test_text_that_is_not_utf_8_is_read_and_reported(self, client, database_url, tamper):
        """SQLite refuses to hand such text back at all: verify reads it with U+FFFD instead."""
        tamper("UPDATE ledger_transfers SET code = CAST(X'FF' AS TEXT) WHERE seq = 3")
        assert_caught(client, database_url, {"check": "hash_mismatch", "seq": 3, "transfer_id": "pay-1002"},
                      only=True)


class TestThePostAndVoidBodiesAreOptionalNotNullable:
    """The OpenAPI document says what the server takes: a body may be left out (post in full,
    an id derived from the request), and ``null`` is refused like any body that is not an object."""

    @pytest.mark.parametrize(("action", "model"), [("post", "PostPending"), ("void", "VoidPending")])
    def test_the_document_and_the_server_agree(self, client, anonymous_client, action, model):
        bank = open_account(client, "asset")
        wallet = open_account(client, "liability")
        operation = anonymous_client.get("/openapi.json").json()["paths"][
            f"/v1/ledger/transfers/{{transfer_id}}/{action}"]["post"]
        body = operation["requestBody"]
        assert body["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}
        assert body.get("required", False) is False
        pending = transfer(client, bank, wallet, 10, pending=True).json()["id"]
        refused = client.post(f"/v1/ledger/transfers/{pending}/{action}", content=b"null",
                              headers={"content-type": "application/json"})
        assert_problem(refused, 400, "malformed_request")
        resolved = client.post(f"/v1/ledger/transfers/{pending}/{action}")
        assert resolved.status_code == 200, resolved.text
        assert resolved.json()["status"] == ("posted" if action == "post" else "voided")


class TestTheEntriesCursorIsExactlyAsTheListSpellsIt:
    @pytest.mark.parametrize("cursor", [" 0:0", "+0:0", "0_0:0", "0:0 ", "٣:0", "0:0\n", "0:-0", ":0", "0:"])
    def test_anything_but_ascii_digits_colon_ascii_digits_is_a_validation_error(self, client, cursor):
        bank = open_account(client, "asset")
        wallet = open_account(client, "liability")
        assert transfer(client, bank, wallet, 5).status_code == 201
        response = client.get(f"/v1/ledger/accounts/{wallet}/entries", params={"starting_after": cursor})
        assert_problem(response, 422, "validation_error")

    def test_a_cursor_from_the_list_pages_on(self, client):
        bank = open_account(client, "asset")
        wallet = open_account(client, "liability")
        for amount in (5, 7):
            assert transfer(client, bank, wallet, amount).status_code == 201
        first = client.get(f"/v1/ledger/accounts/{wallet}/entries", params={"limit": 1}).json()
        assert first["has_more"] is True
        rest = client.get(f"/v1/ledger/accounts/{wallet}/entries", params={"starting_after": first["next_cursor"]})
        assert [line["amount"] for line in rest.json()["data"]] == [7]
