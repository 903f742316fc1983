"""The Clearhouse e-wallet: a customer's balance is a ledger liability account that the
ledger itself keeps from going below zero. Top-ups are payments (by card, QR, transfer)
whose entry credits the wallet instead of a merchant (accounting.md recipe 7)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, insert, select
from sqlalchemy.orm import Session

from clearhouse.identity import service as identity
from clearhouse.identity.permissions import Principal
from clearhouse.kit import clock
from clearhouse.kit.db import newest_first
from clearhouse.kit.ids import new_id
from clearhouse.ledger import service as ledger
from clearhouse.payments import errors, postings
from clearhouse.payments.models import Wallet

wallets = Wallet.__table__


def open_wallet(session: Session, principal: Principal, *, customer_id: str, currency: str,
                merchant_id: str | None) -> tuple[Row, bool]:
    """The customer's wallet in ``currency``; opened when it does not exist (returns created)."""
    owner = identity.owner_of(session, principal, merchant_id)
    livemode = principal.creates_livemode
    found = session.execute(select(wallets).where(
        wallets.c.merchant_id == owner, wallets.c.livemode == livemode, wallets.c.customer_id == customer_id,
        wallets.c.currency == currency)).first()
    if found is not None:
        return found, False
    wallet_id = new_id("wal")
    account = postings.wallet_account(session, wallet_id, currency)
    session.execute(insert(wallets).values(id=wallet_id, merchant_id=owner, livemode=livemode,
                                           customer_id=customer_id, currency=currency, account_id=account,
                                           created_at=clock.now()))
    return wallet_row(session, principal, wallet_id), True


def wallet_row(session: Session, principal: Principal | None, wallet_id: str) -> Row:
    row = session.execute(select(wallets).where(wallets.c.id == wallet_id)).first()
    if row is None or (principal is not None and not principal.sees_object(row.merchant_id, row.livemode)):
        raise errors.WalletNotFound(f"no wallet {wallet_id}")
    return row


def wallet_view(session: Session, row: Row) -> dict[str, Any]:
    _account, balance = ledger.account_balance(session, row.account_id)
    return {"id": row.id, "object": "wallet", "livemode": row.livemode, "merchant_id": row.merchant_id,
            "customer_id": row.customer_id,
            "currency": row.currency, "balance": balance.posted, "pending": balance.posted - balance.available,
            "created_at": row.created_at}


def list_wallets(session: Session, principal: Principal, *, customer_id: str | None, merchant_id: str | None,
                 limit: int, starting_after: str | None, livemode: bool | None = None,
                 ) -> tuple[list[dict[str, Any]], bool]:
    """A page of wallets, newest first, with their balances; and whether more follow."""
    scope = principal.listing(wallets, merchant_id, livemode)
    if scope is None:
        return [], False
    query = select(wallets).where(*scope)
    if customer_id:
        query = query.where(wallets.c.customer_id == customer_id)
    rows, more = newest_first(session, query, wallets, starting_after, limit=limit, scope=scope)
    return [wallet_view(session, r) for r in rows], more
