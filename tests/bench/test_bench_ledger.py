"""The ledger benchmark at a tiny size: same code paths, checked answer, the JSON contract.

Speed is never asserted here (docs/benchmarks.md): only that the benchmark measures
what it says, checks its own answer, and reports in the agreed shape.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from clearhouse.bench import Report, emit, percentile, rate_figure, time_figure
from clearhouse.bench.ledger import Sizes, Workload, check_ledger, load, run
from clearhouse.kit.db import make_engine
from tests.conftest import BACKENDS, POSTGRES_URL

TINY = Sizes(transfers=5_000, accounts=200, http_requests=30, batch=2_000)


def _figures(data: dict) -> dict[str, dict]:
    return {f["figure"]: f for f in data["figures"]}


class TestTinyRun:
    @pytest.mark.slow  # about 10 s: it starts `clearhouse serve` and, given one, uses PostgreSQL
    def test_every_part_checks_its_answer_and_reports_the_contract_shape(self, tmp_path):
        with_postgresql = "postgresql" in BACKENDS
        parts = ("sqlite", "http") + (("postgresql",) if with_postgresql else ())
        report = run(TINY, parts=parts, postgres_url=POSTGRES_URL or None, workdir=tmp_path)
        data = json.loads(json.dumps(report.as_dict()))

        assert data["failures"] == []
        assert data["ok"] is True
        assert data["name"] == "ledger"
        assert data["sizes"]["transfers"] == 5_000
        assert data["sizes"]["accounts"] == 200
        figures = _figures(data)
        expected = {
            "sqlite_transfers_per_s": ("sqlite_raw_ceiling_transfers_per_s", "1/s"),
            "http_transfer_p99_ms": ("http_trivial_p99_ms", "ms"),
        }
        if with_postgresql:
            expected["postgresql_transfers_per_s"] = (
                "postgresql_raw_ceiling_transfers_per_s",
                "1/s",
            )
        assert set(figures) == set(expected)
        for name, (baseline, unit) in expected.items():
            figure = figures[name]
            assert set(figure) == {"figure", "value", "unit", "baseline", "baseline_value", "ratio"}
            assert (figure["baseline"], figure["unit"]) == (baseline, unit)
            assert figure["value"] > 0 and figure["baseline_value"] > 0
        rate = figures["sqlite_transfers_per_s"]
        assert rate["ratio"] == pytest.approx(rate["value"] / rate["baseline_value"], abs=0.002)
        p99 = figures["http_transfer_p99_ms"]
        assert p99["ratio"] == pytest.approx(p99["baseline_value"] / p99["value"], abs=0.002)
        # The baseline says what it is.
        assert "executemany" in data["notes"]["sqlite_raw_ceiling_transfers_per_s"]


class TestAnswerCheck:
    def test_a_balance_off_by_one_minor_unit_fails_the_run(self, tmp_path):
        workload = Workload(3_000, 50)
        ledger_url, raw_url = (
            f"sqlite:///{tmp_path / 'ledger.db'}",
            f"sqlite:///{tmp_path / 'raw.db'}",
        )
        assert load("sqlite", ledger_url, raw_url, workload, 1_000).failures == []
        engine = make_engine(ledger_url, pool_size=1)
        try:
            with engine.begin() as connection:
                connection.execute(
                    text(
                        "UPDATE ledger_accounts SET credits_posted = credits_posted + 1 "
                        "WHERE id = 'acct_bench_00007'"
                    )
                )
            failures = check_ledger(
                engine, workload.expected_balances(), 3_000, "sqlite", chain=False
            )
        finally:
            engine.dispose()
        assert any("acct_bench_00007" in f for f in failures)
        assert any("total debits" in f for f in failures)

    def test_the_workload_balances_and_never_transfers_to_the_same_account(self):
        workload = Workload(10_000, 3)
        assert (
            sum(workload.expected_debits) == sum(workload.expected_credits) == sum(workload.amount)
        )
        assert all(d != c for d, c in zip(workload.debit, workload.credit, strict=True))
        assert Workload(100, 3).amount == Workload(100, 3).amount  # fixed by the seed


class TestReportShape:
    def test_json_is_the_last_line_of_stdout_and_a_wrong_answer_exits_1(self, capsys):
        report = Report("ledger", {"transfers": 10})
        report.figures.append(
            rate_figure("sqlite_transfers_per_s", 50.0, "sqlite_raw_ceiling_transfers_per_s", 200.0)
        )
        report.failures.append(
            "sqlite: account acct_x has balances (1, 0, 0, 0), expected (0, 0, 0, 0)"
        )
        assert emit(report, as_json=True) == 1
        last = capsys.readouterr().out.strip().splitlines()[-1]
        data = json.loads(last)
        assert data["ok"] is False
        assert data["figures"][0]["ratio"] == 0.25

    def test_ratio_is_bigger_when_better_for_rates_and_for_times(self):
        assert rate_figure("r", 300.0, "b", 600.0).ratio == 0.5
        assert time_figure("t", 8.0, "b", 2.0).ratio == 0.25

    def test_percentile_is_nearest_rank(self):
        values = [float(v) for v in range(1, 101)]
        assert percentile(values, 99) == 99.0
        assert percentile(values, 100) == 100.0
        assert percentile([5.0], 99) == 5.0
