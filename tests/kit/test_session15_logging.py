"""Session 15: with ``CLEARHOUSE_LOG_JSON=true`` every line is one JSON object, the libraries'
lines too (the tester found httpx's plain "HTTP Request: POST <webhook URL>" lines among the
worker's JSON, 33,000 of them, each naming an endpoint URL)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import structlog

from tests.vault.support import captured_logs


def test_every_line_is_json_and_httpx_keeps_its_requests_to_itself(tmp_path: Path):
    httpx_level = logging.getLogger("httpx").level
    try:
        with captured_logs(tmp_path / "log.jsonl", "INFO", json=True) as path:
            structlog.get_logger("clearhouse.worker").info("worker_job", job="webhooks.deliver_due", count=3)
            logging.getLogger("httpx").info('HTTP Request: POST https://shop.example/hook?token=t0k3n "200 OK"')
            logging.getLogger("sqlalchemy.pool").warning("connection %s invalidated", "conn-1")
            try:
                raise ValueError("card 4242424242424242 refused")
            except ValueError:
                logging.getLogger("asyncio").exception("task failed")
        lines = path.read_text().splitlines()
    finally:
        logging.getLogger("httpx").setLevel(httpx_level)
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert [r["event"] for r in records] == ["worker_job", "connection conn-1 invalidated", "task failed"]
    assert records[1]["level"] == "warning" and records[1]["logger"] == "sqlalchemy.pool"
    assert all("timestamp" in r for r in records)
    assert "ValueError" in records[2]["exception"]
    assert "4242424242424242" not in lines[2] and "424242******4242" in lines[2]
    assert "t0k3n" not in "".join(lines)
