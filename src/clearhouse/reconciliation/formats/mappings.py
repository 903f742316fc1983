"""The built-in CSV mappings: our own generic layout and one per sandbox channel's bill.

The sandbox layouts are documented in docs/channels.md ("Statements"); ``our_ref`` is always the
reference we sent the channel (the attempt reference for a payment, the refund id for a refund) and
``channel_ref`` the channel's own id, so pass 1 of matching can join on either.
"""

from __future__ import annotations

from clearhouse.reconciliation.formats.csvmap import CsvMapping

CLEARHOUSE_V1 = CsvMapping(
    name="clearhouse_v1",
    columns={name: name for name in ("our_ref", "channel_ref", "kind", "status", "amount", "fee", "currency",
                                     "booked_on", "value_on", "description")},
    amount_unit="minor",
    date_format="%Y-%m-%d",
    kind_default=None,  # our own layout says what each line is: an unknown kind is an error
    status_default="succeeded",
)
"""Our documented generic layout: header
``our_ref,channel_ref,kind,status,amount,fee,currency,booked_on,value_on,description``, UTF-8,
amounts and fees signed integer minor units, ISO dates; an empty status means succeeded."""

SANDBOX_CARD_V1 = CsvMapping(
    name="sandbox_card_v1",
    columns={"booked_on": "date", "booked_time": "time", "kind": "type", "our_ref": "reference",
             "channel_ref": "external_id", "currency": "currency", "amount": "amount", "fee": "fee"},
    amount_unit="major",
    kind_map={"charge": "payment", "capture": "payment", "refund": "refund"},
    kind_default=None,
    timezone="UTC",
    calendar="UTC",
)

ALIPAY_BILL_V1 = CsvMapping(
    name="alipay_bill_v1",
    encoding="gbk",
    comment_prefix="#",
    columns={"channel_ref": "支付宝交易号", "our_ref": ["退款批次号/请求号", "商户订单号"], "kind": "业务类型",
             "description": "商品名称", "booked_on": "完成时间", "currency": "币种", "amount": "商家实收（元）",
             "fee": "服务费（元）"},
    date_format="%Y-%m-%d %H:%M:%S",
    amount_unit="major",
    fee_sign="negative",  # 服务费 is written negative when charged, positive when given back on a refund
    kind_map={"交易": "payment", "退款": "refund"},
    kind_default=None,
    timezone="Asia/Shanghai",
    calendar="Asia/Shanghai",
)

WECHAT_BILL_V1 = CsvMapping(
    name="wechat_bill_v1",
    encoding="utf-8-sig",
    strip_prefix="`",
    footer_markers=("总交易单数",),
    columns={"booked_on": "交易时间", "channel_ref": ["微信退款单号", "微信订单号"],
             "our_ref": ["商户退款单号", "商户订单号"], "kind": "交易状态", "currency": "货币种类",
             "credit": "应结订单金额", "debit": "退款金额", "fee": "手续费", "description": "商品名称"},
    null_values=("", "0"),  # a payment row writes 0 for the refund ids
    date_format="%Y-%m-%d %H:%M:%S",
    amount_unit="major",
    sign="split",
    kind_map={"SUCCESS": "payment", "REFUND": "refund"},
    kind_default=None,
    timezone="Asia/Shanghai",
    calendar="Asia/Shanghai",
)

SANDBOX_BANK_V1 = CsvMapping(
    name="sandbox_bank_v1",
    delimiter=";",
    skip_lines=3,  # Account;<IBAN>, Statement date;<date>, an empty line
    account_label="Account",
    footer_markers=("Currency",),
    columns={"booked_on": "Booking date", "value_on": "Value date", "kind": "Type", "our_ref": "End-to-end ID",
             "channel_ref": "Bank reference", "description": "Remittance information", "amount": "Amount",
             "currency": "Currency", "fee": "Charges"},
    date_format="%d.%m.%Y",
    amount_unit="major",
    decimal_separator=",",
    kind_map={"CRDT": "payment", "DBIT": "refund"},
    kind_default=None,
    timezone="UTC",
    calendar="UTC",
)

MAPPINGS: dict[str, CsvMapping] = {m.name: m for m in (CLEARHOUSE_V1, SANDBOX_CARD_V1, ALIPAY_BILL_V1, WECHAT_BILL_V1,
                                                        SANDBOX_BANK_V1)}

CHANNEL_MAPPINGS = {"sandbox_card": "sandbox_card_v1", "sandbox_alipay": "alipay_bill_v1",
                    "sandbox_wechat": "wechat_bill_v1", "sandbox_bank": "sandbox_bank_v1"}
"""The default mapping of a channel's CSV; any other channel: ``clearhouse_v1``."""


def default_mapping(channel: str | None) -> str:
    return CHANNEL_MAPPINGS.get(channel or "", "clearhouse_v1")
