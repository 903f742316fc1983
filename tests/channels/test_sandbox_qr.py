"""sandbox_alipay and sandbox_wechat: the QR code, paying it, its expiry, refunds, and the
notifications signed the way the real channels sign them (RSA2 forms, WeChat Pay API v3),
verified with the public key and refused on any tampering."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from urllib.parse import parse_qsl, urlencode

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from clearhouse.channels.connectors.sandbox import OutboxMessage
from clearhouse.channels.connectors.sandbox_qr import (
    SandboxAlipay,
    SandboxWechat,
    alipay_sign_content,
    rsa_sign,
    wechat_message,
)
from clearhouse.channels.protocol import (
    APPROVED,
    FAILED,
    NOT_FOUND,
    PENDING,
    REFUNDED,
    REQUIRES_ACTION,
    ChannelSet,
    NotificationInvalid,
)
from clearhouse.kit import clock
from tests.channels import notification_wire as wire
from tests.channels.sandbox_support import MONDAY, Recorder, charge, sandbox_settings

QR_CHANNELS = ["sandbox_alipay", "sandbox_wechat"]


@pytest.fixture
def channels(tmp_path):
    return ChannelSet(sandbox_settings(tmp_path))


def other_private_key() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def paid_notification(connector, reference: str = "att_1", amount: int = 12_345) -> tuple[dict[str, str], bytes]:
    """The signed notification the channel sends once ``reference`` is paid."""
    connector.authorize(charge(reference, amount, channel=connector.name))
    connector.pay(reference)
    return wire.sent(connector)


class TestQrCode:
    @pytest.mark.parametrize("name", QR_CHANNELS)
    def test_a_charge_answers_with_the_qr_content_and_its_expiry(self, channels, name):
        with clock.frozen(MONDAY):
            result = channels[name].authorize(charge("att_1", channel=name))
        assert result.status == REQUIRES_ACTION
        assert result.next_action == {"type": "qr_code", "qr_content": f"http://testserver/sandbox/{name}/pay/att_1",
                                      "expires_at": clock.rfc3339(MONDAY + timedelta(minutes=15))}

    @pytest.mark.parametrize("name", QR_CHANNELS)
    def test_paying_approves_and_notifies(self, channels, name):
        connector = channels[name]
        connector.authorize(charge("att_1", 12_345, channel=name))
        assert connector.query("att_1").status == REQUIRES_ACTION
        assert connector.pay("att_1").status == APPROVED
        assert connector.pay("att_1").status == APPROVED  # paying twice charges once
        assert connector.query("att_1").captured_amount == 12_345
        recorder = Recorder(channels)
        assert connector.deliver_due(recorder) == 1
        notification = recorder.parsed[0]
        assert (notification.kind, notification.reference, notification.status, notification.amount,
                notification.currency) == ("payment", "att_1", APPROVED, 12_345, "CNY")
        assert notification.external_id == connector.query("att_1").external_id

    @pytest.mark.parametrize("name", QR_CHANNELS)
    def test_an_unpaid_code_expires_into_a_failure_that_is_notified(self, channels, name):
        connector = channels[name]
        with clock.frozen(MONDAY) as frozen:
            connector.authorize(charge("att_1", channel=name))
            frozen.tick(minutes=15, seconds=1)
            recorder = Recorder(channels)
            connector.deliver_due(recorder)  # the channel's own sweep finds it expired
            assert recorder.statuses() == [("att_1", FAILED)]
            assert connector.query("att_1").status == FAILED
            assert connector.pay("att_1").status == FAILED  # too late to pay

    @pytest.mark.parametrize("name", QR_CHANNELS)
    def test_cancel_closes_an_unpaid_code(self, channels, name):
        connector = channels[name]
        connector.authorize(charge("att_1", channel=name))
        assert connector.cancel("att_1").status == "canceled"
        assert connector.pay("att_1").status == "canceled"

    def test_manual_capture_is_not_offered(self, channels):
        from clearhouse.channels.protocol import ChannelError

        with pytest.raises(ChannelError):
            channels["sandbox_alipay"].authorize(charge("att_1", channel="sandbox_alipay", capture=False))
        assert channels["sandbox_alipay"].query("att_1").status == NOT_FOUND


class TestRefund:
    def test_alipay_refunds_at_once(self, channels):
        connector = channels["sandbox_alipay"]
        connector.authorize(charge("att_1", 10_000, channel="sandbox_alipay"))
        connector.pay("att_1")
        assert connector.refund("att_1", "re_1", 4_000, "CNY").status == REFUNDED
        assert connector.refund("att_1", "re_2", 6_001, "CNY").decline_code == "refund_exceeds_captured"

    def test_wechat_refunds_are_processing_until_the_notification(self, channels):
        connector = channels["sandbox_wechat"]
        connector.authorize(charge("att_1", 10_000, channel="sandbox_wechat"))
        connector.pay("att_1")
        connector.deliver_due(Recorder(channels))
        assert connector.refund("att_1", "re_1", 4_000, "CNY").status == PENDING
        recorder = Recorder(channels)
        connector.deliver_due(recorder)
        refund = recorder.parsed[0]
        assert (refund.kind, refund.reference, refund.status, refund.amount) == ("refund", "re_1", REFUNDED, 4_000)
        assert connector.query("re_1").status == REFUNDED
        # a pending refund counts: nothing more than the capture can be promised
        assert connector.refund("att_1", "re_2", 6_001, "CNY").decline_code == "refund_exceeds_captured"


class TestAlipaySignature:
    def test_the_signed_string_sorts_and_leaves_out_sign_sign_type_and_empty_values(self):
        assert alipay_sign_content({"b": "2", "a": "1", "sign": "x", "sign_type": "RSA2", "c": ""}) == b"a=1&b=2"

    def test_it_is_a_form_signed_rsa2_and_the_reply_is_success(self, channels):
        connector = channels["sandbox_alipay"]
        headers, body = paid_notification(connector)
        fields = dict(parse_qsl(body.decode()))
        assert headers["Content-Type"].startswith("application/x-www-form-urlencoded")
        assert (fields["sign_type"], fields["trade_status"], fields["total_amount"], fields["out_trade_no"]) == (
            "RSA2", "TRADE_SUCCESS", "123.45", "att_1")
        assert connector.notification_reply().body == b"success"

    def test_the_connector_verifies_with_the_public_key_from_the_store(self, tmp_path):
        settings = sandbox_settings(tmp_path)
        channel_side = SandboxAlipay(settings)
        headers, body = paid_notification(channel_side)
        ours = SandboxAlipay(settings)  # another process, reading the same store
        assert ours.channel_public_key.startswith(b"-----BEGIN PUBLIC KEY-----")
        assert ours.parse_notification(headers, body).status == APPROVED

    def test_a_flipped_byte_is_refused(self, channels):
        connector = channels["sandbox_alipay"]
        headers, body = paid_notification(connector)
        tampered = body.replace(b"total_amount=123.45", b"total_amount=923.45")
        assert tampered != body
        with pytest.raises(NotificationInvalid, match="signature"):
            connector.parse_notification(headers, tampered)

    def test_a_signature_by_another_key_is_refused(self, channels):
        connector = channels["sandbox_alipay"]
        headers, body = paid_notification(connector)
        fields = dict(parse_qsl(body.decode()))
        fields["sign"] = rsa_sign(other_private_key(), alipay_sign_content(fields))
        with pytest.raises(NotificationInvalid, match="signature"):
            connector.parse_notification(headers, urlencode(fields).encode())

    def test_a_stale_notification_is_refused(self, channels):
        connector = channels["sandbox_alipay"]
        with clock.frozen(MONDAY) as frozen:
            headers, body = paid_notification(connector)
            frozen.tick(minutes=5, seconds=1)
            with pytest.raises(NotificationInvalid, match="5 minutes"):
                connector.parse_notification(headers, body)

    def test_unknown_or_repeated_fields_are_refused_even_when_properly_signed(self, channels):
        connector = channels["sandbox_alipay"]
        headers, body = paid_notification(connector)
        fields = dict(parse_qsl(body.decode()))
        fields["refund_to"] = "attacker"
        fields["sign"] = rsa_sign(connector.channel_private_key, alipay_sign_content(fields))
        with pytest.raises(NotificationInvalid, match="unknown"):
            connector.parse_notification(headers, urlencode(fields).encode())
        with pytest.raises(NotificationInvalid, match="repeated"):
            connector.parse_notification(headers, body + b"&trade_status=TRADE_SUCCESS")


class TestWechatSignature:
    def test_it_is_api_v3_json_with_an_encrypted_resource(self, channels):
        connector = channels["sandbox_wechat"]
        headers, body = paid_notification(connector)
        event = json.loads(body)
        assert event["event_type"] == "TRANSACTION.SUCCESS" and event["resource"]["algorithm"] == "AEAD_AES_256_GCM"
        assert b"att_1" not in body  # the order is inside the ciphertext
        sealed = event["resource"]
        resource = json.loads(AESGCM(connector.api_v3_key).decrypt(
            sealed["nonce"].encode(), base64.b64decode(sealed["ciphertext"]), sealed["associated_data"].encode()))
        assert (resource["out_trade_no"], resource["trade_state"], resource["amount"]["total"]) == (
            "att_1", "SUCCESS", 12_345)
        assert headers["Wechatpay-Serial"] == connector.serial
        assert connector.notification_reply().status_code == 204

    def test_a_flipped_byte_is_refused(self, channels):
        connector = channels["sandbox_wechat"]
        headers, body = paid_notification(connector)
        flipped = bytearray(body)
        flipped[len(flipped) // 2] ^= 0x01
        with pytest.raises(NotificationInvalid, match="signature"):
            connector.parse_notification(headers, bytes(flipped))

    def test_a_signature_by_another_key_is_refused(self, channels):
        connector = channels["sandbox_wechat"]
        headers, body = paid_notification(connector)
        forged = rsa_sign(other_private_key(), wechat_message(headers["Wechatpay-Timestamp"],
                                                              headers["Wechatpay-Nonce"], body))
        with pytest.raises(NotificationInvalid, match="signature"):
            connector.parse_notification({**headers, "Wechatpay-Signature": forged}, body)

    def test_an_unknown_certificate_serial_is_refused(self, channels):
        connector = channels["sandbox_wechat"]
        headers, body = paid_notification(connector)
        with pytest.raises(NotificationInvalid, match="certificate"):
            connector.parse_notification({**headers, "Wechatpay-Serial": "00" * 20}, body)

    def test_a_stale_timestamp_is_refused(self, channels):
        connector = channels["sandbox_wechat"]
        with clock.frozen(MONDAY) as frozen:
            headers, body = paid_notification(connector)
            frozen.tick(minutes=6)
            with pytest.raises(NotificationInvalid, match="5 minutes"):
                connector.parse_notification(headers, body)

    def test_a_resource_sealed_under_another_api_v3_key_is_refused(self, channels):
        connector = channels["sandbox_wechat"]
        headers, body = paid_notification(connector)
        event = json.loads(body)
        sealed = event["resource"]
        sealed["ciphertext"] = base64.b64encode(AESGCM(b"x" * 32).encrypt(
            sealed["nonce"].encode(), b'{"out_trade_no":"att_1"}', sealed["associated_data"].encode())).decode()
        resigned = json.dumps(event).encode()
        signature = rsa_sign(connector.channel_private_key, wechat_message(
            headers["Wechatpay-Timestamp"], headers["Wechatpay-Nonce"], resigned))
        with pytest.raises(NotificationInvalid, match="decrypt"):
            connector.parse_notification({**headers, "Wechatpay-Signature": signature}, resigned)

    def test_unknown_fields_are_refused_even_when_properly_signed(self, channels):
        connector = channels["sandbox_wechat"]
        headers, body = paid_notification(connector)
        event = {**json.loads(body), "redirect": "https://example.com"}
        resigned = json.dumps(event).encode()
        signature = rsa_sign(connector.channel_private_key, wechat_message(
            headers["Wechatpay-Timestamp"], headers["Wechatpay-Nonce"], resigned))
        with pytest.raises(NotificationInvalid, match="unknown"):
            connector.parse_notification({**headers, "Wechatpay-Signature": signature}, resigned)

    def test_a_notification_from_another_sandbox_store_is_refused(self, tmp_path):
        theirs = SandboxWechat(sandbox_settings(tmp_path / "theirs"))
        headers, body = paid_notification(theirs)
        ours = SandboxWechat(sandbox_settings(tmp_path / "ours"))
        with pytest.raises(NotificationInvalid):
            ours.parse_notification(headers, body)


def test_the_outbox_message_shape_is_what_wire_reads(channels):
    """``wire`` signs at send time from the stored payload: a message re-sent later carries a
    fresh timestamp and signature (a retry is never stale)."""
    connector = channels["sandbox_alipay"]
    with clock.frozen(MONDAY) as frozen:
        connector.authorize(charge("att_1", channel="sandbox_alipay"))
        connector.pay("att_1")
        row = connector.outbox()[0]
        message = OutboxMessage(row["notification_id"], row["kind"], row["reference"], row["status"],
                                json.loads(row["payload"]))
        frozen.tick(hours=2)
        headers, body = connector.wire(message, clock.now())
        assert connector.parse_notification(headers, body).notification_id == row["notification_id"]
