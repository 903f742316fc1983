"""Prefixed, time-sortable, opaque ids (``acct_...``, ``tr_...``).

An id is 48 bits of milliseconds then an 80-bit body. Within a process ids only grow (a monotonic ULID):
the first of a millisecond has a random body, and the next ones in the same millisecond (or while the
clock stands still or steps back) add to the last body a random step of up to 2^32, so two ids made one
after the other sort in that order. Lists newest first and a payment's timeline read in id order rely on
it: two events written in one millisecond came back in a random order. Ids made by different processes
in one millisecond sort by their random bodies.
"""

import base64
import os
import threading
import time

import numpy as np

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_FROM_RFC4648 = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET.encode())
"""RFC 4648 base32 (what ``base64.b32encode`` writes) to ours, character for character: both put the
most significant five bits first, so only the alphabet differs."""

_BODY_LIMIT = 1 << 80
_RECORD = np.dtype([("high", ">u2"), ("low", ">u8")])
_lock = threading.Lock()
_last = (0, 0)  # (milliseconds, body) of the last id made in this process


def _base32(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def _next(count: int) -> tuple[int, int]:
    """The time part and the first body of ``count`` ids whose bodies are ``body, body + 1, ...``, above every
    id made before in this process."""
    global _last
    drawn = os.urandom(14)  # one draw: a fresh body (10 bytes) or a step (4), whichever the clock asks for
    fresh, step = drawn[:10], int.from_bytes(drawn[10:], "big") + 1
    with _lock:
        millisecond, body = time.time_ns() // 1_000_000, 0
        last_millisecond, last_body = _last
        if millisecond > last_millisecond:
            body = int.from_bytes(fresh, "big") >> 1  # half the range left above it for this millisecond's next
        else:
            millisecond, body = last_millisecond, last_body + step
            if body + count > _BODY_LIMIT:  # 2^79 used up in one millisecond: borrow the next one
                millisecond, body = millisecond + 1, int.from_bytes(fresh, "big") >> 1
        _last = (millisecond, body + count - 1)
    return millisecond, body


def new_id(prefix: str) -> str:
    """A new id, greater than every id made before it in this process."""
    millisecond, body = _next(1)
    return f"{prefix}_{_base32(millisecond, 10)}{_base32(body, 16)}"


def new_ids(prefix: str, count: int) -> list[str]:
    """``count`` new ids at once, in ascending order (one clock read, one encoding): the batch path."""
    if count <= 0:
        return []
    millisecond, body = _next(count)
    head = f"{prefix}_{_base32(millisecond, 10)}"
    # 10 bytes encode to exactly 16 base32 characters, no padding. The bodies as 10-byte big-endian records
    # (2 high bytes, 8 low), built by numpy: a Python loop over them cost 0.7 us an id.
    high, low = divmod(body, 1 << 64)
    if low + count <= 1 << 64:
        records = np.empty(count, dtype=_RECORD)
        records["high"], records["low"] = high, np.arange(low, low + count, dtype=np.uint64)
        packed = records.tobytes()
    else:  # the low 64 bits carry into the high ones within this batch (about once in 2^64 / count batches)
        packed = b"".join(value.to_bytes(10, "big") for value in range(body, body + count))
    encoded = base64.b32encode(packed)
    bodies = encoded.translate(_FROM_RFC4648).decode()
    return [head + bodies[start:start + 16] for start in range(0, 16 * count, 16)]
