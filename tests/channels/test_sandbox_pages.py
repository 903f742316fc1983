"""The hosted sandbox pages, through HTTP: pay a QR code or a transfer, answer the card
challenge; unknown references are a 404 page; every value is HTML-escaped.

A small app holds just this router (the platform's app includes it too): the pages need
the channels, not our database."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from clearhouse.channels.connectors.sandbox import FaultProfile
from clearhouse.channels.connectors.sandbox_card import CARD_CHALLENGE
from clearhouse.channels.protocol import APPROVED, AUTHORIZED, DECLINED, ChannelSet
from clearhouse.channels.sandbox_endpoints import router
from clearhouse.identity.permissions import PUBLIC, route_permission
from clearhouse.kit import clock
from clearhouse.kit.errors import install_handlers
from tests.channels.sandbox_support import MONDAY, Recorder, card, charge, sandbox_settings


@pytest.fixture
def channels(tmp_path):
    return ChannelSet(sandbox_settings(tmp_path))


@pytest.fixture
def client(channels):
    app = FastAPI()
    install_handlers(app)
    app.include_router(router)
    app.state.channels = channels
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def test_every_page_is_public_and_out_of_the_api_document():
    assert {route_permission(route) for route in router.routes} == {PUBLIC}
    assert not any(route.include_in_schema for route in router.routes)


class TestPayPage:
    @pytest.mark.parametrize("name", ["sandbox_alipay", "sandbox_wechat"])
    def test_the_customer_sees_the_order_and_pays_it(self, channels, client, name):
        qr = channels[name].authorize(charge("att_1", 12_345, channel=name)).next_action["qr_content"]
        path = qr.removeprefix("http://testserver")
        page = client.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "123.45 CNY" in page.text and "Tea set" in page.text and '<form method="post">' in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
        paid = client.post(path, follow_redirects=False)
        assert paid.status_code == 303 and paid.headers["location"] == path
        assert "approved" in client.get(path).text and "<form" not in client.get(path).text
        assert channels[name].query("att_1").status == APPROVED
        recorder = Recorder(channels)
        channels[name].deliver_due(recorder)
        assert recorder.statuses() == [("att_1", APPROVED)]

    def test_the_bank_page_shows_where_to_send_the_transfer(self, channels, client):
        action = channels["sandbox_bank"].authorize(charge("att_1", 25_000, "EUR", channel="sandbox_bank")).next_action
        page = client.get("/sandbox/sandbox_bank/pay/att_1")
        assert action["iban"] in page.text and action["reference_code"] in page.text
        assert "Send the transfer" in page.text
        assert client.post("/sandbox/sandbox_bank/pay/att_1").status_code == 200  # after the redirect
        assert channels["sandbox_bank"].query("att_1").status == APPROVED

    def test_merchant_text_is_escaped(self, channels, client):
        channels["sandbox_alipay"].authorize(charge("att_1", channel="sandbox_alipay",
                                                    description='<script>alert("x")</script>'))
        page = client.get("/sandbox/sandbox_alipay/pay/att_1")
        assert "<script>" not in page.text
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page.text

    @pytest.mark.parametrize("path", [
        "/sandbox/sandbox_alipay/pay/att_missing", "/sandbox/nowhere/pay/att_1", "/sandbox/sandbox_card/pay/att_1",
        "/sandbox/sandbox_card/challenge/att_missing", "/sandbox/x_walk_missing/pay/x_walk_missing",
        "/sandbox/sandbox_alipay/challenge/att_1", "/sandbox/nowhere/challenge/att_1",
    ])
    def test_unknown_channels_and_references_are_a_404_page(self, channels, client, path):
        channels["sandbox_alipay"].authorize(charge("att_1", channel="sandbox_alipay"))  # a reference, not a card's
        for response in (client.get(path), client.post(path, json={})):
            assert response.status_code == 404 and response.headers["content-type"].startswith("text/html")

    def test_a_channel_in_an_outage_shows_it(self, channels, client):
        channels["sandbox_wechat"].authorize(charge("att_1", channel="sandbox_wechat"))
        channels["sandbox_wechat"].faults = FaultProfile(outages=(("02:00", "02:15"),))
        with clock.frozen(MONDAY.replace(hour=2, minute=10)):
            response = client.post("/sandbox/sandbox_wechat/pay/att_1")
        assert response.status_code == 503 and "channel_unavailable" in response.text
        # Asked once the outage is over (at a frozen time too: the real clock may be in the window):
        # the customer's refused visit changed nothing, the payment still waits for them.
        with clock.frozen(MONDAY.replace(hour=2, minute=20)):
            assert channels["sandbox_wechat"].query("att_1").status == "requires_action"


class TestChallengePage:
    @pytest.mark.parametrize(("outcome", "capture", "status"), [
        ("pass", True, APPROVED), ("pass", False, AUTHORIZED), ("fail", True, DECLINED)])
    def test_the_cardholder_passes_or_fails(self, channels, client, outcome, capture, status):
        result = channels["sandbox_card"].authorize(charge("att_1", capture=capture, card_data=card(CARD_CHALLENGE),
                                                           return_url="https://shop.example/done?o=1&x=2"))
        path = result.next_action["url"].removeprefix("http://testserver")
        page = client.get(path)
        assert 'value="pass"' in page.text and 'value="fail"' in page.text
        answered = client.post(path, data={"outcome": outcome})
        assert answered.status_code == 200
        assert ("Challenge passed" if outcome == "pass" else "Challenge failed") in answered.text
        assert 'href="https://shop.example/done?o=1&amp;x=2"' in answered.text
        assert channels["sandbox_card"].query("att_1").status == status
        assert "there is no challenge to answer" in client.get(path).text

    def test_no_outcome_is_asked_again(self, channels, client):
        channels["sandbox_card"].authorize(charge("att_1", card_data=card(CARD_CHALLENGE)))
        assert client.post("/sandbox/sandbox_card/challenge/att_1", data={"outcome": "maybe"}).status_code == 422
        assert client.post("/sandbox/sandbox_card/challenge/att_1", json={}).status_code == 422

    def test_a_payment_that_was_never_challenged_has_nothing_to_answer(self, channels, client):
        """Found by the session-18 tester: failing the "challenge" of a payment approved without one
        answered "Challenge passed"."""
        channels["sandbox_card"].authorize(charge("att_1", card_data=card("4242424242424242")))
        answered = client.post("/sandbox/sandbox_card/challenge/att_1", data={"outcome": "fail"})
        assert answered.status_code == 409
        assert "there is no challenge to answer" in answered.text and "Challenge passed" not in answered.text
        assert channels["sandbox_card"].query("att_1").status == APPROVED
