"""The sandbox channels' own statement files, as their connectors really write them, read through the
built-in mappings and checked against what was paid, to the cent.

The sandboxes are another system with their own store (no database of ours is involved). The day:
payments of 100.00 and 45.67 and a refund of 30.00 on the first, an unpaid order that moves no money."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from clearhouse.channels.protocol import ChannelSet
from clearhouse.kit import clock
from clearhouse.kit.money import rate_of
from clearhouse.reconciliation.errors import StatementInvalid
from clearhouse.reconciliation.formats import parse_statement
from clearhouse.reconciliation.formats.mappings import ALIPAY_BILL_V1, CLEARHOUSE_V1
from tests.channels.sandbox_support import MONDAY, charge, sandbox_settings

DAY = MONDAY.date()


@pytest.fixture
def channels(tmp_path):
    return ChannelSet(sandbox_settings(tmp_path))


def trade(connector, currency: str, at: datetime = MONDAY) -> None:
    with clock.frozen(at) as frozen:
        for reference, amount in (("att_1", 10_000), ("att_2", 4_567)):
            connector.authorize(charge(reference, amount, currency, channel=connector.name))
            if hasattr(connector, "pay"):
                connector.pay(reference)
            frozen.tick(minutes=1)
        if hasattr(connector, "pay"):
            connector.authorize(charge("att_unpaid", 5_000, currency, channel=connector.name))
        frozen.tick(minutes=5)
        connector.refund("att_1", "re_1", 3_000, currency)
        connector.query("re_1")


def saved(tmp_path: Path, statement) -> Path:
    path = tmp_path / statement.filename
    path.write_bytes(statement.content)
    return path


# Fees the channel keeps: card 0.38%, Alipay 0.55%, WeChat Pay 0.60% (both give back their share of a
# refund, half-up), the card acquirer keeps its fee on a refund.
EXPECTED = {
    "sandbox_card": ("EUR", [("att_1", "payment", 10_000, 38), ("att_2", "payment", 4_567, 17),
                             ("re_1", "refund", -3_000, 0)]),
    "sandbox_alipay": ("CNY", [("att_1", "payment", 10_000, 55), ("att_2", "payment", 4_567, 25),
                               ("re_1", "refund", -3_000, -17)]),
    "sandbox_wechat": ("CNY", [("att_1", "payment", 10_000, 60), ("att_2", "payment", 4_567, 27),
                               ("re_1", "refund", -3_000, -18)]),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_channel_bill_reads_back_what_was_paid_to_the_cent(channels, tmp_path, name):
    connector = channels[name]
    currency, expected = EXPECTED[name]
    trade(connector, currency)
    for our_ref, _kind, amount, fee in expected:  # the table above is the channel's own price list
        refund = amount < 0
        assert fee == (-rate_of(-amount, connector.cost.rate) if refund and name != "sandbox_card"
                       else 0 if refund else rate_of(amount, connector.cost.rate, connector.cost.fixed)), our_ref
    statement = connector.statement(DAY)
    parsed = parse_statement(saved(tmp_path, statement), "csv", channel=name)
    lines = parsed.lines
    assert lines.select("our_ref", "kind", "amount", "fee").rows() == expected
    assert set(lines["currency"]) == {currency} and set(lines["booked_on"]) == {DAY}
    assert set(lines["status"]) == {"succeeded"} and lines["channel_ref"].null_count() == 0
    assert parsed.meta.format == statement.layout and parsed.meta.currency == currency
    # line numbers point into the file as written
    text = statement.content.decode("gbk" if name == "sandbox_alipay" else "utf-8-sig").splitlines()
    for line_no, our_ref in lines.select("line_no", "our_ref").rows():
        assert our_ref in text[line_no - 1]


@pytest.mark.parametrize("name", ["sandbox_alipay", "sandbox_wechat"])
@pytest.mark.parametrize("currency", ["KWD", "JPY"])
def test_a_qr_bill_keeps_every_digit_of_a_currency_with_more_or_fewer_decimals(channels, tmp_path, name,
                                                                                currency):
    """The QR wallets' bills write yuan with two decimals; a 3-decimal currency still needs its third."""
    connector = channels[name]
    trade(connector, currency)
    lines = parse_statement(saved(tmp_path, connector.statement(DAY)), "csv", channel=name).lines
    amounts = dict(zip(lines["our_ref"], lines["amount"], strict=True))
    assert amounts == {"att_1": 10_000, "att_2": 4_567, "re_1": -3_000}
    assert set(lines["currency"]) == {currency}


def test_channel_refs_are_the_channels_own_ids(channels, tmp_path):
    connector = channels["sandbox_wechat"]
    trade(connector, "CNY")
    lines = parse_statement(saved(tmp_path, connector.statement(DAY)), "csv", channel="sandbox_wechat").lines
    refs = dict(zip(lines["our_ref"], lines["channel_ref"], strict=True))
    assert refs["att_1"] == connector.query("att_1").external_id
    assert refs["re_1"] == connector.query("re_1").external_id
    assert refs["re_1"] != refs["att_1"]


def test_the_bank_statement_with_its_preamble_value_dates_and_totals(channels, tmp_path):
    connector = channels["sandbox_bank"]
    friday = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    trade(connector, "EUR", at=friday)
    statement = connector.statement(friday.date())
    parsed = parse_statement(saved(tmp_path, statement), "csv", channel="sandbox_bank")
    rows = parsed.lines.select("our_ref", "kind", "amount", "fee", "booked_on", "value_on").rows()
    monday = date(2026, 11, 30)  # the value date is the next business day
    assert rows == [("att_1", "payment", 10_000, 50, friday.date(), monday),
                    ("att_2", "payment", 4_567, 50, friday.date(), monday),
                    ("re_1", "refund", -3_000, 0, friday.date(), monday)]  # no charge on a return
    assert parsed.meta.account is not None and parsed.meta.account.startswith("DE")
    assert parsed.lines["line_no"].to_list() == [5, 6, 7]  # Account, Statement date, blank, header
    assert parsed.lines["description"].null_count() == 0


def test_alipay_days_are_china_time(channels, tmp_path):
    """17:00 UTC on Monday is 01:00 on Tuesday in China: it is on Tuesday's bill and booked Tuesday."""
    connector = channels["sandbox_alipay"]
    trade(connector, "CNY", at=MONDAY.replace(hour=17))
    statement = connector.statement(DAY + timedelta(days=1))
    lines = parse_statement(saved(tmp_path, statement), "csv", channel="sandbox_alipay").lines
    assert set(lines["booked_on"]) == {DAY + timedelta(days=1)} and lines.height == 3


def test_an_empty_day_is_an_empty_statement_for_every_layout(channels, tmp_path):
    for name in ("sandbox_card", "sandbox_alipay", "sandbox_wechat", "sandbox_bank"):
        parsed = parse_statement(saved(tmp_path, channels[name].statement(DAY)), "csv", channel=name)
        assert parsed.lines.height == 0, name


class TestWrongEncoding:
    def test_the_gbk_bill_declared_utf8(self, channels, tmp_path):
        connector = channels["sandbox_alipay"]
        trade(connector, "CNY")
        path = saved(tmp_path, connector.statement(DAY))
        declared_utf8 = ALIPAY_BILL_V1.model_copy(update={"encoding": "utf-8"})
        with pytest.raises(StatementInvalid) as caught:
            parse_statement(path, "csv", mapping=declared_utf8)
        assert caught.value.line == 1 and "utf-8" in caught.value.detail  # the GBK title line

    def test_a_utf8_bill_declared_gbk(self, channels, tmp_path):
        connector = channels["sandbox_alipay"]
        trade(connector, "CNY")
        path = saved(tmp_path, connector.statement(DAY))
        path.write_bytes(path.read_bytes().decode("gbk").encode("utf-8"))
        with pytest.raises(StatementInvalid) as caught:
            parse_statement(path, "csv", channel="sandbox_alipay")
        assert caught.value.line == 1 and "UTF-8, not gbk" in caught.value.detail

    def test_invalid_bytes_in_a_gbk_bill_name_their_line(self, channels, tmp_path):
        connector = channels["sandbox_alipay"]
        trade(connector, "CNY")
        path = saved(tmp_path, connector.statement(DAY))
        lines = path.read_bytes().split(b"\n")
        lines[6] = lines[6] + b"\x80"  # a lone lead byte: not GBK
        path.write_bytes(b"\n".join(lines))
        with pytest.raises(StatementInvalid) as caught:
            parse_statement(path, "csv", channel="sandbox_alipay")
        assert caught.value.line == 7

    def test_a_bill_read_through_the_wrong_layout(self, channels, tmp_path):
        connector = channels["sandbox_card"]
        trade(connector, "EUR")
        with pytest.raises(StatementInvalid) as caught:
            parse_statement(saved(tmp_path, connector.statement(DAY)), "csv", mapping=CLEARHOUSE_V1)
        assert caught.value.line == 1 and "our_ref" in caught.value.detail


def test_a_tampered_wechat_amount_names_its_line(channels, tmp_path):
    connector = channels["sandbox_wechat"]
    trade(connector, "CNY")
    path = saved(tmp_path, connector.statement(DAY))
    text = path.read_bytes().decode("utf-8-sig")
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("`100.00", "`100.005", 1).encode())
    with pytest.raises(StatementInvalid) as caught:
        parse_statement(path, "csv", channel="sandbox_wechat")
    assert caught.value.line == 2 and "amount" in caught.value.detail
