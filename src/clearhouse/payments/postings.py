"""The ledger entries of payments, exactly as docs/accounting.md writes them.

Each function returns one balanced ``EntryRequest``; the caller writes it in the same
transaction as the payment's change of state. Accounts are named per accounting.md and
opened on first use (``ledger.chart``). Zero legs are left out (a fee plan of 0 %).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from clearhouse.ledger.chart import account_for
from clearhouse.ledger.service import CREDIT, DEBIT, EntryRequest, PostingRequest


def leg_postings(session: Session, currency: str, legs: list[tuple[str, str, str, int, dict]]) -> list[PostingRequest]:
    """The postings of (account name, type, direction, amount, opening flags) legs, accounts opened on first
    use; a leg whose amount came out negative is written on the other side (a channel that charges more than it
    collected: the clearing account is credited the difference), and a leg of 0 is left out."""
    return [
        PostingRequest(account_for(session, name, type_, currency, **flags),
                       direction if amount > 0 else (CREDIT if direction == DEBIT else DEBIT), abs(amount), currency)
        for name, type_, direction, amount, flags in legs
        if amount
    ]


def clearing(channel: str) -> tuple[str, str]:
    return f"channel_clearing:{channel}", "asset"


def channel_cost(channel: str) -> tuple[str, str]:
    return f"channel_cost:{channel}", "expense"


def wallet_account(session: Session, wallet_id: str, currency: str) -> str:
    """A customer's wallet: a liability that never goes below zero (the ledger refuses it)."""
    return account_for(session, f"customer_wallet:{wallet_id}", "liability", currency,
                       debits_must_not_exceed_credits=True)


def payment_entry(session: Session, *, payment_id: str, merchant_id: str, channel: str, amount: int,
                  currency: str, fee: int, cost: int, wallet_id: str | None, top_up: bool, pending: bool,
                  entry_id: str) -> EntryRequest:
    """Recipe 1 (a sale), 7 (a wallet top-up: no merchant, no fee) and 7b (paying from a wallet).

    Pending (recipe 2, manual capture) writes the same postings as a pending entry. A channel cost above
    the amount (the bank's fixed 0.50 on a 0.30 transfer) is booked whole, as the channel charges it:
    Dr ``channel_cost`` 0.50, Cr ``channel_clearing`` 0.20 (the channel nets its charge against other
    money it holds for us), Cr the merchant and the fee as usual."""
    if channel == "wallet":
        assert wallet_id is not None
        legs: list[tuple[str, str, str, int, dict]] = [
            (f"customer_wallet:{wallet_id}", "liability", DEBIT, amount, {"debits_must_not_exceed_credits": True}),
        ]
    else:
        legs = [
            (*clearing(channel), DEBIT, amount - cost, {}),
            (*channel_cost(channel), DEBIT, cost, {}),
        ]
    if top_up:
        assert wallet_id is not None
        legs.append((f"customer_wallet:{wallet_id}", "liability", CREDIT, amount,
                     {"debits_must_not_exceed_credits": True}))
    else:
        legs += [
            (f"merchant_pending:{merchant_id}", "liability", CREDIT, amount - fee, {"owner_id": merchant_id}),
            ("fee_revenue", "revenue", CREDIT, fee, {}),
        ]
    return EntryRequest(
        id=entry_id, postings=leg_postings(session, currency, legs), code="payment", reference=payment_id,
        metadata={"payment_id": payment_id, "merchant_id": merchant_id, "channel": channel},
        pending=pending,
    )


def refund_entry(session: Session, *, refund_id: str, payment_id: str, merchant_id: str, channel: str,
                 amount: int, currency: str, fee_back: int, cost_charged: int, wallet_id: str | None,
                 top_up: bool, cost_back: int = 0, pending: bool = False) -> EntryRequest:
    """Recipe 3: the merchant gives back the amount less the fee returned to it; the channel
    (or the wallet) takes the amount back. What the channel keeps of its fee is charged to
    the merchant (``cost_charged``) when its plan says the merchant bears it. A channel that
    gives back part of its fee (``cost_back``, the QR wallets) takes back that much less, and
    our channel cost falls by it.

    The refund of a wallet top-up is written ``pending`` when it is asked for: the wallet's
    money is held before the channel gives it back to the card, so a wallet spent in the
    meantime cannot be refunded twice over."""
    if top_up:
        assert wallet_id is not None
        legs: list[tuple[str, str, str, int, dict]] = [
            (f"customer_wallet:{wallet_id}", "liability", DEBIT, amount, {"debits_must_not_exceed_credits": True}),
        ]
    else:
        net_fee = fee_back - cost_charged
        legs = [(f"merchant_pending:{merchant_id}", "liability", DEBIT, amount - net_fee, {"owner_id": merchant_id})]
        if net_fee > 0:
            legs.append(("fee_revenue", "revenue", DEBIT, net_fee, {}))
        elif net_fee < 0:
            legs.append(("fee_revenue", "revenue", CREDIT, -net_fee, {}))
    if channel == "wallet":
        assert wallet_id is not None
        legs.append((f"customer_wallet:{wallet_id}", "liability", CREDIT, amount,
                     {"debits_must_not_exceed_credits": True}))
    else:
        legs.append((*clearing(channel), CREDIT, amount - cost_back, {}))
        if cost_back:
            legs.append((*channel_cost(channel), CREDIT, cost_back, {}))
    return EntryRequest(
        id=f"tr_{refund_id}", postings=leg_postings(session, currency, legs), code="refund", reference=refund_id,
        metadata={"payment_id": payment_id, "refund_id": refund_id, "merchant_id": merchant_id, "channel": channel},
        pending=pending,
    )
