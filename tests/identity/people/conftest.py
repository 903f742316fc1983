"""Fixtures for the people tests: the app with the people routes, and signing in helpers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from clearhouse.kit import clock
from tests.identity.people_support import TestUser, create_user

T0 = datetime(2026, 11, 23, 9, 0, 0, tzinfo=UTC)


@pytest.fixture
def app(app):
    """The app, with a login rate limit that many sign-ins from one address stay under."""
    # Many sign-ins from one test client's address: the rate limit has its own test.
    app.state.settings = app.state.settings.model_copy(update={"login_rate_limit_per_minute": 1000})
    return app


@pytest.fixture
def make_user(app):
    """``make_user(role, merchant_id=None, **options)`` -> a TestUser made through the service."""

    def make(role: str, merchant_id: str | None = None, **options) -> TestUser:
        return create_user(app.state.engine, role, merchant_id, cipher=app.state.cipher, **options)

    return make


@pytest.fixture
def browser(app) -> Iterator:
    """``browser()`` -> a new anonymous TestClient (its own cookie jar), closed afterwards."""
    opened: list[TestClient] = []

    def open_one(**options) -> TestClient:
        client = TestClient(app, raise_server_exceptions=False, **options)
        opened.append(client)
        return client

    yield open_one
    for client in opened:
        client.close()


@pytest.fixture
def frozen_clock():
    with clock.frozen(T0) as frozen:
        yield frozen
