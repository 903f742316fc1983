"""Payments: create, drive through the channels, capture, cancel, refund, and apply what the
channels tell us later (notifications, status queries).

A payment spans several short transactions with channel calls between them, never inside
them: a channel may take seconds, and a row lock held that long would stall everyone.
The order that makes this safe:

1. One transaction opens the payment and its first attempt (``started``) and commits.
2. The channel is called with the attempt id as its idempotency reference.
3. One transaction applies the answer: the payment's new status, its ledger entry, its
   timeline event and its webhook event, all together or none.

A crash between 2 and 3 leaves a ``started`` attempt; the worker asks the channel
(``query``) and applies the answer through the same function, so nobody is charged twice.
A timeout is settled the same way before any other channel is tried: only when the first
channel says it never saw the reference is the next candidate called.

A card payment is two durable transactions (steps 1 and 3) and about twenty statements:
the hot statements are built once at import (``_run``), the payment's row and the view
published in step 3 are rendered from what was just written instead of being read back,
and a payment's timeline events are inserted together.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import orjson
import structlog
from sqlalchemy import Row, bindparam, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from clearhouse.audit import service as audit
from clearhouse.channels import protocol
from clearhouse.channels.protocol import (
    ChannelError,
    ChannelResult,
    ChannelTimeout,
    ChannelUnavailable,
    ChargeRequest,
    Connector,
)
from clearhouse.identity import service as identity
from clearhouse.identity.permissions import Principal
from clearhouse.kit import clock
from clearhouse.kit.canonical import canonical_json
from clearhouse.kit.db import WrittenRow, group_transact, is_postgresql, newest_first, transact
from clearhouse.kit.ids import new_id, new_ids
from clearhouse.kit.money import share
from clearhouse.ledger import errors as ledger_errors
from clearhouse.ledger import service as ledger
from clearhouse.ledger.chart import account_for
from clearhouse.payments import errors, fees, postings, state
from clearhouse.payments.models import ChannelNotification, Payment, PaymentAttempt, PaymentEvent, Refund, Wallet
from clearhouse.vault import service as vault
from clearhouse.webhooks import service as webhooks

log = structlog.get_logger(__name__)

payments = Payment.__table__
events = PaymentEvent.__table__
attempts = PaymentAttempt.__table__
refunds = Refund.__table__
notifications = ChannelNotification.__table__
wallets = Wallet.__table__

WALLET = "wallet"
"""The internal channel of the Clearhouse e-wallet: a ledger transfer, no outside system."""

# What each channel answer means for the attempt and for the payment.
_ATTEMPT_STATUS = {
    protocol.APPROVED: "approved", protocol.AUTHORIZED: "authorized", protocol.DECLINED: "declined",
    protocol.REQUIRES_ACTION: "requires_action", protocol.PENDING: "pending", protocol.FAILED: "failed",
    protocol.CANCELED: "canceled", protocol.NOT_FOUND: "not_found",
}
_PAYMENT_STATUS = {
    protocol.APPROVED: state.SUCCEEDED, protocol.AUTHORIZED: state.REQUIRES_CAPTURE,
    protocol.DECLINED: state.FAILED, protocol.FAILED: state.FAILED, protocol.REQUIRES_ACTION: state.REQUIRES_ACTION,
    protocol.PENDING: state.PROCESSING, protocol.CANCELED: state.CANCELED,
}
_FINAL_ATTEMPT = frozenset({"approved", "authorized", "declined", "failed", "canceled"})

# The statements every payment runs, built once: SQLAlchemy spends more building and
# caching a statement than the database spends running it. Bind names differ from column
# names, which an UPDATE's SET takes from the parameters.
_PAYMENT_BY_ID = select(payments).where(payments.c.id == bindparam("the_id"))
_PAYMENT_BY_ID_LOCKED = _PAYMENT_BY_ID.with_for_update()  # SQLite renders no FOR UPDATE (BEGIN IMMEDIATE)
_PAYMENT_EXISTS = select(payments.c.id).where(payments.c.id == bindparam("the_id"))
_ATTEMPT_BY_ID = select(attempts).where(attempts.c.id == bindparam("the_id"))
_ATTEMPTS_OF = select(attempts).where(attempts.c.payment_id == bindparam("the_id")).order_by(attempts.c.seq)
_INSERT_PAYMENT = insert(payments)
_INSERT_ATTEMPT = insert(attempts)
_INSERT_EVENTS = insert(events)
_UPDATE_PAYMENT = update(payments).where(payments.c.id == bindparam("the_id"))
_UPDATE_OPEN_ATTEMPT = update(attempts).where(attempts.c.id == bindparam("the_id"),
                                              attempts.c.status.not_in(sorted(_FINAL_ATTEMPT)))


def _run(session: Session, statement: Any, params: Any) -> Any:
    """A prebuilt statement on the session's connection (the ORM session adds nothing here)."""
    return session.connection().execute(statement, params)


@dataclass
class Runtime:
    """What a payment flow needs besides the caller: the database, the channels, the router."""

    engine: Any
    channels: protocol.ChannelSet
    router: Any
    cipher: Any
    settings: Any

    @classmethod
    def of(cls, app: Any) -> Runtime:
        s = app.state
        return cls(engine=s.engine, channels=s.channels, router=s.router, cipher=s.cipher, settings=s.settings)


def _tx(rt: Runtime, work: Callable[[Session], Any]) -> Any:
    """One transaction of a payment flow, its durable commit shared with the process's
    concurrent payments (``kit.db.group_transact``: one disk wait per group, not per payment).
    A unique-key race runs it again: the first payments of a currency open the same ledger
    accounts at once (``ledger.chart``), and two requests with one derived id meet on the
    primary key."""
    return group_transact(rt.engine, work, retry_integrity=True)


# ------------------------------------------------------------------------------ reading


def _first(session: Session, query: Any, *, lock: bool) -> Row | None:
    """The first row; with ``lock``, held until commit (PostgreSQL ``FOR UPDATE``; SQLite's
    ``BEGIN IMMEDIATE`` already serializes writers). Every path locks the payment before its
    refunds, so two writers never wait on each other in opposite orders."""
    if lock and is_postgresql(session):
        query = query.with_for_update()
    return session.execute(query).first()


def _payment(session: Session, payment_id: str, *, lock: bool = False) -> Row:
    """The payment's row; with ``lock``, held until commit (see ``_first``)."""
    row = _run(session, _PAYMENT_BY_ID_LOCKED if lock else _PAYMENT_BY_ID, {"the_id": payment_id}).first()
    if row is None:
        raise errors.PaymentNotFound(f"no payment {payment_id}")
    return row


def get_payment_row(session: Session, principal: Principal | None, payment_id: str) -> Row:
    row = _payment(session, payment_id)
    if principal is not None and not principal.sees_object(row.merchant_id, row.livemode):
        raise errors.PaymentNotFound(f"no payment {payment_id}")
    return row


def _attempt_views(session: Session, payment_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {pid: [] for pid in payment_ids}
    if not payment_ids:
        return found
    if len(payment_ids) == 1:
        rows = _run(session, _ATTEMPTS_OF, {"the_id": payment_ids[0]}).all()
    else:
        rows = session.execute(
            select(attempts).where(attempts.c.payment_id.in_(payment_ids)).order_by(attempts.c.payment_id,
                                                                                    attempts.c.seq)
        ).all()
    for a in rows:
        found[a.payment_id].append(_attempt_view(a))
    return found


def _attempt_view(a: Any) -> dict[str, Any]:
    return {
        "id": a.id, "channel": a.channel, "status": a.status, "reason": a.reason,
        "decline_code": a.decline_code, "message": a.message, "latency_ms": a.latency_ms,
        "created_at": a.created_at, "finished_at": a.finished_at,
    }


def _net_amount(row: Row) -> int:
    """What the merchant nets: of a succeeded payment, what was captured less the fee; of one that
    failed or was canceled, nothing; of one still under way, the amount less the fee it will bear."""
    if row.status == state.SUCCEEDED:
        return row.amount_captured - row.fee_amount
    if row.status in (state.FAILED, state.CANCELED):
        return 0
    return row.amount - row.fee_amount


def payment_view(row: Row, attempt_views: list[dict[str, Any]], timeline: list[dict[str, Any]] | None = None,
                 ) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": row.id, "object": "payment", "livemode": row.livemode, "merchant_id": row.merchant_id,
        "status": row.status,
        "amount": row.amount, "amount_captured": row.amount_captured, "amount_refunded": row.amount_refunded,
        "currency": row.currency, "method": row.method, "capture_method": row.capture_method,
        "purpose": row.purpose, "channel": row.channel, "merchant_order_id": row.merchant_order_id,
        "description": row.description, "customer": orjson.loads(row.customer_json), "card_id": row.card_id,
        "wallet_id": row.wallet_id, "return_url": row.return_url, "metadata": orjson.loads(row.metadata_json),
        "fees": orjson.loads(row.fees_json), "net_amount": _net_amount(row),
        "next_action": orjson.loads(row.next_action_json) if row.next_action_json else None,
        "failure_code": row.failure_code, "failure_message": row.failure_message,
        "authorization_expires_at": row.authorization_expires_at, "ledger_transfer_id": row.ledger_entry_id,
        "risk": None, "attempts": attempt_views, "created_at": row.created_at, "updated_at": row.updated_at,
    }
    if timeline is not None:
        view["timeline"] = timeline
    return view


def timeline_of(session: Session, payment_id: str) -> list[dict[str, Any]]:
    rows = session.execute(select(events).where(events.c.payment_id == payment_id).order_by(events.c.id)).all()
    return [{"type": e.type, "from_status": e.from_status, "to_status": e.to_status,
             "detail": orjson.loads(e.detail_json), "at": e.created_at} for e in rows]


def get_payment(session: Session, principal: Principal | None, payment_id: str) -> dict[str, Any]:
    row = get_payment_row(session, principal, payment_id)
    return payment_view(row, _attempt_views(session, [row.id])[row.id], timeline_of(session, row.id))


def list_payments(session: Session, principal: Principal, *, merchant_id: str | None, status: str | None,
                  merchant_order_id: str | None, limit: int, starting_after: str | None,
                  livemode: bool | None = None) -> tuple[list[dict[str, Any]], bool]:
    scope = principal.listing(payments, merchant_id, livemode)
    if scope is None:
        return [], False
    query = select(payments).where(*scope)
    if status:
        query = query.where(payments.c.status == status)
    if merchant_order_id:
        query = query.where(payments.c.merchant_order_id == merchant_order_id)
    rows, more = newest_first(session, query, payments, starting_after, limit=limit, scope=scope)
    views = _attempt_views(session, [r.id for r in rows])
    return [payment_view(r, views[r.id]) for r in rows], more


# ------------------------------------------------------------------------------ timeline


def _event(session: Session, payment_id: str, type_: str, *, from_status: str | None = None,
           to_status: str | None = None, **detail: Any) -> None:
    _events(session, [_event_values(payment_id, type_, from_status=from_status, to_status=to_status, **detail)])


def _event_values(payment_id: str, type_: str, *, from_status: str | None = None, to_status: str | None = None,
                  **detail: Any) -> dict[str, Any]:
    """One timeline event, its id given by ``_events``."""
    return {"payment_id": payment_id, "type": type_, "from_status": from_status, "to_status": to_status,
            "detail_json": canonical_json(detail), "created_at": clock.now()}


def _events(session: Session, rows: list[dict[str, Any]]) -> None:
    """Timeline events in one statement, in the order given: the timeline is read in id
    order, and ids made in one millisecond share their time part, so they are sorted."""
    for row, event_id in zip(rows, sorted(new_ids("pev", len(rows))), strict=True):
        row["id"] = event_id
    _run(session, _INSERT_EVENTS, rows)


def _publish(session: Session, row: Row, status: str, written: dict[str, Any] | None = None) -> None:
    """The merchant's webhook for a new status, in this transaction (transactional outbox).
    The view is kept on the session: the answer to this request, read in this transaction
    after the last change, is the same view (``brief_view``).

    ``written``: the values this transaction's single UPDATE of ``row`` set (plain values,
    no SQL expressions): the payment is then rendered from ``row`` and them, not read back."""
    if written is None:
        fresh: Any = _payment(session, row.id)
    else:
        fresh = WrittenRow({**row._mapping, **written})
    view = payment_view(fresh, _attempt_views(session, [fresh.id])[fresh.id])
    session.info.setdefault("payment_views", {})[fresh.id] = view
    webhooks.emit(session, merchant_id=fresh.merchant_id, livemode=fresh.livemode,
                  event_type=state.WEBHOOK_EVENTS[status], data=view)


def _json_safe(view: dict[str, Any]) -> dict[str, Any]:
    return orjson.loads(orjson.dumps(view))


# ------------------------------------------------------------------------------ creating


@dataclass
class NewPayment:
    """A validated request to take money (the HTTP schema or the orders saga builds it)."""

    amount: int
    currency: str
    method: str
    capture_method: str = "automatic"
    merchant_id: str | None = None
    merchant_order_id: str | None = None
    description: str | None = None
    customer: dict[str, Any] | None = None
    card: dict[str, Any] | None = None
    """``{"number", "exp_month", "exp_year", "cvc"?, "holder_name"?}`` or ``{"card_id"}``."""
    return_url: str | None = None
    metadata: dict[str, Any] | None = None
    purpose: str = "merchant_sale"
    wallet_id: str | None = None
    livemode: bool | None = None
    """None: the caller's (``Principal.creates_livemode``); an order's payment takes the order's."""


@dataclass
class _Opened:
    payment_id: str
    attempt_id: str | None
    channel: str | None
    candidates: list[Any]
    card: protocol.CardData | None
    existing: bool = False
    row: Row | None = None
    view: dict[str, Any] | None = None
    """Set when the payment was settled while opening (a wallet payment, no channel)."""


def create_payment(rt: Runtime, principal: Principal, actor: audit.Actor, request: NewPayment, *,
                   payment_id: str | None = None) -> dict[str, Any]:
    """Take a payment; returns its view. A declined payment is a payment with status ``failed``."""
    opened = _tx(rt, lambda s: _open(s, rt, principal, actor, request, payment_id))
    if opened.view is not None:
        return opened.view
    if not opened.existing and opened.attempt_id is not None:
        view = _drive(rt, opened)
        if view is not None:
            return view
    return _tx(rt, lambda s: brief_view(s, opened.payment_id))


def brief_view(session: Session, payment_id: str) -> dict[str, Any]:
    """The payment with its attempts, without the timeline (the answer to a write)."""
    published = session.info.get("payment_views", {}).get(payment_id)
    if published is not None:
        return published
    row = _payment(session, payment_id)
    return payment_view(row, _attempt_views(session, [row.id])[row.id])


def _open(session: Session, rt: Runtime, principal: Principal, actor: audit.Actor, request: NewPayment,
          payment_id: str | None) -> _Opened:
    if payment_id is not None and _run(session, _PAYMENT_EXISTS, {"the_id": payment_id}).first() is not None:
        return _Opened(payment_id, None, None, [], None, existing=True)
    merchant_id = identity.owner_of(session, principal, request.merchant_id, taking_payments=True)
    livemode = principal.creates_livemode if request.livemode is None else request.livemode
    if request.capture_method == "manual" and request.method != "card":
        raise errors.CaptureMethodNotSupported("manual capture is for card payments")
    card_data, card_id = _card_of(session, rt, principal, actor, merchant_id, livemode, request)
    wallet_id = request.wallet_id
    if request.method == "wallet":
        wallet_id = _paying_wallet(session, merchant_id, livemode, request)
    customer = request.customer or {}
    rule = fees.rule_for(session, merchant_id, request.method, request.currency)
    fee = 0 if request.purpose == "wallet_top_up" else rule.fee(request.amount)
    plan = rt.router.plan(session, merchant_id=merchant_id, method=request.method, currency=request.currency,
                          amount=request.amount, country=customer.get("country"),
                          card_bin=card_data.bin if card_data else None, livemode=livemode)
    if not plan.candidates and not any(s.transient for s in plan.skipped):
        raise plan.no_candidate_error()  # nothing could ever take it: refused, nothing stored
    now = clock.now()
    pid = payment_id or new_id("pay")
    fee_items = [{"type": "processing_fee", "amount": fee, "percent": rule.percent, "fixed": rule.fixed,
                  "minimum": rule.minimum}] if request.purpose != "wallet_top_up" else []
    values = {
        "id": pid, "merchant_id": merchant_id, "livemode": livemode, "purpose": request.purpose,
        "amount": request.amount,
        "currency": request.currency, "method": request.method, "capture_method": request.capture_method,
        "status": state.PROCESSING, "merchant_order_id": request.merchant_order_id,
        "description": request.description, "customer_json": canonical_json(customer), "card_id": card_id,
        "wallet_id": wallet_id, "return_url": request.return_url,
        "metadata_json": canonical_json(request.metadata or {}), "fee_amount": fee,
        "fees_json": canonical_json(fee_items), "fee_rule_json": canonical_json(rule.as_dict()),
        "created_at": now, "updated_at": now,
    }
    created = _event_values(pid, "created", to_status=state.PROCESSING, amount=request.amount,
                            currency=request.currency, method=request.method, rule=plan.rule_id, card_id=card_id,
                            by=actor.id, skipped=[{"channel": s.channel, "reason": s.reason} for s in plan.skipped])
    first = plan.candidates[0] if plan.candidates else None
    if first is None or first.channel == WALLET:
        _run(session, _INSERT_PAYMENT, values)
        _events(session, [created])
        if first is None:
            _fail(session, _payment(session, pid), "no_channel_available",
                  "; ".join(f"{s.channel}: {s.reason}" for s in plan.skipped) or "no channel available")
            return _Opened(pid, None, None, [], None)
        _pay_from_wallet(session, _payment(session, pid), first.reason)
        return _Opened(pid, None, None, [], None, view=brief_view(session, pid))
    # The usual case: the payment is written with its first attempt already chosen (one
    # insert, no update), and both timeline events in one statement.
    attempt_id = new_id("pat")
    reason = first.reason[:500]
    values.update(channel=first.channel, reference=attempt_id, channel_cost=cost_of(rt, first.channel, request.amount))
    _run(session, _INSERT_PAYMENT, values)
    _run(session, _INSERT_ATTEMPT, {"id": attempt_id, "payment_id": pid, "seq": 1, "channel": first.channel,
                                    "status": "started", "reason": reason, "created_at": clock.now()})
    _events(session, [created, _event_values(pid, "attempt_started", channel=first.channel, attempt=attempt_id,
                                             reason=reason)])
    return _Opened(pid, attempt_id, first.channel, list(plan.candidates[1:]), card_data, row=WrittenRow(values))


def _card_of(session: Session, rt: Runtime, principal: Principal, actor: audit.Actor, merchant_id: str,
             livemode: bool, request: NewPayment) -> tuple[protocol.CardData | None, str | None]:
    if request.method != "card":
        return None, None
    card = request.card
    if not card:
        raise errors.PaymentDetailsRequired("a card payment needs payment_details.card")
    if card.get("card_id"):
        details = vault.reveal_card(session, rt.cipher, card["card_id"], merchant_id, livemode, actor=actor)
        cvc = None
    else:
        row = vault.create_card(session, rt.cipher, actor, principal, number=card["number"],
                                exp_month=card["exp_month"], exp_year=card["exp_year"],
                                holder_name=card.get("holder_name"), merchant_id=merchant_id, livemode=livemode,
                                audited=False)
        details = vault.CardDetails(card_id=row.id, merchant_id=merchant_id,
                                    number=vault.normalize_card_number(card["number"]), exp_month=row.exp_month,
                                    exp_year=row.exp_year, brand=row.brand, bin=row.bin, last4=row.last4)
        cvc = card.get("cvc")
    data = protocol.CardData(number=details.number, exp_month=details.exp_month, exp_year=details.exp_year,
                             cvc=cvc, brand=details.brand, bin=details.bin, last4=details.last4)
    return data, details.card_id


def _paying_wallet(session: Session, merchant_id: str, livemode: bool, request: NewPayment) -> str:
    """The wallet a wallet payment draws on: the customer's wallet in the payment's currency. A customer
    with no wallet at all is ``wallet_not_found``; one whose wallets hold other currencies is
    ``currency_not_supported``, naming them. (``wallet_id`` is set only by Clearhouse's own callers.)"""
    customer_id = (request.customer or {}).get("id")
    if request.wallet_id:
        found = session.execute(select(wallets).where(
            wallets.c.id == request.wallet_id, wallets.c.merchant_id == merchant_id,
            wallets.c.livemode == livemode)).all()
    elif customer_id:
        found = session.execute(select(wallets).where(
            wallets.c.merchant_id == merchant_id, wallets.c.livemode == livemode,
            wallets.c.customer_id == customer_id).order_by(wallets.c.currency)).all()
    else:
        raise errors.PaymentDetailsRequired("a wallet payment needs customer.id, the customer whose wallet pays")
    if not found:
        raise errors.WalletNotFound(f"customer {customer_id} has no wallet" if customer_id else "no such wallet")
    for row in found:
        if row.currency == request.currency:
            return row.id
    held = ", ".join(row.currency for row in found)
    raise errors.CurrencyNotSupported(f"the customer's wallet holds {held}, not {request.currency}")


def _start_attempt(session: Session, payment_id: str, seq: int, channel: str, reason: str, cost: int) -> str:
    attempt_id = new_id("pat")
    session.execute(insert(attempts).values(
        id=attempt_id, payment_id=payment_id, seq=seq, channel=channel, status="started", reason=reason[:500],
        created_at=clock.now(),
    ))
    session.execute(update(payments).where(payments.c.id == payment_id).values(
        channel=channel, reference=attempt_id, channel_cost=cost, updated_at=clock.now()))
    _event(session, payment_id, "attempt_started", channel=channel, attempt=attempt_id, reason=reason[:500])
    return attempt_id


def _pay_from_wallet(session: Session, row: Row, reason: str) -> None:
    """The e-wallet is ours: the payment is one ledger entry in this transaction, refused by
    the ledger itself when the wallet's balance does not cover it."""
    attempt_id = new_id("pat")
    now = clock.now()
    entry = postings.payment_entry(
        session, payment_id=row.id, merchant_id=row.merchant_id, channel=WALLET, amount=row.amount,
        currency=row.currency, fee=row.fee_amount, cost=0, wallet_id=row.wallet_id, top_up=False, pending=False,
        entry_id=f"tr_{row.id}")
    try:
        with session.begin_nested():
            ledger.create_transfer(session, entry)
    except ledger_errors.InsufficientFunds:
        session.execute(insert(attempts).values(
            id=attempt_id, payment_id=row.id, seq=1, channel=WALLET, status="declined", reason=reason[:500],
            decline_code="insufficient_funds", message="the wallet balance does not cover the payment",
            created_at=now, finished_at=now, latency_ms=0))
        _fail(session, row, "insufficient_funds", "the wallet balance does not cover the payment", channel=WALLET)
        return
    session.execute(insert(attempts).values(
        id=attempt_id, payment_id=row.id, seq=1, channel=WALLET, status="approved", reason=reason[:500],
        created_at=now, finished_at=now, latency_ms=0))
    session.execute(update(payments).where(payments.c.id == row.id).values(
        status=state.SUCCEEDED, channel=WALLET, reference=attempt_id, amount_captured=row.amount,
        ledger_entry_id=entry.id, updated_at=now))
    _event(session, row.id, "status_changed", from_status=row.status, to_status=state.SUCCEEDED, channel=WALLET)
    _publish(session, row, state.SUCCEEDED)


def _fail(session: Session, row: Row, code: str, message: str, *, channel: str | None = None) -> None:
    """``row``: the payment as it stands in this transaction (read here, not earlier)."""
    values = {"status": state.FAILED, "failure_code": code, "failure_message": message[:500],
              "next_action_json": None, "channel": channel or row.channel, "updated_at": clock.now()}
    _run(session, _UPDATE_PAYMENT, {"the_id": row.id, **values})
    _event(session, row.id, "status_changed", from_status=row.status, to_status=state.FAILED, code=code,
           message=message[:500])
    _publish(session, row, state.FAILED, written=values)


# ------------------------------------------------------------------------------ driving


def _charge_request(row: Row, attempt_id: str, card: protocol.CardData | None) -> ChargeRequest:
    return ChargeRequest(
        reference=attempt_id, payment_id=row.id, merchant_id=row.merchant_id, amount=row.amount,
        currency=row.currency, method=row.method, capture=row.capture_method == "automatic", card=card,
        customer=orjson.loads(row.customer_json), description=row.description, return_url=row.return_url,
    )


def _drive(rt: Runtime, opened: _Opened) -> dict[str, Any] | None:
    """Call the candidates in order until one gives a definite answer; fail over only when
    the channel certainly did not act (outage, error, or a timeout it then denies).
    Returns the payment's view when the last transaction could read it."""
    row = opened.row or _tx(rt, lambda s: _payment(s, opened.payment_id))
    livemode = row.livemode
    attempt_id, channel = opened.attempt_id, opened.channel
    candidates = list(opened.candidates)
    seq = 1
    while attempt_id is not None and channel is not None:
        connector = rt.channels[channel]
        started = time.monotonic()
        failure: str | None = None
        result: ChannelResult | None = None
        timed_out = False
        try:
            result = connector.authorize(_charge_request(row, attempt_id, opened.card))
        except ChannelTimeout:
            timed_out = True
            latency = _ms(started)  # the call's own, before the question that follows it
            result = _settle_timeout(connector, attempt_id)
            if result is not None and result.status == protocol.NOT_FOUND:
                # Not seen yet is not never: the call may still be on its way. Failing over is safe only once
                # the channel has voided the reference, so that it refuses the call if it arrives.
                result = _void_unseen(connector, attempt_id)
            if result is None:
                _record(rt, channel, "failure", started, livemode)
                _tx(rt, lambda s, a=attempt_id, ms=latency: _timed_out(s, opened.payment_id, a, ms))
                return None
            if result.status == protocol.CANCELED:  # voided: the channel refuses it, whenever it comes
                result, failure = None, f"timeout after {latency} ms; the channel had not seen it and voided it"
        except ChannelUnavailable as error:
            failure = f"unavailable: {error.detail}"
        except ChannelError as error:
            failure = f"error: {error.detail}"
        if result is not None:
            latency = latency if timed_out else _ms(started)
            note = None
            if timed_out:
                # The call timed out and the query answered: for the breaker a timeout all the same (a
                # channel that answers only when asked again is failing, routing.md), and the attempt
                # and the timeline say how the answer came.
                _record(rt, channel, "failure", started, livemode)
                note = (f"the channel did not answer in time (timeout after {latency} ms); "
                        f"its status query answered {result.status}")
            else:
                _record(rt, channel, "decline" if result.status == protocol.DECLINED else "success", started,
                        livemode)
            return _tx(rt, lambda s, r=result, a=attempt_id, c=channel, ms=latency, n=note: _applied(
                s, opened.payment_id, apply_result(s, rt, a, r, channel=c, source="query" if n else "authorize",
                                                   latency_ms=ms, attempt_of=(opened.payment_id, c), note=n)))
        _record(rt, channel, "failure", started, livemode)
        next_candidate = _next_available(rt, candidates, livemode)
        seq += 1
        latency = _ms(started)
        attempt_id, channel = transact(
            rt.engine, lambda s, a=attempt_id, f=failure, n=next_candidate, q=seq, ms=latency: _fail_over(
                s, opened.payment_id, a, f or "error", n, q, ms,
                cost_of(rt, n.channel, row.amount) if n is not None else 0))


def _timed_out(session: Session, payment_id: str, attempt_id: str, latency_ms: int) -> None:
    """The channel may have acted: the payment stays ``processing`` (said to the merchant) until the
    worker's query settles it."""
    _mark_attempt(session, attempt_id, "timeout",
                  "the channel did not answer; the worker will ask it until it is final", latency_ms=latency_ms)
    row = _payment(session, payment_id, lock=True)  # as apply_result: never after a concurrent succeeded
    if row.status == state.PROCESSING and row.reference == attempt_id:
        _publish(session, row, state.PROCESSING)


def _applied(session: Session, payment_id: str, _outcome: str) -> dict[str, Any]:
    return brief_view(session, payment_id)


def _next_available(rt: Runtime, candidates: list[Any], livemode: bool) -> Any | None:
    while candidates:
        candidate = candidates.pop(0)
        if rt.router.breaker(candidate.channel, livemode).allow():
            return candidate
    return None


def _fail_over(session: Session, payment_id: str, attempt_id: str, failure: str, candidate: Any, seq: int,
               latency_ms: int, cost: int) -> tuple[str | None, str | None]:
    status = "timeout" if failure.startswith("timeout") else (
        "unavailable" if failure.startswith("unavailable") else "error")
    _mark_attempt(session, attempt_id, status, failure, latency_ms=latency_ms)
    row = _payment(session, payment_id, lock=True)
    if row.status != state.PROCESSING or row.reference != attempt_id:
        return None, None  # a notification got there first
    if candidate is None:
        _fail(session, row, "channels_unavailable", f"every candidate channel failed; last: {failure}")
        return None, None
    reason = f"failover after {row.channel} {status}; {candidate.reason}"
    return _start_attempt(session, payment_id, seq, candidate.channel, reason, cost), candidate.channel


def _void_unseen(connector: Connector, reference: str) -> ChannelResult | None:
    """The channel's answer to voiding a reference it said it had not seen (``Connector.void``): canceled,
    or what became of it if it has arrived meanwhile. None: it cannot say, so the call may still land."""
    try:
        answer = connector.void(reference)
    except (ChannelTimeout, ChannelUnavailable, ChannelError):
        return None
    return None if answer.status == protocol.NOT_FOUND else answer


def _settle_timeout(connector: Connector, reference: str) -> ChannelResult | None:
    """After a timeout, ask the channel once what it did. None: still unknown."""
    try:
        return connector.query(reference)
    except (ChannelTimeout, ChannelUnavailable, ChannelError):
        return None


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _hold(rt: Runtime) -> int:
    return rt.settings.authorization_hold_hours


def _record(rt: Runtime, channel: str, outcome: str, started: float, livemode: bool) -> None:
    rt.router.record(channel, outcome, (time.monotonic() - started) * 1000, livemode)


def _mark_attempt(session: Session, attempt_id: str, status: str, message: str | None = None, *,
                  decline_code: str | None = None, external_id: str | None = None,
                  latency_ms: int | None = None, replace_message: bool = False) -> None:
    """``replace_message``: the channel's answer replaces what we wrote before, even with no words (an
    attempt the worker settled after a timeout no longer says "the channel did not answer")."""
    values: dict[str, Any] = {"the_id": attempt_id, "status": status, "finished_at": clock.now()}
    if message is not None or replace_message:
        values["message"] = message[:500] if message is not None else None
    if decline_code is not None:
        values["decline_code"] = decline_code
    if external_id is not None:
        values["external_id"] = external_id
    if latency_ms is not None:
        values["latency_ms"] = latency_ms
    _run(session, _UPDATE_OPEN_ATTEMPT, values)


# ------------------------------------------------------------------------------ applying answers


def apply_result(session: Session, rt: Runtime, reference: str, result: ChannelResult | protocol.Notification, *,
                 channel: str, source: str, latency_ms: int | None = None,
                 attempt_of: tuple[str, str] | None = None, note: str | None = None) -> str:
    """Apply a channel's answer about one attempt, once, whatever the order of arrival.
    Returns what happened (for the notification log).

    ``channel``: the channel that answered (or signed the notification). A channel speaks only
    for its own attempts: an answer naming another channel's attempt is not applied (nothing
    changes, nothing is posted) and is logged for an operator, as an unknown reference would be.
    ``attempt_of``: (payment id, channel) of the attempt, when the caller made it (the
    answer to our own call); otherwise the attempt is looked up by ``reference``.
    ``note``: how the answer came, put on the attempt before the channel's own message (a call
    that timed out and was answered by the status query)."""
    if attempt_of is None:
        attempt = _run(session, _ATTEMPT_BY_ID, {"the_id": reference}).first()
        if attempt is None:
            return "unknown_reference"
        attempt_of = (attempt.payment_id, attempt.channel)
    payment_id, attempt_channel = attempt_of
    if attempt_channel != channel:
        # Whoever holds one channel's key must not settle another channel's payment: that channel
        # never collected the money, so booking it would credit the merchant for nothing.
        log.error("channel_answer_for_another_channel", channel=channel, attempt=reference,
                  attempt_channel=attempt_channel, payment=payment_id, source=source)
        return "wrong_channel"
    row = _payment(session, payment_id, lock=True)
    if result.status == protocol.NOT_FOUND:
        return "not_found"
    attempt_status = _ATTEMPT_STATUS.get(result.status)
    if attempt_status is None:
        return f"ignored_status:{result.status}"
    if _PAYMENT_STATUS[result.status] in (state.SUCCEEDED, state.REQUIRES_CAPTURE) \
            and row.status not in state.FINAL and row.reference == reference and (
            (result.amount is not None and result.amount != row.amount)
            or (result.currency is not None and result.currency != row.currency)):
        # The channel says it took another sum than the one asked (a transfer that arrived short or in
        # another currency, a QR payment of another amount, a hold's approval for another sum): never
        # booked as the payment, and its attempt is left as it was. The payment waits; an operator settles
        # the difference with the customer. Recorded once per sum the channel names, however often the
        # worker asks again.
        seen = {"received": result.amount, "received_currency": result.currency}
        if not any(e["type"] == "amount_mismatch" and {k: e["detail"].get(k) for k in seen} == seen
                   for e in timeline_of(session, row.id)):
            log.error("payment_amount_mismatch", payment=row.id, attempt=reference, expected=row.amount,
                      currency=row.currency, **seen)
            _event(session, row.id, "amount_mismatch", status=result.status, source=source, expected=row.amount,
                   currency=row.currency, **seen)
        return "amount_mismatch"
    message = getattr(result, "message", None)
    if note is not None:
        message = f"{note}: {message}" if message else note
    _mark_attempt(session, reference, attempt_status, message,
                  decline_code=getattr(result, "decline_code", None), external_id=result.external_id,
                  latency_ms=latency_ms, replace_message=True)
    target = _PAYMENT_STATUS[result.status]
    if row.reference != reference:
        if target == state.SUCCEEDED:
            # Only reachable if a channel acted after saying it had not: money to give back.
            log.error("payment_late_success_on_other_attempt", payment=row.id, attempt=reference)
        _event(session, row.id, "stale_attempt_result", attempt=reference, status=result.status, source=source)
        return "stale_attempt"
    if target == row.status:
        next_action = getattr(result, "next_action", None)
        if next_action:
            _run(session, _UPDATE_PAYMENT, {"the_id": row.id, "next_action_json": canonical_json(dict(next_action))})
        if latency_ms is not None and target == state.PROCESSING:
            # The channel's first answer to our call (``latency_ms``: only ``_drive`` passes it, also when
            # the query after a timeout answered): it has the payment and no outcome yet (a transfer
            # awaiting its funds). The payment was created processing; this is when the merchant is told so.
            _publish(session, row, target)
            return "unchanged"
        if source != "query":  # the worker's "still pending?" every 30 s is no new fact for the timeline
            _event(session, row.id, "channel_repeated", status=result.status, source=source)
        return "unchanged"
    if not state.allowed(row.status, target):
        if target in (state.SUCCEEDED, state.REQUIRES_CAPTURE) and row.status in (state.FAILED, state.CANCELED):
            # The channel took (or holds) the customer's money for a payment we have given up on: never
            # dropped in silence. An operator gives it back (or books it) with the channel.
            log.error("channel_approved_final_payment", payment=row.id, attempt=reference, status=result.status,
                      amount=result.amount if result.amount is not None else row.amount,
                      currency=result.currency or row.currency, current=row.status, source=source,
                      channel=attempt_channel)
            _event(session, row.id, "channel_approved_final_payment", status=result.status, source=source,
                   current=row.status, attempt=reference, channel=attempt_channel,
                   amount=result.amount if result.amount is not None else row.amount,
                   currency=result.currency or row.currency, external_id=result.external_id)
            return f"approved_final:{row.status}"
        _event(session, row.id, "channel_ignored", status=result.status, source=source, current=row.status)
        return f"ignored:{row.status}"
    if target == state.SUCCEEDED and row.status == state.REQUIRES_CAPTURE:
        # The channel captured the hold (a capture whose answer we missed, seen again in its answer
        # to a cancel or at expiry): post it for what the channel says it took, as a capture does.
        captured = getattr(result, "captured_amount", None)
        if not captured:
            # How much is not said (a notification carries no captured amount): posting the whole
            # hold could credit the merchant money the channel never took. The hold stays; the
            # cancel or the expiry asks the channel, whose answer says how much.
            _event(session, row.id, "channel_reports_captured", status=result.status, source=source)
            return "captured_amount_unknown"
        _captured(session, rt, row.id, min(captured, row.amount), source=source)
        return f"{row.status}->{target}"
    now = clock.now()
    values: dict[str, Any] = {"status": target, "updated_at": now, "external_id": result.external_id or row.external_id}
    entry = None
    if target == state.SUCCEEDED:
        entry = _entry(session, row, pending=False)
        values.update(amount_captured=row.amount, ledger_entry_id=entry.id, next_action_json=None)
    elif target == state.REQUIRES_CAPTURE:
        entry = _entry(session, row, pending=True)
        values.update(ledger_entry_id=entry.id, authorization_expires_at=now + timedelta(hours=_hold(rt)),
                      next_action_json=None)
    elif target == state.CANCELED and row.status == state.REQUIRES_CAPTURE:
        _void_hold(session, row)
    elif target == state.FAILED:
        values.update(failure_code=getattr(result, "decline_code", None) or "channel_failed",
                      failure_message=(getattr(result, "message", None) or "the channel refused the payment")[:500],
                      next_action_json=None)
    elif target in (state.REQUIRES_ACTION, state.PROCESSING):
        next_action = getattr(result, "next_action", None)
        if next_action:
            values["next_action_json"] = canonical_json(dict(next_action))
    _run(session, _UPDATE_PAYMENT, {"the_id": row.id, **values})
    _event(session, row.id, "status_changed", from_status=row.status, to_status=target, source=source,
           channel=attempt_channel, attempt=reference)
    _publish(session, row, target, written=values)
    if entry is not None:
        # Last: the ledger's chain lock serializes every entry until commit, so it is taken
        # when nothing else is left to do in this transaction.
        ledger.create_transfer(session, entry)
    return f"{row.status}->{target}"


def cost_of(rt: Runtime, channel: str, amount: int) -> int:
    """What the channel charges us for ``amount``: its published ``cost``, as its statement has it. It can
    be more than the amount (the bank's fixed 0.50 on a 0.30 transfer): the platform's loss on the
    payment, booked as such (``postings.payment_entry`` credits the clearing account the difference)."""
    if channel == WALLET:
        return 0
    return rt.channels[channel].cost.charged(amount)


def _cost_kept(session: Session, payment: Row, refunded_after: int, cost_back: int) -> int:
    """What the merchant bears of the channel's fee on a refund now completing: what the channel has kept so
    far (its fee's share of everything refunded, ``refunded_after`` included, less what the completed refunds
    and this one got back) less what earlier refunds charged. Cumulative, because what a refund gets back is
    fixed in the order refunds are asked for (``cost_returned``) and they may complete in another."""
    returned, charged = session.execute(
        select(func.coalesce(func.sum(refunds.c.channel_cost_returned), 0),
               func.coalesce(func.sum(refunds.c.channel_cost_charged), 0))
        .where(refunds.c.payment_id == payment.id, refunds.c.status == "succeeded")).one()
    kept = share(payment.channel_cost, refunded_after, payment.amount_captured) - int(returned) - cost_back
    return max(0, kept - int(charged))


def cost_returned(session: Session, rt: Runtime, payment: Row, refunded: int) -> int:
    """What the channel gives back of its fee on a new refund of ``refunded`` (``Cost.returned``): its
    share of everything refunded or being refunded so far, less what those refunds got back, so the
    refunds of a payment never get back more than the fee it charged, and all of them get back all of it."""
    if payment.channel == WALLET:
        return 0
    returned_before = session.execute(
        select(func.coalesce(func.sum(refunds.c.channel_cost_returned), 0))
        .where(refunds.c.payment_id == payment.id, refunds.c.status.in_(("pending", "succeeded")))).scalar_one()
    return rt.channels[payment.channel].cost.returned(
        charged=payment.channel_cost, captured=payment.amount_captured,
        refunded_before=payment.amount_refunded + payment.amount_refund_pending,
        returned_before=int(returned_before), refunded=refunded)


def _entry(session: Session, row: Row, *, pending: bool) -> ledger.EntryRequest:
    return postings.payment_entry(
        session, payment_id=row.id, merchant_id=row.merchant_id, channel=row.channel, amount=row.amount,
        currency=row.currency, fee=row.fee_amount, cost=row.channel_cost, wallet_id=row.wallet_id,
        top_up=row.purpose == "wallet_top_up", pending=pending, entry_id=f"tr_{row.id}")


def _void_hold(session: Session, row: Row) -> None:
    try:
        with session.begin_nested():
            ledger.resolve_pending(session, row.ledger_entry_id, "void", id=f"tr_{row.id}_void")
    except (ledger_errors.PendingAlreadyVoided, ledger_errors.PendingAlreadyPosted):
        pass


# ------------------------------------------------------------------------------ capture and cancel


def capture(rt: Runtime, principal: Principal, payment_id: str, amount: int | None) -> dict[str, Any]:
    """Post a held authorization, fully or partly; the rest of the hold is released.

    The answer says what the channel did. A capture whose answer is lost is asked about at once
    (``_ask``); a capture the channel had made before (its answer lost then) is recorded for the
    amount the channel took, and said so, rather than refused as "not capturable"."""
    row = _tx(rt, lambda s: get_payment_row(s, principal, payment_id))
    if row.status != state.REQUIRES_CAPTURE:
        raise errors.PaymentStateConflict(f"payment {payment_id} is {row.status}, not requires_capture")
    amount = row.amount if amount is None else amount
    if not 0 < amount <= row.amount:
        raise errors.CaptureExceedsAuthorized(f"capture between 1 and {row.amount}")
    # Written before the call: should this process die before the channel's answer is recorded, the worker
    # finds the request and asks the channel what became of it (``resolve_captures``).
    _tx(rt, lambda s: _event(s, row.id, CAPTURE_REQUESTED, amount=amount))
    result, queried = _ask(rt, row, "capture", amount,
                           lambda connector: connector.capture(row.reference, amount, row.currency))
    captured = _capture_taken(result, amount, queried=queried)
    if captured is None:
        if queried and result.status in _STILL_HELD:
            raise errors.ChannelNotAnswering(f"{row.channel} did not answer the capture in time, and says the "
                                             "authorization is still held: it did not capture; nothing changed, "
                                             "try again")
        if queried and result.status == protocol.APPROVED:
            raise errors.OutcomeUnconfirmed(f"{row.channel} did not answer the capture in time and says it "
                                            "captured, but not how much; an operator confirms it (see the "
                                            "timeline); nothing is recorded yet")
        raise errors.PaymentStateConflict(f"the channel refused the capture: {result.decline_code or result.status}")
    recorded = _tx(rt, lambda s: _captured(s, rt, payment_id, captured))
    if captured != amount:
        if not recorded:  # another capture of ours, sent at the same time, reached the channel and was recorded first
            fresh = _tx(rt, lambda s: _payment(s, payment_id))
            raise errors.PaymentStateConflict(
                f"the payment was captured ({fresh.amount_captured} of {fresh.amount}) by another capture recorded "
                f"before this one reached the channel, which captures an authorization once; it is {fresh.status}")
        raise errors.PaymentStateConflict(
            f"the channel had already captured {captured} of this authorization (a capture whose answer was "
            f"lost), and captures an authorization once; that capture is now recorded, so the payment is "
            f"succeeded with {captured} captured")
    return _tx(rt, lambda s: get_payment(s, None, payment_id))


def _capture_taken(result: ChannelResult, asked: int, *, queried: bool) -> int | None:
    """How much the channel says it has captured of the hold, or None when it has not (or does not say).

    A direct "approved" answer to our capture took what was asked when it names no amount; the
    channel's refusal of a hold it had captured already (``not_capturable``) names what it took."""
    if result.status == protocol.APPROVED:
        return result.captured_amount or (None if queried else asked)
    if result.status == protocol.DECLINED and result.captured_amount:
        return result.captured_amount
    return None


def _ask(rt: Runtime, row: Row, what: str, amount: int | None,
         call: Callable[[Connector], ChannelResult]) -> tuple[ChannelResult, bool]:
    """A capture or cancel at the channel: its answer, and whether it came from a status query.

    A channel that failed without acting (outage, error) changed nothing: ``409 channel_not_answering``,
    try again. One that timed out may have acted, so it is asked at once what it did, and the answer
    is applied like any other; if it cannot be asked either, nothing is recorded and the answer says
    the outcome is not confirmed yet (``409 outcome_unconfirmed``): never "nothing changed"."""
    connector = rt.channels[row.channel]
    try:
        return call(connector), False
    except ChannelTimeout as error:
        found = _settle_timeout(connector, row.reference)
        if found is None or found.status == protocol.NOT_FOUND:
            said = error.detail[:200]
            _tx(rt, lambda s: _event(s, row.id, f"{what}_unconfirmed", channel=row.channel, amount=amount,
                                     said=said))
            raise errors.OutcomeUnconfirmed(
                f"{row.channel} did not answer the {what} in time and cannot be asked now: it may have acted. "
                f"Nothing is recorded yet; send the {what} again (the channel does not act twice) and the "
                "answer says what happened") from error
        return found, True
    except (ChannelUnavailable, ChannelError) as error:
        unconfirmed = [e["type"].split("_")[0] for e in _tx(rt, lambda s: timeline_of(s, row.id))
                       if e["type"] in ("capture_unconfirmed", "cancel_unconfirmed")]
        if unconfirmed:
            # An earlier request timed out unanswered: this one changed nothing, but that one may have.
            raise errors.ChannelNotAnswering(
                f"{row.channel}: {error.detail}; it did not act on this {what}, but the earlier {unconfirmed[-1]} "
                "is still unconfirmed and may have acted (see the timeline): send it again once the channel "
                "answers, and the answer says what happened") from error
        raise errors.ChannelNotAnswering(f"{row.channel}: {error.detail}; it did not act: nothing changed, "
                                         "try again") from error


def _captured(session: Session, rt: Runtime, payment_id: str, amount: int, source: str = "capture") -> bool:
    """Post the capture of ``amount`` of the hold. A partial capture is priced as a payment of the
    captured amount: the plan's fee of it (at least the minimum) and the channel's cost of it, which
    is what the channel charges on it (its statement's fee). The ledger's partial post would scale
    the hold's rounded fee and cost instead, so the hold is voided and the capture posted as its own
    entry (``tr_{id}_capture``): accounting.md's recipe 2 scales them, payments.md says why not.
    False (nothing done) when a concurrent capture or expiry got there first: it recorded the outcome."""
    row = _payment(session, payment_id, lock=True)
    if row.status != state.REQUIRES_CAPTURE:
        return False
    if amount == row.amount:
        fee, cost, entry_id = row.fee_amount, row.channel_cost, row.ledger_entry_id
        try:
            ledger.resolve_pending(session, row.ledger_entry_id, "post", id=f"tr_{row.id}_capture")
        except ledger_errors.PendingExpired as error:
            raise errors.PaymentStateConflict("the authorization expired") from error
    else:
        rule = fees.Rule(**orjson.loads(row.fee_rule_json))
        fee = 0 if row.purpose == "wallet_top_up" else rule.fee(amount)
        cost = cost_of(rt, row.channel, amount)
        ledger.resolve_pending(session, row.ledger_entry_id, "void", id=f"tr_{row.id}_release")
        entry = postings.payment_entry(
            session, payment_id=row.id, merchant_id=row.merchant_id, channel=row.channel, amount=amount,
            currency=row.currency, fee=fee, cost=cost, wallet_id=row.wallet_id,
            top_up=row.purpose == "wallet_top_up", pending=False, entry_id=f"tr_{row.id}_capture")
        ledger.create_transfer(session, entry)
        entry_id = entry.id
    items = orjson.loads(row.fees_json)
    for item in items:
        item["amount"] = fee
    session.execute(update(payments).where(payments.c.id == row.id).values(
        status=state.SUCCEEDED, amount_captured=amount, fee_amount=fee, channel_cost=cost,
        fees_json=canonical_json(items), ledger_entry_id=entry_id, updated_at=clock.now()))
    _event(session, row.id, "status_changed", from_status=row.status, to_status=state.SUCCEEDED, captured=amount,
           source=source)
    _publish(session, row, state.SUCCEEDED)
    return True


def cancel(rt: Runtime, principal: Principal, payment_id: str, reason: str | None = None) -> dict[str, Any]:
    """Cancel a payment the customer has not completed, or release a held authorization."""
    row = _tx(rt, lambda s: get_payment_row(s, principal, payment_id))
    if row.status in state.FINAL:
        raise errors.PaymentStateConflict(f"payment {payment_id} is already {row.status}")
    if row.reference is not None and row.channel not in (None, WALLET):
        result, queried = _ask(rt, row, "cancel", None, lambda connector: connector.cancel(row.reference))
        if result.status == protocol.APPROVED:
            outcome = _tx(rt, lambda s: apply_result(s, rt, row.reference, result, channel=row.channel,
                                                     source="cancel"))
            if outcome == "amount_mismatch":
                raise errors.PaymentStateConflict("the channel says the customer paid another sum than the payment's; "
                                                  "an operator settles it (see the timeline)")
            if row.status != state.REQUIRES_CAPTURE:
                raise errors.PaymentStateConflict(
                    "the channel approved the card payment before the cancel reached it: refund it instead"
                    if row.method == "card" else "the customer completed the payment before the cancel")
            if outcome == "captured_amount_unknown":
                raise errors.PaymentStateConflict("the channel says it captured this authorization before the "
                                                  "cancel, but not how much; an operator confirms it (see the "
                                                  "timeline)")
            fresh = _tx(rt, lambda s: _payment(s, payment_id))
            if outcome.startswith(f"{state.REQUIRES_CAPTURE}->"):
                raise errors.PaymentStateConflict(
                    f"the payment was captured: the channel had captured {fresh.amount_captured} of this "
                    "authorization before the cancel (a capture whose answer was lost); that capture is now "
                    "recorded: refund it instead")
            raise errors.PaymentStateConflict(
                f"the payment was captured ({fresh.amount_captured} of {fresh.amount}) by a capture recorded before "
                f"this cancel reached the channel; it is {fresh.status}: refund it instead")
        if result.status == protocol.NOT_FOUND and row.status == state.PROCESSING and _attempt_in_flight(
                rt, _tx(rt, lambda s: _run(s, _ATTEMPT_BY_ID, {"the_id": row.reference}).first())):
            # The channel has not seen our call yet, but it is still on its way: "nothing to cancel" now
            # could become a charge a moment later, on a payment we would have called canceled.
            raise errors.ChannelNotAnswering(
                f"the call to {row.channel} is still in flight and the channel has not seen it yet: it cannot "
                "cancel it now; nothing changed, try again once the payment has moved on")
        if queried and result.status in _STILL_HELD:
            raise errors.ChannelNotAnswering(f"{row.channel} did not answer the cancel in time, and says the "
                                             f"payment is still {result.status}: it did not cancel; nothing "
                                             "changed, try again")
    already = _tx(rt, lambda s: _canceled(s, payment_id, reason or "requested"))
    if already is not None:  # another request (a second cancel, a capture, the customer) got there first
        raise errors.PaymentStateConflict(f"payment {payment_id} is already {already}")
    return _tx(rt, lambda s: get_payment(s, None, payment_id))


def _canceled(session: Session, payment_id: str, reason: str) -> str | None:
    """Cancel under the payment's lock; the final status it found instead, if it was already final."""
    row = _payment(session, payment_id, lock=True)
    if row.status in state.FINAL:
        return row.status
    if row.status == state.REQUIRES_CAPTURE:
        _void_hold(session, row)
    session.execute(update(payments).where(payments.c.id == row.id).values(
        status=state.CANCELED, next_action_json=None, failure_code=None, updated_at=clock.now()))
    if row.reference:
        _mark_attempt(session, row.reference, "canceled", reason)
    _event(session, row.id, "status_changed", from_status=row.status, to_status=state.CANCELED, reason=reason)
    _publish(session, row, state.CANCELED)
    return None


# ------------------------------------------------------------------------------ refunds


def refund_view(row: Row) -> dict[str, Any]:
    return {
        "id": row.id, "object": "refund", "livemode": row.livemode, "payment_id": row.payment_id,
        "merchant_id": row.merchant_id, "amount": row.amount, "currency": row.currency, "status": row.status,
        "reason": row.reason,
        "fee_refunded": row.fee_refunded, "channel_cost_charged": row.channel_cost_charged,
        "failure_code": row.failure_code,
        "ledger_transfer_id": row.ledger_entry_id, "created_at": row.created_at, "updated_at": row.updated_at,
    }


def get_refund(session: Session, principal: Principal | None, refund_id: str) -> dict[str, Any]:
    row = session.execute(select(refunds).where(refunds.c.id == refund_id)).first()
    if row is None or (principal is not None and not principal.sees_object(row.merchant_id, row.livemode)):
        raise errors.RefundNotFound(f"no refund {refund_id}")
    return refund_view(row)


def list_refunds(session: Session, principal: Principal, payment_id: str, *, limit: int,
                 starting_after: str | None) -> tuple[list[dict[str, Any]], bool]:
    """A page of the payment's refunds, newest first; and whether more follow."""
    get_payment_row(session, principal, payment_id)
    rows, more = newest_first(session, select(refunds).where(refunds.c.payment_id == payment_id), refunds,
                              starting_after, limit=limit, scope=refunds.c.payment_id == payment_id)
    return [refund_view(r) for r in rows], more


def refund(rt: Runtime, principal: Principal, payment_id: str, amount: int | None, reason: str | None, *,
           refund_id: str | None = None) -> dict[str, Any]:
    """Give money back; several partial refunds never add up to more than was captured,
    however many arrive at once (the payment row is locked while the amount is reserved)."""
    opened = _tx(rt, lambda s: _reserve_refund(s, rt, principal, payment_id, amount, reason, refund_id))
    rid, created = opened
    if created:
        _send_refund(rt, rid)
    return _tx(rt, lambda s: get_refund(s, None, rid))


def _reserve_refund(session: Session, rt: Runtime, principal: Principal, payment_id: str, amount: int | None,
                    reason: str | None, refund_id: str | None) -> tuple[str, bool]:
    if refund_id is not None and session.execute(
            select(refunds.c.id).where(refunds.c.id == refund_id)).first() is not None:
        return refund_id, False
    get_payment_row(session, principal, payment_id)
    # Locked (PostgreSQL FOR UPDATE; SQLite's BEGIN IMMEDIATE already serializes writers), so
    # concurrent refunds see each other's reservations.
    row = _payment(session, payment_id, lock=True)
    if row.status != state.SUCCEEDED:
        raise errors.PaymentStateConflict(f"payment {payment_id} is {row.status}; only succeeded payments refund")
    available = row.amount_captured - row.amount_refunded - row.amount_refund_pending
    if available <= 0:
        raise errors.RefundExceedsCaptured(
            f"nothing is left to refund: the {row.amount_captured} captured is refunded "
            f"({row.amount_refunded}) or being refunded ({row.amount_refund_pending})")
    amount = available if amount is None else amount
    if amount > available:
        raise errors.RefundExceedsCaptured(
            f"{amount} is more than the {available} left to refund of {row.amount_captured} captured")
    rid = refund_id or new_id("re")
    now = clock.now()
    cost_back = cost_returned(session, rt, row, amount)
    session.execute(insert(refunds).values(
        id=rid, payment_id=row.id, merchant_id=row.merchant_id, livemode=row.livemode, amount=amount,
        currency=row.currency,
        status="pending", reason=reason, channel=row.channel, channel_cost_returned=cost_back,
        created_at=now, updated_at=now))
    if row.purpose == "wallet_top_up":
        # The wallet's money is held now (the ledger refuses it if already spent: 409
        # insufficient_funds, nothing stored), and posted or released with the channel's answer.
        try:
            with session.begin_nested():
                ledger.create_transfer(session, _refund_entry(session, row, rid, amount, 0, 0, cost_back, pending=True))
        except ledger_errors.InsufficientFunds as error:
            # Said of the wallet the merchant knows, not of its ledger account, which a merchant key cannot read.
            held = ledger.account_balance(session, postings.wallet_account(session, row.wallet_id, row.currency))[1]
            raise type(error)(
                f"the wallet {row.wallet_id} holds {held.available} {row.currency} minor units: refunding {amount} "
                "of this top-up would take it below zero (the customer has spent it); nothing was stored",
                errors=error.errors, **error.extra) from None
    session.execute(update(payments).where(payments.c.id == row.id).values(
        amount_refund_pending=payments.c.amount_refund_pending + amount, updated_at=now))
    _event(session, row.id, "refund_requested", refund=rid, amount=amount, reason=reason)
    return rid, True


def _refund_entry(session: Session, payment: Row, refund_id: str, amount: int, fee_back: int, cost_charged: int,
                  cost_back: int = 0, *, pending: bool = False) -> ledger.EntryRequest:
    return postings.refund_entry(
        session, refund_id=refund_id, payment_id=payment.id, merchant_id=payment.merchant_id,
        channel=payment.channel, amount=amount, currency=payment.currency, fee_back=fee_back,
        cost_charged=cost_charged, cost_back=cost_back, wallet_id=payment.wallet_id,
        top_up=payment.purpose == "wallet_top_up", pending=pending)


def _send_refund(rt: Runtime, refund_id: str, *, again: bool = False) -> bool:
    """Ask the channel for the refund; ``again``: the worker's resend of one the channel never took.
    False when the channel did not take it (down, or failed without acting): it is still owed."""
    row = _tx(rt, lambda s: session_refund(s, refund_id))
    payment = _tx(rt, lambda s: _payment(s, row.payment_id))
    channel = row.channel or payment.channel  # the channel that took the payment, kept on the refund
    if channel == WALLET:
        _tx(rt, lambda s: apply_refund_result(s, refund_id, protocol.REFUNDED, None, None, channel=WALLET,
                                              source="wallet"))
        return True
    connector = rt.channels[channel]
    try:
        result = connector.refund(payment.reference, refund_id, row.amount, row.currency)
    except ChannelTimeout:
        result = _settle_timeout(connector, refund_id)
        if result is None or result.status == protocol.NOT_FOUND:
            return True  # it may have acted: still pending, the worker asks again
    except (ChannelUnavailable, ChannelError) as error:
        # It failed and did not act (channels.md): the money is still owed, so the refund stays
        # pending and the worker sends it again (``resolve_pending_refunds``).
        code = error.code
        if again:  # on the timeline once, not on every pass of the worker
            log.warning("refund_not_sent", refund=refund_id, code=code)
        else:
            _tx(rt, lambda s: _event(s, row.payment_id, "refund_not_sent", refund=refund_id, code=code))
        return False
    _tx(rt, lambda s: apply_refund_result(s, refund_id, result.status, result.external_id, result.decline_code,
                                          channel=channel, source="refund", amount=result.amount,
                                          currency=result.currency))
    return True


def session_refund(session: Session, refund_id: str, *, lock: bool = False) -> Row:
    row = _first(session, select(refunds).where(refunds.c.id == refund_id), lock=lock)
    if row is None:
        raise errors.RefundNotFound(f"no refund {refund_id}")
    return row


def apply_refund_result(session: Session, refund_id: str, status: str, external_id: str | None,
                        failure_code: str | None, *, channel: str, source: str, amount: int | None = None,
                        currency: str | None = None) -> str:
    """Apply a channel's answer about a refund, once: pending until the channel says.

    ``channel``: the channel that answered. Only the channel the refund was sent to speaks for it:
    another channel's word is not applied (logged for an operator), as for payments.
    ``amount`` and ``currency``: what the channel says it refunded, when it says (a notification
    always does). Another sum is never booked as the refund: it stays pending, recorded once."""
    found = session.execute(
        select(refunds.c.payment_id, func.coalesce(refunds.c.channel, payments.c.channel).label("channel"))
        .join(payments, payments.c.id == refunds.c.payment_id).where(refunds.c.id == refund_id)).first()
    if found is None:
        return "unknown_reference"
    if found.channel != channel:
        log.error("channel_answer_for_another_channel", channel=channel, refund=refund_id,
                  refund_channel=found.channel, payment=found.payment_id, source=source)
        return "wrong_channel"
    payment = _payment(session, found.payment_id, lock=True)  # payment first: the lock order of every refund path
    row = session_refund(session, refund_id, lock=True)
    if row.status != "pending":
        return f"unchanged:{row.status}"
    now = clock.now()
    if status in (protocol.REFUNDED, protocol.APPROVED) and (
            (amount is not None and amount != row.amount) or (currency is not None and currency != row.currency)):
        # The channel gave back another sum than the one asked: booking ours would make the ledger
        # say the customer has money they have not (or not the money they have). An operator
        # settles it with the channel; the refund waits, its amount still promised.
        seen = {"refund": row.id, "received": amount, "received_currency": currency}
        if not any(e["type"] == "refund_amount_mismatch" and {k: e["detail"].get(k) for k in seen} == seen
                   for e in timeline_of(session, payment.id)):
            log.error("refund_amount_mismatch", payment=payment.id, expected=row.amount, currency=row.currency,
                      **seen)
            _event(session, payment.id, "refund_amount_mismatch", status=status, source=source,
                   expected=row.amount, currency=row.currency, **seen)
        return "amount_mismatch"
    if status in (protocol.REFUNDED, protocol.APPROVED):
        rule = fees.Rule(**orjson.loads(payment.fee_rule_json))
        before, after = payment.amount_refunded, payment.amount_refunded + row.amount
        fee_back = 0
        if rule.refund_fee_policy == "proportional":
            fee_back = (share(payment.fee_amount, after, payment.amount_captured)
                        - share(payment.fee_amount, before, payment.amount_captured))
        cost_back = row.channel_cost_returned
        cost_charged = 0
        if rule.refund_cost_bearer == "merchant":  # what the channel keeps of its fee on this part
            cost_charged = _cost_kept(session, payment, after, cost_back)
        if payment.purpose == "wallet_top_up":
            fee_back = cost_charged = 0
            entry_id, _created = ledger.resolve_pending(session, f"tr_{row.id}", "post", id=f"tr_{row.id}_post")
        else:
            entry = _refund_entry(session, payment, row.id, row.amount, fee_back, cost_charged, cost_back)
            ledger.create_transfer(session, entry)
            entry_id = entry.id
            _report_shortfall(session, payment, row.id, source)
        session.execute(update(refunds).where(refunds.c.id == row.id).values(
            status="succeeded", external_id=external_id, fee_refunded=fee_back, channel_cost_charged=cost_charged,
            ledger_entry_id=entry_id, updated_at=now))
        session.execute(update(payments).where(payments.c.id == payment.id).values(
            amount_refunded=payments.c.amount_refunded + row.amount,
            amount_refund_pending=payments.c.amount_refund_pending - row.amount, updated_at=now))
        new_status = "succeeded"
    elif status in (protocol.DECLINED, protocol.FAILED, protocol.CANCELED):
        if payment.purpose == "wallet_top_up":
            ledger.resolve_pending(session, f"tr_{row.id}", "void", id=f"tr_{row.id}_void")
        session.execute(update(refunds).where(refunds.c.id == row.id).values(
            status="failed", failure_code=failure_code or status, updated_at=now))
        session.execute(update(payments).where(payments.c.id == payment.id).values(
            amount_refund_pending=payments.c.amount_refund_pending - row.amount, updated_at=now))
        new_status = "failed"
    else:
        return f"pending:{status}"
    _event(session, payment.id, f"refund_{new_status}", refund=row.id, amount=row.amount, source=source)
    fresh = session_refund(session, refund_id)
    webhooks.emit(session, merchant_id=payment.merchant_id, livemode=payment.livemode,
                  event_type=f"refund.{new_status}", data=refund_view(fresh))
    return f"refund_{new_status}"


def _report_shortfall(session: Session, payment: Row, refund_id: str, source: str) -> None:
    """A refund whose fee the merchant keeps paying (``refund_fee_policy: none``, or the channel's kept
    fee borne by the merchant) can take more from ``merchant_pending`` than the payment put there: with
    nothing else pending, the balance goes below zero, a receivable from the merchant (as accounting.md's
    recipe 8 has it), reported to operators and on the payment's timeline."""
    account = account_for(session, f"merchant_pending:{payment.merchant_id}", "liability", payment.currency,
                          owner_id=payment.merchant_id)
    _, balance = ledger.account_balance(session, account)
    if balance.posted < 0:
        log.warning("merchant_balance_negative", merchant=payment.merchant_id, account=account,
                    balance=balance.posted, currency=payment.currency, refund=refund_id)
        _event(session, payment.id, "merchant_balance_negative", refund=refund_id, account=account,
               balance=balance.posted, currency=payment.currency, source=source)


# ------------------------------------------------------------------------------ notifications


def receive_notification(rt: Runtime, channel: str, headers: dict[str, str], body: bytes) -> protocol.NotificationReply:
    """Verify, store once per (channel, notification id), apply. A duplicate is acknowledged
    and not applied again; the channel's reply is sent either way, so it stops resending."""
    connector = rt.channels[channel]
    notification = connector.parse_notification(headers, body)

    def work(session: Session) -> str:
        try:
            with session.begin_nested():
                session.execute(insert(notifications).values(
                    id=new_id("ntf"), channel=channel, notification_id=notification.notification_id,
                    kind=notification.kind, reference=notification.reference, status=notification.status,
                    payload_json=canonical_json(_json_safe(dict(notification.raw))), outcome="received",
                    received_at=clock.now()))
        except IntegrityError:
            return "duplicate"
        if notification.kind == "refund":
            outcome = apply_refund_result(session, notification.reference, notification.status,
                                          notification.external_id, notification.decline_code, channel=channel,
                                          source="notification", amount=notification.amount,
                                          currency=notification.currency)
        else:
            outcome = apply_result(session, rt, notification.reference, notification, channel=channel,
                                   source="notification")
        session.execute(update(notifications).where(
            notifications.c.channel == channel,
            notifications.c.notification_id == notification.notification_id).values(outcome=outcome[:200]))
        return outcome

    outcome = _tx(rt, work)
    log.info("channel_notification", channel=channel, reference=notification.reference,
             status=notification.status, outcome=outcome)
    return connector.notification_reply()


# ------------------------------------------------------------------------------ worker


STUCK_AFTER = timedelta(seconds=30)
"""How long a payment the channel has answered (a transfer awaiting its funds, a QR code) waits between
two questions of the worker ("still pending?")."""

IN_FLIGHT_MARGIN = timedelta(seconds=30)
_UNANSWERED = ("started", "timeout")
"""Attempts whose call has not been answered: still in flight, or timed out with the query unanswered."""


def in_flight_window(rt: Runtime) -> timedelta:
    """How long after an attempt started our own call to the channel may still be in flight: the call's
    timeout, then the status query after a timeout (another timeout), and a margin. Until then the
    channel's "never saw it" (``not_found``) only says the call has not arrived yet."""
    return 2 * timedelta(seconds=rt.settings.channel_timeout_seconds) + IN_FLIGHT_MARGIN


def _attempt_in_flight(rt: Runtime, attempt: Row | None) -> bool:
    """Whether ``attempt``'s call may still reach the channel (see ``in_flight_window``)."""
    return (attempt is not None and attempt.status in _UNANSWERED
            and attempt.created_at > clock.now() - in_flight_window(rt))


def resolve_stuck(rt: Runtime, *, older_than_seconds: float | None = None, limit: int = 100) -> int:
    """Ask the channels about attempts we never heard back from (a timeout, a crash between
    their answer and our commit, a customer who never came back) and apply what they say.

    A payment is asked about when it has not moved for ``STUCK_AFTER``, and, while its attempt's
    call is unanswered, not before ``in_flight_window`` has passed since the attempt started: a
    call still in flight is not stuck, and the channel's "never saw it" would fail a payment it
    is about to charge. ``older_than_seconds`` replaces both (tests, or an operator who knows no
    call is in flight: every server stopped)."""
    now = clock.now()
    if older_than_seconds is None:
        cutoff, started_before = now - STUCK_AFTER, now - in_flight_window(rt)
    else:
        cutoff = started_before = now - timedelta(seconds=older_than_seconds)

    def stuck(session: Session) -> list[Row]:
        return session.execute(
            select(payments.c.id, payments.c.reference, payments.c.channel, attempts.c.status.label("attempt_status"))
            .join(attempts, attempts.c.id == payments.c.reference)
            .where(payments.c.status.in_((state.PROCESSING, state.REQUIRES_ACTION)),
                   payments.c.updated_at < cutoff, payments.c.reference.is_not(None),
                   payments.c.channel != WALLET,
                   or_(attempts.c.status.not_in(_UNANSWERED), attempts.c.created_at < started_before))
            .order_by(payments.c.updated_at).limit(limit)
        ).all()

    done = 0
    for row in _tx(rt, stuck):
        try:
            result = rt.channels[row.channel].query(row.reference)
        except (ChannelTimeout, ChannelUnavailable, ChannelError):
            continue
        try:
            if result.status == protocol.NOT_FOUND:
                # The channel never saw it (we crashed before the call): nothing was charged.
                _tx(rt, lambda s, r=row: _never_sent(s, r.id, r.reference))
            else:
                # A call that timed out keeps saying so on its attempt, beside the answer that settled it.
                note = (f"the channel did not answer in time; the worker's query answered {result.status}"
                        if row.attempt_status == "timeout" else None)
                _tx(rt, lambda s, r=row, res=result, n=note: apply_result(s, rt, r.reference, res, channel=r.channel,
                                                                          source="query", note=n))
        except Exception:  # noqa: BLE001 - one payment that cannot be applied must not hold up the others
            log.exception("payment_resolve_failed", payment=row.id, attempt=row.reference)
        # Asked: to the back of the queue, applied or not.
        _tx(rt, lambda s, r=row: s.execute(update(payments).where(
            payments.c.id == r.id, payments.c.status.in_((state.PROCESSING, state.REQUIRES_ACTION))).values(
                updated_at=clock.now())))
        done += 1
    return done


def _never_sent(session: Session, payment_id: str, reference: str) -> None:
    row = _payment(session, payment_id, lock=True)
    if row.status != state.PROCESSING or row.reference != reference:
        return
    _mark_attempt(session, reference, "not_found", "the channel never received this attempt")
    _fail(session, row, "channel_not_reached", "the channel never received the payment; nothing was charged")


REFUND_RESEND_FOR = timedelta(days=3)
"""How long a refund the channel has not taken (it was down, or failed without acting) is sent again,
every pass of the worker; past it, a resend the channel still does not take gives it up as ``failed``
(``channel_never_accepted``) for an operator."""


def resolve_pending_refunds(rt: Runtime, *, older_than_seconds: float = 30.0, limit: int = 100) -> int:
    """Ask the channels about refunds still pending; send again the ones a channel never took."""
    now = clock.now()
    cutoff = now - timedelta(seconds=older_than_seconds)
    rows = _tx(rt, lambda s: s.execute(
        select(refunds.c.id, refunds.c.channel, refunds.c.created_at)
        .where(refunds.c.status == "pending", refunds.c.updated_at < cutoff)
        .order_by(refunds.c.updated_at).limit(limit)).all())
    done = 0
    for row in rows:
        if row.channel == WALLET:
            _tx(rt, lambda s, r=row: apply_refund_result(s, r.id, protocol.REFUNDED, None, None, channel=WALLET,
                                                         source="worker"))
            done += 1
            continue
        try:
            result = rt.channels[row.channel].query(row.id)
        except (ChannelTimeout, ChannelUnavailable, ChannelError):
            result = None  # asked again next pass, behind the others
        if result is None:
            pass
        elif result.status == protocol.NOT_FOUND:
            if not _send_refund(rt, row.id, again=True) and row.created_at < now - REFUND_RESEND_FOR:
                # Sent once more past the deadline, and still not taken: given up, for an operator.
                _tx(rt, lambda s, r=row: apply_refund_result(s, r.id, protocol.FAILED, None,
                                                             "channel_never_accepted", channel=r.channel,
                                                             source="worker"))
        else:
            _tx(rt, lambda s, r=row, res=result: apply_refund_result(
                s, r.id, res.status, res.external_id, res.decline_code, channel=r.channel, source="query",
                amount=res.amount, currency=res.currency))
        _tx(rt, lambda s, r=row: s.execute(update(refunds).where(
            refunds.c.id == r.id, refunds.c.status == "pending").values(updated_at=clock.now())))
        done += 1
    return done


CAPTURE_REQUESTED = "capture_requested"
CAPTURE_CHECKED = "capture_checked"


def resolve_captures(rt: Runtime, *, older_than_seconds: float | None = None, limit: int = 100) -> int:
    """Ask the channel about holds whose capture was requested and never answered (the server died between
    the call and its answer): a hold the channel captured is posted for what it took, as the capture would
    have; one it still holds gets a ``capture_checked`` event and waits for the next capture, cancel or its
    expiry. Not before ``in_flight_window`` has passed since the request (``older_than_seconds`` replaces it):
    the call may still be on its way. A channel that cannot be asked is asked again on the next pass."""
    cutoff = clock.now() - (in_flight_window(rt) if older_than_seconds is None
                            else timedelta(seconds=older_than_seconds))
    requested, later = events.alias("requested"), events.alias("later")
    unanswered = select(requested.c.id).where(
        requested.c.payment_id == payments.c.id, requested.c.type == CAPTURE_REQUESTED,
        requested.c.created_at < cutoff,
        ~select(later.c.id).where(later.c.payment_id == payments.c.id, later.c.id > requested.c.id,
                                  later.c.type.in_((CAPTURE_CHECKED, "status_changed"))).exists()).exists()
    rows = _tx(rt, lambda s: s.execute(
        select(payments.c.id, payments.c.reference, payments.c.channel, payments.c.amount)
        .where(payments.c.status == state.REQUIRES_CAPTURE, unanswered)
        .order_by(payments.c.id).limit(limit)).all())
    done = 0
    for row in rows:
        try:
            result = rt.channels[row.channel].query(row.reference)
        except (ChannelTimeout, ChannelUnavailable, ChannelError):
            continue
        taken = result.captured_amount if result.status == protocol.APPROVED else None
        if taken and taken <= row.amount:
            _tx(rt, lambda s, r=row, t=taken: _captured(s, rt, r.id, t, source="query"))
        else:
            _tx(rt, lambda s, r=row, st=result.status: _event(s, r.id, CAPTURE_CHECKED, status=st))
        done += 1
    return done


RECHECK_CAPTURED = timedelta(hours=1)
"""How long an expired hold the channel says it captured, without saying how much, waits before it is
asked again (``expire_authorizations``)."""


_STILL_HELD = (protocol.AUTHORIZED, protocol.PENDING, protocol.REQUIRES_ACTION)
"""A channel's status of a hold its cancel did not reach: still live at the channel."""

RECHECK_UNREACHABLE = timedelta(minutes=15)
"""How long an expired hold waits when the channel answered neither the cancel nor a status query."""


def expire_authorizations(rt: Runtime, *, limit: int = 100) -> int:
    """Release holds past their expiry, the longest expired first: the channel is told and the ledger
    voids. A channel that cannot be told is asked what became of the hold; one that answers neither
    keeps it, asked again ``RECHECK_UNREACHABLE`` later. A hold the channel captured after all is
    posted instead, for the amount it says it took; when neither its answer to the cancel nor its
    status says how much, nothing is posted, an operator is told (log), and the hold is asked about
    again an hour later, behind the others, so such holds never keep the rest from expiring."""
    now = clock.now()
    rows = _tx(rt, lambda s: s.execute(
        select(payments.c.id, payments.c.reference, payments.c.channel).where(
            payments.c.status == state.REQUIRES_CAPTURE, payments.c.authorization_expires_at < now)
        .order_by(payments.c.authorization_expires_at, payments.c.id).limit(limit)).all())
    for row in rows:
        connector = rt.channels[row.channel]
        try:
            result = connector.cancel(row.reference)
        except (ChannelTimeout, ChannelUnavailable, ChannelError):
            log.warning("authorization_cancel_failed", payment=row.id)
            result = None
            with contextlib.suppress(ChannelTimeout, ChannelUnavailable, ChannelError):
                result = connector.query(row.reference)  # what became of the hold, then
        if result is None or result.status in _STILL_HELD:
            # Neither the cancel nor the status: the channel may have captured the hold (a capture
            # whose answer was lost). Released blind, that money would be the customer's loss and
            # never the merchant's credit; so it waits, behind the others, and is asked again. The
            # same when the channel says the hold is still live: it is told again, not forgotten
            # with the customer's funds still blocked.
            log.warning("authorization_expiry_postponed", payment=row.id, channel=row.channel)
            _tx(rt, lambda s, r=row: _run(s, _UPDATE_PAYMENT, {
                "the_id": r.id, "authorization_expires_at": now + RECHECK_UNREACHABLE, "updated_at": now}))
            continue
        if result.status == protocol.APPROVED:  # captured after all (its answer was lost)
            if not result.captured_amount:
                with contextlib.suppress(ChannelTimeout, ChannelUnavailable, ChannelError):
                    queried = connector.query(row.reference)  # its status may say how much it took
                    if queried.status == protocol.APPROVED and queried.captured_amount:
                        result = queried
            outcome = _tx(rt, lambda s, r=row, found=result: apply_result(
                s, rt, r.reference, found, channel=r.channel, source="expiry"))
            if outcome == "captured_amount_unknown":
                log.error("authorization_captured_amount_unknown", payment=row.id, channel=row.channel)
                _tx(rt, lambda s, r=row: _run(s, _UPDATE_PAYMENT, {
                    "the_id": r.id, "authorization_expires_at": now + RECHECK_CAPTURED, "updated_at": now}))
            continue  # never released: the channel says it took the money
        _tx(rt, lambda s, r=row: _canceled(s, r.id, "authorization_expired"))
    return len(rows)


def count_by_status(session: Session) -> dict[str, int]:
    return dict(session.execute(select(payments.c.status, func.count()).group_by(payments.c.status)).all())


Job = Callable[[Runtime], int]
JOBS: list[tuple[str, Job]] = [
    ("payments.resolve_stuck", resolve_stuck),
    ("payments.resolve_captures", resolve_captures),
    ("payments.resolve_pending_refunds", resolve_pending_refunds),
    ("payments.expire_authorizations", expire_authorizations),
]
