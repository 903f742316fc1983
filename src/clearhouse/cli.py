"""The ``clearhouse`` command: serve, worker, database, ledger, demo and benchmarks."""

from __future__ import annotations

import json
import re
import sys
import traceback
from typing import Annotated, Any

import structlog
import typer

from clearhouse.audit import commands as audit_commands
from clearhouse.channels import commands as sandbox_commands
from clearhouse.identity import commands as identity_commands
from clearhouse.identity.people import commands as people_commands
from clearhouse.kit.db import make_engine, transact, upgrade
from clearhouse.kit.logging import configure_logging, operator_console
from clearhouse.kit.runtime import settle_heap
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
    host: Annotated[str | None, typer.Option(help="Address to bind (default: CLEARHOUSE_HOST, 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port (default: CLEARHOUSE_PORT, 8000)")] = None,
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
    if settings.log_json:  # a log collector reads standard error: one JSON object per line, this one too
        structlog.get_logger("clearhouse.serve").info("serving", url=f"http://{host}:{port}", database=_safe_url(),
                                                       workers=workers)
    else:
        console.print(f"Clearhouse on http://{host}:{port}  (database: {_safe_url()})")
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
        # log_config=None: uvicorn's own lines go through our handler (one JSON object each
        # under CLEARHOUSE_LOG_JSON), not through the plain-text handlers it would install.
        uvicorn.run(create_app(settings, run_worker=demo), host=host, port=port, log_level="warning",
                    log_config=None)


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
def worker(once: Annotated[bool, typer.Option(
        help="Run each job once, print the counts as JSON and exit (1 if a job failed)")] = False) -> None:
    """Run the background worker: expiries, channel status queries, webhook and notification delivery."""
    import threading

    from clearhouse import worker as worker_module
    from clearhouse.kit.crypto import load_master_keys

    settings = get_settings()
    load_master_keys(settings)  # the settings before the database, as every command checks them
    engine = make_engine(settings.database_url, must_exist=True)
    # Opens the master keys (some jobs decrypt), so a key or database problem stops the worker
    # here, once, like any other command, instead of failing every job on every pass.
    runtime = worker_module.build_runtime(settings, engine)
    if once:
        counts = worker_module.run_once(engine, runtime)
        print(json.dumps(counts))
        if any(count < 0 for count in counts.values()):
            raise typer.Exit(1)
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
        path, replaced = credentials
        if replaced:
            console.print(f"[yellow]{path} held API keys this database does not have (another database's): "
                          "fresh demo credentials written over it[/]")
        else:
            console.print(f"demo credentials written to {path}")
    from clearhouse import worker as worker_module

    runtime = worker_module.build_runtime(settings, engine)
    made, run = demo_module.load_sales(runtime)
    if run is not None:
        console.print(f"{made} demo payments made through the sandbox channels")
        console.print(f"the sandbox_card statement of {run['statement_date']} reconciled: "
                      f"{run['id']} ({run['case_count']} cases)")
    engine.dispose()
    return created


def _shipped_revision(revision: str) -> str:
    """REVISION as Alembic resolves it (``head``, an id, or the unique start of one), checked
    before any database is opened, so a typo leaves nothing behind."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    from clearhouse.kit.db import alembic_config

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    newest = f"the newest is {script.get_current_head()}, also called head"
    try:
        found = script.get_revisions(revision)
    except CommandError as error:
        raise typer.BadParameter(f"{error}; {newest}") from None
    if len(found) != 1:
        raise typer.BadParameter(f"{revision!r} is not one revision to upgrade to; {newest}")
    return revision


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(callback=_shipped_revision)] = "head") -> None:
    """Apply migrations up to REVISION (default: the newest). There is no downgrade."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    from clearhouse.kit.db import alembic_config, current_revision

    settings = get_settings()
    try:
        upgrade(settings.database_url, revision)
    except CommandError as error:  # the database is at a revision this code does not ship
        _say_database_problem(error)
        raise typer.Exit(2) from None
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        now = current_revision(engine)
    finally:
        engine.dispose()
    (wanted,) = ScriptDirectory.from_config(alembic_config("sqlite://")).get_revisions(revision)
    if now != wanted.revision:  # Alembic does nothing when asked for a revision the database is past
        console.print(f"database at {now}, already past {wanted.revision}: nothing done (there is no downgrade)")
    elif revision in ("head", "heads"):
        console.print(f"database at head ({now})")
    else:
        console.print(f"database at {now}")


@db_app.command("current")
def db_current() -> None:
    """Print the schema revision the database is at."""
    from clearhouse.kit.db import MissingDatabase, current_revision

    try:
        engine = make_engine(get_settings().database_url, pool_size=1, must_exist=True)
    except MissingDatabase as missing:  # the answer all the same, without making the file to ask it
        print(f"none (no database at {missing.path}: `clearhouse db upgrade` creates it)")
        return
    revision = current_revision(engine)
    print(revision or "none (not migrated: run `clearhouse db upgrade`)")


@ledger_app.command("verify")
def ledger_verify(as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False) -> None:
    """Recompute the hash chain, zero-sum, limits and balances; report the failures (up to 100) and exit 1 if any."""
    from clearhouse.kit.verification import report_to_operator
    from clearhouse.ledger.verify import verify

    report = transact(make_engine(get_settings().database_url, pool_size=1, must_exist=True), verify)
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
    """The console script. An operator's misconfiguration (a setting, the database, the master keys)
    is one ``error:`` line and a line saying what to check, exit 2, no traceback; a bug keeps its traceback."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError
    from sqlalchemy.exc import SQLAlchemyError

    from clearhouse.kit.crypto import CryptoConfigError

    settle_heap()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except (ValidationError, SettingsError) as error:
        if isinstance(error, ValidationError) and error.title != "Settings":
            raise
        # Said from the error alone: reading the settings again would only fail again.
        message, variables = _settings_problem(error)
        _say(message, f"check {', '.join(variables)} (docs/configuration.md)")
        sys.exit(2)
    except CryptoConfigError as error:
        if isinstance(error.__context__, SQLAlchemyError):
            # The data keys could not be read at all: the database is at fault, not the keys.
            _say_database_problem(error.__context__, schema=True)
        else:
            _say(str(error), "check CLEARHOUSE_MASTER_KEY or CLEARHOUSE_MASTER_KEY_FILE (docs/data-protection.md)")
        sys.exit(2)
    except SQLAlchemyError as error:
        # A bad URL, a server that does not answer, wrong credentials, a missing table.
        _say_database_problem(error)
        sys.exit(2)
    except ValueError as error:
        if not _raised_by_database_layer(error):
            raise
        _say_database_problem(error)
        sys.exit(2)


def _say(message: str, hint: str) -> None:
    from rich.markup import escape

    console.print(f"[red]error[/]: {escape(message)}")
    console.print(escape(hint))


def _say_database_problem(error: BaseException, *, schema: bool = False) -> None:
    from clearhouse.kit.db import MissingDatabase

    detail = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
    hint = f"check CLEARHOUSE_DATABASE_URL (now {_safe_url()})"
    if schema:
        hint += "; a database without the schema needs `clearhouse db upgrade`"
    _say(detail if isinstance(error, MissingDatabase) else f"{type(error).__name__}: {detail}", hint)


def _settings_problem(error: Exception) -> tuple[str, list[str]]:
    """One line naming each ``CLEARHOUSE_*`` variable pydantic refused, and those variables."""
    from pydantic import ValidationError

    if not isinstance(error, ValidationError):  # pydantic-settings could not decode a value
        field = re.search(r'field "(\w+)"', str(error))
        variable = f"CLEARHOUSE_{field.group(1).upper()}" if field else "the CLEARHOUSE_* variables"
        return f"{variable}: {error}", [variable]
    parts: list[str] = []
    variables: list[str] = []
    for problem in error.errors():
        field, *inside = problem["loc"] or ("",)
        variable = f"CLEARHOUSE_{str(field).upper()}" if field else "the CLEARHOUSE_* variables"
        # A validator's own words, without pydantic's "Value error, " in front.
        said = str(problem.get("ctx", {}).get("error") or problem["msg"])
        parts.append(": ".join([variable, *map(str, inside), said]))
        variables += [variable] if variable not in variables else []
    return "; ".join(parts), variables


def _raised_by_database_layer(error: BaseException) -> bool:
    """kit/db.py refuses a database URL it cannot use (unsupported, in memory, a folder it cannot
    make) with a ValueError. Any other ValueError reaching here is a bug, not a setting."""
    modules = [frame.f_globals.get("__name__", "") for frame, _ in traceback.walk_tb(error.__traceback__)]
    ours = [name for name in modules if name.startswith("clearhouse.")]
    return bool(ours) and ours[-1] == "clearhouse.kit.db"


def _safe_url() -> str:
    from sqlalchemy.engine import make_url

    url = get_settings().database_url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as "unparsable", never echoed raw
        return "<unparsable>"
