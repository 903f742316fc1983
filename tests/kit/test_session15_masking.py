"""Session 15 (masking): camelCase keys, merchant free text stored masked, webhook response
excerpts scrubbed, and which ``code`` keys are secrets (docs/data-protection.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from clearhouse.kit import clock
from clearhouse.kit.db import transact
from clearhouse.kit.masking import is_secret_key, mask_free_form, mask_value
from clearhouse.kit.settings import Settings
from clearhouse.webhooks import delivery, service
from tests.conftest import TEST_MASTER_KEY
from tests.payments.support import card_body
from tests.webhooks.support import Receiver, answer

PAN = "4242424242424242"
ACCOUNT = "000123456789012"
IBAN = "GB82WEST12345698765432"


class LoopbackSettings(Settings):
    webhook_allow_private_networks: bool = True  # the test receiver listens on 127.0.0.1


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return LoopbackSettings(database_url=database_url, master_key=TEST_MASTER_KEY, master_key_file=None,
                            sandbox_dir=tmp_path / "sandbox", webhook_timeout_seconds=2.0)


def audit_changes(client, action: str) -> list[dict]:
    response = client.get("/v1/audit/events", params={"action": action, "limit": 500})
    assert response.status_code == 200, response.text
    return [event["changes"] for event in response.json()["data"]]


def stored_text(engine: Engine, table: str) -> str:
    with engine.connect() as connection:
        return json.dumps([list(map(str, row)) for row in connection.execute(text(f"SELECT * FROM {table}"))])


class TestCamelCaseKeys:
    def test_merchant_metadata_in_camel_case_is_masked_in_the_answer_and_the_audit_trail(self, app, client):
        merchant_id = client.post("/v1/merchants", json={"name": "Shop"}).json()["id"]
        response = client.patch(f"/v1/merchants/{merchant_id}", json={"metadata": {
            "payoutAccountNumber": ACCOUNT, "bankIban": IBAN, "apiSecret": "s3cr3t-value", "totpSeed": "JBSWY3DP",
            "apiToken": "tok-123456", "accountNumber": "12345678"}})
        assert response.status_code == 200, response.text
        expected = {"payoutAccountNumber": "***********9012", "bankIban": "******************5432",
                    "apiSecret": "***", "totpSeed": "***", "apiToken": "***", "accountNumber": "****5678"}
        assert response.json()["metadata"] == expected
        assert client.get(f"/v1/merchants/{merchant_id}").json()["metadata"] == expected
        [change] = audit_changes(client, "merchant.update")
        trail = json.dumps(change)
        for secret in (ACCOUNT, "12345698765432", "s3cr3t-value", "JBSWY3DP", "tok-123456", "12345678"):
            assert secret not in trail, (secret, trail)
            assert secret not in stored_text(app.state.engine, "merchants")

    def test_mask_value_splits_camel_case_as_it_splits_snake_kebab_and_dotted(self):
        for key in ("apiSecret", "api_secret", "api-secret", "api.secret", "APISecret", "totpSeed", "apiToken"):
            assert mask_value({key: "value"}) == {key: "***"}, key
        assert mask_value({"accountNumber": "12345678"}) == {"accountNumber": "****5678"}
        assert mask_value({"cardNumber": PAN}) == {"cardNumber": "424242******4242"}
        plain = {"currency": "EUR", "shippingMethod": "post"}
        assert mask_value(plain) == plain


class TestFreeTextIsStoredMasked:
    def test_payment_metadata_and_description_are_masked_in_storage_answers_and_events(
            self, app, merchant_client_factory):
        shop, _merchant_id = merchant_client_factory()
        body = card_body(1000, description=f"card {PAN} for order 1001", metadata={
            "card_number": PAN, "cvc": "999", "note": f"pan {PAN}", "order_id": "ord_1001", "pin": 1234})
        response = shop.post("/v1/payments", json=body)
        assert response.status_code == 201, response.text
        payment = response.json()
        assert payment["metadata"] == {"card_number": "424242******4242", "cvc": "***", "note": "pan 424242******4242",
                                       "order_id": "ord_1001", "pin": "***"}
        assert payment["description"] == "card 424242******4242 for order 1001"
        fetched = shop.get(f"/v1/payments/{payment['id']}").json()
        assert fetched["metadata"] == payment["metadata"] and fetched["description"] == payment["description"]
        events = shop.get("/v1/events", params={"limit": 500}).json()["data"]
        assert events and PAN not in json.dumps(events) and '"999"' not in json.dumps(events)
        for table in ("payments", "webhook_events"):
            assert PAN not in stored_text(app.state.engine, table), table

    def test_a_cancel_reason_is_scrubbed(self, merchant_client_factory):
        shop, _ = merchant_client_factory()
        payment = shop.post("/v1/payments", json=card_body(1000, capture_method="manual")).json()
        response = shop.post(f"/v1/payments/{payment['id']}/cancel", json={"reason": f"customer sent {PAN}"})
        assert response.status_code == 200, response.text
        assert PAN not in json.dumps(shop.get(f"/v1/payments/{payment['id']}").json())

    def test_webhook_endpoint_description_is_masked(self, app, merchant_client_factory):
        shop, _ = merchant_client_factory()
        made = shop.post("/v1/webhook_endpoints", json={
            "url": "https://shop.example.com/hook", "event_types": ["*"], "description": f"test card {PAN}"})
        assert made.status_code == 201, made.text
        assert made.json()["description"] == "test card 424242******4242"
        changed = shop.patch(f"/v1/webhook_endpoints/{made.json()['id']}",
                             json={"description": "secret=hunter2 card 4111 1111 1111 1111"})
        assert changed.status_code == 200, changed.text
        assert changed.json()["description"] == "secret=*** card 4111 11** **** 1111"
        assert PAN not in stored_text(app.state.engine, "webhook_endpoints")
        assert "hunter2" not in stored_text(app.state.engine, "webhook_endpoints")

    def test_ordinary_values_pass_unchanged(self, client):
        merchant_id = client.post("/v1/merchants", json={"name": "Shop"}).json()["id"]
        metadata = {"order_id": "ord_1001", "order_number": "1001", "invoice_number": 20261125, "qty": 3,
                    "note": "Deliver after 5pm, gate code at reception", "phone_number": "+44 20 7946 0958",
                    "signature_required": True, "pin_set": False, "tags": ["a", "b"], "nested": {"sku": "X-12"},
                    "reference": "PO-2026-000123", "bank_code": "37040044", "currency_code": "EUR",
                    "country_code": "DE", "reason_code": "R01", "price": 19.99, "empty": None}
        response = client.patch(f"/v1/merchants/{merchant_id}", json={"metadata": metadata})
        assert response.status_code == 200, response.text
        assert response.json()["metadata"] == metadata

    def test_masked_values_sent_back_stay_as_they_are(self):
        once = mask_free_form({"card_number": PAN, "accountNumber": ACCOUNT, "cvc": "123"})
        assert mask_free_form(once) == once


class TestWebhookResponseExcerpt:
    def test_is_scrubbed_before_it_is_stored_and_shown(self, app, merchant_client_factory):
        shop, merchant_id = merchant_client_factory()
        with Receiver() as receiver:
            receiver.scripts["/hook"] = [answer(500, b"echo: card 4111111111111111 Authorization: Bearer sekrit123")]
            endpoint = shop.post("/v1/webhook_endpoints", json={"url": receiver.url(), "event_types": ["*"]}).json()
            transact(app.state.engine, lambda s: service.emit(s, livemode=False, merchant_id=merchant_id,
                                                              event_type="payment.succeeded", data={"id": "pay_1"}))
            with clock.frozen(clock.now()):
                assert delivery.deliver_due(app.state.engine, app.state.settings, app.state.cipher) == 1
        log = shop.get(f"/v1/webhook_endpoints/{endpoint['id']}/deliveries").json()["data"]
        [attempt] = log[0]["attempts"]
        assert attempt["response_excerpt"] == "echo: card 411111******1111 Authorization: ***"
        stored = stored_text(app.state.engine, "webhook_attempts")
        assert "4111111111111111" not in stored and "sekrit123" not in stored

    def test_a_card_number_cut_by_the_excerpt_limit_is_not_kept_in_part(self):
        from clearhouse.webhooks.models import RESPONSE_EXCERPT_MAX

        body = "x" * (RESPONSE_EXCERPT_MAX - 8) + " 4111111111111111 more"
        kept = delivery._text(body, RESPONSE_EXCERPT_MAX)
        assert len(kept) <= RESPONSE_EXCERPT_MAX and "4111111" not in kept


class TestCodeKeys:
    def test_readable_codes_stay_and_secret_codes_are_masked_in_stored_metadata(self, client):
        merchant_id = client.post("/v1/merchants", json={"name": "Shop"}).json()["id"]
        response = client.patch(f"/v1/merchants/{merchant_id}", json={"metadata": {
            "bank_code": "37040044", "currencyCode": "EUR", "country-code": "DE", "reason_code": "R01",
            "security_code": "123", "authCode": "A1B2C3", "otp_code": "654321", "totp.code": "111222",
            "one_time_code": "987654"}})
        assert response.status_code == 200, response.text
        assert response.json()["metadata"] == {
            "bank_code": "37040044", "currencyCode": "EUR", "country-code": "DE", "reason_code": "R01",
            "security_code": "***", "authCode": "***", "otp_code": "***", "totp.code": "***", "one_time_code": "***"}

    def test_the_key_rule(self):
        for key in ("bank_code", "currency_code", "countryCode", "reason-code", "status_code", "failure_code"):
            assert not is_secret_key(key, bare_code=True), key
        for key in ("otp_code", "totpCode", "security_code", "auth_code", "cvc", "recovery_codes", "card_code"):
            assert is_secret_key(key), key
        assert is_secret_key("code", bare_code=True) and is_secret_key("codes", bare_code=True)
        assert not is_secret_key("code")  # logs keep error codes (code=insufficient_funds)

    def test_the_bank_code_is_readable_in_the_audit_trail(self, client):
        merchant_id = client.post("/v1/merchants", json={"name": "Shop"}).json()["id"]
        response = client.post("/v1/vault/bank_accounts", json={
            "iban": "DE89 3704 0044 0532 0130 00", "bank_code": "37040044", "holder_name": "Muster GmbH",
            "country": "DE", "currency": "EUR", "merchant_id": merchant_id})
        assert response.status_code == 201, response.text
        [change] = audit_changes(client, "vault.bank_account.create")
        assert change["bank_code"] == "37040044"
