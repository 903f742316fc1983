"""Each sandbox's daily statement, in its own layout, read back with the csv module the
way reconciliation will: card (plain CSV, major units), Alipay (GBK, ``#`` lines, footer),
WeChat Pay (BOM, backticks, summary), bank (semicolons, decimal commas).

Worked example used throughout: the customer pays 100.00, 30.00 of it is refunded."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta

import pytest
from typer.testing import CliRunner

from clearhouse.channels import commands
from clearhouse.channels.protocol import ChannelSet
from clearhouse.kit import clock
from clearhouse.kit.settings import get_settings
from tests.channels.sandbox_support import MONDAY, charge, sandbox_settings

DAY = MONDAY.date()


@pytest.fixture
def channels(tmp_path):
    return ChannelSet(sandbox_settings(tmp_path))


def sell_and_refund(connector, currency: str = "CNY", at: datetime = MONDAY) -> None:
    """100.00 paid, 30.00 refunded, an unpaid order beside it (it moves no money)."""
    with clock.frozen(at) as frozen:
        connector.authorize(charge("att_1", 10_000, currency, channel=connector.name))
        if hasattr(connector, "pay"):
            connector.pay("att_1")
            connector.authorize(charge("att_unpaid", 5_000, currency, channel=connector.name))
        frozen.tick(minutes=5)
        connector.refund("att_1", "re_1", 3_000, currency)
        connector.query("re_1")  # a refund that completes later is booked when it completes


class TestCard:
    def test_plain_csv_in_major_units_with_fee_and_net(self, channels):
        connector = channels["sandbox_card"]
        sell_and_refund(connector, "EUR")
        statement = connector.statement(DAY)
        assert (statement.filename, statement.layout) == ("sandbox_card_20261123.csv", "sandbox_card_v1")
        rows = list(csv.DictReader(io.StringIO(statement.content.decode("utf-8"))))
        assert [(r["type"], r["reference"], r["amount"], r["fee"], r["net"]) for r in rows] == [
            ("charge", "att_1", "100.00", "0.38", "99.62"),  # 0.38% of 100.00
            ("refund", "re_1", "-30.00", "0.00", "-30.00"),  # the acquirer keeps its fee
        ]
        assert rows[0]["last4"] == "4242" and rows[1]["payment_reference"] == "att_1"

    def test_a_manual_capture_is_booked_when_captured_for_the_captured_amount(self, channels):
        connector = channels["sandbox_card"]
        with clock.frozen(MONDAY) as frozen:
            connector.authorize(charge("att_1", 10_000, "JPY", capture=False))
            frozen.tick(days=1)
            connector.capture("att_1", 6_000, "JPY")
        assert len(connector.statement(DAY).content.decode().splitlines()) == 1  # the header only
        rows = list(csv.DictReader(io.StringIO(connector.statement(DAY + timedelta(days=1)).content.decode())))
        assert [(r["type"], r["amount"], r["fee"]) for r in rows] == [("capture", "6000", "23")]  # JPY: no decimals


class TestAlipay:
    def test_gbk_with_hash_lines_rows_in_yuan_and_a_footer(self, channels):
        connector = channels["sandbox_alipay"]
        sell_and_refund(connector)
        statement = connector.statement(DAY)
        assert statement.layout == "alipay_bill_v1" and statement.filename.endswith("_20261123_业务明细.csv")
        with pytest.raises(UnicodeDecodeError):
            statement.content.decode("utf-8")
        text = statement.content.decode("gbk")
        lines = text.splitlines()
        assert lines[0] == "#支付宝业务明细查询" and lines[-1].startswith("#导出时间：")
        header, *rows = list(csv.reader(line for line in lines if not line.startswith("#")))
        records = [dict(zip(header, row, strict=True)) for row in rows]
        assert [(r["业务类型"], r["商户订单号"], r["订单金额（元）"], r["商家实收（元）"], r["服务费（元）"],
                 r["退款批次号/请求号"]) for r in records] == [
            ("交易", "att_1", "100.00", "100.00", "-0.55", ""),
            ("退款", "att_1", "100.00", "-30.00", "0.17", "re_1"),  # 0.55% of 30.00 given back, half-up
        ]
        assert "#交易合计：1笔，商家实收共100.00元，服务费共-0.38元" in lines
        assert "#退款合计：1笔，退款共-30.00元" in lines

    def test_the_day_is_chinas_calendar_day(self, channels):
        connector = channels["sandbox_alipay"]
        # 17:00 UTC on the 23rd is 01:00 on the 24th in China.
        sell_and_refund(connector, at=datetime(2026, 11, 23, 17, 0, tzinfo=UTC))
        assert "att_1" not in connector.statement(date(2026, 11, 23)).content.decode("gbk")
        assert "att_1" in connector.statement(date(2026, 11, 24)).content.decode("gbk")


class TestWechat:
    def test_bom_backticked_fields_and_summary_lines(self, channels):
        connector = channels["sandbox_wechat"]
        sell_and_refund(connector)
        statement = connector.statement(DAY)
        assert statement.layout == "wechat_bill_v1" and statement.content.startswith(b"\xef\xbb\xbf")
        rows = list(csv.reader(io.StringIO(statement.content.decode("utf-8-sig"))))
        header, payment, refund, summary_header, summary = rows
        assert header[0] == "交易时间" and summary_header[0] == "总交易单数"
        assert all(field.startswith("`") for field in payment + refund + summary)
        record = {name: value.removeprefix("`") for name, value in zip(header, payment, strict=True)}
        assert (record["商户订单号"], record["交易状态"], record["应结订单金额"], record["手续费"], record["费率"]) == (
            "att_1", "SUCCESS", "100.00", "0.60", "0.60%")
        record = {name: value.removeprefix("`") for name, value in zip(header, refund, strict=True)}
        assert (record["商户退款单号"], record["交易状态"], record["退款金额"], record["手续费"]) == (
            "re_1", "REFUND", "30.00", "-0.18")
        totals = dict(zip(summary_header, (value.removeprefix("`") for value in summary), strict=True))
        assert totals == {"总交易单数": "2", "应结订单总金额": "100.00", "退款总金额": "30.00",
                          "充值券退款总金额": "0.00", "手续费总金额": "0.42", "订单总金额": "100.00",
                          "申请退款总金额": "30.00"}


class TestBank:
    def test_semicolons_decimal_commas_and_totals_per_currency(self, channels):
        connector = channels["sandbox_bank"]
        sell_and_refund(connector, "EUR")
        statement = connector.statement(DAY)
        assert statement.layout == "sandbox_bank_v1"
        rows = list(csv.reader(io.StringIO(statement.content.decode("utf-8")), delimiter=";"))
        assert rows[0] == ["Account", "DE89370400440532013000"] and rows[1] == ["Statement date", "23.11.2026"]
        header = rows[3]
        lines = [dict(zip(header, row, strict=True)) for row in rows[4:6]]
        assert [(r["Booking date"], r["Value date"], r["Type"], r["End-to-end ID"], r["Amount"], r["Charges"])
                for r in lines] == [
            ("23.11.2026", "24.11.2026", "CRDT", "att_1", "100,00", "0,50"),  # a fixed 0.50 per transfer
            ("23.11.2026", "24.11.2026", "DBIT", "re_1", "-30,00", "0,00"),
        ]
        assert rows[-2] == ["Currency", "Credits", "Debits", "Charges", "Net"]
        assert rows[-1] == ["EUR", "100,00", "-30,00", "0,50", "69,50"]


class TestCommand:
    def test_sandbox_statement_writes_the_file(self, tmp_path, monkeypatch):
        settings = sandbox_settings(tmp_path)
        sell_and_refund(ChannelSet(settings)["sandbox_wechat"])
        monkeypatch.setenv("CLEARHOUSE_SANDBOX_DIR", str(settings.sandbox_dir))
        get_settings.cache_clear()
        try:
            out = tmp_path / "bill.csv"
            result = CliRunner().invoke(commands.app, ["statement", "--channel", "sandbox_wechat",
                                                       "--date", "2026-11-23", "--out", str(out)])
            assert result.exit_code == 0, result.output
            assert out.read_bytes().startswith(b"\xef\xbb\xbf") and "`att_1" in out.read_text("utf-8-sig")
            refused = CliRunner().invoke(commands.app, ["statement", "--channel", "sandbox_wechat",
                                                        "--date", "23/11/2026"])
            assert refused.exit_code == 2
        finally:
            get_settings.cache_clear()
