"""Session 16: the audit event of a transfer written through the API says what moved."""

from __future__ import annotations


def test_the_audit_event_of_a_transfer_names_its_postings(client):
    for account_id in ("acct_a16", "acct_b16"):
        created = client.post("/v1/ledger/accounts", json={"id": account_id, "type": "asset", "currency": "EUR",
                                                           "code": account_id})
        assert created.status_code == 201, created.text
    answer = client.post("/v1/ledger/transfers", json={"id": "tr_s16", "debit_account_id": "acct_a16",
                                                       "credit_account_id": "acct_b16", "amount": 12345,
                                                       "currency": "EUR", "code": "manual"})
    assert answer.status_code == 201, answer.text
    events = client.get("/v1/audit/events", params={"action": "ledger.transfer.create"}).json()["data"]
    assert [e["object_id"] for e in events] == ["tr_s16"]
    changes = events[0]["changes"]
    assert changes["pending"] is False and changes["entry_code"] == "manual"
    assert sorted((p["account_id"], p["direction"], p["amount"], p["currency"]) for p in changes["postings"]) == [
        ("acct_a16", "debit", 12345, "EUR"), ("acct_b16", "credit", 12345, "EUR")]
    # A replay of the same transfer writes no second event.
    again = client.post("/v1/ledger/transfers", json={"id": "tr_s16", "debit_account_id": "acct_a16",
                                                      "credit_account_id": "acct_b16", "amount": 12345,
                                                      "currency": "EUR", "code": "manual"})
    assert again.status_code == 200, again.text
    assert len(client.get("/v1/audit/events", params={"action": "ledger.transfer.create"}).json()["data"]) == 1


def test_a_large_amount_stays_an_integer_in_the_audit_trail(client):
    """1000000000009 passes the Luhn check: the audit trail's masking turned it into "100000***0009"."""
    for account_id in ("acct_c16", "acct_d16"):
        client.post("/v1/ledger/accounts", json={"id": account_id, "type": "asset", "currency": "JPY",
                                                 "code": account_id})
    answer = client.post("/v1/ledger/transfers", json={"id": "tr_s16_big", "debit_account_id": "acct_c16",
                                                       "credit_account_id": "acct_d16", "amount": 1000000000009,
                                                       "currency": "JPY"})
    assert answer.status_code == 201, answer.text
    event = client.get("/v1/audit/events", params={"action": "ledger.transfer.create"}).json()["data"][0]
    assert [p["amount"] for p in event["changes"]["postings"]] == [1000000000009, 1000000000009]
