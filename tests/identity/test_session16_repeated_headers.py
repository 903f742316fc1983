"""Session 16: a Clearhouse header sent twice is refused, not settled by "the last one wins".

Two ``X-Clearhouse-Signature`` (or key, nonce, timestamp) headers, or two ``Idempotency-Key``
headers, leave which one counts to each reader: a proxy in front may check the first while the
server checked the last. Each is now ``400 malformed_request`` and changes nothing.
"""

from __future__ import annotations

import httpx
import pytest

from clearhouse.identity import signing


def signed(client, platform_key, method: str, path: str, body: bytes, extra: list[tuple[str, str]]) -> httpx.Response:
    headers = signing.signed_headers(platform_key.key_id, platform_key.secret, method, path, "", body)
    pairs = [*headers.items(), ("content-type", "application/json"), *extra]
    request = httpx.Request(method, f"http://testserver{path}", headers=pairs, content=body)
    return client.send(request, auth=None)


@pytest.mark.parametrize("repeated", [signing.SIGNATURE_HEADER, signing.KEY_HEADER, signing.NONCE_HEADER,
                                      signing.TIMESTAMP_HEADER, "Idempotency-Key"])
def test_a_repeated_clearhouse_header_is_refused_and_nothing_is_made(client, platform_key, repeated):
    before = client.get("/v1/merchants").json()["data"]
    body = b'{"name": "Twice"}'
    extra = [("Idempotency-Key", "idem-s16-first")]
    headers = signing.signed_headers(platform_key.key_id, platform_key.secret, "POST", "/v1/merchants", "", body)
    value = headers.get(repeated, "idem-s16-second")
    extra.append((repeated, value))  # the same header again (for the signing headers: the same value)
    answer = signed(client, platform_key, "POST", "/v1/merchants", body, extra)
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == "malformed_request"
    assert repeated.lower() in answer.json()["detail"]
    assert client.get("/v1/merchants").json()["data"] == before


def test_other_repeated_headers_are_left_alone(client, platform_key):
    answer = signed(client, platform_key, "POST", "/v1/merchants", b'{"name": "Once"}',
                    [("Accept", "application/json"), ("Accept", "text/plain")])
    assert answer.status_code == 201, answer.text
