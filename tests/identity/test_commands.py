"""``clearhouse keys ...`` and ``clearhouse merchants ...`` run as an operator runs them: real
processes on a real database (SQLite and PostgreSQL), and the keys they print used over real
HTTP against ``clearhouse serve``.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from clearhouse.identity.signing import ClearhouseAuth
from tests.test_cli import CLI, clearhouse, environment, free_port, ok, stop, wait_until_ready

MASTER_KEY = "mk_cli:" + base64.b64encode(bytes(range(100, 132))).decode()
SAME_ID_OTHER_BYTES = "mk_cli:" + base64.b64encode(bytes(range(1, 33))).decode()
pytestmark = pytest.mark.slow  # every test starts `clearhouse` processes (about 2.5 s each)

UNKNOWN_ID = "mk_stranger:" + base64.b64encode(bytes(range(1, 33))).decode()


@pytest.fixture
def where(database_url: str, tmp_path: Path) -> tuple[str, Path]:
    """A migrated database (either backend) and an empty working directory."""
    work = tmp_path / "work"
    work.mkdir()
    return database_url, work


def run(where: tuple[str, Path], *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    url, cwd = where
    return clearhouse(*args, url=url, cwd=cwd, **({"CLEARHOUSE_MASTER_KEY": MASTER_KEY} | env))


def printed_json(result: subprocess.CompletedProcess[str]) -> dict:
    """--json prints exactly one JSON object on stdout, nothing else."""
    ok(result)
    return json.loads(result.stdout)


def refused_cleanly(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit 2, no traceback, no secret printed, and one ``error:`` line that holds the whole
    message (``words`` are taken from its start and its end, so a message wrapped over
    several lines fails: log collectors and grep see one line per event)."""
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert "cks_" not in result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], (word, result.stderr)
    return errors[0]


@contextmanager
def serving(where: tuple[str, Path], **env: str) -> Iterator[str]:
    """``clearhouse serve`` on a free port until the block ends; yields its base URL."""
    url, cwd = where
    port = free_port()
    log = cwd / f"serve-{port}.log"
    with log.open("w") as out:
        process = subprocess.Popen([str(CLI), "serve", "--port", str(port)],
                                   env=environment(url, **({"CLEARHOUSE_MASTER_KEY": MASTER_KEY} | env)),
                                   cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, process, log)
        yield base
    finally:
        stop(process)
        assert "Traceback" not in log.read_text(), log.read_text()


def signed(base: str, key_id: str, secret: str) -> httpx.Client:
    return httpx.Client(base_url=base, timeout=30, auth=ClearhouseAuth(key_id, secret))


ACCOUNT = {"id": "acct_cli_scope", "type": "asset", "currency": "CNY", "code": "cli"}


class TestKeysCreate:
    def test_a_platform_key_with_ledger_read_reads_the_ledger_and_is_refused_writes(self, where):
        made = printed_json(run(where, "keys", "create", "--platform", "--scopes", "ledger:read", "--json"))
        assert set(made) == {"api_key_id", "api_secret"}
        assert made["api_key_id"].startswith("ck_platform_") and made["api_secret"].startswith("cks_")
        with serving(where) as base, signed(base, made["api_key_id"], made["api_secret"]) as robot:
            assert robot.get("/v1/ledger/verify").status_code == 200
            refused = robot.post("/v1/ledger/accounts", json=ACCOUNT)
            assert refused.status_code == 403 and refused.json()["code"] == "forbidden", refused.text
            assert robot.get("/v1/merchants").json()["code"] == "forbidden"
            assert httpx.get(f"{base}/v1/ledger/verify", timeout=10).status_code == 401

    def test_unknown_scopes_and_scopes_a_platform_key_may_not_hold_are_refused(self, where):
        refused_cleanly(run(where, "keys", "create", "--platform", "--scopes", "ledger:reed", "--json"),
                        "ledger:reed")
        refused_cleanly(run(where, "keys", "create", "--platform", "--scopes", "approvals:decide", "--json"),
                        "approvals:decide")

    def test_exactly_one_of_platform_or_merchant(self, where):
        refused_cleanly(run(where, "keys", "create", "--json"))
        refused_cleanly(run(where, "keys", "create", "--platform", "--merchant-id", "mch_x", "--json"))


class TestMerchantsCreate:
    def test_prints_the_merchant_and_a_test_key_that_works_for_that_merchant_only(self, where):
        made = printed_json(run(where, "merchants", "create", "--name", "CLI Shop", "--json"))
        assert set(made) == {"merchant_id", "api_key_id", "api_secret"}
        assert made["merchant_id"].startswith("mch_") and made["api_key_id"].startswith("ck_test_")
        other = printed_json(run(where, "merchants", "create", "--name", "Other CLI Shop", "--json"))
        with serving(where) as base, signed(base, made["api_key_id"], made["api_secret"]) as shop:
            own = shop.get(f"/v1/merchants/{made['merchant_id']}")
            assert own.status_code == 200, own.text
            assert own.json()["name"] == "CLI Shop"
            assert shop.get(f"/v1/merchants/{other['merchant_id']}").status_code == 404
            assert shop.get("/v1/ledger/verify").json()["code"] == "forbidden"

    def test_an_empty_name_is_refused(self, where):
        refused_cleanly(run(where, "merchants", "create", "--name", "  ", "--json"))


def key_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


class TestRotate:
    def test_after_rotation_a_server_with_the_rotated_file_still_opens_old_secrets(self, where, tmp_path):
        key_file = tmp_path / "master.key"
        key_file.write_text("mk_first " + base64.b64encode(bytes(range(50, 82))).decode() + "\n")
        key_file.chmod(0o600)
        from_file = {"CLEARHOUSE_MASTER_KEY": "", "CLEARHOUSE_MASTER_KEY_FILE": str(key_file)}
        made = printed_json(run(where, "keys", "create", "--platform", "--scopes", "merchants:read", "--json",
                                **from_file))
        report = printed_json(run(where, "keys", "rotate", "--json", **from_file))
        assert report["master_key_id"] != "mk_first" and report["data_keys_rewrapped"] >= 1
        lines = key_lines(key_file)
        assert [line.split()[0] for line in lines] == ["mk_first", report["master_key_id"]]

        with serving(where, **from_file) as base, signed(base, made["api_key_id"], made["api_secret"]) as robot:
            response = robot.get("/v1/merchants")
            assert response.status_code == 200, response.text

        # Every data key moved to the new master key: the old line may go ...
        key_file.write_text(lines[1] + "\n")
        printed_json(run(where, "keys", "create", "--platform", "--scopes", "merchants:read", "--json", **from_file))
        # ... and the old line alone no longer opens them.
        key_file.write_text(lines[0] + "\n")
        refused_cleanly(run(where, "keys", "create", "--platform", "--json", **from_file), "master key")

    def test_rotation_with_the_key_in_the_environment_is_refused_with_a_remedy(self, where):
        printed_json(run(where, "keys", "create", "--platform", "--json"))
        refused_cleanly(run(where, "keys", "rotate", "--json"), "CLEARHOUSE_MASTER_KEY")


class TestWrongMasterKey:
    @pytest.mark.parametrize("wrong,first_words,last_words", [
        (SAME_ID_OTHER_BYTES, "error: master key mk_cli", "or the row was altered"),
        (UNKNOWN_ID, "error: data key", "restore that key's line"),
    ])
    def test_a_wrong_master_key_is_one_clear_error_line_and_exit_2(self, where, wrong, first_words, last_words):
        """Found by this suite: the message is right, but rich wraps it at 80 columns when
        stderr is not a terminal, so the one error comes out as three lines."""
        printed_json(run(where, "keys", "create", "--platform", "--json"))  # data keys under MASTER_KEY
        line = refused_cleanly(run(where, "keys", "create", "--platform", "--json", CLEARHOUSE_MASTER_KEY=wrong),
                               first_words, last_words)
        assert wrong.split(":")[1] not in line  # the key bytes are never echoed

    def test_serve_with_a_wrong_master_key_stops_at_start_up(self, where):
        printed_json(run(where, "merchants", "create", "--name", "Keyed Shop", "--json"))
        url, cwd = where
        result = subprocess.run([str(CLI), "serve", "--port", str(free_port())], capture_output=True, text=True,
                                timeout=60, cwd=cwd,
                                env=environment(url, CLEARHOUSE_MASTER_KEY=SAME_ID_OTHER_BYTES))
        refused_cleanly(result, "error: master key", "or the row was altered")

    @pytest.mark.parametrize("malformed", ["mk_cli", "mk_cli:not-base64!", "mk_cli:" + base64.b64encode(
        b"short").decode()])
    def test_a_malformed_master_key_is_one_clear_error(self, where, malformed):
        refused_cleanly(run(where, "keys", "create", "--platform", "--json", CLEARHOUSE_MASTER_KEY=malformed))
