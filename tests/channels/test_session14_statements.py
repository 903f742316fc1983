"""Session 14: the QR wallets' statement totals are per currency, each in its own units (they added minor
units of CNY, JPY and KWD together and printed the sum with one currency's decimals)."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import polars as pl
import pytest

from clearhouse.kit import clock
from tests.payments.support import CUSTOMER_METHODS, deliver_notifications

PAYMENTS = {"CNY": 10_000, "JPY": 1_234, "KWD": 12_345}  # 100.00 CNY, 1234 JPY, 12.345 KWD


@pytest.fixture
def day_of_three_currencies(app, anonymous_client, merchant_client_factory):
    shop, _ = merchant_client_factory("Three currency shop")

    def paid(channel: str) -> None:  # at noon in China, far from either day's end
        for currency, amount in PAYMENTS.items():
            created = shop.post("/v1/payments", json={"amount": amount, "currency": currency,
                                                      "method": CUSTOMER_METHODS[channel]})
            assert created.status_code == 201, created.text
            app.state.channels[channel].pay(created.json()["attempts"][0]["id"])
        deliver_notifications(app, anonymous_client)

    return paid


NOON_IN_CHINA = datetime(2026, 11, 24, 4, 0, tzinfo=UTC)


def _today_in_china() -> date:
    return clock.now().astimezone(ZoneInfo("Asia/Shanghai")).date()


def test_alipays_footer_has_a_total_per_currency(app, day_of_three_currencies):
    with clock.frozen(NOON_IN_CHINA):
        day_of_three_currencies("sandbox_alipay")
        statement = app.state.channels["sandbox_alipay"].statement(_today_in_china())
    footer = [line for line in statement.content.decode("gbk").splitlines() if line.startswith("#交易合计")]
    assert len(footer) == 3
    assert footer[0].startswith("#交易合计：1笔，商家实收共100.00元，")
    assert footer[1].startswith("#交易合计（JPY）：1笔，商家实收共1234.00 JPY，")
    assert footer[2].startswith("#交易合计（KWD）：1笔，商家实收共12.345 KWD，")


def test_wechats_summary_has_a_row_per_currency(app, day_of_three_currencies):
    with clock.frozen(NOON_IN_CHINA):
        day_of_three_currencies("sandbox_wechat")
        statement = app.state.channels["sandbox_wechat"].statement(_today_in_china())
    rows = statement.content.decode("utf-8-sig").splitlines()
    summary = rows[rows.index(next(r for r in rows if r.startswith("总交易单数"))) + 1:]
    frame = pl.read_csv(io.StringIO("\n".join(summary)), has_header=False, infer_schema=False)
    assert [(r[0], r[1]) for r in frame.iter_rows()] == [("`1", "`100.00"), ("`1", "`1234.00"), ("`1", "`12.345")]
