"""``deliver_due``: the sandboxes' outboxes sent to ``/v1/channels/{name}/notifications``,
duplicated, delayed and reordered as the fault profile says, retried on a non-2xx answer,
never sent twice by two deliverers at once; and through a real FastAPI receiver."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi import FastAPI, Request, Response
from fastapi.testclient import TestClient

from clearhouse.channels.connectors.sandbox import RETRY_SCHEDULE, FaultProfile, deliver_due
from clearhouse.channels.protocol import APPROVED, PENDING, ChannelSet
from clearhouse.kit import clock
from clearhouse.kit.errors import install_handlers
from tests.channels.sandbox_support import MONDAY, SANDBOX_NAMES, Recorder, card, charge, sandbox_settings


@pytest.fixture
def settings(tmp_path):
    return sandbox_settings(tmp_path)


@pytest.fixture
def channels(settings):
    return ChannelSet(settings)


def paid(channels, name: str, reference: str = "att_1") -> None:
    connector = channels[name]
    if name == "sandbox_card":
        connector.authorize(charge(reference, card_data=card("4000000000003220")))
        connector.challenge(reference, True)
    else:
        connector.authorize(charge(reference, channel=name))
        connector.pay(reference)


class TestDeliverDue:
    def test_every_sandbox_sends_to_its_notification_path(self, settings, channels):
        for name in SANDBOX_NAMES:
            paid(channels, name, f"att_{name}")
        recorder = Recorder(channels)
        assert deliver_due(settings, recorder) == 4
        assert sorted(path for path, _, _ in recorder.sent) == [
            f"/v1/channels/{name}/notifications" for name in SANDBOX_NAMES]
        assert sorted(recorder.statuses()) == sorted((f"att_{name}", APPROVED) for name in SANDBOX_NAMES)
        assert deliver_due(settings, recorder) == 0  # delivered is delivered

    def test_nothing_is_owed_by_a_sandbox_never_used(self, settings):
        assert deliver_due(settings, Recorder(ChannelSet(settings))) == 0
        assert not settings.sandbox_dir.exists() or not any(settings.sandbox_dir.iterdir())

    @pytest.mark.parametrize("name", SANDBOX_NAMES)
    def test_duplication_sends_the_same_notification_twice(self, settings, channels, name):
        channels[name].faults = FaultProfile(duplicate_rate=1.0)
        paid(channels, name)
        recorder = Recorder(channels)
        assert deliver_due(settings, recorder) == 2
        first, second = recorder.parsed
        assert first.notification_id == second.notification_id
        assert first.status == second.status == APPROVED

    @pytest.mark.parametrize("name", SANDBOX_NAMES)
    def test_reordering_sends_a_stale_pending_after_the_final_answer(self, settings, channels, name):
        channels[name].faults = FaultProfile(reorder_rate=1.0)
        paid(channels, name)
        recorder = Recorder(channels)
        deliver_due(settings, recorder)
        assert recorder.statuses() == [("att_1", APPROVED), ("att_1", PENDING)]
        assert recorder.parsed[0].notification_id != recorder.parsed[1].notification_id

    def test_delay_holds_each_notification_back(self, settings, channels):
        channels["sandbox_alipay"].faults = FaultProfile(delay_seconds=30)
        with clock.frozen(MONDAY) as frozen:
            paid(channels, "sandbox_alipay")
            recorder = Recorder(channels)
            frozen.tick(seconds=29)
            assert deliver_due(settings, recorder) == 0
            frozen.tick(seconds=2)
            assert deliver_due(settings, recorder) == 1
            assert recorder.statuses() == [("att_1", APPROVED)]  # signed when sent: fresh after the delay

    def test_a_non_2xx_answer_is_retried_later_with_the_same_id(self, settings, channels):
        with clock.frozen(MONDAY) as frozen:
            paid(channels, "sandbox_wechat")
            refusing = Recorder(channels, status=503)
            assert deliver_due(settings, refusing) == 0
            frozen.tick(seconds=RETRY_SCHEDULE[0].total_seconds() - 1)
            assert deliver_due(settings, refusing) == 0 and len(refusing.sent) == 1  # not due yet
            frozen.tick(seconds=2)
            accepting = Recorder(channels)
            assert deliver_due(settings, accepting) == 1
            assert accepting.parsed[0].notification_id == refusing.parsed[0].notification_id

    def test_an_unreachable_receiver_is_retried_and_finally_given_up(self, settings, channels):
        def unreachable(path, headers, body):
            raise ConnectionError("connection refused")

        with clock.frozen(MONDAY) as frozen:
            paid(channels, "sandbox_bank")
            for delay in RETRY_SCHEDULE:
                assert deliver_due(settings, unreachable) == 0
                frozen.tick(seconds=delay.total_seconds() + 1)
            assert deliver_due(settings, unreachable) == 0
            row = channels["sandbox_bank"].outbox()[0]
            assert row["attempts"] == len(RETRY_SCHEDULE) + 1 and row["given_up_at"] is not None
            frozen.tick(days=2)
            assert deliver_due(settings, Recorder(channels)) == 0

    def test_two_deliverers_at_once_send_each_notification_once(self, settings, channels):
        for index in range(5):
            paid(channels, "sandbox_bank", f"att_{index}")
        seen: list[str] = []
        lock = threading.Lock()

        def slow_send(path, headers, body):
            time.sleep(0.02)
            with lock:
                seen.append(channels["sandbox_bank"].parse_notification(headers, body).reference)
            return 200

        threads = [threading.Thread(target=deliver_due, args=(settings, slow_send)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(seen) == [f"att_{index}" for index in range(5)]


class TestThroughHttp:
    def test_a_receiver_verifies_what_deliver_due_sends_and_refuses_a_forgery(self, settings, channels):
        """A small app standing in for our notification endpoint (the lead's route)."""
        received = []
        app = FastAPI()
        install_handlers(app)
        app.state.channels = channels

        @app.post("/v1/channels/{name}/notifications")
        async def receive(name: str, request: Request) -> Response:
            connector = request.app.state.channels[name]
            received.append(connector.parse_notification(dict(request.headers), await request.body()))
            reply = connector.notification_reply()
            return Response(reply.body, status_code=reply.status_code, media_type=reply.content_type)

        for name in SANDBOX_NAMES:
            paid(channels, name, f"att_{name}")
        with TestClient(app) as client:
            def send(path, headers, body):
                return client.post(path, headers=headers, content=body).status_code

            assert deliver_due(settings, send) == 4
            assert sorted(n.reference for n in received) == sorted(f"att_{name}" for name in SANDBOX_NAMES)
            forged = client.post("/v1/channels/sandbox_alipay/notifications", content=b"trade_status=TRADE_SUCCESS",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
            assert forged.status_code == 400 and forged.json()["code"] == "notification_invalid"
