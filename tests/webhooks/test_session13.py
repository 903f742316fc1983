"""Webhook destinations found wrong in session 13 (2026-11-24), through the HTTP API: IPv4-mapped IPv6
hosts are refused whatever they carry (webhooks.md), and the development setting that allows loopback and
private hosts opens nothing else, neither when an endpoint is made nor when a delivery is sent."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from clearhouse.kit.settings import Settings
from clearhouse.webhooks import delivery
from tests.conftest import TEST_MASTER_KEY
from tests.payments.support import card_body


def _create(merchant_client, url: str):
    return merchant_client.post("/v1/webhook_endpoints", json={"url": url, "event_types": ["*"]})


class TestIpv4MappedHostsInProduction:
    """The docs tester's finding 14, with the production rules (private networks not allowed)."""

    @pytest.fixture
    def settings(self, database_url: str, tmp_path: Path) -> Settings:
        return Settings(database_url=database_url, master_key=TEST_MASTER_KEY, master_key_file=None,
                        sandbox_dir=tmp_path / "sandbox", webhook_allow_private_networks=False)

    @pytest.mark.parametrize("url", ["https://[::ffff:8.8.8.8]/x", "https://[::ffff:808:808]/x",
                                     "https://[::ffff:5db8:d822]/hook"])
    def test_an_ipv4_mapped_host_is_refused_though_the_address_inside_is_public(self, merchant_client_factory,
                                                                               url: str):
        shop, _ = merchant_client_factory()
        answer = _create(shop, url)
        assert answer.status_code == 422 and answer.json()["code"] == "invalid_webhook_url", answer.text
        assert shop.get("/v1/webhook_endpoints").json()["data"] == []
        assert _create(shop, "https://8.8.8.8/x").status_code == 201  # the address itself is public


class TestTheDevelopmentSettingOpensOnlyLoopbackAndPrivateHosts:
    """Finding 12 (payments tester): ``CLEARHOUSE_WEBHOOK_ALLOW_PRIVATE_NETWORKS`` (on in these tests'
    settings, tests/webhooks/conftest.py) allows loopback and private hosts, nothing else."""

    @pytest.mark.parametrize("url", ["https://169.254.169.254/latest/meta-data", "http://169.254.169.254/",
                                     "https://[::ffff:127.0.0.1]/hook", "https://[fe80::1]/hook",
                                     "https://[::ffff:10.0.0.1]/hook"])
    def test_link_local_and_ipv4_mapped_hosts_stay_refused(self, merchant_client_factory, url: str):
        shop, _ = merchant_client_factory()
        answer = _create(shop, url)
        assert answer.status_code == 422 and answer.json()["code"] == "invalid_webhook_url", answer.text
        for allowed in ("http://127.0.0.1:9000/hook", "https://10.1.2.3/hook", "http://localhost:9000/hook"):
            assert _create(shop, allowed).status_code == 201, allowed

    def test_a_name_that_resolves_to_a_link_local_address_is_not_sent_to(self, app, merchant_client_factory,
                                                                         monkeypatch):
        shop, _ = merchant_client_factory()
        endpoint = _create(shop, "https://hooks.example.com/clearhouse")
        assert endpoint.status_code == 201, endpoint.text
        assert shop.post("/v1/payments", json=card_body(1000)).json()["status"] == "succeeded"  # an event
        real = socket.getaddrinfo

        def resolve(host, *args, **kwargs):  # the name's DNS now points at the metadata service's network
            if host == "hooks.example.com":
                return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("169.254.0.9", 443))]
            return real(host, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", resolve)
        assert delivery.deliver_due(app.state.engine, app.state.settings, app.state.cipher) == 1
        [sent] = shop.get(f"/v1/webhook_endpoints/{endpoint.json()['id']}/deliveries").json()["data"]
        [attempt] = sent["attempts"]
        assert attempt["status_code"] is None
        assert attempt["error"] == "refused: the host resolves to the non-public address 169.254.0.9", attempt
