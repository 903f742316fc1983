"""Reconciliation through the HTTP API: real payments on the sandbox card channel, their statement with
one injected discrepancy of every class, each class produced and resolved, and the ledger verifying."""

from __future__ import annotations

import io
from datetime import date, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from clearhouse.kit import clock
from clearhouse.kit.db import transact
from tests.payments.support import balances, card_body, ledger_verifies
from tests.reconciliation.support import NOON, booked

CHANNEL = "sandbox_card"
HEADER = "our_ref,channel_ref,kind,status,amount,fee,currency,booked_on,value_on,description"
DECLINED_CARD = "4000000000000002"


def _line(row: Any, day: date, *, amount: int | None = None, fee: int | None = None,
          status: str = "succeeded") -> str:
    return (f"{row.reference},{row.external_id or ''},payment,{status},{row.amount if amount is None else amount},"
            f"{row.channel_cost if fee is None else fee},{row.currency},{day.isoformat()},,")


def _upload(client: Any, content: str, day: date, *, name: str = "statement.csv", fmt: str = "csv") -> Any:
    return client.post("/v1/reconciliations", data={"format": fmt, "channel": CHANNEL, "mapping": "clearhouse_v1",
                                                     "statement_date": day.isoformat()},
                       files={"file": (name, io.BytesIO(content.encode()), "text/csv")})


@pytest.fixture
def day_of_payments(app, client, merchant_client_factory) -> dict[str, Any]:
    """Seven card payments and one declined one, all at noon of one fixed day (a run that straddles midnight
    would split them over two days); timing cut-off off so the clock cannot matter."""
    assert client.put(f"/v1/recon_rules/{CHANNEL}", json={"rules": {"timing_cutoff_minutes": 0}}).status_code == 200
    shop, merchant_id = merchant_client_factory("Recon shop")
    ids = []
    with clock.frozen(NOON):
        for i in range(7):
            answer = shop.post("/v1/payments", json=card_body(amount=10_000 + i * 100))
            assert answer.status_code == 201 and answer.json()["status"] == "succeeded", answer.text
            ids.append(answer.json()["id"])
        declined = shop.post("/v1/payments", json=card_body(amount=5_000, number=DECLINED_CARD))
        assert declined.json()["status"] == "failed", declined.text
    rows = booked(app, [*ids, declined.json()["id"]])
    day = NOON.date()
    return {"rows": [rows[i] for i in ids], "declined": rows[declined.json()["id"]], "day": day,
            "merchant_id": merchant_id}


def _statement_with_every_class(day_of_payments: dict[str, Any]) -> str:
    rows, day = day_of_payments["rows"], day_of_payments["day"]
    lines = [HEADER,
             _line(rows[0], day),                                   # matched (so are rows[4] and rows[6])
             # rows[1] left out                                     -> missing_in_statement
             _line(rows[2], day, amount=rows[2].amount + 100),      # -> amount_mismatch
             _line(rows[3], day, fee=rows[3].channel_cost + 5),     # -> fee_mismatch
             _line(rows[4], day), _line(rows[4], day),              # -> duplicate
             _line(rows[5], day + timedelta(days=1)),               # -> timing
             _line(rows[6], day),                                   # matched
             _line(day_of_payments["declined"], day),               # -> status_mismatch (we say failed)
             f"pat_stray_0001,ch_stray,payment,succeeded,2500,10,CNY,{day.isoformat()},,",  # -> missing_in_ledger
             ]
    return "\n".join(lines) + "\n"


def _cases_by_class(client: Any, run_id: str) -> dict[str, dict[str, Any]]:
    answer = client.get(f"/v1/reconciliations/{run_id}/cases")
    assert answer.status_code == 200, answer.text
    found: dict[str, dict[str, Any]] = {}
    for case in answer.json()["data"]:
        assert case["class"] not in found, f"two {case['class']} cases"
        found[case["class"]] = case
    return found


class TestEveryClassThroughTheApi:
    def test_each_class_is_produced_with_both_sides(self, app, client, day_of_payments):
        answer = _upload(client, _statement_with_every_class(day_of_payments), day_of_payments["day"])
        assert answer.status_code == 201, answer.text
        run = answer.json()
        counts = {name: figures["count"] for name, figures in run["classes"].items()}
        assert counts == {"matched": 3, "missing_in_ledger": 1, "missing_in_statement": 1, "amount_mismatch": 1,
                          "fee_mismatch": 1, "status_mismatch": 1, "duplicate": 1, "timing": 1}
        found = _cases_by_class(client, run["id"])
        rows = day_of_payments["rows"]
        assert found["missing_in_statement"]["our_ref"] == rows[1].reference
        assert found["missing_in_statement"]["delta"] == -(rows[1].amount - rows[1].channel_cost)
        assert found["amount_mismatch"]["difference"] == 100 and found["amount_mismatch"]["delta"] == 100
        assert found["fee_mismatch"]["difference"] == 5 and found["fee_mismatch"]["delta"] == -5
        assert found["status_mismatch"]["ours"]["status"] == "failed"
        assert found["status_mismatch"]["theirs"]["status"] == "succeeded"
        assert found["missing_in_ledger"]["theirs"]["amount"] == 2500 and found["missing_in_ledger"]["delta"] == 2490
        assert found["duplicate"]["our_ref"] == rows[4].reference
        # Both sides of the timing pair are here: it resolves itself.
        assert found["timing"]["state"] == "resolved" and found["timing"]["resolution"] == "auto_timing"
        assert run["case_states"] == {"open": 6, "resolved": 1}
        ledger_verifies(app)

    def test_every_case_is_resolved_and_the_ledger_verifies(self, app, client, day_of_payments):
        app.state.settings = app.state.settings.model_copy(update={"recon_approval_threshold": 1_000_000})
        run = _upload(client, _statement_with_every_class(day_of_payments), day_of_payments["day"]).json()
        found = _cases_by_class(client, run["id"])
        before = balances(app, day_of_payments["merchant_id"])
        decisions = {
            "missing_in_ledger": {"action": "adjust", "reason": "unexplained credit held in suspense"},
            "missing_in_statement": {"action": "write_off", "reason": "the channel never took it"},
            "amount_mismatch": {"action": "adjust", "reason": "channel paid 1.00 more"},
            "fee_mismatch": {"action": "adjust", "account": "channel_cost", "reason": "channel fee is higher"},
            "status_mismatch": {"action": "adjust", "reason": "paid at the channel, failed here"},
            "duplicate": {"action": "accept", "reason": "the channel lists it twice, paid once"},
        }
        entries = []
        for name, decision in decisions.items():
            answer = client.post(f"/v1/recon_cases/{found[name]['id']}/resolve", json=decision)
            assert answer.status_code == 200, (name, answer.text)
            case = answer.json()
            assert case["state"] == ("written_off" if decision["action"] == "write_off" else "resolved")
            assert (case["ledger_entry_id"] is None) == (decision["action"] == "accept")
            entries.append(case["ledger_entry_id"])
            assert [e["type"] for e in case["events"]][-1] == case["state"]
        after = balances(app, day_of_payments["merchant_id"])
        rows, declined = day_of_payments["rows"], day_of_payments["declined"]
        moved = (2490 - (rows[1].amount - rows[1].channel_cost) + 100 - 5
                 + (declined.amount - declined.channel_cost))
        assert after["clearing"] - before["clearing"] == moved
        assert after["cost"] - before["cost"] == 5
        assert after["merchant"] == before["merchant"]  # reconciliation never touches what we owe merchants
        ledger_verifies(app)
        # Final is final.
        again = client.post(f"/v1/recon_cases/{found['duplicate']['id']}/resolve",
                            json={"action": "accept", "reason": "again"})
        assert again.status_code == 409 and again.json()["code"] == "recon_case_state_conflict"
        run_after = client.get(f"/v1/reconciliations/{run['id']}").json()
        assert run_after["case_states"] == {"resolved": 6, "written_off": 1}

    def test_a_timing_case_closes_when_the_next_statement_brings_the_line(self, app, client, day_of_payments):
        rows, day = day_of_payments["rows"], day_of_payments["day"]
        first = [HEADER, *[_line(r, day) for r in rows[:6]]]  # rows[6] crosses midnight at the channel
        assert client.put(f"/v1/recon_rules/{CHANNEL}", json={"rules": {"timing_cutoff_minutes": 1440}}).status_code \
            == 200
        run = _upload(client, "\n".join(first) + "\n", day).json()
        timing = _cases_by_class(client, run["id"])["timing"]
        assert timing["state"] == "open" and timing["our_ref"] == rows[6].reference
        second = _upload(client, f"{HEADER}\n{_line(rows[6], day + timedelta(days=1))}\n", day + timedelta(days=1),
                         name="next.csv")
        assert second.status_code == 201, second.text
        closed = client.get(f"/v1/recon_cases/{timing['id']}").json()
        assert closed["state"] == "resolved" and closed["resolution"] == "auto_timing"
        assert second.json()["id"] in closed["resolution_reason"]


class TestDeltas:
    def test_a_fee_mismatch_posts_the_fee_gap_only_not_an_amount_gap_within_tolerance(self, client, day_of_payments):
        rules = {"timing_cutoff_minutes": 0, "amount_tolerance_minor": 50}
        assert client.put(f"/v1/recon_rules/{CHANNEL}", json={"rules": rules}).status_code == 200
        rows, day = day_of_payments["rows"], day_of_payments["day"]
        content = "\n".join([HEADER, _line(rows[0], day, amount=rows[0].amount + 30, fee=rows[0].channel_cost + 5),
                             *[_line(r, day) for r in rows[1:]]]) + "\n"
        run = _upload(client, content, day).json()
        (case,) = client.get(f"/v1/reconciliations/{run['id']}/cases").json()["data"]
        assert (case["class"], case["difference"], case["delta"]) == ("fee_mismatch", 5, -5)  # our fee - theirs


class TestStatementsWithoutFees:
    def test_a_line_without_a_fee_is_no_fee_mismatch_and_reports_its_whole_amount(self, client, day_of_payments):
        rows, day = day_of_payments["rows"], day_of_payments["day"]
        no_fee = [f"{r.reference},{r.external_id or ''},payment,succeeded,{r.amount},,{r.currency},{day},,"
                  for r in rows]
        run = _upload(client, "\n".join([HEADER, *no_fee]) + "\n", day).json()
        assert run["classes"]["matched"]["count"] == 7 and run["classes"]["fee_mismatch"]["count"] == 0, run
        assert run["case_count"] == 0
        (figures,) = run["clearing"].values()
        assert figures["reported"] == sum(r.amount for r in rows)
        assert figures["expected"] == sum(r.amount - r.channel_cost for r in rows)


class TestImportRules:
    def test_the_same_file_twice_is_refused_and_changes_nothing(self, client, day_of_payments):
        content = _statement_with_every_class(day_of_payments)
        assert _upload(client, content, day_of_payments["day"]).status_code == 201
        again = _upload(client, content, day_of_payments["day"], name="renamed.csv")
        assert again.status_code == 409 and again.json()["code"] == "statement_already_imported"
        # The same bytes are known whatever they are said to be (the file is hashed while it is parsed).
        as_mt940 = _upload(client, content, day_of_payments["day"], name="renamed.sta", fmt="mt940")
        assert as_mt940.status_code == 409 and as_mt940.json()["code"] == "statement_already_imported"
        assert len(client.get("/v1/reconciliations").json()["data"]) == 1

    def test_a_bad_amount_names_its_line_and_imports_nothing(self, client, day_of_payments):
        day = day_of_payments["day"]
        bad = f"pat_x,ch_x,payment,succeeded,12x4,0,CNY,{day},,"
        content = f"{HEADER}\n{_line(day_of_payments['rows'][0], day)}\n{bad}\n"
        answer = _upload(client, content, day)
        assert answer.status_code == 422 and answer.json()["code"] == "statement_invalid"
        assert answer.json()["line"] == 3
        assert client.get("/v1/reconciliations").json()["data"] == []

    def test_a_missing_field_is_a_validation_error(self, client):
        answer = client.post("/v1/reconciliations", data={"format": "csv", "channel": CHANNEL},
                             files={"file": ("s.csv", io.BytesIO(b"x"), "text/csv")})
        assert answer.status_code == 422 and answer.json()["code"] == "validation_error"

    def test_dry_run_reports_without_saving(self, client, day_of_payments):
        content = _statement_with_every_class(day_of_payments)
        answer = client.post(f"/v1/recon_rules/{CHANNEL}/dry_run",
                             data={"format": "csv", "statement_date": day_of_payments["day"].isoformat(),
                                   "mapping": "clearhouse_v1",
                                   "rules": '{"rules": {"fee_tolerance_minor": 5, "timing_cutoff_minutes": 0}}'},
                             files={"file": ("s.csv", io.BytesIO(content.encode()), "text/csv")})
        assert answer.status_code == 200, answer.text
        classes = answer.json()["classes"]
        assert classes["fee_mismatch"]["count"] == 0 and classes["matched"]["count"] == 4  # fee within tolerance
        assert client.get("/v1/reconciliations").json()["data"] == []
        assert _upload(client, content, day_of_payments["day"]).status_code == 201  # the file was not recorded

    @pytest.mark.parametrize(("rules", "says"), [
        ('{"rules": {"fee_tolerance_minor": 5}, "rules": {}}', 'names the key "rules" more than once'),
        ('{"rules": {"fee_tolerance_minor": 5, "fee_tolerance_minor": 0}}', '"fee_tolerance_minor" more than once'),
        ("{rules: 1}", "the rules field is not valid JSON"),
        ('{"rules": {"fee_tolerance_minor": 1' + "0" * 5000 + "}}", "a number in the rules field"),
    ])
    def test_dry_run_rules_are_read_as_strictly_as_a_body(self, client, rules, says):
        answer = client.post(f"/v1/recon_rules/{CHANNEL}/dry_run",
                             data={"format": "csv", "statement_date": "2026-11-23", "mapping": "clearhouse_v1",
                                   "rules": rules},
                             files={"file": ("s.csv", io.BytesIO(HEADER.encode()), "text/csv")})
        assert answer.status_code == 400, answer.text
        assert answer.json()["code"] == "malformed_request" and says in answer.json()["detail"]

    @pytest.mark.parametrize("zone", ["America", "Etc", "Mars/Base", "../../etc/passwd", ""])
    def test_a_time_zone_that_is_a_tz_database_folder_or_unknown_is_a_422(self, client, zone):
        for path, body in ((f"/v1/recon_rules/{CHANNEL}", {"rules": {"timezone": zone}}),
                           (f"/v1/recon_rules/{CHANNEL}", {"rules": {}, "mapping": {
                               "columns": {"our_ref": "r", "amount": "a", "currency": "c", "booked_on": "d"},
                               "timezone": zone}})):
            answer = client.put(path, json=body)
            assert answer.status_code == 422 and answer.json()["code"] == "validation_error", answer.text
        assert client.get(f"/v1/recon_rules/{CHANNEL}").json()["rules"]["timezone"] != zone
        merchant = client.post("/v1/merchants", json={"name": "Zone", "timezone": zone})
        assert merchant.status_code == 422 and merchant.json()["code"] == "validation_error", merchant.text

    @pytest.mark.parametrize("fields", [{"format": "pdf"}, {"format": "CSV"}, {"format": "csv", "mapping": "nope"},
                                        {"format": "csv", "mapping": "Bad-Name"}])
    def test_an_unknown_format_or_mapping_is_statement_format_unknown_as_in_the_cli(self, client, fields):
        content = f"{HEADER}\n".encode()
        for path, extra in (("/v1/reconciliations", {"channel": CHANNEL}), (f"/v1/recon_rules/{CHANNEL}/dry_run", {})):
            answer = client.post(path, data={"statement_date": "2026-11-23", **extra, **fields},
                                 files={"file": ("s.csv", io.BytesIO(content), "text/csv")})
            assert answer.status_code == 422 and answer.json()["code"] == "statement_format_unknown", answer.text
        assert client.get("/v1/reconciliations").json()["data"] == []

    def test_rules_are_validated(self, client):
        answer = client.put(f"/v1/recon_rules/{CHANNEL}", json={"rules": {"date_window_days": -1}})
        assert answer.status_code == 422 and answer.json()["code"] == "validation_error"

    @pytest.mark.parametrize("zones", [{"timezone": "Mars/Base", "calendar": "UTC"},
                                       {"timezone": "UTC", "calendar": "Mars/Base"}])
    def test_a_mapping_with_an_unknown_time_zone_is_refused(self, app, client, zones):
        mapping = {"columns": {"our_ref": "ref", "amount": "amt", "currency": "cur", "booked_on": "day"},
                   "date_format": "%Y-%m-%d %H:%M", **zones}
        answer = client.put("/v1/recon_rules/chan_tz", json={"rules": {}, "mapping": mapping})
        assert answer.status_code == 422 and answer.json()["code"] == "validation_error"
        assert "Mars/Base" in answer.text
        content = "ref,amt,cur,day\nr1,100,CNY,2026-11-23 10:00\n"
        dry = client.post("/v1/recon_rules/chan_tz/dry_run",
                          data={"format": "csv", "statement_date": "2026-11-23",
                                "rules": orjson.dumps({"rules": {}, "mapping": mapping}).decode()},
                          files={"file": ("s.csv", io.BytesIO(content.encode()), "text/csv")})
        assert dry.status_code == 422 and dry.json()["code"] == "validation_error"
        # One saved before the check existed is a 422 on import too, never a 500.
        assert client.put("/v1/recon_rules/chan_tz", json={"rules": {}, "mapping": {
            **mapping, "timezone": "UTC", "calendar": "UTC"}}).status_code == 200
        transact(app.state.engine, lambda s: s.execute(text("UPDATE recon_rules SET mapping_json = :m WHERE channel"
                                                            " = 'chan_tz'"), {"m": orjson.dumps(mapping).decode()}))
        answer = client.post("/v1/reconciliations", data={"format": "csv", "channel": "chan_tz",
                                                          "statement_date": "2026-11-23"},
                             files={"file": ("s.csv", io.BytesIO(content.encode()), "text/csv")})
        assert answer.status_code == 422 and answer.json()["code"] == "validation_error", answer.text
        assert client.get("/v1/reconciliations").json()["data"] == []


class TestMakerChecker:
    def test_a_large_adjustment_waits_for_a_second_person(self, app, day_of_payments, user_client_factory):
        app.state.settings = app.state.settings.model_copy(update={"recon_approval_threshold": 1000,
                                                                   "login_rate_limit_per_minute": 1000})
        maker, checker = user_client_factory("operator"), user_client_factory("operator")
        run = _upload(maker, _statement_with_every_class(day_of_payments), day_of_payments["day"]).json()
        case = _cases_by_class(maker, run["id"])["missing_in_ledger"]  # delta 2490 > 1000
        held = maker.post(f"/v1/recon_cases/{case['id']}/resolve",
                          json={"action": "adjust", "reason": "credit held in suspense"})
        assert held.status_code == 202, held.text
        approval = held.json()["approval"]
        assert held.json()["state"] == "open" and held.json()["approval_id"] == approval["id"]
        busy = maker.post(f"/v1/recon_cases/{case['id']}/resolve", json={"action": "accept", "reason": "never mind"})
        assert busy.status_code == 409
        assert maker.post(f"/v1/approvals/{approval['id']}/approve").status_code == 403  # not one's own
        assert checker.post(f"/v1/approvals/{approval['id']}/approve").status_code == 200
        done = checker.get(f"/v1/recon_cases/{case['id']}").json()
        assert done["state"] == "resolved" and done["ledger_entry_id"] == f"tr_{case['id']}"
        small = _cases_by_class(maker, run["id"])["amount_mismatch"]  # delta 100: no second person
        assert maker.post(f"/v1/recon_cases/{small['id']}/resolve",
                          json={"action": "adjust", "reason": "paid 1.00 more"}).status_code == 200
        ledger_verifies(app)


    def test_an_auto_resolve_rule_never_posts_above_the_threshold(self, app, client, day_of_payments):
        app.state.settings = app.state.settings.model_copy(update={"recon_approval_threshold": 1000})
        rule = {"class": "missing_in_ledger", "action": "adjust", "reason": "known stray credits"}
        assert client.put(f"/v1/recon_rules/{CHANNEL}", json={"rules": {"timing_cutoff_minutes": 0,
                                                                       "auto_resolve": [rule]}}).status_code == 200
        rows, day = day_of_payments["rows"], day_of_payments["day"]
        content = "\n".join([HEADER, *[_line(r, day) for r in rows],
                             f"pat_big_0001,ch_big,payment,succeeded,2500,10,CNY,{day},,",  # delta 2490 > 1000
                             f"pat_small_0001,ch_small,payment,succeeded,1000,0,CNY,{day},,"]) + "\n"  # at it
        run = _upload(client, content, day).json()
        cases = {c["our_ref"]: c for c in client.get(f"/v1/reconciliations/{run['id']}/cases").json()["data"]}
        small = client.get(f"/v1/recon_cases/{cases['pat_small_0001']['id']}").json()
        assert small["state"] == "resolved" and small["resolution"] == "rule"
        assert small["ledger_entry_id"] == f"tr_{small['id']}"
        big = client.get(f"/v1/recon_cases/{cases['pat_big_0001']['id']}").json()
        assert big["state"] == "open" and big["ledger_entry_id"] is None and big["resolution"] is None
        (held,) = big["events"]
        assert held["type"] == "rule_held" and "approval threshold of 1000" in held["body"]
        assert run["case_states"] == {"open": 1, "resolved": 1}
        # People can still resolve it, through a second person.
        answer = client.post(f"/v1/recon_cases/{big['id']}/resolve", json={"action": "adjust", "reason": "stray"})
        assert answer.status_code == 202, answer.text
        ledger_verifies(app)


class TestCaseWorkflow:
    def test_take_investigate_comment(self, client, day_of_payments):
        run = _upload(client, _statement_with_every_class(day_of_payments), day_of_payments["day"]).json()
        case = _cases_by_class(client, run["id"])["amount_mismatch"]
        taken = client.patch(f"/v1/recon_cases/{case['id']}", json={"owner": "ana@example.com",
                                                                     "state": "investigating"})
        assert taken.status_code == 200 and taken.json()["state"] == "investigating"
        noted = client.post(f"/v1/recon_cases/{case['id']}/comments", json={"body": "asked the acquirer"})
        assert noted.status_code == 201
        assert [e["type"] for e in noted.json()["events"]] == ["updated", "comment"]
        queue = client.get("/v1/recon_cases", params={"state": "investigating"}).json()["data"]
        assert [c["id"] for c in queue] == [case["id"]]
        assert client.get("/v1/recon_cases/rcs_nope").status_code == 404

    def test_merchants_cannot_see_reconciliation(self, merchant_client_factory):
        shop, _ = merchant_client_factory("Curious shop")
        assert shop.get("/v1/reconciliations").status_code == 403


class TestClearingReport:
    def test_expected_reported_and_the_chart(self, client, day_of_payments):
        rows, day = day_of_payments["rows"], day_of_payments["day"]
        content = "\n".join([HEADER, *[_line(r, day) for r in rows]]) + "\n"
        assert _upload(client, content, day).status_code == 201
        report = client.get("/v1/clearing/daily", params={"date": day.isoformat()}).json()
        (line,) = report["channels"]
        net = sum(r.amount - r.channel_cost for r in rows)
        assert line["channel"] == CHANNEL and line["expected"] == net and line["reported"] == net
        assert line["received"] == 0 and line["net_position"] == net and line["clearing_balance"] == net
        csv_answer = client.get("/v1/clearing/daily", params={"date": day.isoformat(), "format": "csv"})
        assert csv_answer.headers["content-type"].startswith("text/csv")
        assert csv_answer.text.splitlines()[1].startswith(f"{day.isoformat()},{CHANNEL},CNY,{net},{net},0,{net}")
        page = client.get("/v1/clearing/daily", params={"date": day.isoformat(), "format": "html"})
        assert "<svg" in page.text and CHANNEL in page.text

    def test_a_second_file_of_the_day_replaces_the_first_in_the_figures(self, client, day_of_payments):
        """A re-issued statement of one day: our expected money counts once, the channel's is the latest file's;
        the first file's case (the line it lacked) is counted, closed by the re-issue (session 14)."""
        rows, day = day_of_payments["rows"], day_of_payments["day"]
        first = "\n".join([HEADER, *[_line(r, day) for r in rows[:-1]]]) + "\n"
        second = "\n".join([HEADER, *[_line(r, day) for r in rows]]) + "\n"
        assert _upload(client, first, day).status_code == 201
        one = client.get("/v1/clearing/daily", params={"date": day.isoformat()}).json()["channels"]
        net = sum(r.amount - r.channel_cost for r in rows)
        last = rows[-1].amount - rows[-1].channel_cost
        assert [(line["expected"], line["reported"], line["discrepancies"]) for line in one] == [(net, net - last, 1)]
        assert _upload(client, second, day, name="corrected.csv").status_code == 201
        (line,) = client.get("/v1/clearing/daily", params={"date": day.isoformat()}).json()["channels"]
        assert (line["expected"], line["reported"], line["net_position"]) == (net, net, net)
        assert line["discrepancies"] == 1 and line["open_cases"] == 0 and len(line["reconciliations"]) == 2

    def test_discrepancies_and_open_cases_are_counted_per_currency(self, client, day_of_payments):
        day = day_of_payments["day"]
        stray_usd = f"pat_stray_0002,ch_stray2,payment,succeeded,700,3,USD,{day.isoformat()},,\n"
        content = _statement_with_every_class(day_of_payments) + stray_usd
        run = _upload(client, content, day).json()
        cases = client.get(f"/v1/reconciliations/{run['id']}/cases").json()["data"]
        taken = next(c for c in cases if c["currency"] == "CNY" and c["class"] == "amount_mismatch")
        resolved = client.post(f"/v1/recon_cases/{taken['id']}/resolve", json={"action": "accept", "reason": "known"})
        assert resolved.status_code == 200, resolved.text
        report = client.get("/v1/clearing/daily", params={"date": day.isoformat()})
        assert report.status_code == 200, report.text
        by_currency = {line["currency"]: line for line in report.json()["channels"]}
        assert set(by_currency) == {"CNY", "USD"}
        assert (by_currency["USD"]["discrepancies"], by_currency["USD"]["open_cases"]) == (1, 1)
        now = client.get(f"/v1/reconciliations/{run['id']}/cases").json()["data"]
        cny = [c for c in now if c["currency"] == "CNY"]
        still_open = [c for c in cny if c["state"] in ("open", "investigating")]
        assert len(cny) == 7 and taken["id"] not in {c["id"] for c in still_open}
        assert (by_currency["CNY"]["discrepancies"], by_currency["CNY"]["open_cases"]) == (7, len(still_open))
