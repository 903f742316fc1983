"""The audit trail as a chain: recorded in the caller's transaction, append-only in the
database, and any change behind the application's back caught by verify (service and CLI).

Every test runs on SQLite and PostgreSQL (the ``engine`` fixture)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import orjson
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from clearhouse.audit import service
from clearhouse.audit.models import GENESIS_HASH, events
from clearhouse.audit.service import SYSTEM, Actor
from clearhouse.kit import clock
from clearhouse.kit.db import transact
from tests.audit.support import ADMIN, FINANCE, SHOP_KEY, behind_the_applications_back, cli_report, record, verify


def all_events(engine) -> list:
    with engine.connect() as connection:
        return list(connection.execute(select(events).order_by(events.c.seq)))


def chain_head(engine) -> tuple[int, str]:
    with engine.connect() as connection:
        return tuple(connection.execute(text("SELECT seq, hash FROM audit_chain WHERE id = 1")).one())


def write_trail(engine) -> list[str]:
    """Four events, seq 1-4, by three kinds of actor."""
    with clock.frozen(datetime(2026, 11, 23, 9, 0, tzinfo=UTC)) as clk:
        ids = [record(engine, ADMIN, "merchant.create", "merchant", "mer_shop", changes={"name": "Shop"})]
        clk.tick(seconds=1)
        ids.append(record(engine, ADMIN, "api_key.create", "api_key", "key_shop",
                          changes={"mode": "test", "scopes": ["payments:write"]}, merchant_id="mer_shop"))
        clk.tick(seconds=1)
        ids.append(record(engine, SHOP_KEY, "vault.card.create", "card", "tok_1", changes={"last4": "4242"}))
        clk.tick(seconds=1)
        ids.append(record(engine, SYSTEM, "api_key.expire", "api_key", "key_shop", merchant_id="mer_shop"))
    return ids


class TestRecording:
    def test_each_event_extends_the_chain_and_verifies(self, engine):
        assert chain_head(engine) == (0, GENESIS_HASH)
        assert verify(engine).as_dict() == {
            "ok": True, "events_checked": 0, "chain_head": {"seq": 0, "hash": GENESIS_HASH},
            "first_failure": None, "failures": [],
        }
        ids = write_trail(engine)
        rows = all_events(engine)
        assert [r.id for r in rows] == ids
        assert [r.seq for r in rows] == [1, 2, 3, 4]
        assert all(i.startswith("aev_") for i in ids)
        assert rows[0].prev_hash == GENESIS_HASH
        for before, after in zip(rows, rows[1:], strict=False):
            assert after.prev_hash == before.hash
        assert chain_head(engine) == (4, rows[-1].hash)
        report = verify(engine)
        assert report.ok and report.events_checked == 4 and report.first_failure is None

    def test_an_event_keeps_who_what_when_where_and_the_tenant(self, engine):
        write_trail(engine)
        first, key_created, card, expired = all_events(engine)
        assert (first.actor_type, first.actor_id, first.actor_role, first.source_ip, first.request_id) == (
            "user", "usr_admin", "admin", "203.0.113.7", "req_admin_1")
        assert first.occurred_at == datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
        assert (first.action, first.object_type, first.object_id) == ("merchant.create", "merchant", "mer_shop")
        assert first.merchant_id is None
        assert orjson.loads(first.changes_json) == {"name": "Shop"}
        # The object's merchant, named by the caller, is the event's tenant ...
        assert key_created.merchant_id == "mer_shop"
        # ... and otherwise the acting merchant's.
        assert card.merchant_id == "mer_shop" and card.actor_role == "merchant_key"
        assert (expired.actor_type, expired.actor_id, expired.changes_json) == ("system", "system", "{}")

    def test_the_event_rolls_back_with_the_change_it_records(self, engine):
        record(engine, ADMIN, "merchant.create", "merchant", "mer_a")
        head = chain_head(engine)

        def change_then_fail(session):
            service.record(session, ADMIN, "merchant.update", "merchant", "mer_a", changes={"name": "B"})
            raise RuntimeError("the change itself failed")

        with pytest.raises(RuntimeError):
            transact(engine, change_then_fail)
        assert [r.action for r in all_events(engine)] == ["merchant.create"]
        assert chain_head(engine) == head
        assert verify(engine).ok

    def test_overlong_and_nul_fields_are_stored_shortened_not_refused(self, engine):
        actor = Actor(type="api_key", id="k" * 100, source_ip="x" * 100, request_id="r\x00" * 100)
        record(engine, actor, "a" * 100, "t" * 100, "o" * 300, changes={"note": "nul \x00 inside"})
        (row,) = all_events(engine)
        assert (len(row.actor_id), len(row.action), len(row.object_type), len(row.object_id)) == (64, 64, 64, 128)
        assert "\x00" not in row.request_id and len(row.request_id) == 128
        assert orjson.loads(row.changes_json) == {"note": "nul \x00 inside"}
        assert verify(engine).ok

    def test_an_unknown_actor_type_is_a_programming_error(self, engine):
        with pytest.raises(ValueError, match="actor type"):
            record(engine, Actor(type="robot", id="r2"), "x.y", "thing", "1")
        assert all_events(engine) == []


class TestMasking:
    def test_secret_named_keys_are_masked_at_any_depth(self, engine):
        changes = {
            "email": "ana@example.com",
            "password": "correct horse battery staple",
            "api_secret": "sk_live_abc",
            "apiSecret": "sk_live_def",
            "session_token": "tok",
            "card": {"cvc": "123", "last4": "4242", "expiry": "12/30"},
            "totp_code": 123456,
            "recovery_codes": ["aaaa-bbbb", "cccc-dddd"],
            "totp_enabled": True,
            "password_hash": None,
            "before": {"secret_ciphertext": "AAAA"},
            "currency": "CNY",
            "pin": 1234,
        }
        record(engine, ADMIN, "user.update", "user", "usr_1", changes=changes)
        stored = orjson.loads(all_events(engine)[0].changes_json)
        assert stored == {
            "email": "ana@example.com",
            "password": "***",
            "api_secret": "***",
            "apiSecret": "***",
            "session_token": "***",
            "card": {"cvc": "***", "last4": "4242", "expiry": "12/30"},
            "totp_code": "***",
            "recovery_codes": "***",
            "totp_enabled": "***",
            "password_hash": None,  # a cleared secret shows as cleared
            "before": {"secret_ciphertext": "***"},
            "currency": "CNY",
            "pin": "***",
        }
        for secret in ("correct horse", "sk_live", "123456", "aaaa-bbbb", "AAAA"):
            assert secret not in all_events(engine)[0].changes_json

    def test_values_json_cannot_hold_exactly_are_kept_as_text(self, engine):
        from decimal import Decimal

        from clearhouse.kit.masking import scrub

        # The text form, before the platform's masking (which hides long Luhn-valid digit runs):
        assert service._json_safe({"huge": 2**70}) == {"huge": str(2**70)}
        changes = {"rate": Decimal("7.1234"), "huge": 2**70, "at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
                   1: "non-string key", "tags": ("a", "b")}
        record(engine, FINANCE, "fx.rate.set", "fx_rate", "USD-CNY", changes=changes)
        assert orjson.loads(all_events(engine)[0].changes_json) == {
            "rate": "7.1234", "huge": scrub(str(2**70)), "at": "2026-01-02T03:04:05.000000Z", "1": "non-string key",
            "tags": ["a", "b"],
        }
        assert verify(engine).ok

    def test_card_numbers_in_values_are_masked_by_the_platform_masking(self, engine):
        record(engine, SHOP_KEY, "vault.card.create", "card", "tok_1",
               changes={"note": "customer typed 4242 4242 4242 4242 in the note", "nested": ["4111111111111111"],
                        "card_number": "5555555555554444", "last4": "4242"})
        stored = all_events(engine)[0].changes_json
        assert "4242 4242 4242 4242" not in stored and "4111111111111111" not in stored
        assert orjson.loads(stored) == {
            "note": "customer typed 4242 42** **** 4242 in the note", "nested": ["411111******1111"],
            "card_number": "555555******4444", "last4": "4242",
        }
        assert verify(engine).ok


class TestAppendOnly:
    @pytest.mark.parametrize("statement", [
        "UPDATE audit_events SET action = 'nothing.happened' WHERE seq = 2",
        "UPDATE audit_events SET hash = hash",
        "DELETE FROM audit_events WHERE seq = 4",
        "DELETE FROM audit_events",
        "DELETE FROM audit_chain",
        "UPDATE audit_chain SET seq = 2, hash = 'x' WHERE id = 1",
    ])
    def test_the_database_refuses_to_rewrite_the_trail(self, engine, statement):
        write_trail(engine)
        before = all_events(engine), chain_head(engine)
        with pytest.raises(DBAPIError) as refused, engine.begin() as connection:
            connection.execute(text(statement))
        assert "audit" in str(refused.value.orig)
        assert (all_events(engine), chain_head(engine)) == before
        assert verify(engine).ok

    def test_postgresql_refuses_truncate(self, engine, backend):
        if backend != "postgresql":
            pytest.skip("TRUNCATE is PostgreSQL's")
        write_trail(engine)
        for table in ("audit_events", "audit_chain"):
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
                connection.execute(text(f"TRUNCATE {table}"))
        assert len(all_events(engine)) == 4


class TestTampering:
    """With the triggers out of the way, each kind of rewrite is caught, naming the first
    failing event; the installed ``clearhouse audit verify`` agrees and exits 1."""

    @pytest.mark.slow  # starts the CLI
    def test_an_edited_change_is_caught_by_verify_and_the_cli(self, engine, backend, database_url):
        write_trail(engine)
        code, report = cli_report(database_url)
        assert code == 0 and report["ok"] is True and report["events_checked"] == 4
        with behind_the_applications_back(engine, backend) as connection:
            connection.execute(text("UPDATE audit_events SET changes_json = '{\"name\":\"Other\"}' WHERE seq = 1"))
        report = verify(engine)
        assert not report.ok
        assert report.first_failure == {
            "check": "hash_mismatch", "detail": "the event's content or predecessor does not match its hash",
            "seq": 1, "event_id": all_events(engine)[0].id,
        }
        assert report.failures == [report.first_failure]  # later events still link to the stored hash
        code, from_cli = cli_report(database_url)
        assert code == 1
        assert from_cli["first_failure"] == report.first_failure
        assert from_cli == report.as_dict()

    @pytest.mark.parametrize("column, value", [
        ("actor_id", "'usr_someone_else'"), ("actor_role", "'auditor'"), ("actor_role", "NULL"),
        ("merchant_id", "'mer_other'"), ("action", "'merchant.read'"), ("object_type", "'user'"),
        ("object_id", "'mer_x'"), ("source_ip", "'10.0.0.1'"), ("request_id", "NULL"), ("actor_type", "'system'"),
        ("id", "'aev_forged'"),
    ])
    def test_every_field_is_covered_by_the_hash(self, engine, backend, column, value):
        write_trail(engine)
        with behind_the_applications_back(engine, backend) as connection:
            connection.execute(text(f"UPDATE audit_events SET {column} = {value} WHERE seq = 2"))
        report = verify(engine)
        assert (report.first_failure["check"], report.first_failure["seq"]) == ("hash_mismatch", 2)

    def test_a_moved_time_is_caught(self, engine, backend):
        write_trail(engine)
        with behind_the_applications_back(engine, backend) as connection:
            connection.execute(
                events.update().where(events.c.seq == 3).values(occurred_at=datetime(2020, 1, 1, tzinfo=UTC))
            )
        assert (verify(engine).first_failure["check"], verify(engine).first_failure["seq"]) == ("hash_mismatch", 3)

    def test_a_rehashed_forgery_breaks_the_next_link(self, engine, backend):
        write_trail(engine)
        second = all_events(engine)[1]
        forged_changes = '{"mode":"live"}'
        forged_hash = service.event_hash(
            second.prev_hash, 2, second.id, clock.rfc3339(second.occurred_at), second.actor_type, second.actor_id,
            second.actor_role, second.merchant_id, second.action, second.object_type, second.object_id,
            second.source_ip, second.request_id, forged_changes,
        )
        with behind_the_applications_back(engine, backend) as connection:
            connection.execute(text("UPDATE audit_events SET changes_json = :c, hash = :h WHERE seq = 2"),
                               {"c": forged_changes, "h": forged_hash})
        report = verify(engine)
        assert report.first_failure["seq"] == 3 and report.first_failure["check"] == "broken_link"
        assert [f["check"] for f in report.failures] == ["broken_link"]  # event 3 itself is as written

    def test_a_removed_event_is_caught(self, engine, backend, database_url):
        write_trail(engine)
        with behind_the_applications_back(engine, backend) as connection:
            connection.execute(text("DELETE FROM audit_events WHERE seq = 2"))
        report = verify(engine)
        assert report.first_failure["check"] == "chain_gap" and report.first_failure["seq"] == 3
        assert report.first_failure["detail"] == "expected event 2, found 3"
        code, from_cli = cli_report(database_url)
        assert code == 1 and from_cli["first_failure"] == report.first_failure

    def test_a_removed_last_event_is_caught_by_the_chain_head(self, engine, backend):
        write_trail(engine)
        with behind_the_applications_back(engine, backend) as connection:
            connection.execute(text("DELETE FROM audit_events WHERE seq = 4"))
        report = verify(engine)
        assert report.events_checked == 3
        assert report.failures == [{"check": "chain_head", "detail": "head says event 4, the trail ends at 3",
                                    "seq": 4}]

    def test_a_wiped_trail_is_caught_by_the_chain_head(self, engine, backend):
        write_trail(engine)
        with behind_the_applications_back(engine, backend) as connection:
            connection.execute(text("DELETE FROM audit_events"))
        report = verify(engine)
        assert report.events_checked == 0 and report.first_failure["check"] == "chain_head"

    @pytest.mark.slow  # starts the CLI
    def test_the_cli_says_so_in_words_without_json(self, engine, backend, database_url):
        from tests.audit.support import run_cli

        write_trail(engine)
        result = run_cli(database_url)
        assert result.returncode == 0, result.stderr
        assert "audit trail verified" in result.stderr and "4 events" in result.stderr
        with behind_the_applications_back(engine, backend) as connection:
            connection.execute(text("UPDATE audit_events SET object_id = 'x' WHERE seq = 4"))
        result = run_cli(database_url)
        assert result.returncode == 1
        assert "verification failed" in result.stderr and "hash_mismatch" in result.stderr


class TestConcurrency:
    def test_concurrent_writers_make_one_contiguous_chain(self, engine):
        """Eight threads recording at once, and verify reading all the while: every
        committed event is in the chain exactly once, seqs 1..N without a gap, and verify
        never sees a half-written chain."""
        writers, per_writer = 8, 25
        done = threading.Event()
        verify_results: list[bool] = []

        def writer(n: int) -> list[str]:
            actor = Actor(type="user", id=f"usr_{n}", role="operator")
            return [record(engine, actor, "merchant.update", "merchant", f"mer_{n}", changes={"i": i})
                    for i in range(per_writer)]

        def verifier() -> None:
            while not done.is_set():
                verify_results.append(verify(engine).ok)

        checker = threading.Thread(target=verifier)
        checker.start()
        try:
            with ThreadPoolExecutor(writers) as pool:
                ids = [i for batch in pool.map(writer, range(writers)) for i in batch]
        finally:
            done.set()
            checker.join()
        rows = all_events(engine)
        assert len(ids) == len(set(ids)) == writers * per_writer
        assert sorted(r.id for r in rows) == sorted(ids)
        assert [r.seq for r in rows] == list(range(1, writers * per_writer + 1))
        # Each writer's own events keep their order along the chain.
        for n in range(writers):
            assert [orjson.loads(r.changes_json)["i"] for r in rows if r.actor_id == f"usr_{n}"] == list(
                range(per_writer))
        report = verify(engine)
        assert report.ok and report.events_checked == writers * per_writer
        assert verify_results and all(verify_results)
