"""docs/audit.md's stdlib-only recomputation of the chain agrees with the code: it is
extracted from the document and run, as a reader would, on a SQLite database file."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from sqlalchemy import text

from clearhouse.audit.service import Actor
from tests.audit.support import ADMIN, ROOT, behind_the_applications_back, record


def recipe() -> str:
    document = (ROOT / "docs" / "audit.md").read_text()
    section = document.split("### Recomputing the chain yourself", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run_recipe(tmp_path, database_file: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "recompute.py"
    script.write_text(recipe())
    return subprocess.run([sys.executable, str(script), database_file], capture_output=True, text=True, timeout=60)


def test_the_documented_recomputation_matches_the_chain(engine, backend, database_url, tmp_path):
    if backend != "sqlite":
        pytest.skip("the recipe reads a SQLite file")
    awkward = Actor(type="user", id="usr_ünïcode", role=None, source_ip=None, request_id=None)
    record(engine, ADMIN, "merchant.create", "merchant", "mer_1", changes={"name": "Café \"Ω\" 店", "n": 1})
    record(engine, awkward, "user.update", "user", "usr_2",
           changes={"note": "tab\there\nnewline \\ back \u2028 \x7f \x01", "big": 2**80, "nested": {"b": [1, None]}})
    record(engine, ADMIN, "merchant.update", "merchant", "mer_1")
    database_file = database_url.removeprefix("sqlite:///")
    result = run_recipe(tmp_path, database_file)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3 events; head matches"

    with behind_the_applications_back(engine, backend) as connection:
        connection.execute(text("UPDATE audit_events SET object_id = 'usr_3' WHERE seq = 2"))
    result = run_recipe(tmp_path, database_file)
    assert result.returncode == 1
    assert result.stderr.startswith("event 2 (")
