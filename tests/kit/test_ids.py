"""Ids: a type prefix, then 26 Crockford base32 characters that sort by creation time."""

from __future__ import annotations

import base64
import re
import time

import pytest

from clearhouse.kit import ids
from clearhouse.kit.ids import new_id, new_ids

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
BODY = re.compile(rf"^[{ALPHABET}]{{26}}$")


def wait_for_the_next_millisecond(after: int) -> None:
    deadline = time.monotonic() + 1
    while time.time_ns() // 1_000_000 <= after:
        assert time.monotonic() < deadline, f"{after} is not a millisecond of the wall clock"
        time.sleep(0.0005)


def millis_of(identifier: str) -> int:
    """The creation millisecond encoded in the first 10 characters after the prefix."""
    body = identifier.split("_", 1)[1]
    value = 0
    for char in body[:10]:
        value = value * 32 + ALPHABET.index(char)
    return value


class TestShape:
    @pytest.mark.parametrize("prefix", ["acct", "tr", "pay", "mch", "fxq"])
    def test_prefix_then_26_crockford_characters(self, prefix):
        identifier = new_id(prefix)
        head, body = identifier.split("_", 1)
        assert head == prefix
        assert BODY.match(body), identifier

    def test_alphabet_sorts_in_its_own_order(self):
        # Lexicographic order of the characters must be numeric order, or ids would not sort.
        assert list(ALPHABET) == sorted(ALPHABET)

    def test_encodes_the_wall_clock_millisecond(self):
        before = time.time_ns() // 1_000_000
        identifier = new_id("tr")
        after = time.time_ns() // 1_000_000
        assert before <= millis_of(identifier) <= after


class TestOrdering:
    def test_ids_sort_by_creation_time_across_milliseconds(self):
        made: list[str] = []
        deadline = time.monotonic() + 0.05
        while time.monotonic() < deadline:
            made.append(new_id("tr"))
            time.sleep(0.0002)
        millis = [millis_of(i) for i in made]
        assert len(set(millis)) >= 5, "the loop should span several milliseconds"
        # Sorting by id never puts a later millisecond before an earlier one.
        by_id = sorted(made)
        assert [millis_of(i) for i in by_id] == sorted(millis)

    def test_an_id_from_a_later_millisecond_sorts_after(self):
        first = new_id("tr")
        wait_for_the_next_millisecond(millis_of(first))
        second = new_id("tr")
        assert first < second


class TestUniqueness:
    def test_100k_ids_are_unique(self):
        ids = [new_id("tr") for _ in range(100_000)]
        assert len(set(ids)) == 100_000

    def test_100k_batch_ids_are_unique(self):
        ids = new_ids("tr", 100_000)
        assert len(ids) == 100_000
        assert len(set(ids)) == 100_000


class TestBatch:
    def test_batch_has_count_ids_with_the_prefix_and_one_timestamp(self):
        before = time.time_ns() // 1_000_000
        ids = new_ids("tr", 1000)
        after = time.time_ns() // 1_000_000
        assert len(ids) == 1000
        assert all(i.startswith("tr_") and BODY.match(i[3:]) for i in ids)
        assert len({millis_of(i) for i in ids}) == 1
        assert before <= millis_of(ids[0]) <= after

    def test_empty_batch(self):
        assert new_ids("tr", 0) == []

    def test_batch_ids_differ_from_single_ids_and_each_other(self):
        batch = new_ids("tr", 10)
        single = new_id("tr")
        assert single not in batch
        assert len(set(batch)) == 10

    def test_a_later_batch_sorts_after_an_earlier_one(self):
        first = new_ids("tr", 50)
        wait_for_the_next_millisecond(millis_of(first[0]))
        second = new_ids("tr", 50)
        assert max(first) < min(second)


class TestEncoding:
    def test_the_random_part_is_the_same_base32_as_the_time_part(self):
        # 80 bits written most significant first in our alphabet, as the time part is written.
        expected = ids._base32(int.from_bytes(bytes(range(1, 11)), "big"), 16)
        assert base64.b32encode(bytes(range(1, 11))).translate(ids._FROM_RFC4648).decode() == expected


class TestMonotonic:
    """Within a process ids only grow, also inside one millisecond (session 20: a payment's timeline, read in id
    order, showed a failure before the payment's creation when both were written in one millisecond)."""

    def test_ids_made_one_after_the_other_sort_in_that_order(self):
        made = []
        for n in range(3000):
            made.append(new_id("pev") if n % 3 else new_ids("pev", 1 + n % 4)[-1])
        assert made == sorted(made) and len(set(made)) == len(made)
        assert len({millis_of(i) for i in made}) < len(made)  # many shared a millisecond: the test means something

    def test_a_batch_is_ascending_and_above_the_id_before_it(self):
        before = new_id("tr")
        batch = new_ids("tr", 500)
        after = new_id("tr")
        assert batch == sorted(batch) and before < batch[0] and batch[-1] < after

    def test_a_clock_standing_still_or_stepping_back_does_not_reorder(self, monkeypatch):
        monkeypatch.setattr(ids, "_last", ids._last)  # put back afterwards: later ids must not keep a future time
        now = [time.time_ns() + 10**12]  # a second in the future: beyond every id made so far
        monkeypatch.setattr(ids.time, "time_ns", lambda: now[0])
        first = new_id("tr")
        now[0] -= 5_000_000_000  # the clock steps back five seconds (NTP)
        second, third = new_id("tr"), new_ids("tr", 3)
        assert first < second < third[0] < third[-1]
        assert millis_of(second) == millis_of(first)  # it keeps the last millisecond until the clock catches up

    def test_a_millisecond_used_up_borrows_the_next(self, monkeypatch):
        monkeypatch.setattr(ids, "_last", ids._last)
        now = [time.time_ns() + 2 * 10**12]
        monkeypatch.setattr(ids.time, "time_ns", lambda: now[0])
        first = new_id("tr")
        monkeypatch.setattr(ids, "_last", (ids._last[0], (1 << 80) - 2))  # the millisecond's bodies all but used
        second = new_id("tr")
        assert first < second and millis_of(second) == millis_of(first) + 1
