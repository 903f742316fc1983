"""A notification signed with the channel's own keys but malformed in any one field is
refused: ``NotificationInvalid``, over HTTP ``400 notification_invalid``, and nothing is
stored or applied. Never a 500: a channel answered 500 keeps resending for hours.

One table, every sandbox, every field it sends: a wrong type, an unparsable or impossible
date, number or amount, NaN and Infinity, a negative or fractional amount, a huge
timestamp, a missing field, an empty or overlong id. ``TestTheTableCoversEveryField``
fails when a channel starts sending a field the table has no malformed case for."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, select

from clearhouse.channels.connectors.sandbox import CATCH_ALL
from clearhouse.channels.connectors.sandbox_card import CARD_CHALLENGE, sandbox_card
from clearhouse.channels.protocol import ChannelSet, NotificationInvalid
from clearhouse.kit.db import transact
from clearhouse.payments.models import ChannelNotification
from tests.channels import notification_wire as wire
from tests.channels.sandbox_support import card, charge, sandbox_settings

MISSING = object()
"""The field is left out."""
HUGE_TIMESTAMP = "99999999999999999999"
NOT_ASCII_DIGIT = "\u00b2"  # '²': str.isdigit() says yes, int() says no
DEEP = b"[" * 100_000 + b"]" * 100_000

BAD_IDS = (["a"], "", "x" * 200, 5, None, MISSING)
BAD_TEXTS = (["a"], 5, {"a": 1})
BAD_MINOR_AMOUNTS = ("8800", 88.0, 1.5, -1, 0, True, 10**30, float("nan"), float("inf"), None, MISSING)
BAD_CURRENCIES = ("XXX", "cny", "CNYY", ["CNY"], 156, None, MISSING)
BAD_ISO_TIMES = ("yesterday", 5, "2026-11-23T10:00:00", "0001-01-01T00:00:00+08:00", "2026-02-30T10:00:00+08:00")
BAD_MAJOR_AMOUNTS = ("abc", "Infinity", "-Infinity", "NaN", "sNaN", "-88.00", "0.00", "88.001", "1e3", "", " 88.00",
                     "88,00", "1_000.00", "+88.00", "9" * 30)


@dataclass(frozen=True)
class Case:
    channel: str
    kind: str  # which genuine notification is changed: "payment" (approved) or "refund" (refunded)
    path: tuple[str, ...]
    value: Any

    def __str__(self) -> str:
        shown = "missing" if self.value is MISSING else repr(self.value)
        return f"{self.channel}/{self.kind}/{'.'.join(self.path)}={shown[:40]}"

    def apply(self, document: dict[str, Any]) -> dict[str, Any]:
        if self.path in (("raw",), ("edit",)):
            return {**document, self.path[0]: self.value}
        *parents, last = self.path
        target = document
        for key in parents:
            target = target[key]
        if self.value is MISSING:
            target.pop(last, None)
        else:
            target[last] = self.value
        return document


@dataclass(frozen=True)
class Edit:
    """A change to the encoded body, made before it is signed (a name, for stable test ids)."""

    name: str
    change: Callable[[bytes], bytes]

    def __repr__(self) -> str:
        return self.name


def _json_first_key_twice(body: bytes) -> bytes:
    key, value = next(iter(json.loads(body).items()))
    return b"{" + json.dumps(key).encode() + b":" + json.dumps(value).encode() + b"," + body[1:]


def _form_first_field_twice(body: bytes) -> bytes:
    return body + b"&" + body.split(b"&")[0]


def cases(channel: str, kind: str, path: tuple[str, ...], *values: Any) -> list[Case]:
    return [Case(channel, kind, path, value) for value in values]


def _raw_bodies(channel: str, kind: str) -> list[Case]:
    twice = Edit("first key twice", _form_first_field_twice if channel == "sandbox_alipay" else _json_first_key_twice)
    return [*cases(channel, kind, ("raw",), b"not json", b"\xff\xfe", b"[]", b"null", b"NaN", DEEP,
                   b'{"a": 1, "a": 2}'),
            Case(channel, kind, ("edit",), twice)]


def _card() -> list[Case]:
    c, k = "sandbox_card", "payment"
    return [
        *cases(c, k, ("t",), HUGE_TIMESTAMP, NOT_ASCII_DIGIT, "-5", "1e9"),
        *_raw_bodies(c, k),
        *cases(c, k, ("body", "id"), *BAD_IDS),
        *cases(c, k, ("body", "type"), 5, ["payment.approved"], "payment", "refund.approved", "payment.declined"),
        *cases(c, k, ("body", "created"), "1700000000", 10**30, -1, True, 1.5, float("inf"), None),
        *cases(c, k, ("body", "data"), "x", ["x"], None),
        *cases(c, k, ("body", "data", "reference"), *BAD_IDS),
        *cases(c, k, ("body", "data", "external_id"), *BAD_IDS),
        *cases(c, k, ("body", "data", "status"), ["approved"], 5, "declined", MISSING),
        *cases(c, k, ("body", "data", "amount"), *BAD_MINOR_AMOUNTS),
        *cases(c, k, ("body", "data", "currency"), *BAD_CURRENCIES),
        *cases(c, k, ("body", "data", "decline_code"), ["x"], "", "x" * 65, 5, "do_not_honor"),
        *cases(c, k, ("body", "data", "occurred_at"), *BAD_ISO_TIMES),
    ]


def _bank(kind: str) -> list[Case]:
    c = "sandbox_bank"
    rows = [
        *cases(c, kind, ("t",), HUGE_TIMESTAMP, NOT_ASCII_DIGIT),
        *_raw_bodies(c, kind),
        *cases(c, kind, ("body", "notification_id"), *BAD_IDS),
        *cases(c, kind, ("body", "event"), ["credit_transfer.booked"], 5, "credit_transfer.unknown", MISSING),
        *cases(c, kind, ("body", "end_to_end_id"), *BAD_IDS),
        *cases(c, kind, ("body", "bank_reference"), *BAD_IDS),
        *cases(c, kind, ("body", "amount"), "88.00", ["x"], None, {"value": "88.00"}),
        *cases(c, kind, ("body", "amount", "value"), *BAD_MAJOR_AMOUNTS, 88, 88.0, None, MISSING),
        *cases(c, kind, ("body", "amount", "currency"), *BAD_CURRENCIES),
        *cases(c, kind, ("body", "booking_date"), "not-a-date", "2026-13-45", "20261123", "2026-11-23T10:00:00", 5,
               ["2026-11-23"], None),
        *cases(c, kind, ("body", "value_date"), "not-a-date", "2026-02-30", 5, None),
    ]
    if kind == "payment":
        rows += cases(c, kind, ("body", "reference_code"), *BAD_TEXTS, "", "x" * 200)
        rows += cases(c, kind, ("body", "original_end_to_end_id"), *BAD_TEXTS, "att_other")
    else:
        rows += cases(c, kind, ("body", "reference_code"), *BAD_TEXTS)
        rows += cases(c, kind, ("body", "original_end_to_end_id"), *BAD_IDS)
    return rows


def _alipay() -> list[Case]:
    c, k = "sandbox_alipay", "payment"
    bad_times = ("yesterday", "0001-01-01 00:00:00", "2026-11-23T10:00:00", "2026-02-30 10:00:00", "")
    return [
        *_raw_bodies(c, k),
        *cases(c, k, ("raw",), b"notify_id=1&notify_id=2", b"%"),
        *cases(c, k, ("body", "notify_time"), *bad_times, "9999-12-31 23:59:59"),
        *cases(c, k, ("body", "notify_type"), "", "trade_status_syncx", MISSING),
        *cases(c, k, ("body", "notify_id"), "", "x" * 200, MISSING),
        *cases(c, k, ("body", "app_id"), "", "2021000000000000"),
        *cases(c, k, ("body", "charset"), "", "gbk"),
        *cases(c, k, ("body", "version"), "", "2.0"),
        *cases(c, k, ("body", "sign_type"), "", "RSA"),
        *cases(c, k, ("body", "trade_no"), "", "x" * 200, MISSING),
        *cases(c, k, ("body", "out_trade_no"), "", "x" * 65, MISSING),
        *cases(c, k, ("body", "trade_status"), "", "TRADE_UNKNOWN", MISSING),
        *cases(c, k, ("body", "total_amount"), *BAD_MAJOR_AMOUNTS, MISSING),
        *cases(c, k, ("body", "receipt_amount"), "abc", "Infinity", "-1.00", "88.001"),
        *cases(c, k, ("body", "buyer_pay_amount"), "abc", "NaN", "-1.00"),
        *cases(c, k, ("body", "trans_currency"), "XXX", "usd", "CNYY", ""),
        *cases(c, k, ("body", "gmt_create"), *bad_times),
        *cases(c, k, ("body", "gmt_payment"), *bad_times),
        *cases(c, k, ("body", "gmt_close"), *bad_times),
        *cases(c, k, ("body", "subject"), "x" * 257),
        *cases(c, k, ("body", "seller_id"), "x" * 200),
        *cases(c, k, ("body", "buyer_id"), "x" * 200),
    ]


def _wechat(kind: str) -> list[Case]:
    c = "sandbox_wechat"
    rows = [
        *cases(c, kind, ("t",), HUGE_TIMESTAMP, NOT_ASCII_DIGIT),
        *_raw_bodies(c, kind),
        *cases(c, kind, ("body", "id"), *BAD_IDS),
        *cases(c, kind, ("body", "create_time"), *BAD_ISO_TIMES, None),
        *cases(c, kind, ("body", "resource_type"), 5, "plain", None),
        *cases(c, kind, ("body", "event_type"), 5, ["TRANSACTION.SUCCESS"], "TRANSACTION.UNKNOWN", None),
        *cases(c, kind, ("body", "summary"), *BAD_TEXTS, None),
        *cases(c, kind, ("body", "resource"), "x", None),
        *cases(c, kind, ("body", "resource", "original_type"), 5, ["refund"], "bill"),
        *cases(c, kind, ("body", "resource", "algorithm"), 5, "AEAD_AES_128_GCM"),
        *cases(c, kind, ("body", "resource", "ciphertext"), 5, ["x"], "not base64!", ""),
        *cases(c, kind, ("body", "resource", "associated_data"), 5, ["x"], None),
        *cases(c, kind, ("body", "resource", "nonce"), 5, ["x"], "", None),
        *cases(c, kind, ("resource",), "x", ["x"], 5),
        *cases(c, kind, ("resource", "mchid"), 5, "1900000000", MISSING),
        *cases(c, kind, ("resource", "out_trade_no"), *BAD_IDS),
        *cases(c, kind, ("resource", "transaction_id"), *BAD_IDS),
        *cases(c, kind, ("resource", "success_time"), *BAD_ISO_TIMES, None),
        *cases(c, kind, ("resource", "amount"), "x", None, MISSING),
        *cases(c, kind, ("resource", "amount", "total"), *BAD_MINOR_AMOUNTS),
        *cases(c, kind, ("resource", "amount", "payer_total"), *BAD_MINOR_AMOUNTS[:-1]),
        *cases(c, kind, ("resource", "amount", "currency"), *BAD_CURRENCIES),
    ]
    if kind == "payment":
        rows += [
            *cases(c, kind, ("resource", "appid"), *BAD_TEXTS, "", "wx0000000000000000"),
            *cases(c, kind, ("resource", "trade_type"), *BAD_TEXTS, "JSAPIX"),
            *cases(c, kind, ("resource", "trade_state"), ["SUCCESS"], 5, "UNKNOWN", MISSING),
            *cases(c, kind, ("resource", "trade_state_desc"), *BAD_TEXTS),
            *cases(c, kind, ("resource", "bank_type"), *BAD_TEXTS),
            *cases(c, kind, ("resource", "attach"), *BAD_TEXTS),
            *cases(c, kind, ("resource", "payer"), "x", ["x"], {"openid": 5}, {"openid": "o", "x": 1}),
            *cases(c, kind, ("resource", "payer", "openid"), *BAD_TEXTS, ""),
            *cases(c, kind, ("resource", "amount", "payer_currency"), *BAD_CURRENCIES[:-1]),
        ]
    else:
        rows += [
            *cases(c, kind, ("resource", "out_refund_no"), *BAD_IDS),
            *cases(c, kind, ("resource", "refund_id"), *BAD_IDS),
            *cases(c, kind, ("resource", "refund_status"), ["SUCCESS"], 5, "UNKNOWN", MISSING),
            *cases(c, kind, ("resource", "user_received_account"), *BAD_TEXTS),
            *cases(c, kind, ("resource", "amount", "refund"), *BAD_MINOR_AMOUNTS),
            *cases(c, kind, ("resource", "amount", "payer_refund"), *BAD_MINOR_AMOUNTS[:-1]),
        ]
    return rows


CASES = [*_card(), *_bank("payment"), *_bank("refund"), *_alipay(), *_wechat("payment"), *_wechat("refund")]
KINDS = sorted({(case.channel, case.kind) for case in CASES})


# --------------------------------------------------------------------------- the channel's side


def _pay(connector: Any, reference: str) -> tuple[dict[str, str], bytes]:
    """The customer pays (passes the challenge): the channel's approved notification."""
    if connector.name == "sandbox_card":
        connector.challenge(reference, True)
    else:
        connector.pay(reference)
    return wire.sent(connector)


def _complete_refund(connector: Any) -> tuple[dict[str, str], bytes]:
    """The channel completes the pending refund it was asked for: its refunded notification."""
    connector.sweep()
    return wire.sent(connector)


@pytest.fixture(scope="module")
def sandboxes(tmp_path_factory) -> tuple[ChannelSet, dict[tuple[str, str], dict[str, Any]]]:
    """One set of sandboxes for the module (RSA keys take a while to make), and the decoded
    genuine notification of each channel and kind."""
    channels = ChannelSet(sandbox_settings(tmp_path_factory.mktemp("malformed")))
    documents = {}
    for channel, kind in KINDS:  # a channel's payment before its refund
        connector = channels[channel]
        if kind == "payment":
            challenge = card(CARD_CHALLENGE) if channel == "sandbox_card" else None
            connector.authorize(charge("att_1", 8800, channel=channel, card_data=challenge))
            headers, body = _pay(connector, "att_1")
        else:
            assert connector.refund("att_1", "re_1", 3000, "CNY").status == "pending"
            headers, body = _complete_refund(connector)
        documents[channel, kind] = wire.decode(channel, connector, headers, body)
    return channels, documents


class TestEachConnectorRefusesAMalformedField:
    @pytest.mark.parametrize("case", CASES, ids=str)
    def test_it_is_notification_invalid(self, sandboxes, case):
        channels, documents = sandboxes
        connector = channels[case.channel]
        document = documents[case.channel, case.kind]
        connector.parse_notification(*wire.encode(case.channel, connector, document))  # unchanged: accepted
        headers, body = wire.encode(case.channel, connector, case.apply(copy.deepcopy(document)))
        with pytest.raises(NotificationInvalid) as refused:
            connector.parse_notification(headers, body)
        assert not refused.value.detail.startswith(CATCH_ALL), "refused by the catch-all only, not by a check"


class TestTheTableCoversEveryField:
    @pytest.mark.parametrize(("channel", "kind"), KINDS)
    def test_every_field_the_channel_sends_has_a_malformed_case(self, sandboxes, channel, kind):
        _, documents = sandboxes
        covered = {case.path for case in CASES if (case.channel, case.kind) == (channel, kind)}
        uncovered = wire.leaf_paths(documents[channel, kind]) - covered
        assert not uncovered, f"add malformed cases for {sorted(uncovered)}"

    def test_case_names_are_distinct(self):
        names = [str(case) for case in CASES]
        assert len(names) == len(set(names))


# --------------------------------------------------------------------------- end to end, over HTTP

_PAYMENTS = {"sandbox_card": {"method": "card", "payment_details": {"card": sandbox_card(CARD_CHALLENGE)}},
             "sandbox_bank": {"method": "bank_transfer"}, "sandbox_alipay": {"method": "alipay"},
             "sandbox_wechat": {"method": "wechat_pay"}}


@pytest.mark.slow  # every malformed case over HTTP on both databases; the connector table stays in the default run
class TestThroughTheNotificationEndpoint:
    """On the platform: a payment waiting for the customer (or a pending refund of a paid one),
    every malformed case posted to ``/v1/channels/{channel}/notifications``, then the genuine
    notification, which is accepted and applied: only the change made the others refused."""

    @pytest.mark.parametrize(("channel", "kind"), KINDS)
    def test_every_malformed_case_is_400_and_changes_nothing(self, app, anonymous_client, merchant_client_factory,
                                                             channel, kind):
        shop, _ = merchant_client_factory()
        connector = app.state.channels[channel]
        path = f"/v1/channels/{channel}/notifications"
        created = shop.post("/v1/payments", json={"amount": 8800, "currency": "CNY", **_PAYMENTS[channel]})
        payment = created.json()
        assert created.status_code == 201 and payment["channel"] == channel, created.text
        headers, body = _pay(connector, payment["attempts"][0]["id"])
        refund_path = None
        if kind == "refund":
            assert anonymous_client.post(path, headers=headers, content=body).is_success
            refund = shop.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 3000})
            assert refund.status_code == 201 and refund.json()["status"] == "pending", refund.text
            refund_path = f"/v1/refunds/{refund.json()['id']}"
            headers, body = _complete_refund(connector)
        genuine = wire.decode(channel, connector, headers, body)

        def state() -> tuple[Any, ...]:
            stored = transact(app.state.engine, lambda s: s.execute(
                select(func.count()).select_from(ChannelNotification)).scalar())
            return (shop.get(f"/v1/payments/{payment['id']}").json(),
                    shop.get(refund_path).json() if refund_path else None, stored)

        before = state()
        wrong = []
        for case in CASES:
            if (case.channel, case.kind) != (channel, kind):
                continue
            headers, body = wire.encode(channel, connector, case.apply(copy.deepcopy(genuine)))
            # As bytes: a header arrives as Latin-1 whatever it holds (httpx sends text as ASCII only).
            raw_headers = {name: value.encode("latin-1") for name, value in headers.items()}
            response = anonymous_client.post(path, headers=raw_headers, content=body)
            if response.status_code != 400 or "notification_invalid" not in response.text:
                wrong.append(f"{case}: {response.status_code} {response.text[:200]}")
        assert not wrong, "\n".join(wrong)
        assert state() == before

        headers, body = wire.encode(channel, connector, genuine)
        accepted = anonymous_client.post(path, headers=headers, content=body)
        assert accepted.is_success, accepted.text
        after, refund_after, stored = state()
        assert stored == before[2] + 1
        if kind == "payment":
            assert after["status"] == "succeeded"
        else:
            assert refund_after["status"] == "succeeded"
