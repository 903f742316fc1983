"""Vault HTTP endpoints: parse, call the service inside one transaction, render masked."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, Request
from sqlalchemy.orm import Session

from clearhouse.identity.permissions import actor_of, principal_of, requires
from clearhouse.kit.api import ModeFilter, Page, PrefixRouter
from clearhouse.kit.db import transact
from clearhouse.vault import service
from clearhouse.vault.schemas import BankAccountCreate, BankAccountOut, CardCreate, CardOut

router = PrefixRouter(prefix="/v1/vault", tags=["vault"])
_READ = [requires("vault:read")]
_WRITE = [requires("vault:write")]

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown, or another merchant's (`card_not_found`, `bank_account_not_found`, "
          "`not_found` for a merchant)"},
    422: {"description": "A rule is broken (`validation_error`, `invalid_card_number`, `card_expired`, "
          "`invalid_expiry`, `invalid_bank_account`, `merchant_required`)"},
}


def _engine(request: Request) -> Any:
    return request.app.state.engine


def _cipher(request: Request) -> Any:
    return request.app.state.cipher


@router.post("/cards", status_code=201, response_model=CardOut, responses=_ERRORS, dependencies=_WRITE)
def create_card(body: CardCreate, request: Request) -> CardOut:
    """Vault a card. Answers its token (``id``) with the number masked; the security code is
    checked for shape and never stored."""
    principal, actor, cipher = principal_of(request), actor_of(request), _cipher(request)

    def work(session: Session) -> CardOut:
        row = service.create_card(
            session, cipher, actor, principal, number=body.number, exp_month=body.exp_month,
            exp_year=body.exp_year, holder_name=body.holder_name, merchant_id=body.merchant_id,
        )
        return CardOut(**service.card_dict(row))

    return transact(_engine(request), work)


@router.get("/cards", response_model=Page[CardOut], dependencies=_READ)
def list_cards(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    starting_after: Annotated[str | None, Query(max_length=64)] = None,
    merchant_id: Annotated[str | None, Query(max_length=40)] = None,
    livemode: ModeFilter = None,
) -> Page[CardOut]:
    """Cards oldest first, masked. Merchant callers see their own."""
    principal = principal_of(request)
    rows, more = transact(_engine(request), lambda s: service.list_cards(
        s, principal, merchant_id=merchant_id, limit=limit, starting_after=starting_after, livemode=livemode))
    return Page(data=[CardOut(**service.card_dict(r)) for r in rows], has_more=more,
                next_cursor=rows[-1].id if more else None)


@router.get("/cards/{card_id}", response_model=CardOut, responses=_ERRORS, dependencies=_READ)
def get_card(card_id: str, request: Request) -> CardOut:
    """One card, masked (never the number)."""
    principal = principal_of(request)
    return transact(_engine(request), lambda s: CardOut(**service.card_dict(service.get_card(s, principal, card_id))))


@router.post("/bank_accounts", status_code=201, response_model=BankAccountOut, responses=_ERRORS,
             dependencies=_WRITE)
def create_bank_account(body: BankAccountCreate, request: Request) -> BankAccountOut:
    """Vault a bank account (``account_number`` or ``iban``); answers with its last four only."""
    principal, actor, cipher = principal_of(request), actor_of(request), _cipher(request)

    def work(session: Session) -> BankAccountOut:
        row = service.create_bank_account(
            session, cipher, actor, principal, account_number=body.account_number, iban=body.iban,
            bank_code=body.bank_code, holder_name=body.holder_name, country=body.country, currency=body.currency,
            merchant_id=body.merchant_id,
        )
        return BankAccountOut(**service.bank_account_dict(row))

    return transact(_engine(request), work)


@router.get("/bank_accounts", response_model=Page[BankAccountOut], dependencies=_READ)
def list_bank_accounts(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    starting_after: Annotated[str | None, Query(max_length=64)] = None,
    merchant_id: Annotated[str | None, Query(max_length=40)] = None,
    livemode: ModeFilter = None,
) -> Page[BankAccountOut]:
    """Bank accounts oldest first, masked. Merchant callers see their own."""
    principal = principal_of(request)
    rows, more = transact(_engine(request), lambda s: service.list_bank_accounts(
        s, principal, merchant_id=merchant_id, limit=limit, starting_after=starting_after, livemode=livemode))
    return Page(data=[BankAccountOut(**service.bank_account_dict(r)) for r in rows], has_more=more,
                next_cursor=rows[-1].id if more else None)


@router.get("/bank_accounts/{bank_account_id}", response_model=BankAccountOut, responses=_ERRORS,
            dependencies=_READ)
def get_bank_account(bank_account_id: str, request: Request) -> BankAccountOut:
    """One bank account, masked."""
    principal = principal_of(request)
    return transact(_engine(request), lambda s: BankAccountOut(
        **service.bank_account_dict(service.get_bank_account(s, principal, bank_account_id))))
