"""Session 16: a ``405`` names in ``Allow`` every method the path answers (RFC 9110, 15.5.6),
not only the first route's: ``PUT /v1/payments`` said ``Allow: POST`` though ``GET`` lists them."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("PUT", "/v1/payments", "GET, HEAD, POST"),  # HEAD with every GET since session 20
    ("DELETE", "/v1/ledger/accounts", "GET, HEAD, POST"),
    ("PUT", "/v1/merchants/mch_nobody", "GET, HEAD, PATCH"),
    ("PATCH", "/healthz", "GET, HEAD"),
])
def test_allow_names_every_method_of_the_path(client, method, path, allow):
    answer = client.request(method, path)
    assert answer.status_code == 405, answer.text
    assert answer.json()["code"] == "method_not_allowed"
    assert answer.headers["allow"] == allow
