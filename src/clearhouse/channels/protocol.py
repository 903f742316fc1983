"""The narrow contract between payments and a channel (card acquirer, bank, QR wallet).

Payments never speaks a channel's wire format; a connector translates. Everything that
crosses this line is a plain frozen dataclass, so a connector is easy to write, to fake
and to test. A connector call is made OUTSIDE any database transaction of ours: the
channel is another system, and our record of the call (the attempt row) is committed
before the call, so a crash between the channel's answer and our commit is repaired by
asking the channel again (``query``), never by charging again.

Outcomes versus errors:
- A definite answer from the channel is a ``ChannelResult`` (approved, declined, needs
  the customer, pending).
- No definite answer is an exception: ``ChannelTimeout`` (we do not know whether the
  channel acted), ``ChannelUnavailable`` (the channel refused before acting: outage,
  circuit open), ``ChannelError`` (the channel failed; it did not act). All three are
  retryable on another channel, but only after a timeout has been settled by ``query``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from clearhouse.kit.errors import ClearhouseError
from clearhouse.kit.money import MAX_AMOUNT, is_currency, rate_of, share

if TYPE_CHECKING:
    from clearhouse.kit.settings import Settings

METHODS = ("card", "bank_transfer", "alipay", "wechat_pay", "wallet")

# ChannelResult.status values
APPROVED = "approved"  # authorized (and captured, when capture was asked for)
AUTHORIZED = "authorized"  # authorized, waiting for capture (manual capture)
DECLINED = "declined"  # a hard no: never retried elsewhere
REQUIRES_ACTION = "requires_action"  # the customer must act (3-D Secure, scan a QR code)
PENDING = "pending"  # accepted; the outcome arrives later by notification or query
NOT_FOUND = "not_found"  # query: the channel never saw this reference (safe to try elsewhere)
CANCELED = "canceled"
REFUNDED = "refunded"
FAILED = "failed"  # a final failure reported later (expired QR code, returned transfer)

RESULT_STATUSES = (APPROVED, AUTHORIZED, DECLINED, REQUIRES_ACTION, PENDING, NOT_FOUND, CANCELED, REFUNDED, FAILED)

# What a notification's texts may hold at most: the columns that keep them (payments.models).
NOTIFICATION_ID_MAX = 128
REFERENCE_MAX = 64
EXTERNAL_ID_MAX = 128
DECLINE_CODE_MAX = 64
MESSAGE_MAX = 500


@dataclass(frozen=True)
class CardData:
    """The card as the channel needs it, number in the clear: never logged, never stored."""

    number: str = field(repr=False)
    exp_month: int
    exp_year: int
    cvc: str | None = field(default=None, repr=False)
    brand: str = ""
    bin: str = ""
    last4: str = ""


@dataclass(frozen=True)
class ChargeRequest:
    """Take ``amount`` from the customer. ``reference`` is our attempt id: the channel's
    idempotency key and what ``query`` looks it up by (Alipay's ``out_trade_no``)."""

    reference: str
    payment_id: str
    merchant_id: str
    amount: int
    currency: str
    method: str
    capture: bool = True
    card: CardData | None = None
    customer: Mapping[str, Any] = field(default_factory=dict)
    description: str | None = None
    return_url: str | None = None


@dataclass(frozen=True)
class ChannelResult:
    status: str
    reference: str
    external_id: str | None = None
    amount: int | None = None
    currency: str | None = None
    decline_code: str | None = None
    message: str | None = None
    next_action: Mapping[str, Any] | None = None
    """What the customer must do: ``{"type": "qr_code", "qr_content": ...}`` or
    ``{"type": "redirect", "url": ...}``, or bank transfer instructions."""
    captured_amount: int | None = None
    refunded_amount: int | None = None
    occurred_at: datetime | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Notification:
    """An inbound, already verified message from a channel about one of our references.

    Built from what a channel sent, so it checks its own fields: one that breaks the rules
    below raises ``NotificationInvalid`` (400, not stored) rather than reaching the database
    or the ledger as a 500 that the channel would resend for hours."""

    notification_id: str
    """The channel's id for this message: stored once per (channel, notification_id)."""
    kind: str  # "payment" | "refund"
    reference: str  # our attempt id (payment) or refund id (refund)
    status: str  # one of RESULT_STATUSES
    external_id: str | None = None
    amount: int | None = None
    """Minor units of ``currency``. Always given, with ``currency``, for an approved or
    authorized payment and a refunded refund (what each channel means by it: docs/channels.md)."""
    currency: str | None = None
    decline_code: str | None = None
    """Why the payment (or refund) failed, in the channel's codes (``DECLINED``, ``FAILED``,
    ``CANCELED`` only): what ``ChannelResult.decline_code`` would say."""
    message: str | None = None
    """The channel's words for the failure, when it says any."""
    occurred_at: datetime | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checked_text(self.notification_id, "notification_id", NOTIFICATION_ID_MAX)
        if self.kind not in ("payment", "refund"):
            raise NotificationInvalid(f"kind is payment or refund, not {self.kind!r}")
        checked_text(self.reference, "reference", REFERENCE_MAX)
        if not isinstance(self.status, str) or self.status not in RESULT_STATUSES:
            raise NotificationInvalid(f"status {self.status!r} is not one of {', '.join(RESULT_STATUSES)}")
        if self.external_id is not None:
            checked_text(self.external_id, "external_id", EXTERNAL_ID_MAX)
        if self.amount is not None and (type(self.amount) is not int or not 0 < self.amount <= MAX_AMOUNT):
            raise NotificationInvalid(f"amount is a positive whole number of minor units, not {self.amount!r}")
        if self.currency is not None and not (isinstance(self.currency, str) and is_currency(self.currency)):
            raise NotificationInvalid(f"currency {self.currency!r} is not an ISO 4217 code with a minor unit")
        settled = (self.kind, self.status) in (("payment", APPROVED), ("payment", AUTHORIZED), ("refund", REFUNDED))
        if settled and (self.amount is None or self.currency is None):
            raise NotificationInvalid(f"a {self.kind} notification saying {self.status} names its amount and currency")
        if (self.decline_code is not None or self.message is not None) \
                and self.status not in (DECLINED, FAILED, CANCELED):
            raise NotificationInvalid(f"a {self.status} notification carries no decline")
        if self.decline_code is not None:
            checked_text(self.decline_code, "decline_code", DECLINE_CODE_MAX)
        if self.message is not None and (not isinstance(self.message, str)
                                         or not 0 < len(self.message) <= MESSAGE_MAX):
            raise NotificationInvalid(f"message is a text of 1 to {MESSAGE_MAX} characters")
        if self.occurred_at is not None and (not isinstance(self.occurred_at, datetime)
                                             or self.occurred_at.utcoffset() is None):
            raise NotificationInvalid("occurred_at is a time with its UTC offset")
        if not isinstance(self.raw, Mapping):
            raise NotificationInvalid("raw is the message as a mapping")


@dataclass(frozen=True)
class NotificationReply:
    """What the channel expects back once we have stored the notification."""

    status_code: int = 200
    body: bytes = b"success"
    content_type: str = "text/plain"


@dataclass(frozen=True)
class StatementFile:
    """A channel's daily statement, in its own layout (read by reconciliation)."""

    channel: str
    day: date
    filename: str
    content: bytes
    layout: str  # the name of the declarative CSV mapping that reads it


@dataclass(frozen=True)
class Cost:
    """What the channel charges us for a payment: ``rate`` of the amount plus ``fixed``
    minor units, rounded half-up to the minor unit (``kit.money.rate_of``).

    ``returned_on_refund``: the channel gives back the refunded share of its fee (the QR wallets
    do); card schemes and banks keep their whole fee."""

    rate: Decimal = Decimal("0")
    fixed: int = 0
    returned_on_refund: bool = False

    def charged(self, amount: int) -> int:
        """What the channel charges for collecting ``amount``: ``rate`` of it plus ``fixed``, half-up.
        It may exceed the amount (a fixed fee on a small payment)."""
        return rate_of(amount, self.rate, self.fixed)

    def returned(self, *, charged: int, captured: int, refunded_before: int, returned_before: int,
                 refunded: int) -> int:
        """What the channel gives back of the ``charged`` fee of a payment of ``captured`` when ``refunded``
        more of it is refunded, after ``refunded_before`` that got ``returned_before`` back.

        Cumulative, as the platform's own fee (``kit.money.share``): the fee's share of everything
        refunded so far (half-up), less what was given back already. Partial refunds therefore never
        get back more than the fee, and the refund that completes the payment gets back the rest of it:
        6600 charged 36, refunded 1001 then 5599, gives back 5 then 31 (per refund, 0.55 % half-up
        would give 6 + 31 = 37, a cent the channel never charged)."""
        if not self.returned_on_refund or captured <= 0 or charged <= 0:
            return 0
        after = min(captured, refunded_before + refunded)
        return max(0, min(share(charged, after, captured), charged) - returned_before)


# --------------------------------------------------------------------------- errors


class ChannelTimeout(ClearhouseError):
    """The channel did not answer in time: it may or may not have acted."""

    code = "channel_timeout"
    status = 504
    title = "Channel timed out"


class ChannelUnavailable(ClearhouseError):
    """The channel refused before acting (outage window, circuit open)."""

    code = "channel_unavailable"
    status = 503
    title = "Channel unavailable"


class ChannelError(ClearhouseError):
    """The channel failed and did not act."""

    code = "channel_error"
    status = 502
    title = "Channel error"


class NotificationInvalid(ClearhouseError):
    """An inbound notification whose signature or shape is wrong is refused and not stored."""

    code = "notification_invalid"
    status = 400
    title = "Notification refused"


def checked_text(value: Any, name: str, max_length: int) -> str:
    """An id or a code in a notification: 1 to ``max_length`` characters, none of them a control
    character (ids are stored, compared and logged as they are); ``NotificationInvalid`` if not."""
    if not isinstance(value, str) or not 0 < len(value) <= max_length or not value.isprintable():
        raise NotificationInvalid(f"{name} is a text of 1 to {max_length} printable characters")
    return value


class UnknownChannel(ClearhouseError):
    """No connector is registered under this name."""

    code = "unknown_channel"
    status = 404
    title = "Unknown channel"


# --------------------------------------------------------------------------- the protocol


@runtime_checkable
class Connector(Protocol):
    """One channel. Implementations are stateless towards us: whatever they remember is
    the channel's own business (the sandbox keeps it in its own store)."""

    name: str
    methods: tuple[str, ...]
    currencies: tuple[str, ...] | None  # None: any currency
    cost: Cost
    supports_manual_capture: bool
    settlement_delay_days: int  # business days until the channel pays us

    def authorize(self, request: ChargeRequest) -> ChannelResult: ...

    def capture(self, reference: str, amount: int, currency: str) -> ChannelResult: ...

    def cancel(self, reference: str) -> ChannelResult: ...

    def refund(self, reference: str, refund_id: str, amount: int, currency: str) -> ChannelResult: ...

    def query(self, reference: str) -> ChannelResult:
        """The channel's current view of one of our references (attempt id or refund id)."""
        ...

    def void(self, reference: str) -> ChannelResult:
        """Refuse a payment reference the channel has not seen, for good: a call with it still on its way
        (one that timed out) is refused when it arrives, so nothing is charged under it. ``CANCELED``
        when voided; the channel's current view of the payment when it has seen it after all. Asked
        before a timed-out payment fails over to another channel (payments.md, "Failures")."""
        ...

    def parse_notification(self, headers: Mapping[str, str], body: bytes) -> Notification:
        """Verify the channel's signature and read the message; ``NotificationInvalid`` if not."""
        ...

    def notification_reply(self) -> NotificationReply: ...

    def statement(self, day: date) -> StatementFile: ...


# --------------------------------------------------------------------------- registry

ConnectorFactory = Callable[["Settings"], Connector]
_FACTORIES: dict[str, ConnectorFactory] = {}


def register(name: str, factory: ConnectorFactory) -> None:
    """Connectors register themselves on import (``channels/connectors/__init__.py`` imports
    each); the factory builds the connector from the settings (store, keys, fault profile)."""
    _FACTORIES[name] = factory


def names() -> list[str]:
    return sorted(_FACTORIES)


class ChannelSet:
    """The connectors of one running app (``app.state.channels``), built on first use from
    that app's settings, so two apps in one process (tests) never share a channel's store."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._built: dict[str, Connector] = {}

    def __getitem__(self, name: str) -> Connector:
        found = self._built.get(name)
        if found is None:
            if name not in _FACTORIES:
                raise UnknownChannel(f"no channel named {name!r}")
            found = self._built[name] = _FACTORIES[name](self.settings)
        return found

    def __contains__(self, name: object) -> bool:
        return name in _FACTORIES

    def names(self) -> list[str]:
        return names()
