"""Every payments test that built an app ends with the ledger verifying (issue #4: "the
ledger verifies after every test")."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.payments.support import ledger_verifies


@pytest.fixture(autouse=True)
def _ledger_verifies_afterwards(request: pytest.FixtureRequest) -> Iterator[None]:
    # Asked for before the test, so the app outlives this fixture's teardown.
    app = request.getfixturevalue("app") if "app" in request.fixturenames else None
    yield
    if app is not None:
        ledger_verifies(app)
