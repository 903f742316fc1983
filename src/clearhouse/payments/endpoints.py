"""Payments HTTP endpoints: payments, captures, cancels, refunds, fee plans, wallets, and
the channels' inbound notifications."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, Request, Response
from sqlalchemy.orm import Session

from clearhouse.identity.permissions import PUBLIC, actor_of, principal_of, requires
from clearhouse.kit.api import ModeFilter, Page, PrefixRouter
from clearhouse.kit.db import transact
from clearhouse.kit.errors import NotFound
from clearhouse.kit.idempotency import derived_id
from clearhouse.payments import fees, wallets
from clearhouse.payments import service as payments
from clearhouse.payments.schemas import (
    CancelIn,
    CaptureIn,
    FeePlanIn,
    FeePlanOut,
    PaymentCreate,
    PaymentOut,
    PaymentStatus,
    RefundCreate,
    RefundOut,
    TopUpCreate,
    WalletCreate,
    WalletOut,
)

router = PrefixRouter(prefix="/v1", tags=["payments"])
_READ = [requires("payments:read")]
_WRITE = [requires("payments:write")]

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown, not yours, or of the other mode (`payment_not_found`, `refund_not_found`, "
          "`wallet_not_found`, `card_not_found` for a `card_id`)"},
    409: {"description": "Conflict with the payment's state (`payment_state_conflict`, `refund_exceeds_captured`, "
          "`capture_exceeds_authorized`, `channel_not_answering`, `outcome_unconfirmed`, `idempotency_key_reused`, "
          "`idempotency_key_in_use`)"},
    422: {"description": "A rule is broken (`validation_error`, `payment_details_required`, "
          "`currency_not_supported`, `capture_method_not_supported`, `no_channel_supports_payment`, "
          "`invalid_card_number`, ...)"},
}


def _runtime(request: Request) -> payments.Runtime:
    return payments.Runtime.of(request.app)


def _new_payment(body: PaymentCreate) -> payments.NewPayment:
    card = None
    if body.payment_details is not None and body.payment_details.card is not None:
        card = body.payment_details.card.model_dump(exclude_none=True)
    return payments.NewPayment(
        amount=body.amount, currency=body.currency, method=body.method, capture_method=body.capture_method,
        merchant_id=body.merchant_id, merchant_order_id=body.merchant_order_id, description=body.description,
        customer=body.customer.model_dump(exclude_none=True) if body.customer else None, card=card,
        return_url=body.return_url, metadata=body.metadata,
    )


@router.post("/payments", status_code=201, response_model=PaymentOut, responses=_ERRORS, dependencies=_WRITE)
def create_payment(body: PaymentCreate, request: Request) -> dict[str, Any]:
    """Take a payment. A declined card is a payment with status `failed` (201), not an error."""
    return payments.create_payment(_runtime(request), principal_of(request), actor_of(request), _new_payment(body),
                                   payment_id=derived_id(request, "pay"))


@router.get("/payments", response_model=Page[PaymentOut], dependencies=_READ)
def list_payments(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    starting_after: str | None = None,
    status: PaymentStatus | None = None,
    merchant_id: str | None = None,
    merchant_order_id: str | None = None,
    livemode: ModeFilter = None,
) -> Page[Any]:
    principal = principal_of(request)
    views, more = transact(request.app.state.engine, lambda s: payments.list_payments(
        s, principal, merchant_id=merchant_id, status=status, merchant_order_id=merchant_order_id, limit=limit,
        starting_after=starting_after, livemode=livemode))
    return Page(data=views, has_more=more, next_cursor=views[-1]["id"] if more else None)


@router.get("/payments/{payment_id}", response_model=PaymentOut, responses=_ERRORS, dependencies=_READ)
def get_payment(payment_id: str, request: Request) -> dict[str, Any]:
    """The payment with its attempts (each channel tried, and why) and its timeline."""
    principal = principal_of(request)
    return transact(request.app.state.engine, lambda s: payments.get_payment(s, principal, payment_id))


@router.post("/payments/{payment_id}/capture", response_model=PaymentOut, responses=_ERRORS, dependencies=_WRITE)
def capture_payment(payment_id: str, request: Request, body: CaptureIn | None = None) -> dict[str, Any]:
    """Capture a held authorization, fully or partly; the rest of the hold is released."""
    return payments.capture(_runtime(request), principal_of(request), payment_id, body.amount if body else None)


@router.post("/payments/{payment_id}/cancel", response_model=PaymentOut, responses=_ERRORS, dependencies=_WRITE)
def cancel_payment(payment_id: str, request: Request, body: CancelIn | None = None) -> dict[str, Any]:
    """Cancel a payment not yet completed, or release a held authorization."""
    return payments.cancel(_runtime(request), principal_of(request), payment_id, body.reason if body else None)


@router.post("/payments/{payment_id}/refunds", status_code=201, response_model=RefundOut, responses=_ERRORS,
             dependencies=_WRITE)
def refund_payment(payment_id: str, request: Request, body: RefundCreate | None = None) -> dict[str, Any]:
    """Refund all or part of what was captured; refunds never add up to more than that."""
    body = body or RefundCreate()
    return payments.refund(_runtime(request), principal_of(request), payment_id, body.amount, body.reason,
                           refund_id=derived_id(request, "re"))


@router.get("/payments/{payment_id}/refunds", response_model=Page[RefundOut], responses=_ERRORS,
            dependencies=_READ)
def list_refunds(
    payment_id: str,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    starting_after: str | None = None,
) -> Page[Any]:
    """The payment's refunds, newest first."""
    principal = principal_of(request)
    views, more = transact(request.app.state.engine, lambda s: payments.list_refunds(
        s, principal, payment_id, limit=limit, starting_after=starting_after))
    return Page(data=views, has_more=more, next_cursor=views[-1]["id"] if more else None)


@router.get("/refunds/{refund_id}", response_model=RefundOut, responses=_ERRORS, dependencies=_READ)
def get_refund(refund_id: str, request: Request) -> dict[str, Any]:
    principal = principal_of(request)
    return transact(request.app.state.engine, lambda s: payments.get_refund(s, principal, refund_id))


# ------------------------------------------------------------------------------ notifications


@router.post("/channels/{channel}/notifications", tags=["channels"], dependencies=[requires(PUBLIC)],
             responses={400: {"description": "`notification_invalid`: signature or shape refused"},
                        404: {"description": "`unknown_channel`"}})
async def channel_notification(channel: str, request: Request) -> Response:
    """Inbound from a channel, signed by the channel (not by an API key): verified, stored once
    per (channel, notification id), applied idempotently; the reply is what the channel expects."""
    from starlette.concurrency import run_in_threadpool

    body = await request.body()
    headers = {k.lower(): v for k, v in request.headers.items()}
    reply = await run_in_threadpool(payments.receive_notification, _runtime(request), channel, headers, body)
    return Response(content=reply.body, status_code=reply.status_code, media_type=reply.content_type)


# ------------------------------------------------------------------------------ fee plans


def _plan_owner(request: Request, merchant_id: str) -> str | None:
    principal = principal_of(request)
    if merchant_id == "default":
        if principal.merchant_id is not None:
            raise NotFound("no fee plan default")
        return None
    if not principal.sees(merchant_id):
        raise NotFound(f"no merchant {merchant_id}")
    return merchant_id


@router.get("/fee_plans/{merchant_id}", response_model=FeePlanOut, tags=["merchants"],
            dependencies=[requires("merchants:read")])
def get_fee_plan(merchant_id: str, request: Request) -> FeePlanOut:
    """A merchant's fee rules (`default`: the platform's, used where a merchant has none)."""
    owner = _plan_owner(request, merchant_id)

    def work(session: Session) -> list[fees.Rule]:
        if owner is not None:
            from clearhouse.identity import service as identity

            identity.get_merchant(session, principal_of(request), owner)
        return fees.plan_of(session, owner)

    rules = transact(request.app.state.engine, work)
    return FeePlanOut(merchant_id=owner, rules=[r.as_dict() for r in rules])


@router.put("/fee_plans/{merchant_id}", response_model=FeePlanOut, tags=["merchants"],
            dependencies=[requires("merchants:write")])
def put_fee_plan(merchant_id: str, body: FeePlanIn, request: Request) -> FeePlanOut:
    """Replace a merchant's fee rules. New payments use them; past payments keep theirs."""
    from clearhouse.audit import service as audit
    from clearhouse.identity import service as identity

    owner = _plan_owner(request, merchant_id)
    actor = actor_of(request)

    def work(session: Session) -> list[fees.Rule]:
        if owner is not None:
            identity.get_merchant(session, principal_of(request), owner)
        rules = fees.replace_plan(session, owner, [r.model_dump() for r in body.rules])
        audit.record(session, actor, "payments.fee_plan.replace", "fee_plan", owner or "default",
                     merchant_id=owner, changes={"rules": [r.as_dict() for r in rules]})
        return rules

    rules = transact(request.app.state.engine, work)
    return FeePlanOut(merchant_id=owner, rules=[r.as_dict() for r in rules])


# ------------------------------------------------------------------------------ wallets


@router.post("/wallets", status_code=201, response_model=WalletOut, tags=["wallets"], dependencies=_WRITE)
def open_wallet(body: WalletCreate, request: Request, response: Response) -> dict[str, Any]:
    """Open a customer's wallet in a currency; an existing one is returned with 200."""
    principal = principal_of(request)

    def work(session: Session) -> tuple[dict[str, Any], bool]:
        row, created = wallets.open_wallet(session, principal, customer_id=body.customer_id,
                                           currency=body.currency, merchant_id=body.merchant_id)
        return wallets.wallet_view(session, row), created

    view, created = transact(request.app.state.engine, work, retry_integrity=True)
    if not created:
        response.status_code = 200
    return view


@router.get("/wallets", response_model=Page[WalletOut], tags=["wallets"], dependencies=_READ)
def list_wallets(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    starting_after: str | None = None,
    customer_id: str | None = None,
    merchant_id: str | None = None,
    livemode: ModeFilter = None,
) -> Page[Any]:
    """Wallets, newest first, with their balances; ``customer_id`` filters."""
    principal = principal_of(request)
    views, more = transact(request.app.state.engine, lambda s: wallets.list_wallets(
        s, principal, customer_id=customer_id, merchant_id=merchant_id, limit=limit, starting_after=starting_after,
        livemode=livemode))
    return Page(data=views, has_more=more, next_cursor=views[-1]["id"] if more else None)


@router.get("/wallets/{wallet_id}", response_model=WalletOut, tags=["wallets"], responses=_ERRORS,
            dependencies=_READ)
def get_wallet(wallet_id: str, request: Request) -> dict[str, Any]:
    """The wallet and its balance, read from the ledger."""
    principal = principal_of(request)
    return transact(request.app.state.engine,
                    lambda s: wallets.wallet_view(s, wallets.wallet_row(s, principal, wallet_id)))


@router.post("/wallets/{wallet_id}/top_ups", status_code=201, response_model=PaymentOut, tags=["wallets"],
             responses=_ERRORS, dependencies=_WRITE)
def top_up_wallet(wallet_id: str, body: TopUpCreate, request: Request) -> dict[str, Any]:
    """Add money to a wallet: a payment by card, transfer or QR that credits the wallet when it succeeds."""
    principal = principal_of(request)
    wallet = transact(request.app.state.engine, lambda s: wallets.wallet_row(s, principal, wallet_id))
    card = None
    if body.payment_details is not None and body.payment_details.card is not None:
        card = body.payment_details.card.model_dump(exclude_none=True)
    new = payments.NewPayment(
        amount=body.amount, currency=wallet.currency, method=body.method, merchant_id=wallet.merchant_id,
        customer={"id": wallet.customer_id}, card=card, return_url=body.return_url, metadata=body.metadata,
        purpose="wallet_top_up", wallet_id=wallet.id, description=f"wallet top-up {wallet.id}",
        livemode=wallet.livemode,
    )
    return payments.create_payment(_runtime(request), principal, actor_of(request), new,
                                   payment_id=derived_id(request, "pay"))
