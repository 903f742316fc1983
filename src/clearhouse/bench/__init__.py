"""Benchmarks (docs/benchmarks.md): each figure beside a baseline measured in the same run.

This package holds what every benchmark shares: the figure and report shapes, the
JSON line and the human table, percentiles, a free loopback port, and a throw-away
PostgreSQL database. Each benchmark is one module (``bench/ledger.py``) with a
``main(quick, as_json) -> exit code`` that ``clearhouse bench <name>`` calls.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

ROOT = Path(__file__).resolve().parents[3]
POSTGRES_SCRIPT = ROOT / "scripts" / "postgres.sh"
POSTGRES_URL_ENV = "CLEARHOUSE_BENCH_POSTGRES_URL"
"""A PostgreSQL server to benchmark on instead of starting one (fresh databases are made on it)."""

# (task, completed, total): how a benchmark reports progress without knowing about rich.
ProgressFn = Callable[[str, int, int], None]


def no_progress(_task: str, _completed: int, _total: int) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Figure:
    figure: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    ratio: float
    goal: str = ""
    met: bool | None = None  # None: no goal stated

    def as_dict(self) -> dict[str, Any]:
        return {
            "figure": self.figure,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline,
            "baseline_value": self.baseline_value,
            "ratio": self.ratio,
        }


def rate_figure(
    figure: str,
    value: float,
    baseline: str,
    baseline_value: float,
    *,
    unit: str = "1/s",
    goal: str = "",
    met: bool | None = None,
) -> Figure:
    """A rate: bigger is better, so ratio = value / baseline."""
    ratio = value / baseline_value if baseline_value else 0.0
    return Figure(
        figure,
        round(value, 1),
        unit,
        baseline,
        round(baseline_value, 1),
        round(ratio, 3),
        goal,
        met,
    )


def time_figure(
    figure: str,
    value: float,
    baseline: str,
    baseline_value: float,
    *,
    unit: str = "ms",
    goal: str = "",
    met: bool | None = None,
) -> Figure:
    """A time: smaller is better, so ratio = baseline / value."""
    ratio = baseline_value / value if value else 0.0
    return Figure(
        figure,
        round(value, 3),
        unit,
        baseline,
        round(baseline_value, 3),
        round(ratio, 3),
        goal,
        met,
    )


@dataclass
class Report:
    """One benchmark run: what ``--json`` prints, plus notes for the human table."""

    name: str
    sizes: dict[str, Any]
    figures: list[Figure] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "sizes": self.sizes,
            "figures": [f.as_dict() for f in self.figures],
            "failures": self.failures,
            "notes": self.notes,
        }


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest value with ``pct``% of the values at or below it."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def progress_bar(console: Console) -> Iterator[ProgressFn]:
    """A rich progress bar per task name, fed by a benchmark's ``ProgressFn``."""
    tasks: dict[str, Any] = {}
    columns = (
        TextColumn("{task.description:<28}"),
        BarColumn(),
        TextColumn("{task.completed:>9,}/{task.total:<9,}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:

        def update(task: str, completed: int, total: int) -> None:
            if task not in tasks:
                tasks[task] = progress.add_task(task, total=total)
            progress.update(tasks[task], completed=completed, total=total)

        yield update


def print_report(report: Report, console: Console) -> None:
    table = Table(title=f"clearhouse bench {report.name}", title_justify="left")
    for column in ("figure", "value", "baseline", "baseline value", "ratio", "goal", "met"):
        table.add_column(
            column, justify="right" if column in ("value", "baseline value", "ratio") else "left"
        )
    for f in report.figures:
        met = "" if f.met is None else ("[green]yes[/]" if f.met else "[red]no[/]")
        table.add_row(
            f.figure,
            f"{f.value:,} {f.unit}",
            f.baseline,
            f"{f.baseline_value:,} {f.unit}",
            f"{f.ratio:.3f}",
            f.goal,
            met,
        )
    console.print(table)
    sizes = ", ".join(
        f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in report.sizes.items()
    )
    console.print(f"sizes: {sizes}; {report.seconds:.1f} s in all")
    for key, note in report.notes.items():
        console.print(f"[dim]{key}[/]: {note}", highlight=False)
    if report.ok:
        console.print("[green]answer checked: ok[/]")
    else:
        console.print(f"[red]answer WRONG or run failed ({len(report.failures)}):[/]")
        for failure in report.failures[:20]:
            console.print(f"  [red]-[/] {failure}", highlight=False)


def emit(report: Report, *, as_json: bool) -> int:
    """Print the table (and with ``as_json`` the JSON line, last on stdout); the exit code."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a log file or a pipe: no terminal width to fit
    print_report(report, console)
    if as_json:
        print(json.dumps(report.as_dict()), flush=True)
    return 0 if report.ok else 1


# ---------------------------------------------------------------- PostgreSQL


@dataclass
class PostgresServer:
    """A PostgreSQL server to benchmark on: started here, or given by a URL."""

    url: str
    description: str
    directory: Path | None = None  # set when this process started the server

    @classmethod
    def start(cls, directory: Path) -> PostgresServer:
        """``scripts/postgres.sh start DIR --durable``: fsync and synchronous commit on."""
        if not POSTGRES_SCRIPT.exists():
            raise RuntimeError(
                f"{POSTGRES_SCRIPT} not found: set CLEARHOUSE_BENCH_POSTGRES_URL instead"
            )
        result = subprocess.run(
            [str(POSTGRES_SCRIPT), "start", str(directory), "--durable"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:
            raise RuntimeError(f"postgres.sh start failed: {result.stderr.strip()[-500:]}")
        url = result.stdout.strip().splitlines()[-1]
        return cls(
            url,
            "started by the bench (scripts/postgres.sh --durable: fsync on, synchronous commit)",
            directory,
        )

    def stop(self) -> None:
        if self.directory is not None:
            subprocess.run(
                [str(POSTGRES_SCRIPT), "stop", str(self.directory)],
                capture_output=True,
                timeout=120,
            )

    @contextlib.contextmanager
    def fresh_database(self, label: str) -> Iterator[str]:
        """A new, empty database on this server for the duration of the block; its URL."""
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        url = make_url(self.url)
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        name = f"clearhouse_bench_{label}_{os.getpid()}_{secrets.token_hex(3)}"
        admin = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=_null_pool())
        try:
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
            try:
                yield url.set(database=name).render_as_string(hide_password=False)
            finally:
                with admin.connect() as connection:
                    connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            admin.dispose()


def _null_pool() -> Any:
    from sqlalchemy.pool import NullPool

    return NullPool
