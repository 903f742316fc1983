"""Manual ledger adjustments: a person posting to the ledger is held for a second person
(maker-checker); systems with API keys post directly."""

from __future__ import annotations

from tests.ledger.support import balance, open_account, transfer_body


def _accounts(client):
    bank = open_account(client, "asset", code="bank:adjust")
    merchant = open_account(client, "liability", code="merchant:adjust", flags={"debits_must_not_exceed_credits": True})
    return bank, merchant


class TestAPersonsTransferIsHeld:
    def test_a_finance_transfer_waits_for_a_second_person_and_is_written_exactly_as_held(
            self, client, user_client_factory):
        bank, merchant = _accounts(client)
        maker = user_client_factory("finance")
        held = maker.post("/v1/ledger/transfers", json=transfer_body(bank, merchant, 12_345, reference="fix-1"))
        assert held.status_code == 202, held.text
        approval = held.json()
        assert approval["action"] == "ledger.adjustment" and approval["status"] == "pending"
        transfer_id = approval["payload"]["body"]["id"]
        assert transfer_id.startswith("tr_")
        assert balance(client, bank)["posted"] == 0  # nothing moved yet
        assert client.get(f"/v1/ledger/transfers/{transfer_id}").status_code == 404

        refused = maker.post(f"/v1/approvals/{approval['id']}/approve")
        assert refused.status_code == 403 and refused.json()["code"] == "self_approval_refused"

        checker = user_client_factory("admin")
        approved = checker.post(f"/v1/approvals/{approval['id']}/approve")
        assert approved.status_code == 200, approved.text
        assert approved.json()["result"] == {"transfer_ids": [transfer_id]}
        written = client.get(f"/v1/ledger/transfers/{transfer_id}").json()
        assert (written["amount"], written["reference"]) == (12_345, "fix-1")
        assert balance(client, bank)["posted"] == 12_345
        assert balance(client, merchant)["posted"] == 12_345

    def test_a_batch_is_held_whole_and_bad_input_is_refused_before_holding(self, client, user_client_factory):
        bank, merchant = _accounts(client)
        maker = user_client_factory("finance")
        bad = maker.post("/v1/ledger/transfers", json=transfer_body(bank, merchant, -5))
        assert bad.status_code == 422
        assert maker.get("/v1/approvals?status=pending").json()["data"] == []
        batch = {"transfers": [transfer_body(bank, merchant, 100), transfer_body(bank, merchant, 200)], "linked": True}
        held = maker.post("/v1/ledger/transfers", json=batch)
        assert held.status_code == 202, held.text
        approved = user_client_factory("admin").post(f"/v1/approvals/{held.json()['id']}/approve")
        assert approved.status_code == 200, approved.text
        assert len(approved.json()["result"]["transfer_ids"]) == 2
        assert balance(client, bank)["posted"] == 300

    def test_an_adjustment_that_cannot_run_is_refused_before_it_is_held(self, client, user_client_factory):
        bank, merchant = _accounts(client)
        maker = user_client_factory("finance")
        # Debiting the merchant would overdraw it; an unknown account can never be posted to.
        for body, status, code in ((transfer_body(merchant, bank, 500), 409, "insufficient_funds"),
                                   (transfer_body("acct_nope", bank, 5), 422, "account_not_found")):
            refused = maker.post("/v1/ledger/transfers", json=body)
            assert (refused.status_code, refused.json()["code"]) == (status, code), refused.text
        batch = {"transfers": [transfer_body(bank, merchant, 100), transfer_body(merchant, bank, 500)]}
        refused = maker.post("/v1/ledger/transfers", json=batch)
        assert refused.status_code == 422 and refused.json()["code"] == "linked_batch_failed"
        assert maker.get("/v1/approvals?status=pending").json()["data"] == []
        assert balance(client, merchant)["posted"] == 0

    def test_an_adjustment_that_no_longer_fits_is_refused_at_approval_and_stays_pending(
            self, client, user_client_factory):
        bank, merchant = _accounts(client)
        assert client.post("/v1/ledger/transfers", json=transfer_body(bank, merchant, 500)).status_code == 201
        maker = user_client_factory("finance")
        held = maker.post("/v1/ledger/transfers", json=transfer_body(merchant, bank, 500))
        assert held.status_code == 202, held.text  # it fits now
        assert client.post("/v1/ledger/transfers", json=transfer_body(merchant, bank, 100)).status_code == 201
        checker = user_client_factory("admin")
        refused = checker.post(f"/v1/approvals/{held.json()['id']}/approve")
        assert refused.status_code == 409 and refused.json()["code"] == "insufficient_funds", refused.text
        assert checker.get(f"/v1/approvals/{held.json()['id']}").json()["status"] == "pending"
        assert balance(client, merchant)["posted"] == 400
        rejected = checker.post(f"/v1/approvals/{held.json()['id']}/reject", json={"reason": "would overdraw"})
        assert rejected.json()["status"] == "rejected"

    def test_a_held_batch_is_written_whole_or_not_at_all_and_says_so(self, client, user_client_factory):
        bank, merchant = _accounts(client)
        assert client.post("/v1/ledger/transfers", json=transfer_body(bank, merchant, 500)).status_code == 201
        maker = user_client_factory("finance")
        batch = {"transfers": [transfer_body(bank, merchant, 100), transfer_body(merchant, bank, 500)],
                 "linked": False}
        held = maker.post("/v1/ledger/transfers", json=batch)
        assert held.status_code == 202, held.text
        assert client.post("/v1/ledger/transfers", json=transfer_body(merchant, bank, 500)).status_code == 201
        refused = user_client_factory("admin").post(f"/v1/approvals/{held.json()['id']}/approve")
        assert refused.status_code == 422 and refused.json()["code"] == "linked_batch_failed", refused.text
        assert [(r["status"], r["code"]) for r in refused.json()["results"]] == [
            ("failed", "linked_event_failed"), ("failed", "insufficient_funds")]  # nothing says "created"
        assert balance(client, merchant)["posted"] == 0

    def test_a_role_without_ledger_write_cannot_approve(self, client, user_client_factory):
        bank, merchant = _accounts(client)
        held = user_client_factory("finance").post("/v1/ledger/transfers",
                                                   json=transfer_body(bank, merchant, 1)).json()
        operator = user_client_factory("operator")  # may decide approvals, but holds no ledger:write
        refused = operator.post(f"/v1/approvals/{held['id']}/approve")
        assert refused.status_code == 403 and refused.json()["code"] == "forbidden"


class TestSystemsPostDirectly:
    def test_a_platform_key_transfer_is_written_at_once(self, client):
        bank, merchant = _accounts(client)
        response = client.post("/v1/ledger/transfers", json=transfer_body(bank, merchant, 700))
        assert response.status_code == 201
        assert balance(client, bank)["posted"] == 700
