"""``clearhouse audit ...``: operations on the audit trail."""

from __future__ import annotations

from typing import Annotated

import typer

from clearhouse.kit.logging import operator_console
from clearhouse.kit.verification import report_to_operator

app = typer.Typer(help="The audit trail: who changed what, hash-chained.", no_args_is_help=True)
console = operator_console()


@app.callback()
def _group() -> None:
    """The audit trail: who changed what, hash-chained."""
    # A callback keeps ``verify`` a sub-command even while it is the only one.


@app.command("verify")
def verify(as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False) -> None:
    """Recompute the audit hash chain; exit 1 on the first failure."""
    from clearhouse.audit.service import verify as verify_trail
    from clearhouse.kit.db import make_engine, transact
    from clearhouse.kit.settings import get_settings

    engine = make_engine(get_settings().database_url, pool_size=1, must_exist=True)
    try:
        report = transact(engine, verify_trail)
    finally:
        engine.dispose()
    summary = f"{report.events_checked} events, head {report.chain_head.get('hash')}"
    if report_to_operator(report, as_json=as_json, what="audit trail", summary=summary, console=console):
        raise typer.Exit(1)
