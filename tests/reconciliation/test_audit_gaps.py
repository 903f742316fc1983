"""What the reconciliation issue asks and the suite did not prove, through the HTTP API as a user sends it:

- a malformed statement (a truncated camt.053, a file in the wrong encoding, an MT940 whose balances do not
  add up) is 422 ``statement_invalid`` naming its line, and leaves nothing behind: no statement, no run, no
  case, no audit event, not even the file's hash (the same bytes are refused as malformed again, not as
  already imported, and the file fixed afterwards imports);
- a resolution that posts writes one adjusting ledger entry with the case's delta between the accounts of
  docs/accounting.md (recipe 9) and the resolution's reason in its metadata, also when a second person
  approves it.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from clearhouse.kit.db import transact
from tests.payments.support import ledger_verifies
from tests.reconciliation.support import NOON, sales_at_noon

SAMPLES = Path(__file__).parent / "samples"
CAMT053 = SAMPLES / "camt053_v02.xml"
MT940 = SAMPLES / "mt940_two_statements.sta"
CARD = "sandbox_card"
BANK = "bank_eur"  # a bank account's statements, imported under its own name
IBAN = "DE89370400440532013000"  # the account both bank samples are statements of
HEADER = "our_ref,channel_ref,kind,status,amount,fee,currency,booked_on,value_on,description"
DAY = NOON.date()
STRAY = "pat_stray_0001"  # a line of the channel's that we never booked: 25.00, fee 0.10


def _upload(client: Any, content: bytes, *, fmt: str, channel: str, name: str) -> Any:
    data = {"format": fmt, "channel": channel, "statement_date": DAY.isoformat()}
    if fmt == "csv":
        data["mapping"] = "clearhouse_v1"
    return client.post("/v1/reconciliations", data=data, files={"file": (name, io.BytesIO(content), "text/plain")})


def _stored(app: Any) -> dict[str, int]:
    """How many rows an import leaves: the statement (with its hash), the run, cases, case events, audit."""
    queries = {
        "statements": "SELECT count(*) FROM recon_statements",
        "runs": "SELECT count(*) FROM reconciliations",
        "cases": "SELECT count(*) FROM recon_cases",
        "case_events": "SELECT count(*) FROM recon_case_events",
        "audit": "SELECT count(*) FROM audit_events WHERE action = 'recon.import'",
    }
    return transact(app.state.engine, lambda s: {k: s.execute(text(q)).scalar_one() for k, q in queries.items()})


NOTHING = {"statements": 0, "runs": 0, "cases": 0, "case_events": 0, "audit": 0}


# ------------------------------------------------------------------------------------ malformed files


def _truncated_camt053() -> tuple[bytes, bytes, range]:
    """The statement cut off before its third entry (line 55), as a transfer that broke off leaves it."""
    whole = CAMT053.read_text(encoding="utf-8")
    cut = whole[:whole.index("<Ntry>", whole.index("RT20261123002"))]
    return cut.encode(), whole.encode(), range(55, cut.count("\n") + 2)  # lxml names where the data ended


def _latin1_camt053() -> tuple[bytes, bytes, range]:
    """Declared UTF-8, written in Latin-1: the umlaut of line 53 is no UTF-8."""
    fixed = CAMT053.read_text(encoding="utf-8").replace("Refund order 1001", "Rückerstattung Bestellung 1001")
    return fixed.encode("latin-1"), fixed.encode("utf-8"), range(53, 54)


def _latin1_csv() -> tuple[bytes, bytes, range]:
    """Our own layout is UTF-8; a spreadsheet saved it in Latin-1: line 3's description is no UTF-8."""
    fixed = (f"{HEADER}\n"
             f"pat_enc_0001,ch_enc_1,payment,succeeded,10000,38,CNY,{DAY},,Tea set\n"
             f"re_enc_0001,ch_enc_2,refund,succeeded,-3000,0,CNY,{DAY},,Rückerstattung\n")
    return fixed.encode("latin-1"), fixed.encode("utf-8"), range(3, 4)


def _unbalanced_mt940() -> tuple[bytes, bytes, range]:
    """The first statement's closing balance 0.03 short of opening + movements: its :62F: is line 14."""
    whole = MT940.read_text(encoding="utf-8")
    assert ":62F:C261123EUR1103,33" in whole
    return whole.replace(":62F:C261123EUR1103,33", ":62F:C261123EUR1103,30").encode(), whole.encode(), range(14, 15)


MALFORMED = {
    "truncated-camt053": (_truncated_camt053, "camt053", BANK, "statement.xml"),
    "camt053-in-latin1": (_latin1_camt053, "camt053", BANK, "statement.xml"),
    "csv-in-latin1": (_latin1_csv, "csv", CARD, "statement.csv"),
    "mt940-balances-do-not-add-up": (_unbalanced_mt940, "mt940", BANK, "statement.sta"),
}


class TestMalformedStatementsImportNothing:
    @pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
    def test_refused_with_its_line_nothing_stored_and_the_fixed_file_imports(self, app, client, case):
        make, fmt, channel, name = MALFORMED[case]
        bad, fixed, lines = make()
        answer = _upload(client, bad, fmt=fmt, channel=channel, name=name)
        assert answer.status_code == 422, answer.text
        problem = answer.json()
        assert problem["code"] == "statement_invalid"
        assert problem["line"] in lines, problem
        assert f"line {problem['line']}" in problem["detail"]
        assert _stored(app) == NOTHING
        assert client.get("/v1/reconciliations").json()["data"] == []
        assert client.get("/v1/recon_cases").json()["data"] == []
        # Its hash was not kept either: the same bytes are malformed again, not "already imported".
        again = _upload(client, bad, fmt=fmt, channel=channel, name=name)
        assert (again.status_code, again.json()["code"], again.json()["line"]) == (422, "statement_invalid",
                                                                                  problem["line"])
        assert _stored(app) == NOTHING
        # The file fixed imports as any other.
        imported = _upload(client, fixed, fmt=fmt, channel=channel, name=name)
        assert imported.status_code == 201, imported.text
        run = imported.json()
        assert run["statement"]["sha256"] == hashlib.sha256(fixed).hexdigest()
        assert run["statement_lines"] > 0
        stored = _stored(app)
        assert (stored["statements"], stored["runs"], stored["audit"]) == (1, 1, 1)
        assert stored["cases"] == run["case_count"] > 0  # nobody booked these lines: each is a case


# ------------------------------------------------------------------------------------ adjusting entries


@pytest.fixture
def card_day(app, client, merchant_client_factory) -> dict[str, Any]:
    """Three card sales at noon of one day, and the channel's statement of it in our own layout: the first sale
    as booked, the second left out, the third with a fee 0.05 higher, and a stray credit nobody booked."""
    assert client.put(f"/v1/recon_rules/{CARD}", json={"rules": {"timing_cutoff_minutes": 0}}).status_code == 200
    shop, _merchant_id = merchant_client_factory("Adjusted shop")
    sales = sales_at_noon(app, shop, [10_000, 20_000, 30_000])

    def line(row: Any, fee: int) -> str:
        return f"{row.reference},{row.external_id},payment,succeeded,{row.amount},{fee},{row.currency},{DAY},,"

    statement = "\n".join([HEADER, line(sales[0], sales[0].channel_cost), line(sales[2], sales[2].channel_cost + 5),
                           f"{STRAY},ch_stray,payment,succeeded,2500,10,CNY,{DAY},,"]) + "\n"
    return {"sales": sales, "statement": statement.encode()}


def _import_card_day(client: Any, card_day: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The day's statement imported; its open cases by class."""
    answer = _upload(client, card_day["statement"], fmt="csv", channel=CARD, name="sandbox_card_20261123.csv")
    assert answer.status_code == 201, answer.text
    found = client.get(f"/v1/reconciliations/{answer.json()['id']}/cases").json()["data"]
    by_class = {case["class"]: case for case in found}
    assert sorted(by_class) == ["fee_mismatch", "missing_in_ledger", "missing_in_statement"], found
    return by_class


def _entry(client: Any, case: dict[str, Any]) -> dict[str, Any]:
    """The case's adjusting entry as the ledger shows it, with its accounts by their chart names."""
    assert case["ledger_entry_id"] == f"tr_{case['id']}", case
    answer = client.get(f"/v1/ledger/transfers/{case['ledger_entry_id']}")
    assert answer.status_code == 200, answer.text
    entry = answer.json()
    for side in ("debit", "credit"):
        account = client.get(f"/v1/ledger/accounts/{entry[f'{side}_account_id']}")
        assert account.status_code == 200, account.text
        entry[side] = account.json()["code"]
    return entry


def _expected_metadata(case: dict[str, Any], action: str, reason: str, channel: str = CARD) -> dict[str, Any]:
    return {"case_id": case["id"], "class": case["class"], "action": action, "channel": channel, "reason": reason}


# One per account pair a person's resolution posts (docs/reconciliation.md, Cases; accounting.md, recipe 9):
# (class, decision, debit, credit, amount (minor units), as a function of the day's sales).
RESOLUTIONS = {
    "surplus-to-suspense": (
        "missing_in_ledger", {"action": "adjust", "reason": "unexplained credit of 25.00 held in suspense"},
        f"channel_clearing:{CARD}", "suspense", lambda sales: 2500 - 10),
    "higher-fee-to-channel-cost": (
        "fee_mismatch", {"action": "adjust", "account": "channel_cost", "reason": "the acquirer kept 0.05 more"},
        f"channel_cost:{CARD}", f"channel_clearing:{CARD}", lambda sales: 5),
    "shortfall-written-off": (
        "missing_in_statement", {"action": "write_off", "reason": "the acquirer never settled this sale"},
        "losses:writeoff", f"channel_clearing:{CARD}", lambda sales: sales[1].amount - sales[1].channel_cost),
}


class TestAdjustingEntries:
    @pytest.mark.parametrize("name", list(RESOLUTIONS), ids=list(RESOLUTIONS))
    def test_a_resolution_posts_its_delta_between_the_right_accounts_with_its_reason(self, app, client, card_day,
                                                                                     name):
        app.state.settings = app.state.settings.model_copy(update={"recon_approval_threshold": 1_000_000})
        class_, decision, debit, credit, amount = RESOLUTIONS[name]
        case = _import_card_day(client, card_day)[class_]
        assert abs(case["delta"]) == amount(card_day["sales"])
        answer = client.post(f"/v1/recon_cases/{case['id']}/resolve", json=decision)
        assert answer.status_code == 200, answer.text
        resolved = answer.json()
        entry = _entry(client, resolved)
        assert (entry["debit"], entry["credit"]) == (debit, credit)
        assert (entry["amount"], entry["currency"], entry["status"]) == (amount(card_day["sales"]), "CNY", "posted")
        assert (entry["code"], entry["reference"]) == ("recon_adjustment", case["id"])
        assert entry["metadata"] == _expected_metadata(case, decision["action"], decision["reason"])
        assert resolved["resolution_reason"] == decision["reason"]
        ledger_verifies(app)

    def test_an_unexplained_bank_credit_is_in_suspense_from_its_import_and_leaves_it_when_resolved(self, app,
                                                                                                   client):
        """accounting.md recipe 9: Dr bank:B, Cr suspense when reconciliation finds it (the import: a bank
        statement's account is the bank's, not a channel's clearing account); resolving it moves it from
        suspense to the right account, a write-off to losses:writeoff. Settled to suspense, it is there already."""
        app.state.settings = app.state.settings.model_copy(update={"recon_approval_threshold": 1_000_000})
        run = _upload(client, MT940.read_bytes(), fmt="mt940", channel=BANK, name="statement.sta")
        assert run.status_code == 201, run.text
        found = client.get(f"/v1/reconciliations/{run.json()['id']}/cases",
                           params={"class": "missing_in_ledger"}).json()["data"]
        (credit_100,) = [c for c in found if c["our_ref"] == "att_1"]  # C100,00 for att_1: MT940 states no fee
        assert credit_100["delta"] == 10_000
        payout = client.get(f"/v1/ledger/transfers/tr_rcb_{run.json()['id']}_1")
        assert payout.status_code == 200, payout.text
        legs = {client.get(f"/v1/ledger/accounts/{leg['account_id']}").json()["code"]: (leg["direction"], leg["amount"])
                for leg in payout.json()["postings"]}
        unexplained = sum(c["delta"] for c in client.get(
            f"/v1/reconciliations/{run.json()['id']}/cases").json()["data"] if c["line_no"] is not None)
        assert legs == {f"bank:{IBAN}": ("debit", unexplained), "suspense": ("credit", unexplained)}
        assert payout.json()["metadata"]["unexplained"] == unexplained

        reason = "a transfer for an order we cannot find; held until the customer is known"
        answer = client.post(f"/v1/recon_cases/{credit_100['id']}/resolve", json={"action": "adjust",
                                                                                  "reason": reason})
        assert answer.status_code == 200, answer.text
        assert answer.json()["ledger_entry_id"] is None  # in suspense since the import

        (other,) = [c for c in found if c["id"] != credit_100["id"] and c["delta"] > 0][:1]
        reason = "the bank's own interest: ours to keep"
        answer = client.post(f"/v1/recon_cases/{other['id']}/resolve", json={"action": "write_off",
                                                                              "reason": reason})
        assert answer.status_code == 200, answer.text
        entry = _entry(client, answer.json())
        assert (entry["debit"], entry["credit"], entry["amount"], entry["currency"]) == (
            "suspense", "losses:writeoff", other["delta"], "EUR")
        assert entry["metadata"] == _expected_metadata(other, "write_off", reason, channel=BANK)
        ledger_verifies(app)

    def test_a_rules_adjustment_carries_the_rules_reason(self, app, client, card_day):
        app.state.settings = app.state.settings.model_copy(update={"recon_approval_threshold": 1_000_000})
        rule = {"class": "missing_in_ledger", "action": "adjust", "reason": "known stray credits"}
        assert client.put(f"/v1/recon_rules/{CARD}", json={"rules": {"timing_cutoff_minutes": 0,
                                                                    "auto_resolve": [rule]}}).status_code == 200
        answer = _upload(client, card_day["statement"], fmt="csv", channel=CARD, name="sandbox_card_20261123.csv")
        assert answer.status_code == 201, answer.text
        (case,) = client.get(f"/v1/reconciliations/{answer.json()['id']}/cases",
                             params={"class": "missing_in_ledger"}).json()["data"]
        assert (case["state"], case["resolution"]) == ("resolved", "rule")
        entry = _entry(client, case)
        assert (entry["debit"], entry["credit"], entry["amount"]) == (f"channel_clearing:{CARD}", "suspense", 2490)
        assert entry["metadata"] == _expected_metadata(case, "adjust", "rule (adjust): known stray credits")
        ledger_verifies(app)


class TestAdjustingEntriesApprovedByASecondPerson:
    @pytest.mark.parametrize("name", ["surplus-to-suspense", "shortfall-written-off"])
    def test_the_approved_entry_is_the_one_asked_for_with_the_makers_reason(self, app, client, card_day,
                                                                           user_client_factory, name):
        app.state.settings = app.state.settings.model_copy(update={"recon_approval_threshold": 1000,
                                                                   "login_rate_limit_per_minute": 1000})
        class_, decision, debit, credit, amount = RESOLUTIONS[name]
        maker, checker = user_client_factory("operator"), user_client_factory("operator")
        case = _import_card_day(maker, card_day)[class_]
        assert abs(case["delta"]) == amount(card_day["sales"]) > 1000
        held = maker.post(f"/v1/recon_cases/{case['id']}/resolve", json=decision)
        assert held.status_code == 202, held.text
        approval = held.json()["approval"]
        # Nothing is posted while it waits.
        assert client.get(f"/v1/ledger/transfers/tr_{case['id']}").status_code == 404
        approved = checker.post(f"/v1/approvals/{approval['id']}/approve")
        assert approved.status_code == 200, approved.text
        done = client.get(f"/v1/recon_cases/{case['id']}").json()
        expected_state = "written_off" if decision["action"] == "write_off" else "resolved"
        assert (done["state"], done["resolution_reason"]) == (expected_state, decision["reason"])
        assert done["resolved_by"] == f"user:{checker.user.id}"  # the approver wrote it, as the maker asked
        entry = _entry(client, done)
        assert (entry["debit"], entry["credit"]) == (debit, credit)
        assert (entry["amount"], entry["currency"]) == (amount(card_day["sales"]), "CNY")
        assert entry["metadata"] == _expected_metadata(case, decision["action"], decision["reason"])
        ledger_verifies(app)
