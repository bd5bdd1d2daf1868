"""PostgreSQL snapshots as the log's positions keep them, without a database."""

from __future__ import annotations

from broker.storage.postgres import Snapshot


def test_a_snapshot_reads_back_as_written() -> None:
    assert str(Snapshot.parse("100:110:103,105")) == "100:110:103,105"
    assert Snapshot.parse("100:100:") == Snapshot(100, 100, ())


def test_own_transaction_listed_as_running_becomes_committed() -> None:
    assert Snapshot.parse("100:110:103,105").with_committed(105) == Snapshot(100, 110, (103,))


def test_own_transaction_at_or_past_xmax_moves_xmax_and_keeps_the_rest_running() -> None:
    # PostgreSQL's xmax is the last completed id + 1: this transaction's own id (112)
    # may lie past it, with ids 110 and 111 running or not yet begun.
    assert Snapshot.parse("100:110:103").with_committed(112) == Snapshot(100, 113, (103, 110, 111))
    assert Snapshot.parse("58631:58631:").with_committed(58631) == Snapshot(58631, 58632, ())


def test_no_own_transaction_changes_nothing() -> None:
    snapshot = Snapshot.parse("100:110:103")
    assert snapshot.with_committed(None) is snapshot
    assert snapshot.with_committed(99) is snapshot
