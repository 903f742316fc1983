"""The recon benchmark at a small size: same code paths, checked answer, the JSON contract.

Speed is never asserted here (docs/benchmarks.md): only that the workload is what the benchmark
says it is, that its check catches a wrong answer, and that a run through the real command
reports in the agreed shape with the answer right.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import polars as pl
import pytest

from clearhouse.bench.recon import (
    DISCREPANCY_CLASSES,
    HEADER,
    MAPPING,
    STATEMENT_DAY,
    Sizes,
    Timed,
    check,
    generate,
    write_statement,
)
from clearhouse.reconciliation.formats import parse_statement
from clearhouse.reconciliation.frames import INTERNAL_SCHEMA, STATEMENT_SCHEMA

SMALL = Sizes(lines=20_000)


@pytest.fixture(scope="module")
def workload():
    return generate(SMALL)


def _view(truth: pl.DataFrame, matched: int) -> dict:
    counts = dict(truth.group_by("class").len().iter_rows())
    classes = {name: {"count": counts.get(name, 0), "amount": 0} for name in DISCREPANCY_CLASSES}
    return {"classes": {"matched": {"count": matched, "amount": 0}, **classes}, "case_count": truth.height}


class TestWorkload:
    def test_every_class_is_injected_on_its_own_lines(self, workload):
        assert workload.internal.schema == pl.Schema(INTERNAL_SCHEMA)
        assert workload.internal.height == SMALL.lines
        assert workload.counts == dict.fromkeys(DISCREPANCY_CLASSES, SMALL.per_class)
        ours = workload.truth.drop_nulls("our_id")
        assert ours["our_id"].n_unique() == ours.height  # one class per line of ours
        assert workload.internal["our_id"].n_unique() == SMALL.lines
        assert workload.internal["our_ref"].n_unique() == SMALL.lines
        # Away from the day's end: nothing is timing by the cutoff rule by accident.
        hours = workload.internal["booked_at"].dt.hour()
        assert hours.min() >= 1 and hours.max() < 22
        # Dropped, amount, fee, status and timing lines are not matched; a duplicated line's original is.
        assert workload.matched == SMALL.lines - 5 * SMALL.per_class
        assert workload.settled == SMALL.per_class

    def test_the_file_parses_back_to_the_statement_written(self, workload, tmp_path):
        path = tmp_path / "statement.csv"
        write_statement(workload, path)
        assert path.read_text().splitlines()[0] == ",".join(HEADER)
        parsed = parse_statement(path, "csv", mapping=MAPPING)

        assert parsed.lines.schema == pl.Schema(STATEMENT_SCHEMA)
        expected = workload.statement.select(list(STATEMENT_SCHEMA))
        assert parsed.lines.equals(expected)
        settlement = parsed.lines.filter(pl.col("kind") == "settlement")
        assert settlement.height == 1
        covered = workload.internal.filter(pl.col("booked_on") < STATEMENT_DAY)
        assert covered.height == workload.settled
        assert settlement["amount"][0] == (covered["amount"] - covered["fee"]).sum()
        # Every case names a real line of the file (or, for a dropped line, none).
        lines = set(parsed.lines["line_no"])
        assert set(workload.truth["line_no"].drop_nulls()) <= lines
        assert workload.truth.filter(pl.col("line_no").is_null())["class"].unique().to_list() == [
            "missing_in_statement"]

    def test_a_generated_day_is_the_same_every_time(self, workload):
        again = generate(SMALL)
        assert again.internal.equals(workload.internal)
        assert again.truth.equals(workload.truth)


class TestCheck:
    def test_the_exact_answer_passes(self, workload):
        cases = workload.truth.sample(fraction=1.0, seed=1)
        timed = Timed(1.0, view=_view(workload.truth, workload.matched), cases=cases)
        assert check(workload, timed) == []

    def test_a_case_missing_an_extra_case_or_a_wrong_class_fails(self, workload):
        truth = workload.truth
        wrong = pl.concat([
            truth.slice(1),  # the first injected case not saved
            pl.DataFrame({"class": ["duplicate"], "our_id": ["pay_nobody"], "line_no": [3]}),
        ]).with_columns(pl.when(pl.int_range(pl.len()) == 5).then(pl.lit("timing")).otherwise(pl.col("class"))
                        .alias("class"))
        failures = check(workload, Timed(1.0, view=_view(truth, workload.matched), cases=wrong))
        assert any("saved but not injected" in f and "pay_nobody" in f for f in failures)
        assert any("injected but not saved" in f for f in failures)

    def test_counts_that_disagree_with_the_cases_fail(self, workload):
        view = _view(workload.truth, workload.matched)
        view["classes"]["timing"]["count"] += 1
        view["case_count"] += 1
        failures = check(workload, Timed(1.0, view=view, cases=workload.truth))
        assert any("timing" in f for f in failures)
        assert any("cases, injected" in f for f in failures)


class TestCommand:
    @pytest.mark.slow  # a 20,000-line day through reconcile_file, pandas and Polars in a new process: ~10 s
    def test_a_small_json_run_saves_exactly_the_injected_cases_and_reports_the_contract_shape(self, tmp_path):
        env = {**os.environ, "TMPDIR": str(tmp_path)}
        # The real command (`clearhouse bench recon --quick --json`) with its quick size made smaller.
        program = ("import clearhouse.bench.recon as recon; from clearhouse.cli import main; "
                   f"recon.QUICK = recon.Sizes(lines={SMALL.lines}); main()")
        command = [sys.executable, "-c", program, "bench", "recon", "--quick", "--json"]
        finished = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert finished.stdout.strip(), finished.stderr[-3000:]
        data = json.loads(finished.stdout.strip().splitlines()[-1])

        assert data["failures"] == [], finished.stdout[-3000:]
        assert data["ok"] is True
        assert finished.returncode == 0
        assert data["name"] == "recon"
        sizes = data["sizes"]
        assert sizes["internal_lines"] == SMALL.lines
        assert sizes["cases_saved"] == sizes["injected_cases"] == 7 * SMALL.per_class
        # Dropped and settled lines out, duplicates and strays in, one settlement credit.
        assert sizes["statement_lines"] == SMALL.lines + 1
        assert sizes["wall_s"] > 0
        figures = {f["figure"]: f for f in data["figures"]}
        assert set(figures) == {"statement_rows_per_s", "raw_join_rows_per_s"}
        for figure in figures.values():
            assert set(figure) == {"figure", "value", "unit", "baseline", "baseline_value", "ratio"}
            assert (figure["baseline"], figure["unit"]) == ("pandas_merge_rows_per_s", "1/s")
            assert figure["value"] > 0 and figure["baseline_value"] > 0
            assert figure["ratio"] == pytest.approx(figure["value"] / figure["baseline_value"], abs=0.002)
        ours = figures["statement_rows_per_s"]
        assert ours["value"] == pytest.approx(sizes["statement_lines"] / sizes["wall_s"], rel=0.01)
        assert "read_csv" in data["notes"]["pandas_merge_rows_per_s"]
