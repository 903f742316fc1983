"""Helpers shared by the ledger's HTTP tests: open accounts, move money, read balances,
and assert refusals left no trace."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.orm import Session

MAX_AMOUNT = 2**63 - 1
PROBLEM_FIELDS = ("type", "title", "status", "code", "detail")


def open_account(client: Any, type: str, currency: str = "CNY", code: str = "test", **fields: Any) -> str:
    response = client.post("/v1/ledger/accounts", json={"type": type, "currency": currency, "code": code, **fields})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def transfer_body(debit: str, credit: str, amount: Any, currency: str = "CNY", **fields: Any) -> dict[str, Any]:
    return {
        "debit_account_id": debit,
        "credit_account_id": credit,
        "amount": amount,
        "currency": currency,
        **fields,
    }


def transfer(client: Any, debit: str, credit: str, amount: Any, currency: str = "CNY", **fields: Any) -> Any:
    return client.post("/v1/ledger/transfers", json=transfer_body(debit, credit, amount, currency, **fields))


def balance(client: Any, account_id: str, **params: str) -> dict[str, int]:
    response = client.get(f"/v1/ledger/accounts/{account_id}/balance", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    return {
        k: body[k]
        for k in (
            "debits_posted",
            "credits_posted",
            "debits_pending",
            "credits_pending",
            "posted",
            "available",
        )
    }


def balances(client: Any, *account_ids: str) -> dict[str, dict[str, int]]:
    return {account_id: balance(client, account_id) for account_id in account_ids}


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    """An RFC 9457 problem with the stable ``code``: content type and every required field."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    for name in PROBLEM_FIELDS:
        assert name in body, f"problem lacks {name}: {body}"
    assert body["status"] == status
    assert body["code"] == code, body
    assert body["type"].endswith(code)
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def assert_verified(client: Any) -> dict[str, Any]:
    report = client.get("/v1/ledger/verify").json()
    assert report["ok"] is True, report["first_failure"]
    assert report["failures"] == []
    return report


def assert_refused_without_trace(
    client: Any, response: Any, status: int, code: str, before: dict[str, dict[str, int]]
) -> dict[str, Any]:
    """The request was refused with ``code`` and nothing it named moved."""
    body = assert_problem(response, status, code)
    assert balances(client, *before) == before
    assert_verified(client)
    return body


def wait_until_a_writer_queues(engine: Any, backend: str, timeout: float = 10.0) -> None:
    """Return once another connection waits for a row lock (PostgreSQL). On SQLite every
    writer queues at ``BEGIN IMMEDIATE``, so a short pause is enough."""
    if backend != "postgresql":
        time.sleep(0.3)
        return
    deadline = time.monotonic() + timeout
    with engine.connect() as connection:
        while time.monotonic() < deadline:
            waiting = connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar()
            connection.rollback()  # a new snapshot of pg_stat_activity each time
            if waiting:
                return
            time.sleep(0.01)
    raise AssertionError("the second writer never queued behind the first")


@contextmanager
def plain_tracebacks() -> Iterator[None]:
    """Log unexpected errors with a plain traceback while the block runs.

    Unconfigured, structlog renders a rich traceback with every frame's locals: about 15 s
    per 500 here, spent inside the async exception handler, so the whole server stalls.
    """
    saved = structlog.get_config()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        cache_logger_on_first_use=False,
    )
    try:
        yield
    finally:
        structlog.configure(**saved)


def race_behind_an_open_write(engine: Any, backend: str, first_write: Any, second_request: Any) -> Any:
    """Hold ``first_write`` open in a transaction, let ``second_request`` queue behind its
    locks, then commit: the second sees the first only after it has read its own state."""
    with plain_tracebacks(), ThreadPoolExecutor(max_workers=1) as pool:
        with Session(engine) as session:
            session.begin()
            first_write(session)
            future = pool.submit(second_request)
            wait_until_a_writer_queues(engine, backend)
            session.commit()
        return future.result(timeout=60)


