"""The auth benchmark at a tiny size: its figures, its checks, its JSON contract.

Speed is never asserted here (docs/benchmarks.md): only that the benchmark measures what
it says (a GET and a POST, each signed against unsigned) and checks its own answers.
"""

from __future__ import annotations

import json

import pytest

from clearhouse.bench import auth
from tests.conftest import BACKENDS, POSTGRES_URL


@pytest.mark.slow  # about 10 s: a few hundred requests per database, and a PostgreSQL database made for it
@pytest.mark.skipif("postgresql" not in BACKENDS, reason="the bench measures both databases; PostgreSQL is given")
def test_a_tiny_run_reports_a_get_and_a_post_figure_per_database_and_checks_its_answers():
    report = auth.run(300, postgres_url=POSTGRES_URL)
    data = json.loads(json.dumps(report.as_dict()))

    assert data["failures"] == []
    assert data["ok"] is True
    figures = {f["figure"]: f for f in data["figures"]}
    assert set(figures) == {
        f"{db}_{infix}auth_added_p99_ms" for db in ("sqlite", "postgresql") for infix in ("", "post_")
    }
    for db in ("sqlite", "postgresql"):
        assert figures[f"{db}_auth_added_p99_ms"]["baseline"] == f"{db}_unsigned_p99_ms"
        assert figures[f"{db}_post_auth_added_p99_ms"]["baseline"] == f"{db}_unsigned_post_p99_ms"
        assert "300 signed POSTs" in data["notes"][f"{db}_post_auth_added_p99_ms"]
    for figure in figures.values():
        assert figure["unit"] == "ms" and figure["baseline_value"] > 0


def test_a_refused_request_is_a_failure(monkeypatch, tmp_path):
    """A middleware that refuses the signed requests must fail the run, not report a fast figure."""
    from clearhouse.identity.middleware import AuthenticationMiddleware

    async def refuse(self, scope, receive, send):
        from clearhouse.identity.service import SignatureInvalid
        from clearhouse.kit.errors import send_problem

        await send_problem(send, SignatureInvalid("refused by the test"))

    monkeypatch.setattr(AuthenticationMiddleware, "__call__", refuse)
    report = auth.Report("auth", {})
    auth._backend(report, "sqlite", f"sqlite:///{tmp_path / 'auth.db'}", 20, auth.no_progress)
    assert any("signed request 0 answered 401" in failure for failure in report.failures)
