"""Session 15 findings on the audit trail, through the HTTP API and the CLI:

1. verify reports whatever a tamperer wrote (a time that is not a time, bytes, a missing chain
   head) as a failure, HTTP 200 with ok=false and CLI exit 1, never a crash; the events list
   still answers for a row whose change is not JSON;
2. verify blames only the events that changed or border a change, and rows at seq 0 or below
   are ``outside_chain``, not part of the walk;
3. what an approved action records carries the approving request's address and request id;
4. ``starting_after`` must be an event of the filtered list itself;
5. a write-off's ``recon.case.resolve`` event names the account the entry posted to;
6. the recorded request id is masked as the log masks it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text

from tests.audit.support import ADMIN, FINANCE, behind_the_applications_back, cli_report, record
from tests.audit.test_chain import write_trail
from tests.identity.test_approvals import hold_live_key
from tests.reconciliation.support import sales_at_noon
from tests.reconciliation.test_session12_cases import DAY, _case_of, _import, _line, _resolve_events


def trail(client: Any, engine: Any) -> list[tuple[int, str]]:
    """``write_trail``'s four events after whatever the ``client`` fixture recorded, as (seq, id)."""
    ids = write_trail(engine)
    seqs = {e["id"]: e["seq"] for e in events_of(client)}
    return [(seqs[i], i) for i in ids]


def events_of(client: Any, **params: Any) -> list[dict[str, Any]]:
    answer = client.get("/v1/audit/events", params={"limit": 500, **params})
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def caught(client: Any, database_url: str, *, cli: bool = True) -> dict[str, Any]:
    """``GET /v1/audit/verify`` answers 200 with ok=false and, with ``cli``, ``clearhouse audit
    verify --json`` exits 1 with the same first failure; returns the CLI's full report (or the API's)."""
    answer = client.get("/v1/audit/verify")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["ok"] is False, body
    if not cli:
        return {**body, "failures": [body["first_failure"]]}
    code, report = cli_report(database_url)
    assert code == 1, report
    assert report["ok"] is False and report["first_failure"] == body["first_failure"]
    assert report["chain_head"] == body["chain_head"]
    return report


def checks(report: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(f["check"], f.get("seq")) for f in report["failures"]]


def tamper(engine: Any, backend: str, *statements: str) -> None:
    with behind_the_applications_back(engine, backend) as connection:
        for statement in statements:
            connection.execute(text(statement))


@contextmanager
def past_the_seq_check(engine: Any, backend: str) -> Iterator[Any]:
    """A connection on which neither the triggers nor the ``seq >= 1`` CHECK stop a write."""
    with behind_the_applications_back(engine, backend) as connection:
        if backend == "postgresql":
            connection.execute(text("ALTER TABLE audit_events DROP CONSTRAINT ck_audit_events_seq_positive"))
        else:
            connection.exec_driver_sql("PRAGMA ignore_check_constraints = ON")
        yield connection
        if backend == "postgresql":
            connection.execute(text(
                "ALTER TABLE audit_events ADD CONSTRAINT ck_audit_events_seq_positive CHECK (seq >= 1) NOT VALID"))
        else:
            connection.exec_driver_sql("PRAGMA ignore_check_constraints = OFF")


@pytest.fixture
def sqlite_only(backend: str) -> None:
    if backend != "sqlite":
        pytest.skip("PostgreSQL stores only values of the column's type")


class TestVerifyReportsInsteadOfCrashing:
    @pytest.mark.slow  # starts the CLI
    def test_a_time_that_is_not_a_time_is_an_invalid_event(self, client, engine, backend, database_url, sqlite_only):
        (seq, event_id), *_ = trail(client, engine)
        tamper(engine, backend, f"UPDATE audit_events SET occurred_at = 'garbage' WHERE seq = {seq}")
        report = caught(client, database_url)
        assert report["failures"] == [{"check": "invalid_event", "detail": "occurred_at 'garbage' is not a time",
                                       "seq": seq, "event_id": event_id}]
        # The list still answers, showing what is stored.
        assert [e["occurred_at"] for e in events_of(client) if e["id"] == event_id] == ["garbage"]

    @pytest.mark.slow  # starts the CLI
    def test_bytes_in_the_change_are_an_invalid_event(self, client, engine, backend, database_url, sqlite_only):
        seq, event_id = trail(client, engine)[2]
        tamper(engine, backend, f"UPDATE audit_events SET changes_json = CAST(changes_json AS BLOB) WHERE seq = {seq}")
        report = caught(client, database_url)
        assert checks(report) == [("invalid_event", seq)] and report["first_failure"]["event_id"] == event_id
        assert events_of(client, object_id="tok_1")[0]["changes"] == "b'{\"last4\":\"4242\"}'"

    def test_text_that_is_not_utf_8_is_read_and_reported(self, client, engine, backend, database_url, sqlite_only):
        seq, _event_id = trail(client, engine)[1]
        tamper(engine, backend, f"UPDATE audit_events SET actor_id = CAST(X'FF' AS TEXT) WHERE seq = {seq}")
        assert checks(caught(client, database_url, cli=False)) == [("hash_mismatch", seq)]

    def test_a_change_that_is_not_json_is_reported_and_still_listed_as_its_text(
        self, client, engine, backend, database_url
    ):
        (first, first_id), (second, _second_id), *_ = trail(client, engine)
        tamper(engine, backend, f"UPDATE audit_events SET changes_json = 'not json' WHERE seq = {first}",
               f"UPDATE audit_events SET changes_json = '[1]' WHERE seq = {second}")
        report = caught(client, database_url, cli=False)
        assert report["first_failure"]["check"] == "hash_mismatch" and report["first_failure"]["event_id"] == first_id
        [shown] = events_of(client, action="merchant.create", object_id="mer_shop")
        assert shown["id"] == first_id and shown["changes"] == "not json"
        assert [e["changes"] for e in events_of(client, object_id="key_shop", action="api_key.create")] == ["[1]"]

    @pytest.mark.slow  # starts the CLI
    def test_a_deleted_chain_head_is_a_chain_head_failure(self, client, engine, backend, database_url):
        last, _event_id = trail(client, engine)[-1]
        tamper(engine, backend, "DELETE FROM audit_chain")
        report = caught(client, database_url)
        assert report["chain_head"] == {"seq": None, "hash": None}
        assert report["failures"] == [{"check": "chain_head",
                                       "detail": f"the chain head is missing, the trail ends at {last}"}]


class TestVerifyBlamesOnlyWhatChanged:
    @pytest.mark.slow  # starts the CLI
    def test_a_removed_event_blames_its_successor_for_the_gap_and_link_only(self, client, engine, backend,
                                                                             database_url):
        _first, (removed, _removed_id), (after, after_id), _last = trail(client, engine)
        tamper(engine, backend, f"DELETE FROM audit_events WHERE seq = {removed}")
        report = caught(client, database_url, cli=False)
        assert report["first_failure"] == {"check": "chain_gap", "detail": f"expected event {removed}, found {after}",
                                           "seq": after, "event_id": after_id}
        # The CLI lists every failure: the next event's content is untouched, so no hash_mismatch.
        assert checks(cli_report(database_url)[1]) == [("chain_gap", after), ("broken_link", after)]

    @pytest.mark.slow  # starts the CLI
    def test_a_row_before_the_chain_is_outside_it_and_the_first_event_is_not_blamed(
        self, client, engine, backend, database_url
    ):
        checked = trail(client, engine)[-1][0]
        with past_the_seq_check(engine, backend) as connection:
            connection.execute(text(
                "INSERT INTO audit_events (seq, id, occurred_at, actor_type, actor_id, action, object_type, object_id,"
                " changes_json, prev_hash, hash) SELECT 0, 'aev_forged', occurred_at, actor_type, actor_id, action,"
                " object_type, object_id, changes_json, prev_hash, hash FROM audit_events WHERE seq = 1"))
        code, report = cli_report(database_url)
        assert code == 1 and report["events_checked"] == checked
        assert report["failures"] == [{"check": "outside_chain",
                                       "detail": "an event at seq 0 or below, outside the chain (which starts at 1)",
                                       "seq": 0, "event_id": "aev_forged"}]
        assert client.get("/v1/audit/verify").json()["first_failure"] == report["first_failure"]

    def test_a_chain_head_naming_a_stored_event_names_that_event(self, client, engine, backend):
        last, last_id = trail(client, engine)[-1]
        tamper(engine, backend, "UPDATE audit_chain SET hash = '" + "f" * 64 + "'")
        body = client.get("/v1/audit/verify").json()
        assert body["first_failure"] == {"check": "chain_head",
                                         "detail": f"head says event {last}, the trail ends at {last}",
                                         "seq": last, "event_id": last_id}


@pytest.fixture
def people_app(app):
    """Several people sign in from the test client's one address: the login limit has its own tests."""
    app.state.settings = app.state.settings.model_copy(update={"login_rate_limit_per_minute": 1000,
                                                               "recon_approval_threshold": 10**12})
    return app


class TestAnApprovedActionKeepsWhereItCameFrom:
    def test_a_key_made_on_approval_carries_the_approving_requests_address_and_id(
        self, people_app, client, user_client_factory, merchant_client_factory
    ):
        _shop, merchant_id = merchant_client_factory("Origin shop")
        maker, checker = user_client_factory("admin"), user_client_factory("admin")
        approval = hold_live_key(maker, merchant_id, name="production")
        approved = checker.post(f"/v1/approvals/{approval['id']}/approve", headers={"X-Request-Id": "req_approve_7"})
        assert approved.status_code == 200, approved.text
        key_id = approved.json()["result"]["api_key_id"]
        [created] = [e for e in events_of(client, object_id=key_id) if e["action"] == "api_key.create"]
        [decided] = events_of(client, object_id=approval["id"], action="approval.approve")
        for event in (created, decided):
            assert (event["actor_id"], event["source_ip"], event["request_id"]) == (
                checker.user.id, "testclient", "req_approve_7"), event

    def test_an_applied_role_change_carries_the_approving_requests_address_and_id(
        self, people_app, client, user_client_factory
    ):
        maker, checker = user_client_factory("admin"), user_client_factory("admin")
        person = user_client_factory("operator").user
        held = maker.post(f"/v1/users/{person.id}/role", json={"role": "finance"})
        assert held.status_code == 202, held.text
        approved = checker.post(f"/v1/approvals/{held.json()['id']}/approve", headers={"X-Request-Id": "req_role_1"})
        assert approved.status_code == 200, approved.text
        [applied] = events_of(client, object_id=person.id, action="user.role_change_applied")
        assert (applied["actor_id"], applied["source_ip"], applied["request_id"]) == (
            checker.user.id, "testclient", "req_role_1")


class TestTheCursorBelongsToTheFilteredList:
    def test_an_event_the_filters_leave_out_is_not_a_cursor(self, client, engine):
        with_time = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
        from clearhouse.kit import clock

        with clock.frozen(with_time) as clk:
            created = record(engine, ADMIN, "merchant.create", "merchant", "mer_a")
            clk.tick(minutes=1)
            updated = [record(engine, FINANCE, "merchant.update", "merchant", "mer_a") for _ in range(2)]
        assert [e["id"] for e in events_of(client, action="merchant.update", starting_after=updated[0])] == [
            updated[1]]
        for params in ({"action": "merchant.update"}, {"actor_id": "usr_finance"},
                       {"since": "2026-11-23T09:01:00Z"}, {"until": "2026-11-23T09:00:00Z"}):
            cursor = updated[0] if "until" in params else created
            answer = client.get("/v1/audit/events", params={**params, "starting_after": cursor})
            assert answer.status_code == 422, (params, answer.text)
            assert answer.json()["code"] == "validation_error"


class TestAWriteOffRecordsTheAccountItPostedTo:
    def test_the_resolve_event_names_losses_writeoff(self, people_app, client, merchant_client_factory):
        shop, _merchant_id = merchant_client_factory("Write-off shop")
        sales = sales_at_noon(people_app, shop, [10_000, 10_100])
        client.put("/v1/recon_rules/sandbox_card", json={"rules": {"timing_cutoff_minutes": 0}})
        run = _import(client, [_line(sales[1], DAY)], DAY, "day.csv")  # sales[0] never reported
        case = _case_of(client, run, sales[0])
        resolved = client.post(f"/v1/recon_cases/{case['id']}/resolve",
                               json={"action": "write_off", "reason": "the channel never took it"})
        assert resolved.status_code == 200, resolved.text
        [event] = _resolve_events(client, case["id"])
        assert event["changes"]["account"] == "losses:writeoff"
        entry = client.get(f"/v1/ledger/transfers/{event['changes']['ledger_entry_id']}").json()
        codes = {client.get(f"/v1/ledger/accounts/{entry[side]}").json()["code"]
                 for side in ("debit_account_id", "credit_account_id")}
        assert "losses:writeoff" in codes and "suspense" not in codes, codes


class TestTheRecordedRequestIdIsMasked:
    def test_a_card_number_in_x_request_id_is_masked_as_in_the_log(self, client):
        made = client.post("/v1/merchants", json={"name": "Masked shop"}, headers={"X-Request-Id": "5555555555554444"})
        assert made.status_code == 201, made.text
        [event] = events_of(client, object_id=made.json()["id"], action="merchant.create")
        assert event["request_id"] == "555555******4444"
        assert client.get("/v1/audit/verify").json()["ok"] is True
