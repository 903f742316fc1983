"""Our side of a reconciliation: the channel's payments and refunds as the ledger booked them.

A payment is one line of ours from the moment it became final (``succeeded``, ``failed`` or
``canceled``, the time of its timeline event); a refund from the moment the channel answered.
Every succeeded line has its ledger entry (payments post in the same transaction), so these
rows are the ledger's view with the channel's references beside it. Failed lines are kept so
that a statement saying "paid" for one of them is a ``status_mismatch``.

A refund line carries the fee the channel gives back as a negative fee (the QR wallets return
their cumulative share of the fee, so a payment's refunds return at most its fee; cards and
banks keep their fee, so 0): the ledger books the same, the clearing account credited with
the amount less that and the channel cost with it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import polars as pl
from sqlalchemy import and_, literal, select, union_all
from sqlalchemy.orm import Session

from clearhouse.payments.models import Payment, PaymentEvent, Refund
from clearhouse.reconciliation.frames import INTERNAL_SCHEMA, empty_internal

payments = Payment.__table__
events = PaymentEvent.__table__
refunds = Refund.__table__

FINAL = ("succeeded", "failed", "canceled")


def day_bounds(first: date, last: date, timezone: str) -> tuple[datetime, datetime]:
    """The UTC instants from the start of ``first`` to the end of ``last`` in the channel's calendar."""
    zone = ZoneInfo(timezone)
    start = datetime.combine(first, time.min, zone).astimezone(UTC)
    end = datetime.combine(last + timedelta(days=1), time.min, zone).astimezone(UTC)
    return start, end


def internal_lines(session: Session, channel: str, first: date, last: date, timezone: str) -> pl.DataFrame:
    """Our lines on ``channel`` that became final from ``first`` to ``last`` (days in ``timezone``)."""
    start, end = day_bounds(first, last, timezone)
    paid = (
        select(
            literal("payment").label("kind"), payments.c.id.label("our_id"), payments.c.reference.label("our_ref"),
            payments.c.external_id.label("channel_ref"), payments.c.status, payments.c.amount,
            payments.c.amount_captured, payments.c.channel_cost.label("fee"), payments.c.currency,
            events.c.created_at.label("booked_at"),
        )
        .join(events, and_(events.c.payment_id == payments.c.id, events.c.to_status.in_(FINAL)))
        .where(payments.c.channel == channel, payments.c.reference.is_not(None),
               events.c.created_at >= start, events.c.created_at < end)
    )
    refunded = (
        select(
            literal("refund").label("kind"), refunds.c.id.label("our_id"), refunds.c.id.label("our_ref"),
            refunds.c.external_id.label("channel_ref"),
            refunds.c.status, refunds.c.amount, refunds.c.amount.label("amount_captured"),
            (-refunds.c.channel_cost_returned).label("fee"), refunds.c.currency,
            refunds.c.updated_at.label("booked_at"),
        )
        .where(refunds.c.channel == channel, refunds.c.status.in_(("succeeded", "failed")),
               refunds.c.updated_at >= start, refunds.c.updated_at < end)
    )
    rows = session.execute(union_all(paid, refunded)).all()
    if not rows:
        return empty_internal()
    records = []
    for row in rows:
        is_refund = row.kind == "refund"
        succeeded = row.status == "succeeded"
        gross = row.amount_captured if succeeded and not is_refund else row.amount
        booked_at = row.booked_at.astimezone(UTC)
        records.append({
            "our_id": row.our_id, "our_ref": row.our_ref, "channel_ref": row.channel_ref,
            "kind": row.kind,
            "status": "succeeded" if succeeded else "failed",
            "amount": -gross if is_refund else gross,
            "fee": row.fee if succeeded else 0,
            "currency": row.currency,
            "booked_on": booked_at.astimezone(ZoneInfo(timezone)).date(),
            "booked_at": booked_at,
        })
    return pl.DataFrame(records, schema=INTERNAL_SCHEMA)
