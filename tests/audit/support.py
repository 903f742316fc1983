"""Helpers shared by the audit tests: record events, tamper behind the application's back,
run the installed CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import text

from clearhouse.audit import service
from clearhouse.audit.service import Actor
from clearhouse.kit.db import transact

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / ".venv" / "bin" / "clearhouse"
if not CLI.exists():  # a venv somewhere else: the console script sits beside this interpreter
    CLI = Path(sys.executable).parent / "clearhouse"

ADMIN = Actor(type="user", id="usr_admin", role="admin", source_ip="203.0.113.7", request_id="req_admin_1")
FINANCE = Actor(type="user", id="usr_finance", role="finance", source_ip="203.0.113.8", request_id="req_fin_1")
SHOP_KEY = Actor(type="api_key", id="key_shop", role="merchant_key", merchant_id="mer_shop",
                 source_ip="198.51.100.1", request_id="req_shop_1")


def record(engine: Any, actor: Actor, action: str, object_type: str, object_id: str, **kw: Any) -> str:
    """One event in its own committed transaction, as an endpoint would write it."""
    return transact(engine, lambda s: service.record(s, actor, action, object_type, object_id, **kw))


def verify(engine: Any) -> service.Report:
    return transact(engine, service.verify)


@contextmanager
def behind_the_applications_back(engine: Any, backend: str) -> Iterator[Any]:
    """A connection on which the append-only triggers do not fire."""
    with engine.begin() as connection:
        if backend == "postgresql":
            # For this transaction only: the schema is shared, its triggers stay in place.
            connection.execute(text("SET LOCAL session_replication_role = replica"))
        else:
            for name in ("audit_events_no_update", "audit_events_no_delete", "audit_chain_no_delete",
                         "audit_chain_forward", "audit_chain_one_row", "audit_events_no_replace"):
                connection.execute(text(f"DROP TRIGGER {name}"))
        yield connection


def _cli_has_audit() -> bool:
    from clearhouse.cli import app

    return any(group.name == "audit" for group in app.registered_groups)


def run_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``clearhouse audit verify`` in its own process, against the test database.

    Until cli.py mounts the audit commands (``app.add_typer(audit_commands.app,
    name="audit")``), the same typer app is run on its own in a fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARHOUSE_")}
    env["CLEARHOUSE_DATABASE_URL"] = database_url
    if _cli_has_audit():
        command = [str(CLI), "audit", "verify"]
    else:
        command = [sys.executable, "-c", "from clearhouse.audit.commands import app; app()", "verify"]
    return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=120)


def cli_report(database_url: str) -> tuple[int, dict[str, Any]]:
    result = run_cli(database_url, "--json")
    assert result.stdout.strip(), result.stderr
    return result.returncode, json.loads(result.stdout)
