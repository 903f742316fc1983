"""Card-code orders over HTTP: products and their code stock, orders, and the buyer's
delivery page (public, opened with the order's token)."""

from __future__ import annotations

import html
from typing import Annotated, Any

from fastapi import Query, Request
from fastapi.responses import HTMLResponse, Response

from clearhouse.identity.permissions import PUBLIC, actor_of, principal_of, requires
from clearhouse.kit import clock
from clearhouse.kit.api import ModeFilter, Page, PrefixRouter
from clearhouse.kit.db import transact
from clearhouse.kit.errors import refuse_nulls
from clearhouse.kit.idempotency import derived_id
from clearhouse.payments import service as payments
from clearhouse.payments.orders import service as orders
from clearhouse.payments.orders.schemas import (
    CodesUpload,
    CodesUploadOut,
    OrderCodesOut,
    OrderCreate,
    OrderOut,
    OrderStatus,
    ProductCreate,
    ProductOut,
    ProductUpdate,
)

router = PrefixRouter(tags=["orders"])
_READ = [requires("payments:read")]
_WRITE = [requires("payments:write")]

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown, not yours, or of the other mode (`product_not_found`, `order_not_found`; "
          "paying: `card_not_found` for a `card_id`, `wallet_not_found`)"},
    409: {"description": "`out_of_stock`, `product_inactive`, `duplicate_code`, `order_not_delivered`, "
          "`idempotency_key_reused`, `idempotency_key_in_use`"},
    422: {"description": "A rule is broken (`validation_error`, `payment_details_required`, `amount_too_large`, "
          "`invalid_card_number`, ...)"},
}


# ------------------------------------------------------------------------------ products


@router.post("/v1/products", status_code=201, response_model=ProductOut, responses=_ERRORS, dependencies=_WRITE)
def create_product(body: ProductCreate, request: Request) -> dict[str, Any]:
    """A product sold automatically: its price; codes are added with POST /v1/products/{id}/codes."""
    principal, actor = principal_of(request), actor_of(request)
    return transact(request.app.state.engine, lambda s: orders.create_product(
        s, actor, principal, name=body.name, amount=body.price.amount, currency=body.price.currency,
        active=body.active, merchant_id=body.merchant_id))


@router.get("/v1/products", response_model=Page[ProductOut], dependencies=_READ)
def list_products(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    starting_after: str | None = None,
    active: bool | None = None,
    livemode: ModeFilter = None,
) -> Page[Any]:
    principal = principal_of(request)
    views, more = transact(request.app.state.engine, lambda s: orders.list_products(
        s, principal, active=active, limit=limit, starting_after=starting_after, livemode=livemode))
    return Page(data=views, has_more=more, next_cursor=views[-1]["id"] if more else None)


@router.get("/v1/products/{product_id}", response_model=ProductOut, responses=_ERRORS, dependencies=_READ)
def get_product(product_id: str, request: Request) -> dict[str, Any]:
    """The product with its stock: codes available, reserved (held by unfinished orders),
    delivered and defective. Codes are never listed."""
    principal = principal_of(request)
    return transact(request.app.state.engine, lambda s: orders.get_product(s, principal, product_id))


@router.patch("/v1/products/{product_id}", response_model=ProductOut, responses=_ERRORS, dependencies=_WRITE)
def update_product(product_id: str, body: ProductUpdate, request: Request) -> dict[str, Any]:
    """Change the name, the price (new orders only) or whether it is for sale."""
    refuse_nulls(body.model_dump(exclude_unset=True), ("name", "price", "active"))
    principal, actor = principal_of(request), actor_of(request)
    return transact(request.app.state.engine, lambda s: orders.update_product(
        s, actor, principal, product_id, name=body.name, amount=body.price.amount if body.price else None,
        currency=body.price.currency if body.price else None, active=body.active))


@router.post("/v1/products/{product_id}/codes", status_code=201, response_model=CodesUploadOut, responses=_ERRORS,
             dependencies=_WRITE)
def add_codes(product_id: str, body: CodesUpload, request: Request) -> dict[str, Any]:
    """Add a batch of codes to the stock, encrypted at rest; a batch repeating a code (itself
    or the stock) is refused whole with `duplicate_code` and the indexes of the repeats."""
    principal, actor = principal_of(request), actor_of(request)
    cipher = request.app.state.cipher
    return transact(request.app.state.engine, lambda s: orders.add_codes(s, cipher, actor, principal, product_id,
                                                                         body.codes))


# ------------------------------------------------------------------------------ orders


@router.post("/v1/orders", status_code=201, response_model=OrderOut, response_model_exclude_none=False,
             responses=_ERRORS, dependencies=_WRITE)
def create_order(body: OrderCreate, request: Request) -> dict[str, Any]:
    """Buy codes: reserve, pay, deliver. Delivered: the codes are in the answer, and on the
    buyer's page (`delivery_url`). A declined payment is an order with status `failed` (201);
    a pending one (QR, bank transfer) is `awaiting_payment` with the payment's `next_action`."""
    card = None
    if body.payment.payment_details is not None and body.payment.payment_details.card is not None:
        card = body.payment.payment_details.card.model_dump(exclude_none=True)
    order = orders.OrderRequest(
        product_id=body.product_id, quantity=body.quantity, method=body.payment.method,
        customer=body.customer.model_dump(exclude_none=True) if body.customer else None, card=card)
    return orders.place_order(payments.Runtime.of(request.app), principal_of(request), actor_of(request), order,
                              order_id=derived_id(request, "ord"))


@router.get("/v1/orders", response_model=Page[OrderOut], dependencies=_READ)
def list_orders(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    starting_after: str | None = None,
    status: OrderStatus | None = None,
    product_id: str | None = None,
    livemode: ModeFilter = None,
) -> Page[Any]:
    principal = principal_of(request)
    views, more = transact(request.app.state.engine, lambda s: orders.list_orders(
        s, principal, status=status, product_id=product_id, limit=limit, starting_after=starting_after,
        livemode=livemode))
    return Page(data=views, has_more=more, next_cursor=views[-1]["id"] if more else None)


@router.get("/v1/orders/{order_id}", response_model=OrderOut, responses=_ERRORS, dependencies=_READ)
def get_order(order_id: str, request: Request) -> dict[str, Any]:
    """The order with its saga steps (each step and compensation, in order)."""
    principal = principal_of(request)
    return transact(request.app.state.engine, lambda s: orders.get_order(s, principal, order_id))


@router.get("/v1/orders/{order_id}/codes", response_model=OrderCodesOut, responses=_ERRORS, dependencies=_READ)
def get_order_codes(order_id: str, request: Request) -> dict[str, Any]:
    """The codes a delivered order sold (the same ones every time); each reading is audited."""
    principal, actor = principal_of(request), actor_of(request)
    cipher = request.app.state.cipher
    return transact(request.app.state.engine, lambda s: orders.reveal_codes(s, cipher, actor, principal, order_id))


# ------------------------------------------------------------------------------ the buyer's page

_PAGE_HEADERS = {
    "Cache-Control": "no-store",  # codes must not stay in a shared or browser cache
    "Referrer-Policy": "no-referrer",  # nor leave with the token in a Referer header
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
}

_STATUS_TEXT = {
    "reserved": "Your order is reserved and waiting for payment.",
    "awaiting_payment": "Your order is waiting for your payment.",
    "paid": "Your payment arrived; your codes are being delivered.",
    "failed": "The payment did not complete; nothing was charged and no codes were sold.",
    "refunding": "Your codes could not be delivered; your payment is being refunded.",
    "refunded": "Your codes could not be delivered; your payment was refunded.",
}


_NOT_FOUND_PAGE = (
    "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Order not found</title></head><body>"
    "<h1>Order not found</h1><p>This link does not open an order. Check that it is the whole link from your "
    "e-mail, or ask the shop for it again.</p></body></html>"
)


@router.get("/orders/{order_id}/delivery", response_class=HTMLResponse, dependencies=[requires(PUBLIC)],
            responses={404: {"description": "`order_not_found`: unknown order or wrong token"}})
def delivery_page(order_id: str, request: Request, token: str = "") -> HTMLResponse:
    """The buyer's page: the codes of a delivered order, opened with the token given when
    the order was made. Not cached; every value HTML-escaped."""
    cipher = request.app.state.cipher
    try:
        row, product_name, found = transact(request.app.state.engine,
                                            lambda s: orders.buyer_delivery(s, cipher, order_id, token))
    except orders.OrderNotFound:
        if "text/html" not in request.headers.get("accept", ""):
            raise  # a program gets the problem (404 order_not_found)
        # A buyer's browser, from a mistyped or cut link in an e-mail: a page, not a JSON document.
        return HTMLResponse(_NOT_FOUND_PAGE, status_code=404, headers=_PAGE_HEADERS)
    if found:
        items = "".join(f"<li><code>{html.escape(code)}</code></li>" for code in found)
        body = f"<p>Your codes:</p><ul>{items}</ul>"
    else:
        body = f"<p>{html.escape(_STATUS_TEXT.get(row.status, row.status))}</p>"
        if row.status in orders.WAITING:
            body += f"<p>Pay before {html.escape(clock.rfc3339(orders.payment_deadline(row)))}.</p>"
    page = (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>Order {html.escape(row.id)}</title></head><body>"
        f"<h1>{html.escape(product_name)} &times; {row.quantity}</h1>"
        f"<p>Order <code>{html.escape(row.id)}</code></p>{body}</body></html>"
    )
    return HTMLResponse(page, headers=_PAGE_HEADERS)


@router.head("/orders/{order_id}/delivery", include_in_schema=False, dependencies=[requires(PUBLIC)])
def delivery_page_head(order_id: str, request: Request, token: str = "") -> Response:
    """GET's status and headers without the page (link checkers, previews): no code is decrypted."""
    transact(request.app.state.engine, lambda s: orders.buyer_order(s, order_id, token))
    return Response(headers={**_PAGE_HEADERS, "Content-Type": "text/html; charset=utf-8"})
