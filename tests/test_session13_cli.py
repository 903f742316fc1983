"""The ``clearhouse`` command refusing what an operator got wrong: one ``error:`` line naming the
setting, argument or database at fault, a documented exit status, no traceback, nothing written.

Refusals made inside ``main()`` (settings, database, master keys) need a real process; what a
command checks itself runs in this process through typer's ``CliRunner``, which is cheaper.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import text
from typer.testing import CliRunner

from clearhouse import cli
from clearhouse.audit.service import SYSTEM
from clearhouse.bench import PostgresServer
from clearhouse.channels import commands as sandbox_commands
from clearhouse.identity import commands as identity_commands
from clearhouse.identity import service as identity
from clearhouse.kit.db import current_revision, head_revision, make_engine, transact, upgrade
from clearhouse.kit.settings import Settings, get_settings
from tests.conftest import POSTGRES_URL
from tests.identity.test_commands import MASTER_KEY
from tests.test_cli import clearhouse, free_port, sqlite_file


def refused(result: subprocess.CompletedProcess[str], *words: str, status: int = 2) -> tuple[str, str]:
    """``status``, no traceback, and exactly two lines on stderr: ``error: …`` holding ``words``
    whole (a wrapped message would fail: operators grep for one line), then what to check."""
    output = result.stdout + result.stderr
    assert result.returncode == status, f"exit {result.returncode}\n{output}"
    assert "Traceback" not in output, output
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("check "), result.stderr
    for word in words:
        assert word in lines[0] or word in lines[1], (word, result.stderr)
    return lines[0], lines[1]


def invoke(app, *args: str):
    """``app`` run in this process, on a terminal wide enough that rich wraps no message."""
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})


def said(result) -> str:
    """What a CliRunner run printed, with rich's panel borders and spacing taken out."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())


@pytest.fixture
def nowhere(tmp_path: Path) -> tuple[str, Path]:
    """A database URL whose file does not exist (a refused command must not make it), and a working directory."""
    work = tmp_path / "work"
    work.mkdir()
    return f"sqlite:///{tmp_path / 'data' / 'clearhouse.db'}", work


@pytest.fixture
def settings_from(monkeypatch):
    """Run commands in this process with these ``CLEARHOUSE_*`` values (and the test master key)."""

    def use(database_url: str, **extra: str) -> None:
        monkeypatch.setenv("CLEARHOUSE_DATABASE_URL", database_url)
        monkeypatch.setenv("CLEARHOUSE_MASTER_KEY", MASTER_KEY)
        for name, value in extra.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()

    yield use
    get_settings.cache_clear()


@pytest.fixture
def unmigrated_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A database that answers but has no schema: a fresh SQLite file, or a new PostgreSQL database."""
    if backend == "sqlite":
        path = tmp_path / "empty.db"
        sqlite3.connect(path).close()  # a file that is there (a missing one is refused before its schema is read)
        yield f"sqlite:///{path}"
        return
    with PostgresServer(POSTGRES_URL, "the tests' server").fresh_database("unmigrated") as url:
        yield url


# ------------------------------------------------------------------------------------ settings


class TestSettingsAreCheckedAtStartUp:
    def test_a_wrong_fault_profile_stops_serve_before_it_listens(self, nowhere):
        url, cwd = nowhere
        port = free_port()
        result = clearhouse("serve", "--port", str(port), url=url, cwd=cwd, timeout=60,
                            CLEARHOUSE_SANDBOX_FAULTS='{"sandbox_card": {"bogus": 1}}')
        error, check = refused(result, "unknown fault profile keys ['bogus']")
        assert error.startswith("error: CLEARHOUSE_SANDBOX_FAULTS: sandbox_card: ")
        assert check == "check CLEARHOUSE_SANDBOX_FAULTS (docs/configuration.md)"
        assert "Clearhouse on" not in result.stderr  # refused before it announced anything
        assert not sqlite_file(url).parent.exists()

    def test_every_wrong_variable_is_named_on_the_one_line(self, nowhere):
        url, cwd = nowhere
        result = clearhouse("db", "current", url=url, cwd=cwd, timeout=60,
                            CLEARHOUSE_PORT="abc", CLEARHOUSE_LOG_LEVEL="FOO")
        error, check = refused(result, "CLEARHOUSE_PORT: Input should be a valid integer",
                               "CLEARHOUSE_LOG_LEVEL: 'FOO' is not a log level")
        assert "CLEARHOUSE_DATABASE_URL" not in error + check  # the database is not blamed
        assert check == "check CLEARHOUSE_PORT, CLEARHOUSE_LOG_LEVEL (docs/configuration.md)"
        assert not sqlite_file(url).parent.exists()

    def test_a_raised_signature_tolerance_alone_is_checked_against_the_default_nonce_ttl(self, monkeypatch):
        monkeypatch.setenv("CLEARHOUSE_SIGNATURE_TOLERANCE_SECONDS", "600")
        with pytest.raises(ValidationError) as raised:
            Settings()
        (problem,) = raised.value.errors()
        assert problem["loc"] == ("nonce_ttl_seconds",)
        assert "600 is less than twice CLEARHOUSE_SIGNATURE_TOLERANCE_SECONDS (600)" in problem["msg"]

    @pytest.mark.slow  # a process per case
    @pytest.mark.parametrize(("args", "variable", "value", "words"), [
        (("db", "current"), "CLEARHOUSE_LOG_JSON", "maybe", "valid boolean"),
        (("db", "current"), "CLEARHOUSE_NONCE_TTL_SECONDS", "100",
         "less than twice CLEARHOUSE_SIGNATURE_TOLERANCE_SECONDS (300)"),
        (("db", "current"), "CLEARHOUSE_SANDBOX_FAULTS", "notjson", "not JSON"),
        (("db", "current"), "CLEARHOUSE_RECON_APPROVAL_THRESHOLD", "-1", "greater than or equal to 0"),
        (("serve",), "CLEARHOUSE_PORT", "70000", "less than or equal to 65535"),
        (("worker", "--once"), "CLEARHOUSE_LOG_LEVEL", "FOO", "'FOO' is not a log level"),
        (("sandbox", "deliver"), "CLEARHOUSE_SANDBOX_FAULTS", '{"sandbox_card": {"decline_rate": 2}}',
         "sandbox_card: decline_rate is a probability between 0 and 1, not 2"),
        (("worker", "--once"), "CLEARHOUSE_SANDBOX_FAULTS", '{"sandbox_crd": {}}', "no sandbox channel 'sandbox_crd'"),
    ], ids=["log-json", "nonce-ttl", "faults-not-json", "recon-threshold", "port-range", "log-level",
            "fault-rate", "fault-channel"])
    def test_a_wrong_value_is_one_line_naming_its_variable(self, nowhere, args, variable, value, words):
        url, cwd = nowhere
        result = clearhouse(*args, url=url, cwd=cwd, timeout=60, **{variable: value})
        error, check = refused(result, words)
        assert error.startswith(f"error: {variable}: ")
        assert check == f"check {variable} (docs/configuration.md)"
        assert not sqlite_file(url).parent.exists()


# ------------------------------------------------------------------------------------ serve


class TestServeOptions:
    @pytest.fixture(autouse=True)
    def _keep_logging(self, monkeypatch):
        # The app's callback configures logging for the process: not this test process's.
        monkeypatch.setattr(cli, "configure_logging", lambda *args, **kwargs: None)

    @pytest.mark.parametrize("port", ["0", "70000", "-1"])
    def test_a_port_outside_1_to_65535_is_a_usage_error(self, port):
        result = invoke(cli.app, "serve", "--port", port)
        assert result.exit_code == 2, result.output
        assert "Invalid value for '--port'" in said(result)

    def test_help_says_where_the_defaults_come_from_and_what_a_reference_is(self):
        assert "default: CLEARHOUSE_HOST" in said(invoke(cli.app, "serve", "--help"))
        assert "default: CLEARHOUSE_PORT" in said(invoke(cli.app, "serve", "--help"))
        pay = said(invoke(cli.app, "sandbox", "pay", "--help"))
        assert "attempts[].id" in pay and "attempts[].reference" not in pay
        verify = said(invoke(cli.app, "ledger", "verify", "--help"))
        assert "exit 1 if any" in verify and "first failure" not in verify


# ------------------------------------------------------------------------------------ db upgrade


class TestDbUpgrade:
    def test_an_unknown_revision_is_a_usage_error_that_touches_no_database(self, nowhere, settings_from):
        url, _ = nowhere
        settings_from(url)
        result = invoke(cli.db_app, "upgrade", "nosuchrev")
        assert result.exit_code == 2, result.output
        assert "Can't locate revision identified by 'nosuchrev'" in said(result)
        assert f"the newest is {head_revision()}" in said(result)
        assert not sqlite_file(url).parent.exists()

    def test_base_is_no_revision_to_upgrade_to(self, nowhere, settings_from):
        url, _ = nowhere
        settings_from(url)
        result = invoke(cli.db_app, "upgrade", "base")
        assert result.exit_code == 2 and "'base' is not one revision to upgrade to" in said(result)

    def test_an_older_revision_changes_nothing_and_says_where_the_database_is(self, database_url, settings_from):
        settings_from(database_url)
        result = invoke(cli.db_app, "upgrade", "0001_ledger")
        assert result.exit_code == 0, result.output
        assert (f"database at {head_revision()}, already past 0001_ledger: nothing done "
                "(there is no downgrade)") in said(result)
        engine = make_engine(database_url, pool_size=1)
        try:
            assert current_revision(engine) == head_revision()
        finally:
            engine.dispose()

    def test_head_names_the_revision_reached(self, database_url, settings_from):
        settings_from(database_url)
        result = invoke(cli.db_app, "upgrade")
        assert result.exit_code == 0, result.output
        assert f"database at head ({head_revision()})" in said(result)


# ------------------------------------------------------------------------------------ sandbox statement


class TestSandboxStatementOut:
    @pytest.fixture
    def statement(self, tmp_path, settings_from):
        settings_from(f"sqlite:///{tmp_path / 'unused.db'}", CLEARHOUSE_SANDBOX_DIR=str(tmp_path / "sandbox"))

        def run(out: Path) -> object:
            return invoke(sandbox_commands.app, "statement", "--channel", "sandbox_card", "--date", "2026-11-24",
                          "--out", str(out))
        return run

    def test_a_missing_folder_or_a_folder_is_a_usage_error(self, statement, tmp_path):
        missing = statement(tmp_path / "nonexistent" / "x.csv")
        assert missing.exit_code == 2, missing.output
        assert "the folder of" in said(missing) and "does not exist" in said(missing)
        folder = statement(tmp_path)
        assert folder.exit_code == 2 and "is a folder" in said(folder), folder.output
        assert not (tmp_path / "nonexistent").exists()

    def test_a_file_that_cannot_be_written_is_one_message(self, statement):
        result = statement(Path("/proc/clearhouse-statement.csv"))  # /proc takes no new files, even from root
        assert result.exit_code == 2, result.output
        assert "cannot write '/proc/clearhouse-statement.csv'" in said(result)

    def test_a_writable_file_is_written(self, statement, tmp_path):
        result = statement(tmp_path / "card.csv")
        assert result.exit_code == 0, result.output
        assert (tmp_path / "card.csv").read_text().startswith("date,time,type,reference")


# ------------------------------------------------------------------------------------ keys


class TestKeysCreateRules:
    """The rules of the API's key routes, refused before the database is opened."""

    @pytest.mark.parametrize(("args", "words"), [
        (["--platform", "--scopes", ""], "--scopes names no scope"),
        (["--merchant-id", "mch_x", "--scopes", " , "], "--scopes names no scope"),
        (["--platform", "--live", "--scopes", "ledger:read"], "--live is for a merchant key"),
        (["--live"], "give exactly one of --platform or --merchant-id"),
        (["--merchant-id", "mch_x", "--name", "x" * 201], "--name is at most 200 characters, not 201"),
        (["--merchant-id", "mch_x", "--expires-at", "9999-12-31T23:00:00-05:00"], "past the year 9999"),
    ], ids=["empty-scopes", "blank-scopes", "live-platform", "live-alone", "long-name", "expiry-overflow"])
    def test_refused_with_one_line_and_exit_2(self, nowhere, settings_from, args, words):
        url, _ = nowhere
        settings_from(url)
        result = invoke(identity_commands.keys_app, "create", *args, "--json")
        assert result.exit_code == 2, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and words in errors[0], result.output
        assert "cks_" not in result.output
        assert not sqlite_file(url).parent.exists()


class TestKeysOnADatabase:
    def test_an_expiry_with_an_offset_is_stored_in_utc(self, database_url, settings_from):
        settings_from(database_url)
        engine = make_engine(database_url, pool_size=1)
        try:
            merchant = transact(engine, lambda s: identity.create_merchant(s, SYSTEM, name="Offset Shop"))
            made = invoke(identity_commands.keys_app, "create", "--merchant-id", merchant.id,
                          "--expires-at", "2027-06-30T00:00:00+08:00", "--json")
            assert made.exit_code == 0, made.output
            key = transact(engine, lambda s: identity.find_key(s, json.loads(made.stdout)["api_key_id"]))
        finally:
            engine.dispose()
        assert key.expires_at.isoformat() == "2027-06-29T16:00:00+00:00"

    def test_revoke_revokes_once_and_refuses_the_second_time(self, database_url, settings_from):
        settings_from(database_url)
        made = json.loads(invoke(identity_commands.keys_app, "create", "--platform", "--scopes", "ledger:read",
                                 "--json").stdout)
        revoked = invoke(identity_commands.keys_app, "revoke", made["api_key_id"])
        assert revoked.exit_code == 0 and f"API key {made['api_key_id']} revoked" in said(revoked)
        again = invoke(identity_commands.keys_app, "revoke", made["api_key_id"])
        assert again.exit_code == 2 and "error: api_key_already_revoked" in again.output, again.output
        unknown = invoke(identity_commands.keys_app, "revoke", "ck_test_nosuchkey")
        assert unknown.exit_code == 2 and "error: not_found" in unknown.output, unknown.output


# ------------------------------------------------------------------------------------ database and keys at start-up


@pytest.mark.slow  # a process per case, on each backend
class TestDatabaseWithoutSchema:
    """An unmigrated database is the database's fault (the data keys cannot be read), not the keys'."""

    @pytest.mark.parametrize("args", [("worker", "--once"), ("keys", "create", "--platform", "--json")],
                             ids=["worker", "keys-create"])
    def test_blames_the_database_url_and_names_db_upgrade(self, unmigrated_url, tmp_path, args):
        result = clearhouse(*args, url=unmigrated_url, cwd=tmp_path, timeout=60, CLEARHOUSE_MASTER_KEY=MASTER_KEY)
        error, check = refused(result, "data_keys", "a database without the schema needs `clearhouse db upgrade`")
        assert check.startswith("check CLEARHOUSE_DATABASE_URL (now ")
        assert "MASTER_KEY" not in error + check
        assert result.stdout == ""  # no counts, no key


@pytest.mark.slow  # processes, and a database of its own per backend
class TestWorkerExitStatus:
    @pytest.fixture
    def broken_url(self, backend, unmigrated_url, request) -> str:
        """A migrated database that lost a table the worker's jobs use."""
        if backend == "sqlite":
            shutil.copyfile(request.getfixturevalue("sqlite_template"), sqlite_file(unmigrated_url))
            with sqlite3.connect(sqlite_file(unmigrated_url)) as connection:
                connection.execute("DROP TABLE idempotency_keys")
            return unmigrated_url
        upgrade(unmigrated_url)
        engine = make_engine(unmigrated_url, pool_size=1)
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE idempotency_keys"))
        engine.dispose()
        return unmigrated_url

    def test_once_exits_1_when_a_job_failed_and_still_runs_the_others(self, broken_url, tmp_path):
        result = clearhouse("worker", "--once", url=broken_url, cwd=tmp_path, timeout=120,
                            CLEARHOUSE_MASTER_KEY=MASTER_KEY)
        assert result.returncode == 1, result.stdout + result.stderr
        counts = json.loads(result.stdout)
        assert counts["idempotency.purge_expired"] == -1
        # 12 jobs since session 20 (payments.resolve_captures).
        assert len(counts) == 12 and all(v >= 0 for k, v in counts.items() if k != "idempotency.purge_expired")
        assert "worker_job_failed" in result.stderr

    def test_without_its_master_key_the_worker_stops_at_start_up(self, nowhere):
        url, cwd = nowhere
        result = clearhouse("worker", "--once", url=url, cwd=cwd, timeout=60,
                            CLEARHOUSE_MASTER_KEY_FILE=str(cwd / "no.key"))
        refused(result, "no.key does not exist", "check CLEARHOUSE_MASTER_KEY or CLEARHOUSE_MASTER_KEY_FILE")
        assert result.stdout == ""

