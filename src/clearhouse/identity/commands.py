"""``clearhouse keys ...`` and ``clearhouse merchants ...``: bootstrapping and key operations.

These run with the operator's access to the machine (database URL and master key), so
they need no approval; each is recorded in the audit trail as the ``cli`` actor.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, NoReturn

import typer
from rich.markup import escape

from clearhouse.audit.service import Actor
from clearhouse.identity.permissions import PERMISSIONS
from clearhouse.kit.logging import operator_console

keys_app = typer.Typer(help="API keys and the master keys that protect stored secrets.", no_args_is_help=True)
merchants_app = typer.Typer(help="Merchants (tenants).", no_args_is_help=True)
console = operator_console()
CLI_ACTOR = Actor(type="system", id="cli")


def _open() -> tuple[object, object]:
    from clearhouse.kit.crypto import FieldCipher, load_master_keys
    from clearhouse.kit.db import make_engine
    from clearhouse.kit.settings import get_settings

    settings = get_settings()
    engine = make_engine(settings.database_url, pool_size=1, must_exist=True)
    return engine, FieldCipher.open(engine, load_master_keys(settings))


def _refuse(message: str) -> NoReturn:
    """What the API would answer 422 to: one ``error:`` line, exit 2, before anything is opened."""
    console.print(f"[red]error[/]: {escape(message)}")
    raise typer.Exit(2)


def _utc(value: datetime | None) -> datetime | None:
    """A time given without an offset is UTC; one with an offset is converted to UTC."""
    if value is None:
        return None
    try:
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except OverflowError:
        _refuse(f"--expires-at {value.isoformat()} is past the year 9999 once in UTC")


def _scopes(raw: str | None) -> list[str] | None:
    if raw is None:
        return None
    scopes = [s.strip() for s in raw.split(",") if s.strip()]
    if not scopes:  # a key that may do nothing is a mistake, not a request (the API wants one scope or more)
        _refuse(f"--scopes names no scope; give at least one of: {', '.join(PERMISSIONS)}")
    unknown = sorted(set(scopes) - set(PERMISSIONS))
    if unknown:
        _refuse(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(PERMISSIONS)}")
    return scopes


@keys_app.command("create")
def keys_create(
    platform: Annotated[bool, typer.Option("--platform", help="A platform key for the operator's own systems")] = False,
    merchant_id: Annotated[str | None, typer.Option(help="A merchant's key (test unless --live)")] = None,
    live: Annotated[bool, typer.Option("--live", help="A live merchant key")] = False,
    scopes: Annotated[str | None, typer.Option(help="Comma-separated scopes (default: all the key may hold)")] = None,
    name: Annotated[str, typer.Option(help="A label, at most 200 characters")] = "",
    expires_at: Annotated[datetime | None, typer.Option(
        help="Expiry: RFC 3339, converted to UTC; a time without an offset is UTC")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print {api_key_id, api_secret} as JSON")] = False,
) -> None:
    """Create an API key and print its secret (shown this once)."""
    from clearhouse.identity import service
    from clearhouse.kit.db import transact
    from clearhouse.kit.errors import ClearhouseError

    # The rules of POST /v1/api_keys and POST /v1/merchants/{id}/api_keys, checked before anything is opened.
    if platform == (merchant_id is not None):
        _refuse("give exactly one of --platform or --merchant-id")
    if live and platform:
        _refuse("--live is for a merchant key (with --merchant-id); a platform key has no mode")
    if len(name) > 200:
        _refuse(f"--name is at most 200 characters, not {len(name)}")
    mode = "platform" if platform else ("live" if live else "test")
    chosen = _scopes(scopes)
    expiry = _utc(expires_at)
    engine, cipher = _open()
    try:
        if merchant_id is not None:
            transact(engine, lambda s: service.get_merchant(s, None, merchant_id))
        row, secret = transact(engine, lambda s: service.create_api_key(
            s, cipher, CLI_ACTOR, merchant_id=merchant_id, mode=mode, name=name, scopes=chosen,
            expires_at=expiry, created_by="cli"))
    except ClearhouseError as error:
        console.print(f"[red]error[/]: {error.code}: {error.detail}")
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps({"api_key_id": row.id, "api_secret": secret}))
    else:
        console.print(f"API key [bold]{row.id}[/] ({mode}); secret, shown once:")
        print(secret)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The API key id (ck_...)")]) -> None:
    """Revoke an API key at once, in every server process (a leaked secret)."""
    from clearhouse.identity import service
    from clearhouse.identity.permissions import Principal
    from clearhouse.kit.db import make_engine, transact
    from clearhouse.kit.errors import ClearhouseError, NotFound
    from clearhouse.kit.settings import get_settings

    engine = make_engine(get_settings().database_url, pool_size=1, must_exist=True)
    # The operator at the machine sees every tenant: a platform principal with no permissions
    # beyond this one command.
    operator = Principal(kind="user", id="cli", role="admin", merchant_id=None, permissions=frozenset())

    def work(session: object) -> object:
        key = service.find_key(session, key_id)
        if key is None:
            raise NotFound(f"no API key {key_id}")
        return service.revoke_api_key(session, CLI_ACTOR, operator, key.merchant_id, key_id)

    try:
        row = transact(engine, work)
    except ClearhouseError as error:
        console.print(f"[red]error[/]: {error.code}: {error.detail}")
        raise typer.Exit(2) from None
    console.print(f"API key [bold]{row.id}[/] revoked")


@keys_app.command("rotate")
def keys_rotate(
    data_key: Annotated[bool, typer.Option("--data-key", help="Also start a new data key for new ciphertexts")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Add a new master key to the key file and re-wrap every data key under it (no downtime)."""
    from clearhouse.kit.crypto import rotate_data_key, rotate_master_key
    from clearhouse.kit.settings import get_settings

    engine, cipher = _open()
    report = rotate_master_key(engine, get_settings())
    if data_key:
        report["data_key"] = rotate_data_key(engine, cipher)
    if as_json:
        print(json.dumps(report, default=str))
    else:
        console.print(f"master key now [bold]{report['master_key_id']}[/]; "
                      f"{report['data_keys_rewrapped']} data keys re-wrapped")


@merchants_app.command("create")
def merchants_create(
    name: Annotated[str, typer.Option(help="The merchant's name")],
    as_json: Annotated[bool, typer.Option("--json", help="Print merchant_id, api_key_id, api_secret as JSON")] = False,
) -> None:
    """Create a merchant with one test API key, and print the key's secret (shown this once)."""
    from clearhouse.identity import service
    from clearhouse.kit.db import transact

    if not 1 <= len(name.strip()) <= 200:
        console.print("[red]error[/]: --name must be 1 to 200 characters")
        raise typer.Exit(2)
    engine, cipher = _open()

    def work(session: object) -> tuple[str, str, str]:
        merchant = service.create_merchant(session, CLI_ACTOR, name=name.strip())
        key, secret = service.create_api_key(session, cipher, CLI_ACTOR, merchant_id=merchant.id, mode="test",
                                             created_by="cli")
        return merchant.id, key.id, secret

    merchant_id, key_id, secret = transact(engine, work)
    if as_json:
        print(json.dumps({"merchant_id": merchant_id, "api_key_id": key_id, "api_secret": secret}))
    else:
        console.print(f"merchant [bold]{merchant_id}[/] with test key [bold]{key_id}[/]; secret, shown once:")
        print(secret)
