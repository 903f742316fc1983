"""The rules of payments, each a stable problem+json ``code``."""

from __future__ import annotations

from clearhouse.kit.errors import ClearhouseError, NotFound


class PaymentNotFound(NotFound):
    """No such payment, or not the caller's to see."""

    code = "payment_not_found"
    title = "Payment not found"


class RefundNotFound(NotFound):
    code = "refund_not_found"
    title = "Refund not found"


class WalletNotFound(NotFound):
    code = "wallet_not_found"
    title = "Wallet not found"


class PaymentStateConflict(ClearhouseError):
    """The payment is not in a state that allows this (capturing a failed payment, ...)."""

    code = "payment_state_conflict"
    status = 409
    title = "Payment is not in a state that allows this"


class RefundExceedsCaptured(ClearhouseError):
    """Refunds of a payment, pending ones included, never add up to more than was captured."""

    code = "refund_exceeds_captured"
    status = 409
    title = "Refund exceeds the captured amount"


class CaptureExceedsAuthorized(ClearhouseError):
    """A capture takes at most the authorized amount."""

    code = "capture_exceeds_authorized"
    status = 409
    title = "Capture exceeds the authorized amount"


class CaptureMethodNotSupported(ClearhouseError):
    """Manual capture needs a method whose channels hold funds (cards)."""

    code = "capture_method_not_supported"
    status = 422
    title = "Manual capture is not supported for this method"


class PaymentDetailsRequired(ClearhouseError):
    """A card payment needs the card (or a vaulted card id); a wallet payment a customer id."""

    code = "payment_details_required"
    status = 422
    title = "Payment details required"


class CurrencyNotSupported(ClearhouseError):
    """A wallet payment is in a currency the customer's wallet holds (its wallets hold others)."""

    code = "currency_not_supported"
    status = 422
    title = "Currency not supported"


class InvalidFeePlan(ClearhouseError):
    """A fee rule needs a percentage between 0 and 100 and non-negative fixed and minimum amounts."""

    code = "invalid_fee_plan"
    status = 422
    title = "Invalid fee plan"


class ChannelNotAnswering(ClearhouseError):
    """The channel did not act on a capture or cancel (an outage or error, or a timeout after which it
    says the authorization is as it was): nothing changed; the same request may be sent again."""

    code = "channel_not_answering"
    status = 409
    title = "The channel did not answer"

    def headers(self) -> dict[str, str]:
        # "Try again": so the answer is not kept against an Idempotency-Key either (kit.idempotency).
        return {"Retry-After": "5"}


class OutcomeUnconfirmed(ClearhouseError):
    """A capture or cancel the channel did not answer in time, and could not be asked what it did: it may
    have acted, so nothing is recorded until it says. Send the same request again (the channel does not
    act twice on one authorization); the answer then says what happened."""

    code = "outcome_unconfirmed"
    status = 409
    title = "The channel's outcome is not confirmed yet"

    def headers(self) -> dict[str, str]:
        # "Ask again": like channel_not_answering, never kept against an Idempotency-Key (kit.idempotency).
        return {"Retry-After": "5"}
