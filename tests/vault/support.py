"""Helpers for the vault and masking tests: real log capture and card-number searches."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog

from clearhouse.kit import logging as kit_logging

# Real-shaped test card numbers (the networks' published test PANs): all pass Luhn.
TEST_PANS = {
    "visa": "4111111111111111",
    "visa_19": "4000000000000000006",
    "mastercard": "5555555555554444",
    "mastercard_2series": "2223003122003222",
    "amex": "378282246310005",
    "discover": "6011111111111117",
    "jcb": "3566002020360505",
    "diners": "36227206271667",
    "unionpay": "6200000000000005",
}


def pan_patterns(pan: str) -> list[bytes]:
    """The number as bytes, contiguous and with spaces or dashes between any digits."""
    separated = r"[ \-]?".join(pan)
    return [pan.encode(), separated.encode()]


def find_pans(blob: bytes, pans: list[str]) -> list[str]:
    """Which of ``pans`` appear in ``blob`` (contiguous, or with separators)."""
    found = []
    for pan in pans:
        separated = re.compile(r"[ \-]?".join(pan).encode())
        if pan.encode() in blob or separated.search(blob):
            found.append(pan)
    return found


@contextmanager
def captured_logs(path: Path, level: str = "DEBUG", json: bool = False, *, uvicorn: bool = False) -> Iterator[Path]:
    """Every log line (structlog and stdlib) written to ``path`` through the production
    configuration (kit/logging.configure_logging) while the block runs; then restored.

    ``uvicorn``: also uvicorn's own loggers, which keep their own handlers and do not
    propagate to the root (their records pass the scrub filter configure_logging puts on them).
    """
    was_configured = structlog.is_configured()
    previous_config = structlog.get_config()
    root = logging.getLogger()
    previous_handlers, previous_level = root.handlers[:], root.level
    server_loggers = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.access")] if uvicorn else []
    previous_server_levels = [logger.level for logger in server_loggers]
    with path.open("w", encoding="utf-8") as stream:
        kit_logging.configure_logging(level, json=json, stream=stream)
        server_handler = logging.StreamHandler(stream)
        for logger in server_loggers:
            logger.addHandler(server_handler)
            logger.setLevel(level)
        logging.getLogger("uvicorn.error").setLevel(level) if uvicorn else None
        try:
            yield path
        finally:
            for logger, previous in zip(server_loggers, previous_server_levels, strict=True):
                logger.removeHandler(server_handler)
                logger.setLevel(previous)
            for handler in root.handlers:
                handler.flush()
            stream.flush()
            kit_logging._stream.target = sys.stderr
            root.handlers[:] = previous_handlers
            root.setLevel(previous_level)
            if was_configured:
                structlog.configure(**previous_config)
            else:
                structlog.reset_defaults()
