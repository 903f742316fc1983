"""The plain-transfer path (``service._create_plain_transfers``) writes what the general
path would, and hands every batch it cannot write whole to the general path untouched."""

from __future__ import annotations

from sqlalchemy import Engine, text

from clearhouse.kit import clock
from clearhouse.kit.db import transact
from clearhouse.ledger import repository, service
from clearhouse.ledger.service import EntryRequest
from clearhouse.ledger.verify import verify


def open_accounts(engine: Engine, *specs: tuple[str, str, dict]) -> None:
    def work(session):
        for account_id, currency, flags in specs:
            service.create_account(session, id=account_id, type="asset", currency=currency, code="t", **flags)

    transact(engine, work)


def plain(debit: str, credit: str, amount, currency: str = "USD", **kw) -> EntryRequest:
    return EntryRequest.transfer(debit, credit, amount, currency, **kw)


def write(engine: Engine, requests: list[EntryRequest], **kw) -> list[tuple[str, str, str | None]]:
    outcomes = transact(engine, lambda s: service.create_transfers(s, requests, **kw))
    return [(o.id, o.status, o.code) for o in outcomes]


def stored_forms(engine: Engine) -> tuple[int, int, int]:
    with engine.connect() as connection:
        return (
            connection.execute(text("SELECT count(*) FROM ledger_transfers")).scalar_one(),
            connection.execute(text("SELECT count(*) FROM ledger_transfers WHERE kind IS NOT NULL")).scalar_one(),
            connection.execute(text("SELECT count(*) FROM ledger_postings")).scalar_one(),
        )


def posted(engine: Engine, account_id: str) -> tuple[int, int]:
    balance = transact(engine, lambda s: service.account_balance(s, account_id)[1])
    return balance.debits_posted, balance.credits_posted


class TestWhatItWrites:
    def test_a_plain_batch_is_one_row_each_and_verifies(self, engine: Engine) -> None:
        open_accounts(engine, ("a", "USD", {}), ("b", "USD", {}), ("c", "USD", {}))
        requests = [plain("a", "b", 100, id="t1", metadata={"order": "1"}, code="sale", reference="r1"),
                    plain("b", "c", 40), plain("c", "a", 5, id="t3")]
        outcomes = write(engine, requests)
        assert [status for _id, status, _code in outcomes] == ["created"] * 3
        assert stored_forms(engine) == (3, 3, 0)
        report = transact(engine, verify)
        assert report.ok, report.failures
        assert (report.entries_checked, report.postings_checked) == (3, 6)
        view = transact(engine, lambda s: service.get_transfer(s, "t1"))
        assert (view["debit_account_id"], view["credit_account_id"], view["amount"], view["metadata"]) == (
            "a", "b", 100, {"order": "1"})
        assert (view["code"], view["reference"], view["status"]) == ("sale", "r1", "posted")
        assert posted(engine, "a") == (100, 5) and posted(engine, "b") == (40, 100) and posted(engine, "c") == (5, 40)
        lines, _more = transact(engine, lambda s: service.account_entries(s, "b"))
        assert [(line.transfer_id, line.direction, line.amount) for line in lines] == [
            ("t1", "credit", 100), (outcomes[1][0], "debit", 40)]

    def test_a_replay_of_the_same_batch_changes_nothing(self, engine: Engine) -> None:
        open_accounts(engine, ("a", "USD", {}), ("b", "USD", {}))
        batch = [plain("a", "b", 100, id="t1"), plain("b", "a", 30, id="t2")]
        assert [s for _i, s, _c in write(engine, batch)] == ["created", "created"]
        assert [s for _i, s, _c in write(engine, batch)] == ["exists", "exists"]
        assert stored_forms(engine) == (2, 2, 0)
        assert posted(engine, "a") == (100, 30)

    def test_a_limited_account_is_checked_after_every_transfer(self, engine: Engine) -> None:
        open_accounts(engine, ("wallet", "USD", {"debits_must_not_exceed_credits": True}), ("bank", "USD", {}))
        # In then out within the limit: written whole by the plain path.
        outcomes = write(engine, [plain("bank", "wallet", 100), plain("wallet", "bank", 100)])
        assert [s for _i, s, _c in outcomes] == ["created", "created"]
        # Out before in: the first breaks the limit though the batch would end at zero.
        outcomes = write(engine, [plain("wallet", "bank", 50, id="early"), plain("bank", "wallet", 50, id="late")])
        assert [(s, c) for _i, s, c in outcomes] == [("failed", "insufficient_funds"), ("created", None)]
        assert posted(engine, "wallet") == (100, 150)
        assert transact(engine, verify).ok


class TestWhatItHandsOver:
    def test_every_refusal_is_the_general_paths(self, engine: Engine) -> None:
        open_accounts(engine, ("a", "USD", {}), ("b", "USD", {}), ("eur", "EUR", {}), ("shut", "USD", {}))
        transact(engine, lambda s: service.close_account(s, "shut"))
        write(engine, [plain("a", "b", 1, id="old")])
        outcomes = write(engine, [
            plain("a", "b", 10, id="ok-1"),
            plain("a", "b", 2, id="old"),            # exists with other fields
            plain("a", "missing", 10, id="no-acct"),
            plain("a", "eur", 10, id="currency"),
            plain("a", "shut", 10, id="closed"),
            plain("a", "a", 10, id="same"),
            plain("a", "b", 0, id="zero"),
            plain("a", "b", 10, id="ok-1"),          # repeated in the batch: a replay
            plain("b", "a", 3, id="ok-2"),
        ])
        assert [(i, s, c) for i, s, c in outcomes] == [
            ("ok-1", "created", None),
            ("old", "failed", "transfer_exists_with_different_fields"),
            ("no-acct", "failed", "account_not_found"),
            ("currency", "failed", "currency_mismatch"),
            ("closed", "failed", "account_closed"),
            ("same", "failed", "accounts_must_differ"),
            ("zero", "failed", "invalid_amount"),
            ("ok-1", "exists", None),
            ("ok-2", "created", None),
        ]
        assert posted(engine, "a") == (11, 3)
        assert transact(engine, verify).ok

    def test_a_linked_batch_with_one_refusal_writes_nothing(self, engine: Engine) -> None:
        open_accounts(engine, ("a", "USD", {}), ("b", "USD", {}))
        outcomes = write(engine, [plain("a", "b", 10), plain("a", "nope", 10)], linked=True)
        assert [(s, c) for _i, s, c in outcomes] == [("failed", "linked_event_failed"), ("failed", "account_not_found")]
        assert stored_forms(engine) == (0, 0, 0)

    def test_an_account_closed_after_it_was_read_stops_the_write(self, engine: Engine) -> None:
        """The balance update refuses a closed account, and then nothing of the batch stays."""
        open_accounts(engine, ("a", "USD", {}), ("b", "USD", {}))

        def race(session) -> bool:
            nums = {row.id: row.num for row in repository.read_accounts_fast(session, {"a", "b"}).values()}
            repository.set_account_closed(session, "b")  # as a concurrent close_account would
            rows = [(1, "t1", None, None, "{}", "0" * 64, nums["a"], nums["b"], 5, "USD")]
            written = repository.write_plain_transfers(session, rows, clock.now(), [
                (nums["a"], "a", "USD", False, 5, 0), (nums["b"], "b", "USD", False, 0, 5)])
            with_rows = session.execute(text("SELECT count(*) FROM ledger_transfers")).scalar_one()
            balances = session.execute(text("SELECT sum(debits_posted + credits_posted) FROM ledger_accounts"))
            return written, with_rows, balances.scalar_one()

        assert transact(engine, race) == (False, 0, 0)

    def test_an_account_without_a_number_keeps_its_legs_in_posting_rows(self, engine: Engine) -> None:
        """Rows inserted around ``create_account`` (bulk loads, old tools) have no ``num``:
        their entries still write, in the posting-row form."""
        open_accounts(engine, ("a", "USD", {}))
        with engine.begin() as connection:
            connection.execute(
                text("INSERT INTO ledger_accounts (id, type, currency, code, created_at) "
                     "VALUES ('loose', 'asset', 'USD', 't', :at)"),
                {"at": clock.now()},
            )
        outcomes = write(engine, [plain("a", "loose", 7, id="t1")])
        if engine.dialect.name == "postgresql":
            assert stored_forms(engine) == (1, 1, 0)  # the identity column numbered it anyway
        else:
            assert stored_forms(engine) == (1, 0, 2)
        assert outcomes == [("t1", "created", None)]
        assert posted(engine, "loose") == (0, 7)
        assert transact(engine, verify).ok


class TestRememberedAccounts:
    """``repository.plain_accounts`` remembers accounts' numbers and currencies; the balance
    update checks them on the row, so what it remembers can be stale but never wrong."""

    def test_an_account_is_read_once_then_remembered(self, engine: Engine, monkeypatch) -> None:
        open_accounts(engine, ("a", "USD", {}), ("b", "USD", {}))
        repository._known_accounts.pop(str(engine.url), None)  # what earlier tests on this database left
        reads: list[list[str]] = []
        read = repository.read_accounts_fast
        monkeypatch.setattr(repository, "read_accounts_fast",
                            lambda session, ids: reads.append(sorted(ids)) or read(session, ids))
        write(engine, [plain("a", "b", 10)])
        write(engine, [plain("b", "a", 4)])
        assert reads == [["a", "b"]]
        assert posted(engine, "a") == (10, 4)

    def test_a_limited_account_is_read_every_time(self, engine: Engine, monkeypatch) -> None:
        open_accounts(engine, ("wallet", "USD", {"debits_must_not_exceed_credits": True}), ("bank", "USD", {}))
        write(engine, [plain("bank", "wallet", 10)])
        reads: list[list[str]] = []
        read = repository.read_accounts_fast
        monkeypatch.setattr(repository, "read_accounts_fast",
                            lambda session, ids: reads.append(sorted(ids)) or read(session, ids))
        outcomes = write(engine, [plain("wallet", "bank", 10, id="w1")])
        assert outcomes == [("w1", "created", None)]
        outcomes = write(engine, [plain("wallet", "bank", 1, id="w2")])
        assert outcomes == [("w2", "failed", "insufficient_funds")]
        assert ["wallet"] in reads

    def _remember(self, engine: Engine, account_id: str, facts: tuple[int, str]) -> None:
        known = repository._known_accounts.setdefault(str(engine.url), {})
        known[account_id] = facts

    def test_a_number_remembered_from_another_database_writes_nothing_wrong(self, engine: Engine) -> None:
        """As after the database behind a URL was replaced: the remembered number is now
        another account's. The write refuses it, the general path writes it right, and
        the stale memory is dropped."""
        open_accounts(engine, ("a", "USD", {}), ("b", "USD", {}), ("c", "USD", {}))
        nums = transact(engine, lambda s: {k: v.num for k, v in repository.read_accounts_fast(s, "abc").items()})
        self._remember(engine, "a", (nums["a"], "USD"))
        self._remember(engine, "b", (nums["c"], "USD"))  # b remembered with c's number
        assert write(engine, [plain("a", "b", 10, id="t1")]) == [("t1", "created", None)]
        assert posted(engine, "b") == (0, 10)
        assert posted(engine, "c") == (0, 0)
        assert repository._known_accounts[str(engine.url)].get("b") in (None, (nums["b"], "USD"))
        assert write(engine, [plain("b", "a", 3, id="t2")]) == [("t2", "created", None)]
        assert posted(engine, "b") == (3, 10)
        assert transact(engine, verify).ok

    def test_a_remembered_currency_that_is_wrong_is_refused(self, engine: Engine) -> None:
        open_accounts(engine, ("a", "EUR", {}), ("b", "EUR", {}))
        nums = transact(engine, lambda s: {k: v.num for k, v in repository.read_accounts_fast(s, {"a", "b"}).items()})
        self._remember(engine, "a", (nums["a"], "USD"))
        self._remember(engine, "b", (nums["b"], "USD"))
        outcomes = write(engine, [plain("a", "b", 10, "USD", id="t1")])
        assert outcomes == [("t1", "failed", "currency_mismatch")]
        assert stored_forms(engine) == (0, 0, 0)
        assert write(engine, [plain("a", "b", 10, "EUR", id="t2")]) == [("t2", "created", None)]

    def test_a_limit_set_behind_the_ledgers_back_still_holds(self, engine: Engine) -> None:
        open_accounts(engine, ("a", "USD", {}), ("b", "USD", {}))
        write(engine, [plain("a", "b", 1)])  # both remembered as accounts without a limit
        with engine.begin() as connection:
            connection.execute(text("UPDATE ledger_accounts SET debits_must_not_exceed_credits = true WHERE id = 'a'"))
        outcomes = write(engine, [plain("a", "b", 5, id="t1")])
        assert outcomes == [("t1", "failed", "insufficient_funds")]
        assert posted(engine, "a") == (1, 0)

    def test_a_total_past_the_largest_amount_is_refused_whole(self, engine: Engine) -> None:
        open_accounts(engine, ("a", "USD", {}), ("b", "USD", {}))
        big = 2**63 - 1
        write(engine, [plain("a", "b", big - 5, id="t0")])
        outcomes = write(engine, [plain("b", "a", 1, id="t1"), plain("a", "b", 10, id="t2")])
        assert outcomes == [("t1", "created", None), ("t2", "failed", "balance_overflow")]
        assert posted(engine, "b") == (1, big - 5)
        assert transact(engine, verify).ok
