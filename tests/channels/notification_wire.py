"""Each sandbox's notification as an editable document, and back to a correctly signed
message: the tests take a genuine notification, change one field, and sign it again with
the sandbox's own keys, so only the change can make it refused.

A document is ``{"body": <the decoded body>}``, and for WeChat Pay also ``"resource"`` (the
decrypted resource, sealed again on the way out) and ``"seal"`` (the nonce and associated data
it is sealed with). It is signed when encoded, at the current time unless ``"t"`` says what
to put in the timestamp header (Alipay: unless ``notify_time`` was changed). ``"raw"`` (bytes),
when present, is sent as the body instead of encoding ``"body"``; ``"edit"``, when present,
changes the encoded body before it is signed (its ``change(body) -> body``)."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from clearhouse.channels.connectors import sandbox_bank, sandbox_card
from clearhouse.channels.connectors.sandbox_qr import CHINA_TIME, alipay_sign_content, rsa_sign, wechat_message
from clearhouse.kit import clock

SEALED = "<sealed when encoded>"
NOW = "<now when encoded>"


def sent(connector: Any) -> tuple[dict[str, str], bytes]:
    """The one notification the sandbox owes, as it sends it (not delivered to us)."""
    out: list[tuple[dict[str, str], bytes]] = []
    connector.deliver_due(lambda path, headers, body: out.append((headers, body)) or 200)
    assert len(out) == 1, out
    return out[0]


def now_stamp() -> str:
    return str(int(clock.now().timestamp()))


def decode(channel: str, connector: Any, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    if channel == "sandbox_card":
        parts = dict(part.split("=", 1) for part in headers[sandbox_card.SIGNATURE_HEADER].split(","))
        assert parts["t"].isdigit()
        return {"body": json.loads(body)}
    if channel == "sandbox_bank":
        return {"body": json.loads(body)}
    if channel == "sandbox_alipay":
        fields = dict(parse_qsl(body.decode(), keep_blank_values=True))
        fields.pop("sign")
        fields["notify_time"] = NOW
        return {"body": fields}
    event = json.loads(body)
    sealed = event["resource"]
    resource = json.loads(AESGCM(connector.api_v3_key).decrypt(
        sealed["nonce"].encode(), base64.b64decode(sealed["ciphertext"]), sealed["associated_data"].encode()))
    sealed["ciphertext"] = SEALED
    return {"body": event, "resource": resource,
            "seal": (sealed["nonce"], sealed["associated_data"])}


def encode(channel: str, connector: Any, document: Mapping[str, Any]) -> tuple[dict[str, str], bytes]:
    """Headers and body signed with the sandbox's own keys."""
    document = copy.deepcopy(dict(document))
    timestamp = document.get("t") or now_stamp()
    if channel == "sandbox_alipay":
        fields = document["body"]
        if fields.get("notify_time") == NOW:
            fields["notify_time"] = clock.now().astimezone(CHINA_TIME).strftime("%Y-%m-%d %H:%M:%S")
        fields["sign"] = rsa_sign(connector.channel_private_key, alipay_sign_content(fields))
        body = _edited(document, document.get("raw") or urlencode(fields).encode())
        return {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}, body
    if channel == "sandbox_wechat":
        event = document["body"]
        sealed = event.get("resource")
        if isinstance(sealed, dict) and sealed.get("ciphertext") == SEALED:
            nonce, associated = document["seal"]
            plaintext = json.dumps(document["resource"], ensure_ascii=False).encode()
            sealed["ciphertext"] = base64.b64encode(
                AESGCM(connector.api_v3_key).encrypt(nonce.encode(), plaintext, associated.encode())).decode()
    body = _edited(document, document.get("raw") or json.dumps(document["body"], ensure_ascii=False).encode())
    if channel == "sandbox_card":
        signature = sandbox_card.card_signature(connector.notification_secret, timestamp, body)
        return {"Content-Type": "application/json",
                sandbox_card.SIGNATURE_HEADER: f"t={timestamp},v1={signature}"}, body
    if channel == "sandbox_bank":
        return {"Content-Type": "application/json", sandbox_bank.TIMESTAMP_HEADER: timestamp,
                sandbox_bank.SIGNATURE_HEADER: sandbox_bank.bank_signature(connector.notification_secret, timestamp,
                                                                           body)}, body
    nonce = "n" * 32
    return {"Content-Type": "application/json", "Wechatpay-Timestamp": timestamp, "Wechatpay-Nonce": nonce,
            "Wechatpay-Serial": connector.serial, "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
            "Wechatpay-Signature": rsa_sign(connector.channel_private_key,
                                            wechat_message(timestamp, nonce, body))}, body


def _edited(document: Mapping[str, Any], body: bytes) -> bytes:
    return document["edit"].change(body) if "edit" in document else body


def leaf_paths(document: Mapping[str, Any]) -> set[tuple[str, ...]]:
    """Every field of the body (and WeChat's resource), as a path: what a table of malformed
    notifications must cover."""
    found: set[tuple[str, ...]] = set()

    def walk(value: Any, path: tuple[str, ...]) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(inner, (*path, key))
        else:
            found.add(path)

    walk(document["body"], ("body",))
    if "resource" in document:
        walk(document["resource"], ("resource",))
    return found
