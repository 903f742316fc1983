"""A refund or capture whose ``amount`` is an explicit null is refused (422) and changes nothing: only leaving the
field out means "everything" (a client's amount that came out null by mistake refunded the whole payment; the
money tester of session 16)."""

from __future__ import annotations

from tests.payments.support import card_body


def test_a_null_refund_amount_is_refused_and_leaving_it_out_refunds_everything(merchant_client_factory):
    shop, _merchant = merchant_client_factory("Null shop")
    paid = shop.post("/v1/payments", json=card_body(5000)).json()
    refused = shop.post(f"/v1/payments/{paid['id']}/refunds", json={"amount": None})
    assert (refused.status_code, refused.json()["code"]) == (422, "validation_error"), refused.text
    assert shop.get(f"/v1/payments/{paid['id']}").json()["amount_refunded"] == 0
    whole = shop.post(f"/v1/payments/{paid['id']}/refunds", json={})
    assert (whole.status_code, whole.json()["amount"]) == (201, 5000), whole.text


def test_a_null_capture_amount_is_refused(merchant_client_factory):
    shop, _merchant = merchant_client_factory("Null shop")
    held = shop.post("/v1/payments", json=card_body(5000, capture_method="manual")).json()
    refused = shop.post(f"/v1/payments/{held['id']}/capture", json={"amount": None})
    assert (refused.status_code, refused.json()["code"]) == (422, "validation_error"), refused.text
    assert shop.get(f"/v1/payments/{held['id']}").json()["status"] == "requires_capture"
    captured = shop.post(f"/v1/payments/{held['id']}/capture", json={})
    assert captured.json()["amount_captured"] == 5000, captured.text
