"""A bank statement is imported once, and the database says so (migration 0015), through the HTTP API and the
command line, on SQLite and PostgreSQL:

1. the same statement in other bytes (CR LF, then LF) is refused, naming the earlier import and the bank's number;
2. another statement under a number the bank used already (same account, number, sequence and closing day: a
   correction issued again under it) is refused too, saying the number was used; another page, another day or
   another account of the number imports;
3. two imports of one statement racing past the check before matching: one imports, the other is refused by the
   unique index, with nothing of it written, and ``received`` counts the statement once;
4. the unique indexes refuse on their own (the check before matching out of the way);
5. a database holding imports (one statement imported twice, before the check existed) upgrades from 0014;
6. the model and the migration agree on ``recon_statements``;
7. an MT940 ``:28C:`` that is no 5n[/5n], or an account longer than its column, is refused at its line.
"""

from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, inspect, select

from clearhouse.kit.db import make_engine, transact, upgrade
from clearhouse.kit.models import Base
from clearhouse.reconciliation import service
from clearhouse.reconciliation.errors import StatementAlreadyImported
from clearhouse.reconciliation.formats import parse_statement
from clearhouse.reconciliation.frames import empty_internal
from clearhouse.reconciliation.models import BANK_STATEMENT_INDEX, FINGERPRINT_INDEX, Reconciliation, ReconStatement
from tests.ledger.test_migration_v2 import legacy_url  # noqa: F401  (a database of its own, not migrated)
from tests.reconciliation.formats.test_session12_formats import camt, camt_entry, camt_statement, line_of
from tests.reconciliation.test_session13 import DAY, EUR_IBAN, NEXT_DAY, _refused, _runs, _upload_file
from tests.reconciliation.test_session16 import BANK, STATEMENT_1, STATEMENT_2, _mt940, _received
from tests.test_cli import clearhouse, ok

CORRECTED_1 = _mt940("00101", "C261123EUR1000,00",
                     ":61:2611231123C260,00NTRFREF1//B1\n:61:2611231123D1,00NCHGNONREF//B2\n", "C261123EUR1259,00")
"""Statement 00101/001 of ``STATEMENT_1``'s account and day again, with other figures: the bank's correction."""
PAGE_2 = STATEMENT_2.replace(":28C:00102/001", ":28C:00101/002")
"""Page 2 of statement 00101."""
NEXT_DAY_101 = _mt940("00101", "C261124EUR1249,00", ":61:2611241124C50,00NTRFREF3//B3\n", "C261124EUR1299,00")
"""The next day's statement under the number 00101 again (a bank that numbers afresh, or always writes one)."""
NUMBER_101 = {"account": EUR_IBAN, "number": "101", "sequence": "1", "closed_on": DAY.isoformat()}


def _mt940_upload(client: Any, text: str, name: str, day: Any = DAY) -> Any:
    return _upload_file(client, text.encode(), fmt="mt940", channel=BANK, day=day, name=name)


def _imported(client: Any, text: str, name: str, day: Any = DAY, fmt: str = "mt940") -> dict[str, Any]:
    answer = _upload_file(client, text.encode(), fmt=fmt, channel=BANK, day=day, name=name)
    assert answer.status_code == 201, answer.text
    return answer.json()


def _already_imported(answer: Any, earlier: str) -> str:
    """The 409's detail, once it is checked to be ``statement_already_imported`` naming ``earlier``."""
    assert answer.status_code == 409, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem = answer.json()
    assert problem["code"] == "statement_already_imported", problem
    assert f"reconciliation {earlier}" in problem["detail"], problem
    return problem["detail"]


def _rows(app: Any, table: Any) -> int:
    return transact(app.state.engine, lambda s: s.execute(select(func.count()).select_from(table)).scalar_one())


def _camt_numbered(identifier: str, amount: str, closing: str, numbers: str) -> str:
    """A camt.053 statement of ``EUR_IBAN`` opening at 10.00 with one entry, ``numbers`` written after its Id."""
    statement = camt_statement(identifier, EUR_IBAN, "10.00", closing, camt_entry(amount, f"BR-{identifier}"))
    return camt(statement.replace(f"<Id>{identifier}</Id>\n", f"<Id>{identifier}</Id>\n{numbers}", 1))


# ------------------------------------------------------------------------------------------------ 1


class TestTheSameStatementInOtherBytes:
    def test_is_refused_naming_the_earlier_import_and_the_banks_number(self, client):
        first = _imported(client, STATEMENT_1.replace("\n", "\r\n"), "statement.sta")
        assert first["statement"]["bank_statement"] == NUMBER_101

        detail = _already_imported(_mt940_upload(client, STATEMENT_1, "statement-lf.sta"), first["id"])
        assert detail.startswith("this bank statement (account FR76") and "statement number 101 (sequence 1)" in detail
        assert [run["id"] for run in _runs(client, BANK)] == [first["id"]]
        assert _received(client) == [("EUR", 24_900)]


# ------------------------------------------------------------------------------------------------ 2


class TestAnotherStatementUnderANumberTheBankUsed:
    def test_an_mt940_correction_under_the_same_number_is_refused_and_nothing_counts_twice(self, client):
        first = _imported(client, STATEMENT_1, "statement.sta")
        detail = _already_imported(_mt940_upload(client, CORRECTED_1, "statement-corrected.sta"), first["id"])
        assert detail.startswith("the bank's statement number 101 (sequence 1) of account FR76")  # masked in the API
        assert f"closing 2026-11-23, was already used by reconciliation {first['id']}" in detail
        assert "nothing was imported" in detail
        assert [run["id"] for run in _runs(client, BANK)] == [first["id"]]
        assert _received(client) == [("EUR", 24_900)]

    def test_a_camt_statement_is_known_by_its_electronic_sequence_number_and_page(self, client):
        page = "      <StmtPgntn><PgNb>02</PgNb><LastPgInd>true</LastPgInd></StmtPgntn>\n"
        first = _imported(client, _camt_numbered("STMT-A", "5.00", "15.00",
                                                 page + "      <ElctrncSeqNb>0007</ElctrncSeqNb>\n"),
                          "a.xml", fmt="camt053")
        assert first["statement"]["bank_statement"] == {"account": EUR_IBAN, "number": "7", "sequence": "2",
                                                        "closed_on": DAY.isoformat()}
        # Another Stmt/Id, other figures, the same electronic sequence number and page (written without zeros).
        again = _camt_numbered("STMT-B", "6.00", "16.00",
                               "      <StmtPgntn><PgNb>2</PgNb><LastPgInd>true</LastPgInd></StmtPgntn>\n"
                               "      <ElctrncSeqNb>7</ElctrncSeqNb>\n")
        answer = _upload_file(client, again.encode(), fmt="camt053", channel=BANK, day=DAY, name="b.xml")
        assert "statement number 7 (sequence 2)" in _already_imported(answer, first["id"])
        assert [run["id"] for run in _runs(client, BANK)] == [first["id"]]

    def test_a_camt_statement_without_sequence_numbers_is_known_by_its_id(self, client):
        first = _imported(client, _camt_numbered("STMT-A", "5.00", "15.00", ""), "a.xml", fmt="camt053")
        assert first["statement"]["bank_statement"]["number"] == "STMT-A"
        again = _camt_numbered("STMT-A", "6.00", "16.00", "")
        answer = _upload_file(client, again.encode(), fmt="camt053", channel=BANK, day=DAY, name="b.xml")
        assert "statement number STMT-A (sequence 1)" in _already_imported(answer, first["id"])

    @pytest.mark.parametrize(("text", "day", "number"), [
        (PAGE_2, DAY, {**NUMBER_101, "sequence": "2"}),
        (NEXT_DAY_101, NEXT_DAY, {**NUMBER_101, "closed_on": NEXT_DAY.isoformat()}),
        (STATEMENT_2.replace(EUR_IBAN, "DE89370400440532013000").replace(":28C:00102", ":28C:00101"), DAY,
         {**NUMBER_101, "account": "DE89370400440532013000"}),
    ], ids=["another page", "another day", "another account"])
    def test_another_page_day_or_account_of_the_number_imports(self, client, text, day, number):
        first = _imported(client, STATEMENT_1, "statement.sta")
        other = _imported(client, text, "other.sta", day=day)
        assert other["statement"]["bank_statement"] == number
        assert [run["id"] for run in _runs(client, BANK)] == [other["id"], first["id"]]


# ------------------------------------------------------------------------------------------------ 3


@pytest.fixture
def matched_together(monkeypatch) -> None:
    """Each import waits, once it has matched, for the other to have matched too: both are past the check before
    matching when either writes, as two imports of one statement started at the same moment may be."""
    together = threading.Barrier(2, timeout=60)
    match = service.run_match

    def run_match(*args: Any, **kwargs: Any) -> Any:
        outcome = match(*args, **kwargs)
        together.wait()
        return outcome

    monkeypatch.setattr(service, "run_match", run_match)


RACES = {"the same statement in other bytes": (STATEMENT_1.replace("\n", "\r\n"), STATEMENT_1),
         "a correction under the same number": (STATEMENT_1, CORRECTED_1)}


class TestTwoImportsRacing:
    @pytest.mark.parametrize("race", RACES)
    def test_one_imports_the_other_is_refused_and_nothing_of_it_is_written(self, app, http, matched_together,
                                                                           race):
        files = RACES[race]
        statements_before, runs_before = _rows(app, ReconStatement.__table__), _rows(app, Reconciliation.__table__)
        with ThreadPoolExecutor(max_workers=2) as pool:
            answers = list(pool.map(lambda n: _mt940_upload(http, files[n], f"statement-{n}.sta"), range(2)))
        assert sorted(answer.status_code for answer in answers) == [201, 409], [answer.text for answer in answers]
        (winner,) = [answer.json() for answer in answers if answer.status_code == 201]
        (loser,) = [answer for answer in answers if answer.status_code == 409]
        detail = _already_imported(loser, winner["id"])
        assert "statement number 101 (sequence 1)" in detail

        assert [run["id"] for run in _runs(http, BANK)] == [winner["id"]]
        assert _rows(app, ReconStatement.__table__) == statements_before + 1
        assert _rows(app, Reconciliation.__table__) == runs_before + 1
        corrected_won = winner["statement"]["sha256"] == _sha256_of(CORRECTED_1)
        assert _received(http) == [("EUR", 25_900 if corrected_won else 24_900)]
        audit = http.get("/v1/audit/events", params={"action": "recon.import"})
        assert audit.status_code == 200, audit.text
        assert [event["object_id"] for event in audit.json()["data"]] == [winner["id"]]
        verified = http.get("/v1/audit/verify")
        assert verified.status_code == 200 and verified.json()["ok"], verified.text


def _sha256_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------------------------------------ 4


class TestTheIndexesRefuseOnTheirOwn:
    @pytest.mark.parametrize(("second", "said"), [
        (STATEMENT_1.replace(":28C:00101/001", ":28C:00109/001"), "this bank statement"),  # its figures alone
        (CORRECTED_1, "the bank's statement number 101 (sequence 1)"),  # its number alone
    ], ids=["fingerprint", "bank's number"])
    def test_with_the_check_before_matching_out_of_the_way(self, app, client, monkeypatch, second, said):
        first = _imported(client, STATEMENT_1, "statement.sta")
        check, calls = service._earlier_import, []

        def missed_once(*args: Any) -> Any:  # the check before matching sees nothing, as in a race
            calls.append(args)
            return None if len(calls) == 1 else check(*args)

        monkeypatch.setattr(service, "_earlier_import", missed_once)
        statements_before = _rows(app, ReconStatement.__table__)
        detail = _already_imported(_mt940_upload(client, second, "again.sta"), first["id"])
        assert detail.startswith(said)
        assert len(calls) == 2  # the check before matching, then the index's refusal named
        assert _rows(app, ReconStatement.__table__) == statements_before
        assert [run["id"] for run in _runs(client, BANK)] == [first["id"]]


# ------------------------------------------------------------------------------------------------ 5


def _legacy_rows(tmp_path: Path, name: str, text: str, at: datetime, fmt: str = "mt940",
                 channel: str = BANK) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """The rows an import made before migration 0015 (the statement, its run), from the file itself."""
    path = tmp_path / f"{name}.{fmt}"
    path.write_bytes(text.encode())
    parsed = parse_statement(path, fmt, channel=channel, mapping="clearhouse_v1" if fmt == "csv" else None)
    meta = parsed.meta
    statement = {"id": f"stm_{name}", "sha256": _sha256_of(text), "channel": channel, "format": fmt,
                 "mapping": None if fmt != "csv" else "clearhouse_v1", "file_name": path.name,
                 "size_bytes": len(text), "line_count": parsed.lines.height, "statement_date": DAY,
                 "first_day": meta.first_day, "last_day": meta.last_day, "account": meta.account,
                 "currency": meta.currency, "opening_balance": meta.opening_balance,
                 "closing_balance": meta.closing_balance, "imported_by": "system:cli", "imported_at": at}
    run = {"id": f"rec_{name}", "statement_id": statement["id"], "channel": channel, "statement_date": DAY,
           "rules_json": "{}", "classes_json": "{}", "statement_lines": parsed.lines.height, "internal_lines": 0,
           "case_count": 0, "duration_ms": 1, "created_by": "system:cli", "created_at": at,
           "clearing_json": orjson.dumps(service.clearing_of(parsed.lines, empty_internal(), (DAY, DAY))).decode()}
    return statement, run, parsed


class TestTheMigration:
    def test_upgrades_a_database_holding_a_statement_imported_twice(self, legacy_url, tmp_path):  # noqa: F811
        upgrade(legacy_url, "0014_ledger_chain_guard")
        at = [datetime(2026, 11, 24, hour, tzinfo=UTC) for hour in (8, 9, 10, 11)]
        legacy = [_legacy_rows(tmp_path, "first", STATEMENT_1, at[0]),
                  _legacy_rows(tmp_path, "twice", STATEMENT_1.replace("\n", "\r\n"), at[1]),
                  _legacy_rows(tmp_path, "second", STATEMENT_2, at[2]),
                  _legacy_rows(tmp_path, "channel", "our_ref,channel_ref,kind,status,amount,fee,currency,booked_on,"
                               "value_on,description\nord_1,ch_1,payment,succeeded,500,0,CNY,2026-11-23,,\n", at[3],
                               fmt="csv", channel="sandbox_card")]
        engine = make_engine(legacy_url, pool_size=1)
        try:
            with engine.begin() as connection:  # the model's tables, so only the columns 0014 has are written
                for statement, run, _parsed in legacy:
                    connection.execute(ReconStatement.__table__.insert().values(**statement))
                    connection.execute(Reconciliation.__table__.insert().values(**run))

            upgrade(legacy_url)

            statements = ReconStatement.__table__
            with engine.connect() as connection:
                rows = {row.id: row for row in connection.execute(select(statements))}
            expected = {f"stm_{name}": service.bank_fingerprint("mt940", DAY, parsed.meta, parsed.lines.height,
                                                                service.reported_of(parsed.lines))
                        for name, (_s, _r, parsed) in zip(("first", "second"), (legacy[0], legacy[2]), strict=True)}
            assert {key: row.fingerprint for key, row in rows.items()} == {
                "stm_first": expected["stm_first"], "stm_twice": None,  # the earlier import keeps it
                "stm_second": expected["stm_second"], "stm_channel": None}
            assert {(row.bank_account, row.bank_statement_number, row.bank_statement_sequence,
                     row.bank_statement_closed_on) for row in rows.values()} == {(None, None, None, None)}

            # What the application computes of the statement now is what the migration kept: it is refused.
            path = tmp_path / "statement-again.sta"
            path.write_bytes(STATEMENT_1.replace("\n", "\r\n").encode() + b"\r\n")  # bytes never imported
            with pytest.raises(StatementAlreadyImported, match="in reconciliation rec_first"):
                service.reconcile_file(engine, channel=BANK, path=path, fmt="mt940", statement_date=DAY)
            with engine.connect() as connection:
                assert connection.execute(select(func.count()).select_from(statements)).scalar_one() == 4
        finally:
            engine.dispose()


# ------------------------------------------------------------------------------------------------ 6


class TestTheModelAndTheMigrationAgree:
    def test_on_recon_statements_its_columns_and_its_partial_unique_indexes(self, engine, backend):
        only_statements = {  # the other tables are other domains' (and reflecting some of them warns)
            "include_name": lambda name, kind, _parent: kind != "table" or name == "recon_statements",
            "include_object": lambda item, name, kind, *_: kind != "table" or name == "recon_statements"}
        with engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection, opts=only_statements), Base.metadata) == []
        reflected = {index["name"]: index for index in inspect(engine).get_indexes("recon_statements")}
        dialect = "postgresql" if backend == "postgresql" else "sqlite"
        for name in (FINGERPRINT_INDEX, BANK_STATEMENT_INDEX):
            (model,) = [index for index in ReconStatement.__table__.indexes if index.name == name]
            assert reflected[name]["column_names"] == [column.name for column in model.columns]
            assert bool(reflected[name]["unique"]) and model.unique
            where = reflected[name]["dialect_options"][f"{dialect}_where"]
            assert _sql(where) == _sql(model.dialect_options[dialect]["where"]), name


def _sql(clause: Any) -> str:
    text = str(getattr(clause, "text", clause)).strip()
    while text.startswith("(") and text.endswith(")"):
        text = text[1:-1].strip()
    return " ".join(text.lower().split())


# ------------------------------------------------------------------------------------------------ 7


class TestABankStatementsIdentityThatCannotBeKept:
    def test_an_mt940_statement_number_that_is_no_5n_5n_is_refused_at_its_line(self, client):
        text = STATEMENT_1.replace(":28C:00101/001", ":28C:123456")  # the library would read 12345, page 6
        problem = _refused(_mt940_upload(client, text, "statement.sta"), "statement_invalid",
                           line=line_of(text, ":28C:"))
        assert ":28C:" in problem["detail"]
        assert _runs(client, BANK) == []

    def test_an_account_longer_than_its_column_is_refused_at_the_statement(self, client):
        text = STATEMENT_1.replace(f":25:{EUR_IBAN}", ":25:" + "A" * 65)
        problem = _refused(_mt940_upload(client, text, "statement.sta"), "statement_invalid", line=1)
        assert "longer than 64" in problem["detail"]
        assert _runs(client, BANK) == []


# ------------------------------------------------------------------------------------------------ the command line


@pytest.mark.slow  # two runs of the command, several seconds each
def test_the_command_line_refuses_a_used_number_in_one_line_with_exit_1(client, database_url, tmp_path):
    first_file, corrected = tmp_path / "statement.sta", tmp_path / "statement-corrected.sta"
    first_file.write_text(STATEMENT_1)
    corrected.write_text(CORRECTED_1)

    def run(path: Path) -> Any:
        return clearhouse("recon", "run", "--channel", BANK, "--file", str(path), "--date", DAY.isoformat(),
                          "--format", "mt940", "--json", url=database_url, cwd=tmp_path)

    first = json.loads(ok(run(first_file)).stdout)
    again = run(corrected)
    output = again.stdout + again.stderr
    assert again.returncode == 1, output
    assert "Traceback" not in output and again.stdout == ""
    (line,) = [line for line in again.stderr.splitlines() if "statement_already_imported" in line]
    assert line.startswith("statement_already_imported: the bank's statement number 101 (sequence 1) of account "
                           f"{EUR_IBAN}, closing 2026-11-23, was already used by reconciliation {first['id']}")
    assert [run["id"] for run in _runs(client, BANK)] == [first["id"]]
