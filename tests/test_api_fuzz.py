"""Schemathesis walks every operation of the served OpenAPI document with generated input:
whatever it sends, the answer is never a 5xx and always says what was wrong."""

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from clearhouse.identity.signing import signed_headers


class RequestsSigner(requests.auth.AuthBase):
    """Schemathesis sends through a requests-style session: sign each prepared request."""

    def __init__(self, key_id: str, secret: str):
        self.key_id, self.secret = key_id, secret

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        path, _, query = request.path_url.partition("?")
        body = request.body or b""
        body = body.encode() if isinstance(body, str) else body
        request.headers.update(signed_headers(self.key_id, self.secret, request.method or "GET", path, query, body))
        return request


@pytest.mark.slow
def test_no_generated_input_makes_a_server_error(app, engine, platform_key):
    """Signed with a platform key holding every scope, so the input reaches the routes
    (unsigned, every answer would be the middleware's 401)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:
        _never_a_server_error(operation, RequestsSigner(platform_key.key_id, platform_key.secret))
    from clearhouse.kit.db import transact
    from clearhouse.ledger.verify import verify

    assert transact(engine, verify).ok


def _never_a_server_error(operation, auth) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case):
        response = case.call(auth=auth)
        if response.status_code == 401:  # only what the route itself decides (a login, a wrong password)
            assert response.json()["code"] not in ("authentication_required", "signature_invalid"), response.text
        assert response.status_code < 500, (operation.label, case.body, response.text)
        if response.status_code >= 400:
            content_type = response.headers["content-type"]
            content_type = content_type[0] if isinstance(content_type, list) else content_type
            assert content_type.startswith("application/problem+json"), (operation.label, response.text)
            assert response.json()["code"]

    check()
