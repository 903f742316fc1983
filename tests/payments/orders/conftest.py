"""Card-code order tests: the app of tests/conftest.py with the orders router (mounted here
until app.py includes it; a no-op once it does)."""

from __future__ import annotations

import pytest

from clearhouse.payments.orders.endpoints import router as orders_router


@pytest.fixture
def app(app):
    if not any(getattr(route, "path", None) == "/v1/orders" for route in app.routes):
        app.include_router(orders_router)
    return app
