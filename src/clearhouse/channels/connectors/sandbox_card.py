"""``sandbox_card``: a card acquirer. Synchronous authorization with the networks' real
decline codes, a 3-D-Secure-like challenge for flagged cards, manual capture, partial and
repeated refunds. Its notifications (challenge outcomes) are JSON signed with HMAC-SHA256
the way Stripe signs webhooks: ``Sandbox-Signature: t=<unix time>,v1=<hex>`` over
``"<t>." + body``."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import secrets
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import cached_property
from typing import Any

from clearhouse.channels.connectors.sandbox import (
    CARD_DECLINE_MESSAGES,
    Decision,
    OutboxMessage,
    SandboxConnector,
    check_freshness,
    currency_field,
    iso_time,
    major_units,
    minor_amount,
    read_json,
    same_signature,
    sandbox,
    text_field,
    unix_seconds,
)
from clearhouse.channels.protocol import (
    APPROVED,
    AUTHORIZED,
    CANCELED,
    DECLINE_CODE_MAX,
    DECLINED,
    EXTERNAL_ID_MAX,
    FAILED,
    PENDING,
    REQUIRES_ACTION,
    ChannelError,
    ChargeRequest,
    Cost,
    Notification,
    NotificationInvalid,
    NotificationReply,
    StatementFile,
)
from clearhouse.kit import clock

# --------------------------------------------------------------------------- magic card numbers
# The networks' published test numbers (all pass the Luhn check); any other valid number approves.
CARD_APPROVED = "4242424242424242"
CARD_APPROVED_MASTERCARD = "5555555555554444"
CARD_DECLINED = "4000000000000002"
CARD_INSUFFICIENT_FUNDS = "4000000000009995"
CARD_EXPIRED = "4000000000000069"
CARD_INCORRECT_CVC = "4000000000000127"
CARD_LOST = "4000000000009987"
CARD_STOLEN = "4000000000009979"
CARD_CHALLENGE = "4000000000003220"
"""Needs the customer to pass a challenge (``requires_action``, redirect to the sandbox page)."""
CARD_CHANNEL_ERROR = "4000000000000119"
"""``ChannelError`` (a processing error at the acquirer); the channel did not act."""


def card_expiry_year() -> int:
    """The expiry year of the sandbox's example cards: four years from now (a literal year
    would expire them all one January)."""
    return clock.now().year + 4


def sandbox_card(number: str = CARD_APPROVED) -> dict[str, Any]:
    """A card as a payment request carries it, for the sandbox: ``number``, an expiry in
    December of ``card_expiry_year()``, and a CVC."""
    return {"number": number, "exp_month": 12, "exp_year": card_expiry_year(), "cvc": "123"}


DECLINING_CARDS = {
    CARD_DECLINED: "do_not_honor",
    CARD_INSUFFICIENT_FUNDS: "insufficient_funds",
    CARD_EXPIRED: "expired_card",
    CARD_INCORRECT_CVC: "incorrect_cvc",
    CARD_LOST: "lost_card",
    CARD_STOLEN: "stolen_card",
}

CHALLENGE_TTL = timedelta(minutes=15)
SIGNATURE_HEADER = "Sandbox-Signature"
EVENT_FIELDS = {"id", "type", "created", "data"}
DATA_FIELDS = {"reference", "external_id", "status", "amount", "currency", "decline_code", "occurred_at"}
NOTIFIED_STATUSES = {APPROVED, AUTHORIZED, DECLINED, FAILED, PENDING, CANCELED}


def luhn_valid(number: str) -> bool:
    if not number.isdigit() or not 12 <= len(number) <= 19:
        return False
    total = 0
    for position, digit in enumerate(reversed(number)):
        value = int(digit) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def brand_of(number: str) -> str:
    if number.startswith("4"):
        return "visa"
    if number[:2] in {"51", "52", "53", "54", "55"} or 2221 <= int(number[:4] or 0) <= 2720:
        return "mastercard"
    if number[:2] in {"34", "37"}:
        return "amex"
    if number.startswith("62"):
        return "unionpay"
    return "unknown"


def card_signature(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


@sandbox
class SandboxCard(SandboxConnector):
    name = "sandbox_card"
    methods = ("card",)
    cost = Cost(rate=Decimal("0.0038"))
    supports_manual_capture = True
    settlement_delay_days = 2
    decline_messages = CARD_DECLINE_MESSAGES

    @cached_property
    def notification_secret(self) -> bytes:
        """The shared webhook secret (the operator copies it from the channel's dashboard)."""
        return self.store.key("notification_secret", lambda: b"whsec_" + secrets.token_urlsafe(32).encode())

    def external_id(self, kind: str, now: datetime) -> str:
        return ("ch_" if kind == "payment" else "re_") + secrets.token_hex(12)

    def notification_id(self, now: datetime) -> str:
        return "evt_" + secrets.token_hex(12)

    def decide(self, request: ChargeRequest, now: datetime) -> Decision:
        card = request.card
        number = "".join(ch for ch in (card.number if card else "") if not ch.isspace())
        if card is None or not luhn_valid(number):
            return Decision(DECLINED, "incorrect_number")
        # Only what a real acquirer may keep: never the number or the security code.
        details = {"brand": card.brand or brand_of(number), "bin": number[:6], "last4": number[-4:],
                   "exp_month": card.exp_month, "exp_year": card.exp_year}
        if number == CARD_CHANNEL_ERROR:
            raise ChannelError("the acquirer had a processing error (magic card number)")
        if number in DECLINING_CARDS:
            return Decision(DECLINED, DECLINING_CARDS[number], details=details)
        year = card.exp_year + 2000 if card.exp_year < 100 else card.exp_year
        if not 1 <= card.exp_month <= 12 or (year, card.exp_month) < (now.year, now.month):
            return Decision(DECLINED, "expired_card", details=details)
        if card.cvc is not None and not (card.cvc.isdigit() and len(card.cvc) in (3, 4)):
            return Decision(DECLINED, "incorrect_cvc", details=details)
        if number == CARD_CHALLENGE:
            base = self.settings.public_base_url.rstrip("/")
            return Decision(REQUIRES_ACTION, details=details, expires_at=now + CHALLENGE_TTL,
                            next_action={"type": "redirect",
                                         "url": f"{base}/sandbox/{self.name}/challenge/{request.reference}"})
        return Decision(APPROVED if request.capture else AUTHORIZED, details=details)

    def challenge(self, reference: str, passed: bool):
        """The customer's answer on the challenge page; the outcome is notified, signed."""
        return self.complete(reference, passed, None if passed else "authentication_failed")

    # ---------------------------------------------------------------- notifications

    def wire(self, message: OutboxMessage, now: datetime) -> tuple[dict[str, str], bytes]:
        payload = message.payload
        event = {
            "id": message.notification_id,
            "type": f"{message.kind}.{message.status}",
            "created": int(now.timestamp()),
            "data": {"reference": message.reference, "external_id": payload["external_id"], "status": message.status,
                     "amount": payload["amount"], "currency": payload["currency"],
                     "decline_code": payload["decline_code"] if message.status in (DECLINED, FAILED) else None,
                     "occurred_at": payload["updated_at"]},
        }
        body = json.dumps(event, separators=(",", ":")).encode()
        timestamp = int(now.timestamp())
        signature = card_signature(self.notification_secret, timestamp, body)
        return {"Content-Type": "application/json", SIGNATURE_HEADER: f"t={timestamp},v1={signature}"}, body

    def read_notification(self, headers: Mapping[str, str], body: bytes) -> Notification:
        parts = dict(part.split("=", 1) for part in str(headers.get(SIGNATURE_HEADER.lower(), "")).split(",")
                     if "=" in part)
        if "t" not in parts or "v1" not in parts:
            raise NotificationInvalid(f"the {SIGNATURE_HEADER} header is missing or malformed")
        timestamp = unix_seconds(parts["t"], f"the {SIGNATURE_HEADER} header's t")
        if not same_signature(card_signature(self.notification_secret, timestamp, body), parts["v1"]):
            raise NotificationInvalid("the notification's signature does not match")
        check_freshness(timestamp)
        event = read_json(body)
        if not isinstance(event, dict) or set(event) != EVENT_FIELDS or not isinstance(event["data"], dict) \
                or set(event["data"]) != DATA_FIELDS:
            raise NotificationInvalid("the notification has missing or unknown fields")
        data = event["data"]
        kind, _, status = text_field(event["type"], "type").partition(".")
        if kind != "payment" or status not in NOTIFIED_STATUSES or status != data["status"]:
            raise NotificationInvalid(f"the type {event['type']!r} and status are not ones this channel sends")
        if type(event["created"]) is not int or not 0 <= event["created"] < 10**11:
            raise NotificationInvalid("created is not a time in Unix seconds")
        decline_code = text_field(data["decline_code"], "decline_code", DECLINE_CODE_MAX, nullable=True)
        return Notification(
            notification_id=event["id"], kind=kind, reference=data["reference"], status=status,
            external_id=text_field(data["external_id"], "external_id", EXTERNAL_ID_MAX),
            amount=minor_amount(data["amount"]), currency=currency_field(data["currency"]),
            decline_code=decline_code, message=self.decline_messages.get(decline_code) if decline_code else None,
            occurred_at=iso_time(data["occurred_at"], "occurred_at"), raw=event)

    def notification_reply(self) -> NotificationReply:
        return NotificationReply(200, b'{"received":true}', "application/json")

    # ---------------------------------------------------------------- statement

    def statement(self, day: date) -> StatementFile:
        """Plain UTF-8 CSV, one line per money movement, amounts in major units (signed)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["date", "time", "type", "reference", "payment_reference", "external_id", "payment_id",
                         "brand", "last4", "currency", "amount", "fee", "net"])
        for line in self.movements_of(day):
            details = line["payment_details"]
            currency = line["currency"]
            writer.writerow([
                line["occurred_at"].date().isoformat(), line["occurred_at"].strftime("%H:%M:%S"), line["type"],
                line["reference"], line["payment_reference"], line["external_id"], line["payment_id"] or "",
                details.get("brand", ""), details.get("last4", ""), currency,
                major_units(line["amount"], currency), major_units(line["fee"], currency),
                major_units(line["amount"] - line["fee"], currency),
            ])
        return StatementFile(self.name, day, f"{self.name}_{day:%Y%m%d}.csv", buffer.getvalue().encode("utf-8"),
                             "sandbox_card_v1")

