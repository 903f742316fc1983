"""Worker jobs of card-code orders."""

from __future__ import annotations

import structlog

from clearhouse.kit.db import transact
from clearhouse.payments import service as payments
from clearhouse.payments.orders import service as orders

log = structlog.get_logger(__name__)

STUCK_AFTER_SECONDS = 30.0
"""An order not moved on for this long is the worker's: its request died, or it waits for a payment."""
PAYMENT_TIMEOUT_SECONDS = orders.PAYMENT_TIMEOUT.total_seconds()
"""A payment still pending this long after the order was made is canceled and the codes go back in stock
(the deadline the order's answers and the buyer's page state)."""


def advance_orders(rt: payments.Runtime, *, older_than_seconds: float = STUCK_AFTER_SECONDS,
                   payment_timeout_seconds: float = PAYMENT_TIMEOUT_SECONDS, limit: int = 100) -> int:
    """Move on every order that is not final and has not moved for ``older_than_seconds``:
    deliver what was paid, release what failed, timed out or never reached payment, finish
    refunds; each from the order's last recorded step. Returns how many orders changed status."""
    waiting = transact(rt.engine, lambda s: orders.orders_to_advance(s, older_than_seconds=older_than_seconds,
                                                                      limit=limit))
    moved = 0
    for row in waiting:
        try:
            status = orders.advance(rt, row.id, payment_timeout_seconds=payment_timeout_seconds)
        except Exception:  # noqa: BLE001 - one order's trouble (a channel down) must not stop the others
            log.exception("order_advance_failed", order=row.id)
            continue
        if status != row.status:
            moved += 1
    return moved
