"""Splitting a concurrency limit's free slots between consumers."""

from __future__ import annotations

from broker.delivery.leasing import share_credit


def test_an_even_budget_is_split_evenly() -> None:
    assert share_credit([10, 10], 6) == [3, 3]


def test_the_first_in_turn_gets_the_odd_one() -> None:
    assert share_credit([10, 10, 10], 4) == [2, 1, 1]
    assert share_credit([10, 10], 1) == [1, 0]


def test_what_one_cannot_take_goes_to_the_others() -> None:
    assert share_credit([1, 10, 0], 8) == [1, 7, 0]


def test_a_budget_larger_than_every_want_gives_each_its_want() -> None:
    assert share_credit([2, 3], 100) == [2, 3]


def test_no_budget_or_no_wants_gives_nothing() -> None:
    assert share_credit([5, 5], 0) == [0, 0]
    assert share_credit([5, 5], -2) == [0, 0]
    assert share_credit([], 5) == []
