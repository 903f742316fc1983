"""``sandbox_alipay`` and ``sandbox_wechat``: QR-code wallets. A charge answers
``requires_action`` with the QR content (a URL of the sandbox's hosted pay page); the
customer pays there or with ``clearhouse sandbox pay``; a code left unpaid expires and
fails. The outcome arrives as a notification signed exactly the way the real channel signs:

- Alipay: a form-encoded body, RSA2 (RSA-SHA256, PKCS#1 v1.5) over the sorted
  ``key=value`` pairs without ``sign`` and ``sign_type``; the reply body is ``success``.
- WeChat Pay API v3: a JSON body whose ``resource`` is AES-256-GCM encrypted under the
  API v3 key, and headers ``Wechatpay-Timestamp/Nonce/Signature/Serial``, the signature
  RSA-SHA256 over ``"<timestamp>\\n<nonce>\\n<body>\\n"``.

Each sandbox makes its RSA key pair (and Alipay's app id, WeChat's API v3 key and
certificate serial) in its own store on first use; the connector verifies with the
PUBLIC key it reads from there, which is what an operator would configure.
"""

from __future__ import annotations

import base64
import csv
import functools
import io
import json
import secrets
import string
import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from functools import cached_property
from urllib.parse import parse_qsl, urlencode

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from clearhouse.channels.connectors.sandbox import (
    DECLINE_MESSAGES,
    Decision,
    OutboxMessage,
    SandboxConnector,
    check_freshness,
    currency_field,
    free_text,
    iso_time,
    local_time,
    major_amount,
    major_units,
    minor_amount,
    read_json,
    sandbox,
    text_field,
    unix_seconds,
)
from clearhouse.channels.protocol import (
    APPROVED,
    DECLINED,
    EXTERNAL_ID_MAX,
    FAILED,
    PENDING,
    REFERENCE_MAX,
    REFUNDED,
    REQUIRES_ACTION,
    ChannelResult,
    ChargeRequest,
    Cost,
    Notification,
    NotificationInvalid,
    NotificationReply,
    StatementFile,
)
from clearhouse.kit import clock
from clearhouse.kit.money import Currency

CHINA_TIME = timezone(timedelta(hours=8), "Asia/Shanghai")
"""Both wallets stamp times, and cut statement days, in China Standard Time (no DST)."""
QR_TTL = timedelta(minutes=15)
"""How long a QR code can be paid before the payment fails."""


def _private_key_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _public_pem_of(private_pem: bytes) -> bytes:
    return _private_key(private_pem).public_key().public_bytes(serialization.Encoding.PEM,
                                                               serialization.PublicFormat.SubjectPublicKeyInfo)


@functools.lru_cache(maxsize=32)
def _private_key(private_pem: bytes) -> rsa.RSAPrivateKey:
    # Loading checks the key, which takes tens of milliseconds: once per key, not per message.
    key = serialization.load_pem_private_key(private_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@functools.lru_cache(maxsize=32)
def _public_key(public_pem: bytes) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(public_pem)
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def rsa_sign(private_pem: bytes, content: bytes) -> str:
    return base64.b64encode(_private_key(private_pem).sign(content, padding.PKCS1v15(), hashes.SHA256())).decode()


def rsa_verify(public_pem: bytes, content: bytes, signature: str) -> bool:
    key = _public_key(public_pem)
    try:
        key.verify(base64.b64decode(signature, validate=True), content, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


class QrSandbox(SandboxConnector):
    """What both wallets share: the QR code, its expiry, its pay page, the key pair."""

    cost: Cost
    statement_timezone = CHINA_TIME

    @cached_property
    def channel_private_key(self) -> bytes:
        """The CHANNEL's signing key: only the sandbox's own side (``wire``) uses it."""
        return self.store.key("channel_private_key", _private_key_pem)

    @cached_property
    def channel_public_key(self) -> bytes:
        """What the operator configures on our side to verify the channel's notifications."""
        return self.store.key("channel_public_key", lambda: _public_pem_of(self.channel_private_key))

    def pay_url(self, reference: str) -> str:
        return f"{self.settings.public_base_url.rstrip('/')}/sandbox/{self.name}/pay/{reference}"

    def decide(self, request: ChargeRequest, now: datetime) -> Decision:
        expires_at = now + QR_TTL
        return Decision(REQUIRES_ACTION, expires_at=expires_at,
                        next_action={"type": "qr_code", "qr_content": self.pay_url(request.reference),
                                     "expires_at": clock.rfc3339(expires_at)})

    def pay(self, reference: str) -> ChannelResult:
        """The customer scans the code and pays (hosted page or ``clearhouse sandbox pay``)."""
        return self.complete(reference, True)


def _china_time(at: datetime) -> str:
    return at.astimezone(CHINA_TIME).strftime("%Y-%m-%d %H:%M:%S")


def _from_stamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


# --------------------------------------------------------------------------- Alipay

ALIPAY_TRADE_STATUS = {PENDING: "WAIT_BUYER_PAY", APPROVED: "TRADE_SUCCESS", FAILED: "TRADE_CLOSED",
                       DECLINED: "TRADE_CLOSED"}
ALIPAY_STATUS_OF = {"WAIT_BUYER_PAY": PENDING, "TRADE_SUCCESS": APPROVED, "TRADE_FINISHED": APPROVED,
                    "TRADE_CLOSED": FAILED}
ALIPAY_REQUIRED = {"notify_time", "notify_type", "notify_id", "app_id", "charset", "version", "sign_type", "sign",
                   "trade_no", "out_trade_no", "trade_status", "total_amount"}
ALIPAY_OPTIONAL = {"subject", "seller_id", "buyer_id", "gmt_create", "gmt_payment", "gmt_close", "receipt_amount",
                   "buyer_pay_amount", "trans_currency"}
ALIPAY_AMOUNTS = {"receipt_amount", "buyer_pay_amount"}
ALIPAY_TIMES = {"gmt_create", "gmt_payment", "gmt_close"}
ALIPAY_IDS = {"seller_id", "buyer_id"}
ALIPAY_TIME = "%Y-%m-%d %H:%M:%S"
"""How Alipay writes a time: China time, to the second."""


def alipay_amount(minor: int, currency: str) -> str:
    """Alipay's amounts: major units with 2 decimals, or the currency's own exponent when it
    has more (``"1.234"`` KWD), so that no minor unit is lost."""
    return major_units(minor, currency, max(2, Currency.of(currency).exponent))


def alipay_sign_content(fields: Mapping[str, str]) -> bytes:
    """Alipay's signed string: every non-empty field but ``sign`` and ``sign_type``, sorted by
    key, as ``key=value`` joined by ``&``, UTF-8."""
    return "&".join(f"{key}={fields[key]}" for key in sorted(fields)
                    if key not in ("sign", "sign_type") and fields[key] != "").encode("utf-8")


@sandbox
class SandboxAlipay(QrSandbox):
    name = "sandbox_alipay"
    methods = ("alipay",)
    cost = Cost(rate=Decimal("0.0055"), returned_on_refund=True)
    settlement_delay_days = 1

    @cached_property
    def app_id(self) -> str:
        return self.store.key("app_id", lambda: ("2021" + "".join(secrets.choice(string.digits)
                                                                  for _ in range(12))).encode()).decode()

    def external_id(self, kind: str, now: datetime) -> str:
        # Alipay's trade_no: the date, then digits. A refund keeps the trade's number in
        # real life; the sandbox gives it its own so each line of the bill is distinct.
        return f"{now.astimezone(CHINA_TIME):%Y%m%d}{'22001' if kind == 'payment' else '23001'}" + \
            "".join(secrets.choice(string.digits) for _ in range(16))

    def notification_id(self, now: datetime) -> str:
        return secrets.token_hex(16)

    def wire(self, message: OutboxMessage, now: datetime) -> tuple[dict[str, str], bytes]:
        payload = message.payload
        currency = payload["currency"]
        fields = {
            "notify_time": _china_time(now), "notify_type": "trade_status_sync",
            "notify_id": message.notification_id, "app_id": self.app_id, "charset": "utf-8", "version": "1.0",
            "sign_type": "RSA2", "trade_no": payload["external_id"], "out_trade_no": message.reference,
            "trade_status": ALIPAY_TRADE_STATUS[message.status],
            "total_amount": alipay_amount(payload["amount"], currency),
            "subject": (payload["details"].get("description") or "Sandbox order")[:256],
            "seller_id": "2088000000000001", "gmt_create": _china_time(_from_stamp(payload["created_at"])),
        }
        if currency != "CNY":
            fields["trans_currency"] = currency
        if message.status == APPROVED:
            fields.update(gmt_payment=_china_time(_from_stamp(payload["updated_at"])),
                          receipt_amount=fields["total_amount"], buyer_pay_amount=fields["total_amount"],
                          buyer_id="2088102177846880")
        elif message.status in (FAILED, DECLINED):
            fields["gmt_close"] = _china_time(_from_stamp(payload["updated_at"]))
        fields["sign"] = rsa_sign(self.channel_private_key, alipay_sign_content(fields))
        return {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}, urlencode(fields).encode()

    def read_notification(self, headers: Mapping[str, str], body: bytes) -> Notification:
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True,
                              max_num_fields=2 * len(ALIPAY_REQUIRED | ALIPAY_OPTIONAL))
        except (UnicodeDecodeError, ValueError):
            raise NotificationInvalid("the notification is not a UTF-8 form") from None
        fields = dict(pairs)
        if len(fields) != len(pairs) or not set(fields) >= ALIPAY_REQUIRED \
                or not set(fields) <= ALIPAY_REQUIRED | ALIPAY_OPTIONAL:
            raise NotificationInvalid("the notification has missing, repeated or unknown fields")
        if fields["sign_type"] != "RSA2" or fields["app_id"] != self.app_id:
            raise NotificationInvalid("the notification is not signed RSA2 for this app")
        if not rsa_verify(self.channel_public_key, alipay_sign_content(fields), fields["sign"]):
            raise NotificationInvalid("the notification's signature does not match")
        if fields["notify_type"] != "trade_status_sync" or fields["charset"].lower() != "utf-8" \
                or fields["version"] != "1.0":
            raise NotificationInvalid("the notification is not a UTF-8 trade_status_sync of version 1.0")
        check_freshness(local_time(fields["notify_time"], "notify_time", ALIPAY_TIME, CHINA_TIME))
        status = ALIPAY_STATUS_OF.get(fields["trade_status"])
        if status is None:
            raise NotificationInvalid(f"unknown trade_status {fields['trade_status']!r}")
        currency = currency_field(fields.get("trans_currency", "CNY"), "trans_currency")
        amount = major_amount(fields["total_amount"], currency, "total_amount")
        for key in ALIPAY_AMOUNTS & set(fields):
            major_amount(fields[key], currency, key)
        times = {key: local_time(fields[key], key, ALIPAY_TIME, CHINA_TIME) for key in ALIPAY_TIMES & set(fields)}
        free_text(fields.get("subject", ""), "subject", 256)
        for key in ALIPAY_IDS & set(fields):
            text_field(fields[key], key, 64)
        closed = status == FAILED  # the sandbox closes a trade only when its QR code expired unpaid
        return Notification(
            notification_id=fields["notify_id"], kind="payment", reference=fields["out_trade_no"], status=status,
            external_id=text_field(fields["trade_no"], "trade_no", EXTERNAL_ID_MAX), amount=amount,
            currency=currency, decline_code="expired" if closed else None,
            message=DECLINE_MESSAGES["expired"] if closed else None,
            occurred_at=times.get("gmt_payment") or times.get("gmt_close") or times.get("gmt_create"),
            raw={key: value for key, value in fields.items() if key != "sign"})

    def notification_reply(self) -> NotificationReply:
        return NotificationReply(200, b"success", "text/plain")

    def statement(self, day: date) -> StatementFile:
        """Alipay's merchant bill: GBK, ``#`` header lines, one row per trade or refund,
        amounts in yuan with 2 decimals, a ``#`` footer with the totals."""
        lines = self.movements_of(day)
        buffer = io.StringIO()
        start = datetime(day.year, day.month, day.day)
        buffer.write("#支付宝业务明细查询\n")
        buffer.write(f"#账号：[{self.app_id}]\n")
        end = start + timedelta(days=1)
        buffer.write(f"#起始日期：[{start:%Y年%m月%d日} 00:00:00]   终止日期：[{end:%Y年%m月%d日} 00:00:00]\n")
        buffer.write("#-----------------------------------------业务明细列表----------------------------------------\n")
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["支付宝交易号", "商户订单号", "业务类型", "商品名称", "创建时间", "完成时间", "币种",
                         "订单金额（元）", "商家实收（元）", "退款批次号/请求号", "服务费（元）", "备注"])
        totals: dict[str, list[int]] = {}  # currency -> [trades, received, fees, refunds, refunded]
        for line in lines:
            currency = line["currency"]
            is_refund = line["type"] == "refund"
            total = totals.setdefault(currency, [0, 0, 0, 0, 0])
            if is_refund:
                total[3] += 1
                total[4] += line["amount"]
            else:
                total[0] += 1
                total[1] += line["amount"]
            total[2] += line["fee"]
            writer.writerow([
                line["payment_external_id"], line["payment_reference"], "退款" if is_refund else "交易",
                line["payment_details"].get("description") or "", f"{line['payment_created_at']:%Y-%m-%d %H:%M:%S}",
                f"{line['occurred_at']:%Y-%m-%d %H:%M:%S}", currency,
                major_units(line["payment_amount"], currency, 2), major_units(line["amount"], currency, 2),
                line["reference"] if is_refund else "", major_units(-line["fee"], currency, 2), "",
            ])
        buffer.write("#-----------------------------------------业务明细列表结束------------------------------------\n")
        # The totals per currency, each in its own units (yuan: 元; another currency: its code).
        for currency, (trades, received, fees, refunds, refunded) in sorted(totals.items()) or [("CNY", [0] * 5)]:
            unit, of = ("元", "") if currency == "CNY" else (f" {currency}", f"（{currency}）")
            buffer.write(f"#交易合计{of}：{trades}笔，商家实收共{major_units(received, currency, 2)}{unit}，"
                         f"服务费共{major_units(-fees, currency, 2)}{unit}\n")
            buffer.write(f"#退款合计{of}：{refunds}笔，退款共{major_units(refunded, currency, 2)}{unit}\n")
        buffer.write(f"#导出时间：[{clock.now().astimezone(CHINA_TIME):%Y年%m月%d日 %H:%M:%S}]\n")
        return StatementFile(self.name, day, f"{self.app_id}_{day:%Y%m%d}_业务明细.csv",
                             buffer.getvalue().encode("gbk", errors="replace"), "alipay_bill_v1")


# --------------------------------------------------------------------------- WeChat Pay

WECHAT_PAYMENT_EVENTS = {APPROVED: ("TRANSACTION.SUCCESS", "SUCCESS", "支付成功"),
                         PENDING: ("TRANSACTION.USERPAYING", "USERPAYING", "用户支付中"),
                         FAILED: ("TRANSACTION.CLOSED", "CLOSED", "已关闭"),
                         DECLINED: ("TRANSACTION.PAYERROR", "PAYERROR", "支付失败")}
WECHAT_STATUS_OF = {"SUCCESS": APPROVED, "USERPAYING": PENDING, "CLOSED": FAILED, "PAYERROR": FAILED}
WECHAT_EVENT_OF_STATE = {state: event_type for event_type, state, _ in WECHAT_PAYMENT_EVENTS.values()}
WECHAT_DECLINE_OF = {"CLOSED": "expired", "PAYERROR": "do_not_honor"}
"""The sandbox closes an order only when its QR code expired unpaid (``query`` says ``expired`` too)."""
WECHAT_REFUND_STATUS_OF = {"SUCCESS": REFUNDED, "ABNORMAL": FAILED, "CLOSED": FAILED}
WECHAT_REFUND_DECLINE_OF = {"ABNORMAL": "refund_abnormal", "CLOSED": "refund_closed"}
WECHAT_TRADE_TYPES = {"JSAPI", "NATIVE", "APP", "MICROPAY", "MWEB", "FACEPAY"}
WECHAT_PAYMENT_AMOUNT_FIELDS = {"total", "payer_total", "currency", "payer_currency"}
WECHAT_REFUND_AMOUNT_FIELDS = {"total", "refund", "payer_total", "payer_refund", "currency"}
WECHAT_TOP_FIELDS = {"id", "create_time", "resource_type", "event_type", "summary", "resource"}
WECHAT_RESOURCE_FIELDS = {"original_type", "algorithm", "ciphertext", "associated_data", "nonce"}
WECHAT_TRANSACTION_FIELDS = {"appid", "mchid", "out_trade_no", "transaction_id", "trade_type", "trade_state",
                             "trade_state_desc", "bank_type", "attach", "success_time", "payer", "amount"}
WECHAT_REFUND_FIELDS = {"mchid", "out_trade_no", "transaction_id", "out_refund_no", "refund_id", "refund_status",
                        "success_time", "user_received_account", "amount"}
WECHAT_BILL_HEADER = [
    "交易时间", "公众账号ID", "商户号", "特约商户号", "设备号", "微信订单号",
    "商户订单号", "用户标识", "交易类型", "交易状态", "付款银行", "货币种类",
    "应结订单金额", "代金券金额", "微信退款单号", "商户退款单号", "退款金额", "充值券退款金额",
    "退款类型", "退款状态", "商品名称", "商户数据包", "手续费", "费率",
    "订单金额", "申请退款金额", "费率备注",
]
WECHAT_BILL_SUMMARY = [
    "总交易单数", "应结订单总金额", "退款总金额", "充值券退款总金额", "手续费总金额", "订单总金额",
    "申请退款总金额",
]
WECHAT_HEADERS = ("Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Signature", "Wechatpay-Serial")


def wechat_message(timestamp: str, nonce: str, body: bytes) -> bytes:
    return timestamp.encode() + b"\n" + nonce.encode() + b"\n" + body + b"\n"


def _token(length: int) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


@sandbox
class SandboxWechat(QrSandbox):
    name = "sandbox_wechat"
    methods = ("wechat_pay",)
    cost = Cost(rate=Decimal("0.006"), returned_on_refund=True)
    settlement_delay_days = 1
    refund_status = PENDING  # WeChat answers PROCESSING; the outcome comes by notification

    @cached_property
    def api_v3_key(self) -> bytes:
        """The merchant's API v3 key (32 ASCII characters), set on both sides."""
        return self.store.key("api_v3_key", lambda: _token(32).encode())

    @cached_property
    def serial(self) -> str:
        """The serial number of the platform certificate that signs notifications."""
        return self.store.key("certificate_serial", lambda: secrets.token_hex(20).upper().encode()).decode()

    @cached_property
    def mchid(self) -> str:
        return self.store.key("mchid", lambda: ("19" + "".join(secrets.choice(string.digits)
                                                                for _ in range(8))).encode()).decode()

    @cached_property
    def appid(self) -> str:
        return self.store.key("appid", lambda: ("wx" + secrets.token_hex(8)).encode()).decode()

    def external_id(self, kind: str, now: datetime) -> str:
        prefix = "42000" if kind == "payment" else "50300"
        digits = "".join(secrets.choice(string.digits) for _ in range(15))
        return f"{prefix}{digits[:5]}{now.astimezone(CHINA_TIME):%Y%m%d}{digits[5:]}"

    def notification_id(self, now: datetime) -> str:
        return str(uuid.uuid4())

    def _resource(self, message: OutboxMessage) -> tuple[str, str, str, dict]:
        """(event type, summary, original type, plaintext resource)."""
        payload = message.payload
        amount = payload["amount"]
        if message.kind == "refund":
            return "REFUND.SUCCESS", "退款成功", "refund", {
                "mchid": self.mchid, "out_trade_no": payload["parent"],
                "transaction_id": payload["parent_external_id"], "out_refund_no": message.reference,
                "refund_id": payload["external_id"], "refund_status": "SUCCESS",
                "success_time": _rfc3339_china(payload["updated_at"]), "user_received_account": "支付用户零钱",
                "amount": {"total": payload["parent_amount"], "refund": amount, "payer_total": payload["parent_amount"],
                           "payer_refund": amount, "currency": payload["currency"]},
            }
        event_type, state, summary = WECHAT_PAYMENT_EVENTS[message.status]
        resource = {
            "appid": self.appid, "mchid": self.mchid, "out_trade_no": message.reference,
            "transaction_id": payload["external_id"], "trade_type": "NATIVE", "trade_state": state,
            "trade_state_desc": summary, "bank_type": "OTHERS", "attach": "",
            "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
            "amount": {"total": amount, "payer_total": amount, "currency": payload["currency"],
                       "payer_currency": payload["currency"]},
        }
        if message.status == APPROVED:
            resource["success_time"] = _rfc3339_china(payload["updated_at"])
        return event_type, summary, "transaction", resource

    def wire(self, message: OutboxMessage, now: datetime) -> tuple[dict[str, str], bytes]:
        event_type, summary, original_type, resource = self._resource(message)
        nonce = _token(12)
        ciphertext = AESGCM(self.api_v3_key).encrypt(nonce.encode(), json.dumps(resource, ensure_ascii=False).encode(),
                                                     original_type.encode())
        body = json.dumps({
            "id": message.notification_id, "create_time": now.astimezone(CHINA_TIME).isoformat(timespec="seconds"),
            "resource_type": "encrypt-resource", "event_type": event_type, "summary": summary,
            "resource": {"original_type": original_type, "algorithm": "AEAD_AES_256_GCM",
                         "ciphertext": base64.b64encode(ciphertext).decode(), "associated_data": original_type,
                         "nonce": nonce},
        }, ensure_ascii=False, separators=(",", ":")).encode()
        timestamp, header_nonce = str(int(now.timestamp())), _token(32)
        signature = rsa_sign(self.channel_private_key, wechat_message(timestamp, header_nonce, body))
        return {"Content-Type": "application/json", "Wechatpay-Timestamp": timestamp, "Wechatpay-Nonce": header_nonce,
                "Wechatpay-Signature": signature, "Wechatpay-Serial": self.serial,
                "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048"}, body

    def read_notification(self, headers: Mapping[str, str], body: bytes) -> Notification:
        timestamp, nonce, signature, serial = (headers.get(name.lower(), "") for name in WECHAT_HEADERS)
        seconds = unix_seconds(timestamp, "the Wechatpay-Timestamp header")
        if not (nonce and signature and serial):
            raise NotificationInvalid("the Wechatpay-* signature headers are missing or malformed")
        if serial != self.serial:
            raise NotificationInvalid("the notification is signed with an unknown platform certificate")
        if not rsa_verify(self.channel_public_key, wechat_message(timestamp, nonce, body), signature):
            raise NotificationInvalid("the notification's signature does not match")
        check_freshness(seconds)
        event = read_json(body)
        if not isinstance(event, dict) or set(event) != WECHAT_TOP_FIELDS or not isinstance(event["resource"], dict) \
                or set(event["resource"]) != WECHAT_RESOURCE_FIELDS:
            raise NotificationInvalid("the notification has missing or unknown fields")
        iso_time(event["create_time"], "create_time")
        free_text(event["summary"], "summary", 64)
        event_type = text_field(event["event_type"], "event_type")
        sealed = event["resource"]
        if event["resource_type"] != "encrypt-resource" or sealed["algorithm"] != "AEAD_AES_256_GCM":
            raise NotificationInvalid("the resource is not encrypted AEAD_AES_256_GCM")
        original_type = sealed["original_type"]
        if (original_type, event_type.partition(".")[0]) not in (("transaction", "TRANSACTION"), ("refund", "REFUND")):
            raise NotificationInvalid(f"a {event_type} notification does not carry a {original_type!r} resource")
        nonce = text_field(sealed["nonce"], "resource.nonce", 64)
        associated = free_text(sealed["associated_data"], "resource.associated_data", 64)
        ciphertext = free_text(sealed["ciphertext"], "resource.ciphertext", 1 << 20, empty=False)
        try:
            plaintext = AESGCM(self.api_v3_key).decrypt(nonce.encode(), base64.b64decode(ciphertext, validate=True),
                                                        associated.encode())
        except (InvalidTag, ValueError):
            raise NotificationInvalid("the resource does not decrypt under the API v3 key") from None
        resource = read_json(plaintext, "the resource")
        if not isinstance(resource, dict):
            raise NotificationInvalid("the resource is not a transaction or a refund")
        if original_type == "refund":
            return self._refund_notification(event, event_type, resource)
        return self._payment_notification(event, event_type, resource)

    def _payment_notification(self, event: dict, event_type: str, resource: dict) -> Notification:
        state = resource.get("trade_state")
        if not isinstance(state, str) or state not in WECHAT_STATUS_OF or event_type != WECHAT_EVENT_OF_STATE[state]:
            raise NotificationInvalid(f"trade_state {str(state)[:20]!r} is not one a {event_type} notification has")
        # success_time: when paid, and only then.
        required = WECHAT_TRANSACTION_FIELDS - ({"success_time"} if state != "SUCCESS" else set())
        if not required <= set(resource) <= WECHAT_TRANSACTION_FIELDS:
            raise NotificationInvalid("the transaction has missing or unknown fields")
        if resource["mchid"] != self.mchid or resource["appid"] != self.appid:
            raise NotificationInvalid("the transaction is another merchant's or another app's")
        if not isinstance(resource["trade_type"], str) or resource["trade_type"] not in WECHAT_TRADE_TYPES:
            raise NotificationInvalid(f"unknown trade_type {str(resource['trade_type'])[:20]!r}")
        description = free_text(resource["trade_state_desc"], "trade_state_desc", 256)
        free_text(resource["bank_type"], "bank_type", 32)
        free_text(resource["attach"], "attach", 128)
        payer, amount = resource["payer"], resource["amount"]
        if not isinstance(payer, dict) or set(payer) != {"openid"}:
            raise NotificationInvalid("payer is not {openid}")
        text_field(payer["openid"], "payer.openid")
        if not isinstance(amount, dict) or set(amount) != WECHAT_PAYMENT_AMOUNT_FIELDS:
            raise NotificationInvalid(f"amount is not {{{', '.join(sorted(WECHAT_PAYMENT_AMOUNT_FIELDS))}}}")
        minor_amount(amount["payer_total"], "amount.payer_total")
        currency_field(amount["payer_currency"], "amount.payer_currency")
        status = WECHAT_STATUS_OF[state]
        failed = status in (DECLINED, FAILED)
        return Notification(
            notification_id=event["id"], kind="payment", reference=resource["out_trade_no"], status=status,
            external_id=text_field(resource["transaction_id"], "transaction_id", EXTERNAL_ID_MAX),
            amount=minor_amount(amount["total"], "amount.total"), currency=currency_field(amount["currency"]),
            decline_code=WECHAT_DECLINE_OF.get(state), message=(description or None) if failed else None,
            occurred_at=iso_time(resource["success_time"], "success_time") if "success_time" in resource else None,
            raw={**event, "resource": resource})

    def _refund_notification(self, event: dict, event_type: str, resource: dict) -> Notification:
        state = resource.get("refund_status")
        if not isinstance(state, str) or state not in WECHAT_REFUND_STATUS_OF or event_type != f"REFUND.{state}":
            raise NotificationInvalid(f"refund_status {str(state)[:20]!r} is not one a {event_type} notification has")
        required = WECHAT_REFUND_FIELDS - ({"success_time"} if state != "SUCCESS" else set())
        if not required <= set(resource) <= WECHAT_REFUND_FIELDS:
            raise NotificationInvalid("the refund has missing or unknown fields")
        if resource["mchid"] != self.mchid:
            raise NotificationInvalid("the refund is another merchant's")
        text_field(resource["out_trade_no"], "out_trade_no", REFERENCE_MAX)
        text_field(resource["transaction_id"], "transaction_id", EXTERNAL_ID_MAX)
        free_text(resource["user_received_account"], "user_received_account", 64)
        amount = resource["amount"]
        if not isinstance(amount, dict) or set(amount) != WECHAT_REFUND_AMOUNT_FIELDS:
            raise NotificationInvalid(f"amount is not {{{', '.join(sorted(WECHAT_REFUND_AMOUNT_FIELDS))}}}")
        refunded, total = minor_amount(amount["refund"], "amount.refund"), minor_amount(amount["total"], "amount.total")
        minor_amount(amount["payer_total"], "amount.payer_total")
        minor_amount(amount["payer_refund"], "amount.payer_refund")
        if refunded > total:
            raise NotificationInvalid("amount.refund is more than amount.total")
        return Notification(
            notification_id=event["id"], kind="refund", reference=resource["out_refund_no"],
            status=WECHAT_REFUND_STATUS_OF[state],
            external_id=text_field(resource["refund_id"], "refund_id", EXTERNAL_ID_MAX), amount=refunded,
            currency=currency_field(amount["currency"]), decline_code=WECHAT_REFUND_DECLINE_OF.get(state),
            occurred_at=iso_time(resource["success_time"], "success_time") if "success_time" in resource else None,
            raw={**event, "resource": resource})

    def notification_reply(self) -> NotificationReply:
        # API v3: 200 or 204 with no body means received.
        return NotificationReply(204, b"", "text/plain")

    def statement(self, day: date) -> StatementFile:
        """WeChat Pay's trade bill: UTF-8 with a BOM, every data field prefixed with a
        backtick (so spreadsheets keep long ids as text), summary lines at the end."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(WECHAT_BILL_HEADER)
        totals: dict[str, list[int]] = {}  # currency -> [count, settled, refunded, fees, ordered]
        rate = f"{self.cost.rate * 100:.2f}%"

        for line in self.movements_of(day):
            currency = line["currency"]
            money = functools.partial(major_units, currency=currency, places=2)
            is_refund = line["type"] == "refund"
            total = totals.setdefault(currency, [0, 0, 0, 0, 0])
            total[0] += 1
            total[3] += line["fee"]
            if is_refund:
                total[2] += -line["amount"]
            else:
                total[1] += line["amount"]
                total[4] += line["payment_amount"]
            fields = [
                f"{line['occurred_at']:%Y-%m-%d %H:%M:%S}", self.appid, self.mchid, "0", "",
                line["payment_external_id"], line["payment_reference"], "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "NATIVE",
                "REFUND" if is_refund else "SUCCESS", "OTHERS", currency,
                money(0 if is_refund else line["amount"]), "0.00",
                line["external_id"] if is_refund else "0", line["reference"] if is_refund else "0",
                money(-line["amount"] if is_refund else 0), "0.00", "ORIGINAL" if is_refund else "",
                "SUCCESS" if is_refund else "", line["payment_details"].get("description") or "", "",
                money(line["fee"]), rate, money(line["payment_amount"]), money(-line["amount"] if is_refund else 0), "",
            ]
            writer.writerow(["`" + field for field in fields])
        writer.writerow(WECHAT_BILL_SUMMARY)
        # One summary row per currency, each in its own units (a day of one currency: one row, as WeChat writes).
        for currency, (count, settled, refunded, fees, ordered) in sorted(totals.items()) or [("CNY", [0] * 5)]:
            writer.writerow(["`" + major_units(minor, currency, 2) if n else "`" + str(minor)
                             for n, minor in enumerate((count, settled, refunded, 0, fees, ordered, refunded))])
        return StatementFile(self.name, day, f"{self.mchid}All{day:%Y-%m-%d}.csv",
                             b"\xef\xbb\xbf" + buffer.getvalue().encode("utf-8"), "wechat_bill_v1")


def _rfc3339_china(stamped: str) -> str:
    return _from_stamp(stamped).astimezone(CHINA_TIME).isoformat(timespec="seconds")
