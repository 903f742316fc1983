"""Reconciliation, as the exploratory session of 2026-11-25 found it, through the HTTP API and the command line:

1. a re-issue after one that reversed a case's adjustment imports (the reversed entry is not reversed again);
2. a re-issue that reports again a discrepancy whose entry was reversed leaves its case open, not "posted already";
3. the same bank statement in other bytes (CR LF, then LF) is refused: ``received`` is not counted twice;
4. a statement day out of the range reconciliation works with is a 422 (a usage error on the command line);
5. a camt.053 ``Dt`` with a time or an offset after the date is refused at its entry;
6. a camt.053 amount beyond 2^62 is refused with a detail that reads right (not masked as a card number);
7. a run's amounts per class are also given per currency.
"""

from __future__ import annotations

import io
from datetime import date
from typing import Any

import pytest

from tests.payments.support import ledger_verifies
from tests.reconciliation.formats.test_session12_formats import (
    camt,
    camt_entry,
    camt_statement,
    line_of,
    mt940_statement,
)
from tests.reconciliation.support import cases_of, class_counts
from tests.reconciliation.test_api import CHANNEL, _line, _upload
from tests.reconciliation.test_session13 import (  # noqa: F401
    DAY,
    EUR_IBAN,
    NEXT_DAY,
    _at,
    _case,
    _imported,
    _refused,
    _rules,
    _runs,
    _statement,
    _upload_file,
    sales,
)
from tests.test_cli import clearhouse

BANK = "bank_sixteen"


def _dry_run(client: Any, content: bytes, day: date) -> Any:
    """A dry run of a clearhouse_v1 file on the card channel, with its saved rules."""
    return client.post(f"/v1/recon_rules/{CHANNEL}/dry_run",
                       data={"format": "csv", "statement_date": day.isoformat(), "mapping": "clearhouse_v1"},
                       files={"file": ("statement.csv", io.BytesIO(content), "text/csv")})


def _adjusted(client: Any, case_id: str) -> str:
    answer = client.post(f"/v1/recon_cases/{case_id}/resolve", json={"action": "adjust", "reason": "short paid"})
    assert answer.status_code == 200, answer.text
    return answer.json()["ledger_entry_id"]


def _reversals(client: Any, case_id: str) -> list[dict[str, Any]]:
    return [event for event in _case(client, case_id)["events"] if event["type"] == "reversed"]


@pytest.fixture
def wrong_then_right(app, client, sales) -> dict[str, Any]:  # noqa: F811
    """Day's statement with sales[0] 1.00 too high, its case adjusted; then the right file, which reverses it."""
    _rules(client, timing_cutoff_minutes=0)
    app.state.settings = app.state.settings.model_copy(update={"recon_approval_threshold": 1_000_000})
    wrong = [_line(row, DAY, amount=row.amount + 100 if n == 0 else None) for n, row in enumerate(sales)]
    right = [_line(row, DAY) for row in sales]
    with _at(NEXT_DAY, 8):
        first = _imported(client, wrong, DAY, "day.csv")
    (case,) = cases_of(client, first["id"])
    assert (case["class"], case["delta"]) == ("amount_mismatch", 100)
    entry = _adjusted(client, case["id"])
    with _at(NEXT_DAY, 9):
        _imported(client, right, DAY, "day-corrected.csv")
    assert client.get(f"/v1/ledger/transfers/{entry}_reversed").status_code == 200
    return {"wrong": wrong, "right": right, "case": case, "entry": entry}


# ------------------------------------------------------------------------------------------------ defect 1


class TestAReIssueAfterAReversal:
    def test_imports_and_the_reversed_entry_is_not_reversed_again(self, app, client, wrong_then_right):
        with _at(NEXT_DAY, 10):
            again = _upload(client, _statement(wrong_then_right["right"][::-1]), DAY, name="day-corrected-2.csv")
        assert again.status_code == 201, again.text
        assert class_counts(again.json()) == {"matched": 4}
        assert len(_reversals(client, wrong_then_right["case"]["id"])) == 1
        ledger_verifies(app)


# ------------------------------------------------------------------------------------------------ defect 2


class TestADiscrepancyReportedAgainAfterItsEntryWasReversed:
    def test_stays_open_and_its_new_entry_is_reversed_by_the_next_right_file(self, app, client, wrong_then_right):
        clearing = f"acct_channel_clearing_{CHANNEL}_cny"
        before = client.get(f"/v1/ledger/accounts/{clearing}/balance").json()
        with _at(NEXT_DAY, 10):
            third = _imported(client, wrong_then_right["wrong"][::-1], DAY, "day-wrong-again.csv")
        (again,) = cases_of(client, third["id"])
        assert (again["class"], again["delta"]) == ("amount_mismatch", 100)
        assert (again["state"], again["resolution"], again["ledger_entry_id"]) == ("open", None, None)

        # A person adjusts it: the difference is in the ledger once more; the next right file reverses that entry.
        entry = _adjusted(client, again["id"])
        with _at(NEXT_DAY, 11):
            _imported(client, wrong_then_right["right"][::-1], DAY, "day-corrected-2.csv")
        assert client.get(f"/v1/ledger/transfers/{entry}_reversed").status_code == 200
        assert len(_reversals(client, again["id"])) == 1
        assert len(_reversals(client, wrong_then_right["case"]["id"])) == 1
        assert client.get(f"/v1/ledger/accounts/{clearing}/balance").json() == before
        ledger_verifies(app)


# ------------------------------------------------------------------------------------------------ defect 3


def _mt940(number: str, opening: str, movements: str, closing: str) -> str:
    return mt940_statement(number, EUR_IBAN, opening, movements, closing)


STATEMENT_1 = _mt940("00101", "C261123EUR1000,00",
                     ":61:2611231123C250,00NTRFREF1//B1\n:61:2611231123D1,00NCHGNONREF//B2\n", "C261123EUR1249,00")
STATEMENT_2 = _mt940("00102", "C261123EUR1249,00", ":61:2611231123C50,00NTRFREF3//B3\n", "C261123EUR1299,00")


def _received(client: Any) -> list[tuple[str, int]]:
    report = client.get("/v1/clearing/daily", params={"date": DAY.isoformat(), "channel": BANK})
    assert report.status_code == 200, report.text
    return [(row["currency"], row["received"]) for row in report.json()["channels"]]


class TestTheSameBankStatementInOtherBytes:
    def test_is_refused_and_received_is_not_counted_twice(self, client):
        crlf = STATEMENT_1.replace("\n", "\r\n").encode()
        first = _upload_file(client, crlf, fmt="mt940", channel=BANK, day=DAY, name="statement.sta")
        assert first.status_code == 201, first.text
        assert _received(client) == [("EUR", 24_900)]

        again = _upload_file(client, STATEMENT_1.encode(), fmt="mt940", channel=BANK, day=DAY, name="statement-lf.sta")
        assert again.status_code == 409, again.text
        assert again.headers["content-type"].startswith("application/problem+json")
        problem = again.json()
        assert problem["code"] == "statement_already_imported"
        assert first.json()["id"] in problem["detail"]
        assert [run["id"] for run in _runs(client, BANK)] == [first.json()["id"]]
        assert _received(client) == [("EUR", 24_900)]

    def test_the_next_statement_of_the_account_still_adds_up(self, client):
        for name, text in (("one.sta", STATEMENT_1), ("two.sta", STATEMENT_2)):
            answer = _upload_file(client, text.encode(), fmt="mt940", channel=BANK, day=DAY, name=name)
            assert answer.status_code == 201, answer.text
        assert _received(client) == [("EUR", 24_900 + 5_000)]


# ------------------------------------------------------------------------------------------------ defect 4


FAR_DAYS = [date(9999, 12, 31), date(1, 1, 1)]


class TestAStatementDayOutOfRange:
    @pytest.mark.parametrize("day", FAR_DAYS, ids=str)
    def test_an_import_is_a_422_and_nothing_is_imported(self, client, sales, day):  # noqa: F811
        answer = _upload(client, _statement([_line(row, DAY) for row in sales]), day)
        problem = _refused(answer, "validation_error")
        assert day.isoformat() in problem["detail"] and "out of range" in problem["detail"]
        assert _runs(client, CHANNEL) == []

    @pytest.mark.parametrize("day", FAR_DAYS, ids=str)
    def test_a_dry_run_is_a_422(self, client, sales, day):  # noqa: F811
        content = _statement([_line(row, DAY) for row in sales]).encode()
        _refused(_dry_run(client, content, day), "validation_error")

    def test_a_bank_statement_whose_lines_are_booked_out_of_range_is_a_422(self, client):
        entry = camt_entry("5.00", "BR1").replace("<Dt>2026-11-23</Dt>", "<Dt>9999-12-31</Dt>")
        text = camt(camt_statement("S1", EUR_IBAN, "10.00", "15.00", entry))
        answer = _upload_file(client, text.encode(), fmt="camt053", channel=BANK, day=DAY, name="far.xml")
        assert "9999-12-31" in _refused(answer, "statement_invalid")["detail"]
        assert _runs(client, BANK) == []

    @pytest.mark.slow
    def test_the_command_line_says_so_in_one_line_with_exit_2(self, database_url, tmp_path):
        statement = tmp_path / "statement.csv"
        statement.write_text(_statement([]))
        result = clearhouse("recon", "run", "--channel", CHANNEL, "--file", str(statement), "--date", "9999-12-31",
                            "--mapping", "clearhouse_v1", url=database_url, cwd=tmp_path)
        output = result.stdout + result.stderr
        assert result.returncode == 2, output
        assert "Traceback" not in output and output.count("out of range") == 1
        assert "9999-12-31 is out of range (1900-01-01 to 9998-12-31)" in output


# ------------------------------------------------------------------------------------------------ defect 5


class TestACamtDateWithSomethingAfterIt:
    @pytest.mark.parametrize("written", ["<Dt>2026-11-23T10:00:00</Dt>", "<Dt>2026-11-23+01:00</Dt>",
                                         "<Dt>2026-11-23Z</Dt>", "<DtTm>2026-11-23</DtTm>"])
    def test_is_refused_at_its_entry(self, client, written):
        entry = camt_entry("5.00", "BR1").replace("<Dt>2026-11-23</Dt>", written)
        text = camt(camt_statement("S1", EUR_IBAN, "10.00", "15.00", entry))
        answer = _upload_file(client, text.encode(), fmt="camt053", channel=BANK, day=DAY, name="dates.xml")
        problem = _refused(answer, "statement_invalid", line=line_of(text, "<Ntry>"))
        assert "2026-11-23" in problem["detail"]
        assert _runs(client, BANK) == []

    def test_a_date_time_with_its_offset_is_read_as_its_own_day(self, client):
        entry = camt_entry("5.00", "BR1").replace("<Dt>2026-11-23</Dt>", "<DtTm>2026-11-23T10:00:00+01:00</DtTm>")
        text = camt(camt_statement("S1", EUR_IBAN, "10.00", "15.00", entry))
        answer = _upload_file(client, text.encode(), fmt="camt053", channel=BANK, day=DAY, name="date-time.xml")
        assert answer.status_code == 201, answer.text
        assert answer.json()["statement"]["first_day"] == DAY.isoformat()


# ------------------------------------------------------------------------------------------------ defect 6


class TestAnAmountBeyondTheLimit:
    def test_is_refused_with_a_detail_that_is_not_masked(self, client):
        text = camt(camt_statement("S1", EUR_IBAN, "0", "1.00", camt_entry("99999999999999999999.00", "AS1")))
        answer = _upload_file(client, text.encode(), fmt="camt053", channel=BANK, day=DAY, name="huge.xml")
        detail = _refused(answer, "statement_invalid", line=line_of(text, "<Ntry>"))["detail"]
        assert "beyond 2^62" in detail and "4,611,686,018,427,387,904" in detail
        assert "*" not in detail


# ------------------------------------------------------------------------------------------------ defect 7


class TestAmountsPerCurrency:
    def test_each_class_gives_its_amounts_per_currency_beside_the_old_sum(self, client, sales):  # noqa: F811
        strays = [f"ord_usd,ch_usd,payment,succeeded,500,0,USD,{DAY.isoformat()},,",
                  f"ord_eur,ch_eur,payment,succeeded,700,0,EUR,{DAY.isoformat()},,"]
        lines = [*[_line(row, DAY) for row in sales], *strays]
        run = _imported(client, lines, DAY, "day.csv")
        turnover = sum(row.amount for row in sales)
        assert run["amounts_by_currency"] == {"matched": {"CNY": turnover},
                                              "missing_in_ledger": {"EUR": 700, "USD": 500}}
        assert run["classes"]["missing_in_ledger"] == {"count": 2, "amount": 1_200}  # as it always was
        assert client.get(f"/v1/reconciliations/{run['id']}").json()["amounts_by_currency"] == run[
            "amounts_by_currency"]
        dry = _dry_run(client, _statement(lines).encode(), DAY)
        assert dry.status_code == 200, dry.text
        assert dry.json()["amounts_by_currency"] == run["amounts_by_currency"]
