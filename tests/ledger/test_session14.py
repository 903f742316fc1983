"""Session 14: what the ledger's OpenAPI document says the writes answer."""

from __future__ import annotations


def _refs(node) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        if "$ref" in node:
            found.add(node["$ref"].rsplit("/", 1)[1])
        for value in node.values():
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


class TestTheWritesAnswersAreDocumented:
    def test_an_account_replayed_is_a_documented_200(self, client, anonymous_client):
        body = {"id": "acct_s14_replay", "type": "asset", "currency": "EUR", "code": "s14"}
        assert client.post("/v1/ledger/accounts", json=body).status_code == 201
        replay = client.post("/v1/ledger/accounts", json=body)
        assert replay.status_code == 200
        operation = anonymous_client.get("/openapi.json").json()["paths"]["/v1/ledger/accounts"]["post"]
        assert _refs(operation["responses"]["200"]["content"]) == {"AccountOut"}
        assert _refs(operation["responses"]["201"]["content"]) == {"AccountOut"}

    def test_a_transfer_replayed_and_a_held_adjustment_are_documented(self, client, anonymous_client):
        for account in ("acct_s14_a", "acct_s14_b"):
            opened = client.post("/v1/ledger/accounts",
                                 json={"id": account, "type": "asset", "currency": "EUR", "code": account})
            assert opened.status_code == 201, opened.text
        transfer = {"id": "tr_s14_replay", "debit_account_id": "acct_s14_a", "credit_account_id": "acct_s14_b",
                    "amount": 1250, "currency": "EUR"}
        assert client.post("/v1/ledger/transfers", json=transfer).status_code == 201
        replay = client.post("/v1/ledger/transfers", json=transfer)
        assert replay.status_code == 200
        assert replay.json()["id"] == "tr_s14_replay"
        responses = anonymous_client.get("/openapi.json").json()["paths"]["/v1/ledger/transfers"]["post"]["responses"]
        assert _refs(responses["200"]["content"]) == {"TransferOut", "BatchOut"}
        assert _refs(responses["202"]["content"]) == {"ApprovalOut"}
