"""Every query the ledger makes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Row, and_, any_, bindparam, func, insert, literal_column, select, type_coerce, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from clearhouse.kit.db import (
    _driver_errors,
    bulk_increment,
    bulk_insert,
    is_postgresql,
    one_of,
    sqlite_values,
)
from clearhouse.kit.verification import StoredTime, read_all
from clearhouse.ledger.errors import ChainHeadMissing
from clearhouse.ledger.models import BLOCK, accounts, chain, entries, postings

CHUNK = 5000  # SQLite binds each value separately: stay under its parameter limit

ENTRY_COLUMNS = (
    "seq", "id", "pending", "pending_id", "resolution", "timeout_seconds", "timeout_at",
    "code", "reference", "metadata_json", "created_at", "hash",
    "debit_account", "credit_account", "amount", "currency", "kind",
)
POSTING_COLUMNS = ("seq", "idx", "account_id", "direction", "kind", "amount", "currency")
BALANCE_COLUMNS = ("debits_posted", "credits_posted", "debits_pending", "credits_pending")


def _chunks(values: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), CHUNK):
        yield values[start:start + CHUNK]


def insert_account(session: Session, values: dict[str, Any]) -> None:
    if is_postgresql(session):
        session.execute(insert(accounts).values(**values))  # num: the column's identity
    else:
        # SQLite writers hold the database lock (BEGIN IMMEDIATE): max + 1 cannot collide.
        num = select(func.coalesce(func.max(accounts.c.num), 0) + 1).scalar_subquery()
        session.execute(insert(accounts).values(**values, num=num))


class Leg(NamedTuple):
    """One posting of an entry, whether stored on the transfer row or as a posting row."""

    account_id: str
    direction: str
    kind: str
    amount: int
    currency: str
    seq: int = 0
    idx: int = 0


class HistoryLine(NamedTuple):
    seq: int
    idx: int
    direction: str
    kind: str
    amount: int
    currency: str
    transfer_id: str
    created_at: datetime
    code: str | None
    reference: str | None


_debit_accounts = accounts.alias("debit_side")
_credit_accounts = accounts.alias("credit_side")
# Entries with the string ids of their row's two accounts (NULL for posting-row entries).
_ENTRY_WITH_LEGS = (
    select(entries, _debit_accounts.c.id.label("debit_account_id"), _credit_accounts.c.id.label("credit_account_id"))
    .select_from(entries)
    .outerjoin(_debit_accounts, _debit_accounts.c.num == entries.c.debit_account)
    .outerjoin(_credit_accounts, _credit_accounts.c.num == entries.c.credit_account)
)


def row_legs(entry: Row) -> list[Leg]:
    """The two legs stored on a transfer row; an account number that matches no account
    comes back as ``#<num>`` so verify can name it."""
    debit = entry.debit_account_id if entry.debit_account_id is not None else f"#{entry.debit_account}"
    credit = entry.credit_account_id if entry.credit_account_id is not None else f"#{entry.credit_account}"
    return [
        Leg(debit, "debit", entry.kind, entry.amount, entry.currency, entry.seq, 0),
        Leg(credit, "credit", entry.kind, entry.amount, entry.currency, entry.seq, 1),
    ]


def _posting_leg(row: Row) -> Leg:
    return Leg(row.account_id, row.direction, row.kind, row.amount, row.currency, row.seq, row.idx)


def _block() -> Any:
    """``seq / BLOCK`` written as the history indexes spell it, so the planner uses them."""
    return literal_column(f"(ledger_transfers.seq / {BLOCK})")


def get_account(session: Session, account_id: str) -> Row | None:
    return session.execute(select(accounts).where(accounts.c.id == account_id)).first()


def list_accounts(session: Session, *, limit: int, starting_after: str | None, owner_id: str | None) -> list[Row]:
    query = select(accounts).order_by(accounts.c.id).limit(limit)
    if starting_after:
        query = query.where(accounts.c.id > starting_after)
    if owner_id:
        query = query.where(accounts.c.owner_id == owner_id)
    return list(session.execute(query))


LOCKED_ACCOUNT_COLUMNS = (
    accounts.c.id, accounts.c.num, accounts.c.currency, accounts.c.closed, accounts.c.debits_must_not_exceed_credits,
    accounts.c.credits_must_not_exceed_debits, accounts.c.overdraft_limit,
    accounts.c.debits_posted, accounts.c.credits_posted, accounts.c.debits_pending, accounts.c.credits_pending,
)


def _ids_in(column: Any, name: str) -> dict[str, Any]:
    """``column`` among the ids bound as ``name``, per dialect, for statements built once:
    PostgreSQL ``= ANY(array)``, SQLite an expanding ``IN``."""
    return {
        "postgresql": column == any_(bindparam(name, type_=ARRAY(column.type))),
        "sqlite": column.in_(bindparam(name, expanding=True)),
    }


# Built once (SQLAlchemy spends more building a statement than the database running it),
# run on the session's connection: every ledger write runs these.
_LOCK_ACCOUNTS = {
    dialect: select(*LOCKED_ACCOUNT_COLUMNS).where(among).order_by(accounts.c.id).with_for_update()
    for dialect, among in _ids_in(accounts.c.id, "account_ids").items()
}
_EXISTING_IDS = {dialect: select(entries.c.id).where(among) for dialect, among in _ids_in(entries.c.id, "ids").items()}
_LOCK_CHAIN = select(chain.c.seq, chain.c.hash).where(chain.c.id == 1).with_for_update()
_ADVANCE_CHAIN = update(chain).where(chain.c.id == 1).values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))


def _run(session: Session, statements: dict[str, Any], params: dict[str, Any]) -> Any:
    connection = session.connection()
    return connection.execute(statements[connection.dialect.name], params)


def lock_accounts(session: Session, account_ids: Iterable[str]) -> dict[str, Row]:
    """Read and lock accounts for a write.

    Locks are taken in ascending id order, the one order every ledger writer uses, so
    two writers touching overlapping accounts queue instead of deadlocking.
    (On SQLite the whole database is already locked by ``BEGIN IMMEDIATE``.)
    """
    found: dict[str, Row] = {}
    for chunk in _chunks(sorted(set(account_ids))):
        for row in _run(session, _LOCK_ACCOUNTS, {"account_ids": list(chunk)}):
            found[row.id] = row
    return found


class LockedAccount(NamedTuple):
    id: str
    num: int
    currency: str
    closed: bool
    debits_must_not_exceed_credits: bool
    credits_must_not_exceed_debits: bool
    overdraft_limit: int | None
    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int


_LOCKED_SQL = ", ".join(LockedAccount._fields)


def read_accounts_fast(session: Session, account_ids: Iterable[str]) -> dict[str, LockedAccount]:
    """Accounts for the plain-transfer path, read on the driver's cursor without row locks
    (the caller holds the chain: see ``service._create_plain_transfers``). Thousands of
    ids cost one array parameter (PostgreSQL) or a few IN lists (SQLite) instead of a
    SQLAlchemy statement of thousands of bound literals."""
    ordered = sorted(account_ids)
    found: dict[str, LockedAccount] = {}
    if is_postgresql(session):
        statement = f"SELECT {_LOCKED_SQL} FROM ledger_accounts WHERE id = ANY(%s)"
        with _driver_errors(session, statement) as dbapi, dbapi.cursor() as cursor:
            for row in cursor.execute(statement, [ordered]):
                found[row[0]] = LockedAccount(*row)
        return found
    with _driver_errors(session, "SELECT ledger_accounts") as dbapi:
        cursor = dbapi.cursor()
        try:
            for chunk in _chunks(ordered):
                statement = f"SELECT {_LOCKED_SQL} FROM ledger_accounts WHERE id IN ({','.join('?' * len(chunk))})"
                for row in cursor.execute(statement, chunk):
                    found[row[0]] = LockedAccount(*row)
        finally:
            cursor.close()
    return found


def set_account_closed(session: Session, account_id: str) -> None:
    session.execute(update(accounts).where(accounts.c.id == account_id).values(closed=True))


def lock_chain(session: Session) -> tuple[int, str]:
    """Lock the head of the hash chain: the first lock of every writer, before any account's."""
    row = session.connection().execute(_LOCK_CHAIN).one_or_none()
    if row is None:
        raise ChainHeadMissing("The journal's chain head is missing; run `clearhouse ledger verify` and restore it")
    return row.seq, row.hash


def advance_chain(session: Session, seq: int, hash_: str) -> None:
    session.connection().execute(_ADVANCE_CHAIN, {"new_seq": seq, "new_hash": hash_})


def write_journal(
    session: Session,
    entry_rows: list[tuple],
    posting_rows: list[tuple],
    balance_deltas: list[tuple],
) -> None:
    bulk_insert(session, entries, ENTRY_COLUMNS, entry_rows)
    bulk_insert(session, postings, POSTING_COLUMNS, posting_rows)
    bulk_increment(session, accounts, "id", BALANCE_COLUMNS, balance_deltas)


_PLAIN_COLUMNS = (
    "seq, id, code, reference, metadata_json, hash, debit_account, credit_account, amount, currency, "
    "pending, created_at, kind"
)


def write_plain_transfers(session: Session, rows: list[tuple], created_at: datetime, deltas: list[tuple]) -> bool:
    """Plain posted transfers and their accounts' posted balances, straight to the driver;
    False, with nothing written, when the accounts are not as the caller took them to be or
    a transfer id is already taken (the unique index says so: no lookup of every id beforehand).

    ``rows`` are (seq, id, code, reference, metadata_json, hash, debit_account,
    credit_account, amount, currency); ``deltas`` are (account number, account id,
    currency, limited, debits, credits), one for every account the rows name. The balance
    update checks, on each account's row, what the caller took from memory
    (``plain_accounts``): the number belongs to that id, the currency, open, limited or
    not, and that neither total passes 2^63-1. Both writes run inside a savepoint, rolled
    back on any refusal. The constant columns are bound once per batch (through the
    column types, as the ORM would store them).
    """
    dialect = session.get_bind().dialect
    created = entries.c.created_at.type._cached_bind_processor(dialect)
    pending = entries.c.pending.type._cached_bind_processor(dialect)
    constants = (
        pending(False) if pending else False,
        created(created_at) if created else created_at,
        "posted",
    )
    refused = dialect.loaded_dbapi.IntegrityError
    if is_postgresql(session):
        statement = f"COPY ledger_transfers ({_PLAIN_COLUMNS}) FROM STDIN"
        with _driver_errors(session, statement) as dbapi, dbapi.cursor() as cursor:
            cursor.execute("SAVEPOINT ledger_plain_transfers")
            try:
                cursor.execute(_PLAIN_BALANCES_POSTGRESQL, [list(column) for column in zip(*deltas, strict=True)])
                written = cursor.rowcount == len(deltas)
                if written:
                    with cursor.copy(statement) as copy:
                        for row in rows:
                            copy.write_row(row + constants)
            except refused as error:
                if getattr(error, "sqlstate", None) != "23505":  # unique_violation: a taken id
                    raise
                written = False
            if not written:
                cursor.execute("ROLLBACK TO SAVEPOINT ledger_plain_transfers")
            cursor.execute("RELEASE SAVEPOINT ledger_plain_transfers")
        return written
    # SQLite: the transaction holds the database's write lock, so nothing changed since
    # the accounts were read; the update's conditions check the remembered ones.
    with _driver_errors(session, "INSERT INTO ledger_transfers") as dbapi:
        cursor = dbapi.cursor()
        try:
            cursor.execute("SAVEPOINT ledger_plain_transfers")
            try:
                written = sqlite_values(dbapi, _PLAIN_BALANCES_SQLITE, 6, deltas) == len(deltas)
                if written:
                    sqlite_values(dbapi, _PLAIN_INSERT_SQLITE, 10, rows, leading=constants)
            except refused as error:
                if "UNIQUE constraint failed: ledger_transfers.id" not in str(error):
                    raise
                written = False
            if not written:
                cursor.execute("ROLLBACK TO SAVEPOINT ledger_plain_transfers")
            cursor.execute("RELEASE SAVEPOINT ledger_plain_transfers")
        finally:
            cursor.close()
    return written


# The plain path's rows on SQLite: ten values a row, the three the batch shares bound once a statement.
_PLAIN_INSERT_SQLITE = (
    f"INSERT INTO ledger_transfers ({_PLAIN_COLUMNS}) "
    f"SELECT {', '.join(f'column{n}' for n in range(1, 11))}, ?, ?, ? FROM (VALUES {{values}})"
)

# The balance update of the plain path, for deltas (num, id, currency, limited, debits, credits):
# it moves an account only if the remembered facts still hold and the totals stay in range.
_PLAIN_BALANCES_SQLITE = (  # run by kit.db.sqlite_values: a thousand accounts a statement
    "UPDATE ledger_accounts SET debits_posted = debits_posted + v.column5, "
    "credits_posted = credits_posted + v.column6 FROM (VALUES {values}) AS v "
    "WHERE num = v.column1 AND id = v.column2 AND currency = v.column3 AND NOT closed "
    "AND (debits_must_not_exceed_credits OR credits_must_not_exceed_debits) = v.column4 "
    "AND debits_posted <= 9223372036854775807 - v.column5 AND credits_posted <= 9223372036854775807 - v.column6"
)
_PLAIN_BALANCES_POSTGRESQL = (
    "UPDATE ledger_accounts AS t SET debits_posted = t.debits_posted + v.d, credits_posted = t.credits_posted + v.c "
    "FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::boolean[], %s::bigint[], %s::bigint[]) "
    "AS v(num, id, currency, limited, d, c) "
    "WHERE t.num = v.num AND t.id = v.id AND t.currency = v.currency AND NOT t.closed "
    "AND (t.debits_must_not_exceed_credits OR t.credits_must_not_exceed_debits) = v.limited "
    "AND t.debits_posted <= 9223372036854775807 - v.d AND t.credits_posted <= 9223372036854775807 - v.c"
)


# ---------------------------------------------------------------- accounts the plain path remembers

# Per database (its URL): account id -> (number, currency) of accounts seen open and without
# a limit. Those facts only change if the account is closed or altered behind the ledger's
# back, and ``write_plain_transfers`` checks them on the row it updates, so a stale entry
# costs a fallback to the general path, never a wrong write.
_known_accounts: dict[str, dict[str, tuple[int, str]]] = {}
KNOWN_ACCOUNTS_LIMIT = 1_000_000


def plain_accounts(
    session: Session, account_ids: set[str]
) -> tuple[dict[str, tuple[int, str]], dict[str, LockedAccount]] | None:
    """(number, currency) of each account, from memory where it is known, else read
    (without row locks: the caller holds the chain); and the rows, read now with their
    balances, of the accounts with a limit, which are never remembered. None when one is
    missing, closed or has no number yet: the general path says why.
    """
    known = _known_accounts.setdefault(str(session.get_bind().engine.url), {})
    found: dict[str, tuple[int, str]] = {}
    unknown = []
    for account_id in account_ids:
        facts = known.get(account_id)
        if facts is None:
            unknown.append(account_id)
        else:
            found[account_id] = facts
    limited: dict[str, LockedAccount] = {}
    if not unknown:
        return found, limited
    read = read_accounts_fast(session, unknown)
    if len(read) != len(unknown):
        return None
    if len(known) + len(read) > KNOWN_ACCOUNTS_LIMIT:
        known.clear()
    for account_id, row in read.items():
        if row.closed or row.num is None:  # an account inserted around create_account has no number
            return None
        found[account_id] = facts = (row.num, row.currency)
        if row.debits_must_not_exceed_credits or row.credits_must_not_exceed_debits:
            limited[account_id] = row
        else:
            known[account_id] = facts
    return found, limited


def forget_accounts(session: Session, account_ids: Iterable[str]) -> None:
    """Drop what ``plain_accounts`` remembers of these accounts (a write found it stale)."""
    known = _known_accounts.get(str(session.get_bind().engine.url), {})
    for account_id in account_ids:
        known.pop(account_id, None)


def existing_ids(session: Session, ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(ids):
        found.update(_run(session, _EXISTING_IDS, {"ids": list(chunk)}).scalars())
    return found


def entries_with_postings(session: Session, ids: Iterable[str]) -> dict[str, tuple[Row, list[Leg]]]:
    """Entries by id, each with its legs in order (from its row or its posting rows)."""
    ids = sorted(set(ids))
    out: dict[str, tuple[Row, list[Leg]]] = {}
    by_seq: dict[int, str] = {}
    for chunk in _chunks(ids):
        for row in session.execute(_ENTRY_WITH_LEGS.where(one_of(session, entries.c.id, chunk))):
            if row.kind is not None:
                out[row.id] = (row, row_legs(row))
            else:
                out[row.id] = (row, [])
                by_seq[row.seq] = row.id
    seqs = sorted(by_seq)
    for start in range(0, len(seqs), CHUNK):
        chunk_seqs = seqs[start:start + CHUNK]
        query = (
            select(postings)
            .where(one_of(session, postings.c.seq, chunk_seqs))
            .order_by(postings.c.seq, postings.c.idx)
        )
        for row in session.execute(query):
            out[by_seq[row.seq]][1].append(_posting_leg(row))
    return out


def resolutions_of(session: Session, pending_ids: Iterable[str]) -> dict[str, Row]:
    """The entry that posted or voided each pending entry, where there is one."""
    found: dict[str, Row] = {}
    for chunk in _chunks(sorted(set(pending_ids))):
        for row in session.execute(select(entries).where(one_of(session, entries.c.pending_id, chunk))):
            found[row.pending_id] = row
    return found


def expired_pending_ids(session: Session, now: datetime, limit: int) -> list[str]:
    resolution = entries.alias("resolution")
    query = (
        select(entries.c.id)
        .outerjoin(resolution, resolution.c.pending_id == entries.c.id)
        .where(and_(entries.c.pending, entries.c.timeout_at <= now, resolution.c.seq.is_(None)))
        .order_by(entries.c.timeout_at)
        .limit(limit)
    )
    return list(session.scalars(query))


def last_seq_at(session: Session, as_of: datetime) -> int:
    return session.scalar(select(func.coalesce(func.max(entries.c.seq), 0)).where(entries.c.created_at <= as_of)) or 0


def account_num(session: Session, account_id: str) -> int | None:
    return session.scalar(select(accounts.c.num).where(accounts.c.id == account_id))


def _blocks_up_to(session: Session, up_to_seq: int | None) -> range:
    head = up_to_seq if up_to_seq is not None else last_seq(session)
    return range(0, head // BLOCK + 1)


_HALF = 32
_LOW_HALF = (1 << _HALF) - 1


def _exact_sum(amount: Any) -> tuple[Any, Any]:
    """Two SQL sums whose recombination (``_recombine``) is the exact sum of ``amount``.

    The pending and release totals of an account only ever grow (every reservation ever
    made and taken back), so their sum passes 2^63-1 long before a running total does.
    SQLite's ``sum()`` then fails with "integer overflow" (``total()`` would round through
    a float). Amounts are 1 to 2^63-1, so their high halves are below 2^31 and their low
    halves below 2^32: each half's sum stays exact in 64 bits up to two billion rows, on
    both databases (PostgreSQL's ``sum(bigint)`` is a numeric anyway).
    """
    # Inline constants: PostgreSQL has ``bigint >> integer`` but no ``bigint >> bigint``.
    return (func.sum(amount.bitwise_rshift(literal_column(str(_HALF)))),
            func.sum(amount.bitwise_and(literal_column(str(_LOW_HALF)))))


def _recombine(high: Any, low: Any) -> int:
    return (int(high) << _HALF) + int(low)


def balance_sums(session: Session, account_id: str, up_to_seq: int | None) -> dict[tuple[str, str], int]:
    """Sum of an account's legs by (direction, kind), up to a point in the chain."""
    totals: dict[tuple[str, str], int] = {}
    query = (
        select(postings.c.direction, postings.c.kind, *_exact_sum(postings.c.amount))
        .where(postings.c.account_id == account_id)
        .group_by(postings.c.direction, postings.c.kind)
    )
    if up_to_seq is not None:
        query = query.where(postings.c.seq <= up_to_seq)
    for d, k, high, low in session.execute(query):
        totals[(d, k)] = totals.get((d, k), 0) + _recombine(high, low)
    num = account_num(session, account_id)
    if num is None:
        return totals
    blocks = list(_blocks_up_to(session, up_to_seq))
    for direction, column in (("debit", entries.c.debit_account), ("credit", entries.c.credit_account)):
        for start in range(0, len(blocks), CHUNK):
            query = (
                select(entries.c.kind, *_exact_sum(entries.c.amount))
                .where(_block().in_(blocks[start:start + CHUNK]), column == num)
                .group_by(entries.c.kind)
            )
            if up_to_seq is not None:
                query = query.where(entries.c.seq <= up_to_seq)
            for k, high, low in session.execute(query):
                totals[(direction, k)] = totals.get((direction, k), 0) + _recombine(high, low)
    return totals


_HISTORY_COLUMNS = (entries.c.id.label("transfer_id"), entries.c.created_at, entries.c.code, entries.c.reference)


def account_history(
    session: Session, account_id: str, *, after: tuple[int, int] | None, up_to_seq: int | None, limit: int
) -> list[HistoryLine]:
    """An account's legs in (seq, idx) order after a cursor: posting rows through their
    account index, row legs block by block through the history indexes."""
    found: list[HistoryLine] = []
    query = (
        select(postings.c.seq, postings.c.idx, postings.c.direction, postings.c.kind,
               postings.c.amount, postings.c.currency, *_HISTORY_COLUMNS)
        .join(entries, entries.c.seq == postings.c.seq)
        .where(postings.c.account_id == account_id)
        .order_by(postings.c.seq, postings.c.idx)
        .limit(limit)
    )
    if after is not None:
        seq, idx = after
        query = query.where((postings.c.seq > seq) | ((postings.c.seq == seq) & (postings.c.idx > idx)))
    if up_to_seq is not None:
        query = query.where(postings.c.seq <= up_to_seq)
    found.extend(HistoryLine(*row) for row in session.execute(query))

    num = account_num(session, account_id)
    if num is not None:
        from_seq = after[0] if after is not None else 0
        legs: list[HistoryLine] = []
        blocks = _blocks_up_to(session, up_to_seq)
        for block in range(from_seq // BLOCK, blocks.stop):
            for direction, idx, column in (
                ("debit", 0, entries.c.debit_account), ("credit", 1, entries.c.credit_account)
            ):
                query = (
                    select(entries.c.seq, entries.c.kind, entries.c.amount, entries.c.currency, *_HISTORY_COLUMNS)
                    .where(_block() == block, column == num, entries.c.seq >= from_seq)
                    .order_by(entries.c.seq)
                    .limit(limit + 1)
                )
                if up_to_seq is not None:
                    query = query.where(entries.c.seq <= up_to_seq)
                for row in session.execute(query):
                    if after is not None and (row.seq, idx) <= after:
                        continue
                    legs.append(HistoryLine(row.seq, idx, direction, row.kind, row.amount, row.currency,
                                            row.transfer_id, row.created_at, row.code, row.reference))
            if len(legs) >= limit:
                break  # later blocks hold only later seqs
        found.extend(legs)
    found.sort(key=lambda line: (line.seq, line.idx))
    return found[:limit]


_TIMES = ("created_at", "timeout_at")
# The journal as verify reads it: what a tamperer wrote into a time column must not stop the read.
_JOURNAL = (
    select(
        *(type_coerce(column, StoredTime()).label(column.name) if column.name in _TIMES else column
          for column in entries.c),
        _debit_accounts.c.id.label("debit_account_id"), _credit_accounts.c.id.label("credit_account_id"),
    )
    .select_from(entries)
    .outerjoin(_debit_accounts, _debit_accounts.c.num == entries.c.debit_account)
    .outerjoin(_credit_accounts, _credit_accounts.c.num == entries.c.credit_account)
)


def journal(session: Session, batch: int = 20000) -> Iterator[tuple[Row | None, list[Leg]]]:
    """Every entry in chain order with its legs, streamed in slices."""
    last = 0
    while True:
        entry_rows = read_all(session, _JOURNAL.where(entries.c.seq > last).order_by(entries.c.seq).limit(batch))
        if not entry_rows:
            # Postings past the last entry belong to no entry at all.
            stray: dict[int, list[Leg]] = {}
            for row in read_all(session, select(postings).where(postings.c.seq > last).order_by(postings.c.seq)):
                stray.setdefault(row.seq, []).append(_posting_leg(row))
            for orphans in stray.values():
                yield None, orphans
            return
        high = entry_rows[-1].seq
        grouped: dict[int, list[Leg]] = {row.seq: [] for row in entry_rows}
        query = (
            select(postings)
            .where(postings.c.seq > last, postings.c.seq <= high)
            .order_by(postings.c.seq, postings.c.idx)
        )
        for row in read_all(session, query):
            grouped.setdefault(row.seq, []).append(_posting_leg(row))
        for row in entry_rows:
            rows = grouped.pop(row.seq)
            if row.kind is not None:
                # Posting rows beside a row that carries its own legs: a mixed entry, which
                # the hash check catches, since the canonical content then lists them all.
                rows = row_legs(row) + rows
            yield row, rows
        # Postings whose entry is missing would be left in ``grouped``.
        for _seq, orphans in grouped.items():
            yield None, orphans
        last = high


def rows_before_the_chain(session: Session) -> tuple[int, int]:
    """Entries and postings at seq 0 or below: outside the chain, which starts at 1."""
    return (
        session.scalar(select(func.count()).select_from(entries).where(entries.c.seq < 1)) or 0,
        session.scalar(select(func.count()).select_from(postings).where(postings.c.seq < 1)) or 0,
    )


def all_accounts(session: Session) -> Iterator[Row]:
    """Every account with what verify checks (its creation time, which it does not, is left out)."""
    yield from read_all(session, select(*LOCKED_ACCOUNT_COLUMNS).order_by(accounts.c.id))


def find_chain_head(session: Session) -> tuple[Any, Any] | None:
    """The chain head as stored, or None when its row is gone (nothing guards that table)."""
    rows = read_all(session, select(chain.c.seq, chain.c.hash).where(chain.c.id == 1))
    return (rows[0].seq, rows[0].hash) if rows else None


def last_seq(session: Session) -> int:
    """The last entry's seq, read from the journal itself rather than the chain head."""
    return session.scalar(select(func.coalesce(func.max(entries.c.seq), 0))) or 0
