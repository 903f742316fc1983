"""The one canonical JSON form that Clearhouse stores and hashes (ledger metadata, audit changes)."""

from __future__ import annotations

from typing import Any

import orjson


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal data, equal text, equal hash."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
