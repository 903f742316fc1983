"""PAN scan: after cards go through the vault over real HTTP, no full card number is left in
the database files, a PostgreSQL dump, or the logs (written at DEBUG, SQL included).

Each place is first shown to be searched for real: a canary number written in the clear
where the scan looks must be found, so a scan of the wrong file cannot pass.
"""

from __future__ import annotations

import glob
import logging
import os
import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from tests.vault.support import TEST_PANS, captured_logs, find_pans
from tests.vault.test_api import NEXT_YEAR

# A Luhn-valid number that is deliberately stored in the clear (a holder name) to prove
# each scan reads the data it claims to read.
CANARY = "4000056655665556"


def _grouped(pan: str, separator: str) -> str:
    return separator.join(pan[i:i + 4] for i in range(0, len(pan), 4))


def _tokenise_everything(http: httpx.Client, merchant_id: str) -> list[str]:
    card_ids = []
    for index, pan in enumerate(TEST_PANS.values()):
        written = [pan, _grouped(pan, " "), _grouped(pan, "-")][index % 3]
        response = http.post("/v1/vault/cards", json={
            "number": written, "exp_month": 1 + index, "exp_year": NEXT_YEAR, "cvc": "737",
            "holder_name": f"Holder {index}", "merchant_id": merchant_id,
        }, headers={"Idempotency-Key": f"scan-{index}"})
        assert response.status_code == 201, response.text
        card_ids.append(response.json()["id"])
        # The same request replayed (idempotency keeps the first, masked, answer).
        replay = http.post("/v1/vault/cards", json={
            "number": written, "exp_month": 1 + index, "exp_year": NEXT_YEAR, "cvc": "737",
            "holder_name": f"Holder {index}", "merchant_id": merchant_id,
        }, headers={"Idempotency-Key": f"scan-{index}"})
        assert replay.json()["id"] == card_ids[-1]
    # Numbers where logs would naturally carry them: a path, a query string, a refused body.
    pan = TEST_PANS["visa"]
    assert http.get(f"/v1/vault/cards/{pan}").status_code == 404
    assert http.get("/v1/vault/cards", params={"merchant_id": pan}).status_code == 200
    assert http.post("/v1/vault/cards", json={"number": pan, "exp_month": 1, "exp_year": 2001,
                                              "merchant_id": merchant_id}).status_code == 422
    assert http.post("/v1/vault/cards", json={"number": pan, "exp_month": 13, "exp_year": NEXT_YEAR,
                                              "merchant_id": merchant_id}).status_code == 422
    account = http.post("/v1/vault/bank_accounts", json={
        "account_number": "12345678", "holder_name": f"canary {CANARY}", "country": "DE", "merchant_id": merchant_id,
    })
    assert account.status_code == 201, account.text
    for card_id in card_ids:
        assert pan not in http.get(f"/v1/vault/cards/{card_id}").text
    assert pan not in http.get("/v1/vault/cards", params={"merchant_id": merchant_id}).text
    return card_ids


def _sqlite_bytes(path: Path) -> bytes:
    blob = path.read_bytes()
    wal = path.with_name(path.name + "-wal")
    if wal.exists():
        blob += wal.read_bytes()
    return blob


def _pg_dump(url: str) -> bytes:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"))
    if not candidates:
        pytest.fail("pg_dump not found under /usr/lib/postgresql/*/bin")
    parsed = make_url(url)
    env = {**os.environ}
    if parsed.password:
        env["PGPASSWORD"] = parsed.password
    result = subprocess.run(
        [candidates[-1], "--no-owner", "-h", parsed.host or "127.0.0.1", "-p", str(parsed.port or 5432),
         "-U", parsed.username or "postgres", parsed.database or "postgres"],
        capture_output=True, env=env, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def test_no_full_card_number_is_left_anywhere(http, merchant_client_factory, engine: Engine, database_url: str,
                                              backend: str, tmp_path: Path):
    _, merchant_id = merchant_client_factory("Scan Shop")
    pans = list(TEST_PANS.values())
    log_path = tmp_path / "scan.log"
    # SQLAlchemy keeps its loggers at WARNING unless asked: ask, as an operator chasing a bug
    # would, so every statement, its parameters and its result rows are logged.
    sql_logger = logging.getLogger("sqlalchemy.engine")
    previous_sql_level = sql_logger.level
    sql_logger.setLevel(logging.DEBUG)
    try:
        with captured_logs(log_path, "DEBUG", uvicorn=True):
            card_ids = _tokenise_everything(http, merchant_id)
            logging.getLogger("uvicorn.error").warning("a server line naming %s", TEST_PANS["visa"])
    finally:
        sql_logger.setLevel(previous_sql_level)
    assert len(card_ids) == len(pans)

    # Logs: full of SQL at DEBUG, and the numbers the requests carried are there, masked.
    logs = log_path.read_bytes()
    assert b"vault_cards" in logs, "the capture saw no SQL: DEBUG logging did not reach the file"
    assert b"411111******1111" in logs, "the request lines carrying a card number were not captured"
    assert find_pans(logs, pans + [CANARY]) == []

    if backend == "sqlite":
        db_path = Path(make_url(database_url).database or "")
        assert find_pans(_sqlite_bytes(db_path), [CANARY]) == [CANARY], "the scan does not read the stored rows"
        assert find_pans(_sqlite_bytes(db_path), pans) == []
        checkpointer = sqlite3.connect(db_path, isolation_level=None)
        try:
            busy, _log_frames, _copied = checkpointer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            checkpointer.close()
        assert busy == 0, "the checkpoint could not run to the end"
        assert find_pans(_sqlite_bytes(db_path), [CANARY]) == [CANARY]
        assert find_pans(_sqlite_bytes(db_path), pans) == []
    else:
        dump = _pg_dump(database_url)
        assert find_pans(dump, [CANARY]) == [CANARY], "the dump does not hold the stored rows"
        assert find_pans(dump, pans) == []
        # The vault rows are in the dump, as tokens.
        for card_id in card_ids:
            assert card_id.encode() in dump
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT count(*) FROM vault_cards")).scalar()
    assert stored == len(pans)
