"""``clearhouse sandbox ...``: act as the customer or the channel of a sandbox from the
command line (pay a QR code or a transfer, answer a card challenge, write a statement
file, send the notifications that are due)."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from clearhouse.kit.logging import operator_console

app = typer.Typer(help="The sandbox channels: pay as a customer, statements, notifications.", no_args_is_help=True)
console = operator_console()


def _connector(channel: str):
    from clearhouse.channels import connectors  # noqa: F401  (registers the built-in channels)
    from clearhouse.channels.connectors.sandbox import SANDBOXES
    from clearhouse.kit.settings import get_settings

    if channel not in SANDBOXES:
        console.print(f"[red]No sandbox channel {channel!r}[/red]; sandboxes: {', '.join(sorted(SANDBOXES))}")
        raise typer.Exit(2)
    return SANDBOXES[channel](get_settings())


@app.command()
def pay(
    reference: Annotated[str, typer.Argument(help="The attempt id, pat_... (the payment's attempts[].id)")],
    channel: Annotated[str, typer.Option(help="sandbox_alipay, sandbox_wechat or sandbox_bank")],
) -> None:
    """Pay a waiting QR code or bank transfer as the customer would."""
    from clearhouse.kit.errors import ClearhouseError

    connector = _connector(channel)
    if not hasattr(connector, "pay"):
        console.print(f"[red]{channel} has nothing to pay by hand[/red] (card challenges: `sandbox challenge`)")
        raise typer.Exit(2)
    if connector.order(reference) is None:
        console.print(f"[red]{channel} does not know the reference {reference}[/red]")
        raise typer.Exit(1)
    try:
        result = connector.pay(reference)
    except ClearhouseError as error:
        console.print(f"[red]{error.code}[/red]: {error.detail}")
        raise typer.Exit(1) from None
    console.print(f"{reference}: {result.status}. The channel's notification is queued; the worker or "
                  "`clearhouse sandbox deliver` sends it.")


@app.command()
def challenge(
    reference: Annotated[str, typer.Argument(
        help="The attempt id, pat_... (attempts[].id), of a card payment that requires action")],
    fail: Annotated[bool, typer.Option("--fail", help="Fail the challenge instead of passing it")] = False,
) -> None:
    """Answer a card payment's 3-D-Secure-like challenge as the cardholder."""
    connector = _connector("sandbox_card")
    if connector.order(reference) is None:
        console.print(f"[red]sandbox_card does not know the reference {reference}[/red]")
        raise typer.Exit(1)
    result = connector.challenge(reference, not fail)
    console.print(f"{reference}: {result.status}")


def _output_file(path: Path | None) -> Path | None:
    """A file to write, checked before any work: its folder exists, and it is not a folder itself."""
    if path is not None and (path.is_dir() or not path.parent.is_dir()):
        raise typer.BadParameter(f"{str(path)!r} is a folder" if path.is_dir()
                                 else f"the folder of {str(path)!r} does not exist")
    return path


@app.command()
def statement(
    channel: Annotated[str, typer.Option(help="The sandbox channel")],
    day: Annotated[str, typer.Option("--date", help="The statement day, YYYY-MM-DD (the channel's calendar)")],
    out: Annotated[Path | None, typer.Option(callback=_output_file,
                                             help="Write here (default: the channel's file name, here)")] = None,
) -> None:
    """Write the channel's statement file for one day, in the channel's own layout."""
    try:
        wanted = date.fromisoformat(day)
    except ValueError:
        console.print(f"[red]--date {day!r} is not YYYY-MM-DD[/red]")
        raise typer.Exit(2) from None
    statement_file = _connector(channel).statement(wanted)
    target = _output_file(out or Path(statement_file.filename))
    try:
        target.write_bytes(statement_file.content)
    except OSError as error:  # not writable: a message, not a traceback
        raise typer.BadParameter(f"cannot write {str(target)!r}: {error.strerror}", param_hint="--out") from None
    console.print(f"{target} ({statement_file.layout}, {len(statement_file.content)} bytes)")


@app.command()
def deliver() -> None:
    """Send the sandboxes' due notifications to public_base_url now."""
    from clearhouse.channels.connectors.sandbox import deliver_due_over_http
    from clearhouse.kit.settings import get_settings

    settings = get_settings()
    accepted = deliver_due_over_http(settings)
    console.print(f"{accepted} notification(s) accepted by {settings.public_base_url}")
