"""``clearhouse users ...``: bootstrap people from the command line (the first admin)."""

from __future__ import annotations

import getpass
import json
import sys
from typing import Annotated

import typer

from clearhouse.kit.logging import operator_console

app = typer.Typer(help="People who sign in to the console.", no_args_is_help=True)
console = operator_console()


@app.callback()
def _group() -> None:
    """People who sign in to the console (a group even with one command, so ``users create`` stays)."""


def _read_password() -> str:
    """One line from stdin (never a command-line argument, which other users can see in
    the process list); a prompt without echo when stdin is a terminal."""
    if sys.stdin.isatty():
        return getpass.getpass("Password: ")
    return sys.stdin.readline().rstrip("\r\n")


@app.command("create")
def create(
    email: Annotated[str, typer.Option(help="The person's email address (their login)")],
    role: Annotated[str, typer.Option(help="admin, operator, finance, risk_analyst, auditor, merchant_admin "
                                           "or merchant_viewer")],
    merchant_id: Annotated[str | None, typer.Option(help="The merchant, for merchant roles")] = None,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"user_id": ...}')] = False,
) -> None:
    """Create a person; the password is read from stdin (one line) and must meet the policy."""
    from clearhouse.audit.service import Actor
    from clearhouse.identity.people import service
    from clearhouse.kit.db import make_engine, transact
    from clearhouse.kit.errors import ClearhouseError
    from clearhouse.kit.settings import get_settings

    password = _read_password()
    engine = make_engine(get_settings().database_url, pool_size=1, must_exist=True)
    actor = Actor(type="system", id="cli")
    try:
        user = transact(engine, lambda s: service.create_user(s, actor, email=email, role=role,
                                                              merchant_id=merchant_id, password=password))
    except ClearhouseError as error:
        console.print(f"[red]error[/]: {error.code}: {error.detail}")
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    print(json.dumps({"user_id": user.id}) if as_json else user.id)
