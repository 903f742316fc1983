"""The ``clearhouse`` command: serve, worker, database, ledger, demo and benchmarks."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from clearhouse.audit import commands as audit_commands
from clearhouse.channels import commands as sandbox_commands
from clearhouse.identity import commands as identity_commands
from clearhouse.identity.people import commands as people_commands
from clearhouse.kit.db import make_engine, transact, upgrade
from clearhouse.kit.logging import configure_logging, operator_console
from clearhouse.kit.settings import get_settings
from clearhouse.reconciliation import commands as recon_commands

app = typer.Typer(help="Clearhouse: payments, ledger and settlement.", no_args_is_help=True)
db_app = typer.Typer(help="The database schema (Alembic migrations).", no_args_is_help=True)
ledger_app = typer.Typer(help="The double-entry ledger.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(ledger_app, name="ledger")
bench_app = typer.Typer(help="Benchmarks: each figure beside a baseline measured in the same run.",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(identity_commands.keys_app, name="keys")
app.add_typer(identity_commands.merchants_app, name="merchants")
app.add_typer(audit_commands.app, name="audit")
app.add_typer(people_commands.app, name="users")
app.add_typer(sandbox_commands.app, name="sandbox")
app.add_typer(recon_commands.app, name="recon")
console = operator_console()


@app.callback()
def _setup() -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000)")] = None,
    demo: Annotated[bool, typer.Option(help="Migrate, load demo data and run the worker in this process")] = False,
    workers: Annotated[int, typer.Option(min=1, help="HTTP worker processes, each on its own listening socket")] = 1,
) -> None:
    """Serve the HTTP API."""
    import uvicorn

    from clearhouse.app import create_app
    from clearhouse.kit import serving

    settings = get_settings()
    if demo:
        _prepare_demo(settings)
    host = host or settings.host
    port = port or settings.port
    console.print(f"Clearhouse on http://{host}:{port}  (database: {settings.database_url})")
    if workers > 1:
        _check_start_up(settings)
        try:
            served = serving.serve(host=host, port=port, workers=workers)
        except serving.CannotListen as error:
            console.print(f"[red]cannot listen on {host}:{port}: {error.strerror or error}[/red]")
            raise typer.Exit(1) from None
        if not served:
            console.print("[red]a worker failed to start (its log is above)[/red]")
            raise typer.Exit(1)
    else:
        uvicorn.run(create_app(settings, run_worker=demo), host=host, port=port, log_level="warning")


def _check_start_up(settings: Any) -> None:
    """What every worker checks as it starts (``create_app``: the master keys unwrap the database's data
    keys), done once before they start: one clear error instead of one traceback per worker."""
    from clearhouse.kit.crypto import FieldCipher, load_master_keys

    engine = make_engine(settings.database_url, pool_size=1)
    try:
        FieldCipher.open(engine, load_master_keys(settings))
    finally:
        engine.dispose()


@app.command()
def worker(once: Annotated[bool, typer.Option(help="Run each job once and exit")] = False) -> None:
    """Run the background worker: expiries, channel status queries, webhook and notification delivery."""
    import threading

    from clearhouse import worker as worker_module

    settings = get_settings()
    engine = make_engine(settings.database_url)
    runtime = worker_module.build_runtime(settings, engine)
    if once:
        print(json.dumps(worker_module.run_once(engine, runtime)))
        return
    stop = threading.Event()
    try:
        worker_module.run_forever(engine, settings.worker_interval_seconds, stop, runtime)
    except KeyboardInterrupt:
        stop.set()


@app.command()
def demo() -> None:
    """Load the demo data (idempotent)."""
    created = _prepare_demo(get_settings())
    console.print(f"demo data loaded ({created} new entries)")


def _prepare_demo(settings: Any) -> int:
    """Migrate, make a master key file if there is none, load the demo data, and write the
    demo credentials (``var/demo-credentials.json``) the first time."""
    from clearhouse import demo as demo_module
    from clearhouse.kit.crypto import ensure_key_file

    upgrade(settings.database_url)
    if settings.master_key is None and settings.master_key_file is not None \
            and ensure_key_file(settings.master_key_file):
        console.print(f"created master key file {settings.master_key_file} (keep it safe and backed up)")
    engine = make_engine(settings.database_url, pool_size=1)
    created = transact(engine, demo_module.load)
    credentials = demo_module.write_credentials(engine, settings)
    if credentials is not None:
        console.print(f"demo credentials written to {credentials}")
    from clearhouse import worker as worker_module

    runtime = worker_module.build_runtime(settings, engine)
    made, run = demo_module.load_sales(runtime)
    if run is not None:
        console.print(f"{made} demo payments made through the sandbox channels")
        console.print(f"the sandbox_card statement of {run['statement_date']} reconciled: "
                      f"{run['id']} ({run['case_count']} cases)")
    engine.dispose()
    return created


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    settings = get_settings()
    upgrade(settings.database_url, revision)
    console.print(f"database at {revision}")


@db_app.command("current")
def db_current() -> None:
    """Print the schema revision the database is at."""
    from clearhouse.kit.db import current_revision

    revision = current_revision(make_engine(get_settings().database_url, pool_size=1))
    print(revision or "none (not migrated: run `clearhouse db upgrade`)")


@ledger_app.command("verify")
def ledger_verify(as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False) -> None:
    """Recompute the hash chain, zero-sum, limits and balances; exit 1 on the first failure."""
    from clearhouse.kit.verification import report_to_operator
    from clearhouse.ledger.verify import verify

    report = transact(make_engine(get_settings().database_url, pool_size=1), verify)
    summary = (f"{report.entries_checked} entries, {report.postings_checked} postings, "
               f"{report.accounts_checked} accounts")
    if report_to_operator(report, as_json=as_json, what="ledger", summary=summary, console=console):
        raise typer.Exit(1)


@bench_app.command("ledger")
def bench_ledger(
    quick: Annotated[
        bool, typer.Option(help="100,000 transfers and 500 HTTP requests, not 1,000,000 and 2,000")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON report as the last line")] = False,
) -> None:
    """Ledger transfers/s on SQLite and PostgreSQL against their raw insert ceilings; HTTP p99."""
    from clearhouse.bench.ledger import main as run_ledger_bench

    code = run_ledger_bench(quick=quick, as_json=as_json)
    if code:
        raise typer.Exit(code)


@bench_app.command("auth")
def bench_auth(
    quick: Annotated[bool, typer.Option(help="10,000 requests per database, not 100,000")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON report as the last line")] = False,
) -> None:
    """What signature checks and permission checks add per request (p99), on SQLite and PostgreSQL."""
    from clearhouse.bench.auth import main as run_auth_bench

    code = run_auth_bench(quick=quick, as_json=as_json)
    if code:
        raise typer.Exit(code)


@bench_app.command("payments")
def bench_payments(
    quick: Annotated[bool, typer.Option(help="Rounds of 1.5 s and 2.5 s at 500/s, not 5 s and 10 s")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON report as the last line")] = False,
    postgres: Annotated[str | None, typer.Option(
        help="Also on this PostgreSQL server (default: CLEARHOUSE_BENCH_POSTGRES_URL; neither: SQLite only)")] = None,
) -> None:
    """Card payments/s over HTTP against the same server's /healthz rate; p99 at 500 payments/s."""
    from clearhouse.bench.payments import main as run_payments_bench

    code = run_payments_bench(quick=quick, as_json=as_json, postgres_url=postgres)
    if code:
        raise typer.Exit(code)


@bench_app.command("recon")
def bench_recon(
    quick: Annotated[bool, typer.Option(help="500,000 lines a side, not 10,000,000")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON report as the last line")] = False,
) -> None:
    """Statement rows/s from a CSV on disk to saved cases, against a pandas merge of the same data."""
    from clearhouse.bench.recon import main as run_recon_bench

    code = run_recon_bench(quick=quick, as_json=as_json)
    if code:
        raise typer.Exit(code)


def main() -> None:
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from clearhouse.kit.crypto import CryptoConfigError

    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except CryptoConfigError as error:
        console.print(f"[red]error[/]: {error}")
        console.print("check CLEARHOUSE_MASTER_KEY or CLEARHOUSE_MASTER_KEY_FILE (docs/data-protection.md)")
        sys.exit(2)
    except (SQLAlchemyError, ArgumentError, ValueError) as error:
        # Misconfiguration (bad URL, server down, wrong credentials) is an operator's
        # problem to fix, not a bug: one clear line, no traceback.
        detail = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        console.print(f"[red]error[/]: {type(error).__name__}: {detail}")
        console.print(f"check CLEARHOUSE_DATABASE_URL (now {_safe_url()})")
        sys.exit(2)


def _safe_url() -> str:
    from sqlalchemy.engine import make_url

    url = get_settings().database_url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as "unparsable", never echoed raw
        return "<unparsable>"
