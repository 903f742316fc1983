"""A real HTTP receiver for webhook deliveries, and an independent signature check."""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    arrived: float = field(default_factory=time.monotonic)


Behaviour = Callable[["Receiver", Received], tuple[int, bytes, dict[str, str]]]
"""What a path does with a request: (status, body, extra headers). It may block first."""


def answer(status: int, body: bytes = b"ok", headers: dict[str, str] | None = None) -> Behaviour:
    return lambda _receiver, _request: (status, body, headers or {})


class Receiver:
    """A threaded http.server on 127.0.0.1 that records every request. Each path answers
    with its scripted behaviours in turn (the last one repeats); unscripted paths answer 200."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.scripts: dict[str, list[Behaviour]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("content-length") or 0)
                request = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length))
                with receiver.lock:
                    receiver.requests.append(request)
                    script = receiver.scripts.get(self.path) or [answer(200)]
                    behaviour = script.pop(0) if len(script) > 1 else script[0]
                status, body, headers = behaviour(receiver, request)
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up waiting (the timeout tests)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *behaviours: Behaviour) -> None:
        with self.lock:
            self.scripts[path] = list(behaviours)

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]


def refused_url() -> str:
    """A loopback URL nothing listens on: connection refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def standard_webhooks_valid(secret: str, headers: dict[str, str], body: bytes, now: int, tolerance: int = 300) -> bool:
    """The Standard Webhooks check written from the specification, independently of
    webhooks/delivery.py, so that a test using it means something."""
    assert secret.startswith("whsec_")
    key = base64.b64decode(secret[len("whsec_"):])
    msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(now - int(timestamp)) > tolerance:
        return False
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(part == f"v1,{expected}" for part in headers["webhook-signature"].split())
