"""Session 14 findings outside the ledger's own endpoints: commands that read a database
refuse a SQLite file that is not there instead of making an empty one, ``serve --demo``
replaces demo credentials another database left behind, and ``/readyz`` documents its 503."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import text

from clearhouse import demo
from clearhouse.demo import credentials_path, write_credentials
from clearhouse.identity import service as identity
from clearhouse.identity.signing import ClearhouseAuth
from clearhouse.kit.crypto import FieldCipher, load_master_keys
from clearhouse.kit.db import head_revision, transact
from tests.identity.test_commands import MASTER_KEY
from tests.test_cli import clearhouse, ok, sqlite_file
from tests.test_session13_cli import refused


@pytest.fixture
def mistyped(tmp_path: Path) -> tuple[str, Path]:
    """A SQLite URL whose folder and file do not exist (a typo), and a working directory."""
    work = tmp_path / "work"
    work.mkdir()
    return f"sqlite:///{tmp_path / 'typo_dir' / 'clearhuose.db'}", work


class TestACommandThatReadsRefusesASQLiteFileThatIsNotThere:
    """Only ``db upgrade``, ``demo`` and ``serve`` create the database; a command that reads one
    names the missing file and how to create it, and leaves no folder, file or lock behind."""

    @pytest.mark.parametrize("args", [("ledger", "verify"), ("ledger", "verify", "--json"), ("worker", "--once"),
                                      ("audit", "verify"), ("keys", "revoke", "ck_test_none"),
                                      ("recon", "clearing", "--date", "2026-11-23")],
                             ids=["verify", "verify-json", "worker", "audit-verify", "keys-revoke", "recon-clearing"])
    def test_refused_with_the_file_named_and_nothing_created(self, mistyped, args):
        url, cwd = mistyped
        result = clearhouse(*args, url=url, cwd=cwd, timeout=60, CLEARHOUSE_MASTER_KEY=MASTER_KEY)
        error, check = refused(result, f"no SQLite database at {sqlite_file(url)}", "`clearhouse db upgrade`")
        assert check == f"check CLEARHOUSE_DATABASE_URL (now {url})"
        assert result.stdout == ""
        assert not sqlite_file(url).parent.exists()
        assert list(cwd.iterdir()) == []

    def test_db_current_answers_none_without_making_the_file(self, mistyped):
        url, cwd = mistyped
        result = ok(clearhouse("db", "current", url=url, cwd=cwd, timeout=60))
        assert result.stdout.strip() == f"none (no database at {sqlite_file(url)}: `clearhouse db upgrade` creates it)"
        assert not sqlite_file(url).parent.exists()

    def test_db_upgrade_still_creates_it_and_verify_then_reads_it(self, mistyped):
        url, cwd = mistyped
        ok(clearhouse("db", "upgrade", url=url, cwd=cwd, timeout=60))
        assert ok(clearhouse("db", "current", url=url, cwd=cwd, timeout=60)).stdout.strip() == head_revision()
        assert json.loads(ok(clearhouse("ledger", "verify", "--json", url=url, cwd=cwd)).stdout)["ok"] is True


class TestReadyzDocumentsItsUnavailableAnswer:
    def test_the_503_it_answers_is_in_the_openapi_document(self, anonymous_client, engine):
        responses = anonymous_client.get("/openapi.json").json()["paths"]["/readyz"]["get"]["responses"]
        # 400: a repeated Clearhouse header or a NUL in the query, refused before any route (session 17).
        assert set(responses) == {"200", "400", "503"}
        unavailable = responses["503"]["content"]["application/json"]["schema"]
        assert unavailable["properties"]["status"] == {"type": "string", "enum": ["unavailable"]}
        with engine.begin() as db:
            revision = db.scalar(text("SELECT version_num FROM alembic_version"))
            db.execute(text("UPDATE alembic_version SET version_num = 'elsewhere'"))
        try:
            answer = anonymous_client.get("/readyz")
        finally:
            with engine.begin() as db:
                db.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
        assert answer.status_code == 503
        assert answer.json()["status"] == "unavailable"
        assert set(answer.json()) <= set(unavailable["properties"])


class TestDemoCredentialsLeftByAnotherDatabase:
    """``serve --demo`` and ``demo`` write ``demo-credentials.json`` once; a file whose keys the
    database does not hold (an earlier database's) would have every request signed with it
    refused 401, so it is replaced, and the console says so."""

    @pytest.fixture
    def stale_file(self, settings, monkeypatch, tmp_path) -> Path:
        monkeypatch.chdir(tmp_path)  # on PostgreSQL the file goes to var/ in the working directory
        path = credentials_path(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "platform": {"api_key_id": "key_of_another_database", "api_secret": "sk_elsewhere"},
            "merchant": {"merchant_id": "mch_demo", "api_key_id": "key_of_another_database_2",
                         "api_secret": "sk_elsewhere_2"},
        }))
        path.chmod(0o600)
        return path

    def test_are_replaced_by_keys_of_this_database(self, app, anonymous_client, engine, settings, stale_file):
        transact(engine, demo.load)
        assert write_credentials(engine, settings) == (stale_file, True)
        assert stat.S_IMODE(stale_file.stat().st_mode) == 0o600
        fresh = json.loads(stale_file.read_text())
        cipher = FieldCipher.open(engine, load_master_keys(settings))
        for who in ("platform", "merchant"):
            key = transact(engine, lambda s, who=who: identity.find_key(s, fresh[who]["api_key_id"]))
            assert identity.key_secret(cipher, key) == fresh[who]["api_secret"]
        anonymous_client.auth = ClearhouseAuth(fresh["platform"]["api_key_id"], fresh["platform"]["api_secret"])
        assert anonymous_client.get("/v1/merchants/mch_demo").status_code == 200
        assert {user["password"] is not None for user in fresh["users"].values()} == {True}
        # This database's own file is kept as it is.
        assert write_credentials(engine, settings) is None
        assert json.loads(stale_file.read_text()) == fresh

    def test_demo_users_this_database_has_are_kept_and_listed_without_a_password(
        self, app, engine, settings, stale_file
    ):
        transact(engine, demo.load)
        stale = stale_file.read_text()
        assert write_credentials(engine, settings) == (stale_file, True)
        stale_file.write_text(stale)  # this database's file lost, another's put in its place
        assert write_credentials(engine, settings) == (stale_file, True)
        users = json.loads(stale_file.read_text())["users"]
        assert {user["password"] for user in users.values()} == {None}

    def test_the_demo_command_says_it_replaced_them(self, tmp_path):
        work = tmp_path / "work"
        work.mkdir()
        database = tmp_path / "data" / "clearhouse.db"
        url = f"sqlite:///{database}"
        ok(clearhouse("demo", url=url, cwd=work, CLEARHOUSE_MASTER_KEY=MASTER_KEY))
        path = database.parent / "demo-credentials.json"
        first = json.loads(path.read_text())
        for leftover in database.parent.glob("clearhouse.db*"):
            os.remove(leftover)  # a fresh database beside the old credentials
        again = ok(clearhouse("demo", url=url, cwd=work, CLEARHOUSE_MASTER_KEY=MASTER_KEY))
        said = " ".join(again.stderr.split())
        assert f"{path} held API keys this database does not have" in said, said
        assert "fresh demo credentials written over it" in said
        assert json.loads(path.read_text())["platform"]["api_key_id"] != first["platform"]["api_key_id"]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
