"""A country is one ISO 3166-1 lists (``kit.money.is_country``, pycountry's list), wherever a request names one.

``ZZ``, ``XX``, ``AA`` and the other user-assigned codes passed the old pattern check (two capital letters) as a
merchant's country, a payment's ``customer.country``, a bank account's country and a routing rule's condition.
"""

from __future__ import annotations

import pytest

from clearhouse.kit.money import is_country
from tests.payments.support import card_body

NOT_COUNTRIES = ["ZZ", "XX", "AA", "QM", "XK", "UK"]  # user-assigned, reserved, or not ISO's (GB is)


@pytest.mark.parametrize("code", ["CN", "DE", "GB", "US", "HK", "SG", "AX"])
def test_real_countries_are(code):
    assert is_country(code)


@pytest.mark.parametrize("code", [*NOT_COUNTRIES, "cn", "CHN", "C", ""])
def test_other_codes_are_not(code):
    assert not is_country(code)


@pytest.mark.parametrize("code", NOT_COUNTRIES[:3])
def test_a_payment_naming_one_is_refused_and_nothing_is_made(merchant_client_factory, code):
    shop, _merchant = merchant_client_factory("Country shop")
    refused = shop.post("/v1/payments", json=card_body(5000, customer={"country": code}))
    assert (refused.status_code, refused.json()["code"]) == (422, "validation_error"), refused.text
    assert refused.json()["errors"][0]["loc"][-2:] == ["customer", "country"]
    assert shop.get("/v1/payments").json()["data"] == []
    assert shop.post("/v1/payments", json=card_body(5000, customer={"country": "DE"})).status_code == 201


def test_a_merchant_naming_one_is_refused(client):
    refused = client.post("/v1/merchants", json={"name": "Nowhere Ltd", "country": "ZZ"})
    assert (refused.status_code, refused.json()["code"]) == (422, "validation_error"), refused.text
    made = client.post("/v1/merchants", json={"name": "Somewhere Ltd", "country": "SG"})
    assert made.status_code == 201, made.text
    patched = client.patch(f"/v1/merchants/{made.json()['id']}", json={"country": "XX"})
    assert patched.status_code == 422, patched.text
    assert client.get(f"/v1/merchants/{made.json()['id']}").json()["country"] == "SG"


def test_a_bank_account_naming_one_is_refused(merchant_client_factory):
    shop, _merchant = merchant_client_factory("Bank shop")
    refused = shop.post("/v1/vault/bank_accounts", json={"account_number": "12345678", "holder_name": "A Ltd",
                                                         "country": "ZZ", "currency": "EUR"})
    assert (refused.status_code, refused.json()["code"]) == (422, "validation_error"), refused.text
