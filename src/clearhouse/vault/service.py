"""The vault's rules: a number becomes a token at the API edge and is decrypted only for the
channel call that needs it.

Stored readable: BIN, last four, expiry and brand of a card (what PCI DSS allows beside a
token); last four, bank code, country of a bank account. Stored encrypted (kit/crypto.py,
context ``<table>.<column>:<id>`` so a ciphertext moved to another row does not decrypt):
the numbers and a card's holder name. Never stored: the card security code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Row
from sqlalchemy.orm import Session

from clearhouse.audit import service as audit
from clearhouse.identity.permissions import Principal, within
from clearhouse.identity.service import owner_of
from clearhouse.kit import clock
from clearhouse.kit.crypto import FieldCipher
from clearhouse.kit.db import WrittenRow
from clearhouse.kit.errors import ClearhouseError, NotFound
from clearhouse.kit.ids import new_id
from clearhouse.kit.masking import luhn_ok
from clearhouse.vault import repository

MAX_YEARS_AHEAD = 50


class InvalidCardNumber(ClearhouseError):
    """A card number is 13 to 19 digits (single spaces or dashes between them allowed) and
    passes the Luhn check."""

    code = "invalid_card_number"
    status = 422
    title = "Invalid card number"


class CardExpired(ClearhouseError):
    """A card is valid through the last day of its expiry month; later it cannot be vaulted."""

    code = "card_expired"
    status = 422
    title = "Card expired"


class InvalidExpiry(ClearhouseError):
    """An expiry more than 50 years ahead is a typo, not a card."""

    code = "invalid_expiry"
    status = 422
    title = "Invalid expiry date"


class InvalidBankAccount(ClearhouseError):
    """A bank account has exactly one of ``account_number`` (4-34 letters or digits) and
    ``iban`` (ISO 13616: country, check digits passing mod 97, matching ``country``)."""

    code = "invalid_bank_account"
    status = 422
    title = "Invalid bank account"


class CardNotFound(NotFound):
    """No such card, or not the caller's merchant's."""

    code = "card_not_found"
    title = "Card not found"


class BankAccountNotFound(NotFound):
    """No such bank account, or not the caller's merchant's."""

    code = "bank_account_not_found"
    title = "Bank account not found"


@dataclass(frozen=True)
class CardDetails:
    """A card with its number in the clear, for the one channel call that needs it. The
    number and holder name stay out of ``repr`` so a stray log line cannot carry them."""

    card_id: str
    merchant_id: str
    number: str = field(repr=False)
    exp_month: int
    exp_year: int
    brand: str
    bin: str
    last4: str
    holder_name: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class BankAccountDetails:
    bank_account_id: str
    merchant_id: str
    kind: str
    number: str = field(repr=False)
    bank_code: str | None
    holder_name: str
    country: str
    currency: str | None


# --- cards -------------------------------------------------------------------------------

_CARD_SHAPE = re.compile(r"^[0-9](?:[ \-]?[0-9])*$")

# (brand, first-digits ranges as (low, high) prefixes of equal length), most specific first
# where ranges overlap. Sources: the networks' published IIN ranges.
_BRANDS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("amex", (("34", "34"), ("37", "37"))),
    ("diners", (("300", "305"), ("3095", "3095"), ("36", "36"), ("38", "39"))),
    ("jcb", (("3528", "3589"),)),
    ("visa", (("4", "4"),)),
    ("mastercard", (("51", "55"), ("2221", "2720"))),
    ("discover", (("6011", "6011"), ("644", "649"), ("65", "65"))),
    ("unionpay", (("62", "62"), ("81", "81"))),
)


def normalize_card_number(number: str) -> str:
    """The digits of a card number, or ``InvalidCardNumber`` (never echoing the number)."""
    if not _CARD_SHAPE.match(number):
        raise InvalidCardNumber("a card number is digits, optionally grouped by single spaces or dashes")
    digits = number.replace(" ", "").replace("-", "")
    if not 13 <= len(digits) <= 19:
        raise InvalidCardNumber(f"a card number has 13 to 19 digits, not {len(digits)}")
    if not luhn_ok(digits):
        raise InvalidCardNumber("the card number fails its check digit (Luhn)")
    return digits


def brand_of(digits: str) -> str:
    """The card network by its issuer identification number ranges."""
    for brand, ranges in _BRANDS:
        for low, high in ranges:
            if low <= digits[:len(low)] <= high:
                return brand
    return "unknown"


def check_expiry(exp_month: int, exp_year: int, now: datetime | None = None) -> None:
    now = now or clock.now()
    if (exp_year, exp_month) < (now.year, now.month):
        raise CardExpired(f"the card expired at the end of {exp_year:04d}-{exp_month:02d}")
    if exp_year > now.year + MAX_YEARS_AHEAD:
        raise InvalidExpiry(f"an expiry year after {now.year + MAX_YEARS_AHEAD} is not a real card's")


def _card_context(card_id: str, column: str = "number") -> str:
    return f"vault_cards.{column}:{card_id}"


def card_dict(row: Row) -> dict[str, Any]:
    return {
        "id": row.id, "livemode": row.livemode, "merchant_id": row.merchant_id, "bin": row.bin, "last4": row.last4,
        "brand": row.brand,
        "exp_month": row.exp_month, "exp_year": row.exp_year, "fingerprint": row.fingerprint,
        "created_at": row.created_at,
    }


def create_card(session: Session, cipher: FieldCipher, actor: audit.Actor, principal: Principal, *,
                number: str, exp_month: int, exp_year: int, holder_name: str | None = None,
                merchant_id: str | None = None, livemode: bool | None = None, audited: bool = True) -> Any:
    """Vault a card: validate, encrypt the number, keep BIN/last four/expiry/brand readable.

    ``livemode``: the card's mode when it is not the caller's (a payment's card takes the payment's).

    ``audited=False`` is for a card vaulted inside a payment, whose own timeline records it:
    the audit chain's lock would otherwise serialize every card payment.

    The card security code is checked by the caller's schema and then dropped: PCI DSS 3.2
    forbids keeping it after authorization, encrypted or not, so it never reaches here.

    Returns the card as written, read like a row (``card_dict`` takes it)."""
    digits = normalize_card_number(number)
    check_expiry(exp_month, exp_year)
    owner = owner_of(session, principal, merchant_id)
    card_id = new_id("card")
    values = {
        "id": card_id,
        "merchant_id": owner,
        "livemode": principal.creates_livemode if livemode is None else livemode,
        "number_ciphertext": cipher.encrypt(digits, _card_context(card_id)),
        "holder_name_ciphertext": (
            cipher.encrypt(holder_name, _card_context(card_id, "holder_name")) if holder_name else None
        ),
        "fingerprint": cipher.fingerprint("card:" + digits),
        "bin": digits[:6],
        "last4": digits[-4:],
        "brand": brand_of(digits),
        "exp_month": exp_month,
        "exp_year": exp_year,
        "created_at": clock.now(),
    }
    repository.insert_card(session, values)  # not read back: the card is what was written
    if audited:
        audit.record(session, actor, "vault.card.create", "card", card_id, merchant_id=owner, changes={
            k: values[k] for k in ("bin", "last4", "brand", "exp_month", "exp_year", "fingerprint")
        })
    return WrittenRow(values)



_ID_SHAPE = re.compile(r"[a-z]+_[0-9a-z]{1,60}")


def _shown_id(given: str, prefix: str) -> str:
    """The id asked for, as a 404 repeats it: only when it has the shape of our ids
    (``card_01...``); anything else (a card number or IBAN typed where the id goes) is not
    repeated (data-protection.md: no error message repeats the number)."""
    if _ID_SHAPE.fullmatch(given) and given.startswith(prefix + "_"):
        return given
    return "with the id given"


def _card(session: Session, card_id: str, merchant_id: str | None, livemode: bool | None) -> Row:
    """The card, when it is of ``merchant_id`` and of mode ``livemode`` (None: any)."""
    row = repository.get_card(session, card_id)
    if row is None or not within(merchant_id, livemode, row.merchant_id, row.livemode):
        raise CardNotFound(f"no card {_shown_id(card_id, 'card')}")
    return row


def get_card(session: Session, principal: Principal, card_id: str) -> Row:
    """A card the caller may see, masked (the row holds no readable number)."""
    return _card(session, card_id, principal.merchant_id, principal.livemode)


def list_cards(session: Session, principal: Principal, *, merchant_id: str | None, limit: int,
               starting_after: str | None, livemode: bool | None = None) -> tuple[list[Row], bool]:
    """Cards oldest first; merchant callers see their own only (another merchant's filter: none)."""
    scope = principal.listing(repository.cards, merchant_id, livemode)
    if scope is None:
        return [], False
    return repository.list_cards(session, scope, limit=limit, starting_after=starting_after)


def reveal_card(session: Session, cipher: FieldCipher, card_id: str, merchant_id: str, livemode: bool, *,
                actor: audit.Actor | None = None) -> CardDetails:
    """The card with its number, for the channel call that needs it (payments); only for the
    merchant that owns it, and in its mode (a test payment never charges a card vaulted live).
    With ``actor`` the access is recorded in the audit trail."""
    row = _card(session, card_id, merchant_id, livemode)
    if actor is not None:
        audit.record(session, actor, "vault.card.reveal", "card", card_id, merchant_id=row.merchant_id)
    return CardDetails(
        card_id=row.id, merchant_id=row.merchant_id,
        number=cipher.decrypt(row.number_ciphertext, _card_context(row.id)),
        exp_month=row.exp_month, exp_year=row.exp_year, brand=row.brand, bin=row.bin, last4=row.last4,
        holder_name=(cipher.decrypt(row.holder_name_ciphertext, _card_context(row.id, "holder_name"))
                     if row.holder_name_ciphertext else None),
    )


# --- bank accounts -----------------------------------------------------------------------

_ACCOUNT_NUMBER = re.compile(r"^[A-Za-z0-9]{4,34}$")
_IBAN = re.compile(r"^[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}$")


def iban_ok(iban: str) -> bool:
    """ISO 13616 check digits: move the first four characters to the end, letters to
    numbers (A=10 ... Z=35), and the result mod 97 is 1."""
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def normalize_bank_account(account_number: str | None, iban: str | None, country: str) -> tuple[str, str]:
    """``(kind, number)`` with spaces and dashes removed, or ``InvalidBankAccount``."""
    if (account_number is None) == (iban is None):
        raise InvalidBankAccount("give exactly one of account_number and iban")
    if iban is not None:
        compact = re.sub(r"[ \-]", "", iban).upper()
        if not _IBAN.match(compact) or not iban_ok(compact):
            raise InvalidBankAccount("the IBAN is malformed or fails its check digits")
        if compact[:2] != country:
            raise InvalidBankAccount(f"the IBAN is from {compact[:2]}, not {country}")
        return "iban", compact
    compact = re.sub(r"[ \-]", "", account_number or "")
    if not _ACCOUNT_NUMBER.match(compact):
        raise InvalidBankAccount("an account number is 4 to 34 letters or digits")
    return "account_number", compact


def _account_context(bank_account_id: str) -> str:
    return f"vault_bank_accounts.number:{bank_account_id}"


def bank_account_dict(row: Row) -> dict[str, Any]:
    return {
        "id": row.id, "livemode": row.livemode, "merchant_id": row.merchant_id, "kind": row.kind, "last4": row.last4,
        "bank_code": row.bank_code, "holder_name": row.holder_name, "country": row.country,
        "currency": row.currency, "fingerprint": row.fingerprint, "created_at": row.created_at,
    }


def create_bank_account(session: Session, cipher: FieldCipher, actor: audit.Actor, principal: Principal, *,
                        account_number: str | None, iban: str | None, bank_code: str | None, holder_name: str,
                        country: str, currency: str | None = None, merchant_id: str | None = None) -> Row:
    """Vault a bank account: the number encrypted, its last four readable."""
    kind, number = normalize_bank_account(account_number, iban, country)
    owner = owner_of(session, principal, merchant_id)
    bank_account_id = new_id("ba")
    values = {
        "id": bank_account_id,
        "merchant_id": owner,
        "livemode": principal.creates_livemode,
        "kind": kind,
        "number_ciphertext": cipher.encrypt(number, _account_context(bank_account_id)),
        "fingerprint": cipher.fingerprint(f"bank:{country}:{bank_code or ''}:{number}"),
        "last4": number[-4:],
        "bank_code": bank_code,
        "holder_name": holder_name,
        "country": country,
        "currency": currency,
        "created_at": clock.now(),
    }
    repository.insert_bank_account(session, values)
    audit.record(session, actor, "vault.bank_account.create", "bank_account", bank_account_id, merchant_id=owner,
                 changes={k: values[k] for k in ("kind", "last4", "bank_code", "country", "currency",
                                                 "fingerprint")})
    return _bank_account(session, bank_account_id, None, None)


def _bank_account(session: Session, bank_account_id: str, merchant_id: str | None, livemode: bool | None) -> Row:
    """The account, when it is of ``merchant_id`` and of mode ``livemode`` (None: any)."""
    row = repository.get_bank_account(session, bank_account_id)
    if row is None or not within(merchant_id, livemode, row.merchant_id, row.livemode):
        raise BankAccountNotFound(f"no bank account {_shown_id(bank_account_id, 'ba')}")
    return row


def get_bank_account(session: Session, principal: Principal, bank_account_id: str) -> Row:
    return _bank_account(session, bank_account_id, principal.merchant_id, principal.livemode)


def list_bank_accounts(session: Session, principal: Principal, *, merchant_id: str | None, limit: int,
                       starting_after: str | None, livemode: bool | None = None) -> tuple[list[Row], bool]:
    scope = principal.listing(repository.bank_accounts, merchant_id, livemode)
    if scope is None:
        return [], False
    return repository.list_bank_accounts(session, scope, limit=limit, starting_after=starting_after)


def reveal_bank_account(session: Session, cipher: FieldCipher, bank_account_id: str, merchant_id: str,
                        livemode: bool, *, actor: audit.Actor | None = None) -> BankAccountDetails:
    """The account with its number, for the payout that needs it; only for its merchant, in its mode."""
    row = _bank_account(session, bank_account_id, merchant_id, livemode)
    if actor is not None:
        audit.record(session, actor, "vault.bank_account.reveal", "bank_account", bank_account_id,
                     merchant_id=row.merchant_id)
    return BankAccountDetails(
        bank_account_id=row.id, merchant_id=row.merchant_id, kind=row.kind,
        number=cipher.decrypt(row.number_ciphertext, _account_context(row.id)),
        bank_code=row.bank_code, holder_name=row.holder_name, country=row.country, currency=row.currency,
    )
