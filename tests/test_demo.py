"""The demo's payments and its reconciliation (``clearhouse demo``, ``make run``), on both databases."""

from __future__ import annotations

from datetime import UTC, date, datetime

from clearhouse import demo
from clearhouse.kit import clock
from clearhouse.kit.db import transact
from clearhouse.worker import build_runtime


def test_a_first_start_just_before_midnight_reconciles_the_day_its_payments_were_made(settings, engine,
                                                                                         monkeypatch):
    runtime = build_runtime(settings, engine)
    transact(engine, demo.load)
    make_payments = demo.load_payments
    with clock.frozen(datetime(2026, 11, 24, 23, 59, 58, tzinfo=UTC)) as frozen:

        def payments_then_midnight(runtime):
            made = make_payments(runtime)
            frozen.tick(seconds=3)  # the payments took the last seconds of the day
            return made

        monkeypatch.setattr(demo, "load_payments", payments_then_midnight)
        made, run = demo.load_sales(runtime)
        assert clock.now().date() == date(2026, 11, 25)
    assert made == 8
    assert run is not None
    assert run["statement_date"] == date(2026, 11, 24)
    # The demo's card sales are on that day's statement; the empty day after it would have matched nothing.
    assert run["classes"]["matched"]["count"] >= 3, run["classes"]
    monkeypatch.undo()
    assert demo.load_sales(runtime) == (0, None)  # the second start makes nothing
