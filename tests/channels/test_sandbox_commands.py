"""``clearhouse sandbox pay | challenge | deliver``: the customer's and the channel's side
from the command line; ``deliver`` over real HTTP to a receiver on a loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI, Request, Response
from typer.testing import CliRunner

from clearhouse.channels import commands
from clearhouse.channels.connectors.sandbox_card import CARD_CHALLENGE
from clearhouse.channels.protocol import APPROVED, DECLINED, ChannelSet
from clearhouse.kit.errors import install_handlers
from clearhouse.kit.settings import get_settings
from tests.channels.sandbox_support import card, charge, sandbox_settings


@pytest.fixture
def run(tmp_path, monkeypatch):
    """Invoke the ``sandbox`` command group with this test's sandbox directory."""
    monkeypatch.setenv("CLEARHOUSE_SANDBOX_DIR", str(tmp_path / "sandbox"))
    get_settings.cache_clear()

    def invoke(*args: str):
        return CliRunner().invoke(commands.app, list(args))

    yield invoke
    get_settings.cache_clear()


@pytest.fixture
def channels(tmp_path):
    return ChannelSet(sandbox_settings(tmp_path))


class TestPay:
    @pytest.mark.parametrize("name", ["sandbox_alipay", "sandbox_wechat", "sandbox_bank"])
    def test_pay_completes_a_waiting_payment(self, channels, run, name):
        channels[name].authorize(charge("att_1", channel=name))
        result = run("pay", "att_1", "--channel", name)
        assert result.exit_code == 0, result.output
        assert "approved" in result.output
        assert channels[name].query("att_1").status == APPROVED

    def test_an_unknown_reference_or_channel_is_an_error(self, channels, run):
        assert run("pay", "att_missing", "--channel", "sandbox_alipay").exit_code == 1
        assert run("pay", "att_1", "--channel", "sandbox_nowhere").exit_code == 2
        assert run("pay", "att_1", "--channel", "sandbox_card").exit_code == 2

    def test_challenge_passes_or_fails(self, channels, run):
        for reference in ("att_pass", "att_fail"):
            channels["sandbox_card"].authorize(charge(reference, card_data=card(CARD_CHALLENGE)))
        assert run("challenge", "att_pass").exit_code == 0
        assert run("challenge", "att_fail", "--fail").exit_code == 0
        assert channels["sandbox_card"].query("att_pass").status == APPROVED
        assert channels["sandbox_card"].query("att_fail").status == DECLINED


@pytest.fixture
def receiver(channels) -> Iterator[tuple[str, list]]:
    """A stand-in for our notification endpoint on a real port."""
    received: list = []
    app = FastAPI()
    install_handlers(app)

    @app.post("/v1/channels/{name}/notifications")
    async def receive(name: str, request: Request) -> Response:
        connector = channels[name]
        received.append(connector.parse_notification(dict(request.headers), await request.body()))
        reply = connector.notification_reply()
        return Response(reply.body, status_code=reply.status_code, media_type=reply.content_type)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "receiver did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}", received
    server.should_exit = True
    thread.join(timeout=10)


def test_deliver_sends_due_notifications_over_http(channels, run, receiver, monkeypatch):
    base_url, received = receiver
    monkeypatch.setenv("CLEARHOUSE_PUBLIC_BASE_URL", base_url)
    get_settings.cache_clear()
    for name in ("sandbox_alipay", "sandbox_wechat", "sandbox_bank"):
        channels[name].authorize(charge(f"att_{name}", channel=name))
        channels[name].pay(f"att_{name}")
    result = run("deliver")
    assert result.exit_code == 0, result.output
    assert "3 notification(s) accepted" in result.output
    assert sorted((n.reference, n.status) for n in received) == [
        ("att_sandbox_alipay", APPROVED), ("att_sandbox_bank", APPROVED), ("att_sandbox_wechat", APPROVED)]
