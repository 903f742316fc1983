"""Session 15 (data protection): data key rotation reaches running servers, key rotations are
audited, a damaged API key secret is a 401, 404s do not repeat a card number, and SQLite
files are private."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update

from clearhouse.identity.models import ApiKey
from clearhouse.kit import crypto
from clearhouse.kit.crypto import ensure_key_file
from clearhouse.kit.settings import Settings
from clearhouse.vault.models import VaultCard
from tests.conftest import CARD_EXP_YEAR, make_key
from tests.test_cli import clearhouse, ok
from tests.vault.support import TEST_PANS

api_keys = ApiKey.__table__


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "master.key"
    assert ensure_key_file(path)
    return path


@pytest.fixture
def settings(database_url: str, tmp_path: Path, key_file: Path) -> Settings:
    """The server reads its master keys from a file, so `clearhouse keys rotate` can rotate them."""
    return Settings(database_url=database_url, master_key=None, master_key_file=key_file,
                    sandbox_dir=tmp_path / "sandbox")


def vault_card(client, merchant_id: str, number: str = TEST_PANS["visa"]) -> dict:
    response = client.post("/v1/vault/cards", json={
        "number": number, "exp_month": 12, "exp_year": CARD_EXP_YEAR, "merchant_id": merchant_id})
    assert response.status_code == 201, response.text
    return response.json()


def data_key_of(engine: Engine, card_id: str) -> str:
    with engine.connect() as connection:
        token = connection.execute(
            select(VaultCard.number_ciphertext).where(VaultCard.id == card_id)).scalar_one()
    return token.split(".")[1]


def rotate_by_cli(database_url: str, tmp_path: Path, key_file: Path) -> dict:
    cwd = tmp_path / "cli"
    cwd.mkdir(exist_ok=True)
    result = ok(clearhouse("keys", "rotate", "--data-key", "--json", url=database_url, cwd=cwd,
                           CLEARHOUSE_MASTER_KEY="", CLEARHOUSE_MASTER_KEY_FILE=str(key_file)))
    return json.loads(result.stdout)


class TestDataKeyRotationReachesARunningServer:
    @pytest.mark.slow  # one `clearhouse` process
    def test_new_cards_use_the_new_key_without_a_restart_and_the_rotation_is_audited(
            self, app, client, database_url, tmp_path, key_file, monkeypatch):
        merchant_id = client.post("/v1/merchants", json={"name": "Shop"}).json()["id"]
        before = vault_card(client, merchant_id)
        old_key = data_key_of(app.state.engine, before["id"])

        report = rotate_by_cli(database_url, tmp_path, key_file)
        new_key = report["data_key"]["data_key_id"]
        assert report["data_key"]["retired"] == [old_key] and new_key != old_key

        # The bound (ACTIVE_KEY_RECHECK_SECONDS, 5 s) passed: the server looks again.
        monkeypatch.setattr(crypto, "ACTIVE_KEY_RECHECK_SECONDS", 0.0, raising=False)
        after = vault_card(client, merchant_id, TEST_PANS["mastercard"])
        assert data_key_of(app.state.engine, after["id"]) == new_key
        # Both cards still read (the retired key stays for decryption).
        for card in (before, after):
            assert client.get(f"/v1/vault/cards/{card['id']}").status_code == 200

        # Both rotations are in the audit trail, as system/cli (operations.md).
        events = client.get("/v1/audit/events", params={"limit": 500}).json()["data"]
        rotations = {e["action"]: e for e in events if e["action"].startswith("keys.")}
        assert set(rotations) == {"keys.master_key.rotate", "keys.data_key.rotate"}, [e["action"] for e in events]
        master, data = rotations["keys.master_key.rotate"], rotations["keys.data_key.rotate"]
        assert (master["actor_type"], master["actor_id"]) == ("system", "cli") == (data["actor_type"], data["actor_id"])
        assert master["object_id"] == report["master_key_id"]
        assert master["changes"]["data_keys_rewrapped"] == report["data_keys_rewrapped"]
        assert data["object_id"] == new_key and data["changes"]["retired"] == [old_key]
        assert data["changes"]["master_key_id"] == report["master_key_id"]
        key_bytes = [line.split()[1] for line in key_file.read_text().splitlines() if line and line[0] != "#"]
        assert not any(b in json.dumps(events) for b in key_bytes)

    def test_within_the_bound_the_known_key_is_used_without_a_database_look(self, app, client, monkeypatch):
        cipher = app.state.cipher
        known = cipher.active_field_key_id
        monkeypatch.setattr(cipher, "_read_keys", lambda *a: pytest.fail("looked before the bound"))
        merchant_id = client.post("/v1/merchants", json={"name": "Shop"}).json()["id"]
        card = vault_card(client, merchant_id)
        assert data_key_of(app.state.engine, card["id"]) == known


class TestDamagedApiKeySecret:
    def test_is_a_401_like_an_unknown_key_and_names_nothing(self, app, anonymous_client):
        credentials = make_key(app, scopes=["merchants:read"])
        with app.state.engine.begin() as connection:
            token = connection.execute(
                select(api_keys.c.secret_ciphertext).where(api_keys.c.id == credentials.key_id)).scalar_one()
            version, data_key_id, body = token.split(".")
            damaged = f"{version}.{data_key_id}.{body[:-2]}{'AA' if body[-2:] != 'AA' else 'BB'}"
            connection.execute(update(api_keys).where(api_keys.c.id == credentials.key_id)
                               .values(secret_ciphertext=damaged))
        anonymous_client.auth = credentials.auth
        response = anonymous_client.get("/v1/merchants")
        assert response.status_code == 401, response.text
        assert response.json()["code"] == "signature_invalid"
        assert data_key_id not in response.text and "api_keys" not in response.text
        assert "decrypt" not in response.text


class TestNotFoundDoesNotRepeatACardNumber:
    @pytest.mark.parametrize("path", ["/v1/vault/cards/{}", "/v1/vault/bank_accounts/{}"])
    def test_a_card_number_in_the_path(self, client, path):
        for pan in (TEST_PANS["visa"], "4111-1111-1111-1111", "card_" + TEST_PANS["visa"], "GB82WEST12345698765432"):
            response = client.get(path.format(pan))
            assert response.status_code == 404, response.text
            text = response.text
            assert "4111111111111111" not in text and "1111-1111-1111" not in text
            assert "12345698765432" not in text

    def test_an_id_of_ours_is_still_repeated(self, client):
        response = client.get("/v1/vault/cards/card_01m8zzzzzzzzzzzzzzzzzzzzzz")
        assert response.json()["detail"] == "no card card_01m8zzzzzzzzzzzzzzzzzzzzzz"
        response = client.get("/v1/vault/bank_accounts/ba_01m8zzzzzzzzzzzzzzzzzzzzzz")
        assert response.json()["detail"] == "no bank account ba_01m8zzzzzzzzzzzzzzzzzzzzzz"


class TestSqliteFilesArePrivate:
    @pytest.mark.slow  # one `clearhouse` process
    def test_the_database_its_wal_and_a_sandbox_database_are_0600(self, tmp_path):
        database = tmp_path / "fresh" / "clearhouse.db"
        url = f"sqlite:///{database}"
        cwd = tmp_path / "cwd"
        cwd.mkdir()
        ok(clearhouse("db", "upgrade", url=url, cwd=cwd))
        from clearhouse.channels.connectors.sandbox import SandboxStore  # noqa: PLC0415

        store = SandboxStore(tmp_path / "sandbox" / "sandbox_card.db")
        with store.write() as connection:
            connection.execute("SELECT 1")
        from clearhouse.kit.db import make_engine  # noqa: PLC0415

        engine = make_engine(url)
        with engine.begin() as connection:  # a write keeps the WAL there while the engine is open
            connection.exec_driver_sql("CREATE TABLE scratch (x INTEGER)")
        files = [*database.parent.iterdir(), *(tmp_path / "sandbox").iterdir()]
        try:
            assert {p.name for p in files} >= {"clearhouse.db", "clearhouse.db-wal", "clearhouse.db-writer.lock",
                                                "sandbox_card.db", "sandbox_card.db-wal", "sandbox_card.db-writer.lock"}
            for path in files:
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        finally:
            engine.dispose()
