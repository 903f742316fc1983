"""Webhook endpoints through HTTP on both databases: secrets, validation, tenants, audit."""

from __future__ import annotations

import base64

import pytest
from sqlalchemy import Engine, select, text

from clearhouse.webhooks import service
from clearhouse.webhooks.models import WebhookEndpoint


@pytest.fixture
def merchant(merchant_client_factory):
    return merchant_client_factory("Shop A")


def endpoint_body(url: str = "https://shop.example.com/hooks", **extra):
    return {"url": url, "event_types": ["payment.succeeded", "refund.succeeded"], **extra}


def audit_actions(engine: Engine, object_id: str) -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(
            text("SELECT action FROM audit_events WHERE object_id = :id ORDER BY seq"), {"id": object_id}).scalars())


class TestCreateEndpoint:
    def test_secret_is_shown_once_and_stored_encrypted(self, merchant, engine: Engine, app):
        merchant_client, merchant_id = merchant
        response = merchant_client.post("/v1/webhook_endpoints", json=endpoint_body(description="orders"))
        assert response.status_code == 201, response.text
        created = response.json()
        assert created["id"].startswith("we_")
        assert created["merchant_id"] == merchant_id
        assert created["event_types"] == ["payment.succeeded", "refund.succeeded"]
        assert created["enabled"] is True and created["description"] == "orders"
        secret = created["secret"]
        assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:], validate=True)) == 32

        fetched = merchant_client.get(f"/v1/webhook_endpoints/{created['id']}")
        assert fetched.status_code == 200
        assert "secret" not in fetched.json() and secret not in fetched.text
        listed = merchant_client.get("/v1/webhook_endpoints")
        assert [e["id"] for e in listed.json()["data"]] == [created["id"]]
        assert secret not in listed.text

        with engine.connect() as connection:
            row = connection.execute(select(WebhookEndpoint.__table__)
                                     .where(WebhookEndpoint.id == created["id"])).one()
        assert secret not in " ".join(str(v) for v in row)
        assert secret[6:] not in " ".join(str(v) for v in row)
        assert app.state.cipher.decrypt(row.secret_ciphertext, f"webhook_endpoints.secret:{created['id']}") == secret
        assert audit_actions(engine, created["id"]) == ["webhook_endpoint.create"]
        with engine.connect() as connection:
            changes = connection.execute(text("SELECT changes_json FROM audit_events WHERE object_id = :id"),
                                         {"id": created["id"]}).scalar_one()
        assert secret not in changes

    def test_platform_callers_name_the_merchant(self, client, merchant):
        _, merchant_id = merchant
        missing = client.post("/v1/webhook_endpoints", json=endpoint_body())
        assert missing.status_code == 422 and missing.json()["code"] == "merchant_required"
        made = client.post("/v1/webhook_endpoints", json=endpoint_body(merchant_id=merchant_id))
        assert made.status_code == 201 and made.json()["merchant_id"] == merchant_id
        unknown = client.post("/v1/webhook_endpoints", json=endpoint_body(merchant_id="mch_nope"))
        assert unknown.status_code == 404

    def test_idempotency_key_replays_the_creation(self, merchant):
        merchant_client, _ = merchant
        headers = {"Idempotency-Key": "we-create-1"}
        first = merchant_client.post("/v1/webhook_endpoints", json=endpoint_body(), headers=headers)
        again = merchant_client.post("/v1/webhook_endpoints", json=endpoint_body(), headers=headers)
        assert first.status_code == again.status_code == 201
        assert again.headers.get("idempotent-replayed") == "true"
        assert again.json()["id"] == first.json()["id"]
        assert len(merchant_client.get("/v1/webhook_endpoints").json()["data"]) == 1

    @pytest.mark.parametrize("url, why", [
        ("ftp://shop.example.com/hooks", "https"),
        ("https://user:pass@shop.example.com/hooks", "password"),
        ("https://shop.example.com/hooks#frag", "fragment"),
        ("https:///hooks", "host"),
        ("not a url", "control"),
        ("https://shop.example.com:99999/hooks", "parsed"),
        ("http://shop.example.com/hooks", "https"),
        ("https://shop.example.com/" + "a" * 2100, "2048"),
        ("https://-bad-.example.com/", "domain"),
    ])
    def test_bad_urls_are_refused(self, merchant, url: str, why: str):
        merchant_client, _ = merchant
        response = merchant_client.post("/v1/webhook_endpoints", json=endpoint_body(url))
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "invalid_webhook_url"
        assert why in response.json()["detail"]

    def test_unknown_event_types_are_refused(self, merchant):
        merchant_client, _ = merchant
        response = merchant_client.post("/v1/webhook_endpoints", json={
            "url": "https://shop.example.com/hooks", "event_types": ["payment.succeeded", "payment.exploded"]})
        assert response.status_code == 422
        assert response.json()["code"] == "unknown_event_type"
        assert "payment.exploded" in response.json()["detail"]
        empty = merchant_client.post("/v1/webhook_endpoints", json={"url": "https://shop.example.com/hooks",
                                                                     "event_types": []})
        assert empty.status_code == 422 and empty.json()["code"] == "validation_error"

    def test_wildcard_and_repeats(self, merchant):
        merchant_client, _ = merchant
        response = merchant_client.post("/v1/webhook_endpoints", json={
            "url": "https://shop.example.com/hooks", "event_types": ["*", "refund.failed", "*"]})
        assert response.status_code == 201
        assert response.json()["event_types"] == ["*", "refund.failed"]


class TestUrlRules:
    """The production rules (private networks not allowed), on the service directly."""

    @pytest.mark.parametrize("url", [
        "https://127.0.0.1/hook", "https://10.1.2.3/hook", "https://192.168.0.5/hook", "https://169.254.169.254/x",
        "https://[::1]/hook", "https://localhost/hook", "https://db.internal/hook", "https://intranet/hook",
        "http://127.0.0.1:8080/hook", "https://[fd00::1]/hook", "https://2130706433/hook",
        # IPv6 forms a gateway delivers to the IPv4 address inside: NAT64, 6to4, IPv4-mapped.
        "https://[64:ff9b::7f00:1]/hook", "https://[64:ff9b::a01:203]/hook", "https://[2002:7f00:1::]/hook",
        "https://[2002:c0a8:5::1]/hook", "https://[::ffff:127.0.0.1]/hook", "https://[64:ff9b:1::7f00:1]/hook",
        "https://[::7f00:1]/hook", "https://[::ffff:0:7f00:1]/hook",
    ])
    def test_inside_addresses_are_refused_in_production(self, url: str):
        with pytest.raises(service.InvalidWebhookUrl):
            service.check_url(url, allow_private=False)

    @pytest.mark.parametrize("url", [
        "https://shop.example.com/hooks?x=1", "https://93.184.216.34:8443/hook", "https://[2606:4700::1111]/h",
        "https://bücher.example/hook", "https://[64:ff9b::5db8:d822]/hook", "https://[2002:5db8:d822::1]/hook",
    ])
    def test_public_https_is_accepted(self, url: str):
        assert service.check_url(url, allow_private=False) == url

    def test_http_only_to_private_addresses_and_only_when_allowed(self):
        assert service.check_url("http://127.0.0.1:9000/h", allow_private=True)
        assert service.check_url("http://localhost:9000/h", allow_private=True)
        with pytest.raises(service.InvalidWebhookUrl, match="https"):
            service.check_url("http://shop.example.com/h", allow_private=True)
        with pytest.raises(service.InvalidWebhookUrl):
            service.check_url("https://0.0.0.0/h", allow_private=True)


class TestChangeEndpoint:
    def test_patch_changes_only_what_is_given_and_is_audited(self, merchant, engine: Engine):
        merchant_client, _ = merchant
        created = merchant_client.post("/v1/webhook_endpoints", json=endpoint_body(description="d")).json()
        patched = merchant_client.patch(f"/v1/webhook_endpoints/{created['id']}",
                                        json={"enabled": False, "event_types": ["*"]})
        assert patched.status_code == 200, patched.text
        body = patched.json()
        assert body["enabled"] is False and body["event_types"] == ["*"]
        assert body["url"] == created["url"] and body["description"] == "d"
        cleared = merchant_client.patch(f"/v1/webhook_endpoints/{created['id']}", json={"description": None})
        assert cleared.json()["description"] is None
        bad = merchant_client.patch(f"/v1/webhook_endpoints/{created['id']}", json={"url": "ftp://x.example/"})
        assert bad.status_code == 422 and bad.json()["code"] == "invalid_webhook_url"
        null = merchant_client.patch(f"/v1/webhook_endpoints/{created['id']}", json={"enabled": None})
        assert null.status_code == 422
        unknown = merchant_client.patch(f"/v1/webhook_endpoints/{created['id']}", json={"event_types": ["x.y"]})
        assert unknown.status_code == 422 and unknown.json()["code"] == "unknown_event_type"
        assert audit_actions(engine, created["id"]) == [
            "webhook_endpoint.create", "webhook_endpoint.update", "webhook_endpoint.update"]

    def test_rotate_secret_shows_a_new_secret_once(self, merchant, engine: Engine):
        merchant_client, _ = merchant
        created = merchant_client.post("/v1/webhook_endpoints", json=endpoint_body()).json()
        rotated = merchant_client.post(f"/v1/webhook_endpoints/{created['id']}/rotate_secret")
        assert rotated.status_code == 200, rotated.text
        assert rotated.json()["secret"].startswith("whsec_") and rotated.json()["secret"] != created["secret"]
        assert rotated.json()["previous_secret_expires_at"] is not None
        assert "secret" not in merchant_client.get(f"/v1/webhook_endpoints/{created['id']}").json()
        assert audit_actions(engine, created["id"])[-1] == "webhook_endpoint.rotate_secret"

    def test_delete_hides_the_endpoint(self, merchant, engine: Engine):
        merchant_client, _ = merchant
        created = merchant_client.post("/v1/webhook_endpoints", json=endpoint_body()).json()
        deleted = merchant_client.delete(f"/v1/webhook_endpoints/{created['id']}")
        assert deleted.status_code == 200 and deleted.json() == {"id": created["id"], "deleted": True}
        gone = merchant_client.get(f"/v1/webhook_endpoints/{created['id']}")
        assert gone.status_code == 404 and gone.json()["code"] == "webhook_endpoint_not_found"
        assert merchant_client.get("/v1/webhook_endpoints").json()["data"] == []
        assert merchant_client.delete(f"/v1/webhook_endpoints/{created['id']}").status_code == 404
        assert audit_actions(engine, created["id"])[-1] == "webhook_endpoint.delete"


class TestTenancy:
    def test_another_merchants_endpoint_is_404_everywhere(self, merchant_client_factory, client):
        shop_a, merchant_a = merchant_client_factory("A")
        shop_b, merchant_b = merchant_client_factory("B")
        endpoint = shop_a.post("/v1/webhook_endpoints", json=endpoint_body()).json()
        path = f"/v1/webhook_endpoints/{endpoint['id']}"
        for response in (
            shop_b.get(path), shop_b.patch(path, json={"enabled": False}), shop_b.delete(path),
            shop_b.post(f"{path}/rotate_secret"), shop_b.get(f"{path}/deliveries"),
        ):
            assert response.status_code == 404, response.text
            assert response.json()["code"] == "webhook_endpoint_not_found"
        assert shop_b.get("/v1/webhook_endpoints").json()["data"] == []
        assert shop_b.get(f"/v1/webhook_endpoints?merchant_id={merchant_a}").json()["data"] == []
        naming_a = shop_b.post("/v1/webhook_endpoints", json=endpoint_body(merchant_id=merchant_a))
        assert naming_a.status_code == 404
        # Still there and unchanged for its owner and for the platform.
        assert shop_a.get(path).json()["enabled"] is True
        assert client.get(path).status_code == 200
        assert [e["id"] for e in client.get(f"/v1/webhook_endpoints?merchant_id={merchant_a}").json()["data"]] == [
            endpoint["id"]]
        assert client.get(f"/v1/webhook_endpoints?merchant_id={merchant_b}").json()["data"] == []

    def test_reading_needs_webhooks_read(self, anonymous_client):
        assert anonymous_client.get("/v1/webhook_endpoints").status_code == 401
        assert anonymous_client.get("/v1/events").status_code == 401
