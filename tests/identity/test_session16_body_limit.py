"""Every request body is capped at ``max_request_bytes``, on every kind of route.

A body that says its length up front is refused before it is read. One sent in chunks
(no ``Content-Length``) was capped only on the signed routes, which read it whole to check
the signature; public routes (sign-in, the channels' notifications, the customer's pages)
and routes of people signed in with a cookie read it to the end, however large it was.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from clearhouse.app import create_app
from tests.conftest import make_key
from tests.identity.people_support import create_user, login

LIMIT = 1024


@pytest.fixture
def small(settings, engine, bookkeeping_engine) -> Iterator[TestClient]:
    app = create_app(settings.model_copy(update={"max_request_bytes": LIMIT, "login_rate_limit_per_minute": 1000}),
                     engine=engine, bookkeeping_engine=bookkeeping_engine)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def chunks(total: int) -> Iterator[bytes]:
    """``total`` bytes of a JSON object, sent in 256-byte pieces with no length said."""
    body = b'{"email": "' + b"a" * (total - 15) + b'"}'
    for start in range(0, len(body), 256):
        yield body[start:start + 256]


def assert_too_large(response) -> None:
    assert response.status_code == 413, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "request_too_large"


def test_a_public_route_refuses_a_chunked_body_past_the_limit(small):
    assert_too_large(small.post("/v1/auth/login", content=chunks(4 * LIMIT),
                                headers={"content-type": "application/json"}))


def test_a_public_route_still_reads_a_chunked_body_within_the_limit(small):
    answer = small.post("/v1/auth/login", content=chunks(LIMIT // 2), headers={"content-type": "application/json"})
    assert answer.status_code in (400, 401, 422), answer.text  # read and judged, not refused for its size


def test_a_declared_length_past_the_limit_is_refused_before_reading(small):
    assert_too_large(small.post("/v1/auth/login", content=b"x" * (2 * LIMIT)))


def test_a_signed_in_person_gets_the_same_cap(small):
    user = create_user(small.app.state.engine, "admin", cipher=small.app.state.cipher)
    login(small, user)
    assert small.get("/v1/auth/me").status_code == 200
    answer = small.post("/v1/merchants", content=chunks(4 * LIMIT), headers={"content-type": "application/json"})
    assert_too_large(answer)
    # Nothing was made, and the session still works.
    assert small.get("/v1/auth/me").status_code == 200


def test_a_signed_request_gets_the_same_cap(small):
    key = make_key(small.app)
    answer = small.post("/v1/merchants", content=chunks(4 * LIMIT), auth=key.auth,
                        headers={"content-type": "application/json"})
    assert_too_large(answer)
