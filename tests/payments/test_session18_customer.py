"""A payment's ``customer.ip`` is an IPv4 or IPv6 address (the session-18 tester: ``999.1.1.1`` was stored)."""

from __future__ import annotations

import pytest

from tests.payments.support import card_body


@pytest.mark.parametrize("ip", ["999.1.1.1", "10.0.0", "not an ip", "::g", "1.2.3.4 "])
def test_an_address_that_is_not_one_is_refused_and_nothing_is_made(merchant_client_factory, ip):
    shop, _merchant = merchant_client_factory("Ip shop")
    refused = shop.post("/v1/payments", json=card_body(5000, customer={"ip": ip}))
    assert (refused.status_code, refused.json()["code"]) == (422, "validation_error"), refused.text
    assert refused.json()["errors"][0]["loc"][-2:] == ["customer", "ip"]
    assert shop.get("/v1/payments").json()["data"] == []


@pytest.mark.parametrize("ip", ["203.0.113.7", "2001:db8::1"])
def test_v4_and_v6_addresses_are_kept_as_sent(merchant_client_factory, ip):
    shop, _merchant = merchant_client_factory("Ip shop")
    made = shop.post("/v1/payments", json=card_body(5000, customer={"ip": ip, "country": "CN"}))
    assert made.status_code == 201, made.text
    assert made.json()["customer"]["ip"] == ip
