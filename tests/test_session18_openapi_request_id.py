"""Every answer carries ``X-Request-Id`` (kit.logging), so the OpenAPI document declares it on every answer,
successes included (it was declared on errors only)."""

from __future__ import annotations

from typing import Any

import httpx

from tests.test_session17_openapi import anonymous, document, operations, resolve, settings  # noqa: F401


def test_every_answer_of_every_operation_declares_the_request_id(document: dict[str, Any]) -> None:  # noqa: F811
    missing = []
    for method, template, operation in operations(document):
        for status, answer in operation["responses"].items():
            headers = resolve(document, answer).get("headers", {})
            if "X-Request-Id" not in headers:
                missing.append(f"{method} {template} {status}")
    assert missing == []


def test_a_success_answer_carries_it(anonymous: httpx.Client) -> None:  # noqa: F811
    answer = anonymous.get("/healthz", headers={"X-Request-Id": "req-s18-check"})
    assert answer.status_code == 200
    assert answer.headers["x-request-id"] == "req-s18-check"
    assert anonymous.get("/healthz").headers["x-request-id"]
