"""Card-code orders: digital goods sold automatically, as a saga of recorded steps.

An order runs through short transactions with the payment's channel calls between them
(never inside them), each step recorded in ``order_steps`` and the order's ``status``
saying where it stands, so whatever crashes where, ``settle`` continues from there:

1. ``reserve``: in ONE transaction, ``quantity`` available codes are taken for the order
   (``reserved``). Overselling is impossible: on PostgreSQL the codes are locked with
   ``FOR UPDATE SKIP LOCKED`` (concurrent buyers take different rows instead of queueing),
   on SQLite ``BEGIN IMMEDIATE`` serializes writers; either way the update is conditional
   on ``status = 'available'`` and its row count checked.
2. ``pay``: the order is claimed for payment (``reserved`` -> ``awaiting_payment``, a
   conditional update: a released order is never paid) and the payment is made with an
   id fixed when the order was made, so a crash in between still finds it.
3. ``settle``: the payment's outcome decides. Succeeded: ``paid``, then ``deliver`` (one
   transaction: codes ``delivered``, order ``delivered``, webhook ``order.delivered``).
   Failed or canceled: ``release`` (the compensation: codes back in stock, order
   ``failed``). Still pending (QR, bank transfer): the order waits; the worker
   (``tasks.advance_orders``) settles it later, or cancels the payment past a timeout.
4. Delivery that cannot complete after payment (a code that does not decrypt, a product
   deactivated in between) turns into ``refunding``: the payment is refunded with an id
   fixed per order, then the order is ``refunded`` (webhook ``order.refunded``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import structlog
from sqlalchemy import Row, and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from clearhouse.audit import service as audit
from clearhouse.identity import service as identity
from clearhouse.identity.permissions import Principal
from clearhouse.kit import clock
from clearhouse.kit.canonical import canonical_json
from clearhouse.kit.crypto import CryptoError, FieldCipher
from clearhouse.kit.db import is_postgresql, newest_first, transact
from clearhouse.kit.errors import ClearhouseError, NotFound
from clearhouse.kit.ids import new_id, new_ids
from clearhouse.payments import errors as payment_errors
from clearhouse.payments import service as payments
from clearhouse.payments import state
from clearhouse.payments.models import Payment
from clearhouse.payments.orders.models import FINAL_ORDER_STATUSES, Order, OrderStep, Product, ProductCode
from clearhouse.payments.schemas import MAX_PAYMENT_AMOUNT
from clearhouse.webhooks import service as webhooks

log = structlog.get_logger(__name__)

products = Product.__table__
codes = ProductCode.__table__
orders = Order.__table__
steps = OrderStep.__table__

RESERVED = "reserved"
AWAITING_PAYMENT = "awaiting_payment"
PAID = "paid"
DELIVERED = "delivered"
FAILED = "failed"
REFUNDING = "refunding"
REFUNDED = "refunded"
WAITING = (RESERVED, AWAITING_PAYMENT)

PAYMENT_TIMEOUT = timedelta(minutes=30)
"""How long an order waits for its payment: its codes are held meanwhile, so not the channel's own
validity (a bank transfer's instructions hold for days), which would keep stock from other buyers."""


def payment_deadline(row: Row) -> datetime:
    """When the order stops waiting for its payment (the worker then cancels the payment)."""
    return row.created_at + PAYMENT_TIMEOUT


# ------------------------------------------------------------------------------ errors


class ProductNotFound(NotFound):
    """No such product, or not the caller's merchant's."""

    code = "product_not_found"
    title = "Product not found"


class OrderNotFound(NotFound):
    """No such order, or not the caller's merchant's (the buyer's page: or a wrong token)."""

    code = "order_not_found"
    title = "Order not found"


class OutOfStock(ClearhouseError):
    """An order reserves all its codes or none: fewer available than asked, nothing is
    reserved and no payment is taken."""

    code = "out_of_stock"
    status = 409
    title = "Out of stock"


class ProductInactive(ClearhouseError):
    """A deactivated product is not sold."""

    code = "product_inactive"
    status = 409
    title = "Product is not for sale"


class DuplicateCode(ClearhouseError):
    """A code is in a product's stock once: an upload repeating one (within itself or
    already stored) is refused whole."""

    code = "duplicate_code"
    status = 409
    title = "Duplicate code"


class OrderNotDelivered(ClearhouseError):
    """Codes are shown only for a delivered order."""

    code = "order_not_delivered"
    status = 409
    title = "Order not delivered"


class AmountTooLarge(ClearhouseError):
    """Price times quantity must fit the largest payment (``MAX_PAYMENT_AMOUNT``, 10^15 minor units)."""

    code = "amount_too_large"
    status = 422
    title = "Amount too large"


class DeliveryFailed(Exception):
    """Delivery cannot complete after payment; the order refunds itself."""

    def __init__(self, reason: str, message: str, defective_code_id: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.defective_code_id = defective_code_id


# ------------------------------------------------------------------------------ products


def _code_context(code_id: str) -> str:
    """Bound into each code's ciphertext: moved to another row, it does not decrypt."""
    return f"product_codes.code:{code_id}"


def _fingerprint(cipher: FieldCipher, product_id: str, code: str) -> str:
    # Keyed, and per product: equal codes of two products do not reveal each other.
    return cipher.fingerprint(f"product_code:{product_id}:{code}")


def _product(session: Session, principal: Principal | None, product_id: str) -> Row:
    row = session.execute(select(products).where(products.c.id == product_id)).first()
    if row is None or (principal is not None and not principal.sees_object(row.merchant_id, row.livemode)):
        raise ProductNotFound(f"no product {product_id}")
    return row


def stock_of(session: Session, product_ids: list[str]) -> dict[str, dict[str, int]]:
    found = {pid: {"available": 0, "reserved": 0, "delivered": 0, "defective": 0} for pid in product_ids}
    if not product_ids:
        return found
    rows = session.execute(
        select(codes.c.product_id, codes.c.status, func.count()).where(codes.c.product_id.in_(product_ids))
        .group_by(codes.c.product_id, codes.c.status)).all()
    for product_id, status, count in rows:
        found[product_id][status] = count
    return found


def product_view(row: Row, stock: dict[str, int]) -> dict[str, Any]:
    return {
        "id": row.id, "object": "product", "livemode": row.livemode, "merchant_id": row.merchant_id, "name": row.name,
        "price": {"amount": row.price_amount, "currency": row.currency}, "active": row.active, "stock": stock,
        "created_at": row.created_at, "updated_at": row.updated_at,
    }


def get_product(session: Session, principal: Principal | None, product_id: str) -> dict[str, Any]:
    row = _product(session, principal, product_id)
    return product_view(row, stock_of(session, [row.id])[row.id])


def list_products(session: Session, principal: Principal, *, active: bool | None, limit: int,
                  starting_after: str | None, livemode: bool | None = None) -> tuple[list[dict[str, Any]], bool]:
    scope = principal.listing(products, None, livemode)
    if scope is None:
        return [], False
    query = select(products).where(*scope)
    if active is not None:
        query = query.where(products.c.active.is_(active))
    # The orders' cursor rule: newest first, and an unknown (or another merchant's) cursor is an empty page.
    rows, more = newest_first(session, query, products, starting_after, limit=limit, scope=scope)
    stock = stock_of(session, [r.id for r in rows])
    return [product_view(r, stock[r.id]) for r in rows], more


def create_product(session: Session, actor: audit.Actor, principal: Principal, *, name: str, amount: int,
                   currency: str, active: bool, merchant_id: str | None) -> dict[str, Any]:
    owner = identity.owner_of(session, principal, merchant_id)
    now = clock.now()
    product_id = new_id("prod")
    session.execute(insert(products).values(
        id=product_id, merchant_id=owner, livemode=principal.creates_livemode, name=name, price_amount=amount,
        currency=currency, active=active, created_at=now, updated_at=now))
    audit.record(session, actor, "orders.product.create", "product", product_id, merchant_id=owner,
                 changes={"name": name, "price": {"amount": amount, "currency": currency}, "active": active})
    return get_product(session, None, product_id)


def update_product(session: Session, actor: audit.Actor, principal: Principal, product_id: str, *,
                   name: str | None, amount: int | None, currency: str | None,
                   active: bool | None) -> dict[str, Any]:
    """Change name, price or availability. Orders already made keep the price they were made at."""
    row = _product(session, principal, product_id)
    values: dict[str, Any] = {}
    changes: dict[str, Any] = {}
    if name is not None and name != row.name:
        values["name"], changes["name"] = name, {"from": row.name, "to": name}
    if amount is not None and (amount, currency) != (row.price_amount, row.currency):
        values.update(price_amount=amount, currency=currency)
        changes["price"] = {"from": {"amount": row.price_amount, "currency": row.currency},
                            "to": {"amount": amount, "currency": currency}}
    if active is not None and active != row.active:
        values["active"], changes["active"] = active, {"from": row.active, "to": active}
    if values:
        session.execute(update(products).where(products.c.id == row.id).values(**values, updated_at=clock.now()))
        audit.record(session, actor, "orders.product.update", "product", row.id, merchant_id=row.merchant_id,
                     changes=changes)
    return get_product(session, None, row.id)


def add_codes(session: Session, cipher: FieldCipher, actor: audit.Actor, principal: Principal, product_id: str,
              new_codes: list[str]) -> dict[str, Any]:
    """Add a batch of codes to the stock, each encrypted, all or none; the audit trail
    records how many, never the codes."""
    row = _product(session, principal, product_id)
    fingerprints = [_fingerprint(cipher, row.id, code) for code in new_codes]
    seen: dict[str, int] = {}
    repeated: list[int] = []
    for index, fingerprint in enumerate(fingerprints):
        if fingerprint in seen:
            repeated.append(index)
        seen.setdefault(fingerprint, index)
    stored = set(session.execute(select(codes.c.fingerprint).where(
        codes.c.product_id == row.id, codes.c.fingerprint.in_(list(seen)))).scalars())
    repeated.extend(index for fingerprint, index in seen.items() if fingerprint in stored)
    if repeated:
        raise DuplicateCode(f"{len(repeated)} code(s) of this upload are already in the product's stock or repeated",
                            indexes=sorted(repeated))
    batch_id = new_id("cbat")
    now = clock.now()
    ids = new_ids("code", len(new_codes))
    values = [{"id": code_id, "product_id": row.id, "batch_id": batch_id, "fingerprint": fingerprint,
               "code_encrypted": cipher.encrypt(code, _code_context(code_id)), "status": "available",
               "order_id": None, "created_at": now, "updated_at": now}
              for code_id, code, fingerprint in zip(ids, new_codes, fingerprints, strict=True)]
    try:
        with session.begin_nested():
            session.execute(insert(codes), values)
    except IntegrityError:
        # A concurrent upload stored one of these codes after our check: the constraint decides.
        raise DuplicateCode("a code of this upload was stored by a concurrent upload") from None
    audit.record(session, actor, "orders.product.codes_add", "product", row.id, merchant_id=row.merchant_id,
                 changes={"batch_id": batch_id, "count": len(values)})
    return {"product_id": row.id, "batch_id": batch_id, "added": len(values),
            "stock": stock_of(session, [row.id])[row.id]}


# ------------------------------------------------------------------------------ orders: reading


def _order(session: Session, order_id: str, *, lock: bool = False) -> Row:
    query = select(orders).where(orders.c.id == order_id)
    if lock and is_postgresql(session):
        query = query.with_for_update()
    row = session.execute(query).first()
    if row is None:
        raise OrderNotFound(f"no order {order_id}")
    return row


def _visible_order(session: Session, principal: Principal | None, order_id: str) -> Row:
    row = _order(session, order_id)
    if principal is not None and not principal.sees_object(row.merchant_id, row.livemode):
        raise OrderNotFound(f"no order {order_id}")
    return row


def steps_of(session: Session, order_id: str) -> list[dict[str, Any]]:
    rows = session.execute(select(steps).where(steps.c.order_id == order_id).order_by(steps.c.at, steps.c.id)).all()
    return [{"step": r.step, "status": r.status, "detail": orjson.loads(r.detail_json), "at": r.at} for r in rows]


def order_view(session: Session, row: Row, *, with_steps: bool = False, with_payment: bool = False,
               ) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": row.id, "object": "order", "livemode": row.livemode, "merchant_id": row.merchant_id,
        "product_id": row.product_id,
        "quantity": row.quantity, "amount": row.amount, "currency": row.currency, "status": row.status,
        "payment_id": row.payment_id, "payment_method": row.payment_method, "refund_id": row.refund_id,
        "customer": orjson.loads(row.customer_json), "failure_code": row.failure_code,
        "failure_message": row.failure_message, "created_at": row.created_at, "updated_at": row.updated_at,
        "delivered_at": row.delivered_at,
    }
    if with_payment:
        payment = _payment_or_none(session, row.payment_id)
        view["payment_status"] = payment.status if payment is not None else None
        if payment is not None and payment.next_action_json and payment.status not in state.FINAL:
            view["next_action"] = _within_deadline(orjson.loads(payment.next_action_json), payment_deadline(row))
    if with_steps:
        view["steps"] = steps_of(session, row.id)
    return view


def _within_deadline(next_action: dict[str, Any], deadline: datetime) -> dict[str, Any]:
    """The buyer is told the order's deadline, not a later one of the channel's (the payment is
    canceled at the order's)."""
    stated = next_action.get("expires_at")
    if isinstance(stated, str):
        with contextlib.suppress(ValueError):
            if datetime.fromisoformat(stated.replace("Z", "+00:00")) > deadline:
                return {**next_action, "expires_at": clock.rfc3339(deadline)}
    return next_action


def get_order(session: Session, principal: Principal | None, order_id: str) -> dict[str, Any]:
    return order_view(session, _visible_order(session, principal, order_id), with_steps=True, with_payment=True)


def list_orders(session: Session, principal: Principal, *, status: str | None, product_id: str | None,
                limit: int, starting_after: str | None, livemode: bool | None = None,
                ) -> tuple[list[dict[str, Any]], bool]:
    scope = principal.listing(orders, None, livemode)
    if scope is None:
        return [], False
    query = select(orders).where(*scope)
    if status:
        query = query.where(orders.c.status == status)
    if product_id:
        query = query.where(orders.c.product_id == product_id)
    rows, more = newest_first(session, query, orders, starting_after, limit=limit, scope=scope)
    return [order_view(session, r) for r in rows], more


def _delivered_codes(session: Session, cipher: FieldCipher, row: Row) -> list[str]:
    found = session.execute(select(codes.c.id, codes.c.code_encrypted).where(
        codes.c.order_id == row.id, codes.c.status == "delivered").order_by(codes.c.id)).all()
    return [cipher.decrypt(c.code_encrypted, _code_context(c.id)) for c in found]


def reveal_codes(session: Session, cipher: FieldCipher, actor: audit.Actor, principal: Principal,
                 order_id: str) -> dict[str, Any]:
    """The codes a delivered order sold: the same codes however often they are read (the
    reading is audited, like a vault reveal; the codes never enter the trail)."""
    row = _visible_order(session, principal, order_id)
    if row.status != DELIVERED:
        raise OrderNotDelivered(f"order {order_id} is {row.status}")
    found = _delivered_codes(session, cipher, row)
    audit.record(session, actor, "orders.order.codes_read", "order", row.id, merchant_id=row.merchant_id,
                 changes={"count": len(found)})
    return {"order_id": row.id, "codes": found}


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def buyer_order(session: Session, order_id: str, token: str) -> Row:
    """The order the buyer's page is for; a wrong token is answered like an unknown order."""
    row = session.execute(select(orders).where(orders.c.id == order_id)).first()
    if row is None or not token or not hmac.compare_digest(row.delivery_token_digest, token_digest(token)):
        raise OrderNotFound(f"no order {order_id}")
    return row


def buyer_delivery(session: Session, cipher: FieldCipher, order_id: str, token: str,
                   ) -> tuple[Row, str, list[str]]:
    """What the buyer's page shows: the order, its product's name and, once delivered, its
    codes. A wrong token is answered like an unknown order."""
    row = buyer_order(session, order_id, token)
    found = _delivered_codes(session, cipher, row) if row.status == DELIVERED else []
    return row, _product(session, None, row.product_id).name, found


# ------------------------------------------------------------------------------ steps and webhooks


def record_step(session: Session, order_id: str, step: str, status: str, **detail: Any) -> None:
    session.execute(insert(steps).values(id=new_id("ostp"), order_id=order_id, step=step, status=status,
                                         detail_json=canonical_json(detail), at=clock.now()))


def _transition(session: Session, order_id: str, from_statuses: tuple[str, ...], to_status: str,
                **values: Any) -> bool:
    """Move the order on only from where it is expected to be: of two racing callers
    (a request and the worker), exactly one wins."""
    result = session.execute(update(orders).where(orders.c.id == order_id, orders.c.status.in_(from_statuses))
                             .values(status=to_status, updated_at=clock.now(), **values))
    return result.rowcount == 1


def _publish(session: Session, order_id: str, event_type: str) -> None:
    view = order_view(session, _order(session, order_id))
    webhooks.emit(session, merchant_id=view["merchant_id"], livemode=view["livemode"], event_type=event_type,
                  data=view)


def _payment_id_for(order_id: str) -> str:
    return "pay_" + hashlib.sha256(f"order-payment:{order_id}".encode()).hexdigest()[:26]


def _refund_id_for(order_id: str) -> str:
    return "re_" + hashlib.sha256(f"order-refund:{order_id}".encode()).hexdigest()[:26]


def _payment_or_none(session: Session, payment_id: str) -> Any:
    try:
        return payments.get_payment_row(session, None, payment_id)
    except payment_errors.PaymentNotFound:
        return None


# ------------------------------------------------------------------------------ the saga's steps


@dataclass
class OrderRequest:
    """A validated request to buy (the HTTP schema builds it)."""

    product_id: str
    quantity: int
    method: str
    customer: dict[str, Any] | None = None
    card: dict[str, Any] | None = None


def reserve(session: Session, principal: Principal, request: OrderRequest, *, order_id: str,
            delivery_token: str) -> Row:
    """Step 1, one transaction: the order and its ``quantity`` codes held for it, or
    ``out_of_stock`` and nothing at all."""
    product = _product(session, principal, request.product_id)
    identity.owner_of(session, principal, product.merchant_id, taking_payments=True)  # none for a suspended merchant
    if not product.active:
        raise ProductInactive(f"product {product.id} is not for sale")
    if product.price_amount * request.quantity > MAX_PAYMENT_AMOUNT:
        # Grouped digits: readable, and not a run of digits that error scrubbing takes for a card number.
        raise AmountTooLarge(f"{request.quantity} x {product.price_amount:,} minor units is more than the largest "
                             f"payment, {MAX_PAYMENT_AMOUNT:,}")
    query = (select(codes.c.id).where(codes.c.product_id == product.id, codes.c.status == "available")
             .order_by(codes.c.id).limit(request.quantity))
    if is_postgresql(session):
        # Concurrent buyers lock different codes instead of queueing behind one another's;
        # a row someone else holds is skipped, never sold twice.
        query = query.with_for_update(skip_locked=True)
    code_ids = list(session.execute(query).scalars())
    if len(code_ids) < request.quantity:
        raise OutOfStock(f"{len(code_ids)} of {request.quantity} codes available for product {product.id}",
                         available=len(code_ids))
    now = clock.now()
    session.execute(insert(orders).values(
        id=order_id, merchant_id=product.merchant_id, livemode=product.livemode, product_id=product.id,
        quantity=request.quantity,
        amount=product.price_amount * request.quantity, currency=product.currency, status=RESERVED,
        payment_method=request.method, payment_id=_payment_id_for(order_id),
        customer_json=canonical_json(request.customer or {}), delivery_token_digest=token_digest(delivery_token),
        created_at=now, updated_at=now))
    taken = session.execute(update(codes).where(codes.c.id.in_(code_ids), codes.c.status == "available")
                            .values(status="reserved", order_id=order_id, updated_at=now)).rowcount
    if taken != request.quantity:
        raise OutOfStock(f"only {taken} of {request.quantity} codes could be reserved", available=taken)
    record_step(session, order_id, "reserve", "done", codes=taken, amount=product.price_amount * request.quantity,
                currency=product.currency)
    return _order(session, order_id)


def pay(rt: payments.Runtime, principal: Principal, actor: audit.Actor, order_id: str,
        card: dict[str, Any] | None) -> dict[str, Any] | None:
    """Step 2: claim the order for payment, then take the payment under the order's fixed
    payment id. None: the order was no longer waiting for payment (released by the worker).
    A refused request (an invalid card, ...) releases the order and is raised to the caller."""

    def claim(session: Session) -> Row | None:
        if not _transition(session, order_id, (RESERVED,), AWAITING_PAYMENT):
            return None
        row = _order(session, order_id)
        record_step(session, order_id, "pay", "started", payment_id=row.payment_id, method=row.payment_method)
        return row

    row = transact(rt.engine, claim)
    if row is None:
        return None
    product_name = transact(rt.engine, lambda s: _product(s, None, row.product_id).name)
    request = payments.NewPayment(
        amount=row.amount, currency=row.currency, method=row.payment_method, merchant_id=row.merchant_id,
        merchant_order_id=row.id, customer=orjson.loads(row.customer_json) or None, card=card,
        description=f"{row.quantity} x {product_name}"[:500], metadata={"order_id": row.id}, livemode=row.livemode)
    try:
        return payments.create_payment(rt, principal, actor, request, payment_id=row.payment_id)
    except ClearhouseError as error:
        code, message = error.code, error.detail
        transact(rt.engine, lambda s: release(s, order_id, code, message))
        raise


def release(session: Session, order_id: str, code: str, message: str) -> bool:
    """Compensation, one transaction: the order's held codes go back in stock and the order
    is ``failed``. False when the order was no longer waiting (someone else settled it)."""
    if not _transition(session, order_id, WAITING, FAILED, failure_code=code[:64], failure_message=message[:500]):
        return False
    released = session.execute(update(codes).where(codes.c.order_id == order_id, codes.c.status == "reserved")
                               .values(status="available", order_id=None, updated_at=clock.now())).rowcount
    record_step(session, order_id, "release", "done", codes=released, reason=code)
    return True


def mark_paid(session: Session, order_id: str, payment_id: str) -> bool:
    """The payment succeeded: recorded before delivery, so a crash in between ends delivered."""
    if not _transition(session, order_id, WAITING, PAID):
        return False
    record_step(session, order_id, "pay", "done", payment_id=payment_id, payment_status=state.SUCCEEDED)
    return True


def deliver(session: Session, cipher: FieldCipher, order_id: str) -> bool:
    """Step 3, one transaction: every held code readable, then all ``delivered`` with the
    order and the ``order.delivered`` webhook, or ``DeliveryFailed`` and nothing changed.
    Happens once: a second call finds the order no longer ``paid``."""
    row = _order(session, order_id, lock=True)
    if row.status != PAID:
        return False
    product = _product(session, None, row.product_id)
    if not product.active:
        raise DeliveryFailed("product_inactive", f"product {product.id} was deactivated before delivery")
    held = session.execute(select(codes.c.id, codes.c.code_encrypted).where(
        codes.c.order_id == order_id, codes.c.status == "reserved").order_by(codes.c.id)).all()
    if len(held) != row.quantity:
        raise DeliveryFailed("codes_missing", f"{len(held)} of {row.quantity} held codes found")
    for code in held:
        try:
            cipher.decrypt(code.code_encrypted, _code_context(code.id))
        except CryptoError:
            raise DeliveryFailed("code_unreadable", f"code {code.id} does not decrypt", code.id) from None
    now = clock.now()
    if not _transition(session, order_id, (PAID,), DELIVERED, delivered_at=now):
        return False
    session.execute(update(codes).where(codes.c.order_id == order_id, codes.c.status == "reserved")
                    .values(status="delivered", updated_at=now))
    record_step(session, order_id, "deliver", "done", codes=len(held))
    _publish(session, order_id, "order.delivered")
    return True


def _delivery_failed(session: Session, order_id: str, failure: DeliveryFailed) -> bool:
    if not _transition(session, order_id, (PAID,), REFUNDING, failure_code=failure.reason,
                       failure_message=failure.message[:500], refund_id=_refund_id_for(order_id)):
        return False
    if failure.defective_code_id is not None:
        # Never offered again: set aside, still naming the order it failed.
        session.execute(update(codes).where(codes.c.id == failure.defective_code_id)
                        .values(status="defective", updated_at=clock.now()))
    record_step(session, order_id, "deliver", "failed", reason=failure.reason, message=failure.message[:500])
    return True


def refund(rt: payments.Runtime, order_id: str) -> str:
    """Compensation after payment: refund the whole payment under the order's fixed refund
    id (asking twice never refunds twice); once the refund succeeded, the held codes go back
    in stock and the order is ``refunded``. Returns the refund's status."""
    row = transact(rt.engine, lambda s: _order(s, order_id))
    if row.status != REFUNDING:
        return "not_refunding"
    refund_id = row.refund_id or _refund_id_for(order_id)
    existing = transact(rt.engine, lambda s: _refund_or_none(s, refund_id))
    if existing is None:
        payment = transact(rt.engine, lambda s: _payment_or_none(s, row.payment_id))
        if payment is not None and payment.status == state.SUCCEEDED and payment.amount_captured > 0 and (
                payment.amount_refunded + payment.amount_refund_pending >= payment.amount_captured):
            # Refunded by hand already, nothing left for the order's own refund: the buyer has the
            # money back once those refunds succeed, and the order is done then.
            if payment.amount_refunded < payment.amount_captured:
                return "pending"
            transact(rt.engine, lambda s: _refunded(s, order_id, None, by_hand=True))
            return "succeeded"
        transact(rt.engine, lambda s: record_step(s, order_id, "refund", "started", refund_id=refund_id))
        try:
            view = payments.refund(rt, None, row.payment_id, None, "the order could not be delivered",
                                   refund_id=refund_id)  # type: ignore[arg-type]  # None: the system itself
        except (payment_errors.PaymentStateConflict, payment_errors.RefundExceedsCaptured) as error:
            # Already refunded by hand (or not refundable): the operator decides; recorded once.
            code, message = error.code, error.detail[:500]
            transact(rt.engine, lambda s: record_step(s, order_id, "refund", "failed", code=code, message=message))
            return "failed"
    else:
        view = existing
    if view["status"] == "succeeded":
        payment = transact(rt.engine, lambda s: _payment_or_none(s, row.payment_id))
        if payment.amount_refunded < payment.amount_captured:
            # Ours took what a refund by hand in part had left: the buyer has it all back only
            # once that one has succeeded too.
            if payment.amount_refunded + payment.amount_refund_pending >= payment.amount_captured:
                return "pending"
            # It failed: the buyer is short by it, and the order's one refund is spent. Not
            # `refunded`: an operator refunds the rest by hand, and the order is done then.
            transact(rt.engine, lambda s: _refunded_short(s, order_id, refund_id,
                                                          payment.amount_captured - payment.amount_refunded))
            return "failed"
        transact(rt.engine, lambda s: _refunded(s, order_id, refund_id))
    elif view["status"] == "failed" and existing is None:
        transact(rt.engine, lambda s: record_step(s, order_id, "refund", "failed", refund_id=refund_id,
                                                  code=view.get("failure_code")))
    return view["status"]


def _refunded_short(session: Session, order_id: str, refund_id: str, short: int) -> None:
    """Recorded once (the worker comes back to a ``refunding`` order every pass)."""
    last = session.execute(select(steps.c.step, steps.c.status, steps.c.detail_json).where(
        steps.c.order_id == order_id).order_by(steps.c.at.desc(), steps.c.id.desc()).limit(1)).first()
    if last is not None and (last.step, last.status) == ("refund", "failed") \
            and orjson.loads(last.detail_json).get("code") == "refunded_short":
        return
    log.error("order_refunded_short", order=order_id, refund=refund_id, short=short)
    record_step(session, order_id, "refund", "failed", refund_id=refund_id, code="refunded_short", short=short,
                message="a refund made by hand failed after the order's own refund took only the rest")


def _refund_or_none(session: Session, refund_id: str) -> dict[str, Any] | None:
    try:
        return payments.get_refund(session, None, refund_id)
    except payment_errors.RefundNotFound:
        return None


def _refunded(session: Session, order_id: str, refund_id: str | None, **detail: Any) -> None:
    if not _transition(session, order_id, (REFUNDING,), REFUNDED):
        return
    released = session.execute(update(codes).where(codes.c.order_id == order_id, codes.c.status == "reserved")
                               .values(status="available", order_id=None, updated_at=clock.now())).rowcount
    record_step(session, order_id, "refund", "done", refund_id=refund_id, codes_released=released, **detail)
    _publish(session, order_id, "order.refunded")


def settle(rt: payments.Runtime, order_id: str, *, release_unpaid: bool = False) -> str:
    """Continue the saga from its last recorded step; returns the order's status after.

    ``release_unpaid``: an order with no payment yet is released (the worker, for an order
    whose request died between reservation and payment; never the request itself)."""
    row = transact(rt.engine, lambda s: _order(s, order_id))
    if row.status in WAITING:
        payment = transact(rt.engine, lambda s: _payment_or_none(s, row.payment_id))
        if payment is None:
            if release_unpaid:
                transact(rt.engine, lambda s: release(s, order_id, "payment_not_started",
                                                      "no payment was started for the reserved codes"))
        elif payment.status == state.SUCCEEDED:
            transact(rt.engine, lambda s: mark_paid(s, order_id, payment.id))
        elif payment.status in (state.FAILED, state.CANCELED):
            code = payment.failure_code or f"payment_{payment.status}"
            message = payment.failure_message or f"the payment was {payment.status}"
            transact(rt.engine, lambda s: release(s, order_id, code, message))
        row = transact(rt.engine, lambda s: _order(s, order_id))
    if row.status == PAID:
        try:
            transact(rt.engine, lambda s: deliver(s, rt.cipher, order_id))
        except DeliveryFailed as error:
            failure = error
            log.warning("order_delivery_failed", order=order_id, reason=failure.reason)
            transact(rt.engine, lambda s: _delivery_failed(s, order_id, failure))
        row = transact(rt.engine, lambda s: _order(s, order_id))
    if row.status == REFUNDING:
        refund(rt, order_id)
        row = transact(rt.engine, lambda s: _order(s, order_id))
    if row.status == FAILED and _refund_late_success(rt, row):
        row = transact(rt.engine, lambda s: _order(s, order_id))
    return row.status


def _refund_late_success(rt: payments.Runtime, row: Row) -> bool:
    """A released order whose payment succeeded anyway (the worker released it while its
    request was still starting the payment): the money goes back."""
    payment = transact(rt.engine, lambda s: _payment_or_none(s, row.payment_id))
    if payment is None or payment.status != state.SUCCEEDED or row.refund_id is not None:
        return False

    def mark(session: Session) -> bool:
        found = session.execute(update(orders).where(orders.c.id == row.id, orders.c.status == FAILED,
                                                     orders.c.refund_id.is_(None))
                                .values(status=REFUNDING, refund_id=_refund_id_for(row.id), updated_at=clock.now()))
        if found.rowcount != 1:
            return False
        record_step(session, row.id, "pay", "done", payment_id=payment.id, payment_status=state.SUCCEEDED,
                    late=True)
        return True

    if not transact(rt.engine, mark):
        return False
    refund(rt, row.id)
    return True


# ------------------------------------------------------------------------------ placing an order


def _answer(session: Session, cipher: FieldCipher, order_id: str) -> dict[str, Any]:
    """The answer to ``POST /v1/orders``: the order, with its codes once delivered."""
    row = _order(session, order_id)
    view = order_view(session, row, with_steps=True, with_payment=True)
    if row.status == DELIVERED:
        view["codes"] = _delivered_codes(session, cipher, row)
    return view


def _answer_again(session: Session, cipher: FieldCipher, principal: Principal, order_id: str,
                  delivery_token: str) -> dict[str, Any]:
    row = _visible_order(session, principal, order_id)
    # Not `updated_at`: the order has not moved, and the worker picks orders by it.
    session.execute(update(orders).where(orders.c.id == row.id)
                    .values(delivery_token_digest=token_digest(delivery_token)))
    return _answer(session, cipher, row.id)


def place_order(rt: payments.Runtime, principal: Principal, actor: audit.Actor, request: OrderRequest, *,
                order_id: str | None = None) -> dict[str, Any]:
    """Reserve, pay, deliver (or release, or wait for the payment); returns the order with
    its codes when delivered and the buyer's page address."""
    order_id = order_id or new_id("ord")
    existing = transact(rt.engine, lambda s: s.execute(select(orders.c.id).where(orders.c.id == order_id)).first())
    delivery_token = secrets.token_urlsafe(32)
    if existing is not None:
        # The same Idempotency-Key with no stored answer (the request died after the order was
        # committed, before its answer was stored): the order as it stands, with the answer's promises
        # (the buyer's page, the codes once delivered). The page's token is kept only as a digest,
        # so a fresh one replaces it: the link of a lost answer stops working.
        view = transact(rt.engine, lambda s: _answer_again(s, rt.cipher, principal, order_id, delivery_token))
    else:
        transact(rt.engine, lambda s: reserve(s, principal, request, order_id=order_id,
                                              delivery_token=delivery_token))
        pay(rt, principal, actor, order_id, request.card)
        settle(rt, order_id)
        view = transact(rt.engine, lambda s: _answer(s, rt.cipher, order_id))
    base = str(rt.settings.public_base_url).rstrip("/")
    view["delivery_url"] = f"{base}/orders/{order_id}/delivery?token={delivery_token}"
    return view


# ------------------------------------------------------------------------------ the worker


def orders_to_advance(session: Session, *, older_than_seconds: float, limit: int) -> list[Row]:
    """Orders not moved on for ``older_than_seconds`` (a request that died, a payment still
    pending), and at once an order waiting for a payment that has become final: a buyer who
    paid the QR code or sent the transfer gets the codes on the worker's next pass."""
    cutoff = clock.now() - timedelta(seconds=older_than_seconds)
    payment_final = (select(Payment.id)
                     .where(Payment.id == orders.c.payment_id, Payment.status.in_(state.FINAL)).exists())
    return session.execute(
        select(orders.c.id, orders.c.status, orders.c.payment_id, orders.c.created_at)
        .where(orders.c.status.not_in(FINAL_ORDER_STATUSES),
               or_(orders.c.updated_at < cutoff, and_(orders.c.status == AWAITING_PAYMENT, payment_final)))
        .order_by(orders.c.updated_at).limit(limit)).all()


def advance(rt: payments.Runtime, order_id: str, *, payment_timeout_seconds: float) -> str:
    """One stuck or waiting order moved on: settled from its last step; a payment still
    pending past the timeout is canceled first (so it cannot succeed after the release)."""
    row = transact(rt.engine, lambda s: _order(s, order_id))
    if row.status == AWAITING_PAYMENT and clock.now() - row.created_at > timedelta(seconds=payment_timeout_seconds):
        payment = transact(rt.engine, lambda s: _payment_or_none(s, row.payment_id))
        if payment is not None and payment.status not in state.FINAL:
            # PaymentStateConflict: the customer paid (or it settled) just now; settle sees the outcome.
            # ChannelNotAnswering: the channel is down, or the payment's call may still be in flight:
            # the order keeps waiting and the worker's next pass tries the cancel again.
            with contextlib.suppress(payment_errors.PaymentStateConflict, payment_errors.ChannelNotAnswering):
                payments.cancel(rt, None, row.payment_id, "order_payment_timeout")  # type: ignore[arg-type]
    status = settle(rt, order_id, release_unpaid=True)
    if status not in FINAL_ORDER_STATUSES:
        # Still waiting: to the back of the worker's queue.
        transact(rt.engine, lambda s: s.execute(update(orders).where(orders.c.id == order_id,
                                                                      orders.c.status == status)
                                                .values(updated_at=clock.now())))
    return status


def count_by_status(session: Session) -> dict[str, int]:
    return dict(session.execute(select(orders.c.status, func.count()).group_by(orders.c.status)).all())
