"""Routing defects an exploratory test found (session 15), each held through the HTTP API: stale fields
in the breaker view of GET /v1/channels, an empty BIN prefix answered as a shape error, and a route
preview for a merchant that does not exist."""

from __future__ import annotations

from clearhouse.kit import clock

CARD = "sandbox_card"


def _breaker(client) -> dict:
    response = client.get(f"/v1/channels/{CARD}")
    assert response.status_code == 200, response.text
    return response.json()["breaker"]


def _open_the_circuit(app) -> None:
    for _ in range(5):
        app.state.router.record(CARD, "failure", 10.0)


class TestTheBreakerView:
    """Finding 5: the view kept why the circuit had opened after a probe closed it, and did not count a
    failed probe."""

    def test_a_successful_probe_forgets_why_the_circuit_opened(self, app, client):
        with clock.frozen(clock.now()) as frozen:
            _open_the_circuit(app)
            opened = _breaker(client)
            assert (opened["state"], opened["opened_because"], opened["consecutive_failures"]) == (
                "open", "5 failures in a row", 5)
            frozen.tick(seconds=31)
            assert app.state.router.breaker(CARD).allow()  # the probe
            app.state.router.record(CARD, "success", 10.0)
            closed = _breaker(client)
        assert closed == {"state": "closed", "opened_until": None, "opened_because": None,
                          "consecutive_failures": 0, "cooldown_seconds": 30.0}

    def test_a_failed_probe_counts_as_one_more_failure_in_a_row(self, app, client):
        with clock.frozen(clock.now()) as frozen:
            _open_the_circuit(app)
            frozen.tick(seconds=31)
            assert app.state.router.breaker(CARD).allow()
            app.state.router.record(CARD, "failure", 10.0)
            reopened = _breaker(client)
        assert (reopened["state"], reopened["opened_because"], reopened["consecutive_failures"],
                reopened["cooldown_seconds"]) == ("open", "the probe failed", 6, 60.0)


class TestRuleAndPreviewChecks:
    def test_an_empty_bin_prefix_is_invalid_card_bin_prefix(self, client):
        """Finding 7: "" was a 422 validation_error, not the code routing.md gives."""
        for prefix in ("", "123456789", "12a"):
            response = client.post("/v1/routing/rules", json={"channels": [CARD], "card_bin_prefix": prefix})
            assert (response.status_code, response.json()["code"]) == (422, "invalid_card_bin_prefix"), prefix
        rule = client.post("/v1/routing/rules", json={"channels": [CARD], "card_bin_prefix": "4242"})
        assert rule.status_code == 201, rule.text
        changed = client.patch(f"/v1/routing/rules/{rule.json()['id']}", json={"card_bin_prefix": ""})
        assert (changed.status_code, changed.json()["code"]) == (422, "invalid_card_bin_prefix")

    def test_a_preview_for_a_merchant_that_does_not_exist_is_not_found(self, client, merchant_client_factory):
        """Finding 8: the preview answered the default route, where a rule for that merchant is a 404."""
        payment = {"method": "card", "currency": "CNY", "amount": 5000}
        missing = client.post("/v1/routing/preview", json={**payment, "merchant_id": "mer_nobody"})
        assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
        rule = client.post("/v1/routing/rules", json={"channels": [CARD], "merchant_id": "mer_nobody"})
        assert (rule.status_code, rule.json()["code"]) == (404, "not_found")  # the same answer
        _shop, shop_id = merchant_client_factory()
        known = client.post("/v1/routing/preview", json={**payment, "merchant_id": shop_id})
        assert known.status_code == 200, known.text
        assert known.json()["candidates"][0]["channel"] == CARD
