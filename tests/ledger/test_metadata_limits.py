"""Metadata is a note on an account or entry, bounded so it cannot bloat the journal."""

import pytest

from clearhouse.kit.api import MAX_METADATA_BYTES, MAX_METADATA_DEPTH


class TestMetadataSize:
    def test_metadata_up_to_the_limit_is_kept_exactly(self, client):
        note = {"note": "x" * (MAX_METADATA_BYTES - 20)}
        response = client.post(
            "/v1/ledger/accounts", json={"type": "asset", "currency": "CNY", "code": "bank:B", "metadata": note}
        )
        assert response.status_code == 201
        assert response.json()["metadata"] == note

    def test_metadata_over_the_limit_is_422_and_nothing_is_created(self, client):
        note = {"note": "x" * MAX_METADATA_BYTES}
        response = client.post(
            "/v1/ledger/accounts", json={"type": "asset", "currency": "CNY", "code": "bank:B", "metadata": note}
        )
        assert response.status_code == 422
        assert response.json()["code"] == "validation_error"
        assert client.get("/v1/ledger/accounts").json()["data"] == []


def _nested(depth: int) -> dict:
    """A metadata object whose objects and lists nest ``depth`` deep (the object itself counted)."""
    value: object = "leaf"
    for level in range(depth - 1):
        value = {"k": value} if level % 2 else [value]
    return {"note": value}


class TestMetadataDepth:
    def test_metadata_nested_to_the_limit_is_kept(self, client):
        note = _nested(MAX_METADATA_DEPTH)
        response = client.post(
            "/v1/ledger/accounts", json={"type": "asset", "currency": "CNY", "code": "bank:B", "metadata": note}
        )
        assert response.status_code == 201, response.text
        assert response.json()["metadata"] == note

    @pytest.mark.parametrize("depth", [MAX_METADATA_DEPTH + 1, 253, 254, 255])
    def test_deeper_metadata_is_422_and_nothing_is_created(self, client, depth):
        """254 levels passed validation and failed as a 500 in the audit record (session-18 tester)."""
        response = client.post(
            "/v1/ledger/accounts",
            json={"type": "asset", "currency": "CNY", "code": "bank:B", "metadata": _nested(depth)},
        )
        assert (response.status_code, response.json()["code"]) == (422, "validation_error"), response.text
        assert client.get("/v1/ledger/accounts").json()["data"] == []
