"""Prefixed, time-sortable, opaque ids (``acct_...``, ``tr_...``)."""

import base64
import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_FROM_RFC4648 = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET.encode())
"""RFC 4648 base32 (what ``base64.b32encode`` writes) to ours, character for character: both put the
most significant five bits first, so only the alphabet differs."""


def _base32(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def _random_bodies(count: int) -> str:
    """``count`` runs of 16 characters, each 80 random bits (10 bytes encode to exactly 16, no padding)."""
    return base64.b32encode(os.urandom(10 * count)).translate(_FROM_RFC4648).decode()


def new_id(prefix: str) -> str:
    """A new id: 48 bits of milliseconds then 80 random bits, so ids sort by creation time."""
    return f"{prefix}_{_base32(time.time_ns() // 1_000_000, 10)}{_random_bodies(1)}"


def new_ids(prefix: str, count: int) -> list[str]:
    """``count`` new ids at once (one clock read, one random draw, one encoding): the batch path."""
    head = f"{prefix}_{_base32(time.time_ns() // 1_000_000, 10)}"
    bodies = _random_bodies(count)
    return [head + bodies[start:start + 16] for start in range(0, 16 * count, 16)]
