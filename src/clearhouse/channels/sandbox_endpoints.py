"""The sandbox channels' hosted pages: where a customer pays a QR code or a bank transfer
and passes (or fails) the card challenge. They stand in for the wallet app, the bank's
online banking and the issuer's 3-D Secure page, so they are public (the customer has no
key) and every value shown is HTML-escaped: references and descriptions come from
merchants' requests."""

from __future__ import annotations

import html
from string import Template
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from clearhouse.channels.connectors.sandbox import SandboxConnector, major_units
from clearhouse.channels.protocol import APPROVED, AUTHORIZED, PENDING, REQUIRES_ACTION
from clearhouse.identity.permissions import PUBLIC, requires
from clearhouse.kit.api import PrefixRouter
from clearhouse.kit.errors import ClearhouseError

router = PrefixRouter(prefix="/sandbox", include_in_schema=False, dependencies=[requires(PUBLIC)])

CARD = "sandbox_card"
TITLES = {"sandbox_alipay": "Alipay sandbox", "sandbox_wechat": "WeChat Pay sandbox", "sandbox_bank": "Bank sandbox",
          CARD: "Card issuer sandbox"}
SECURITY_HEADERS = {
    # The page needs its own inline style and posts only to itself.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}

_PAGE = Template("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem;color:#222}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.3rem 1rem}dt{color:#666}dd{margin:0}
button{font-size:1.1rem;padding:.6rem 1.4rem;margin-right:.6rem}.note{color:#666;font-size:.9rem}</style>
</head><body><main><h1>$title</h1>
$body
<p class="note">Sandbox: no real money moves. The channel notifies the merchant's platform of the outcome.</p>
</main></body></html>
""")


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _page(title: str, body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.substitute(title=_e(title), body=body), status_code=status_code,
                        headers=SECURITY_HEADERS)


def _not_found(what: str) -> HTMLResponse:
    return _page("Not found", f"<p>{_e(what)}</p>", 404)


def _failure(error: ClearhouseError) -> HTMLResponse:
    return _page("The channel could not do this", f"<p>{_e(error.detail)}</p><p class=\"note\">{_e(error.code)}</p>",
                 error.status if error.status >= 400 else 502)


def _details(order: dict[str, Any], channel: str) -> str:
    rows = [("Amount", f"{major_units(order['amount'], order['currency'])} {order['currency']}"),
            ("Description", order["details"].get("description") or "-"),
            ("Reference", order["reference"]),
            ("Status", order["status"].replace("_", " "))]
    action = order.get("next_action") or {}
    if channel == "sandbox_bank" and order["status"] == PENDING:
        rows += [("Pay to", action.get("account_name")),
                 ("IBAN" if "iban" in action else "Account number", action.get("iban") or action.get("account_number")),
                 ("BIC" if "bic" in action else "Sort code", action.get("bic") or action.get("sort_code")),
                 ("Payment reference", action.get("reference_code"))]
    if action.get("expires_at"):
        rows.append(("Pay before", action["expires_at"]))
    items = "".join(f"<dt>{_e(label)}</dt><dd>{_e(value)}</dd>" for label, value in rows)
    return f"<dl>{items}</dl>"


def _connector(request: Request, channel: str) -> SandboxConnector | None:
    channels = request.app.state.channels
    if channel not in TITLES or channel not in channels:
        return None
    connector = channels[channel]
    return connector if isinstance(connector, SandboxConnector) else None


async def _form(request: Request) -> dict[str, str]:
    """An HTML form's fields (urlencoded); anything else reads as no fields."""
    try:
        parsed = parse_qs((await request.body()).decode("utf-8"), max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {key: values[0] for key, values in parsed.items() if values}


# --------------------------------------------------------------------------- QR code and bank transfer


@router.get("/{channel}/pay/{reference}")
async def pay_page(request: Request, channel: str, reference: str) -> Response:
    """The order the customer is about to pay, with a button that pays it."""
    connector = _connector(request, channel)
    if connector is None or not hasattr(connector, "pay"):
        return _not_found(f"There is no sandbox pay page for {channel}.")
    order = await run_in_threadpool(connector.order, reference)
    if order is None:
        return _not_found("This payment is unknown to the channel.")
    body = _details(order, channel)
    if order["status"] in (REQUIRES_ACTION, PENDING):
        label = "Send the transfer" if channel == "sandbox_bank" else "Pay"
        body += f'<form method="post"><button type="submit">{_e(label)}</button></form>'
    else:
        body += f"<p>This payment is {_e(order['status'].replace('_', ' '))}; there is nothing to pay.</p>"
    return _page(TITLES[channel], body)


@router.post("/{channel}/pay/{reference}")
async def pay(request: Request, channel: str, reference: str) -> Response:
    """The customer pays: the channel books it and queues its signed notification."""
    connector = _connector(request, channel)
    if connector is None or not hasattr(connector, "pay"):
        return _not_found(f"There is no sandbox pay page for {channel}.")
    if await run_in_threadpool(connector.order, reference) is None:
        return _not_found("This payment is unknown to the channel.")
    try:
        await run_in_threadpool(connector.pay, reference)  # type: ignore[attr-defined]
    except ClearhouseError as error:
        return _failure(error)
    return RedirectResponse(request.url.path, status_code=303, headers=SECURITY_HEADERS)


# --------------------------------------------------------------------------- card challenge


async def _challenged_order(request: Request, channel: str, reference: str) -> dict[str, Any] | Response:
    """The card payment a challenge page is about, or the 404 page (another channel, an unknown payment)."""
    if channel != CARD:
        return _not_found(f"There is no sandbox challenge page for {channel}.")
    connector = _connector(request, CARD)
    order = None if connector is None else await run_in_threadpool(connector.order, reference)
    if order is None:
        return _not_found("This payment is unknown to the card issuer.")
    return order


def _no_challenge(order: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    return _page(TITLES[CARD], _details(order, CARD) + f"<p>This payment is "
                 f"{_e(order['status'].replace('_', ' '))}; there is no challenge to answer.</p>", status_code)


@router.get("/{channel}/challenge/{reference}")
async def challenge_page(request: Request, channel: str, reference: str) -> Response:
    """The issuer's challenge (3-D Secure): the customer passes or fails it."""
    order = await _challenged_order(request, channel, reference)
    if isinstance(order, Response):
        return order
    body = _details(order, CARD)
    if order["status"] == REQUIRES_ACTION:
        body += ('<p>Confirm this payment as the cardholder would in their bank\'s app.</p><form method="post">'
                 '<button type="submit" name="outcome" value="pass">Pass the challenge</button>'
                 '<button type="submit" name="outcome" value="fail">Fail the challenge</button></form>')
        return _page(TITLES[CARD], body)
    return _no_challenge(order)


@router.post("/{channel}/challenge/{reference}")
async def answer_challenge(request: Request, channel: str, reference: str) -> Response:
    order = await _challenged_order(request, channel, reference)
    if isinstance(order, Response):
        return order
    if order["status"] != REQUIRES_ACTION:  # passed, failed or never challenged: nothing to answer
        return _no_challenge(order, 409)
    connector = _connector(request, CARD)
    outcome = (await _form(request)).get("outcome")
    if outcome not in ("pass", "fail"):
        return _page(TITLES[CARD], "<p>Choose to pass or to fail the challenge.</p>" + _details(order, CARD), 422)
    try:
        result = await run_in_threadpool(connector.challenge, reference, outcome == "pass")  # type: ignore[attr-defined]
    except ClearhouseError as error:
        return _failure(error)
    passed = result.status in (APPROVED, AUTHORIZED)
    order = await run_in_threadpool(connector.order, reference) or order
    body = _details(order, CARD) + f"<p>{'Challenge passed' if passed else 'Challenge failed'}.</p>"
    return_url = str(order["details"].get("return_url") or "")
    if return_url.startswith(("https://", "http://")):
        body += f'<p><a href="{_e(return_url)}">Return to the shop</a></p>'
    return _page(TITLES[CARD], body)
