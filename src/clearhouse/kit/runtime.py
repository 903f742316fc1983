"""How a Clearhouse process sets up Python's garbage collector before its work."""

from __future__ import annotations

import gc

# Young objects are collected after this many allocations (Python's default is 700).
YOUNG_GENERATION = 10_000


def settle_heap() -> None:
    """Freeze what is alive now out of the garbage collector's sight, and collect less often.

    What a process has imported by the time it starts its work (modules, SQLAlchemy's
    tables, pydantic's models: about 80,000 objects for the CLI) lives until it exits, so
    the collector's full passes need not scan it. And with a young generation of 10,000
    allocations instead of 700, objects that live through one batch or request (a ledger
    batch's 8,190 requests, its rows and outcomes) no longer reach the old generation and
    set off a full pass every batch: about a quarter of ``clearhouse bench ledger``'s
    SQLite time went to those passes (docs/benchmarks.md). Reference cycles are still
    collected, later and in fewer passes.

    Called once per process: by the console script before the command runs, by each
    ``serve --workers`` child as it starts, and by the test session after collection.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GENERATION, 10, 10)
