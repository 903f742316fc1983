"""Products and their stock of card codes over HTTP: codes encrypted at rest, never listed,
duplicates refused, changes audited with counts only, other merchants' products unseen."""

from __future__ import annotations

import json

from sqlalchemy import select

from clearhouse.audit.models import AuditEvent
from clearhouse.kit.db import transact
from tests.payments.orders.support import code_rows, make_product, order_body


def audit_events(app, object_id: str) -> list:
    table = AuditEvent.__table__
    return transact(app.state.engine, lambda s: s.execute(
        select(table).where(table.c.object_id == object_id).order_by(table.c.seq)).all())


class TestProducts:
    def test_a_product_shows_its_price_and_empty_stock(self, merchant_client_factory):
        client, merchant_id = merchant_client_factory()
        response = client.post("/v1/products", json={"name": "Gift card 50", "price": {"amount": 5000,
                                                                                         "currency": "CNY"}})
        assert response.status_code == 201, response.text
        product = response.json()
        assert product["id"].startswith("prod_")
        assert product["merchant_id"] == merchant_id
        assert product["price"] == {"amount": 5000, "currency": "CNY"}
        assert product["active"] is True
        assert product["stock"] == {"available": 0, "reserved": 0, "delivered": 0, "defective": 0}
        listed = client.get("/v1/products").json()
        assert [p["id"] for p in listed["data"]] == [product["id"]]

    def test_patch_changes_name_price_and_availability_and_is_audited(self, app, merchant_client_factory):
        client, _ = merchant_client_factory()
        product = make_product(client, [])
        response = client.patch(f"/v1/products/{product['id']}",
                                json={"name": "Key v2", "price": {"amount": 700, "currency": "CNY"}, "active": False})
        assert response.status_code == 200, response.text
        changed = response.json()
        assert (changed["name"], changed["price"]["amount"], changed["active"]) == ("Key v2", 700, False)
        actions = [e.action for e in audit_events(app, product["id"])]
        assert actions == ["orders.product.create", "orders.product.update"]
        unchanged = client.patch(f"/v1/products/{product['id']}", json={})
        assert unchanged.status_code == 200 and unchanged.json()["name"] == "Key v2"
        assert len(audit_events(app, product["id"])) == 2  # nothing changed, nothing audited

    def test_an_inactive_product_is_not_sold(self, merchant_client_factory):
        client, _ = merchant_client_factory()
        product = make_product(client, ["K-1"])
        client.patch(f"/v1/products/{product['id']}", json={"active": False})
        response = client.post("/v1/orders", json=order_body(product["id"]))
        assert response.status_code == 409
        assert response.json()["code"] == "product_inactive"
        assert client.get(f"/v1/products/{product['id']}").json()["stock"]["available"] == 1


class TestCodes:
    def test_codes_are_encrypted_at_rest_and_never_listed(self, app, merchant_client_factory):
        client, _ = merchant_client_factory()
        secret_codes = ["GIFT-1111-2222-3333", "GIFT-4444-5555-6666"]
        product = make_product(client, secret_codes)
        assert product["stock"] == {"available": 2, "reserved": 0, "delivered": 0, "defective": 0}
        rows = code_rows(app, product["id"])
        assert len(rows) == 2
        for row in rows:
            assert row.code_encrypted.startswith("v1.")
            assert all(code not in row.code_encrypted for code in secret_codes)
            assert row.status == "available" and row.order_id is None
        # the ciphertext is bound to its row: decrypting it as another row's fails
        cipher = app.state.cipher
        assert cipher.decrypt(rows[0].code_encrypted, f"product_codes.code:{rows[0].id}") in secret_codes
        everything = json.dumps([client.get(f"/v1/products/{product['id']}").json(), client.get("/v1/products").json()])
        assert all(code not in everything for code in secret_codes)

    def test_an_upload_is_audited_with_its_count_never_its_codes(self, app, merchant_client_factory):
        client, _ = merchant_client_factory()
        product = make_product(client, ["SECRET-AAA", "SECRET-BBB", "SECRET-CCC"])
        upload = [e for e in audit_events(app, product["id"]) if e.action == "orders.product.codes_add"]
        assert len(upload) == 1
        assert '"count":3' in upload[0].changes_json.replace(" ", "")
        assert "SECRET" not in str(tuple(upload[0]))

    def test_a_batch_repeating_a_code_is_refused_whole(self, merchant_client_factory):
        client, _ = merchant_client_factory()
        product = make_product(client, ["A", "B"])
        again = client.post(f"/v1/products/{product['id']}/codes", json={"codes": ["C", "B", "D"]})
        assert again.status_code == 409
        assert again.json()["code"] == "duplicate_code"
        assert again.json()["indexes"] == [1]
        assert "B" not in again.json()["detail"].split()
        within = client.post(f"/v1/products/{product['id']}/codes", json={"codes": ["E", "F", "E"]})
        assert within.status_code == 409
        assert within.json()["indexes"] == [2]
        assert client.get(f"/v1/products/{product['id']}").json()["stock"]["available"] == 2
        ok = client.post(f"/v1/products/{product['id']}/codes", json={"codes": ["C", "D"]})
        assert ok.status_code == 201
        assert ok.json()["added"] == 2 and ok.json()["stock"]["available"] == 4

    def test_the_same_code_may_belong_to_two_products(self, merchant_client_factory):
        client, _ = merchant_client_factory()
        first = make_product(client, ["SHARED"])
        second = make_product(client, ["SHARED"])
        assert first["stock"]["available"] == second["stock"]["available"] == 1

    def test_codes_must_be_text_a_store_can_hold(self, merchant_client_factory):
        client, _ = merchant_client_factory()
        product = make_product(client, [])
        for bad in ('{"codes": []}', '{"codes": [""]}', '{"codes": ["\\ud800"]}', '{"codes": ["a\\u0000b"]}',
                    json.dumps({"codes": ["x" * 257]})):
            response = client.post(f"/v1/products/{product['id']}/codes", content=bad,
                                   headers={"Content-Type": "application/json"})
            assert response.status_code == 422, (bad, response.text)
            assert response.json()["code"] == "validation_error"


class TestTenancy:
    def test_another_merchants_product_is_not_found(self, merchant_client_factory):
        mine, _ = merchant_client_factory("Mine")
        theirs, _ = merchant_client_factory("Theirs")
        product = make_product(mine, ["K-1"])
        assert theirs.get(f"/v1/products/{product['id']}").status_code == 404
        assert theirs.get(f"/v1/products/{product['id']}").json()["code"] == "product_not_found"
        assert theirs.patch(f"/v1/products/{product['id']}", json={"active": False}).status_code == 404
        assert theirs.post(f"/v1/products/{product['id']}/codes", json={"codes": ["X"]}).status_code == 404
        assert theirs.post("/v1/orders", json=order_body(product["id"])).status_code == 404
        assert theirs.get("/v1/products").json()["data"] == []
        assert mine.get(f"/v1/products/{product['id']}").json()["stock"]["available"] == 1

    def test_a_platform_caller_names_the_merchant(self, client, merchant_client_factory):
        _, merchant_id = merchant_client_factory()
        body = {"name": "Key", "price": {"amount": 100, "currency": "CNY"}}
        assert client.post("/v1/products", json=body).json()["code"] == "merchant_required"
        response = client.post("/v1/products", json={**body, "merchant_id": merchant_id})
        assert response.status_code == 201
        assert response.json()["merchant_id"] == merchant_id


class TestProductFields:
    def test_a_card_number_in_a_products_name_is_stored_masked(self, merchant_client_factory):
        """The name is the merchant's free text (data-protection.md, "Free text"): a card number typed
        into it by mistake is never stored, listed or shown whole."""
        client, _ = merchant_client_factory()
        response = client.post("/v1/products", json={"name": "Card 4242 4242 4242 4242 top-up",
                                                     "price": {"amount": 5000, "currency": "CNY"}})
        assert response.status_code == 201, response.text
        product = response.json()
        assert "4242 4242 4242 4242" not in response.text
        assert "4242" in product["name"] and product["name"].startswith("Card ")
        renamed = client.patch(f"/v1/products/{product['id']}", json={"name": "Key for 4111111111111111"})
        assert renamed.status_code == 200, renamed.text
        assert renamed.json()["name"] == "Key for 411111******1111"
        assert "4111111111111111" not in client.get("/v1/products").text

    def test_an_ordinary_name_is_kept_as_sent(self, merchant_client_factory):
        client, _ = merchant_client_factory()
        response = client.post("/v1/products", json={"name": "Steam 100 CNY (code 2026-11)",
                                                     "price": {"amount": 10000, "currency": "CNY"}})
        assert response.json()["name"] == "Steam 100 CNY (code 2026-11)"

    def test_null_is_refused_for_every_field_of_a_patch(self, merchant_client_factory):
        """orders.md: `active` is true or false, anything else 422; null would have meant "unchanged"."""
        client, _ = merchant_client_factory()
        product = make_product(client, [])
        for field in ("name", "price", "active"):
            response = client.patch(f"/v1/products/{product['id']}", json={field: None})
            assert response.status_code == 422, response.text
            problem = response.json()
            assert problem["code"] == "validation_error"
            assert problem["errors"][0]["loc"] == ["body", field]
        assert client.get(f"/v1/products/{product['id']}").json()["active"] is True
