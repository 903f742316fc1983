"""Requirements of issue #4 that were built but not really tested, found by an audit:

- a real refund emits ``refund.succeeded`` / ``refund.failed`` into the webhook outbox, in the
  same transaction as the refund (webhooks.md, "The outbox");
- a crash between the channel's yes and our commit, for a payment and for a refund, is
  repaired by the worker with exactly one charge (one refund) at the channel and exactly one
  ledger entry (payments.md, "Not charging twice");
- fee plans: ``refund_fee_policy: none`` and ``refund_cost_bearer: merchant`` on real refunds,
  and the most specific rule winning by method and currency (payments.md, "Fee plans";
  accounting.md, recipe 3);
- a dead or hanging webhook endpoint never slows a payment: nothing is sent inside the
  payment's request (webhooks.md, "Inside: the outbox and the worker").

Everything a merchant does goes through the HTTP API. What the channel did is read from the
sandbox's own store, which is another system (channels.md, "A sandbox is another system"):
it is the witness of how many times anyone was charged or refunded.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from clearhouse.channels.connectors import sandbox
from clearhouse.kit import clock
from clearhouse.kit.settings import Settings
from clearhouse.ledger.chart import account_id
from clearhouse.payments import service as payments
from clearhouse.webhooks import delivery as webhook_delivery
from clearhouse.webhooks import service as webhooks
from tests.conftest import TEST_MASTER_KEY
from tests.payments.support import (
    add_endpoint,
    balances,
    card_body,
    deliveries_of,
    events_of,
    ledger_verifies,
    set_plan,
)
from tests.webhooks.support import refused_url


class LoopbackSettings(Settings):
    """The dead and hanging endpoints below listen on 127.0.0.1 over plain http, which only
    the operator's development switch allows (webhooks.md, "URL rules")."""

    webhook_allow_private_networks: bool = True


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    # A short delivery timeout: the worker's one attempt at a hanging endpoint ends quickly.
    return LoopbackSettings(database_url=database_url, master_key=TEST_MASTER_KEY, master_key_file=None,
                            sandbox_dir=tmp_path / "sandbox", webhook_timeout_seconds=0.5)


class SimulatedCrash(Exception):
    """The process dies here: nothing of the transaction it interrupts is committed."""


def crash(*args: Any, **kwargs: Any) -> str:
    """Put in place of the function that applies a channel's answer: the answer is never recorded."""
    raise SimulatedCrash


# ------------------------------------------------------------------------------ helpers


def same_object(event_data: dict[str, Any], shown: dict[str, Any]) -> None:
    """The event's ``data`` is the object as the API shows it: the same fields and values, the
    times the same instants (their spelling differs: see ``TestEventDataTimes``)."""
    assert event_data.keys() == shown.keys()
    for key, value in shown.items():
        if key in ("created_at", "updated_at"):
            assert datetime.fromisoformat(event_data[key]) == datetime.fromisoformat(value), key
        else:
            assert event_data[key] == value, key




def only_payment(shop) -> dict[str, Any]:
    """The merchant's one payment, with its timeline (after a request that crashed, its id is
    not in any answer)."""
    listed = shop.get("/v1/payments").json()["data"]
    assert len(listed) == 1, listed
    return shop.get(f"/v1/payments/{listed[0]['id']}").json()


def channel_operations(app, channel: str, payment_id: str, kind: str) -> list[dict[str, Any]]:
    """What the channel holds for our payment (``kind`` ``payment``: charges and
    authorizations; ``refund``: refunds), read from its own store."""
    with app.state.channels[channel].store.read() as connection:
        rows = connection.execute("SELECT * FROM operations WHERE payment_id = ? AND kind = ? ORDER BY created_at",
                                  (payment_id, kind)).fetchall()
    return [dict(row) for row in rows]


def channel_movements(app, channel: str, payment_id: str, type_: str) -> list[dict[str, Any]]:
    """The money the channel moved for our payment (``charge``, ``capture`` or ``refund``): the
    lines its statement will list."""
    with app.state.channels[channel].store.read() as connection:
        rows = connection.execute(
            "SELECT m.* FROM movements m JOIN operations o ON o.reference = m.reference"
            " WHERE o.payment_id = ? AND m.type = ? ORDER BY m.id", (payment_id, type_)).fetchall()
    return [dict(row) for row in rows]


def ledger_lines(client, name: str, currency: str = "CNY") -> list[dict[str, Any]]:
    """Every posting on a named account (accounting.md's names), oldest first, by the ledger API."""
    response = client.get(f"/v1/ledger/accounts/{account_id(name, currency)}/entries", params={"limit": 500})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def postings_of(client, transfer_id: str) -> dict[tuple[str, str], int]:
    """(account id, direction) -> amount, of one ledger entry."""
    response = client.get(f"/v1/ledger/transfers/{transfer_id}")
    assert response.status_code == 200, response.text
    entry = response.json()
    assert entry["status"] == "posted"
    return {(p["account_id"], p["direction"]): p["amount"] for p in entry["postings"]}


# ------------------------------------------------------------------------------ 1. refund events


class TestRefundEvents:
    """Refunds made through the API put their own events in the outbox (not emitted by hand)."""

    def test_a_refund_the_channel_takes_emits_exactly_one_refund_succeeded(self, app, merchant_client_factory):
        shop, merchant_id = merchant_client_factory()
        on_success = add_endpoint(shop, ["refund.succeeded"])
        on_failure = add_endpoint(shop, ["refund.failed"])
        payment = shop.post("/v1/payments", json=card_body(10000)).json()
        assert payment["status"] == "succeeded"

        response = shop.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 3000, "reason": "damaged"})
        assert response.status_code == 201, response.text
        refund = response.json()
        assert refund["status"] == "succeeded"

        [event] = events_of(shop, "refund.succeeded")
        assert event["merchant_id"] == merchant_id
        # The event carries the refund as the API shows it, as it was committed.
        same_object(event["data"], shop.get(f"/v1/refunds/{refund['id']}").json())
        assert event["data"]["payment_id"] == payment["id"]
        assert (event["data"]["amount"], event["data"]["fee_refunded"]) == (3000, 18)
        assert event["data"]["ledger_transfer_id"] == f"tr_{refund['id']}"
        assert events_of(shop, "refund.failed") == []
        # One pending delivery to the endpoint that asked for it; nothing to the other.
        [queued] = deliveries_of(shop, on_success)
        assert (queued["event_id"], queued["event_type"], queued["status"]) == (event["id"], "refund.succeeded",
                                                                                "pending")
        assert deliveries_of(shop, on_failure) == []
        ledger_verifies(app)

    def test_a_refund_the_channel_declines_emits_refund_failed(self, app, client, merchant_client_factory):
        shop, _ = merchant_client_factory()
        on_success = add_endpoint(shop, ["refund.succeeded"])
        on_failure = add_endpoint(shop, ["refund.failed"])
        payment = shop.post("/v1/payments", json=card_body(10000)).json()
        # The merchant already gave the whole sum back in the acquirer's own dashboard, outside
        # Clearhouse: the channel refuses ours (channels.md, refusal `refund_exceeds_captured`).
        card = app.state.channels["sandbox_card"]
        outside = card.refund(payment["attempts"][0]["id"], "re_in_the_acquirers_dashboard", 10000, "CNY")
        assert outside.status == "refunded"

        response = shop.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 4000})
        assert response.status_code == 201, response.text
        refund = response.json()
        assert (refund["status"], refund["failure_code"]) == ("failed", "refund_exceeds_captured")

        [event] = events_of(shop, "refund.failed")
        same_object(event["data"], shop.get(f"/v1/refunds/{refund['id']}").json())
        assert event["data"]["failure_code"] == "refund_exceeds_captured"
        assert event["data"]["ledger_transfer_id"] is None
        assert events_of(shop, "refund.succeeded") == []
        [queued] = deliveries_of(shop, on_failure)
        assert (queued["event_id"], queued["status"]) == (event["id"], "pending")
        assert deliveries_of(shop, on_success) == []
        # Nothing was given back by us: no entry, nothing refunded on the payment.
        assert client.get(f"/v1/ledger/transfers/tr_{refund['id']}").status_code == 404
        assert shop.get(f"/v1/payments/{payment['id']}").json()["amount_refunded"] == 0
        ledger_verifies(app)

    def test_a_refund_the_channel_never_takes_fails_after_three_days_with_refund_failed(
            self, app, merchant_client_factory):
        shop, _ = merchant_client_factory()
        on_failure = add_endpoint(shop, ["refund.failed"])
        payment = shop.post("/v1/payments", json=card_body(10000)).json()
        app.state.channels["sandbox_card"].faults = sandbox.FaultProfile(error_rate=1.0)  # fails without acting

        refund = shop.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 2500}).json()
        assert refund["status"] == "pending"
        assert events_of(shop, "refund.failed") == []  # pending is not final: no event yet
        runtime = payments.Runtime.of(app)
        with clock.frozen(clock.now() + payments.REFUND_RESEND_FOR + timedelta(minutes=1)):
            assert payments.resolve_pending_refunds(runtime, older_than_seconds=-1) == 1

        refund = shop.get(f"/v1/refunds/{refund['id']}").json()
        assert (refund["status"], refund["failure_code"]) == ("failed", "channel_never_accepted")
        [event] = events_of(shop, "refund.failed")
        same_object(event["data"], refund)
        assert [d["event_id"] for d in deliveries_of(shop, on_failure)] == [event["id"]]
        assert channel_operations(app, "sandbox_card", payment["id"], "refund") == []
        ledger_verifies(app)

    def test_the_refund_and_its_event_commit_together(self, app, client, merchant_client_factory, monkeypatch):
        shop, merchant_id = merchant_client_factory()
        on_success = add_endpoint(shop, ["refund.succeeded"])
        payment = shop.post("/v1/payments", json=card_body(10000)).json()
        real_emit = webhooks.emit

        def emit_then_crash(session, **event: Any) -> str:
            event_id = real_emit(session, **event)
            if event["event_type"].startswith("refund."):
                raise SimulatedCrash  # after the event was written, before the commit
            return event_id

        monkeypatch.setattr(webhooks, "emit", emit_then_crash)
        crashed = shop.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 3000})
        assert crashed.status_code == 500
        monkeypatch.undo()

        # Neither the refund's outcome nor its event was committed: both or neither.
        [refund] = shop.get(f"/v1/payments/{payment['id']}/refunds").json()["data"]
        assert refund["status"] == "pending"
        assert events_of(shop, "refund.succeeded") == []
        assert deliveries_of(shop, on_success) == []
        assert client.get(f"/v1/ledger/transfers/tr_{refund['id']}").status_code == 404
        assert balances(app, merchant_id)["merchant"] == 9940

        # The worker learns the channel's answer and applies it: the outcome and one event, together.
        assert payments.resolve_pending_refunds(payments.Runtime.of(app), older_than_seconds=-1) == 1
        refund = shop.get(f"/v1/refunds/{refund['id']}").json()
        assert refund["status"] == "succeeded"
        [event] = events_of(shop, "refund.succeeded")
        same_object(event["data"], refund)
        assert [d["event_id"] for d in deliveries_of(shop, on_success)] == [event["id"]]
        assert balances(app, merchant_id)["merchant"] == 9940 - 2982
        ledger_verifies(app)


class TestEventDataTimes:
    """An event's ``data`` is the object "as the API shows it" (webhooks.md), times included."""

    def test_event_data_spells_times_as_the_api_does(self, merchant_client_factory):
        shop, _ = merchant_client_factory()
        payment = shop.post("/v1/payments", json=card_body(10000)).json()
        refund = shop.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 3000}).json()
        [paid] = events_of(shop, "payment.succeeded")
        [refunded] = events_of(shop, "refund.succeeded")
        assert refunded["data"] == shop.get(f"/v1/refunds/{refund['id']}").json()
        assert paid["data"]["created_at"] == payment["created_at"]


# ------------------------------------------------------------------------------ 2. crash repair


class TestCrashRepairChargesOnce:
    """The process dies after the channel said yes and before our transaction committed; the
    worker repairs it. The channel is then asked how many times it charged (or refunded)."""

    def test_a_payment_is_repaired_with_one_charge_at_the_channel_and_one_ledger_entry(
            self, app, client, merchant_client_factory, monkeypatch):
        shop, merchant_id = merchant_client_factory()

        monkeypatch.setattr(payments, "apply_result", crash)  # step 3 of payments.md never commits
        crashed = shop.post("/v1/payments", json=card_body(4200))
        assert crashed.status_code == 500
        monkeypatch.undo()

        payment = only_payment(shop)
        assert payment["status"] == "processing"
        assert [a["status"] for a in payment["attempts"]] == ["started"]
        assert len(channel_movements(app, "sandbox_card", payment["id"], "charge")) == 1  # the channel charged

        runtime = payments.Runtime.of(app)
        assert payments.resolve_stuck(runtime, older_than_seconds=-1) == 1
        assert payments.resolve_stuck(runtime, older_than_seconds=-1) == 0
        payment = shop.get(f"/v1/payments/{payment['id']}").json()

        # The channel: one charge of 42.00 for this payment, whatever attempts were made, under
        # the reference of the one attempt, which it reports approved.
        charges = channel_movements(app, "sandbox_card", payment["id"], "charge")
        assert [(m["reference"], m["amount"]) for m in charges] == [(payment["attempts"][0]["id"], 4200)]
        [operation] = channel_operations(app, "sandbox_card", payment["id"], "payment")
        assert (operation["status"], operation["captured_amount"]) == ("approved", 4200)
        assert app.state.channels["sandbox_card"].query(payment["attempts"][0]["id"]).captured_amount == 4200
        assert payment["status"] == "succeeded"
        assert [a["status"] for a in payment["attempts"]] == ["approved"]

        # The ledger: one entry for the payment (recipe 1), and one line on the merchant's account.
        assert payment["ledger_transfer_id"] == f"tr_{payment['id']}"
        assert postings_of(client, payment["ledger_transfer_id"])[
            (account_id(f"merchant_pending:{merchant_id}", "CNY"), "credit")] == 4200 - 25
        lines = ledger_lines(client, f"merchant_pending:{merchant_id}")
        assert [(line["transfer_id"], line["amount"]) for line in lines] == [(f"tr_{payment['id']}", 4200 - 25)]
        assert balances(app, merchant_id)["merchant"] == 4200 - 25
        assert len(events_of(shop, "payment.succeeded")) == 1
        ledger_verifies(app)

    def test_a_refund_is_repaired_with_one_refund_at_the_channel_and_one_ledger_entry(
            self, app, client, merchant_client_factory, monkeypatch):
        shop, merchant_id = merchant_client_factory()
        payment = shop.post("/v1/payments", json=card_body(10000)).json()

        monkeypatch.setattr(payments, "apply_refund_result", crash)  # the channel refunded; we never recorded it
        crashed = shop.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 3000})
        assert crashed.status_code == 500
        monkeypatch.undo()

        [refund] = shop.get(f"/v1/payments/{payment['id']}/refunds").json()["data"]
        assert refund["status"] == "pending"
        assert len(channel_operations(app, "sandbox_card", payment["id"], "refund")) == 1  # the channel refunded

        runtime = payments.Runtime.of(app)
        assert payments.resolve_pending_refunds(runtime, older_than_seconds=-1) == 1
        assert payments.resolve_pending_refunds(runtime, older_than_seconds=-1) == 0
        refund = shop.get(f"/v1/refunds/{refund['id']}").json()

        # The channel: one refund of 30.00, under our refund id; its total for the payment says the same.
        refunded = channel_movements(app, "sandbox_card", payment["id"], "refund")
        assert [(m["reference"], m["amount"]) for m in refunded] == [(refund["id"], -3000)]
        [operation] = channel_operations(app, "sandbox_card", payment["id"], "refund")
        assert (operation["amount"], operation["status"]) == (3000, "refunded")
        assert app.state.channels["sandbox_card"].query(payment["attempts"][0]["id"]).refunded_amount == 3000
        assert (refund["status"], refund["fee_refunded"]) == ("succeeded", 18)

        # The ledger: the payment's entry and one refund entry (recipe 3), nothing more.
        lines = ledger_lines(client, f"merchant_pending:{merchant_id}")
        assert [(line["transfer_id"], line["direction"], line["amount"]) for line in lines] == [
            (f"tr_{payment['id']}", "credit", 9940), (f"tr_{refund['id']}", "debit", 2982)]
        assert shop.get(f"/v1/payments/{payment['id']}").json()["amount_refunded"] == 3000
        assert balances(app, merchant_id) == {"clearing": 9962 - 3000, "cost": 38, "merchant": 9940 - 2982,
                                              "fees": 60 - 18}
        ledger_verifies(app)


class TestRetryAfterACrash:
    """The merchant who got a 500 retries with the same ``Idempotency-Key``: api.md and
    kit/idempotency.py promise the retry finds the object the first request made."""

    def test_a_payment_retried_after_a_500_is_not_charged_twice(self, app, merchant_client_factory, monkeypatch):
        shop, _ = merchant_client_factory()

        body = card_body(4200, merchant_order_id="1001")
        monkeypatch.setattr(payments, "apply_result", crash)  # the channel charged; step 3 never commits
        assert shop.post("/v1/payments", json=body, headers={"Idempotency-Key": "order-1001"}).status_code == 500
        monkeypatch.undo()
        first = only_payment(shop)

        retried = shop.post("/v1/payments", json=body, headers={"Idempotency-Key": "order-1001"})
        assert payments.resolve_stuck(payments.Runtime.of(app), older_than_seconds=-1) >= 1
        listed = shop.get("/v1/payments").json()["data"]
        charges = [m for p in listed for m in channel_movements(app, "sandbox_card", p["id"], "charge")]
        assert len(charges) == 1  # the customer's card, charged once
        assert [p["id"] for p in listed] == [first["id"]]
        assert (retried.status_code, retried.json()["id"]) == (201, first["id"])
        ledger_verifies(app)

    def test_a_refund_retried_after_a_500_is_not_refunded_twice(self, app, merchant_client_factory, monkeypatch):
        shop, _ = merchant_client_factory()
        payment = shop.post("/v1/payments", json=card_body(10000)).json()

        refunds = f"/v1/payments/{payment['id']}/refunds"
        monkeypatch.setattr(payments, "apply_refund_result", crash)  # the channel refunded; we never recorded it
        assert shop.post(refunds, json={"amount": 3000}, headers={"Idempotency-Key": "refund-1"}).status_code == 500
        monkeypatch.undo()
        [first] = shop.get(refunds).json()["data"]

        retried = shop.post(refunds, json={"amount": 3000}, headers={"Idempotency-Key": "refund-1"})
        payments.resolve_pending_refunds(payments.Runtime.of(app), older_than_seconds=-1)
        at_the_channel = channel_operations(app, "sandbox_card", payment["id"], "refund")
        assert [r["reference"] for r in at_the_channel] == [first["id"]]  # given back once
        assert shop.get(f"/v1/payments/{payment['id']}").json()["amount_refunded"] == 3000
        assert (retried.status_code, retried.json()["id"]) == (201, first["id"])
        ledger_verifies(app)


# ------------------------------------------------------------------------------ 3. fee plans


class TestRefundFeePolicies:
    """Recipe 3 with the plan's two refund switches, on refunds made through the API."""

    def test_refund_fee_policy_none_keeps_the_whole_fee(self, app, client, merchant_client_factory):
        shop, merchant_id = merchant_client_factory()
        set_plan(client, merchant_id, [{"percent": "2.9", "fixed": 30, "refund_fee_policy": "none"}])
        payment = shop.post("/v1/payments", json=card_body(10000)).json()
        # Sells 100.00, fee 2.9 % + 0.30 = 3.20, the card channel costs 0.38.
        assert payment["fees"][0]["amount"] == 320
        assert balances(app, merchant_id) == {"clearing": 9962, "cost": 38, "merchant": 9680, "fees": 320}

        first = shop.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 3000}).json()
        second = shop.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 2000}).json()
        assert [(r["status"], r["fee_refunded"]) for r in (first, second)] == [("succeeded", 0), ("succeeded", 0)]
        # Refund 30.00: Dr merchant 30.00, Cr clearing 30.00; fee_revenue is not touched.
        assert postings_of(client, first["ledger_transfer_id"]) == {
            (account_id(f"merchant_pending:{merchant_id}", "CNY"), "debit"): 3000,
            (account_id("channel_clearing:sandbox_card", "CNY"), "credit"): 3000,
        }
        # Refunded 50.00 in all: the merchant gives back all of it, the platform keeps its 3.20.
        assert balances(app, merchant_id) == {"clearing": 9962 - 5000, "cost": 38, "merchant": 9680 - 5000,
                                              "fees": 320}
        ledger_verifies(app)

    def test_the_merchant_bears_the_channel_fee_and_gets_no_fee_back(self, app, client, merchant_client_factory):
        shop, merchant_id = merchant_client_factory()
        # The example plan of payments.md: 1 %, fee kept on refunds, channel's kept fee charged to the merchant.
        set_plan(client, merchant_id, [{"percent": "1", "refund_fee_policy": "none", "refund_cost_bearer": "merchant"}])
        payment = shop.post("/v1/payments", json=card_body(10000)).json()
        assert payment["fees"][0]["amount"] == 100
        assert balances(app, merchant_id) == {"clearing": 9962, "cost": 38, "merchant": 9900, "fees": 100}

        first = shop.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 3000}).json()
        assert (first["status"], first["fee_refunded"]) == ("succeeded", 0)
        # The channel keeps 0.11 of its 0.38 on 30.00 (half-up of 0.114): Dr merchant 30.11,
        # Cr clearing 30.00, Cr fee_revenue 0.11.
        assert postings_of(client, first["ledger_transfer_id"]) == {
            (account_id(f"merchant_pending:{merchant_id}", "CNY"), "debit"): 3011,
            (account_id("channel_clearing:sandbox_card", "CNY"), "credit"): 3000,
            (account_id("fee_revenue", "CNY"), "credit"): 11,
        }
        assert balances(app, merchant_id) == {"clearing": 6962, "cost": 38, "merchant": 9900 - 3011, "fees": 111}

        # Cumulative: 50.00 refunded carries 0.19 of the channel's fee, 0.11 was charged already.
        second = shop.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 2000}).json()
        assert second["fee_refunded"] == 0
        assert balances(app, merchant_id) == {"clearing": 4962, "cost": 38, "merchant": 9900 - 3011 - 2008,
                                              "fees": 119}
        ledger_verifies(app)


class TestFeeRuleSelection:
    """The most specific rule wins: the merchant's before the platform's, an exact method and
    currency before a wildcard (payments.md, "Fee plans")."""

    PLAN = [{"method": "card", "currency": "CNY", "percent": "2.9", "fixed": 30, "minimum": 50},
            {"percent": "1"}]

    def test_card_in_cny_takes_the_specific_rule_everything_else_the_wildcard(self, app, client,
                                                                               merchant_client_factory):
        shop, merchant_id = merchant_client_factory()
        set_plan(client, merchant_id, self.PLAN)
        stored = shop.get(f"/v1/fee_plans/{merchant_id}").json()["rules"]
        assert {(r["method"], r["currency"], r["percent"], r["fixed"], r["minimum"]) for r in stored} == {
            ("card", "CNY", "2.9", 30, 50), (None, None, "1", 0, 0)}
        assert len(stored) == 2

        card_cny = shop.post("/v1/payments", json=card_body(10000)).json()
        card_usd = shop.post("/v1/payments", json=card_body(10000, currency="USD")).json()
        alipay = shop.post("/v1/payments", json={"amount": 10000, "currency": "CNY", "method": "alipay"}).json()
        wallet = shop.post("/v1/wallets", json={"customer_id": "cus_1", "currency": "CNY"}).json()
        top_up = shop.post(f"/v1/wallets/{wallet['id']}/top_ups", json={
            "amount": 5000, "method": "card", "payment_details": card_body()["payment_details"]}).json()
        from_wallet = shop.post("/v1/payments", json={"amount": 5000, "currency": "CNY", "method": "wallet",
                                                       "customer": {"id": "cus_1"}}).json()

        def rule_of(payment: dict[str, Any]) -> tuple[str, int, int, int]:
            [fee] = payment["fees"]
            return fee["percent"], fee["fixed"], fee["minimum"], fee["amount"]

        assert rule_of(card_cny) == ("2.9", 30, 50, 320)  # the specific rule: 2.90 + 0.30
        assert rule_of(card_usd) == ("1", 0, 0, 100)  # another currency: the wildcard
        assert rule_of(alipay) == ("1", 0, 0, 100)  # another method, priced while the QR code waits
        assert rule_of(from_wallet) == ("1", 0, 0, 50)  # the wallet: the wildcard
        assert top_up["fees"] == []  # a top-up is no sale: no fee at all
        assert [p["status"] for p in (card_cny, card_usd, alipay, from_wallet)] == [
            "succeeded", "succeeded", "requires_action", "succeeded"]
        # The merchant nets 96.80 by card in CNY and 49.50 from the wallet; 99.00 in USD.
        assert balances(app, merchant_id)["merchant"] == 9680 + 4950
        assert balances(app, merchant_id, currency="USD")["merchant"] == 9900
        ledger_verifies(app)

    def test_the_merchants_wildcard_beats_the_platforms_specific_rule(self, app, client, merchant_client_factory):
        shop, merchant_id = merchant_client_factory("Has a plan")
        other, _ = merchant_client_factory("Has none")
        set_plan(client, "default", [{"method": "card", "currency": "CNY", "percent": "5"}])
        set_plan(client, merchant_id, [{"percent": "1"}])

        assert shop.post("/v1/payments", json=card_body(10000)).json()["fees"][0]["amount"] == 100
        assert other.post("/v1/payments", json=card_body(10000)).json()["fees"][0]["amount"] == 500
        # Neither plan has a rule for card in USD: the built-in 0.6 %.
        assert other.post("/v1/payments", json=card_body(10000, currency="USD")).json()["fees"][0]["amount"] == 60
        ledger_verifies(app)


# ------------------------------------------------------------------------------ 4. dead endpoints


class SilentEndpoint:
    """A TCP listener on 127.0.0.1 that accepts every connection and never answers a byte: a
    merchant server that hangs. It counts the connections it accepted."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.held.append(connection)  # held open, never read, never answered

    @property
    def accepted(self) -> int:
        return len(self.held)

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        for connection in self.held:
            connection.close()
        self.listener.close()


@pytest.fixture
def silent_endpoint() -> Iterator[SilentEndpoint]:
    endpoint = SilentEndpoint()
    yield endpoint
    endpoint.close()


def run_webhook_worker(app) -> int:
    """One tick of the worker's ``webhooks.deliver_due``; the number of attempts it made."""
    return webhook_delivery.deliver_due(app.state.engine, app.state.settings, app.state.cipher)


class TestDeadEndpointNeverSlowsPayments:
    """No delivery is tried inside a payment's request: its event waits in the outbox for the
    worker, so what the merchant's server does cannot reach the payment."""

    def test_a_refused_endpoint_gets_nothing_until_the_worker_runs(self, app, merchant_client_factory):
        shop, merchant_id = merchant_client_factory()
        dead = add_endpoint(shop, ["*"], url=refused_url())

        response = shop.post("/v1/payments", json=card_body(10000))
        assert response.status_code == 201, response.text
        payment = response.json()
        assert payment["status"] == "succeeded"
        [event] = events_of(shop, "payment.succeeded")
        assert event["data"]["id"] == payment["id"]
        [queued] = deliveries_of(shop, dead)
        # In the outbox, never tried: no attempt in the log.
        assert (queued["event_id"], queued["status"], queued["attempt_count"], queued["attempts"]) == (
            event["id"], "pending", 0, [])
        assert balances(app, merchant_id)["merchant"] == 9940

        # The worker tries it, fails, and schedules the retry; the payment is untouched.
        assert run_webhook_worker(app) == 1
        [tried] = deliveries_of(shop, dead)
        assert (tried["status"], tried["attempt_count"], len(tried["attempts"])) == ("pending", 1, 1)
        assert tried["attempts"][0]["status_code"] is None and tried["attempts"][0]["error"]
        assert shop.get(f"/v1/payments/{payment['id']}").json()["status"] == "succeeded"
        ledger_verifies(app)

    def test_a_hanging_endpoint_is_never_connected_to_during_a_payment(self, app, merchant_client_factory,
                                                                       live_server, silent_endpoint):
        shop, merchant_id = merchant_client_factory()
        hanging = add_endpoint(shop, ["*"], url=silent_endpoint.url())

        # Real HTTP to a real server, as a merchant's integration sends it.
        with httpx.Client(base_url=live_server, auth=shop.auth, timeout=30) as merchant:
            response = merchant.post("/v1/payments", json=card_body(10000))
            assert response.status_code == 201, response.text
            payment = response.json()
            assert payment["status"] == "succeeded"
            refund = merchant.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 1000})
            assert refund.status_code == 201, refund.text
            assert refund.json()["status"] == "succeeded"

        # Both events wait in the outbox, and nobody has connected to the merchant's server.
        assert silent_endpoint.accepted == 0
        queued = deliveries_of(shop, hanging)
        assert sorted(d["event_type"] for d in queued) == ["payment.succeeded", "refund.succeeded"]
        assert all((d["status"], d["attempt_count"], d["attempts"]) == ("pending", 0, []) for d in queued)

        # Only the worker's delivery connects; it times out and schedules the retries.
        assert run_webhook_worker(app) == 2
        assert silent_endpoint.accepted >= 1
        tried = deliveries_of(shop, hanging)
        assert all((d["status"], d["attempt_count"]) == ("pending", 1) for d in tried)
        assert all("timeout" in d["attempts"][0]["error"] for d in tried)
        assert balances(app, merchant_id)["merchant"] == 9940 - 994
        ledger_verifies(app)
