"""Case resolutions through the HTTP API, as the exploratory session of 2026-11-24 found them (F8, F9):

- a resolution held for a second person whose case then closes another way (the channel's line arrives and
  the timing case closes by itself) ends its approval as ``expired``, with the reason, in the same
  transaction: nobody is asked to approve a closed case;
- every resolution leaves a ``recon.case.resolve`` audit event, also those no person made directly: the
  automatic timing closures (by ``system``/``reconciliation``), an ``auto_resolve`` rule's (which posts an
  entry), and an approved one (by the approver); the audit chain still verifies.
"""

from __future__ import annotations

import io
from datetime import date, timedelta
from typing import Any

import pytest

from clearhouse.audit import service as audit
from clearhouse.kit.db import transact
from tests.payments.support import ledger_verifies
from tests.reconciliation.support import NOON, sales_at_noon

CHANNEL = "sandbox_card"
HEADER = "our_ref,channel_ref,kind,status,amount,fee,currency,booked_on,value_on,description"
DAY = NOON.date()
NEXT_DAY = DAY + timedelta(days=1)
SYSTEM = ("system", "reconciliation")


@pytest.fixture
def sales(app, client, merchant_client_factory) -> list[Any]:
    """Four card sales at noon of one day (100.00, 101.00, ...), as we booked them."""
    shop, _merchant_id = merchant_client_factory("Timing shop")
    return sales_at_noon(app, shop, [10_000 + i * 100 for i in range(4)])


@pytest.fixture
def people(app, user_client_factory) -> tuple[Any, Any]:
    """A maker and a checker (operators), and entries above 10.00 waiting for the second of them."""
    app.state.settings = app.state.settings.model_copy(update={"recon_approval_threshold": 1000,
                                                               "login_rate_limit_per_minute": 1000})
    return user_client_factory("operator"), user_client_factory("operator")


def _line(row: Any, booked_on: date) -> str:
    return (f"{row.reference},{row.external_id or ''},payment,succeeded,{row.amount},{row.channel_cost},"
            f"{row.currency},{booked_on.isoformat()},,")


def _import(client: Any, lines: list[str], day: date, name: str) -> dict[str, Any]:
    content = "\n".join([HEADER, *lines]) + "\n"
    answer = client.post("/v1/reconciliations", data={"format": "csv", "channel": CHANNEL, "mapping": "clearhouse_v1",
                                                      "statement_date": day.isoformat()},
                         files={"file": (name, io.BytesIO(content.encode()), "text/csv")})
    assert answer.status_code == 201, answer.text
    return answer.json()


def _case_of(client: Any, run: dict[str, Any], row: Any) -> dict[str, Any]:
    (case,) = [c for c in client.get(f"/v1/reconciliations/{run['id']}/cases").json()["data"]
               if c["our_ref"] == row.reference]
    return case


def _audit_events(client: Any, object_id: str) -> list[dict[str, Any]]:
    answer = client.get("/v1/audit/events", params={"object_id": object_id, "limit": 500})
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def _resolve_events(client: Any, case_id: str) -> list[dict[str, Any]]:
    return [e for e in _audit_events(client, case_id) if e["action"] == "recon.case.resolve"]


def _audit_verifies(app: Any) -> None:
    report = transact(app.state.engine, audit.verify)
    assert report.ok, report


def _timing_rules(client: Any) -> None:
    """A line of ours the channel has not reported yet is a timing case for a day, not missing."""
    answer = client.put(f"/v1/recon_rules/{CHANNEL}", json={"rules": {"timing_cutoff_minutes": 1440}})
    assert answer.status_code == 200, answer.text


class TestAHeldResolutionEndsWhenItsCaseClosesOtherwise:
    def test_the_channels_line_arriving_expires_the_pending_write_off(self, app, client, sales, people):
        maker, checker = people
        _timing_rules(client)
        first = _import(client, [_line(row, DAY) for row in sales[:3]], DAY, "day.csv")  # sales[3] not yet there
        case = _case_of(client, first, sales[3])
        assert (case["class"], case["state"]) == ("timing", "open") and abs(case["delta"]) > 1000
        held = maker.post(f"/v1/recon_cases/{case['id']}/resolve",
                          json={"action": "write_off", "reason": "never arrives"})
        assert held.status_code == 202, held.text
        approval_id = held.json()["approval_id"]

        second = _import(client, [_line(sales[3], NEXT_DAY)], NEXT_DAY, "next_day.csv")

        closed = client.get(f"/v1/recon_cases/{case['id']}").json()
        assert (closed["state"], closed["resolution"], closed["approval_id"]) == ("resolved", "auto_timing", None)
        assert closed["ledger_entry_id"] is None
        assert [e["type"] for e in closed["events"]] == ["approval_requested", "resolved"]
        approval = checker.get(f"/v1/approvals/{approval_id}").json()
        assert approval["status"] == "expired"
        assert case["id"] in approval["reason"] and "auto_timing" in approval["reason"]
        pending = checker.get("/v1/approvals", params={"status": "pending"}).json()["data"]
        assert approval_id not in [a["id"] for a in pending]
        # Nobody can approve it any more, and nothing was posted.
        late = checker.post(f"/v1/approvals/{approval_id}/approve")
        assert late.status_code == 409 and late.json()["code"] == "approval_expired", late.text
        assert client.get(f"/v1/ledger/transfers/tr_{case['id']}").status_code == 404
        (expired,) = [e for e in _audit_events(client, approval_id) if e["action"] == "approval.expire"]
        assert (expired["actor_type"], expired["actor_id"]) == SYSTEM
        (resolved,) = _resolve_events(client, case["id"])
        assert resolved["changes"]["approval_expired"] == approval_id
        assert second["id"] in resolved["changes"]["reason"]
        ledger_verifies(app)
        _audit_verifies(app)


class TestEveryResolutionIsAudited:
    def test_automatic_timing_closures_are_audited_by_the_system(self, app, client, sales):
        _timing_rules(client)
        # sales[0] and sales[2] are reported a day late: both sides here, timing pairs closed at once (the bulk
        # path); sales[1] is not reported yet: an open timing case, closed when the next day's statement brings it.
        first = _import(client, [_line(sales[0], NEXT_DAY), _line(sales[2], NEXT_DAY), _line(sales[3], DAY)], DAY,
                        "day.csv")
        pairs = [_case_of(client, first, sales[0]), _case_of(client, first, sales[2])]
        waiting = _case_of(client, first, sales[1])
        assert [(p["state"], p["resolution"]) for p in pairs] == [("resolved", "auto_timing")] * 2
        assert (waiting["class"], waiting["state"]) == ("timing", "open")
        assert _resolve_events(client, waiting["id"]) == []
        _import(client, [_line(sales[1], NEXT_DAY)], NEXT_DAY, "next_day.csv")
        assert client.get(f"/v1/recon_cases/{waiting['id']}").json()["resolution"] == "auto_timing"
        for case in (*pairs, waiting):
            (event,) = _resolve_events(client, case["id"])
            assert (event["actor_type"], event["actor_id"]) == SYSTEM
            assert event["object_type"] == "recon_case"
            assert (event["changes"]["resolution"], event["changes"]["action"]) == ("auto_timing", "accept")
            assert event["changes"]["ledger_entry_id"] is None
        _audit_verifies(app)

    def test_a_rule_resolution_that_posts_is_audited_with_its_entry(self, app, client, sales):
        app.state.settings = app.state.settings.model_copy(update={"recon_approval_threshold": 1000})
        rule = {"class": "missing_in_ledger", "action": "adjust", "reason": "known stray credits"}
        answer = client.put(f"/v1/recon_rules/{CHANNEL}", json={"rules": {"timing_cutoff_minutes": 0,
                                                                          "auto_resolve": [rule]}})
        assert answer.status_code == 200, answer.text
        stray = f"pat_stray_0001,ch_stray,payment,succeeded,800,10,CNY,{DAY},,"  # delta 790, under the threshold
        run = _import(client, [*[_line(row, DAY) for row in sales], stray], DAY, "day.csv")
        (case,) = client.get(f"/v1/reconciliations/{run['id']}/cases").json()["data"]
        assert (case["state"], case["resolution"], case["ledger_entry_id"]) == ("resolved", "rule", f"tr_{case['id']}")
        (event,) = _resolve_events(client, case["id"])
        assert (event["actor_type"], event["actor_id"]) == SYSTEM
        assert event["changes"] == {"resolution": "rule", "action": "adjust", "account": "suspense",
                                    "reason": "rule (adjust): known stray credits",
                                    "ledger_entry_id": f"tr_{case['id']}"}
        ledger_verifies(app)
        _audit_verifies(app)

    def test_an_approved_resolution_is_audited_by_the_approver(self, app, client, sales, people):
        maker, checker = people
        client.put(f"/v1/recon_rules/{CHANNEL}", json={"rules": {"timing_cutoff_minutes": 0}})
        run = _import(client, [_line(row, DAY) for row in sales[1:]], DAY, "day.csv")  # sales[0] left out
        case = _case_of(client, run, sales[0])
        assert case["class"] == "missing_in_statement" and abs(case["delta"]) > 1000
        held = maker.post(f"/v1/recon_cases/{case['id']}/resolve",
                          json={"action": "write_off", "reason": "the channel never took it"})
        assert held.status_code == 202, held.text
        approval_id = held.json()["approval_id"]
        approved = checker.post(f"/v1/approvals/{approval_id}/approve")
        assert approved.status_code == 200 and approved.json()["status"] == "approved", approved.text
        (event,) = _resolve_events(client, case["id"])
        assert (event["actor_type"], event["actor_id"]) == ("user", checker.user.id)
        assert event["changes"]["approval_id"] == approval_id
        assert event["changes"]["ledger_entry_id"] == f"tr_{case['id']}"
        assert (event["changes"]["action"], event["changes"]["reason"]) == ("write_off", "the channel never took it")
        # The maker asked for it: the approval's request event names them.
        (request,) = [e for e in _audit_events(client, approval_id) if e["action"] == "approval.request"]
        assert request["actor_id"] == maker.user.id
        ledger_verifies(app)
        _audit_verifies(app)

    def test_a_persons_resolution_is_audited_as_before(self, app, client, sales):
        client.put(f"/v1/recon_rules/{CHANNEL}", json={"rules": {"timing_cutoff_minutes": 0}})
        run = _import(client, [_line(row, DAY) for row in sales[1:]], DAY, "day.csv")
        case = _case_of(client, run, sales[0])
        answer = client.post(f"/v1/recon_cases/{case['id']}/resolve", json={"action": "accept", "reason": "known"})
        assert answer.status_code == 200, answer.text
        (event,) = _resolve_events(client, case["id"])
        assert event["actor_type"] == "api_key" and event["changes"]["action"] == "accept"
        _audit_verifies(app)
