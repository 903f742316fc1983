"""What the sandbox channels share: their own store, fault profiles, magic values, the
notification outbox and its delivery.

A sandbox is ANOTHER SYSTEM that happens to ship with Clearhouse. It keeps its side of
every call (operations by our reference, captures, refunds, the notifications it owes us,
its signing keys) in its own SQLite file, ``settings.sandbox_dir / f"{name}.db"``, never in
our database: our transaction may roll back after the channel said yes, and then the only
truth left is the channel's, which the payments worker reads back with ``query``. The file
is in WAL mode and every write is ``BEGIN IMMEDIATE``, so several server processes and the
worker can share one sandbox safely.

Integrators rehearse failure against the sandboxes, so they fail like real channels do:
a fault profile per channel (latency, declines, timeouts after the channel acted, errors,
outage windows; duplicated, delayed and reordered notifications) and documented magic
values (docs/channels.md).
"""

from __future__ import annotations

import hmac
import json
import math
import random
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import structlog

from clearhouse.channels.protocol import (
    APPROVED,
    AUTHORIZED,
    CANCELED,
    DECLINED,
    FAILED,
    NOT_FOUND,
    PENDING,
    REFUNDED,
    REQUIRES_ACTION,
    ChannelError,
    ChannelResult,
    ChannelTimeout,
    ChannelUnavailable,
    ChargeRequest,
    Cost,
    Notification,
    NotificationInvalid,
    NotificationReply,
    StatementFile,
    checked_text,
)
from clearhouse.kit import clock
from clearhouse.kit.db import SQLiteConnection
from clearhouse.kit.money import MAX_AMOUNT, Currency, UnknownCurrency, is_currency
from clearhouse.kit.writelock import writer_lock

if TYPE_CHECKING:
    from clearhouse.kit.settings import Settings

log = structlog.get_logger(__name__)

# --------------------------------------------------------------------------- magic values
# Amounts (minor units) that behave the same on every sandbox; named after the HTTP status
# a real channel would have answered with, so they are easy to remember.
AMOUNT_DECLINE = 40_201
"""402.01: declined, ``do_not_honor``."""
AMOUNT_TIMEOUT_AFTER_ACTING = 40_801
"""408.01: the channel takes the payment, then the call times out (``query`` says approved)."""
AMOUNT_TIMEOUT_BEFORE_ACTING = 40_802
"""408.02: the call times out and the channel never saw it (``query`` says not_found)."""
AMOUNT_CHANNEL_ERROR = 50_201
"""502.01: ``ChannelError``; the channel did not act."""
AMOUNT_OUTAGE = 50_301
"""503.01: ``ChannelUnavailable``, as inside an outage window; the channel did not act."""

NOTIFICATION_TOLERANCE = timedelta(minutes=5)
"""A notification stamped further than this from now, either way, is refused (replay)."""
RETRY_SCHEDULE = (
    timedelta(seconds=15), timedelta(minutes=1), timedelta(minutes=4), timedelta(minutes=10), timedelta(hours=1),
    timedelta(hours=2), timedelta(hours=6), timedelta(hours=15),
)
"""How long the sandbox waits after a failed delivery before the next try (Alipay's own
schedule, roughly); after the last one the notification is given up."""
CATCH_ALL = "the notification could not be read"
"""How ``parse_notification`` words a refusal no specific check made (see there)."""
CLAIM_SECONDS = 60
"""A delivery claimed by one process is not picked by another for this long."""

# --------------------------------------------------------------------------- fault profile

MAX_DELAY_SECONDS = 7 * 24 * 3600
"""The longest ``delay_seconds`` (and ``latency_ms``): a week is longer than any delay worth
rehearsing, and a huge value would overflow a notification's due time on every payment."""


def _parse_hhmm(text: str) -> int:
    if not re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", str(text)):
        raise ValueError(f"outage times are HH:MM (UTC), not {text!r}")
    hours, _, minutes = str(text).partition(":")
    return int(hours) * 60 + int(minutes)


@dataclass(frozen=True)
class FaultProfile:
    """How badly one sandbox behaves. Rates are probabilities (0..1) drawn from a
    ``random.Random(seed)``, so a seeded profile misbehaves the same way every run."""

    latency_ms: int = 0
    decline_rate: float = 0.0
    timeout_rate: float = 0.0
    """The channel acts, then the call times out: the worst case for the caller."""
    error_rate: float = 0.0
    """``ChannelError``: the channel failed and did not act."""
    outages: tuple[tuple[str, str], ...] = ()
    """UTC windows ``("HH:MM", "HH:MM")``, end excluded; a window may wrap midnight."""
    duplicate_rate: float = 0.0
    """A notification is sent twice (same notification id)."""
    delay_seconds: float = 0.0
    """Every notification is due this long after its cause."""
    reorder_rate: float = 0.0
    """After a final payment notification, a stale "pending" one about the same payment."""
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("decline_rate", "timeout_rate", "error_rate", "duplicate_rate", "reorder_rate"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} is a probability between 0 and 1, not {value}")
        if self.latency_ms < 0 or self.delay_seconds < 0:
            raise ValueError("latency_ms and delay_seconds cannot be negative")
        if self.latency_ms > 1000 * MAX_DELAY_SECONDS or self.delay_seconds > MAX_DELAY_SECONDS:
            raise ValueError(f"latency_ms and delay_seconds are at most a week ({MAX_DELAY_SECONDS} s)")
        outages = tuple((str(start), str(end)) for start, end in self.outages)
        for start, end in outages:
            _parse_hhmm(start), _parse_hhmm(end)
        object.__setattr__(self, "outages", outages)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> FaultProfile:
        """From ``settings.sandbox_faults[name]`` (decoded JSON). Anything wrong (an unknown key,
        a value of the wrong type or range) is a ``ValueError`` naming the key: a configuration error."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown fault profile keys {unknown}; known: {sorted(known)}")
        for name, value in values.items():
            whole = name in ("latency_ms", "seed")
            if name == "outages" or (name == "seed" and value is None):
                continue
            # bool is an int to Python, and JSON lets NaN and Infinity through: neither is a rate.
            if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) \
                    or (isinstance(value, float) and not math.isfinite(value)):
                raise ValueError(f"{name} is {'a whole number' if whole else 'a number'}, not {value!r}")
        if "outages" in values:
            windows = values["outages"]
            if not isinstance(windows, list | tuple) or not all(
                    isinstance(window, list | tuple) and len(window) == 2 for window in windows):
                raise ValueError(f'outages is a list of ["HH:MM", "HH:MM"] windows, not {windows!r}')
            values["outages"] = tuple(tuple(window) for window in windows)
        return cls(**values)

    def in_outage(self, at: datetime) -> bool:
        minute = at.astimezone(UTC).hour * 60 + at.astimezone(UTC).minute
        for start_text, end_text in self.outages:
            start, end = _parse_hhmm(start_text), _parse_hhmm(end_text)
            if (start <= minute < end) if start <= end else (minute >= start or minute < end):
                return True
        return False


# --------------------------------------------------------------------------- the store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    reference TEXT PRIMARY KEY,          -- our attempt id (payment) or refund id (refund)
    kind TEXT NOT NULL,                  -- payment | refund
    parent TEXT,                         -- a refund's payment reference
    external_id TEXT NOT NULL,           -- the channel's own id
    payment_id TEXT,
    merchant_id TEXT,
    method TEXT NOT NULL,
    amount INTEGER NOT NULL,
    currency TEXT NOT NULL,
    capture INTEGER NOT NULL DEFAULT 1,
    status TEXT NOT NULL,
    decline_code TEXT,
    captured_amount INTEGER NOT NULL DEFAULT 0,
    refunded_amount INTEGER NOT NULL DEFAULT 0,
    next_action TEXT,                    -- JSON
    details TEXT NOT NULL DEFAULT '{}',  -- JSON: what this channel keeps besides (card last4, value date...)
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    expires_at TEXT                      -- when a waiting operation moves on by itself
);
CREATE INDEX IF NOT EXISTS operations_expiry ON operations (expires_at);
CREATE TABLE IF NOT EXISTS movements (   -- money that moved: what the statement lists
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    reference TEXT NOT NULL,
    payment_reference TEXT NOT NULL,
    type TEXT NOT NULL,                  -- charge | capture | refund
    amount INTEGER NOT NULL,             -- signed: refunds are negative
    fee INTEGER NOT NULL,                -- signed: what the channel keeps (a returned fee is negative)
    currency TEXT NOT NULL,
    occurred_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS movements_time ON movements (occurred_at);
CREATE TABLE IF NOT EXISTS outbox (      -- notifications the channel owes us
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    notification_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    reference TEXT NOT NULL,
    status TEXT NOT NULL,
    payload TEXT NOT NULL,               -- JSON: what the message says; signed when sent
    due_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    claimed_until TEXT,
    delivered_at TEXT,
    given_up_at TEXT,
    last_status INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (delivered_at, given_up_at, due_at);
CREATE TABLE IF NOT EXISTS keys (name TEXT PRIMARY KEY, value BLOB NOT NULL);
"""


def stamp(at: datetime) -> str:
    """Times in the store: fixed-width UTC text, so they sort as they compare."""
    return clock.rfc3339(at)


def unstamp(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


class SandboxStore:
    """One sandbox's SQLite file. A connection per thread (sqlite3 connections are not
    shared across threads); writes take the database lock up front (``BEGIN IMMEDIATE``)
    so a read-check-write, such as "refunds never exceed the capture", cannot interleave
    with another process's."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        # IF NOT EXISTS: the first process to open the file makes the tables, others find them.
        self._connection().executescript(_SCHEMA)

    def _connection(self) -> SQLiteConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False,
                                         factory=SQLiteConnection)
            connection.writer = writer_lock(str(self.path))
            connection.busy_seconds = 30
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA busy_timeout=30000")
            self._local.connection = connection
        return connection

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        connection = self._connection()
        connection.begin_write()  # queued as our own database's writers are (kit.writelock)
        try:
            yield connection
        except BaseException:
            connection.rollback()
            raise
        connection.commit()

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        connection = self._connection()
        connection.execute("BEGIN")
        try:
            yield connection
        finally:
            connection.execute("COMMIT")

    def key(self, name: str, make: Callable[[], bytes]) -> bytes:
        """A secret of the channel, made on first use. Two processes racing to make it
        both keep the one that was stored first."""
        with self.read() as connection:
            row = connection.execute("SELECT value FROM keys WHERE name = ?", (name,)).fetchone()
        if row is not None:
            return bytes(row["value"])
        made = make()
        with self.write() as connection:
            connection.execute("INSERT OR IGNORE INTO keys (name, value) VALUES (?, ?)", (name, made))
            return bytes(connection.execute("SELECT value FROM keys WHERE name = ?", (name,)).fetchone()["value"])


# --------------------------------------------------------------------------- helpers


def major_units(minor: int, currency: str, places: int | None = None) -> str:
    """``1234 CNY`` -> ``"12.34"``: exact, with the currency's ISO 4217 exponent. A layout that
    writes its own number of ``places`` (two, for yuan) gets them, and more for a currency that
    needs more (``1234 KWD`` -> ``"1.234"``), never fewer: a digit dropped would change the sum."""
    exponent = Currency.of(currency).exponent
    value = Decimal(minor).scaleb(-exponent)
    return f"{value:.{exponent if places is None else max(places, exponent)}f}"


def minor_units(text: str, currency: str) -> int:
    """``"12.34" CNY`` -> ``1234``; refuses anything that is not a whole number of minor units."""
    exponent = Currency.of(currency).exponent
    value = Decimal(text).scaleb(exponent)
    if value != value.to_integral_value():
        raise ValueError(f"{text} {currency} is not a whole number of minor units")
    return int(value)


def next_business_day(day: date) -> date:
    """The next Monday to Friday after ``day`` (the sandbox bank knows no holidays)."""
    following = day + timedelta(days=1)
    while following.weekday() >= 5:
        following += timedelta(days=1)
    return following


def check_freshness(stamped: datetime | int, now: datetime | None = None) -> None:
    """``stamped`` (a time, or Unix seconds as ``unix_seconds`` reads them) is within
    ``NOTIFICATION_TOLERANCE`` of now. Seconds are compared as numbers: a timestamp no
    calendar holds is simply far from now, not an ``OverflowError``."""
    now = now or clock.now()
    if isinstance(stamped, int):
        too_far = abs(now.timestamp() - stamped) > NOTIFICATION_TOLERANCE.total_seconds()
    else:
        too_far = abs(now - stamped) > NOTIFICATION_TOLERANCE
    if too_far:
        raise NotificationInvalid("the notification's timestamp is more than 5 minutes from now")


# --------------------------------------------------------------------------- reading notifications
# A notification is signed by the channel, but a signature proves who sent it, not that it is
# well formed. Every field is checked before it is used; what fails a check is
# ``NotificationInvalid`` (400, nothing stored), never a 500 that the channel would resend for
# hours. ``Notification`` itself checks the fields it carries (protocol.py).

_UNIX_SECONDS = re.compile(r"[0-9]{1,12}")
_MAJOR_AMOUNT = re.compile(r"[0-9]{1,19}(?:\.[0-9]{1,6})?")
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_JSON_DEPTH = 32


def unix_seconds(text: Any, name: str) -> int:
    """Unix seconds as a header carries them: ASCII digits only (``str.isdigit`` also takes
    ``²``, which ``int`` refuses), twelve at most."""
    if not isinstance(text, str) or not _UNIX_SECONDS.fullmatch(text):
        raise NotificationInvalid(f"{name} is not a time in Unix seconds")
    return int(text)


def same_signature(expected: str, given: Any) -> bool:
    """Constant-time comparison that is also safe for any text a header may hold
    (``hmac.compare_digest`` raises on non-ASCII text)."""
    return isinstance(given, str) and hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))


def read_json(content: bytes, what: str = "the notification") -> Any:
    """Strict JSON: UTF-8, no repeated keys, no NaN or Infinity, integers within 64 bits, not
    nested deeper than any channel nests: what is stored of it (the notification's ``raw``)
    can always be stored."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        found = dict(items)
        if len(found) != len(items):
            raise ValueError("a key is repeated")
        return found

    def integer(text: str) -> int:
        value = int(text) if len(text.lstrip("-")) <= 19 else None
        if value is None or abs(value) > MAX_AMOUNT:
            raise ValueError("an integer beyond 64 bits")
        return value

    def real(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError("a number beyond floating point")
        return value

    def constant(text: str) -> Any:
        raise ValueError(f"{text} is not JSON")

    try:
        value = json.loads(content.decode("utf-8"), object_pairs_hook=pairs, parse_int=integer, parse_float=real,
                           parse_constant=constant)
        _check_plain(value, _JSON_DEPTH)
    except (ValueError, RecursionError) as error:
        raise NotificationInvalid(f"{what} is not strict JSON: {str(error)[:100]}") from None
    return value


def _check_plain(value: Any, depth: int) -> None:
    if depth <= 0:
        raise ValueError("nested too deep")
    if isinstance(value, str):
        value.encode("utf-8")  # a lone surrogate ("\ud800") is not text any database stores
    elif isinstance(value, dict):
        for key, inner in value.items():
            _check_plain(key, depth)
            _check_plain(inner, depth - 1)
    elif isinstance(value, list):
        for inner in value:
            _check_plain(inner, depth - 1)


def text_field(value: Any, name: str, max_length: int = 128, *, nullable: bool = False) -> str | None:
    """An id or code: 1 to ``max_length`` printable characters (``None`` if ``nullable``)."""
    if value is None and nullable:
        return None
    return checked_text(value, name, max_length)


def free_text(value: Any, name: str, max_length: int, *, empty: bool = True) -> str:
    """Words for people (a description, a status text): any characters, bounded."""
    if not isinstance(value, str) or len(value) > max_length or (not value and not empty):
        raise NotificationInvalid(f"{name} is not a text of at most {max_length} characters")
    return value


def currency_field(value: Any, name: str = "the currency") -> str:
    if not isinstance(value, str) or not is_currency(value):
        raise NotificationInvalid(f"{name} {str(value)[:20]!r} is not an ISO 4217 code with a minor unit")
    return value


def minor_amount(value: Any, name: str = "the amount") -> int:
    """An amount in minor units as JSON carries it: a positive integer (not ``true``, not 1.0)."""
    if type(value) is not int or not 0 < value <= MAX_AMOUNT:
        raise NotificationInvalid(f"{name} is not a positive whole number of minor units")
    return value


def major_amount(value: Any, currency: str, name: str = "the amount") -> int:
    """``"12.34"`` in ``currency`` as a positive whole number of minor units; plain digits and
    one decimal point only (``Decimal`` would also take ``"NaN"``, ``"1e3"``, ``" 1 "``, ``"1_0"``)."""
    if not isinstance(value, str) or not _MAJOR_AMOUNT.fullmatch(value):
        raise NotificationInvalid(f"{name} {value!r:.30} is not a decimal amount")
    try:
        minor = minor_units(value, currency)
    except ValueError:
        raise NotificationInvalid(f"{name} {value} is not a whole number of minor units of {currency}") from None
    if not 0 < minor <= MAX_AMOUNT:
        raise NotificationInvalid(f"{name} {value} {currency} is not a positive amount")
    return minor


def iso_time(value: Any, name: str) -> datetime:
    """An ISO 8601 time with its UTC offset, in UTC."""
    if not isinstance(value, str) or len(value) > 40:
        raise NotificationInvalid(f"{name} is not an ISO 8601 time")
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.utcoffset() is None:
            raise ValueError("no UTC offset")
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise NotificationInvalid(f"{name} {value!r} is not an ISO 8601 time with its UTC offset") from None


def local_time(value: Any, name: str, layout: str, zone: tzinfo) -> datetime:
    """A time written in ``layout`` on the channel's clock in ``zone``, in UTC."""
    if not isinstance(value, str) or len(value) > 40:
        raise NotificationInvalid(f"{name} is not a time")
    try:
        return datetime.strptime(value, layout).replace(tzinfo=zone).astimezone(UTC)
    except (ValueError, OverflowError):
        raise NotificationInvalid(f"{name} {value!r} is not a time as {layout}") from None


def iso_day(value: Any, name: str) -> date:
    """A calendar day, ``YYYY-MM-DD``."""
    if not isinstance(value, str) or not _DAY.fullmatch(value):
        raise NotificationInvalid(f"{name} is not a day as YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise NotificationInvalid(f"{name} {value!r} is not a day of the calendar") from None


@dataclass(frozen=True)
class Decision:
    """What a channel says to a new charge (its subclass's ``decide``)."""

    status: str
    decline_code: str | None = None
    next_action: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    expires_at: datetime | None = None


@dataclass(frozen=True)
class OutboxMessage:
    """One queued notification as the channel will sign and send it."""

    notification_id: str
    kind: str
    reference: str
    status: str
    payload: dict[str, Any]
    attempts: int = 0


DECLINE_MESSAGES = {
    "do_not_honor": "The channel declined the payment (do_not_honor)",
    "insufficient_funds": "The card has insufficient funds",
    "expired_card": "The card has expired",
    "incorrect_cvc": "The card's security code is incorrect",
    "incorrect_number": "The card number is incorrect",
    "lost_card": "The card was reported lost",
    "stolen_card": "The card was reported stolen",
    "authentication_failed": "The customer failed the authentication challenge",
    "expired": "The customer did not pay in time",
    "authorization_expired": "The authorization expired before it was captured",
    "not_capturable": "Only an authorization waiting for capture can be captured, once",
    "amount_exceeds_authorized": "The capture is larger than the authorization",
    "currency_mismatch": "The currency differs from the payment's",
    "not_cancelable": "Only an authorization or an unpaid payment can be canceled",
    "already_captured": "The payment was already captured; refund it instead",
    "not_captured": "Only a captured payment can be refunded",
    "invalid_amount": "The amount must be positive",
    "refund_exceeds_captured": "Refunds would exceed the captured amount",
    "refund_id_reused": "This refund id was used for a different refund",
}
"""The sandboxes' words for their codes, as ``query`` gives them. Not every payment is a card: a
channel with words of its own (the card acquirer's) sets ``SandboxConnector.decline_messages``."""

CARD_DECLINE_MESSAGES = {**DECLINE_MESSAGES, "do_not_honor": "The card was declined (card_declined)",
                         "expired": "The customer did not complete the authentication challenge in time"}
"""The card acquirer's words: a declined card says so."""


# --------------------------------------------------------------------------- the shared connector


class SandboxConnector:
    """The behaviour every sandbox shares; each channel's module says what is its own
    (how it answers a charge, how it signs, its statement layout)."""

    name: ClassVar[str]
    methods: tuple[str, ...] = ()
    currencies: tuple[str, ...] | None = None
    cost: Cost = Cost()
    supports_manual_capture: bool = False
    settlement_delay_days: int = 1
    statement_timezone: ClassVar[tzinfo] = UTC
    """Statement days are the channel's own calendar days (api.md)."""
    refund_status: ClassVar[str] = REFUNDED
    """``PENDING`` where refunds complete later, by notification."""
    decline_messages: ClassVar[Mapping[str, str]] = DECLINE_MESSAGES
    """The channel's words for its codes (a QR wallet or a bank declining is not "the card was declined")."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = SandboxStore(Path(settings.sandbox_dir) / f"{self.name}.db")
        self.faults = FaultProfile.from_mapping(settings.sandbox_faults.get(self.name))

    # ---------------------------------------------------------------- faults

    @property
    def faults(self) -> FaultProfile:
        return self._faults

    @faults.setter
    def faults(self, profile: FaultProfile) -> None:
        self._faults = profile
        self.random = random.Random(profile.seed)

    def _chance(self, rate: float) -> bool:
        return rate > 0 and self.random.random() < rate

    def _arrive(self) -> bool:
        """Every call first reaches the channel: an outage refuses it, latency slows it.
        True when the latency is past our timeout (the call will time out after acting)."""
        if self.faults.in_outage(clock.now()):
            raise ChannelUnavailable(f"{self.name} is in a scheduled outage window")
        latency = self.faults.latency_ms / 1000
        limit = self.settings.channel_timeout_seconds
        if latency > 0:
            time.sleep(min(latency, limit))
        return latency >= limit > 0

    def _must_fail(self) -> None:
        if self._chance(self.faults.error_rate):
            raise ChannelError(f"{self.name} failed to process the request (fault profile)")

    def _times_out(self, too_slow: bool) -> bool:
        return too_slow or self._chance(self.faults.timeout_rate)

    # ---------------------------------------------------------------- subclass hooks

    def decide(self, request: ChargeRequest, now: datetime) -> Decision:
        raise NotImplementedError

    def external_id(self, kind: str, now: datetime) -> str:
        return f"{self.name}_{kind}_{secrets.token_hex(10)}"

    def notification_id(self, now: datetime) -> str:
        return f"ntf_{secrets.token_hex(12)}"

    def wire(self, message: OutboxMessage, now: datetime) -> tuple[dict[str, str], bytes]:
        """The message as the channel sends it: headers and body, signed at send time."""
        raise NotImplementedError

    def read_notification(self, headers: Mapping[str, str], body: bytes) -> Notification:
        """Verify and read one notification; ``headers`` have lower-case names. Each field is
        checked as it is read (the helpers above), and anything wrong is ``NotificationInvalid``."""
        raise NotImplementedError

    def parse_notification(self, headers: Mapping[str, str], body: bytes) -> Notification:
        try:
            return self.read_notification({str(key).lower(): value for key, value in headers.items()}, body)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, ArithmeticError, RecursionError) as error:
            # Every field has its check; this is for the one a check missed. It is still the
            # channel's malformed message, so a 400 it stops resending, not a 500; logged so
            # the missing check gets written.
            log.warning("sandbox_notification_unreadable", channel=self.name, error=repr(error)[:300])
            raise NotificationInvalid(f"{CATCH_ALL} ({type(error).__name__})") from None

    def notification_reply(self) -> NotificationReply:
        return NotificationReply()

    def statement(self, day: date) -> StatementFile:
        raise NotImplementedError

    # ---------------------------------------------------------------- the protocol

    def authorize(self, request: ChargeRequest) -> ChannelResult:
        too_slow = self._arrive()
        if request.amount == AMOUNT_OUTAGE:
            raise ChannelUnavailable(f"{self.name} is unavailable (magic amount {AMOUNT_OUTAGE})")
        if request.amount == AMOUNT_CHANNEL_ERROR:
            raise ChannelError(f"{self.name} failed (magic amount {AMOUNT_CHANNEL_ERROR})")
        if request.amount == AMOUNT_TIMEOUT_BEFORE_ACTING:
            raise ChannelTimeout(f"{self.name} did not answer (magic amount {AMOUNT_TIMEOUT_BEFORE_ACTING})")
        self._check_request(request)
        now = clock.now()
        self._must_fail()
        # Decided before the store is locked: the lock is held only to record the answer.
        decision = self.decide(request, now)
        if request.amount == AMOUNT_DECLINE:
            decision = Decision(DECLINED, "do_not_honor")
        elif decision.status != DECLINED and self._chance(self.faults.decline_rate):
            decision = Decision(DECLINED, "do_not_honor", details=decision.details)
        expires_at = decision.expires_at
        if decision.status == AUTHORIZED and expires_at is None:
            expires_at = now + timedelta(hours=self.settings.authorization_hold_hours)
        captured = request.amount if decision.status == APPROVED else 0
        row = {
            "reference": request.reference, "kind": "payment", "parent": None,
            "external_id": self.external_id("payment", now), "payment_id": request.payment_id,
            "merchant_id": request.merchant_id, "method": request.method, "amount": request.amount,
            "currency": request.currency, "capture": int(request.capture), "status": decision.status,
            "decline_code": decision.decline_code, "captured_amount": captured, "refunded_amount": 0,
            "next_action": json.dumps(decision.next_action) if decision.next_action else None,
            "details": json.dumps({"description": request.description, "return_url": request.return_url,
                                   **decision.details}),
            "created_at": stamp(now), "updated_at": stamp(now), "expires_at": stamp(expires_at) if expires_at else None,
        }
        with self.store.write() as connection:
            inserted = connection.execute(
                f"INSERT INTO operations ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})"
                " ON CONFLICT (reference) DO NOTHING", tuple(row.values())).rowcount
            if not inserted:
                # The reference is the channel's idempotency key: a retry gets the first answer.
                existing = _operation(connection, request.reference)
                if (existing["kind"], existing["amount"], existing["currency"], existing["method"]) != (
                        "payment", request.amount, request.currency, request.method):
                    raise ChannelError(f"reference {request.reference} was used for a different charge")
                return self._result(existing)
            if captured:
                self._move(connection, request.reference, request.reference, "charge", captured, request.currency, now)
        result = self._result(row)
        if request.amount == AMOUNT_TIMEOUT_AFTER_ACTING or self._times_out(too_slow):
            raise ChannelTimeout(f"{self.name} did not answer in time (it may have acted)")
        return result

    def _check_request(self, request: ChargeRequest) -> None:
        """What a real channel's API would refuse outright, before acting."""
        if request.method not in self.methods:
            raise ChannelError(f"{self.name} does not take {request.method} payments")
        try:
            Currency.of(request.currency)
        except UnknownCurrency:
            raise ChannelError(f"{self.name} does not know the currency {request.currency!r}") from None
        if self.currencies is not None and request.currency not in self.currencies:
            raise ChannelError(f"{self.name} does not take {request.currency}")
        if not request.capture and not self.supports_manual_capture:
            raise ChannelError(f"{self.name} cannot authorize without capturing")
        if request.amount <= 0:
            raise ChannelError("the amount must be positive")

    def capture(self, reference: str, amount: int, currency: str) -> ChannelResult:
        too_slow = self._arrive()
        now = clock.now()
        with self.store.write() as connection:
            row = self._advance(connection, _operation(connection, reference), now)
            if row is None or row["kind"] != "payment":
                return ChannelResult(NOT_FOUND, reference)
            if row["status"] == APPROVED and not row["capture"] and row["captured_amount"] == amount:
                return self._result(row)  # a retried capture gets the first answer
            refusal = None
            if row["status"] != AUTHORIZED:
                refusal = "not_capturable"
            elif currency != row["currency"]:
                refusal = "currency_mismatch"
            elif amount <= 0:
                refusal = "invalid_amount"
            elif amount > row["amount"]:
                refusal = "amount_exceeds_authorized"
            if refusal:
                return self._refusal(row, refusal)
            self._must_fail()
            # A partial capture releases the rest of the authorization, as card schemes do.
            connection.execute(
                "UPDATE operations SET status = ?, captured_amount = ?, expires_at = NULL, updated_at = ?"
                " WHERE reference = ?", (APPROVED, amount, stamp(now), reference))
            self._move(connection, reference, reference, "capture", amount, currency, now)
            result = self._result(_operation(connection, reference))
        if self._times_out(too_slow):
            raise ChannelTimeout(f"{self.name} did not answer the capture in time (it may have acted)")
        return result

    def cancel(self, reference: str) -> ChannelResult:
        too_slow = self._arrive()
        now = clock.now()
        with self.store.write() as connection:
            row = self._advance(connection, _operation(connection, reference), now)
            if row is None or row["kind"] != "payment":
                return ChannelResult(NOT_FOUND, reference)
            if row["status"] not in (AUTHORIZED, REQUIRES_ACTION, PENDING):
                # Nothing to cancel: the answer is the payment's state, which says why (a
                # customer who paid first makes it approved), with the refusal beside it.
                refusal = "already_captured" if row["status"] == APPROVED else "not_cancelable"
                current = self._result(row)
                return replace(current, message=current.message or self.decline_messages[refusal],
                               raw={**current.raw, "refusal": refusal}) if row["status"] != CANCELED else current
            self._must_fail()
            connection.execute(
                "UPDATE operations SET status = ?, expires_at = NULL, updated_at = ? WHERE reference = ?",
                (CANCELED, stamp(now), reference))
            result = self._result(_operation(connection, reference))
        if self._times_out(too_slow):
            raise ChannelTimeout(f"{self.name} did not answer the cancellation in time (it may have acted)")
        return result

    def refund(self, reference: str, refund_id: str, amount: int, currency: str) -> ChannelResult:
        too_slow = self._arrive()
        now = clock.now()
        with self.store.write() as connection:
            existing = _operation(connection, refund_id)
            if existing is not None:
                if (existing["kind"], existing["parent"], existing["amount"], existing["currency"]) != (
                        "refund", reference, amount, currency):
                    return ChannelResult(DECLINED, refund_id, decline_code="refund_id_reused",
                                         message=self.decline_messages["refund_id_reused"])
                return self._result(self._advance(connection, existing, now))
            payment = self._advance(connection, _operation(connection, reference), now)
            if payment is None or payment["kind"] != "payment":
                return ChannelResult(NOT_FOUND, refund_id)
            refusal = None
            if payment["status"] != APPROVED or payment["captured_amount"] <= 0:
                refusal = "not_captured"
            elif currency != payment["currency"]:
                refusal = "currency_mismatch"
            elif amount <= 0:
                refusal = "invalid_amount"
            elif payment["refunded_amount"] + amount > payment["captured_amount"]:
                refusal = "refund_exceeds_captured"
            if refusal:
                return ChannelResult(DECLINED, refund_id, amount=amount, currency=currency, decline_code=refusal,
                                     message=self.decline_messages[refusal],
                                     captured_amount=payment["captured_amount"],
                                     refunded_amount=payment["refunded_amount"])
            self._must_fail()
            # What this refund gets back of the fee is settled when it is asked for, in the order refunds
            # are asked (as ``refunded_amount`` counts them), and booked when it completes.
            details = {"fee_returned": self._fee_returned(connection, payment, amount)}
            connection.execute(
                "INSERT INTO operations (reference, kind, parent, external_id, payment_id, merchant_id, method, amount,"
                " currency, status, details, created_at, updated_at, expires_at)"
                " VALUES (?, 'refund', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (refund_id, reference, self.external_id("refund", now), payment["payment_id"],
                 payment["merchant_id"], payment["method"], amount, currency, self.refund_status,
                 json.dumps(details), stamp(now), stamp(now), stamp(now) if self.refund_status == PENDING else None))
            # The refunded total counts pending refunds too: the money is promised already.
            connection.execute("UPDATE operations SET refunded_amount = refunded_amount + ?, updated_at = ?"
                               " WHERE reference = ?", (amount, stamp(now), reference))
            if self.refund_status == REFUNDED:
                self._move_refund(connection, _operation(connection, refund_id), payment, now)
            result = self._result(_operation(connection, refund_id))
        if self._times_out(too_slow):
            raise ChannelTimeout(f"{self.name} did not answer the refund in time (it may have acted)")
        return result

    def void(self, reference: str) -> ChannelResult:
        """An unseen reference is kept as a canceled payment of nothing: a charge that arrives with it later
        meets it and is refused (``authorize``: a reference used for a different charge), acting on nothing."""
        self._arrive()
        now = clock.now()
        with self.store.write() as connection:
            connection.execute(
                "INSERT INTO operations (reference, kind, external_id, method, amount, currency, status, details,"
                " created_at, updated_at) VALUES (?, 'payment', ?, '', 0, '', ?, ?, ?, ?)"
                " ON CONFLICT (reference) DO NOTHING",
                (reference, self.external_id("payment", now), CANCELED, json.dumps({"voided_unseen": True}),
                 stamp(now), stamp(now)))
            row = self._advance(connection, _operation(connection, reference), now)
            return self._result(row) if row["kind"] == "payment" else ChannelResult(NOT_FOUND, reference)

    def query(self, reference: str) -> ChannelResult:
        """The channel's view, after any change that fell due (an unpaid QR code expired)."""
        self._arrive()
        with self.store.write() as connection:
            row = self._advance(connection, _operation(connection, reference), clock.now())
            return self._result(row) if row is not None else ChannelResult(NOT_FOUND, reference)

    # ---------------------------------------------------------------- the customer's side

    def order(self, reference: str) -> dict[str, Any] | None:
        """A payment as the hosted pages show it (None: the channel never saw it)."""
        with self.store.write() as connection:
            row = self._advance(connection, _operation(connection, reference), clock.now())
        if row is None or row["kind"] != "payment":
            return None
        return {**dict(row), "details": json.loads(row["details"]),
                "next_action": json.loads(row["next_action"]) if row["next_action"] else None}

    def complete(self, reference: str, succeeded: bool, decline_code: str | None = None) -> ChannelResult:
        """The customer acts on a waiting payment (pays the QR code or the transfer, passes
        or fails the challenge); the channel then notifies us."""
        self._arrive()
        now = clock.now()
        with self.store.write() as connection:
            row = self._advance(connection, _operation(connection, reference), now)
            if row is None or row["kind"] != "payment":
                return ChannelResult(NOT_FOUND, reference)
            if row["status"] not in (REQUIRES_ACTION, PENDING):
                return self._result(row)  # paid, failed or canceled already: nothing to do
            if succeeded:
                status = APPROVED if row["capture"] else AUTHORIZED
                captured = row["amount"] if status == APPROVED else 0
                expires_at = now + timedelta(hours=self.settings.authorization_hold_hours) if status == AUTHORIZED \
                    else None
                details = {**json.loads(row["details"]), **self.on_paid(row, now)}
                connection.execute(
                    "UPDATE operations SET status = ?, captured_amount = ?, decline_code = NULL, next_action = NULL,"
                    " details = ?, expires_at = ?, updated_at = ? WHERE reference = ?",
                    (status, captured, json.dumps(details), stamp(expires_at) if expires_at else None, stamp(now),
                     reference))
                if captured:
                    self._move(connection, reference, reference, "charge", captured, row["currency"], now)
            else:
                connection.execute(
                    "UPDATE operations SET status = ?, decline_code = ?, next_action = NULL, expires_at = NULL,"
                    " updated_at = ? WHERE reference = ?", (DECLINED, decline_code, stamp(now), reference))
            row = _operation(connection, reference)
            self._notify(connection, row, now)
            return self._result(row)

    def on_paid(self, row: sqlite3.Row, now: datetime) -> dict[str, Any]:
        """Details the channel adds when the customer pays (the bank's value date)."""
        return {}

    # ---------------------------------------------------------------- internals

    def _advance(self, connection: sqlite3.Connection, row: sqlite3.Row | None, now: datetime) -> sqlite3.Row | None:
        """Apply what fell due to one operation: an unpaid payment fails, an uncaptured
        authorization lapses, a pending refund completes."""
        if row is None or row["expires_at"] is None or unstamp(row["expires_at"]) > now:
            return row
        reference = row["reference"]
        if row["kind"] == "refund" and row["status"] == PENDING:
            connection.execute(
                "UPDATE operations SET status = ?, expires_at = NULL, updated_at = ? WHERE reference = ?",
                (REFUNDED, stamp(now), reference))
            payment = _operation(connection, row["parent"])
            self._move_refund(connection, row, payment, now)
            self._notify(connection, _operation(connection, reference), now)
        elif row["status"] in (REQUIRES_ACTION, PENDING):
            connection.execute(
                "UPDATE operations SET status = ?, decline_code = 'expired', next_action = NULL, expires_at = NULL,"
                " updated_at = ? WHERE reference = ?", (FAILED, stamp(now), reference))
            self._notify(connection, _operation(connection, reference), now)
        elif row["status"] == AUTHORIZED:
            # Card schemes let an authorization lapse quietly: no notification.
            connection.execute(
                "UPDATE operations SET status = ?, decline_code = 'authorization_expired', expires_at = NULL,"
                " updated_at = ? WHERE reference = ?", (CANCELED, stamp(now), reference))
        else:
            connection.execute("UPDATE operations SET expires_at = NULL WHERE reference = ?", (reference,))
        return _operation(connection, reference)

    def sweep(self, now: datetime | None = None) -> int:
        """Apply everything that fell due (expired QR codes, lapsed authorizations)."""
        now = now or clock.now()
        with self.store.write() as connection:
            due = connection.execute("SELECT reference FROM operations WHERE expires_at <= ?", (stamp(now),)).fetchall()
            for (reference,) in due:
                self._advance(connection, _operation(connection, reference), now)
        return len(due)

    def _move(self, connection: sqlite3.Connection, reference: str, payment_reference: str, kind: str, amount: int,
              currency: str, now: datetime) -> None:
        fee = self.cost.charged(amount)  # on the amount collected (a capture: the captured part), whole
        connection.execute(
            "INSERT INTO movements (reference, payment_reference, type, amount, fee, currency, occurred_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)", (reference, payment_reference, kind, amount, fee, currency, stamp(now)))

    def _fee_returned(self, connection: sqlite3.Connection, payment: sqlite3.Row, amount: int) -> int:
        """What a new refund of ``amount`` gets back of the payment's fee (``Cost.returned``): cumulative over
        the payment's refunds, so together they never get back more than the fee it charged."""
        if not self.cost.returned_on_refund:
            return 0  # card schemes and banks keep their fee
        charged = connection.execute(
            "SELECT COALESCE(SUM(fee), 0) FROM movements WHERE payment_reference = ? AND type IN ('charge', 'capture')",
            (payment["reference"],)).fetchone()[0]
        earlier = connection.execute(
            "SELECT details FROM operations WHERE kind = 'refund' AND parent = ?", (payment["reference"],)).fetchall()
        returned_before = sum(int(json.loads(row["details"]).get("fee_returned", 0)) for row in earlier)
        return self.cost.returned(charged=charged, captured=payment["captured_amount"],
                                  refunded_before=payment["refunded_amount"], returned_before=returned_before,
                                  refunded=amount)

    def _move_refund(self, connection: sqlite3.Connection, refund: sqlite3.Row, payment: sqlite3.Row,
                     now: datetime) -> None:
        # QR wallets give back their share of the fee, settled when the refund was asked for.
        fee = -int(json.loads(refund["details"]).get("fee_returned", 0))
        connection.execute(
            "INSERT INTO movements (reference, payment_reference, type, amount, fee, currency, occurred_at)"
            " VALUES (?, ?, 'refund', ?, ?, ?, ?)",
            (refund["reference"], payment["reference"], -refund["amount"], fee, payment["currency"], stamp(now)))

    def _refusal(self, row: sqlite3.Row, code: str) -> ChannelResult:
        current = self._result(row)
        return ChannelResult(DECLINED, row["reference"], external_id=row["external_id"], amount=row["amount"],
                             currency=row["currency"], decline_code=code, message=self.decline_messages[code],
                             captured_amount=current.captured_amount, refunded_amount=current.refunded_amount,
                             raw={"current_status": row["status"]})

    def _result(self, row: sqlite3.Row | Mapping[str, Any]) -> ChannelResult:
        code = row["decline_code"]
        waiting = row["status"] in (REQUIRES_ACTION, PENDING) and row["kind"] == "payment"
        return ChannelResult(
            status=row["status"], reference=row["reference"], external_id=row["external_id"], amount=row["amount"],
            currency=row["currency"], decline_code=code, message=self.decline_messages.get(code) if code else None,
            next_action=json.loads(row["next_action"]) if waiting and row["next_action"] else None,
            captured_amount=row["captured_amount"] if row["kind"] == "payment" else None,
            refunded_amount=row["refunded_amount"] if row["kind"] == "payment" else None,
            occurred_at=unstamp(row["updated_at"]),
            raw={"channel": self.name, "kind": row["kind"], "parent": row["parent"], **json.loads(row["details"])},
        )

    # ---------------------------------------------------------------- notifications

    def _notify(self, connection: sqlite3.Connection, row: sqlite3.Row, now: datetime) -> None:
        """Queue the message about ``row``'s new status, with the profile's duplication,
        delay and reordering."""
        due = stamp(now + timedelta(seconds=self.faults.delay_seconds))
        payload = {key: row[key] for key in ("reference", "kind", "parent", "external_id", "amount", "currency",
                                             "status", "decline_code", "created_at", "updated_at")}
        payload["details"] = json.loads(row["details"])
        parent = _operation(connection, row["parent"]) if row["parent"] else None
        if parent is not None:
            payload["parent_external_id"] = parent["external_id"]
            payload["parent_amount"] = parent["captured_amount"]
        messages = [(self.notification_id(now), row["status"], payload)]
        if self._chance(self.faults.duplicate_rate):
            messages.append(messages[0])
        if row["kind"] == "payment" and row["status"] in (APPROVED, AUTHORIZED, FAILED, DECLINED) \
                and self._chance(self.faults.reorder_rate):
            # The message the channel sent (or meant to) while the customer was still paying,
            # arriving after the final one.
            stale = {**payload, "status": PENDING, "updated_at": payload["created_at"]}
            messages.append((self.notification_id(now), PENDING, stale))
        for notification_id, status, body in messages:
            connection.execute(
                "INSERT INTO outbox (notification_id, kind, reference, status, payload, due_at)"
                " VALUES (?, ?, ?, ?, ?, ?)", (notification_id, row["kind"], row["reference"], status,
                                               json.dumps(body), due))

    def deliver_due(self, send: Sender) -> int:
        """Send this channel's due notifications, oldest first; a non-2xx answer (or no
        answer) is retried later on ``RETRY_SCHEDULE``. Returns how many were accepted."""
        now = clock.now()
        self.sweep(now)
        with self.store.write() as connection:
            rows = connection.execute(
                "SELECT * FROM outbox WHERE delivered_at IS NULL AND given_up_at IS NULL AND due_at <= ?"
                " AND (claimed_until IS NULL OR claimed_until < ?) ORDER BY due_at, id LIMIT 200",
                (stamp(now), stamp(now))).fetchall()
            # Claimed first, so a second process delivering at the same time skips them.
            connection.executemany("UPDATE outbox SET claimed_until = ? WHERE id = ?",
                                   [(stamp(now + timedelta(seconds=CLAIM_SECONDS)), row["id"]) for row in rows])
        accepted = 0
        path = f"/v1/channels/{self.name}/notifications"
        for row in rows:
            message = OutboxMessage(row["notification_id"], row["kind"], row["reference"], row["status"],
                                    json.loads(row["payload"]), row["attempts"])
            headers, body = self.wire(message, clock.now())
            try:
                status: int | None = send(path, headers, body)
            except Exception as error:  # noqa: BLE001 - an unreachable receiver is a failed delivery, retried
                log.warning("sandbox_notification_unsent", channel=self.name, error=repr(error))
                status = None
            done = clock.now()
            with self.store.write() as connection:
                if status is not None and 200 <= status < 300:
                    accepted += 1
                    connection.execute("UPDATE outbox SET delivered_at = ?, last_status = ?, attempts = attempts + 1,"
                                       " claimed_until = NULL WHERE id = ?", (stamp(done), status, row["id"]))
                elif row["attempts"] < len(RETRY_SCHEDULE):
                    retry_at = done + RETRY_SCHEDULE[row["attempts"]]
                    connection.execute("UPDATE outbox SET due_at = ?, last_status = ?, attempts = attempts + 1,"
                                       " claimed_until = NULL WHERE id = ?", (stamp(retry_at), status, row["id"]))
                else:
                    connection.execute("UPDATE outbox SET given_up_at = ?, last_status = ?, attempts = attempts + 1,"
                                       " claimed_until = NULL WHERE id = ?", (stamp(done), status, row["id"]))
        return accepted

    def outbox(self) -> list[dict[str, Any]]:
        """Every queued notification, oldest first (for operators and tests)."""
        with self.store.read() as connection:
            return [dict(row) for row in connection.execute("SELECT * FROM outbox ORDER BY due_at, id")]

    # ---------------------------------------------------------------- statements

    def movements_of(self, day: date) -> list[dict[str, Any]]:
        """The money that moved on ``day`` of the channel's own calendar, with each
        movement's payment (external ids, method, description)."""
        start = datetime(day.year, day.month, day.day, tzinfo=self.statement_timezone)
        end = start + timedelta(days=1)
        with self.store.read() as connection:
            rows = connection.execute(
                "SELECT m.*, o.external_id AS external_id, o.kind AS operation_kind,"
                " p.external_id AS payment_external_id, p.details AS payment_details,"
                " p.amount AS payment_amount, p.created_at AS payment_created_at, p.payment_id AS payment_id"
                " FROM movements m JOIN operations o ON o.reference = m.reference"
                " JOIN operations p ON p.reference = m.payment_reference"
                " WHERE m.occurred_at >= ? AND m.occurred_at < ? ORDER BY m.occurred_at, m.id",
                (stamp(start), stamp(end))).fetchall()
        out = []
        for row in rows:
            item = dict(row)
            item["payment_details"] = json.loads(row["payment_details"])
            item["occurred_at"] = unstamp(row["occurred_at"]).astimezone(self.statement_timezone)
            item["payment_created_at"] = unstamp(row["payment_created_at"]).astimezone(self.statement_timezone)
            out.append(item)
        return out


Sender = Callable[[str, dict[str, str], bytes], int]
"""``send(path, headers, body) -> HTTP status``: how notifications leave the sandbox."""


def _operation(connection: sqlite3.Connection, reference: str | None) -> sqlite3.Row | None:
    if reference is None:
        return None
    return connection.execute("SELECT * FROM operations WHERE reference = ?", (reference,)).fetchone()


SANDBOXES: dict[str, type[SandboxConnector]] = {}
"""Every sandbox channel class by name (filled as their modules are imported)."""


def sandbox(cls: type[SandboxConnector]) -> type[SandboxConnector]:
    """Class decorator: registers a sandbox with the channel registry and with ``deliver_due``."""
    from clearhouse.channels import protocol

    SANDBOXES[cls.name] = cls
    protocol.register(cls.name, cls)
    return cls


def deliver_due(settings: Settings, send: Sender) -> int:
    """Send what is due from every sandbox channel's outbox to
    ``/v1/channels/{name}/notifications`` through ``send``; returns how many were accepted."""
    import clearhouse.channels.connectors  # noqa: F401  (every sandbox registered)

    accepted = 0
    for name in sorted(SANDBOXES):
        if not (Path(settings.sandbox_dir) / f"{name}.db").exists():
            continue  # never used: nothing owed, and no store made just to find that out
        accepted += SANDBOXES[name](settings).deliver_due(send)
    return accepted


def deliver_due_over_http(settings: Settings) -> int:
    """``deliver_due`` to ``settings.public_base_url`` with httpx: the worker's job and
    ``clearhouse sandbox deliver``."""
    import httpx

    clients: list[httpx.Client] = []

    def send(path: str, headers: dict[str, str], body: bytes) -> int:
        # Opened on the first message only: most worker ticks have nothing to send.
        if not clients:
            clients.append(httpx.Client(base_url=settings.public_base_url, timeout=settings.webhook_timeout_seconds))
        return clients[0].post(path, headers=headers, content=body).status_code

    try:
        return deliver_due(settings, send)
    finally:
        for client in clients:
            client.close()
