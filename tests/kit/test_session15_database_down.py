"""Session 15: with PostgreSQL stopped (or dropping the connection mid-request), a request
answered 500 internal_error with a traceback in the log; it is a transient outage, 503
database_unavailable with Retry-After, and a one-line warning."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy.exc import OperationalError

from clearhouse.identity import service as identity


@pytest.mark.parametrize("error", [
    OperationalError("SELECT 1", {}, psycopg.OperationalError("connection refused")),
    OperationalError("SELECT 1", {}, psycopg.errors.AdminShutdown("terminating connection")),
])
def test_an_unreachable_database_is_503_not_500(client, monkeypatch, error, capsys):
    def down(*args, **kwargs):
        raise error

    monkeypatch.setattr(identity, "get_merchant", down)
    answer = client.get("/v1/merchants/mch_x")
    assert answer.status_code == 503, answer.text
    assert answer.json()["code"] == "database_unavailable"
    assert answer.headers["retry-after"] == "5"
    assert "Traceback" not in capsys.readouterr().err


def test_a_bug_is_still_a_500(client, monkeypatch):
    def bug(*args, **kwargs):
        raise KeyError("x")

    monkeypatch.setattr(identity, "get_merchant", bug)
    answer = client.get("/v1/merchants/mch_x")
    assert answer.status_code == 500 and answer.json()["code"] == "internal_error"
