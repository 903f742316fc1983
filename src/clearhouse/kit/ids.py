"""Prefixed, time-sortable, opaque ids (``acct_...``, ``tr_...``)."""

import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def _base32(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def new_id(prefix: str) -> str:
    """A new id: 48 bits of milliseconds then 80 random bits, so ids sort by creation time."""
    millis = time.time_ns() // 1_000_000
    entropy = int.from_bytes(os.urandom(10), "big")
    return f"{prefix}_{_base32(millis, 10)}{_base32(entropy, 16)}"


def new_ids(prefix: str, count: int) -> list[str]:
    """``count`` new ids at once (one clock read, one random draw): the batch path."""
    millis = _base32(time.time_ns() // 1_000_000, 10)
    entropy = os.urandom(10 * count)
    return [
        f"{prefix}_{millis}{_base32(int.from_bytes(entropy[i * 10:(i + 1) * 10], 'big'), 16)}"
        for i in range(count)
    ]
