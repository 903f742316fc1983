"""The rules of the ledger, each a stable error code."""

from clearhouse.kit.errors import ClearhouseError, NotFound, ValidationFailed

__all__ = ["ClearhouseError", "NotFound", "ValidationFailed"]  # re-exported for the ledger's callers


class LedgerError(ClearhouseError):
    """Base of ledger rule violations."""


class ChainHeadMissing(LedgerError):
    """The journal's chain head row is gone (only tampering past the database's guard does
    that): nothing is written until an operator restores it from ``ledger verify``'s report."""

    code = "ledger_chain_broken"
    status = 503
    title = "Ledger chain head missing"


class AccountNotFound(LedgerError):
    """A posting names an account that does not exist."""

    code = "account_not_found"
    status = 422
    title = "Account not found"


class AccountExists(LedgerError):
    """An account with this id exists with other fields."""

    code = "account_exists_with_different_fields"
    status = 409
    title = "Account exists with different fields"


class AccountClosed(LedgerError):
    """Closed accounts take no new entries."""

    code = "account_closed"
    status = 409
    title = "Account closed"


class AccountNotEmpty(LedgerError):
    """Only an account with zero posted and pending balances can be closed."""

    code = "account_not_empty"
    status = 409
    title = "Account not empty"


class CurrencyMismatch(LedgerError):
    """A posting's currency must be its account's currency."""

    code = "currency_mismatch"
    status = 422
    title = "Currency mismatch"


class UnknownCurrency(LedgerError):
    """Currencies are ISO 4217 codes with a minor unit."""

    code = "unknown_currency"
    status = 422
    title = "Unknown currency"


class EntryNotBalanced(LedgerError):
    """The debits of each currency must equal its credits."""

    code = "entry_not_balanced"
    status = 422
    title = "Entry not balanced"


class InvalidAmount(LedgerError):
    """Amounts are integers of minor units, 1 to 2^63-1."""

    code = "invalid_amount"
    status = 422
    title = "Invalid amount"


class AccountsMustDiffer(LedgerError):
    """A transfer moves money between two different accounts."""

    code = "accounts_must_differ"
    status = 422
    title = "Accounts must differ"


class TooFewPostings(LedgerError):
    """A journal entry has at least two postings."""

    code = "too_few_postings"
    status = 422
    title = "Too few postings"


class InsufficientFunds(LedgerError):
    """An account flagged debits_must_not_exceed_credits (plus any overdraft) would go below it."""

    code = "insufficient_funds"
    status = 409
    title = "Insufficient funds"


class ExceedsCreditLimit(LedgerError):
    """An account flagged credits_must_not_exceed_debits (plus any limit) would go beyond it."""

    code = "exceeds_credit_limit"
    status = 409
    title = "Exceeds credit limit"


class BalanceOverflow(LedgerError):
    """A balance column would pass 2^63-1."""

    code = "balance_overflow"
    status = 422
    title = "Balance overflow"


class TransferExists(LedgerError):
    """A transfer id is used once: the same id with other fields is refused."""

    code = "transfer_exists_with_different_fields"
    status = 409
    title = "Transfer exists with different fields"


class TransferNotFound(LedgerError):
    """No transfer has this id."""

    code = "transfer_not_found"
    status = 404
    title = "Transfer not found"


class PendingTransferNotFound(LedgerError):
    """Post and void name an existing pending transfer."""

    code = "pending_transfer_not_found"
    status = 404
    title = "Pending transfer not found"


class NotPending(LedgerError):
    """Only a pending transfer can be posted or voided."""

    code = "transfer_not_pending"
    status = 409
    title = "Transfer is not pending"


class PendingAlreadyPosted(LedgerError):
    """A pending transfer is resolved once: it was posted."""

    code = "pending_transfer_already_posted"
    status = 409
    title = "Pending transfer already posted"


class PendingAlreadyVoided(LedgerError):
    """A pending transfer is resolved once: it was voided."""

    code = "pending_transfer_already_voided"
    status = 409
    title = "Pending transfer already voided"


class PendingExpired(LedgerError):
    """A pending transfer past its timeout can no longer be posted."""

    code = "pending_transfer_expired"
    status = 409
    title = "Pending transfer expired"


class AmountExceedsPending(LedgerError):
    """A post moves at most the pending amount."""

    code = "amount_exceeds_pending"
    status = 422
    title = "Amount exceeds pending"


class PartialPostMultiCurrency(LedgerError):
    """A partial post needs a pending entry of one currency to allocate over."""

    code = "partial_post_requires_single_currency"
    status = 422
    title = "Partial post requires a single currency"


class BatchTooLarge(LedgerError):
    """A batch holds at most 8190 transfers."""

    code = "batch_too_large"
    status = 422
    title = "Batch too large"


class LinkedBatchFailed(LedgerError):
    """A linked batch succeeds or fails as one; a member failed, so nothing was written."""

    code = "linked_batch_failed"
    status = 422
    title = "Linked batch failed"


# Codes that a batch reports per transfer, with the error class that would be raised alone.
BY_CODE: dict[str, type[LedgerError]] = {
    cls.code: cls
    for cls in (
        AccountNotFound, AccountClosed, CurrencyMismatch, UnknownCurrency, EntryNotBalanced,
        InvalidAmount, AccountsMustDiffer, TooFewPostings, InsufficientFunds, ExceedsCreditLimit,
        BalanceOverflow, TransferExists, PendingTransferNotFound, NotPending, PendingAlreadyPosted,
        PendingAlreadyVoided, PendingExpired, AmountExceedsPending, PartialPostMultiCurrency,
        ValidationFailed,
    )
}
LINKED_EVENT_FAILED = "linked_event_failed"
