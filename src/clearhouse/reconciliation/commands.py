"""``clearhouse recon ...``: reconcile a statement file and print the daily clearing report."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer

from clearhouse.kit.logging import operator_console

app = typer.Typer(help="Reconciliation: import statements, match them, clearing reports.", no_args_is_help=True)
console = operator_console()


def _engine() -> Any:
    from clearhouse.kit.db import make_engine
    from clearhouse.kit.settings import get_settings

    return make_engine(get_settings().database_url, pool_size=1, must_exist=True)


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _statement_day(text: str) -> date:
    """A statement's day: a date that reconciliation can work with (``service.check_statement_date``)."""
    from clearhouse.kit.errors import ClearhouseError
    from clearhouse.reconciliation.service import FIRST_DAY, LAST_DAY, check_statement_date

    try:
        return check_statement_date(_day(text))
    except ClearhouseError:  # short enough for the one line of typer's error box
        raise typer.BadParameter(f"{text} is out of range ({FIRST_DAY} to {LAST_DAY})") from None


def _channel(name: str) -> str:
    from clearhouse.reconciliation.schemas import CHANNEL_NAME

    if not re.fullmatch(CHANNEL_NAME, name):
        raise typer.BadParameter(f"{name!r} is not a channel name: lower-case letters, digits and _ . : -, "
                                 "at most 40, as the API takes them")
    return name


def _channel_or_all(name: str | None) -> str | None:
    return None if name is None else _channel(name)


def _output_file(path: Path | None) -> Path | None:
    """A file to write, checked before any work: its folder exists, and it is not a folder itself."""
    if path is not None and (path.is_dir() or not path.parent.is_dir()):
        raise typer.BadParameter(f"{str(path)!r} is a folder" if path.is_dir()
                                 else f"the folder of {str(path)!r} does not exist")
    return path


@app.command()
def run(
    channel: Annotated[str, typer.Option(callback=_channel,
                                         help="The channel (or bank account name) the statement belongs to")],
    file: Annotated[Path, typer.Option(exists=True, dir_okay=False, readable=True, help="The statement file")],
    date_: Annotated[str, typer.Option("--date", help="The statement's day, YYYY-MM-DD")],
    format_: Annotated[str, typer.Option("--format", help="csv, mt940 or camt053")] = "csv",
    mapping: Annotated[str | None, typer.Option(help="A built-in CSV mapping (default: the channel's)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the reconciliation as JSON on stdout")] = False,
) -> None:
    """Import FILE as CHANNEL's statement of DATE, match it against the ledger and save the cases."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from clearhouse.kit.errors import ClearhouseError
    from clearhouse.reconciliation.service import STAGES, reconcile_file

    day = _statement_day(date_)
    with Progress(TextColumn("{task.description:<8}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=not console.is_terminal) as bar:
        tasks = {stage: bar.add_task(stage, total=1, start=False) for stage in STAGES}

        def progress(stage: str, done: int, total: int) -> None:
            task = tasks[stage]
            bar.start_task(task)
            bar.update(task, completed=done, total=max(total, 1))

        try:
            view = reconcile_file(_engine(), channel=channel, path=file, fmt=format_, statement_date=day,
                                  mapping=mapping, actor="cli", progress=progress)
        except ClearhouseError as error:
            console.print(f"[red]{error.code}[/red]: {error.detail}")
            raise typer.Exit(1) from None
    table = Table(title=f"{channel} {day}: reconciliation {view['id']}")
    for column in ("class", "count", "amount (minor units)"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, figures in view["classes"].items():
        table.add_row(name, str(figures["count"]), str(figures["amount"]))
    console.print(table)
    per_currency = view["amounts_by_currency"]
    if len({currency for amounts in per_currency.values() for currency in amounts}) > 1:
        # The table's amounts add up every currency's: each one's apart, when the file has several.
        for name, amounts in per_currency.items():
            console.print(f"{name} per currency: " + ", ".join(f"{currency} {amount}"
                                                               for currency, amount in amounts.items()))
    console.print(f"{view['statement_lines']} statement lines, {view['internal_lines']} of ours, "
                  f"{view['case_count']} cases, {view['duration_ms']} ms")
    for balance in view["bank_balances"]:  # a bank statement's accounts (docs/reconciliation.md, "The bank's balance")
        where = f"{balance['account']} {balance['currency']}"
        if balance["took_up"] is not None:
            console.print(f"{where}: taken up at this statement's opening balance {balance['opening_balance']} "
                          f"({'its first statement' if balance['took_up'] == 'first' else 'an earlier statement'}; "
                          f"{balance['amount']} posted from opening_balances)")
        if balance["gap"]:
            console.print(f"[yellow]{where}: {balance['gap']} minor units of lines between this statement and the "
                          "account's others are in no imported statement: one is missing (or came out of order)"
                          "[/yellow]")
    if as_json:
        typer.echo(json.dumps(view, default=str))


@app.command()
def clearing(
    date_: Annotated[str, typer.Option("--date", help="The day, YYYY-MM-DD")],
    channel: Annotated[str | None, typer.Option(callback=_channel_or_all, help="One channel (default: all)")] = None,
    format_: Annotated[str, typer.Option("--format", help="json, csv, html or svg")] = "json",
    out: Annotated[Path | None, typer.Option(callback=_output_file, help="Write here instead of stdout")] = None,
) -> None:
    """The daily clearing report: expected against received per channel, net positions."""
    from clearhouse.kit.db import transact
    from clearhouse.reconciliation import clearing as report_of

    if format_ not in ("json", "csv", "html", "svg"):
        raise typer.BadParameter("format is json, csv, html or svg")
    day = _day(date_)
    report = transact(_engine(), lambda s: report_of.daily_report(s, day, channel=channel))
    text = {"json": lambda: json.dumps(report, default=str, indent=2), "csv": lambda: report_of.as_csv(report),
            "html": lambda: report_of.as_html(report), "svg": lambda: report_of.chart_svg(report)}[format_]()
    if out is None:
        typer.echo(text)
    else:
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as error:  # not writable: a message, not a traceback
            raise typer.BadParameter(f"cannot write {str(out)!r}: {error.strerror}", param_hint="--out") from None
        console.print(f"wrote {out}")
