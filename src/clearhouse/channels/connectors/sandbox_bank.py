"""``sandbox_bank``: pay by bank transfer. A charge answers ``pending`` with the transfer
instructions (account, reference code, amount); the customer "sends" the transfer on the
sandbox page or with ``clearhouse sandbox pay``; the bank then notifies us, signed with
HMAC-SHA256, that the credit is booked, with its value date on the next business day.
A refund is a return transfer: ``pending`` at first, booked later by notification.
Instructions left unpaid for seven days lapse (``failed``, notified)."""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
import json
import secrets
import string
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property
from typing import Any

from clearhouse.channels.connectors.sandbox import (
    DECLINE_MESSAGES,
    Decision,
    OutboxMessage,
    SandboxConnector,
    check_freshness,
    currency_field,
    iso_day,
    major_amount,
    major_units,
    next_business_day,
    read_json,
    same_signature,
    sandbox,
    text_field,
    unix_seconds,
)
from clearhouse.channels.protocol import (
    APPROVED,
    EXTERNAL_ID_MAX,
    FAILED,
    PENDING,
    REFERENCE_MAX,
    REFUNDED,
    ChannelResult,
    ChargeRequest,
    Cost,
    Notification,
    NotificationInvalid,
    NotificationReply,
    StatementFile,
)
from clearhouse.kit import clock

ACCOUNT_NAME = "Clearhouse Sandbox Collections"
IBAN = "DE89370400440532013000"
BIC = "COBADEFFXXX"
ACCOUNT_NUMBER = "31926819"
SORT_CODE = "60-16-13"
IBAN_CURRENCIES = ("EUR", "CHF", "PLN", "SEK", "DKK", "NOK", "CZK", "HUF", "RON")
"""Collected into the IBAN account; any other currency into the domestic account number."""
INSTRUCTIONS_TTL = timedelta(days=7)
TIMESTAMP_HEADER = "X-Bank-Timestamp"
SIGNATURE_HEADER = "X-Bank-Signature"
EVENTS = {APPROVED: "credit_transfer.booked", PENDING: "credit_transfer.awaited", FAILED: "credit_transfer.expired",
          REFUNDED: "return_transfer.booked"}
STATUS_OF_EVENT = {event: status for status, event in EVENTS.items()}
REFERENCE_CODE_MAX = 35
"""The remittance information a transfer carries (SEPA's structured reference is 35 characters)."""
BODY_FIELDS = {"notification_id", "event", "end_to_end_id", "bank_reference", "reference_code", "amount",
               "booking_date", "value_date", "original_end_to_end_id"}


def bank_signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """Base64 of HMAC-SHA256 over ``"<timestamp>\\n" + body``."""
    return base64.b64encode(hmac.new(secret, timestamp.encode() + b"\n" + body, hashlib.sha256).digest()).decode()


def _decimal_comma(minor: int, currency: str) -> str:
    return major_units(minor, currency).replace(".", ",")


@sandbox
class SandboxBank(SandboxConnector):
    name = "sandbox_bank"
    methods = ("bank_transfer",)
    cost = Cost(fixed=50)
    settlement_delay_days = 1
    refund_status = PENDING

    @cached_property
    def notification_secret(self) -> bytes:
        return self.store.key("notification_secret", lambda: secrets.token_urlsafe(32).encode())

    def external_id(self, kind: str, now: datetime) -> str:
        return f"{'CT' if kind == 'payment' else 'RT'}{now:%Y%m%d}" + "".join(
            secrets.choice(string.digits) for _ in range(10))

    def notification_id(self, now: datetime) -> str:
        return "bn_" + secrets.token_hex(12)

    def decide(self, request: ChargeRequest, now: datetime) -> Decision:
        # Short, unambiguous (no 0/O, 1/I), what a person types into their bank's form.
        alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
        reference_code = "CH-" + "".join(secrets.choice(alphabet) for _ in range(4)) + "-" + "".join(
            secrets.choice(alphabet) for _ in range(4))
        expires_at = now + INSTRUCTIONS_TTL
        account: dict[str, Any] = {"iban": IBAN, "bic": BIC} if request.currency in IBAN_CURRENCIES \
            else {"account_number": ACCOUNT_NUMBER, "sort_code": SORT_CODE}
        return Decision(PENDING, expires_at=expires_at, details={"reference_code": reference_code},
                        next_action={"type": "bank_transfer_instructions", "account_name": ACCOUNT_NAME, **account,
                                     "reference_code": reference_code, "amount": request.amount,
                                     "currency": request.currency, "expires_at": clock.rfc3339(expires_at)})

    def pay(self, reference: str) -> ChannelResult:
        """The customer sends the transfer (hosted page or ``clearhouse sandbox pay``)."""
        return self.complete(reference, True)

    def on_paid(self, row: Any, now: datetime) -> dict[str, Any]:
        return {"booking_date": now.date().isoformat(), "value_date": next_business_day(now.date()).isoformat()}

    # ---------------------------------------------------------------- notifications

    def wire(self, message: OutboxMessage, now: datetime) -> tuple[dict[str, str], bytes]:
        payload = message.payload
        details = payload["details"]
        booked = datetime.strptime(payload["updated_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).date()
        refund = message.kind == "refund"
        booked_now = message.status in (APPROVED, REFUNDED)
        booking = (details.get("booking_date") or booked.isoformat()) if booked_now else None
        value = (details.get("value_date") or next_business_day(booked).isoformat()) if booked_now else None
        body = json.dumps({
            "notification_id": message.notification_id, "event": EVENTS[message.status],
            "end_to_end_id": message.reference, "bank_reference": payload["external_id"],
            "reference_code": details.get("reference_code"),
            "amount": {"value": major_units(payload["amount"], payload["currency"]), "currency": payload["currency"]},
            "booking_date": booking, "value_date": value,
            "original_end_to_end_id": payload["parent"] if refund else None,
        }, separators=(",", ":")).encode()
        timestamp = str(int(now.timestamp()))
        return {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: bank_signature(self.notification_secret, timestamp, body)}, body

    def read_notification(self, headers: Mapping[str, str], body: bytes) -> Notification:
        timestamp = headers.get(TIMESTAMP_HEADER.lower(), "")
        seconds = unix_seconds(timestamp, f"the {TIMESTAMP_HEADER} header")
        given = headers.get(SIGNATURE_HEADER.lower(), "")
        if not given:
            raise NotificationInvalid(f"the {SIGNATURE_HEADER} header is missing")
        if not same_signature(bank_signature(self.notification_secret, timestamp, body), given):
            raise NotificationInvalid("the notification's signature does not match")
        check_freshness(seconds)
        message = read_json(body)
        if not isinstance(message, dict) or set(message) != BODY_FIELDS or not isinstance(message["amount"], dict) \
                or set(message["amount"]) != {"value", "currency"}:
            raise NotificationInvalid("the notification has missing or unknown fields")
        event = text_field(message["event"], "event")
        if event not in STATUS_OF_EVENT:
            raise NotificationInvalid(f"unknown event {event!r}")
        status = STATUS_OF_EVENT[event]
        refund = status == REFUNDED
        currency = currency_field(message["amount"]["currency"])
        amount = major_amount(message["amount"]["value"], currency)
        text_field(message["reference_code"], "reference_code", REFERENCE_CODE_MAX, nullable=True)
        original = text_field(message["original_end_to_end_id"], "original_end_to_end_id", REFERENCE_MAX,
                              nullable=not refund)
        if original is not None and not refund:
            raise NotificationInvalid("only a return transfer names an original end-to-end id")
        # A booked transfer has its booking and value dates; one awaited or expired has neither.
        booked_on = None
        if status in (APPROVED, REFUNDED):
            booked_on = iso_day(message["booking_date"], "booking_date")
            iso_day(message["value_date"], "value_date")
        elif message["booking_date"] is not None or message["value_date"] is not None:
            raise NotificationInvalid(f"a {event} notification has no booking or value date")
        failed = status == FAILED  # the instructions lapsed unpaid: query says the same
        return Notification(
            notification_id=message["notification_id"], kind="refund" if refund else "payment",
            reference=message["end_to_end_id"], status=status,
            external_id=text_field(message["bank_reference"], "bank_reference", EXTERNAL_ID_MAX),
            amount=amount, currency=currency, decline_code="expired" if failed else None,
            message=DECLINE_MESSAGES["expired"] if failed else None,
            occurred_at=datetime.combine(booked_on, time(), UTC) if booked_on else None, raw=message)

    def notification_reply(self) -> NotificationReply:
        return NotificationReply(200, b"OK", "text/plain")

    # ---------------------------------------------------------------- statement

    def statement(self, day: date) -> StatementFile:
        """The bank's account statement: ``;``-separated UTF-8, dates DD.MM.YYYY, decimal
        commas, credits positive and debits negative, bank charges in their own column,
        a totals block per currency at the end."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=";", lineterminator="\r\n")
        writer.writerow(["Account", IBAN])
        writer.writerow(["Statement date", f"{day:%d.%m.%Y}"])
        writer.writerow([])
        writer.writerow(["Booking date", "Value date", "Type", "End-to-end ID", "Bank reference",
                         "Remittance information", "Amount", "Currency", "Charges"])
        totals: dict[str, list[int]] = {}
        for line in self.movements_of(day):
            currency = line["currency"]
            booked = line["occurred_at"].date()
            credit = line["amount"] > 0
            writer.writerow([
                f"{booked:%d.%m.%Y}", f"{next_business_day(booked):%d.%m.%Y}", "CRDT" if credit else "DBIT",
                line["reference"], line["external_id"], line["payment_details"].get("reference_code", ""),
                _decimal_comma(line["amount"], currency), currency, _decimal_comma(line["fee"], currency),
            ])
            total = totals.setdefault(currency, [0, 0, 0])
            total[0 if credit else 1] += line["amount"]
            total[2] += line["fee"]
        writer.writerow([])
        writer.writerow(["Currency", "Credits", "Debits", "Charges", "Net"])
        for currency, (credits, debits, charges) in sorted(totals.items()):
            writer.writerow([currency, _decimal_comma(credits, currency), _decimal_comma(debits, currency),
                             _decimal_comma(charges, currency), _decimal_comma(credits + debits - charges, currency)])
        return StatementFile(self.name, day, f"{self.name}_{day:%Y%m%d}.csv", buffer.getvalue().encode("utf-8"),
                             "sandbox_bank_v1")
