"""Daily clearing: per channel and day, the money expected from the ledger against the money received.

A channel statement (a CSV bill) tells what the channel did for us that day: our ledger's net
(``expected``) beside the channel's (``reported``). A bank statement (MT940 or camt.053)
imported under a channel's name tells what that channel actually paid into our account
(``received``). The net position is what the channel still owes us for the day
(``expected - received``), and ``clearing_balance`` is the ledger's ``channel_clearing:C``
balance at the end of the day: the money in flight, which reconciliation proves. The bank statements' paid
lines move it (recipe 4, posted on import): a statement of the day imported a day later still counts for it.

A channel statement is the channel's whole day: when a day's statement is imported again (a
corrected file), ``expected`` and ``reported`` are those of the latest import, not a sum over
files; ``received`` adds up every bank statement of the day, and the cases of every run count. A day that only
bank statements reconciled has no channel figures: ``expected`` is then read from our own lines of the day.

The report is JSON, CSV, or HTML with an SVG bar chart (pygal).
"""

from __future__ import annotations

import csv
import html
import io
from datetime import date, datetime, timedelta
from typing import Any

import orjson
import pygal
from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import Session

from clearhouse.ledger import service as ledger
from clearhouse.ledger.chart import account_id
from clearhouse.ledger.errors import NotFound
from clearhouse.payments import postings
from clearhouse.reconciliation.cases import BANK_FORMATS
from clearhouse.reconciliation.models import OPEN_STATES, ReconCase, Reconciliation, ReconStatement
from clearhouse.reconciliation.rules import MatchRules
from clearhouse.reconciliation.service import PAYOUTS_KEY, expected_of
from clearhouse.reconciliation.sources import day_bounds

runs = Reconciliation.__table__
statements = ReconStatement.__table__
cases = ReconCase.__table__

COLUMNS = ("channel", "currency", "expected", "reported", "received", "net_position", "clearing_balance",
           "discrepancies", "open_cases", "reconciliations")


def _clearing_balance(session: Session, channel: str, currency: str, day: date, timezone: str) -> int | None:
    """``channel_clearing:C`` at the end of ``day``, less what the bank statements of that day (or before) show
    the channel paid, posted when they were imported, a day or more later (recipe 4: ``service.post_payouts``)."""
    end = day_bounds(day, day, timezone)[1]
    try:
        _row, balance = ledger.account_balance(session, account_id(postings.clearing(channel)[0], currency),
                                               as_of=end)
    except NotFound:  # no entry has touched this channel and currency yet
        return None
    return balance.posted - _payouts_of_other_days(session, channel, currency, day, end)


def _payouts_of_other_days(session: Session, channel: str, currency: str, day: date, end: datetime) -> int:
    """How far the payouts' timing moves ``day``'s balance off ``day``'s own: a payout counts for its statement's
    day, not for when it was imported. So what the payouts of bank statements of ``day`` or before, posted after
    ``end``, took from the clearing account counts (+), and what those of statements of later days, posted by
    ``end``, took does not (-). (An entry is posted in its import's transaction, just after the run's
    ``created_at``: the runs are read a minute around ``end``, the entries' own times decide.)"""
    moved = 0
    for statement_date, figures_json in session.execute(
            select(runs.c.statement_date, runs.c.clearing_json)
            .join(statements, statements.c.id == runs.c.statement_id)
            .where(runs.c.channel == channel, statements.c.format.in_(BANK_FORMATS),
                   or_(and_(runs.c.statement_date <= day, runs.c.created_at > end - timedelta(minutes=1)),
                       and_(runs.c.statement_date > day, runs.c.created_at <= end + timedelta(minutes=1))))):
        for payout in orjson.loads(figures_json).get(currency, {}).get(PAYOUTS_KEY, []):
            posted_late = ledger.get_transfer(session, payout["entry_id"])["created_at"] > end
            if statement_date <= day and posted_late:
                moved += payout["amount"]
            elif statement_date > day and not posted_late:
                moved -= payout["amount"]
    return moved


def _row(rows: dict[tuple[str, str], dict[str, Any]], channel: str, currency: str) -> dict[str, Any]:
    return rows.setdefault((channel, currency), {
        "channel": channel, "currency": currency, "expected": 0, "reported": 0, "received": 0,
        "discrepancies": 0, "open_cases": 0, "reconciliations": []})


def daily_report(session: Session, day: date, *, channel: str | None = None) -> dict[str, Any]:
    """Every channel reconciled on ``day`` (or one), one row per channel and currency."""
    query = (select(runs.c.id, runs.c.channel, runs.c.clearing_json, runs.c.rules_json,
                    statements.c.format)
             .join(statements, statements.c.id == runs.c.statement_id)
             .where(runs.c.statement_date == day).order_by(runs.c.channel, runs.c.created_at, runs.c.id))
    if channel:
        query = query.where(runs.c.channel == channel)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    timezones: dict[str, str] = {}
    day_runs = session.execute(query).all()
    # Every discrepancy is a case: per run and currency, all of them and the open ones, in one query.
    is_open = case((cases.c.state.in_(OPEN_STATES), 1), else_=0)
    counts = {(r.reconciliation_id, r.currency): (r.discrepancies, r.open) for r in session.execute(
        select(cases.c.reconciliation_id, cases.c.currency, func.count().label("discrepancies"),
               func.sum(is_open).label("open"))
        .where(cases.c.reconciliation_id.in_([run.id for run in day_runs]))
        .group_by(cases.c.reconciliation_id, cases.c.currency))}
    # A channel statement speaks for the channel's whole day (matching holds every line of ours that day
    # against it), so a second one of the same day is a re-issue: the latest one's figures stand. Adding
    # them up would count the day's expected money (and the channel's) once per file.
    latest = {run.channel: run.id for run in day_runs if run.format not in BANK_FORMATS}
    for run in day_runs:
        timezones[run.channel] = orjson.loads(run.rules_json).get("timezone", "UTC")
        for currency, figures in orjson.loads(run.clearing_json).items():
            row = _row(rows, run.channel, currency)
            if run.format in BANK_FORMATS:
                row["received"] += figures["reported"]  # each bank statement shows its own payments in
            elif run.id == latest[run.channel]:
                row["expected"], row["reported"] = figures["expected"], figures["reported"]
            discrepancies, open_cases = counts.get((run.id, currency), (0, 0))
            row["discrepancies"] += discrepancies
            row["open_cases"] += int(open_cases or 0)
            row["reconciliations"].append(run.id)
    for chan in {run.channel for run in day_runs} - set(latest):
        # Bank statements alone: they show what arrived, never what the channel owed for the day. That is read
        # from our own lines of the day, under the time zone the day's latest import used (only the day itself:
        # no window around it).
        rules = MatchRules(timezone=timezones[chan], date_window_days=0, batch_window_days=0)
        for currency, expected in expected_of(session, chan, day, rules).items():
            _row(rows, chan, currency)["expected"] = expected
    lines = []
    for (chan, currency), row in sorted(rows.items()):
        row["net_position"] = row["expected"] - row["received"]
        row["clearing_balance"] = _clearing_balance(session, chan, currency, day, timezones[chan])
        lines.append({name: row[name] for name in COLUMNS})
    return {"object": "clearing_report", "date": day, "channels": lines}


def as_csv(report: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["date", *COLUMNS])
    for line in report["channels"]:
        writer.writerow([report["date"].isoformat(), *[
            ";".join(line[c]) if c == "reconciliations" else ("" if line[c] is None else line[c]) for c in COLUMNS]])
    return out.getvalue()


def chart_svg(report: dict[str, Any]) -> str:
    """Expected, reported and received per channel and currency, in minor units, as an SVG bar chart."""
    chart = pygal.Bar(title=f"Clearing {report['date'].isoformat()} (minor units)", width=900, height=420,
                      x_label_rotation=20, show_legend=True, disable_xml_declaration=True)
    chart.x_labels = [f"{line['channel']} {line['currency']}" for line in report["channels"]]
    for figure in ("expected", "reported", "received", "net_position"):
        chart.add(figure, [line[figure] for line in report["channels"]])
    return chart.render(is_unicode=True)


def as_html(report: dict[str, Any]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(len(line[c]) if c == 'reconciliations' else line[c]))}</td>"
                         for c in COLUMNS) + "</tr>"
        for line in report["channels"])
    day = html.escape(report["date"].isoformat())
    return (f"<!doctype html><html lang=en><meta charset=utf-8><title>Clearing {day}</title>"
            f"<h1>Clearing report {day}</h1>{chart_svg(report)}"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></html>")
