"""Session 16: under ``CLEARHOUSE_LOG_JSON=true`` the server's own lines are JSON too.

uvicorn installed its own plain-text handlers, so its warnings ("Invalid HTTP request
received.") came out as ``WARNING:  ...`` lines among the JSON ones, one process or several.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
from pathlib import Path

import pytest

from tests.test_cli import CLI, clearhouse, environment, free_port, ok, stop, wait_until_ready


def garbage_request(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01 this is no HTTP request\r\n\r\n")
        with contextlib.suppress(OSError):  # the server may close without answering
            sock.recv(1024)


@pytest.mark.slow  # starts servers
@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_servers_own_warnings_are_json_lines(tmp_path: Path, workers: str):
    url = f"sqlite:///{tmp_path / 'clearhouse.db'}"
    ok(clearhouse("demo", url=url, cwd=tmp_path))
    port = free_port()
    log = tmp_path / "serve.err"
    with log.open("w") as err:
        process = subprocess.Popen([str(CLI), "serve", "--port", str(port), "--workers", workers],
                                   env=environment(url, CLEARHOUSE_LOG_JSON="true"), cwd=tmp_path,
                                   stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", process, log)
        garbage_request(port)
    finally:
        stop(process, timeout=30)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}\nwhole log:\n{log.read_text()}") from None
    warnings = [r for r in records if r.get("logger", "").startswith("uvicorn")]
    assert any("Invalid HTTP request" in r["event"] for r in warnings), records
    assert all(r["level"] == "warning" for r in warnings if "Invalid HTTP request" in r["event"])
