"""Metadata is a note on an account or entry, bounded so it cannot bloat the journal."""

from clearhouse.kit.api import MAX_METADATA_BYTES


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
