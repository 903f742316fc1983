"""Vault test fixtures: the app with the vault's routes (added here until app.py includes them)."""

from __future__ import annotations

import pytest

from clearhouse.vault.endpoints import router as vault_router


@pytest.fixture
def app(app):
    if not any(getattr(route, "path", "").startswith("/v1/vault/") for route in app.routes):
        app.include_router(vault_router)
    return app
