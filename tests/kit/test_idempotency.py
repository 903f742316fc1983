"""Idempotency-Key on POSTs, through HTTP, on both databases."""

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from sqlalchemy import text

from clearhouse.kit import clock
from clearhouse.kit.idempotency import request_fingerprint

T0 = datetime(2031, 5, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def accounts(client):
    ids = []
    for kind, code in (("asset", "bank:B"), ("liability", "customer_wallet:C")):
        response = client.post("/v1/ledger/accounts", json={"type": kind, "currency": "CNY", "code": code})
        assert response.status_code == 201
        ids.append(response.json()["id"])
    return ids


def pay(client, accounts, amount, key, **extra):
    body = {"debit_account_id": accounts[0], "credit_account_id": accounts[1], "amount": amount, "currency": "CNY"}
    return client.post("/v1/ledger/transfers", json={**body, **extra}, headers={"Idempotency-Key": key})


def wallet(client, accounts):
    return client.get(f"/v1/ledger/accounts/{accounts[1]}/balance").json()["posted"]


class TestReplay:
    def test_same_key_same_body_replays_the_first_response_and_moves_money_once(self, client, accounts):
        first = pay(client, accounts, 1999, "order-1")
        again = pay(client, accounts, 1999, "order-1")
        assert first.status_code == again.status_code == 201
        assert again.headers["Idempotent-Replayed"] == "true"
        assert "Idempotent-Replayed" not in first.headers
        assert again.json() == first.json()
        assert wallet(client, accounts) == 1999

    def test_an_error_answer_is_replayed_too(self, client, accounts):
        first = pay(client, accounts, 0, "bad-1")
        again = pay(client, accounts, 0, "bad-1")
        assert first.status_code == again.status_code == 422
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json() == first.json()

    def test_the_same_json_in_another_key_order_is_the_same_request(self, client, accounts):
        pay(client, accounts, 250, "order-9")
        body = {"currency": "CNY", "amount": 250, "credit_account_id": accounts[1], "debit_account_id": accounts[0]}
        again = client.post("/v1/ledger/transfers", content=orjson.dumps(body),
                            headers={"Idempotency-Key": "order-9", "content-type": "application/json"})
        assert again.headers["Idempotent-Replayed"] == "true"
        assert wallet(client, accounts) == 250

    def test_keys_are_independent(self, client, accounts):
        pay(client, accounts, 100, "k-1")
        pay(client, accounts, 100, "k-2")
        assert wallet(client, accounts) == 200

    def test_without_a_key_every_request_is_new(self, client, accounts):
        body = {"debit_account_id": accounts[0], "credit_account_id": accounts[1], "amount": 5, "currency": "CNY"}
        client.post("/v1/ledger/transfers", json=body)
        client.post("/v1/ledger/transfers", json=body)
        assert wallet(client, accounts) == 10

    def test_after_24_hours_the_key_starts_afresh(self, client, accounts):
        with clock.frozen(T0) as frozen:
            first = pay(client, accounts, 700, "daily")
            frozen.tick(hours=24, seconds=1)
            second = pay(client, accounts, 700, "daily")
        assert "Idempotent-Replayed" not in second.headers
        assert second.status_code == 201
        assert second.json()["id"] != first.json()["id"]
        assert wallet(client, accounts) == 1400


class TestConflicts:
    def test_same_key_other_body_is_409_reused_and_changes_nothing(self, client, accounts):
        pay(client, accounts, 100, "order-2")
        response = pay(client, accounts, 101, "order-2")
        assert response.status_code == 409
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == "idempotency_key_reused"
        assert wallet(client, accounts) == 100

    def test_a_key_still_running_is_409_in_use(self, client, accounts, engine, platform_key):
        with clock.frozen(T0):
            with engine.begin() as connection:
                connection.execute(
                    text(
                        "INSERT INTO idempotency_keys (scope, key, request_hash, state, created_at, lease_until) "
                        "VALUES ('platform', 'busy', :h, 'in_progress', :now, :lease)"
                    ),
                    {"h": _hash_of(accounts, 300, platform_key.key_id), "now": _db_time(engine, T0),
                     "lease": _db_time(engine, T0 + timedelta(seconds=30))},
                )
            response = pay(client, accounts, 300, "busy")
        assert response.status_code == 409
        assert response.json()["code"] == "idempotency_key_in_use"
        assert wallet(client, accounts) == 0

    @pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there"])
    def test_a_malformed_key_is_400(self, client, accounts, key):
        body = {"debit_account_id": accounts[0], "credit_account_id": accounts[1], "amount": 5, "currency": "CNY"}
        response = client.post(
            "/v1/ledger/transfers", json=body, headers=[(b"Idempotency-Key", key.encode("latin-1"))]
        )
        assert response.status_code == 400
        assert response.json()["code"] == "invalid_idempotency_key"
        assert wallet(client, accounts) == 0


class TestCrashRecovery:
    def test_a_request_that_died_after_its_work_committed_is_not_done_twice(self, client, accounts, engine):
        """The work committed, then the process died before the answer was stored: the
        key's lease runs out, the retry takes it over, and the key-derived transfer id
        makes the ledger answer "exists" instead of moving the money again."""
        with clock.frozen(T0) as frozen:
            first = pay(client, accounts, 4200, "crash-1")
            with engine.begin() as connection:
                connection.execute(text(
                    "UPDATE idempotency_keys SET state = 'in_progress', response_status = NULL, "
                    "response_body = NULL WHERE key = 'crash-1'"
                ))
            assert pay(client, accounts, 4200, "crash-1").json()["code"] == "idempotency_key_in_use"
            frozen.tick(minutes=2)
            retry = pay(client, accounts, 4200, "crash-1")
        assert retry.status_code == 200
        assert retry.json()["id"] == first.json()["id"]
        assert wallet(client, accounts) == 4200

    def test_batches_accounts_and_posts_get_derived_ids(self, client, accounts):
        batch = {"transfers": [
            {"debit_account_id": accounts[0], "credit_account_id": accounts[1], "amount": 1, "currency": "CNY"},
            {"debit_account_id": accounts[0], "credit_account_id": accounts[1], "amount": 2, "currency": "CNY"},
        ]}
        response = client.post("/v1/ledger/transfers", json=batch, headers={"Idempotency-Key": "batch-1"})
        ids = [r["id"] for r in response.json()["results"]]
        assert len(set(ids)) == 2 and all(i.startswith("tr_ik") for i in ids)
        account = client.post("/v1/ledger/accounts", json={"type": "asset", "currency": "JPY", "code": "x"},
                              headers={"Idempotency-Key": "acct-1"})
        assert account.json()["id"].startswith("acct_ik")


def _hash_of(accounts, amount, caller):
    body = {"debit_account_id": accounts[0], "credit_account_id": accounts[1], "amount": amount, "currency": "CNY"}
    return request_fingerprint("/v1/ledger/transfers", b"", orjson.dumps(body), caller)


def _db_time(engine, value):
    return value.replace(tzinfo=None) if engine.dialect.name == "sqlite" else value


class TestPurge:
    def test_the_worker_forgets_keys_past_their_window_and_keeps_the_rest(self, client, accounts, engine):
        from clearhouse import worker

        with clock.frozen(T0) as frozen:
            pay(client, accounts, 10, "old")
            frozen.tick(hours=23)
            pay(client, accounts, 10, "young")
            frozen.tick(hours=1, seconds=1)
            assert worker.run_once(engine)["idempotency.purge_expired"] == 1
            again = pay(client, accounts, 10, "young")
        assert again.headers["Idempotent-Replayed"] == "true"
        with engine.connect() as connection:
            keys = {row[0] for row in connection.execute(text("SELECT key FROM idempotency_keys"))}
        assert keys == {"young"}
