"""Channel failures, as the sandbox rehearses them: declines never fail over, outages and
errors do, a timeout is settled by asking the channel first, and a crash between the
channel's yes and our commit is repaired by the worker without a second charge."""

from __future__ import annotations

import orjson
import pytest

from clearhouse.channels import protocol
from clearhouse.channels.connectors import sandbox
from clearhouse.channels.connectors.sandbox_card import (
    CARD_CHALLENGE,
    CARD_CHANNEL_ERROR,
    CARD_INSUFFICIENT_FUNDS,
    SandboxCard,
)
from clearhouse.kit.db import transact
from clearhouse.payments import service as payments
from tests.conftest import CARD_EXP_YEAR
from tests.payments.support import balances, card_body, ledger_verifies


class BackupCard(SandboxCard):
    """A second card acquirer for failover (another sandbox store, same behaviour)."""

    name = "sandbox_card_backup"


@pytest.fixture
def two_acquirers(client):
    protocol.register(BackupCard.name, BackupCard)
    created = client.post("/v1/routing/rules", json={
        "priority": 1, "method": "card", "channels": ["sandbox_card", BackupCard.name], "strategy": "ordered"})
    assert created.status_code == 201, created.text
    yield
    protocol._FACTORIES.pop(BackupCard.name, None)


def _send_through(client):
    def send(path: str, headers: dict[str, str], body: bytes) -> int:
        return client.post(path, content=body, headers=headers).status_code
    return send


class TestDeclines:
    def test_a_hard_decline_fails_without_trying_another_channel(self, app, merchant_client_factory, two_acquirers):
        shop, merchant_id = merchant_client_factory()
        payment = shop.post("/v1/payments", json=card_body(1000, number=CARD_INSUFFICIENT_FUNDS)).json()
        assert payment["status"] == "failed"
        assert payment["failure_code"] == "insufficient_funds"
        assert [a["channel"] for a in payment["attempts"]] == ["sandbox_card"]
        assert balances(app, merchant_id)["merchant"] == 0
        ledger_verifies(app)


class TestFailover:
    def test_an_outage_fails_over_to_the_next_channel(self, app, merchant_client_factory, two_acquirers):
        shop, merchant_id = merchant_client_factory()
        payment = shop.post("/v1/payments", json=card_body(sandbox.AMOUNT_OUTAGE)).json()
        # The magic amount is refused by every sandbox: both tried, both unavailable, nobody charged.
        assert [a["status"] for a in payment["attempts"]] == ["unavailable", "unavailable"]
        assert payment["status"] == "failed"
        assert payment["failure_code"] == "channels_unavailable"

    def test_a_channel_error_fails_over_and_the_second_channel_succeeds(self, app, merchant_client_factory,
                                                                        two_acquirers):
        shop, merchant_id = merchant_client_factory()
        app.state.channels["sandbox_card"].faults = sandbox.FaultProfile(error_rate=1.0)
        payment = shop.post("/v1/payments", json=card_body(5000)).json()
        assert payment["status"] == "succeeded"
        assert [(a["channel"], a["status"]) for a in payment["attempts"]] == [
            ("sandbox_card", "error"), (BackupCard.name, "approved")]
        assert "failover" in payment["attempts"][1]["reason"]
        assert balances(app, merchant_id, channel=BackupCard.name)["merchant"] == 5000 - 30
        ledger_verifies(app)

    def test_a_timeout_the_channel_acted_on_is_settled_by_query_not_retried(self, app, merchant_client_factory,
                                                                            two_acquirers):
        shop, merchant_id = merchant_client_factory()
        payment = shop.post("/v1/payments", json=card_body(sandbox.AMOUNT_TIMEOUT_AFTER_ACTING)).json()
        assert payment["status"] == "succeeded"
        assert [a["channel"] for a in payment["attempts"]] == ["sandbox_card"]
        ledger_verifies(app)

    def test_a_timeout_the_channel_never_acted_on_fails_over(self, app, merchant_client_factory, two_acquirers):
        shop, _ = merchant_client_factory()
        payment = shop.post("/v1/payments", json=card_body(sandbox.AMOUNT_TIMEOUT_BEFORE_ACTING)).json()
        assert payment["attempts"][0]["status"] == "timeout"
        assert len(payment["attempts"]) == 2

    def test_an_open_circuit_skips_the_channel(self, app, merchant_client_factory, two_acquirers):
        shop, _ = merchant_client_factory()
        breaker = app.state.router.breaker("sandbox_card", False)  # the test key's payments: test mode's circuit
        for _ in range(20):
            breaker.record_failure()
        payment = shop.post("/v1/payments", json=card_body(700, number="5555555555554444")).json()
        assert payment["status"] == "succeeded"
        assert [a["channel"] for a in payment["attempts"]] == [BackupCard.name]


class TestCrashRepair:
    def test_a_crash_between_the_channels_yes_and_our_commit_is_repaired_once(self, app, merchant_client_factory):
        shop, merchant_id = merchant_client_factory()
        runtime = payments.Runtime.of(app)
        # Half a payment: opened and sent to the channel, then the process "dies" before applying the answer.
        from clearhouse.audit.service import SYSTEM
        from clearhouse.identity.permissions import Principal

        principal = Principal(kind="api_key", id="ck_test_x", role="merchant_key", merchant_id=merchant_id,
                              permissions=frozenset({"payments:write", "vault:write"}), mode="test")
        request = payments.NewPayment(amount=4200, currency="CNY", method="card",
                                      card={"number": "4242424242424242", "exp_month": 12, "exp_year": CARD_EXP_YEAR})
        opened = transact(app.state.engine, lambda s: payments._open(s, runtime, principal, SYSTEM, request, None))
        row = transact(app.state.engine, lambda s: payments._payment(s, opened.payment_id))
        result = runtime.channels["sandbox_card"].authorize(payments._charge_request(row, opened.attempt_id,
                                                                                     opened.card))
        assert result.status == protocol.APPROVED
        assert shop.get(f"/v1/payments/{opened.payment_id}").json()["status"] == "processing"
        # The worker asks the channel and applies its answer, once.
        assert payments.resolve_stuck(runtime, older_than_seconds=-1) == 1
        assert payments.resolve_stuck(runtime, older_than_seconds=-1) == 0
        view = shop.get(f"/v1/payments/{opened.payment_id}").json()
        assert view["status"] == "succeeded"
        assert balances(app, merchant_id)["merchant"] == 4200 - 25
        ledger_verifies(app)

    def test_a_crash_before_the_channel_call_fails_the_payment_without_a_charge(self, app, merchant_client_factory):
        shop, merchant_id = merchant_client_factory()
        runtime = payments.Runtime.of(app)
        from clearhouse.audit.service import SYSTEM
        from clearhouse.identity.permissions import Principal

        principal = Principal(kind="api_key", id="ck_test_x", role="merchant_key", merchant_id=merchant_id,
                              permissions=frozenset({"payments:write", "vault:write"}), mode="test")
        request = payments.NewPayment(amount=4200, currency="CNY", method="card",
                                      card={"number": "4242424242424242", "exp_month": 12, "exp_year": CARD_EXP_YEAR})
        opened = transact(app.state.engine, lambda s: payments._open(s, runtime, principal, SYSTEM, request, None))
        assert payments.resolve_stuck(runtime, older_than_seconds=-1) == 1
        view = shop.get(f"/v1/payments/{opened.payment_id}").json()
        assert view["status"] == "failed"
        assert view["failure_code"] == "channel_not_reached"
        ledger_verifies(app)


class TestChallenge:
    def test_a_challenged_card_waits_for_the_customer_then_the_signed_notification(self, app, client,
                                                                                   merchant_client_factory):
        shop, merchant_id = merchant_client_factory()
        payment = shop.post("/v1/payments", json=card_body(3000, number=CARD_CHALLENGE)).json()
        assert payment["status"] == "requires_action"
        assert payment["next_action"]["type"] == "redirect"
        card = app.state.channels["sandbox_card"]
        card.challenge(payment["attempts"][0]["id"], True)
        assert sandbox.deliver_due(app.state.settings, _send_through(client)) >= 1
        view = shop.get(f"/v1/payments/{payment['id']}").json()
        assert view["status"] == "succeeded"
        assert balances(app, merchant_id)["merchant"] == 3000 - 18
        ledger_verifies(app)

    def test_a_forged_notification_is_refused_and_changes_nothing(self, app, anonymous_client,
                                                                  merchant_client_factory):
        shop, _ = merchant_client_factory()
        payment = shop.post("/v1/payments", json=card_body(3000, number=CARD_CHALLENGE)).json()
        forged = orjson.dumps({"id": "evt_x", "type": "payment.approved", "created": 1,
                               "data": {"reference": payment["attempts"][0]["id"], "status": "approved"}})
        response = anonymous_client.post("/v1/channels/sandbox_card/notifications", content=forged,
                                         headers={"Sandbox-Signature": "t=1,v1=00"})
        assert response.status_code == 400
        assert response.json()["code"] == "notification_invalid"
        assert shop.get(f"/v1/payments/{payment['id']}").json()["status"] == "requires_action"

    def test_a_channel_error_card_fails_cleanly_with_one_channel(self, merchant_client_factory):
        shop, _ = merchant_client_factory()
        payment = shop.post("/v1/payments", json=card_body(100, number=CARD_CHANNEL_ERROR)).json()
        assert payment["status"] == "failed"
        assert payment["attempts"][0]["status"] == "error"


class TestATimeoutTheChannelSaysItNeverSaw:
    """Not seen yet is not never (the fault tester, session 20): a timed-out call may still reach the channel, so a
    payment fails over only once the channel has voided the reference, and then refuses the late call."""

    def test_fails_over_once_the_reference_is_voided_and_the_late_call_is_refused(self, app, merchant_client_factory,
                                                                                  two_acquirers):
        shop, _ = merchant_client_factory()
        payment = shop.post("/v1/payments", json=card_body(sandbox.AMOUNT_TIMEOUT_BEFORE_ACTING)).json()
        first, second = payment["attempts"]
        assert (first["status"], second["channel"]) == ("timeout", BackupCard.name)
        assert "the channel had not seen it and voided it" in first["message"]
        # A call under that reference arrives after all (any amount: the magic one would time out again before the
        # store): the channel refuses it, charging nothing.
        connector = app.state.channels["sandbox_card"]
        late = protocol.ChargeRequest(
            reference=first["id"], payment_id=payment["id"], merchant_id="mch_x", amount=1000,
            currency=payment["currency"], method="card", capture=True, card=None, customer={}, description=None,
            return_url=None)
        with pytest.raises(protocol.ChannelError, match="different charge"):
            connector.authorize(late)
        assert connector.query(first["id"]).status == protocol.CANCELED

    def test_stays_processing_when_the_channel_cannot_void_it(self, app, merchant_client_factory, two_acquirers,
                                                              monkeypatch):
        shop, _ = merchant_client_factory()
        connector = app.state.channels["sandbox_card"]

        def down(_reference):
            raise protocol.ChannelUnavailable("outage")

        monkeypatch.setattr(connector, "void", down)
        payment = shop.post("/v1/payments", json=card_body(sandbox.AMOUNT_TIMEOUT_BEFORE_ACTING)).json()
        # No other channel is tried: the first may still charge. The worker asks again after the in-flight window.
        assert payment["status"] == "processing"
        assert [(a["channel"], a["status"]) for a in payment["attempts"]] == [("sandbox_card", "timeout")]
