"""A key's list of webhook events reads its own mode's index (migration 0018), so a test key's
list does not walk its merchant's live events."""

from __future__ import annotations

from sqlalchemy import Engine, select, text

from clearhouse.audit.service import SYSTEM
from clearhouse.identity import service as identity
from clearhouse.identity.permissions import Principal
from clearhouse.kit import clock
from clearhouse.kit.db import bulk_insert, transact
from clearhouse.webhooks import repository


def _plan(engine: Engine, query) -> str:
    compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("ANALYZE webhook_events"))
            return "\n".join(row[0] for row in connection.execute(text(f"EXPLAIN {compiled}")))
        connection.execute(text("ANALYZE"))
        return "\n".join(row[-1] for row in connection.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))


def _busy_live_merchant(engine: Engine) -> str:
    """A merchant with 3,000 live events and 30 test ones."""
    merchant = transact(engine, lambda s: identity.create_merchant(s, SYSTEM, name="Busy"))
    now = clock.now()
    rows = [(f"evt_{n:06d}", merchant.id, n % 100 != 0, "payment.succeeded", "{}", now) for n in range(3000)]
    columns = ("id", "merchant_id", "livemode", "type", "payload_json", "created_at")
    transact(engine, lambda s: bulk_insert(s, repository.events, columns, rows))
    return merchant.id


def test_a_test_keys_event_list_uses_the_merchant_and_mode_index(engine: Engine) -> None:
    merchant_id = _busy_live_merchant(engine)
    key = Principal(kind="api_key", id="ck_x", role="merchant_key", merchant_id=merchant_id, permissions=frozenset(),
                    mode="test")
    scope = key.listing(repository.events, None)
    assert scope is not None
    query = select(repository.events).where(*scope).order_by(repository.events.c.id).limit(11)
    plan = _plan(engine, query)
    assert "ix_webhook_events_merchant_mode" in plan, plan
