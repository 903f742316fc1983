"""Named accounts: the platform's chart of accounts (docs/accounting.md) opened on first use.

A named account (``fee_revenue``, ``merchant_pending:mch_x``) has one account per currency,
with an id derived from its name and currency, so every process finds the same account
without a lookup table, and two requests opening it at once collide on the primary key
(the caller's ``transact(..., retry_integrity=True)`` runs again and finds it).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from sqlalchemy.orm import Session

from clearhouse.kit.db import after_commit
from clearhouse.ledger import repository, service


def account_id(name: str, currency: str) -> str:
    digest = hashlib.sha256(f"{name}\n{currency}".encode()).digest()
    return "acct_" + base64.b32encode(digest[:20]).decode().lower()


def account_for(session: Session, name: str, type: str, currency: str, *, owner_id: str | None = None,
                **flags: Any) -> str:
    """The id of the named account in ``currency``, opened now if it does not exist yet.

    ``flags`` are ``create_account`` keywords (``debits_must_not_exceed_credits`` for a
    wallet that must never go below zero); they apply when the account is opened.
    """
    found = account_id(name, currency)
    known = (str(session.get_bind().engine.url), found)
    if known in _known:
        return found
    if repository.get_account(session, found) is None:
        service.create_account(session, id=found, type=type, currency=currency, code=name, owner_id=owner_id,
                               **flags)
    else:
        # Remembered only once its transaction has committed (under group commit, the group's
        # COMMIT): it may have been opened by work that still rolls back, and must then be
        # looked for again. Accounts are never deleted.
        after_commit(session, lambda: _known.add(known))
    return found


_known: set[tuple[str, str]] = set()


def forget() -> None:
    """Drop the memory of opened accounts (tests that empty the database between tests)."""
    _known.clear()
