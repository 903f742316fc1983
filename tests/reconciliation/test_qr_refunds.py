"""QR wallets give their rate back on a refund: the ledger books what the channel returns, and the
channel's own statement then reconciles with no case. Real payments and refunds through the HTTP API,
the sandbox wallets' own statement files, uploaded through the HTTP API."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest

from clearhouse.kit import clock
from tests.payments.support import balances, deliver_notifications, ledger_verifies, paid_by_customer

NOON_IN_CHINA = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)  # the same day in UTC and in China
RATES = {"sandbox_alipay": 55, "sandbox_wechat": 60}  # per 10,000 (0.55% and 0.6%)


def _half_up(amount: int, per_10000: int) -> int:
    return (amount * per_10000 * 2 + 10_000) // 20_000


@pytest.mark.parametrize("channel", ["sandbox_alipay", "sandbox_wechat"])
class TestQrRefundGivesTheFeeBack:
    def test_the_ledger_books_the_returned_fee_and_the_statement_reconciles_with_no_case(
            self, app, client, anonymous_client, merchant_client_factory, channel):
        shop, merchant_id = merchant_client_factory("QR shop")
        with clock.frozen(NOON_IN_CHINA):
            first = paid_by_customer(app, shop, anonymous_client, channel, 10_000)
            second = paid_by_customer(app, shop, anonymous_client, channel, 4_321)
            before = balances(app, merchant_id, channel=channel)
            partial = shop.post(f"/v1/payments/{first['id']}/refunds", json={"amount": 3_000})
            whole = shop.post(f"/v1/payments/{second['id']}/refunds", json={})
            assert partial.status_code in (200, 201, 202) and whole.status_code in (200, 201, 202), partial.text
            deliver_notifications(app, anonymous_client)
            assert shop.get(f"/v1/refunds/{partial.json()['id']}").json()["status"] == "succeeded"
            assert shop.get(f"/v1/refunds/{whole.json()['id']}").json()["status"] == "succeeded"
            after = balances(app, merchant_id, channel=channel)
            returned = _half_up(3_000, RATES[channel]) + _half_up(4_321, RATES[channel])
            # The channel takes back the refunds less its returned fee; our channel cost falls by that fee.
            assert before["clearing"] - after["clearing"] == 3_000 + 4_321 - returned
            assert before["cost"] - after["cost"] == returned
            ledger_verifies(app)

            statement = app.state.channels[channel].statement(NOON_IN_CHINA.date())
        assert client.put(f"/v1/recon_rules/{channel}", json={"rules": {"timing_cutoff_minutes": 0}}).status_code == 200
        run = client.post("/v1/reconciliations", data={
            "format": "csv", "channel": channel, "mapping": statement.layout,
            "statement_date": NOON_IN_CHINA.date().isoformat(),
        }, files={"file": (statement.filename, io.BytesIO(statement.content), "text/csv")})
        assert run.status_code == 201, run.text
        answer = run.json()
        assert answer["statement_lines"] == 4 and answer["case_count"] == 0, answer["classes"]
        assert answer["classes"]["matched"]["count"] == 4
        clearing = answer["clearing"]["CNY"]
        assert clearing["difference"] == 0 and clearing["expected"] == 10_000 + 4_321 - 3_000 - 4_321 - (
            _half_up(10_000, RATES[channel]) + _half_up(4_321, RATES[channel]) - returned)


def test_a_merchant_bearing_the_kept_fee_is_charged_nothing_the_wallet_gave_back(
        app, client, anonymous_client, merchant_client_factory):
    shop, merchant_id = merchant_client_factory("QR shop bearing")
    assert client.put(f"/v1/fee_plans/{merchant_id}", json={"rules": [
        {"percent": "0.6", "refund_cost_bearer": "merchant"}]}).status_code == 200
    with clock.frozen(NOON_IN_CHINA):
        payment = paid_by_customer(app, shop, anonymous_client, "sandbox_alipay", 10_000)
        refund = shop.post(f"/v1/payments/{payment['id']}/refunds", json={"amount": 3_000})
        assert refund.status_code == 201 and refund.json()["status"] == "succeeded", refund.text
    # Recipe 3 with fees returned in proportion (0.18 of the 0.60); Alipay gave back its 0.17 of 0.55 on
    # the refunded part, so nothing is left kept for the merchant to bear: 99.40 - 29.82.
    got = balances(app, merchant_id, channel="sandbox_alipay")
    assert got["merchant"] == 9_940 - 2_982
    assert got["cost"] == 55 - 17
    ledger_verifies(app)


def test_a_wallet_top_up_by_alipay_refunds_with_the_returned_fee_held_and_posted_alike(
        app, anonymous_client, merchant_client_factory):
    shop, merchant_id = merchant_client_factory("QR top-ups")
    wallet = shop.post("/v1/wallets", json={"customer_id": "cus_qr", "currency": "CNY"}).json()
    with clock.frozen(NOON_IN_CHINA):
        top_up = shop.post(f"/v1/wallets/{wallet['id']}/top_ups", json={"amount": 2_000, "method": "alipay"})
        assert top_up.status_code == 201, top_up.text
        app.state.channels["sandbox_alipay"].pay(top_up.json()["attempts"][0]["id"])
        deliver_notifications(app, anonymous_client)
        assert shop.get(f"/v1/wallets/{wallet['id']}").json()["balance"] == 2_000
        before = balances(app, merchant_id, channel="sandbox_alipay")
        refund = shop.post(f"/v1/payments/{top_up.json()['id']}/refunds", json={"amount": 500})
        assert refund.status_code == 201 and refund.json()["status"] == "succeeded", refund.text
    after = balances(app, merchant_id, channel="sandbox_alipay")
    assert shop.get(f"/v1/wallets/{wallet['id']}").json()["balance"] == 1_500
    assert before["clearing"] - after["clearing"] == 500 - 3  # 0.55% of 5.00, half up
    assert before["cost"] - after["cost"] == 3
    ledger_verifies(app)
