"""Helpers for the sandbox channel tests: settings with a fresh sandbox directory, charge
requests, a recording ``send`` for ``deliver_due``. No database of ours is involved: the
sandboxes are another system with their own stores."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import clearhouse.channels.connectors  # noqa: F401  (registers the sandboxes)
from clearhouse.channels.connectors import sandbox
from clearhouse.channels.protocol import CardData, ChannelSet, ChargeRequest, Notification
from clearhouse.kit.settings import Settings
from tests.conftest import CARD_EXP_YEAR

BASE_URL = "http://testserver"
MASTER_KEY = "mk_test:" + base64.b64encode(bytes(range(32))).decode()
MONDAY = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
MAGIC_AMOUNTS = frozenset({sandbox.AMOUNT_DECLINE, sandbox.AMOUNT_TIMEOUT_AFTER_ACTING,
                           sandbox.AMOUNT_TIMEOUT_BEFORE_ACTING, sandbox.AMOUNT_CHANNEL_ERROR, sandbox.AMOUNT_OUTAGE})
"""Amounts that make every sandbox fail, time out or decline on purpose (``sandbox.AMOUNT_*``)."""
FRIDAY = datetime(2026, 11, 27, 15, 0, tzinfo=UTC)
METHOD_OF = {"sandbox_card": "card", "sandbox_bank": "bank_transfer", "sandbox_alipay": "alipay",
             "sandbox_wechat": "wechat_pay"}
SANDBOX_NAMES = sorted(METHOD_OF)


def sandbox_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"database_url": f"sqlite:///{tmp_path / 'unused.db'}", "master_key": MASTER_KEY,
                              "master_key_file": None, "sandbox_dir": tmp_path / "sandbox",
                              "public_base_url": BASE_URL}
    values.update(overrides)
    return Settings(**values)


def card(number: str = "4242424242424242", exp_month: int = 12, exp_year: int = CARD_EXP_YEAR,
         cvc: str | None = "123") -> CardData:
    return CardData(number=number, exp_month=exp_month, exp_year=exp_year, cvc=cvc)


def charge(reference: str, amount: int = 10_000, currency: str = "CNY", *, channel: str = "sandbox_card",
           capture: bool = True, card_data: CardData | None = None, description: str | None = "Tea set",
           return_url: str | None = None) -> ChargeRequest:
    method = METHOD_OF[channel]
    return ChargeRequest(reference=reference, payment_id=f"pay_{reference}", merchant_id="mer_test", amount=amount,
                         currency=currency, method=method, capture=capture,
                         card=(card_data or card()) if method == "card" else None, description=description,
                         return_url=return_url)


@dataclass
class Recorder:
    """A ``send`` for ``deliver_due`` that verifies each message with the channel's own
    connector (what our notification endpoint does) and answers ``status``."""

    channels: ChannelSet
    status: int = 200
    sent: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    parsed: list[Notification] = field(default_factory=list)

    def __call__(self, path: str, headers: dict[str, str], body: bytes) -> int:
        self.sent.append((path, headers, body))
        name = path.split("/")[3]
        self.parsed.append(self.channels[name].parse_notification(headers, body))
        return self.status

    def statuses(self) -> list[tuple[str, str]]:
        return [(n.reference, n.status) for n in self.parsed]
