"""``clearhouse recon run`` and ``clearhouse recon clearing`` as an operator runs them: a real process against
the database the API wrote its payments to, with the sandbox card channel's own statement file of the day
(``sandbox_card_v1``, written by the channel as ``clearhouse sandbox statement`` writes it).

The worked day (all at noon UTC, 2026-11-23, on ``sandbox_card``; the acquirer keeps 0.38%, and its fee on a
refund): sales of 100.00 (fee 0.38), 200.50 (fee 0.76) and 300.00 (fee 1.14), a refund of 30.00 on the first,
and a declined card. The channel holds 99.62 + 199.74 + 298.86 - 30.00 = 568.22 for us.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from clearhouse.kit import clock
from tests.payments.support import card_body
from tests.test_cli import clearhouse, ok, sqlite_file

# Each test starts the CLI in its own process (about 4 s of CPU apiece): in the slow run.
pytestmark = pytest.mark.slow

CARD = "sandbox_card"
NOON = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
DAY = NOON.date().isoformat()
DECLINED_CARD = "4000000000000002"
TURNOVER = 10_000 + 20_050 + 30_000 + 3_000  # a class's amount: its lines' absolute amounts, summed
EXPECTED = 9_962 + 19_974 + 29_886 - 3_000  # net of the channel's fees: 568.22
LAST_SALE_NET = 29_886  # the 300.00 sale, less its 1.14


@pytest.fixture
def card_day(app, client, merchant_client_factory, database_url, tmp_path) -> dict[str, Any]:
    """The worked day's payments made through the API, and the channel's own statement file of the day."""
    shop, _merchant_id = merchant_client_factory("Command line shop")
    with clock.frozen(NOON):
        sales = []
        for amount in (10_000, 20_050, 30_000):
            answer = shop.post("/v1/payments", json=card_body(amount=amount))
            assert answer.status_code == 201 and answer.json()["status"] == "succeeded", answer.text
            sales.append(answer.json()["id"])
        refund = shop.post(f"/v1/payments/{sales[0]}/refunds", json={"amount": 3_000})
        assert refund.status_code == 201 and refund.json()["status"] == "succeeded", refund.text
        declined = shop.post("/v1/payments", json=card_body(amount=5_000, number=DECLINED_CARD))
        assert declined.json()["status"] == "failed", declined.text
    work = tmp_path / "operator"
    work.mkdir()
    written = app.state.channels[CARD].statement(NOON.date())
    statement = work / written.filename
    statement.write_bytes(written.content)
    assert statement.name == "sandbox_card_20261123.csv"
    assert len(statement.read_text().splitlines()) == 1 + 4  # header, three charges, one refund
    return {"url": database_url, "cwd": work, "statement": statement}


def recon(card_day: dict[str, Any], *args: str) -> Any:
    return clearhouse("recon", *args, url=card_day["url"], cwd=card_day["cwd"])


def run_file(card_day: dict[str, Any], path: Path) -> Any:
    return recon(card_day, "run", "--channel", CARD, "--file", str(path), "--date", DAY, "--json")


def class_row(output: str, name: str) -> tuple[int, int]:
    """(count, amount) of one class in the printed table."""
    found = re.search(rf"^\W*{name}\W+(\d+)\W+(-?\d+)\W*$", output, re.M)
    assert found, f"no row for {name} in:\n{output}"
    return int(found.group(1)), int(found.group(2))


class TestReconRun:
    def test_the_channels_statement_is_imported_and_the_run_saved(self, client, card_day):
        result = ok(run_file(card_day, card_day["statement"]))
        run = json.loads(result.stdout)
        shown = result.stderr
        assert f"{CARD} {DAY}: reconciliation {run['id']}" in shown
        assert class_row(shown, "matched") == (4, TURNOVER)
        for name in ("missing_in_ledger", "missing_in_statement", "amount_mismatch", "fee_mismatch",
                     "status_mismatch", "duplicate", "timing"):
            assert class_row(shown, name) == (0, 0)
        # The decline is ours and in the period, and nobody claims it: counted, never a case.
        assert "4 statement lines, 5 of ours, 0 cases" in shown
        assert run["classes"]["matched"] == {"count": 4, "amount": TURNOVER} and run["case_count"] == 0
        # Saved: the API reads back the same run, with the file it came from.
        saved = client.get(f"/v1/reconciliations/{run['id']}")
        assert saved.status_code == 200, saved.text
        saved = saved.json()
        assert (saved["channel"], saved["statement_date"], saved["created_by"]) == (CARD, DAY, "system:cli")
        assert saved["classes"] == run["classes"]
        assert (saved["statement_lines"], saved["internal_lines"], saved["case_count"]) == (4, 5, 0)
        assert saved["statement"]["file_name"] == "sandbox_card_20261123.csv"
        assert saved["statement"]["sha256"] == hashlib.sha256(card_day["statement"].read_bytes()).hexdigest()
        # A channel's statement posts nothing to suspense: null (a bank statement's says how much).
        assert saved["clearing"] == {"CNY": {"expected": EXPECTED, "reported": EXPECTED, "difference": 0,
                                             "suspense_on_import": None}}
        assert [r["id"] for r in client.get("/v1/reconciliations").json()["data"]] == [run["id"]]

    @pytest.mark.slow  # two runs of the command, several seconds each
    def test_the_same_file_twice_is_refused_with_exit_1_and_nothing_more_is_saved(self, client, card_day):
        first = json.loads(ok(run_file(card_day, card_day["statement"])).stdout)
        copy = card_day["cwd"] / "renamed.csv"  # the same bytes under another name
        copy.write_bytes(card_day["statement"].read_bytes())
        again = run_file(card_day, copy)
        assert again.returncode == 1, again.stdout + again.stderr
        assert "Traceback" not in again.stdout + again.stderr
        digest = hashlib.sha256(copy.read_bytes()).hexdigest()
        assert f"statement_already_imported: this file (sha256 {digest}) was imported already" in again.stderr
        assert again.stdout == ""  # no run to print
        assert [r["id"] for r in client.get("/v1/reconciliations").json()["data"]] == [first["id"]]

    def test_a_malformed_file_names_its_line_with_exit_1(self, client, card_day):
        broken = card_day["cwd"] / "broken.csv"
        lines = card_day["statement"].read_text().splitlines()
        lines[2] = lines[2].replace(",CNY,", ",CNY,twelve,", 1)  # one field too many on line 3
        broken.write_text("\n".join(lines) + "\n")
        result = run_file(card_day, broken)
        assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
        assert "statement_invalid: line 3:" in result.stderr
        assert client.get("/v1/reconciliations").json()["data"] == []

    @pytest.mark.parametrize("day", ["2026-11-31", "23.11.2026"])
    def test_a_bad_date_is_a_usage_error_and_imports_nothing(self, client, card_day, day):
        result = recon(card_day, "run", "--channel", CARD, "--file", str(card_day["statement"]), "--date", day)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        assert "Usage:" in result.stderr and f"{day!r} is not a date (YYYY-MM-DD)" in result.stderr
        assert client.get("/v1/reconciliations").json()["data"] == []


class TestReconClearing:
    @pytest.mark.slow  # three runs of the command
    def test_the_report_carries_the_runs_figures(self, client, card_day):
        """The channel's file lacks the 300.00 sale: it reports 568.22 - 298.86 = 269.36 where we expect
        568.22; nothing has reached the bank yet, so the channel still owes the whole 568.22, which is what its
        clearing account holds."""
        short = card_day["cwd"] / "sandbox_card_20261123_short.csv"
        short.write_text("".join(line for line in card_day["statement"].read_text().splitlines(keepends=True)
                                 if ",300.00," not in line))
        run = json.loads(ok(run_file(card_day, short)).stdout)
        assert run["classes"]["missing_in_statement"]["count"] == 1
        assert run["clearing"] == {"CNY": {"expected": EXPECTED, "reported": EXPECTED - LAST_SALE_NET,
                                           "difference": -LAST_SALE_NET}}
        report = json.loads(ok(recon(card_day, "clearing", "--date", DAY, "--channel", CARD)).stdout)
        assert report["date"] == DAY
        (line,) = report["channels"]
        assert (line["channel"], line["currency"]) == (CARD, "CNY")
        assert (line["expected"], line["reported"]) == (run["clearing"]["CNY"]["expected"],
                                                        run["clearing"]["CNY"]["reported"])
        assert (line["received"], line["net_position"], line["clearing_balance"]) == (0, EXPECTED, EXPECTED)
        assert (line["discrepancies"], line["open_cases"], line["reconciliations"]) == (1, 1, [run["id"]])
        # The command line and the API give one report.
        api = client.get("/v1/clearing/daily", params={"date": DAY, "channel": CARD}).json()
        assert api["channels"] == report["channels"]
        out = card_day["cwd"] / "clearing.csv"
        result = ok(recon(card_day, "clearing", "--date", DAY, "--format", "csv", "--out", str(out)))
        assert result.stdout == "" and f"wrote {out}" in " ".join(result.stderr.split())
        assert out.read_text().splitlines()[1].startswith(
            f"{DAY},{CARD},CNY,{EXPECTED},{EXPECTED - LAST_SALE_NET},0,{EXPECTED}")


@pytest.fixture
def no_database(tmp_path) -> tuple[str, Path]:
    """A database URL whose file does not exist: a refused command must not create it."""
    work = tmp_path / "work"
    work.mkdir()
    return f"sqlite:///{tmp_path / 'data' / 'clearhouse.db'}", work


def refused(url: str, cwd: Path, *args: str) -> str:
    result = clearhouse("recon", "clearing", *args, url=url, cwd=cwd)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output and "Usage:" in result.stderr
    assert not sqlite_file(url).exists()
    return " ".join(result.stderr.split())


class TestReconClearingRefusesBadArguments:
    @pytest.mark.parametrize(("args", "message"), [
        (("--date", "2026-11-31"), "'2026-11-31' is not a date (YYYY-MM-DD)"),
        (("--date", "23.11.2026"), "'23.11.2026' is not a date (YYYY-MM-DD)"),
        (("--date", DAY, "--format", "pdf"), "format is json, csv, html or svg"),
        (("--date", DAY, "--out", "no/such/folder/report.json"), "the folder of 'no/such/folder/report.json' does"),
        (("--date", DAY, "--out", "."), "'.' is a folder"),
    ], ids=["no-such-day", "not-iso", "unknown-format", "out-in-a-missing-folder", "out-is-a-folder"])
    def test_exit_2_with_the_reason_and_no_database_touched(self, no_database, args, message):
        url, cwd = no_database
        assert message in refused(url, cwd, *args)

    @pytest.mark.parametrize("channel", ["BAD CHANNEL!", "x" * 41], ids=["not-a-name", "longer-than-40"])
    def test_a_name_no_channel_can_have_is_exit_2(self, no_database, channel):
        url, cwd = no_database
        assert "is not a channel name" in refused(url, cwd, "--date", DAY, "--channel", channel)
