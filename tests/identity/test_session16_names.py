"""A merchant's name is read by people: blank names are refused, spaces around it dropped."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("name", [" ", "   ", "\t\n", ""])
def test_a_blank_name_is_refused_and_nothing_is_made(client, name):
    before = client.get("/v1/merchants").json()["data"]
    answer = client.post("/v1/merchants", json={"name": name})
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "validation_error"
    assert client.get("/v1/merchants").json()["data"] == before


def test_spaces_around_a_name_are_dropped_on_create_and_on_change(client):
    made = client.post("/v1/merchants", json={"name": "  Harbour Books  "})
    assert made.status_code == 201, made.text
    assert made.json()["name"] == "Harbour Books"
    merchant_id = made.json()["id"]
    assert client.patch(f"/v1/merchants/{merchant_id}", json={"name": "   "}).status_code == 422
    changed = client.patch(f"/v1/merchants/{merchant_id}", json={"name": " Harbour Books & Maps "})
    assert changed.status_code == 200, changed.text
    assert changed.json()["name"] == "Harbour Books & Maps"
