"""Money: integer minor units, ISO 4217 exponents, no mixing, largest-remainder allocation."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from clearhouse.kit.money import (
    MAX_AMOUNT,
    Currency,
    CurrencyMixed,
    Money,
    UnknownCurrency,
    allocate,
    is_currency,
)


class TestCurrency:
    @pytest.mark.parametrize(
        ("code", "exponent"),
        [
            ("JPY", 0),
            ("KRW", 0),
            ("CNY", 2),
            ("USD", 2),
            ("EUR", 2),
            ("KWD", 3),
            ("BHD", 3),
            ("TND", 3),
        ],
    )
    def test_exponent_comes_from_iso_4217(self, code, exponent):
        currency = Currency.of(code)
        assert currency.code == code
        assert currency.exponent == exponent
        assert str(currency) == code

    @pytest.mark.parametrize("code", ["XAU", "XAG", "XDR", "XXX"])
    def test_metals_and_units_without_a_minor_unit_are_refused(self, code):
        with pytest.raises(UnknownCurrency):
            Currency.of(code)
        assert not is_currency(code)

    @pytest.mark.parametrize("code", ["cny", "Cny", "CN", "CNYY", "", "ZZZ", "123", None, 156])
    def test_not_an_upper_case_iso_code_is_refused(self, code):
        with pytest.raises(UnknownCurrency):
            Currency.of(code)
        assert not is_currency(code)

    def test_the_same_code_is_the_same_currency(self):
        assert Currency.of("CNY") == Currency.of("CNY")
        assert Currency.of("CNY") != Currency.of("JPY")


class TestMoneyRefusesInexactAmounts:
    @pytest.mark.parametrize("minor", [1.0, 19.99, Decimal("1999"), "1999", True, None])
    def test_minor_must_be_an_int(self, minor):
        with pytest.raises(TypeError):
            Money(minor, Currency.of("CNY"))
        with pytest.raises(TypeError):
            Money.of(minor, "CNY")

    def test_unknown_currency_is_refused(self):
        with pytest.raises(UnknownCurrency):
            Money.of(100, "XAU")

    def test_money_is_immutable(self):
        money = Money.of(100, "CNY")
        with pytest.raises(AttributeError):
            money.minor = 200  # type: ignore[misc]


class TestMoneyArithmetic:
    def test_same_currency_adds_and_subtracts(self):
        a, b = Money.of(1999, "CNY"), Money.of(1, "CNY")
        assert a + b == Money.of(2000, "CNY")
        assert a - b == Money.of(1998, "CNY")
        assert b - a == Money.of(-1998, "CNY")
        assert -a == Money.of(-1999, "CNY")

    def test_same_currency_compares(self):
        small, large = Money.of(1, "CNY"), Money.of(2, "CNY")
        assert small < large and small <= large and small <= Money.of(1, "CNY")
        assert large > small and large >= small
        assert not large < small

    @pytest.mark.parametrize(
        "operation",
        [
            lambda a, b: a + b,
            lambda a, b: a - b,
            lambda a, b: a < b,
            lambda a, b: a <= b,
            lambda a, b: a > b,
            lambda a, b: a >= b,
        ],
        ids=["add", "sub", "lt", "le", "gt", "ge"],
    )
    def test_mixing_currencies_is_refused(self, operation):
        with pytest.raises(CurrencyMixed):
            operation(Money.of(100, "CNY"), Money.of(100, "USD"))

    def test_equal_minor_in_different_currencies_is_not_equal(self):
        assert Money.of(100, "CNY") != Money.of(100, "JPY")


class TestFormatting:
    @pytest.mark.parametrize(
        ("minor", "code", "text"),
        [
            (1999, "CNY", "CNY 19.99"),
            (0, "CNY", "CNY 0.00"),
            (5, "CNY", "CNY 0.05"),
            (-5, "CNY", "CNY -0.05"),
            (-1999, "USD", "USD -19.99"),
            (500, "JPY", "JPY 500"),
            (-500, "JPY", "JPY -500"),
            (1234, "KWD", "KWD 1.234"),
            (1, "KWD", "KWD 0.001"),
            (MAX_AMOUNT, "CNY", "CNY 92233720368547758.07"),
            (MAX_AMOUNT, "JPY", "JPY 9223372036854775807"),
        ],
    )
    def test_str_shows_major_units_with_the_currency_exponent(self, minor, code, text):
        assert str(Money.of(minor, code)) == text

    def test_amount_is_exact_decimal(self):
        assert Money.of(1999, "CNY").amount == Decimal("19.99")
        assert Money.of(1234, "KWD").amount == Decimal("1.234")
        assert Money.of(500, "JPY").amount == Decimal("500")

    @settings(deadline=None)
    @given(minor=st.integers(-MAX_AMOUNT, MAX_AMOUNT), code=st.sampled_from(["JPY", "CNY", "KWD"]))
    def test_str_round_trips_exactly_over_the_bigint_range(self, minor, code):
        text = str(Money.of(minor, code))
        shown_code, number = text.split(" ")
        assert shown_code == code
        assert Decimal(number).scaleb(Currency.of(code).exponent) == minor


class TestAllocate:
    def test_worked_example_fee_split(self):
        # 100.00 split 1:1:1 -> the cent left over goes to the first part.
        assert allocate(10000, [1, 1, 1]) == [3334, 3333, 3333]

    def test_largest_remainder_wins_the_extra_unit(self):
        # Exact shares 0.3, 0.7 of 1 unit: the larger remainder (0.7) gets it.
        assert allocate(1, [3, 7]) == [0, 1]
        # Exact shares 2.5, 4.5, 3.0 of 10: remainders .5 and .5 tie, earlier weight wins.
        assert allocate(10, [25, 45, 30]) == [3, 4, 3]

    def test_ties_go_to_the_earlier_weight_deterministically(self):
        assert allocate(1, [1, 1, 1]) == [1, 0, 0]
        assert allocate(2, [1, 1, 1]) == [1, 1, 0]
        assert allocate(1, [0, 1, 1]) == [0, 1, 0]
        for _ in range(20):
            assert allocate(5, [1, 1, 1, 1, 1, 1, 1]) == [1, 1, 1, 1, 1, 0, 0]

    def test_negative_totals_mirror_positive_ones(self):
        assert allocate(-1, [1, 1]) == [-1, 0]
        assert allocate(-10000, [1, 1, 1]) == [-3334, -3333, -3333]

    def test_zero_weights_get_nothing(self):
        assert allocate(7, [0, 5, 0]) == [0, 7, 0]

    @pytest.mark.parametrize("weights", [[], [0], [0, 0, 0], [1, -1], [-1]])
    def test_bad_weights_are_refused(self, weights):
        with pytest.raises(ValueError):
            allocate(100, weights)

    def test_money_allocate_keeps_the_currency(self):
        parts = Money.of(10000, "CNY").allocate([6, 994])
        assert parts == [Money.of(60, "CNY"), Money.of(9940, "CNY")]
        assert sum(p.minor for p in parts) == 10000

    @settings(deadline=None, max_examples=500)
    @given(
        total=st.integers(-MAX_AMOUNT, MAX_AMOUNT),
        weights=st.lists(st.integers(0, 10**12), min_size=1, max_size=30).filter(any),
    )
    @example(total=MAX_AMOUNT, weights=[1, 1, 1])
    @example(total=-MAX_AMOUNT, weights=[MAX_AMOUNT, 1])
    @example(total=1, weights=[0, 0, 1])
    def test_parts_always_sum_to_the_whole_and_stay_within_one_unit_of_the_exact_share(
        self, total, weights
    ):
        parts = allocate(total, weights)
        assert len(parts) == len(weights)
        assert sum(parts) == total
        weight_sum = sum(weights)
        for part, weight in zip(parts, weights, strict=True):
            exact = Fraction(total * weight, weight_sum)
            assert abs(part - exact) < 1
            if weight == 0:
                assert part == 0
            # Every part has the total's sign (or is zero).
            assert part * total >= 0

    @settings(deadline=None)
    @given(
        total=st.integers(-(10**9), 10**9),
        weights=st.lists(st.integers(0, 1000), min_size=1, max_size=10).filter(any),
    )
    def test_same_input_same_output(self, total, weights):
        assert allocate(total, list(weights)) == allocate(total, list(weights))
        assert allocate(-total, weights) == [-p for p in allocate(total, weights)]
