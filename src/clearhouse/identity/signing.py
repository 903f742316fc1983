"""Request signing (api.md, Authentication): the one definition of the signing string,
used by the server to check requests and by clients (``ClearhouseAuth`` for httpx) to
sign them.

    signing_string = METHOD \\n PATH \\n QUERY \\n TIMESTAMP \\n NONCE \\n hex(SHA256(body))
    X-Clearhouse-Signature: v1=<hex HMAC-SHA256(secret, signing_string)>
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Generator

import httpx

KEY_HEADER = "X-Clearhouse-Key"
TIMESTAMP_HEADER = "X-Clearhouse-Timestamp"
NONCE_HEADER = "X-Clearhouse-Nonce"
SIGNATURE_HEADER = "X-Clearhouse-Signature"
VERSION = "v1"
NONCE_PATTERN = re.compile(r"^[\x21-\x7e]{16,64}$")
"""16 to 64 printable ASCII characters, no spaces."""


def signing_string(method: str, path: str, query: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    body_hash = hashlib.sha256(body).hexdigest()
    return "\n".join([method.upper(), path, query, timestamp, nonce, body_hash]).encode("utf-8")


def signature(secret: str, message: bytes) -> str:
    return f"{VERSION}=" + hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signature_matches(secret: str, message: bytes, given: str) -> bool:
    """Constant-time comparison of the expected and the given signature."""
    return hmac.compare_digest(signature(secret, message).encode(), given.encode("utf-8", "replace"))


def new_nonce() -> str:
    """A nonce that sorts after the ones made before it (while the wall clock runs forward):
    16 hex digits of the wall clock in nanoseconds, then 96 random bits (16 characters of
    base64url). The server takes any unique 16-64 characters; ordered ones land together in
    its index of used nonces (``api_nonces``' primary key), where random ones each dirty a
    page of their own (docs/identity.md, "Nonces and clock skew"; docs/benchmarks.md, auth)."""
    return f"{time.time_ns():016x}{secrets.token_urlsafe(12)}"


def signed_headers(key_id: str, secret: str, method: str, path: str, query: str = "", body: bytes = b"", *,
                   timestamp: int | None = None, nonce: str | None = None) -> dict[str, str]:
    """The four headers that authenticate one request."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or new_nonce()
    message = signing_string(method, path, query, stamp, nonce, body)
    return {
        KEY_HEADER: key_id,
        TIMESTAMP_HEADER: stamp,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: signature(secret, message),
    }


class ClearhouseAuth(httpx.Auth):
    """Signs every request an ``httpx`` client sends: ``httpx.Client(auth=ClearhouseAuth(key_id, secret))``."""

    requires_request_body = True

    def __init__(self, key_id: str, secret: str):
        self.key_id = key_id
        self.secret = secret

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raw_path, _, raw_query = request.url.raw_path.partition(b"?")
        request.headers.update(signed_headers(
            self.key_id, self.secret, request.method, raw_path.decode("ascii"), raw_query.decode("ascii"),
            request.content,
        ))
        yield request
