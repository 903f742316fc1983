"""Session 15: signed requests after PostgreSQL dropped the server's connections (a restart, a
failover, a proxy's idle timeout, ``pg_terminate_backend``). The nonce writer's own asyncpg
connections sat idle and closed; the tester got 500s (``InterfaceError: connection is closed``)."""

from __future__ import annotations

import pytest
from sqlalchemy import text


def test_signed_requests_go_on_after_the_server_drops_every_connection(client, engine, backend):
    if backend != "postgresql":
        pytest.skip("the nonce writer's own connections are PostgreSQL's (asyncpg)")
    for _ in range(5):  # the nonce writer opens and keeps its connections
        assert client.get("/v1/merchants").status_code == 200
    with engine.connect() as db:
        dropped = db.execute(text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )).scalar_one()
    assert dropped >= 1
    statuses = [client.get("/v1/merchants").status_code for _ in range(20)]
    assert statuses == [200] * 20
