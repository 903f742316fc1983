"""Envelope encryption (kit/crypto.py) on both databases: round trips, tampering, wrong
keys at start-up, and master/data key rotation."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update

from clearhouse.kit.crypto import (
    CryptoConfigError,
    CryptoError,
    DataKey,
    FieldCipher,
    ensure_key_file,
    load_master_keys,
    rotate_data_key,
    rotate_master_key,
)
from clearhouse.kit.settings import Settings

CONTEXT = "vault_cards.number:card_test"
PAN = "4242424242424242"


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "master.key"
    assert ensure_key_file(path)
    return path


@pytest.fixture
def key_settings(database_url: str, key_file: Path) -> Settings:
    return Settings(database_url=database_url, master_key_file=key_file, master_key=None)


@pytest.fixture
def cipher(engine: Engine, key_settings: Settings) -> FieldCipher:
    return FieldCipher.open(engine, load_master_keys(key_settings))


def _secret_bytes(path: Path) -> list[str]:
    """Every base64 key and its raw bytes' hex in a key file: what must never be printed."""
    out = []
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            encoded = line.split()[1]
            out += [encoded, base64.b64decode(encoded).hex()]
    return out


class TestRoundTrip:
    def test_encrypt_then_decrypt_gives_the_plaintext(self, cipher: FieldCipher):
        token = cipher.encrypt(PAN, CONTEXT)
        assert token.startswith(f"v1.{cipher.active_field_key_id}.")
        assert PAN not in token
        assert cipher.decrypt(token, CONTEXT) == PAN

    def test_each_encryption_uses_a_fresh_nonce(self, cipher: FieldCipher):
        assert cipher.encrypt(PAN, CONTEXT) != cipher.encrypt(PAN, CONTEXT)

    def test_unicode_and_empty_text(self, cipher: FieldCipher):
        for text in ("", "Zoë Ångström 日本", "x" * 10_000):
            assert cipher.decrypt(cipher.encrypt(text, CONTEXT), CONTEXT) == text

    def test_fingerprint_is_stable_keyed_and_not_a_plain_hash(self, engine: Engine, key_settings: Settings,
                                                             cipher: FieldCipher):
        import hashlib

        assert cipher.fingerprint(PAN) == cipher.fingerprint(PAN)
        assert cipher.fingerprint(PAN) != cipher.fingerprint("4000056655665556")
        assert cipher.fingerprint(PAN) != hashlib.sha256(PAN.encode()).hexdigest()
        # Another process on the same database fingerprints alike (the key is shared, not per process).
        assert FieldCipher.open(engine, load_master_keys(key_settings)).fingerprint(PAN) == cipher.fingerprint(PAN)

    def test_open_creates_one_active_key_per_purpose_once(self, engine: Engine, key_settings: Settings,
                                                         cipher: FieldCipher):
        FieldCipher.open(engine, load_master_keys(key_settings))
        with engine.connect() as connection:
            rows = connection.execute(select(DataKey.purpose, DataKey.active)).all()
        assert sorted(rows) == [("field", True), ("fingerprint", True)]


class TestTampering:
    def test_wrong_context_is_refused(self, cipher: FieldCipher):
        token = cipher.encrypt(PAN, CONTEXT)
        with pytest.raises(CryptoError, match="did not authenticate"):
            cipher.decrypt(token, "vault_cards.number:card_other")

    @pytest.mark.parametrize("position", [0, 5, 20, -1])
    def test_a_changed_byte_is_refused(self, cipher: FieldCipher, position: int):
        token = cipher.encrypt(PAN, CONTEXT)
        prefix, body = token.rsplit(".", 1)
        raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        raw[position] ^= 0x01
        forged = f"{prefix}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"
        with pytest.raises(CryptoError):
            cipher.decrypt(forged, CONTEXT)

    def test_truncated_or_foreign_tokens_are_refused(self, cipher: FieldCipher):
        token = cipher.encrypt(PAN, CONTEXT)
        for bad in (token[:-10], "v2" + token[2:], PAN, "v1.dk_nope.AAAA", token + "."):
            with pytest.raises(CryptoError):
                cipher.decrypt(bad, CONTEXT)

    def test_the_fingerprint_key_cannot_decrypt_fields(self, engine: Engine, cipher: FieldCipher):
        with engine.connect() as connection:
            fingerprint_id = connection.execute(select(DataKey.id).where(DataKey.purpose == "fingerprint")).scalar()
        token = cipher.encrypt(PAN, CONTEXT).replace(cipher.active_field_key_id, fingerprint_id)
        with pytest.raises(CryptoError, match="not a field key"):
            cipher.decrypt(token, CONTEXT)


class TestStartUpKeyErrors:
    def test_missing_master_key_id_is_named_at_open(self, engine: Engine, cipher: FieldCipher,
                                                   key_settings: Settings, tmp_path: Path):
        other = tmp_path / "other.key"
        other.write_text(f"mk_other {_key()}\n")
        with pytest.raises(CryptoConfigError) as caught:
            FieldCipher.open(engine, load_master_keys(Settings(master_key_file=other)))
        message = str(caught.value)
        assert cipher.active_field_key_id in message or "dk_" in message
        assert load_master_keys(key_settings).active_id in message
        assert "not in master key file" in message

    def test_wrong_master_key_under_the_right_id_is_refused_at_open(self, engine: Engine, cipher: FieldCipher,
                                                                    key_settings: Settings, tmp_path: Path):
        key_id = load_master_keys(key_settings).active_id
        impostor = tmp_path / "impostor.key"
        impostor.write_text(f"{key_id} {_key()}\n")
        with pytest.raises(CryptoConfigError, match=f"master key {key_id} .* does not unwrap data key dk_"):
            FieldCipher.open(engine, load_master_keys(Settings(master_key_file=impostor)))

    def test_an_altered_wrapped_key_is_refused_at_open(self, engine: Engine, cipher: FieldCipher,
                                                       key_settings: Settings):
        with engine.begin() as connection:
            wrapped = connection.execute(
                select(DataKey.wrapped_key).where(DataKey.id == cipher.active_field_key_id)
            ).scalar_one()
            raw = bytearray(base64.b64decode(wrapped))
            raw[-1] ^= 0x80
            connection.execute(update(DataKey).where(DataKey.id == cipher.active_field_key_id)
                               .values(wrapped_key=base64.b64encode(bytes(raw)).decode()))
        with pytest.raises(CryptoConfigError, match=cipher.active_field_key_id):
            FieldCipher.open(engine, load_master_keys(key_settings))

    def test_unmigrated_database_is_a_clear_error(self, tmp_path: Path, key_settings: Settings):
        from clearhouse.kit.db import make_engine

        empty = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
        try:
            with pytest.raises(CryptoConfigError, match="clearhouse db upgrade"):
                FieldCipher.open(empty, load_master_keys(key_settings))
        finally:
            empty.dispose()


class TestKeyFiles:
    def test_ensure_key_file_creates_a_private_file_once(self, tmp_path: Path):
        path = tmp_path / "new" / "dir" / "master.key"
        assert ensure_key_file(path) is True
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        content = path.read_text()
        assert ensure_key_file(path) is False
        assert path.read_text() == content
        keyring = load_master_keys(Settings(master_key_file=path))
        assert len(keyring.active_key) == 32

    def test_last_line_is_active_and_comments_are_skipped(self, tmp_path: Path):
        path = tmp_path / "m.key"
        path.write_text(f"# comment\n\nmk_a {_key()}\n  # indented comment\nmk_b {_key()}\n")
        keyring = load_master_keys(Settings(master_key_file=path))
        assert list(keyring.keys) == ["mk_a", "mk_b"]
        assert keyring.active_id == "mk_b"

    @pytest.mark.parametrize(
        ("content", "expected"),
        [
            ("mk_a {good}\nmk_b\n", "line 2: expected"),
            ("mk_a not*base64!\n", "line 1: the key is not valid base64"),
            (f"mk_a {base64.b64encode(b'short').decode()}\n", "line 1: the key is 5 bytes"),
            ("mk_a {good}\n#\nmk_a {good}\n", "line 3: key id mk_a appears twice"),
            ("bad/id {good}\n", "line 1: key id"),
            ("# only a comment\n", "holds no key"),
        ],
    )
    def test_bad_lines_name_the_file_and_line_and_never_the_key(self, tmp_path: Path, content: str, expected: str):
        path = tmp_path / "m.key"
        path.write_text(content.replace("{good}", _key()))
        with pytest.raises(CryptoConfigError) as caught:
            load_master_keys(Settings(master_key_file=path))
        message = str(caught.value)
        assert str(path) in message
        assert expected in message
        for line in content.splitlines():
            parts = line.split()
            if len(parts) == 2 and not line.startswith("#"):
                assert parts[1] not in message

    def test_missing_file_is_named(self, tmp_path: Path):
        path = tmp_path / "absent.key"
        with pytest.raises(CryptoConfigError, match=f"{path} does not exist"):
            load_master_keys(Settings(master_key_file=path))

    def test_environment_key_form(self, engine: Engine, tmp_path: Path):
        encoded = _key()
        settings = Settings(master_key=f"mk_env:{encoded}", master_key_file=tmp_path / "ignored.key")
        keyring = load_master_keys(settings)
        assert keyring.active_id == "mk_env"
        assert keyring.source == "CLEARHOUSE_MASTER_KEY"
        assert encoded not in repr(keyring)
        cipher = FieldCipher.open(engine, keyring)
        assert cipher.decrypt(cipher.encrypt(PAN, CONTEXT), CONTEXT) == PAN

    @pytest.mark.parametrize("value", ["no-colon", "mk:not-base64!", "mk:" + base64.b64encode(b"x" * 31).decode()])
    def test_bad_environment_key_is_named_without_its_value(self, value: str):
        with pytest.raises(CryptoConfigError, match="CLEARHOUSE_MASTER_KEY") as caught:
            load_master_keys(Settings(master_key=value))
        assert value.partition(":")[2] not in str(caught.value) or not value.partition(":")[2]


class TestRotation:
    def test_master_rotation_rewraps_and_old_ciphertexts_still_decrypt(self, engine: Engine, key_settings: Settings,
                                                                       cipher: FieldCipher, key_file: Path):
        old_id = load_master_keys(key_settings).active_id
        token = cipher.encrypt(PAN, CONTEXT)
        result = rotate_master_key(engine, key_settings)
        assert result["data_keys_rewrapped"] == 2
        assert result["master_key_id"] != old_id
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        keyring = load_master_keys(key_settings)
        assert keyring.active_id == result["master_key_id"]
        assert old_id in keyring.keys  # kept for reading until the operator removes it
        with engine.connect() as connection:
            assert set(connection.execute(select(DataKey.master_key_id)).scalars()) == {result["master_key_id"]}
        # The running cipher needs no restart.
        assert cipher.decrypt(token, CONTEXT) == PAN
        # A fresh process opened with only the new key reads old ciphertexts.
        new_only = key_file.parent / "new-only.key"
        new_line = key_file.read_text().splitlines()[-1]
        new_only.write_text(new_line + "\n")
        fresh = FieldCipher.open(engine, load_master_keys(Settings(master_key_file=new_only)))
        assert fresh.decrypt(token, CONTEXT) == PAN
        assert fresh.fingerprint(PAN) == cipher.fingerprint(PAN)
        # ...and the old key alone no longer opens the database.
        old_only = key_file.parent / "old-only.key"
        old_only.write_text(key_file.read_text().splitlines()[-2] + "\n")
        with pytest.raises(CryptoConfigError, match="not in master key file"):
            FieldCipher.open(engine, load_master_keys(Settings(master_key_file=old_only)))

    def test_rotation_output_and_errors_carry_no_key_bytes(self, engine: Engine, key_settings: Settings,
                                                           cipher: FieldCipher, key_file: Path):
        result = rotate_master_key(engine, key_settings)
        for secret in _secret_bytes(key_file):
            assert secret not in repr(result)
            assert secret not in repr(load_master_keys(key_settings))

    def test_master_rotation_refuses_the_environment_key(self, engine: Engine, tmp_path: Path):
        settings = Settings(master_key=f"mk_env:{_key()}", master_key_file=tmp_path / "m.key")
        with pytest.raises(CryptoConfigError, match="CLEARHOUSE_MASTER_KEY is set"):
            rotate_master_key(engine, settings)
        assert not (tmp_path / "m.key").exists()

    def test_data_key_rotation_keeps_old_ciphertexts_readable(self, engine: Engine, key_settings: Settings,
                                                              cipher: FieldCipher):
        other_process = FieldCipher.open(engine, load_master_keys(key_settings))
        old_key_id = cipher.active_field_key_id
        old_token = cipher.encrypt(PAN, CONTEXT)
        result = rotate_data_key(engine, cipher)
        assert result["retired"] == [old_key_id]
        new_token = cipher.encrypt(PAN, CONTEXT)
        assert new_token.split(".")[1] == result["data_key_id"] != old_key_id
        assert cipher.decrypt(old_token, CONTEXT) == PAN
        # A process that started before the rotation loads the new key on first sight.
        assert other_process.decrypt(new_token, CONTEXT) == PAN
        with engine.connect() as connection:
            active = connection.execute(
                select(DataKey.id).where(DataKey.purpose == "field", DataKey.active.is_(True))
            ).scalars().all()
        assert active == [result["data_key_id"]]

    def test_a_process_sees_a_data_key_wrapped_by_a_master_key_added_after_it_started(
        self, engine: Engine, key_settings: Settings, cipher: FieldCipher
    ):
        rotate_master_key(engine, key_settings)
        rotated_elsewhere = FieldCipher.open(engine, load_master_keys(key_settings))
        rotate_data_key(engine, rotated_elsewhere)
        token = rotated_elsewhere.encrypt(PAN, CONTEXT)
        assert cipher.decrypt(token, CONTEXT) == PAN  # re-reads the key file for the new master key

    def test_data_key_rotation_after_master_rotation_wraps_under_the_new_master_key(
        self, engine: Engine, key_settings: Settings, cipher: FieldCipher
    ):
        # `clearhouse keys rotate --data-key` opens its cipher before rotating the master key.
        master = rotate_master_key(engine, key_settings)
        data = rotate_data_key(engine, cipher)
        with engine.connect() as connection:
            wrapped_by = connection.execute(
                select(DataKey.master_key_id).where(DataKey.id == data["data_key_id"])
            ).scalar_one()
        assert wrapped_by == master["master_key_id"]
