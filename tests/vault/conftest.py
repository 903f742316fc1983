"""Vault test fixtures: the app with the vault's routes, and the people routes that
``user_client_factory`` signs in through (added here until app.py includes them)."""

from __future__ import annotations

import pytest


def _has_path(app, path: str) -> bool:
    def walk(routes) -> bool:
        for route in routes:
            if getattr(route, "path", None) == path:
                return True
            original = getattr(route, "original_router", None)  # FastAPI 0.165's included routers
            if original is not None and walk(original.routes):
                return True
        return False

    return walk(app.routes)


@pytest.fixture
def app(app):
    from clearhouse.identity.people.endpoints import router as people_router
    from clearhouse.vault.endpoints import router as vault_router

    added = False
    for router, probe in ((vault_router, "/v1/vault/cards"), (people_router, "/v1/auth/login")):
        if not _has_path(app, probe):
            # Plain routes, as tests/identity/people/conftest.py does: the authentication
            # middleware's public-route scan does not look inside included routers.
            app.router.routes.extend(router.routes)
            added = True
    if added:
        getattr(app.router, "_mark_routes_changed", lambda: None)()
    return app
