"""A payment's timeline is in the order things happened (payments.md: "every transition and every fact learned
... in order"). It is read in event id order, and ids made in one millisecond used to sort at random: 4 of 97
payments of the integrator tester (session 20) showed ``status_changed`` before ``created``. Ids now only grow
within a process (``kit.ids``)."""

from __future__ import annotations

from tests.payments.support import card_body

DECLINED_CARD = "4000000000000002"


def test_every_timeline_starts_with_its_creation_and_runs_forward(merchant_client_factory):
    shop, _ = merchant_client_factory()
    made = [shop.post("/v1/payments", json=card_body(1000 + n, number=DECLINED_CARD if n % 2 else
                                                     "4242424242424242")).json()["id"] for n in range(12)]
    for payment_id in made:
        timeline = shop.get(f"/v1/payments/{payment_id}").json()["timeline"]
        assert timeline[0]["type"] == "created", timeline
        assert [event["at"] for event in timeline] == sorted(event["at"] for event in timeline), timeline
        assert timeline[-1]["type"] == "status_changed" and timeline[-1]["to_status"] in ("succeeded", "failed")
