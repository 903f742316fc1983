"""Every stable error code the code can answer is in docs/errors.md, with its status."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import clearhouse
from clearhouse.kit.errors import ClearhouseError

ERRORS_MD = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
# Raised between a connector and the payment service, never answered: errors.md says so in prose.
CONNECTOR_ERRORS = {"channel_error", "channel_timeout", "channel_unavailable"}


def _every_error_class() -> list[type[ClearhouseError]]:
    for module in pkgutil.walk_packages(clearhouse.__path__, "clearhouse."):
        if not module.name.startswith("clearhouse.bench"):
            importlib.import_module(module.name)
    found, todo = [], [ClearhouseError]
    while todo:
        for subclass in todo.pop().__subclasses__():
            found.append(subclass)
            todo.append(subclass)
    return found


def test_every_error_code_is_documented_with_its_status():
    text = ERRORS_MD.read_text()
    documented: dict[str, set[int | None]] = {}
    for code, status in re.findall(r"^\| `([a-z0-9_]+)` \| (\d{3}|—) \|", text, re.MULTILINE):
        documented.setdefault(code, set()).add(None if status == "—" else int(status))
    assert all(f"`{code}`" in text for code in CONNECTOR_ERRORS)
    classes = [cls for cls in _every_error_class()  # not tests' own subclasses (one process runs many tests)
               if cls.__module__.startswith("clearhouse.") and cls.code != "error" and cls.code not in CONNECTOR_ERRORS]
    assert len(classes) > 100
    undocumented = sorted({cls.code for cls in classes if cls.code not in documented})
    assert undocumented == []
    wrong_status = sorted(f"{cls.__qualname__}: {cls.code} {cls.status}" for cls in classes
                          if cls.status not in documented[cls.code] and None not in documented[cls.code])
    assert wrong_status == []
