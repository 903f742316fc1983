"""Every vault query."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, insert, select
from sqlalchemy.orm import Session

from clearhouse.vault.models import VaultBankAccount, VaultCard

cards = VaultCard.__table__
bank_accounts = VaultBankAccount.__table__


def insert_card(session: Session, values: dict[str, Any]) -> None:
    """Prebuilt and run on the session's connection: a card payment vaults its card, so this
    runs once per payment."""
    session.connection().execute(_INSERT_CARD, values)


_INSERT_CARD = insert(cards)


def get_card(session: Session, card_id: str) -> Row | None:
    return session.execute(select(cards).where(cards.c.id == card_id)).first()


def list_cards(session: Session, scope: list[Any], *, limit: int,
               starting_after: str | None) -> tuple[list[Row], bool]:
    """``scope``: the caller's conditions (``Principal.listing``)."""
    query = select(cards).where(*scope).order_by(cards.c.id).limit(limit + 1)
    if starting_after:
        query = query.where(cards.c.id > starting_after)
    rows = session.execute(query).all()
    return rows[:limit], len(rows) > limit


def insert_bank_account(session: Session, values: dict[str, Any]) -> None:
    session.execute(insert(bank_accounts).values(**values))


def get_bank_account(session: Session, bank_account_id: str) -> Row | None:
    return session.execute(select(bank_accounts).where(bank_accounts.c.id == bank_account_id)).first()


def list_bank_accounts(session: Session, scope: list[Any], *, limit: int,
                       starting_after: str | None) -> tuple[list[Row], bool]:
    """``scope``: the caller's conditions (``Principal.listing``)."""
    query = select(bank_accounts).where(*scope).order_by(bank_accounts.c.id).limit(limit + 1)
    if starting_after:
        query = query.where(bank_accounts.c.id > starting_after)
    rows = session.execute(query).all()
    return rows[:limit], len(rows) > limit
