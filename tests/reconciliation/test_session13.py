"""Reconciliation, as the exploratory session of 2026-11-24 found it (findings 1 to 7), through the HTTP API
and the command line where a person meets it:

1. an ``auto_resolve`` rule never settles (or posts) a case whose net delta is beyond its limit, whatever
   its class's difference: a 1-cent amount gap hiding a 95.00 fee gap stays open, and says so;
2. a re-issued statement replaces the first for the days after it: a line the re-issue dropped that the
   channel books a day later pairs as ``timing``, never a ``duplicate`` (and a timing case with a write-off
   waiting for approval closes as arrived, its approval expired, with nothing else left open);
3. a bank file with statements of two accounts posts each case's adjustment to its own line's account;
4. a local time at a daylight-saving change is a 422 naming its line (never a 500, never a traceback);
5. a thousands separator only between groups of three digits: ``12.34`` in a decimal-comma file is refused;
6. a mapping's ``timezone`` alone moves timestamps into the channel's days (its rules' ``timezone``);
7. a mapping with an unknown encoding is refused when it is saved.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from clearhouse.kit import clock
from clearhouse.kit.db import transact
from tests.payments.support import card_body, ledger_verifies
from tests.reconciliation.formats.test_session12_formats import camt, camt_entry, camt_statement, mt940_statement
from tests.reconciliation.support import NOON, cases_of, class_counts, sales_at_noon
from tests.reconciliation.test_api import CHANNEL, HEADER, _line, _upload
from tests.test_cli import clearhouse

DAY = NOON.date()
NEXT_DAY = DAY + timedelta(days=1)
CNY_IBAN = "DE89370400440532013000"
EUR_IBAN = "FR7630006000011234567890189"


@pytest.fixture
def sales(app, client, merchant_client_factory) -> list[Any]:
    """Four card sales at noon of one day (100.00, 101.00, 102.00, 103.00; the acquirer keeps 0.38%)."""
    shop, _merchant_id = merchant_client_factory("Session 13 shop")
    return sales_at_noon(app, shop, [10_000 + i * 100 for i in range(4)])


def _rules(client: Any, channel: str = CHANNEL, mapping: dict[str, Any] | None = None, **rules: Any) -> None:
    body: dict[str, Any] = {"rules": rules}
    if mapping is not None:
        body["mapping"] = mapping
    answer = client.put(f"/v1/recon_rules/{channel}", json=body)
    assert answer.status_code == 200, answer.text


def _at(day: date, hour: int) -> Any:
    """The clock at ``hour`` UTC of ``day``: each import of a day at its own time, so which is later is plain."""
    return clock.frozen(datetime.combine(day, time(hour), UTC))


def _statement(lines: list[str]) -> str:
    return "\n".join([HEADER, *lines]) + "\n"


def _imported(client: Any, lines: list[str], day: date, name: str) -> dict[str, Any]:
    answer = _upload(client, _statement(lines), day, name=name)
    assert answer.status_code == 201, answer.text
    return answer.json()


def _case(client: Any, case_id: str) -> dict[str, Any]:
    answer = client.get(f"/v1/recon_cases/{case_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()


def _upload_file(client: Any, content: bytes, *, fmt: str, channel: str, day: date, name: str) -> Any:
    return client.post("/v1/reconciliations", data={"format": fmt, "channel": channel,
                                                     "statement_date": day.isoformat()},
                       files={"file": (name, io.BytesIO(content), "application/octet-stream")})


def _dry_run(client: Any, content: bytes, *, channel: str, day: date, body: dict[str, Any] | None = None) -> Any:
    data = {"format": "csv", "statement_date": day.isoformat()}
    if body is not None:
        data["rules"] = orjson.dumps(body).decode()
    return client.post(f"/v1/recon_rules/{channel}/dry_run", data=data,
                       files={"file": ("statement.csv", io.BytesIO(content), "text/csv")})


def _refused(answer: Any, code: str, line: int | None = None) -> dict[str, Any]:
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem = answer.json()
    assert problem["code"] == code, problem
    if line is not None:
        assert problem["line"] == line, problem
    return problem


def _runs(client: Any, channel: str) -> list[dict[str, Any]]:
    return client.get("/v1/reconciliations", params={"channel": channel}).json()["data"]


# ------------------------------------------------------------------------------------------------ finding 1


class TestAnAutoResolveRuleNeverPostsBeyondItsLimit:
    RULE = {"class": "amount_mismatch", "max_difference_minor": 1, "action": "adjust", "reason": "1-cent rounding"}

    def test_a_one_cent_amount_gap_hiding_a_fee_gap_stays_open_for_a_person(self, app, client, sales):
        """Our sale of 100.00 (fee 0.38, net 99.62); the channel says 100.01 with 95.38 kept (net 4.63): 1 cent
        more gross, 94.99 less net. A rule for 1-cent amount gaps does not post 94.99, whatever the threshold."""
        app.state.settings = app.state.settings.model_copy(update={"recon_approval_threshold": 1_000_000})
        _rules(client, timing_cutoff_minutes=0, auto_resolve=[self.RULE])
        hidden, rounding = sales[0], sales[1]
        assert (hidden.amount, hidden.channel_cost) == (10_000, 38)
        run = _imported(client, [_line(hidden, DAY, amount=10_001, fee=9_538),
                                 _line(rounding, DAY, amount=rounding.amount + 1),  # a true 1-cent case
                                 *[_line(row, DAY) for row in sales[2:]]], DAY, "day.csv")
        found = {case["our_ref"]: case for case in cases_of(client, run["id"])}

        case = _case(client, found[hidden.reference]["id"])
        assert (case["class"], case["difference"], case["delta"]) == ("amount_mismatch", 1, -9_499)
        assert (case["state"], case["resolution"], case["ledger_entry_id"]) == ("open", None, None)
        assert case["detail"] == "channel amount 100.01 against 100.00 booked; channel fee 95.38 against 0.38 booked"
        (held,) = case["events"]
        assert held["type"] == "rule_held" and "1-cent rounding" in held["body"]
        assert "moves 9499 CNY minor units net" in held["body"] and "beyond the rule's 1" in held["body"]
        assert client.get(f"/v1/ledger/transfers/tr_{case['id']}").status_code == 404

        # The rule still settles what it is for: the 1-cent case (fees equal), posting 1.
        small = _case(client, found[rounding.reference]["id"])
        assert (small["state"], small["resolution"], small["delta"]) == ("resolved", "rule", 1)
        assert client.get(f"/v1/ledger/transfers/tr_{small['id']}").json()["amount"] == 1
        assert run["case_states"] == {"open": 1, "resolved": 1}
        # A person resolves the hidden one.
        answer = client.post(f"/v1/recon_cases/{case['id']}/resolve",
                             json={"action": "adjust", "account": "channel_cost", "reason": "acquirer kept 95.00"})
        assert answer.status_code == 200 and answer.json()["state"] == "resolved", answer.text
        assert client.get(f"/v1/ledger/transfers/tr_{case['id']}").json()["amount"] == 9_499
        ledger_verifies(app)

    def test_a_dry_run_shows_the_fee_gap_beside_the_amount_gap(self, client, sales):
        content = _statement([_line(sales[0], DAY, amount=10_001, fee=9_538)]).encode()
        answer = client.post(f"/v1/recon_rules/{CHANNEL}/dry_run",
                             data={"format": "csv", "statement_date": DAY.isoformat(), "mapping": "clearhouse_v1",
                                   "rules": orjson.dumps({"rules": {"timing_cutoff_minutes": 0}}).decode()},
                             files={"file": ("s.csv", io.BytesIO(content), "text/csv")})
        assert answer.status_code == 200, answer.text
        (mismatch,) = [d for d in answer.json()["discrepancies"] if d["class"] == "amount_mismatch"]
        assert (mismatch["difference"], mismatch["delta"]) == (1, -9_499)
        assert "channel fee 95.38 against 0.38 booked" in mismatch["detail"]


# ------------------------------------------------------------------------------------------------ finding 2


@pytest.fixture
def people(app, user_client_factory) -> tuple[Any, Any]:
    """A maker and a checker (operators), and entries above 10.00 waiting for the second of them."""
    app.state.settings = app.state.settings.model_copy(update={"recon_approval_threshold": 1000,
                                                               "login_rate_limit_per_minute": 1000})
    return user_client_factory("operator"), user_client_factory("operator")


class TestAReIssueReplacesTheFirstStatementOfItsDay:
    def test_a_line_the_re_issue_dropped_pairs_as_timing_the_next_day_not_as_a_duplicate(self, client, sales):
        _rules(client, timing_cutoff_minutes=0)
        dropped = sales[3]
        with _at(NEXT_DAY, 8):
            first = _imported(client, [_line(row, DAY) for row in sales], DAY, "day.csv")
        with _at(NEXT_DAY, 9):
            reissue = _imported(client, [_line(row, DAY) for row in sales[:3]], DAY, "day-reissued.csv")
        assert class_counts(first) == {"matched": 4}
        assert class_counts(reissue) == {"matched": 3, "missing_in_statement": 1}
        (missing,) = cases_of(client, reissue["id"])
        assert (missing["our_ref"], missing["delta"]) == (dropped.reference, -(dropped.amount - dropped.channel_cost))

        with _at(NEXT_DAY + timedelta(days=1), 8):
            later = _imported(client, [_line(dropped, NEXT_DAY)], NEXT_DAY, "next-day.csv")

        assert class_counts(later) == {"timing": 1}
        (pair,) = cases_of(client, later["id"])
        assert (pair["class"], pair["our_ref"], pair["delta"]) == ("timing", dropped.reference, 0)
        assert (pair["state"], pair["resolution"]) == ("resolved", "auto_timing")
        assert later["case_states"] == {"resolved": 1}  # no duplicate claiming the channel paid it twice
        # The re-issue's case stays for a person to accept (the channel booked the line a day late).
        assert _case(client, missing["id"])["state"] == "open"

    def test_a_held_write_off_of_the_dropped_line_expires_when_it_arrives_and_nothing_else_is_left_open(
            self, app, client, sales, people):
        maker, checker = people
        _rules(client, timing_cutoff_minutes=1440)  # a line the day's statement lacks is due the next day
        dropped = sales[3]
        with _at(NEXT_DAY, 8):
            _imported(client, [_line(row, DAY) for row in sales], DAY, "day.csv")
        with _at(NEXT_DAY, 9):
            reissue = _imported(client, [_line(row, DAY) for row in sales[:3]], DAY, "day-reissued.csv")
        (waiting,) = cases_of(client, reissue["id"])
        assert (waiting["class"], waiting["our_ref"]) == ("timing", dropped.reference)
        held = maker.post(f"/v1/recon_cases/{waiting['id']}/resolve",
                          json={"action": "write_off", "reason": "the channel lost it"})
        assert held.status_code == 202, held.text
        approval_id = held.json()["approval_id"]

        with _at(NEXT_DAY + timedelta(days=1), 8):
            later = _imported(client, [_line(dropped, NEXT_DAY)], NEXT_DAY, "next-day.csv")

        closed = _case(client, waiting["id"])
        assert (closed["state"], closed["resolution"], closed["ledger_entry_id"]) == ("resolved", "auto_timing", None)
        assert checker.get(f"/v1/approvals/{approval_id}").json()["status"] == "expired"
        # The same run pairs the line (both sides present, a day apart): no duplicate claiming a second payment.
        assert class_counts(later) == {"timing": 1}
        (pair,) = cases_of(client, later["id"])
        assert (pair["class"], pair["delta"], pair["state"]) == ("timing", 0, "resolved")
        open_cases = client.get("/v1/recon_cases", params={"state": "open", "channel": CHANNEL}).json()["data"]
        assert open_cases == []
        ledger_verifies(app)

    def test_a_line_the_latest_statement_of_its_day_reached_is_still_a_duplicate_when_repeated(self, client, sales):
        _rules(client, timing_cutoff_minutes=0)
        with _at(NEXT_DAY, 8):
            first = _imported(client, [_line(row, DAY) for row in sales[1:]], DAY, "day.csv")
        with _at(NEXT_DAY, 9):
            reissue = _imported(client, [_line(row, DAY) for row in sales], DAY, "day-reissued.csv")
        assert class_counts(first) == {"matched": 3, "missing_in_statement": 1}
        assert class_counts(reissue) == {"matched": 4}
        with _at(NEXT_DAY + timedelta(days=1), 8):
            later = _imported(client, [_line(sales[0], NEXT_DAY)], NEXT_DAY, "next-day.csv")
        (repeat,) = cases_of(client, later["id"])
        net = sales[0].amount - sales[0].channel_cost
        assert (repeat["class"], repeat["our_ref"], repeat["delta"]) == ("duplicate", sales[0].reference, net)
        assert "reconciled already by an earlier statement" in repeat["detail"]


# ------------------------------------------------------------------------------------------------ finding 3


def _two_account_mt940() -> bytes:
    """A CNY account's statement (250.00 in, 10.00 out) and a EUR account's (5.00 in), in one file."""
    return (mt940_statement("1", CNY_IBAN, "C261122CNY1000,00",
                            ":61:2611231123C250,00NTRFNONREF//CT1\n:86:EREF+pat_unknown_a\n"
                            ":61:2611231123D10,00NTRFNONREF//RT1\n:86:EREF+re_unknown_b\n", "C261123CNY1240,00")
            + mt940_statement("2", EUR_IBAN, "C261122EUR50,00", ":61:2611231123C5,00NTRFNONREF//CT9\n",
                              "C261123EUR55,00")).encode()


def _two_account_camt053() -> bytes:
    return camt(camt_statement("S1", CNY_IBAN, "1000.00", "1250.00", camt_entry("250.00", "BR1", currency="CNY"),
                               currency="CNY"),
                camt_statement("S9", EUR_IBAN, "10.00", "15.00", camt_entry("5.00", "BR9"))).encode()


class TestABankFileWithStatementsOfTwoAccounts:
    @pytest.mark.parametrize(("fmt", "content", "openings"), [
        ("mt940", _two_account_mt940(), {"CNY": 100_000, "EUR": 5_000}),
        ("camt053", _two_account_camt053(), {"CNY": 100_000, "EUR": 1_000})], ids=["mt940", "camt053"])
    def test_each_cases_adjustment_posts_to_its_own_lines_account(self, app, client, fmt, content, openings):
        app.state.settings = app.state.settings.model_copy(update={"recon_approval_threshold": 1_000_000})
        answer = _upload_file(client, content, fmt=fmt, channel="bank_two", day=DAY, name=f"two.{fmt}")
        assert answer.status_code == 201, answer.text
        run = answer.json()
        assert run["statement"]["account"] == CNY_IBAN  # the file's first statement's, as before
        found = cases_of(client, run["id"])
        (euro,) = [c for c in found if c["currency"] == "EUR"]
        (yuan, *_refund) = sorted((c for c in found if c["currency"] == "CNY"), key=lambda c: -c["delta"])
        assert (euro["class"], euro["delta"], yuan["class"], yuan["delta"]) == (
            "missing_in_ledger", 500, "missing_in_ledger", 25_000)
        assert [(e["type"], e["body"]) for e in _case(client, euro["id"])["events"]] == [
            ("account", f"on bank account {EUR_IBAN}")]

        # accounting.md recipe 9 on each account, on import: Dr bank:<its own account>, Cr suspense, for what
        # paired with none of ours there (session 19; the cases' adjustments posted it before).
        from tests.reconciliation.test_session17_channel_payout import _posted

        line_cases = [c for c in found if c["line_no"] is not None]
        for iban, currency in ((EUR_IBAN, "EUR"), (CNY_IBAN, "CNY")):
            unexplained = sum(c["delta"] for c in line_cases if c["currency"] == currency)
            # Each account taken up at its own statement's opening balance (session 20), then moved by its lines.
            assert (_posted(client, f"bank:{iban}", currency), _posted(client, "suspense", currency),
                    _posted(client, "opening_balances", currency)) == (
                openings[currency] + unexplained, unexplained, openings[currency])
        assert [(t["account"], t["currency"], t["opening_balance"], t["ledger_balance"], t["took_up"], t["amount"],
                 t["gap"]) for t in run["bank_balances"]] == [
            (f"bank:{CNY_IBAN}", "CNY", 100_000, 0, "first", 100_000, 0),
            (f"bank:{EUR_IBAN}", "EUR", openings["EUR"], 0, "first", openings["EUR"], 0)]
        assert all(t["entry_id"].startswith("tr_rco_") for t in run["bank_balances"])
        assert (euro["delta"], yuan["delta"]) == (500, 25_000)
        for case in (euro, yuan):
            resolved = client.post(f"/v1/recon_cases/{case['id']}/resolve",
                                   json={"action": "adjust", "reason": "unexplained credit"})
            assert resolved.status_code == 200, resolved.text
            assert resolved.json()["ledger_entry_id"] is None  # in suspense since the import
        ledger_verifies(app)


# ------------------------------------------------------------------------------------------------ finding 4


DST_MAPPING = {"columns": {"our_ref": "ref", "amount": "amount", "currency": "cur", "booked_on": "when"},
               "date_format": "%Y-%m-%d %H:%M:%S", "amount_unit": "major", "timezone": "Europe/Berlin",
               "calendar": "UTC"}


def _dst_file(moment: str) -> bytes:
    return f"ref,amount,cur,when\nx1,10.00,CNY,2026-10-24 10:00:00\nx2,5.00,CNY,{moment}\n".encode()


class TestALocalTimeAtADaylightSavingChange:
    def test_a_time_the_clocks_skipped_is_a_422_at_its_line_on_import_and_dry_run(self, client):
        _rules(client, "bank_dst", mapping=DST_MAPPING)
        content = _dst_file("2026-03-29 02:30:00")  # Berlin's clocks go from 02:00 to 03:00
        problem = _refused(_upload_file(client, content, fmt="csv", channel="bank_dst", day=date(2026, 10, 24),
                                        name="gap.csv"), "statement_invalid", line=3)
        assert "does not exist in Europe/Berlin" in problem["detail"]
        _refused(_dry_run(client, content, channel="bank_dst", day=date(2026, 10, 24)), "statement_invalid", line=3)
        assert _runs(client, "bank_dst") == []

    def test_a_time_the_clocks_passed_twice_is_read_when_both_instants_are_one_day(self, client):
        """02:30 on 25 October in Berlin is 00:30 or 01:30 UTC: the 25th either way, and the day is all a line keeps."""
        _rules(client, "bank_dst", mapping=DST_MAPPING)
        answer = _upload_file(client, _dst_file("2026-10-25 02:30:00"), fmt="csv", channel="bank_dst",
                              day=date(2026, 10, 24), name="overlap.csv")
        assert answer.status_code == 201, answer.text
        assert (answer.json()["statement"]["first_day"], answer.json()["statement"]["last_day"]) == (
            "2026-10-24", "2026-10-25")

    @pytest.mark.slow
    def test_the_command_line_says_which_line_without_a_traceback(self, client, database_url, tmp_path):
        _rules(client, "bank_dst", mapping=DST_MAPPING)
        statement = tmp_path / "gap.csv"
        statement.write_bytes(_dst_file("2026-03-29 02:30:00"))
        result = clearhouse("recon", "run", "--channel", "bank_dst", "--file", str(statement), "--date", "2026-10-24",
                            url=database_url, cwd=tmp_path)
        assert result.returncode == 1, result
        shown = result.stdout + result.stderr
        assert "statement_invalid" in shown and "line 3" in shown and "Traceback" not in shown


# ------------------------------------------------------------------------------------------------ finding 5


BANK_MAPPING = {"delimiter": ";", "amount_unit": "major", "decimal_separator": ",", "thousands_separator": ".",
                "sign": "indicator", "credit_values": ["H"], "debit_values": ["S"], "date_format": "%d.%m.%Y",
                "columns": {"our_ref": "ref", "booked_on": "day", "amount": "amount", "indicator": "mark",
                            "currency": "cur"}}


class TestAThousandsSeparatorOnlyBetweenGroupsOfThreeDigits:
    @pytest.mark.parametrize("amount", ["12.34", "1.2.3.4,00", "1234.567,00", "1.234,5.6"])
    def test_anywhere_else_it_is_a_422_at_its_line_not_an_amount_a_hundred_times_too_large(self, client, amount):
        content = f"ref;day;amount;mark;cur\nr0;24.11.2026;1.234,56;H;EUR\nr1;24.11.2026;{amount};H;EUR\n".encode()
        answer = _dry_run(client, content, channel="bank_de", day=date(2026, 11, 24), body={"mapping": BANK_MAPPING})
        assert "amount" in _refused(answer, "statement_invalid", line=3)["detail"]

    def test_between_groups_of_three_it_is_read(self, client):
        content = b"ref;day;amount;mark;cur\nr0;24.11.2026;1.234.567,89;H;EUR\nr1;24.11.2026;12,34;S;EUR\n"
        answer = _dry_run(client, content, channel="bank_de", day=date(2026, 11, 24), body={"mapping": BANK_MAPPING})
        assert answer.status_code == 200, answer.text
        assert sorted(d["theirs_amount"] for d in answer.json()["discrepancies"]) == [-1_234, 123_456_789]


# ------------------------------------------------------------------------------------------------ finding 6


EVENING = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)  # 02:00 on the 24th in China


class TestAMappingsTimezoneAloneMovesTimestampsIntoTheChannelsDays:
    MAPPING = {"columns": {"our_ref": "ref", "amount": "amount", "fee": "fee", "currency": "cur", "booked_on": "when"},
               "date_format": "%Y-%m-%d %H:%M:%S", "amount_unit": "minor", "timezone": "UTC"}

    @pytest.fixture
    def evening_sales(self, app, merchant_client_factory) -> list[Any]:
        """Two card sales at 18:00 UTC on the 23rd, for a channel whose days are China's: booked on the 24th."""
        from tests.reconciliation.support import booked

        shop, _merchant_id = merchant_client_factory("Evening shop")
        ids = []
        with clock.frozen(EVENING):
            for amount in (6_600, 31_415):
                answer = shop.post("/v1/payments", json=card_body(amount=amount))
                assert answer.status_code == 201 and answer.json()["status"] == "succeeded", answer.text
                ids.append(answer.json()["id"])
        rows = booked(app, ids)
        return [rows[i] for i in ids]

    @staticmethod
    def _file(rows: list[Any]) -> bytes:
        return ("ref,amount,fee,cur,when\n" + "".join(
            f"{r.reference},{r.amount},{r.channel_cost},{r.currency},{EVENING:%Y-%m-%d %H:%M:%S}\n" for r in rows)
        ).encode()

    def test_a_utc_stamped_file_lands_on_the_channels_day_in_a_dry_run_and_an_import(self, client, evening_sales):
        rules = {"timezone": "Asia/Shanghai", "timing_cutoff_minutes": 0}
        china_day = date(2026, 11, 24)
        dry = _dry_run(client, self._file(evening_sales), channel=CHANNEL, day=china_day,
                       body={"rules": rules, "mapping": self.MAPPING})
        assert dry.status_code == 200, dry.text
        assert class_counts(dry.json()) == {"matched": 2}
        _rules(client, mapping=self.MAPPING, **rules)
        answer = _upload_file(client, self._file(evening_sales), fmt="csv", channel=CHANNEL, day=china_day,
                              name="utc.csv")
        assert answer.status_code == 201, answer.text
        assert class_counts(answer.json()) == {"matched": 2}
        assert answer.json()["statement"]["first_day"] == "2026-11-24"

    def test_a_calendar_of_its_own_still_wins(self, client, evening_sales):
        rules = {"timezone": "Asia/Shanghai", "timing_cutoff_minutes": 0}
        dry = _dry_run(client, self._file(evening_sales), channel=CHANNEL, day=date(2026, 11, 24),
                       body={"rules": rules, "mapping": {**self.MAPPING, "calendar": "UTC"}})
        assert dry.status_code == 200, dry.text
        assert {d["theirs_booked_on"] for d in dry.json()["discrepancies"]} == {"2026-11-23"}


# ------------------------------------------------------------------------------------------------ finding 7


class TestAMappingsEncodingIsCheckedWhenItIsSaved:
    MAPPING = {"columns": {"amount": "a", "booked_on": "d", "currency": "c"}}

    @pytest.mark.parametrize("encoding", ["klingon", "rot13", "hex"])
    def test_an_unknown_or_non_text_encoding_is_a_422_validation_error_and_nothing_is_saved(self, client, encoding):
        answer = client.put("/v1/recon_rules/test_enc", json={"mapping": {**self.MAPPING, "encoding": encoding}})
        _refused(answer, "validation_error")
        assert f"unknown text encoding '{encoding}'" in answer.text
        assert client.get("/v1/recon_rules/test_enc").json()["mapping"] is None
        dry = _dry_run(client, b"a,d,c\n1,2026-11-23,CNY\n", channel="test_enc", day=DAY,
                       body={"mapping": {**self.MAPPING, "encoding": encoding}})
        _refused(dry, "validation_error")

    def test_a_known_codec_is_saved(self, client):
        answer = client.put("/v1/recon_rules/test_enc", json={"mapping": {**self.MAPPING, "encoding": "gbk"}})
        assert answer.status_code == 200 and answer.json()["mapping"]["encoding"] == "gbk", answer.text

    def test_one_saved_before_the_check_is_a_422_on_the_mapping_not_on_the_file(self, app, client):
        _rules(client, "test_enc", mapping=self.MAPPING)
        saved = json.dumps({**self.MAPPING, "encoding": "klingon"})
        transact(app.state.engine, lambda s: s.execute(
            text("UPDATE recon_rules SET mapping_json = :m WHERE channel = 'test_enc'"), {"m": saved}))
        answer = _upload_file(client, b"a,d,c\n1,2026-11-23,CNY\n", fmt="csv", channel="test_enc", day=DAY,
                              name="enc.csv")
        assert "saved CSV mapping is invalid" in _refused(answer, "validation_error")["detail"]
        assert _runs(client, "test_enc") == []
