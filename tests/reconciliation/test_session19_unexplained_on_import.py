"""Recipe 9 on import: a bank statement's money that paid none of ours as owed waits in ``suspense`` from the
import, and a case's resolution moves it from there (docs/accounting.md; docs/reconciliation.md, "Cases").

1. resolving such a case to ``suspense`` posts nothing, so it needs no second person whatever its size; to
   another account it posts, and above the threshold it waits for approval as before;
2. a bank statement imported before this (its run without ``suspense_on_import``) posted nothing of its cases:
   they still post from the bank account when resolved.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from sqlalchemy import text

from clearhouse.kit.db import transact
from tests.payments.support import ledger_verifies
from tests.reconciliation.formats.test_session12_formats import camt_entry
from tests.reconciliation.support import cases_of
from tests.reconciliation.test_session17_channel_payout import (
    BANK_ACCOUNT,
    _camt,
    _charged,
    _import,
    _net,
    _posted,
    sales,
)

__all__ = ["sales"]  # the fixture, shared


@pytest.fixture
def stray(app, client, sales) -> tuple[dict[str, Any], dict[str, Any]]:
    """A bank statement paying the first sale and 50.00 for nobody; (run, the stray credit's case)."""
    app.state.settings = app.state.settings.model_copy(update={"recon_approval_threshold": 1_000})
    run = _import(client, _camt([_charged(sales[0]), camt_entry("50.00", "STRAY-19", currency="CNY")],
                                _net(sales[0]) + 5_000))
    (case,) = [c for c in cases_of(client, run["id"]) if c["class"] == "missing_in_ledger"]
    return run, case


def _resolve(client: Any, case_id: str, **body: Any) -> Any:
    return client.post(f"/v1/recon_cases/{case_id}/resolve", json={"reason": "test", **body})


class TestResolvingWhatWaitsInSuspense:
    def test_to_suspense_posts_nothing_and_needs_no_second_person(self, app, client, stray):
        _run, case = stray
        answer = _resolve(client, case["id"], action="adjust")
        assert answer.status_code == 200, answer.text  # 50.00 is above the threshold of 10.00: no approval
        assert (answer.json()["state"], answer.json()["ledger_entry_id"]) == ("resolved", None)
        assert _posted(client, "suspense") == 5_000
        ledger_verifies(app)

    def test_to_another_account_posts_from_suspense_and_waits_for_approval_above_the_threshold(self, app, client,
                                                                                               stray):
        _run, case = stray
        answer = _resolve(client, case["id"], action="write_off")
        assert answer.status_code == 202, answer.text
        assert answer.json()["approval"]["status"] == "pending"
        assert _posted(client, "suspense") == 5_000  # nothing moved yet
        ledger_verifies(app)


class TestABankStatementImportedBeforeSession19:
    def test_its_cases_still_post_from_the_bank_account(self, app, client, stray):
        run, case = stray
        app.state.settings = app.state.settings.model_copy(update={"recon_approval_threshold": 1_000_000})

        def forget(session: Any) -> None:
            figures = orjson.loads(session.execute(text("SELECT clearing_json FROM reconciliations WHERE id = :id"),
                                                   {"id": run["id"]}).scalar_one())
            for values in figures.values():
                values.pop("suspense_on_import")
            session.execute(text("UPDATE reconciliations SET clearing_json = :json WHERE id = :id"),
                            {"json": orjson.dumps(figures).decode(), "id": run["id"]})

        transact(app.state.engine, forget)
        bank_before = _posted(client, BANK_ACCOUNT)
        answer = _resolve(client, case["id"], action="adjust")
        assert answer.status_code == 200, answer.text
        assert answer.json()["ledger_entry_id"] == f"tr_{case['id']}"
        assert _posted(client, BANK_ACCOUNT) == bank_before + 5_000  # Dr bank, Cr suspense, as before
        ledger_verifies(app)
