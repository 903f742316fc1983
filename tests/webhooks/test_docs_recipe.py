"""docs/webhooks.md's copyable verifier, extracted from the document and run as a merchant
would, against a real signed delivery; and it is the same code the package ships."""

from __future__ import annotations

import inspect
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from clearhouse.kit import clock
from clearhouse.kit.db import transact
from clearhouse.webhooks import delivery, service
from tests.webhooks.support import Receiver

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"


def recipe_source() -> str:
    section = DOCUMENT.read_text().split("### Verifying a delivery", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def recipe() -> dict:
    namespace: dict = {}
    exec(recipe_source(), namespace)  # noqa: S102 - our own document
    return namespace


def test_the_documented_verifier_is_the_shipped_one():
    """The statements after the docstring are the same, line for line."""
    documented = recipe_source().split("def verify(", 1)[1].split('"""')[2]
    shipped = inspect.getsource(delivery.verify).split('"""')[2]
    assert documented.strip() == shipped.strip()


def test_the_documented_verifier_accepts_a_real_delivery_and_nothing_else(app, engine, merchant_client_factory,
                                                                          receiver: Receiver):
    merchant_client, merchant_id = merchant_client_factory("Shop")
    secret = merchant_client.post("/v1/webhook_endpoints", json={"url": receiver.url(), "event_types": ["*"]}
                                  ).json()["secret"]
    with clock.frozen(datetime.now(UTC) + timedelta(days=1)):
        transact(engine, lambda s: service.emit(s, merchant_id=merchant_id, event_type="refund.succeeded",
                                                livemode=False, data={"id": "re_1", "amount": 300}))
        delivery.deliver_due(engine, app.state.settings, app.state.cipher)
        now = clock.now().timestamp()
    [request] = receiver.at("/hook")
    namespace = recipe()
    verify, error = namespace["verify"], namespace["WebhookVerificationError"]
    assert verify(secret, request.headers, request.body, now=now)["data"] == {"id": "re_1", "amount": 300}
    with pytest.raises(error):
        verify(secret, request.headers, request.body + b" ", now=now)
    with pytest.raises(error):
        verify(secret, {**request.headers, "webhook-id": "evt_other"}, request.body, now=now)
    with pytest.raises(error):
        verify(secret, request.headers, request.body, now=now + 301)
