"""A live key asked for with an expiry that passes before anyone approves it: approving it ends the
request as expired, with the reason, instead of a 422 about a field the approver never sent."""

from __future__ import annotations

from datetime import timedelta

from clearhouse.kit import clock
from tests.identity.test_approvals import app, hold_live_key, live_keys, refused, shop  # noqa: F401  (fixtures)


def test_a_key_whose_expiry_passed_while_held_is_not_made(client, user_client_factory, shop):  # noqa: F811
    with clock.frozen(clock.now()) as frozen:
        maker = user_client_factory("admin")
        approval = hold_live_key(maker, shop.merchant_id, expires_at=clock.rfc3339(clock.now() + timedelta(hours=1)))
        frozen.tick(hours=2)
        checker = user_client_factory("admin")  # signs in now: a session from before would have ended
        answer = checker.post(f"/v1/approvals/{approval['id']}/approve")
        refused(answer, 409, "approval_expired")
        assert "has passed since asking" in answer.json()["detail"]
        ended = checker.get(f"/v1/approvals/{approval['id']}").json()
        assert ended["status"] == "expired" and "has passed since asking" in ended["reason"]
    assert live_keys(client, shop.merchant_id) == []
