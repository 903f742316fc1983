"""Reproductions from an independent review of the ledger: each was a bug (a 500, a
silent change of a value, a gap in verify or in Idempotency-Key handling) and stays
fixed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from clearhouse.kit import clock
from tests.ledger.support import assert_problem, assert_verified, open_account, transfer, transfer_body

TRANSFERS = "/v1/ledger/transfers"


def problem_not_500(response, status: int, code: str) -> None:
    assert response.status_code != 500, "bad input answered with a 500"
    assert_problem(response, status, code)


class TestBadInputIsNeverA500:
    def test_as_of_at_the_edge_of_the_datetime_range_is_a_422(self, client):
        account = open_account(client, "asset")
        for as_of in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
            response = client.get(f"/v1/ledger/accounts/{account}/balance", params={"as_of": as_of})
            problem_not_500(response, 422, "validation_error")
            response = client.get(f"/v1/ledger/accounts/{account}/entries", params={"as_of": as_of})
            problem_not_500(response, 422, "validation_error")

    def test_an_entries_cursor_beyond_64_bits_is_a_422(self, client):
        account = open_account(client, "asset")
        for cursor in ("99999999999999999999:0", "1:99999999999999999999"):
            response = client.get(f"/v1/ledger/accounts/{account}/entries", params={"starting_after": cursor})
            problem_not_500(response, 422, "validation_error")

    def test_deeply_nested_body_with_an_idempotency_key_is_a_4xx(self, client):
        deep: dict = {}
        cursor = deep
        for _ in range(300):
            cursor["a"] = {}
            cursor = cursor["a"]
        body = {"type": "asset", "currency": "CNY", "code": "x", "metadata": deep}
        without_key = client.post("/v1/ledger/accounts", json=body)
        assert without_key.status_code == 422  # the app alone refuses it properly
        with_key = client.post("/v1/ledger/accounts", json=body, headers={"Idempotency-Key": "deep-1"})
        problem_not_500(with_key, 422, "validation_error")

    def test_a_nul_character_is_refused_with_a_4xx_on_postgresql(self, client, backend):
        if backend != "postgresql":
            pytest.skip("SQLite stores NUL happily: the 500 is PostgreSQL's")
        bank = open_account(client, "asset")
        wallet = open_account(client, "liability")
        problem_not_500(transfer(client, bank, wallet, 100, code="x\u0000y"), 422, "validation_error")
        problem_not_500(
            client.post("/v1/ledger/accounts", json={"type": "asset", "currency": "CNY", "code": "a\u0000"}),
            422, "validation_error",
        )
        response = client.get("/v1/ledger/transfers/tr%00x")
        problem_not_500(response, 400, "malformed_request")


class TestMetadata:
    def test_a_transfer_metadata_integer_beyond_64_bits_is_refused_not_turned_into_a_float(self, client):
        bank = open_account(client, "asset")
        wallet = open_account(client, "liability")
        raw = orjson.dumps(transfer_body(bank, wallet, 100)).replace(b"}", b',"metadata":{"n":18446744073709551616}}')
        response = client.post(TRANSFERS, content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 422, response.json().get("metadata")
        assert client.get(f"/v1/ledger/accounts/{bank}").json()["balance"]["debits_posted"] == 0


class TestVerify:
    def test_the_database_refuses_rows_before_the_chain(self, client, engine):
        bank = open_account(client, "asset")
        wallet = open_account(client, "liability")
        assert transfer(client, bank, wallet, 100).status_code == 201
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(
                text("INSERT INTO ledger_postings (seq, idx, account_id, direction, kind, amount, currency) "
                     "VALUES (0, 0, :a, 'credit', 'posted', 1000000, 'CNY')"),
                {"a": wallet},
            )
        assert client.get("/v1/ledger/verify").json()["ok"] is True

    def test_a_posting_slipped_in_before_the_chain_is_reported(self, client, engine, backend):
        """Defence in depth: with the CHECK constraints bypassed, verify still sees it."""
        if backend != "sqlite":
            pytest.skip("only SQLite lets a session switch CHECK constraints off")
        bank = open_account(client, "asset")
        wallet = open_account(client, "liability")
        assert transfer(client, bank, wallet, 100).status_code == 201
        with engine.begin() as connection:
            connection.exec_driver_sql("PRAGMA ignore_check_constraints=ON")
            connection.execute(
                text("INSERT INTO ledger_postings (seq, idx, account_id, direction, kind, amount, currency) "
                     "VALUES (0, 0, :a, 'credit', 'posted', 1000000, 'CNY')"),
                {"a": wallet},
            )
            connection.exec_driver_sql("PRAGMA ignore_check_constraints=OFF")
        report = client.get("/v1/ledger/verify").json()
        assert report["ok"] is False
        assert report["first_failure"]["check"] == "outside_chain"


class TestIdempotencyKey:
    def test_a_retry_after_an_upload_cut_short_is_not_refused(self, app, client):
        body = orjson.dumps({"type": "asset", "currency": "CNY", "code": "bank:B"})
        headers = [(b"content-type", b"application/json"), (b"idempotency-key", b"open-bank-1"),
                   (b"content-length", str(len(body)).encode()), (b"host", b"testserver")]
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/v1/ledger/accounts", "raw_path": b"/v1/ledger/accounts",
            "query_string": b"", "root_path": "", "headers": headers,
            "client": ("127.0.0.1", 5000), "server": ("testserver", 80),
        }
        messages = [
            {"type": "http.request", "body": body[:10], "more_body": True},
            {"type": "http.disconnect"},
        ]

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(_message):
            return None

        asyncio.run(app(scope, receive, send))
        # The client saw no answer (its connection dropped), so it retries the same request.
        retry = client.post("/v1/ledger/accounts", content=body,
                            headers={"content-type": "application/json", "Idempotency-Key": "open-bank-1"})
        assert retry.status_code == 201, retry.text

    def test_a_key_reused_after_24_hours_moves_money_again(self, client):
        bank = open_account(client, "asset")
        wallet = open_account(client, "liability")
        with clock.frozen(datetime.now(UTC)) as frozen:
            first = client.post(TRANSFERS, json=transfer_body(bank, wallet, 100),
                                headers={"Idempotency-Key": "monthly-topup"})
            assert first.status_code == 201
            frozen.tick(hours=25)
            # docs/ledger.md: "After 24 hours, the key's record is replaced by the next request
            # that uses it" -- the request then runs normally.
            second = client.post(TRANSFERS, json=transfer_body(bank, wallet, 100),
                                 headers={"Idempotency-Key": "monthly-topup"})
            assert second.status_code == 201, (second.status_code, second.json()["id"], first.json()["id"])
            assert client.get(f"/v1/ledger/accounts/{wallet}").json()["balance"]["posted"] == 200
        assert_verified(client)
