from __future__ import annotations

import pytest

from broker.names import filter_error, matches, normalize_filters, normalize_name


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("User.Joined", "user.joined"),
        ("storefront/cart.checkout.completed", "storefront/cart.checkout.completed"),
        ("letsgo:contact", "letsgo:contact"),
        ("a_b-c", "a_b-c"),
        ("x" * 255, "x" * 255),
        ("", None),
        ("x" * 256, None),
        ("has space", None),
        ("emoji.🎉", None),
        ("star.*", None),
        ("trailing.newline\n", None),
    ],
)
def test_normalize_name(raw: str, expected: str | None) -> None:
    assert normalize_name(raw) == expected


@pytest.mark.parametrize(
    ("patterns", "name", "expected"),
    [
        (["user.joined"], "user.joined", True),
        (["user.joined"], "user.joined.late", False),
        (["user.*"], "user.joined", True),
        (["user.*"], "user", False),
        (["user.*"], "user.a.b", False),
        (["*.joined"], "team.joined", True),
        (["orders.>"], "orders.eu.created", True),
        (["orders.>"], "orders", False),
        ([">"], "anything.at.all", True),
        (["a.*", "b.>"], "b.c.d", True),
        (["a.*", "b.>"], "c.d", False),
        (["user.j"], "user.joined", False),
        (["user.joined"], "userXjoined", False),
    ],
)
def test_matches(patterns: list[str], name: str, expected: bool) -> None:
    assert matches(tuple(patterns), name) is expected


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("a.>.b", "last segment"),
        ("", "1 to 255"),
        ("a..b", "segment ''"),
        ("a.b c", "segment 'b c'"),
    ],
)
def test_filter_errors(pattern: str, problem: str) -> None:
    error = filter_error(pattern)
    assert error is not None and problem in error


def test_valid_filters_have_no_error() -> None:
    assert [filter_error(p) for p in ("a", "a.*", "*.b.>", ">", "A.B")] == [None] * 5


def test_normalize_filters_lowercases_and_dedups() -> None:
    assert normalize_filters(["User.*", "user.*", "orders.>"]) == ("user.*", "orders.>")
