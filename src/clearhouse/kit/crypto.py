"""Envelope encryption of single fields: AES-256-GCM data keys wrapped by a master key.

Why two layers: the master key lives outside the database (a key file or the
environment), so a copy of the database alone reads nothing; and rotating the master
key re-wraps a handful of data keys instead of re-encrypting every row.

- A master key file holds lines ``<key id> <base64 of 32 bytes>``; the LAST line is the
  active key, earlier lines stay readable so keys can be rotated without downtime.
- ``data_keys`` rows hold each data key as ``base64(nonce || AESGCM(master).encrypt(nonce,
  data_key, aad=data key id))`` beside the id of the master key that wrapped it.
- A field becomes ``v1.<data key id>.<base64url(nonce || ciphertext)>``, authenticated with
  a *context* (e.g. ``vault_cards.number:card_...``), so a ciphertext copied into another row
  or column fails to decrypt instead of passing as that row's value.

Key bytes are never put in an error message or a log line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Boolean, CheckConstraint, Index, String, Text, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, mapped_column

from clearhouse.kit import clock
from clearhouse.kit.db import transact
from clearhouse.kit.errors import ClearhouseError
from clearhouse.kit.ids import new_id
from clearhouse.kit.models import Base
from clearhouse.kit.types import UTCDateTime

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from clearhouse.kit.settings import Settings

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # the GCM standard nonce; random per encryption (2^-32 collision bound at 2^32 uses)
TOKEN_VERSION = "v1"
PURPOSES = ("field", "fingerprint")
ENV_NAME = "CLEARHOUSE_MASTER_KEY"
_KEY_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
ACTIVE_KEY_RECHECK_SECONDS = 5.0
"""How stale a process's idea of the active field key may get: at most this long after
``clearhouse keys rotate --data-key``, every running process encrypts under the new key."""

log = structlog.get_logger(__name__)


class DataKey(Base):
    """A data key, stored only wrapped by a master key."""

    __tablename__ = "data_keys"
    __table_args__ = (
        CheckConstraint("purpose IN ('field', 'fingerprint')", name="purpose"),
        # One active key per purpose: two processes starting on an empty table race to
        # create it, and this makes the loser retry and adopt the winner's key.
        Index(
            "uq_data_keys_active_purpose", "purpose", unique=True,
            sqlite_where=text("active"), postgresql_where=text("active"),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(16))
    master_key_id: Mapped[str] = mapped_column(String(64))
    wrapped_key: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CryptoConfigError(ValueError):
    """The master keys are missing, malformed, or do not open the database's data keys.

    Raised at start-up (or by ``clearhouse keys rotate``) so a misconfigured server stops
    with a clear message instead of serving garbage."""


class CryptoError(ClearhouseError):
    """A ciphertext did not authenticate: altered, copied from another field, or made with a
    key this process cannot read. Never answered with partial or guessed plaintext."""

    code = "decryption_failed"
    status = 500
    title = "Stored data could not be decrypted"


@dataclass
class Keyring:
    """The master keys this process knows, by id, and which one wraps new data keys."""

    keys: dict[str, bytes]
    active_id: str
    source: str
    """Where the keys came from, for messages: the file path or the environment variable."""
    path: Path | None = None
    """The key file, re-read when a data key names a master key added after start."""

    @property
    def active_key(self) -> bytes:
        return self.keys[self.active_id]

    def __repr__(self) -> str:  # never the key bytes
        return f"Keyring(ids={list(self.keys)}, active_id={self.active_id!r}, source={self.source!r})"


def _decode_key(encoded: str, where: str) -> bytes:
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise CryptoConfigError(f"{where}: the key is not valid base64") from None
    if len(raw) != KEY_BYTES:
        raise CryptoConfigError(f"{where}: the key is {len(raw)} bytes; AES-256 needs {KEY_BYTES}") from None
    return raw


def _check_key_id(key_id: str, where: str) -> None:
    if not _KEY_ID.match(key_id):
        raise CryptoConfigError(f"{where}: key id {key_id[:70]!r} must be 1-64 of A-Z a-z 0-9 _ . -")


def parse_key_file(path: Path) -> Keyring:
    """Read a master key file; every problem names the file and the line."""
    try:
        content = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CryptoConfigError(
            f"master key file {path} does not exist: restore it from your backup, set {ENV_NAME}, "
            "or, for development only, let `clearhouse demo` create one"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise CryptoConfigError(f"master key file {path} cannot be read: {type(error).__name__}") from None
    keys: dict[str, bytes] = {}
    active_id = ""
    for number, line in enumerate(content.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"master key file {path}, line {number}"
        parts = stripped.split()
        if len(parts) != 2:
            raise CryptoConfigError(f"{where}: expected '<key id> <base64 of {KEY_BYTES} bytes>'")
        key_id, encoded = parts
        _check_key_id(key_id, where)
        if key_id in keys:
            raise CryptoConfigError(f"{where}: key id {key_id} appears twice")
        keys[key_id] = _decode_key(encoded, where)
        active_id = key_id
    if not keys:
        raise CryptoConfigError(f"master key file {path} holds no key")
    return Keyring(keys=keys, active_id=active_id, source=f"master key file {path}", path=path)


def load_master_keys(settings: Settings) -> Keyring:
    """The master keys from ``CLEARHOUSE_MASTER_KEY`` when set, else from the key file."""
    if settings.master_key:
        where = ENV_NAME
        key_id, separator, encoded = settings.master_key.strip().partition(":")
        if not separator:
            raise CryptoConfigError(f"{where}: expected '<key id>:<base64 of {KEY_BYTES} bytes>'")
        _check_key_id(key_id, where)
        return Keyring(keys={key_id: _decode_key(encoded, where)}, active_id=key_id, source=where)
    if settings.master_key_file is None:
        raise CryptoConfigError(f"no master key: set {ENV_NAME} or CLEARHOUSE_MASTER_KEY_FILE")
    return parse_key_file(Path(settings.master_key_file))


def new_master_key_line() -> tuple[str, str]:
    """A fresh master key: ``(key id, "<key id> <base64>")``."""
    key_id = new_id("mk")
    return key_id, f"{key_id} {base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()}"


def _write_private(path: Path, content: str, *, exclusive: bool) -> None:
    """Write a file readable by its owner only, durably (fsync of the file and its folder)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    descriptor = os.open(path, flags, 0o600)
    try:
        os.write(descriptor, content.encode("utf-8"))
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


_FILE_HEADER = (
    "# Clearhouse master keys: '<key id> <base64 of 32 bytes>' per line; the last line is the active key.\n"
    "# Keep a copy offline: without these lines the encrypted fields cannot be read.\n"
)


def ensure_key_file(path: Path) -> bool:
    """Create a key file with one new master key if there is none (demo and development);
    True if it was created. Production keys are provisioned by the operator."""
    path = Path(path)
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    _key_id, line = new_master_key_line()
    try:
        _write_private(path, _FILE_HEADER + line + "\n", exclusive=True)
    except FileExistsError:  # another process made it first: theirs is the key
        return False
    return True


def _wrap(master_key: bytes, data_key_id: str, data_key: bytes) -> str:
    nonce = os.urandom(NONCE_BYTES)
    return base64.b64encode(nonce + AESGCM(master_key).encrypt(nonce, data_key, data_key_id.encode())).decode()


def _unwrap(keyring: Keyring, row: DataKey | Any) -> bytes:
    master_key = keyring.keys.get(row.master_key_id)
    if master_key is None:
        raise CryptoConfigError(
            f"data key {row.id} is wrapped by master key {row.master_key_id}, which is not in "
            f"{keyring.source} (known: {', '.join(keyring.keys)}); restore that key's line"
        )
    try:
        blob = base64.b64decode(row.wrapped_key, validate=True)
        data_key = AESGCM(master_key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], row.id.encode())
    except (InvalidTag, binascii.Error, ValueError):
        raise CryptoConfigError(
            f"master key {row.master_key_id} from {keyring.source} does not unwrap data key {row.id}: "
            "the key file holds a different key under that id, or the row was altered"
        ) from None
    if len(data_key) != KEY_BYTES:
        raise CryptoConfigError(f"data key {row.id} unwrapped to {len(data_key)} bytes, not {KEY_BYTES}")
    return data_key


def _new_data_key(session: Session, keyring: Keyring, purpose: str) -> tuple[str, bytes]:
    data_key_id = new_id("dk")
    data_key = AESGCM.generate_key(bit_length=256)
    session.add(DataKey(
        id=data_key_id, purpose=purpose, master_key_id=keyring.active_id,
        wrapped_key=_wrap(keyring.active_key, data_key_id, data_key), active=True, created_at=clock.now(),
    ))
    session.flush()
    return data_key_id, data_key


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _from_b64url(encoded: str) -> bytes:
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))


@dataclass
class FieldCipher:
    """Encrypts and decrypts fields with cached, unwrapped data keys (one per process)."""

    engine: Engine
    keyring: Keyring
    active_field_key_id: str
    fingerprint_key: bytes = field(repr=False)
    _keys: dict[str, tuple[str, AESGCM]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _active_checked_at: float = field(default_factory=time.monotonic, repr=False)
    _recheck_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(cls, engine: Engine, keyring: Keyring) -> FieldCipher:
        """Unwrap every data key now, so a wrong or missing master key stops start-up with a
        clear message; create the active field and fingerprint keys on first use."""
        try:
            with engine.connect() as connection:
                rows = connection.execute(select(DataKey.__table__)).all()
        except SQLAlchemyError as error:
            raise CryptoConfigError(
                f"cannot read the data_keys table ({type(error).__name__}); run `clearhouse db upgrade`"
            ) from None
        keys: dict[str, tuple[str, bytes]] = {row.id: (row.purpose, _unwrap(keyring, row)) for row in rows}
        active = {row.purpose: row.id for row in rows if row.active}
        missing = [purpose for purpose in PURPOSES if purpose not in active]
        if missing:

            def create(session: Session) -> dict[str, tuple[str, bytes]]:
                made: dict[str, tuple[str, bytes]] = {}
                for purpose in missing:
                    existing = session.scalars(
                        select(DataKey).where(DataKey.purpose == purpose, DataKey.active.is_(True))
                    ).first()
                    if existing is not None:  # another process created it since our read
                        made[purpose] = (existing.id, _unwrap(keyring, existing))
                    else:
                        made[purpose] = _new_data_key(session, keyring, purpose)
                return made

            for purpose, (data_key_id, data_key) in transact(engine, create, retry_integrity=True).items():
                keys[data_key_id] = (purpose, data_key)
                active[purpose] = data_key_id
        return cls(
            engine=engine,
            keyring=keyring,
            active_field_key_id=active["field"],
            fingerprint_key=keys[active["fingerprint"]][1],
            _keys={key_id: (purpose, AESGCM(raw)) for key_id, (purpose, raw) in keys.items()},
        )

    def encrypt(self, plaintext: str, context: str) -> str:
        """``v1.<data key id>.<base64url(nonce || ciphertext)>``, bound to ``context``."""
        nonce = os.urandom(NONCE_BYTES)
        data_key_id = self._active_key_id()
        aead = self._field_key(data_key_id)
        sealed = aead.encrypt(nonce, plaintext.encode("utf-8"), context.encode("utf-8"))
        return f"{TOKEN_VERSION}.{data_key_id}.{_b64url(nonce + sealed)}"

    def _active_key_id(self) -> str:
        """The active field key, re-read from ``data_keys`` when the last look is more than
        ``ACTIVE_KEY_RECHECK_SECONDS`` old (a rotation by another process takes effect here
        within that time, with no restart). One thread looks while the others go on with the
        key they know; if the look fails, the known key (still readable) stays in use."""
        if time.monotonic() - self._active_checked_at < ACTIVE_KEY_RECHECK_SECONDS:
            return self.active_field_key_id
        if not self._recheck_lock.acquire(blocking=False):
            return self.active_field_key_id
        try:
            if time.monotonic() - self._active_checked_at >= ACTIVE_KEY_RECHECK_SECONDS:
                try:
                    rows = self._read_keys("purpose = 'field' AND active")
                    if rows and rows[0].id != self.active_field_key_id:
                        self._field_key(rows[0].id)  # unwrapped now, re-reading the key file if needed
                        self.active_field_key_id = rows[0].id
                except Exception as error:  # noqa: BLE001 - encrypting under the known key is still right
                    log.error("active_data_key_check_failed", error=f"{type(error).__name__}: {error}",
                              active_field_key_id=self.active_field_key_id)
                self._active_checked_at = time.monotonic()
        finally:
            self._recheck_lock.release()
        return self.active_field_key_id

    def _read_keys(self, where: str, *params: str) -> list[Any]:
        """``data_keys`` rows on a driver connection of their own, outside any transaction of the
        caller's: on SQLite a second ``BEGIN IMMEDIATE`` beside the caller's would wait for it."""
        connection = self.engine.raw_connection()
        try:
            placeholder = "%s" if self.engine.dialect.name == "postgresql" else "?"
            cursor = connection.cursor()
            cursor.execute("SELECT id, purpose, master_key_id, wrapped_key FROM data_keys WHERE "
                           + where.replace("?", placeholder) + " ORDER BY created_at DESC", params)
            rows = cursor.fetchall()
            cursor.close()
        finally:
            connection.close()
        return [SimpleNamespace(id=r[0], purpose=r[1], master_key_id=r[2], wrapped_key=r[3]) for r in rows]

    def decrypt(self, token: str, context: str) -> str:
        """The plaintext, or ``CryptoError`` when the token is altered or made for another context."""
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != TOKEN_VERSION:
            raise CryptoError("the stored value is not a v1 ciphertext")
        _version, data_key_id, body = parts
        aead = self._field_key(data_key_id)
        try:
            blob = _from_b64url(body)
            plaintext = aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], context.encode("utf-8"))
        except (InvalidTag, binascii.Error, ValueError):
            raise CryptoError(
                f"a ciphertext under data key {data_key_id} did not authenticate for context "
                f"{context.split(':', 1)[0]!r}: it was altered or belongs to another field"
            ) from None
        return plaintext.decode("utf-8")

    def fingerprint(self, value: str) -> str:
        """A keyed digest (HMAC-SHA256, hex) that finds equal values without decrypting them;
        keyed so that the 10^15 or so possible card numbers cannot be hashed and looked up."""
        return hmac.new(self.fingerprint_key, value.encode("utf-8"), hashlib.sha256).hexdigest()

    def _field_key(self, data_key_id: str) -> AESGCM:
        cached = self._keys.get(data_key_id)
        if cached is None:
            cached = self._load(data_key_id)
        purpose, aead = cached
        if purpose != "field":
            raise CryptoError(f"data key {data_key_id} is a {purpose} key, not a field key")
        return aead

    def _load(self, data_key_id: str) -> tuple[str, AESGCM]:
        """A data key made by another process after this one started (``rotate_data_key``)."""
        with self._lock:
            if data_key_id in self._keys:
                return self._keys[data_key_id]
            found = self._read_keys("id = ?", data_key_id)
            row = found[0] if found else None
            if row is None:
                raise CryptoError(f"data key {data_key_id} does not exist")
            if row.master_key_id not in self.keyring.keys and self.keyring.path is not None:
                # The key file may have gained a master key since start (rotation by another
                # process); re-read it rather than fail.
                try:
                    self.keyring = parse_key_file(self.keyring.path)
                except CryptoConfigError as error:
                    raise CryptoError(str(error)) from None
            try:
                cached = (row.purpose, AESGCM(_unwrap(self.keyring, row)))
            except CryptoConfigError as error:
                raise CryptoError(str(error)) from None
            self._keys[data_key_id] = cached
            return cached


def _cli_actor() -> Any:
    from clearhouse.audit import service as audit

    return audit.Actor(type="system", id="cli")


def rotate_master_key(engine: Engine, settings: Settings, *, actor: Any = None) -> dict[str, Any]:
    """Append a new master key to the key file and re-wrap every data key under it; the
    re-wrap records ``keys.master_key.rotate`` in the audit trail in its transaction (``actor``:
    an ``audit.Actor``, by default ``system``/``cli``, since the command line is the caller).

    Order matters: the new line is written (durably) before any data key is re-wrapped, so
    a crash in between leaves data keys wrapped by a key the file still holds. Running
    servers keep their unwrapped data keys and need no restart; new processes read the
    new file. Old lines may be removed once no data key names them.
    """
    if settings.master_key:
        raise CryptoConfigError(
            f"{ENV_NAME} is set: rotation appends to a key file, and an environment key cannot be "
            f"appended to. Move the key into a file (one line '<key id> <base64>'), unset {ENV_NAME}, "
            "set CLEARHOUSE_MASTER_KEY_FILE, then rotate"
        )
    if settings.master_key_file is None:
        raise CryptoConfigError("no master key file configured (CLEARHOUSE_MASTER_KEY_FILE)")
    path = Path(settings.master_key_file)
    previous_key_id = parse_key_file(path).active_id  # the current file must be sound before we add to it
    content = path.read_text(encoding="utf-8")
    new_key_id, line = new_master_key_line()
    if content and not content.endswith("\n"):
        content += "\n"
    staging = path.with_name(path.name + ".rotating")
    _write_private(staging, content + line + "\n", exclusive=False)
    os.replace(staging, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    keyring = parse_key_file(path)
    assert keyring.active_id == new_key_id

    def rewrap(session: Session) -> int:
        from clearhouse.audit import service as audit

        rows = session.scalars(select(DataKey).order_by(DataKey.id).with_for_update()).all()
        for row in rows:
            data_key = _unwrap(keyring, row)
            row.wrapped_key = _wrap(keyring.active_key, row.id, data_key)
            row.master_key_id = new_key_id
        session.flush()
        audit.record(session, actor or _cli_actor(), "keys.master_key.rotate", "master_key", new_key_id, changes={
            "master_key_id": new_key_id, "previous_master_key_id": previous_key_id,
            "data_keys_rewrapped": len(rows), "key_file": str(path),
        })
        return len(rows)

    return {"master_key_id": new_key_id, "data_keys_rewrapped": transact(engine, rewrap)}


def rotate_data_key(engine: Engine, cipher: FieldCipher, *, actor: Any = None) -> dict[str, Any]:
    """A new active field data key for new encryptions; old keys stay for decryption. Records
    ``keys.data_key.rotate`` in the audit trail in the same transaction (``actor`` as for
    ``rotate_master_key``).

    Other running processes notice the new active key within ``ACTIVE_KEY_RECHECK_SECONDS``
    (``FieldCipher._active_key_id``) and encrypt under it from then on; until then they use
    the retired key, which stays readable, so nothing needs restarting."""

    keyring = cipher.keyring
    if keyring.path is not None:
        # The key file may have a newer active master key (rotate_master_key just ran, or
        # ran in another process): wrap under that one, not the key this cipher opened with.
        keyring = cipher.keyring = parse_key_file(keyring.path)

    def rotate(session: Session) -> tuple[str, bytes, list[str]]:
        from clearhouse.audit import service as audit

        retired = list(session.scalars(
            select(DataKey.id).where(DataKey.purpose == "field", DataKey.active.is_(True)).with_for_update()
        ))
        session.execute(update(DataKey).where(DataKey.id.in_(retired)).values(active=False))
        session.flush()  # the partial unique index allows the new active key only after this
        data_key_id, data_key = _new_data_key(session, keyring, "field")
        audit.record(session, actor or _cli_actor(), "keys.data_key.rotate", "data_key", data_key_id, changes={
            "data_key_id": data_key_id, "purpose": "field", "retired": retired, "master_key_id": keyring.active_id,
        })
        return data_key_id, data_key, retired

    data_key_id, data_key, retired = transact(engine, rotate)
    with cipher._lock:
        cipher._keys[data_key_id] = ("field", AESGCM(data_key))
        cipher.active_field_key_id = data_key_id
        cipher._active_checked_at = time.monotonic()
    return {"data_key_id": data_key_id, "retired": retired}
