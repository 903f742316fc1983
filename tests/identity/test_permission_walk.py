"""Every role and every kind of key against every route of the OpenAPI document, checked
against the one permission matrix (identity/permissions.py).

A route the caller's role does not grant answers 403 ``forbidden`` whatever the input;
a route it grants never answers 401 or 403 (a 404 or a 422 for the made-up ids and the
empty bodies sent here is fine: the permission check let the request through).
"""

from __future__ import annotations

import re

import pytest

from clearhouse.identity.models import MERCHANT_ROLES, ROLES
from clearhouse.identity.permissions import (
    PERMISSIONS,
    PUBLIC,
    ROLE_PERMISSIONS,
    SESSION,
    route_permission,
)
from clearhouse.kit.api import leaf_routes
from tests.conftest import make_key, make_merchant
from tests.identity.people_support import login

# Sent last: each ends or changes the session the walk is using.
SESSION_ENDING = ("/v1/auth/logout", "/v1/auth/logout_all", "/v1/auth/password")


def operations(app) -> list[tuple[str, str, str]]:
    """(method, path, declared permission) for every operation in the OpenAPI document."""
    found = []
    for path, methods in app.openapi()["paths"].items():
        for method, operation in methods.items():
            found.append((method.upper(), path, operation["x-permission"]))
    return sorted(found, key=lambda o: (o[1] in SESSION_ENDING, o[1], o[0]))


def concrete(path: str) -> str:
    """Path parameters filled with ids that exist nowhere."""
    return re.sub(r"\{[^}]+\}", "x_walk_missing", path)


def call(client, method: str, path: str):
    body = {} if method in ("POST", "PATCH", "PUT") else None
    return client.request(method, concrete(path), json=body)


class TestEveryRouteDeclaresItsPermission:
    def test_every_route_has_a_known_permission(self, app):
        documents = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
        undeclared = [getattr(r, "path", r) for r in leaf_routes(app)
                      if route_permission(r) is None and getattr(r, "path", None) not in documents]
        assert undeclared == []
        for _method, _path, permission in operations(app):
            assert permission in PERMISSIONS or permission in (PUBLIC, SESSION)

    def test_the_matrix_names_only_known_permissions_and_every_role(self):
        assert set(ROLE_PERMISSIONS) == set(ROLES)
        for granted in ROLE_PERMISSIONS.values():
            assert granted <= set(PERMISSIONS)

    def test_the_auditor_changes_nothing(self):
        assert all(p.endswith(":read") for p in ROLE_PERMISSIONS["auditor"])
        assert "audit:read" in ROLE_PERMISSIONS["auditor"]


@pytest.mark.slow  # about a minute per role on each database: every route, called as a person
@pytest.mark.parametrize("role", ROLES)
def test_each_role_against_every_route(app, user_client_factory, role):
    merchant_id = make_merchant(app, "Walk Shop").merchant_id if role in MERCHANT_ROLES else None
    client = user_client_factory(role, merchant_id)
    granted = ROLE_PERMISSIONS[role]
    for method, path, permission in operations(app):
        if path in SESSION_ENDING:
            login(client, client.user)  # the previous one may have ended the session
        response = call(client, method, path)
        label = f"{role}: {method} {path} ({permission}) -> {response.status_code} {response.text[:200]}"
        assert response.status_code < 500, label
        if permission in (PUBLIC, SESSION):
            assert response.status_code not in (401, 403) or path == "/v1/auth/login", label
        elif permission in granted:
            assert response.status_code not in (401, 403), label
        else:
            assert response.status_code == 403, label
            assert response.json()["code"] == "forbidden", label


@pytest.mark.parametrize("kind", ["platform", "merchant"])
def test_each_kind_of_key_against_every_route(app, anonymous_client, kind):
    from clearhouse.identity.permissions import MERCHANT_KEY_SCOPES, PLATFORM_KEY_SCOPES

    credentials = make_key(app) if kind == "platform" else make_merchant(app, "Key Walk Shop")
    granted = PLATFORM_KEY_SCOPES if kind == "platform" else MERCHANT_KEY_SCOPES
    anonymous_client.auth = credentials.auth
    for method, path, permission in operations(app):
        response = call(anonymous_client, method, path)
        label = f"{kind} key: {method} {path} ({permission}) -> {response.status_code} {response.text[:200]}"
        assert response.status_code < 500, label
        if permission == PUBLIC:
            continue
        if permission == SESSION:
            # The /v1/auth/* routes are a person's own session: a key is refused, never let in.
            assert response.status_code == 403, label
        elif permission in granted:
            assert response.status_code not in (401, 403), label
        else:
            assert response.status_code == 403, label
            assert response.json()["code"] == "forbidden", label


def test_nothing_but_the_public_routes_answers_without_credentials(app, anonymous_client):
    for method, path, permission in operations(app):
        response = call(anonymous_client, method, path)
        label = f"{method} {path} -> {response.status_code} {response.text[:200]}"
        if permission == PUBLIC:
            assert response.status_code != 401 or path == "/v1/auth/login", label
        else:
            assert response.status_code == 401, label
            assert response.json()["code"] == "authentication_required", label
