"""Invariant 1 of DESIGN.md, "fresh after write", with real processes on a real
PostgreSQL and a real Redis: no read in any process returns a row older than a write
whose call had returned before the read started.

The main test runs 2 writer and 4 reader processes on both workloads of
:mod:`tests.orm.stale_worker` (also runnable by hand: ``python -m
tests.orm.stale_worker --seconds 10``): versions of a few ``Book`` rows changed by 10
kinds of write, and rows moved between the sets that pinned reads depend on (issue 11:
``filter(publisher_id=x)``, ``get(pk=)``, reverse managers, through joins) by 16 kinds,
by each writer alone and by both at once on the same rows, plus many-to-many pairs
added and removed, read also by unpinned reads (a listing, ``count()``). Negative
controls must see stale reads, since a checker that cannot fail proves nothing: readers
behind a cache nothing invalidates and, breaking what granular invalidation adds in the
writer processes only, writers that leave the row and condition stamps (``pin:``,
``pinned:``) out of their invalidations or, subtler, replace the stamp of the set a row
enters but not of the one it leaves; only the pinned reads may then go stale.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.orm.stale_support import REAL_SERVICES, REDIS_URL, assert_fresh_run
from tests.orm.stale_worker import (
    Build,
    CheckResult,
    MoveReader,
    run_check,
)

pytestmark = [*REAL_SERVICES, pytest.mark.django_db(transaction=True)]

WRITERS, READERS = 2, 4
CONTROL_READERS = 2  # a negative control sees stale reads by the hundred: fewer starts
PIN_TAGS = r"^(pin|pinned):"
BY_PUBLISHER = {"pinned_filter", "pinned_in", "pinned_count", "reverse_fk_manager",
                "through_books_of_publisher"}


def forget_the_sets_rows_leave() -> None:
    """Negative control, run in writer processes: an UPDATE whose WHERE names a key
    column's old value and that assigns it a new one replaces the new value's pin only
    (``relaycache.orm.pins``: the values a write touches)."""
    from relaycache.orm import pins

    written = pins._written_values

    def new_values_only(write: Any, column: str, params: Any) -> list[object] | None:
        values = written(write, column, params)
        if write.kind == "update" and values and dict(write.assigned).get(column) is not None:
            return values[-1:]
        return values

    pins._written_values = new_values_only


def _check(label: str, readers: int = CONTROL_READERS, **options) -> CheckResult:
    # Every hit asks Redis here; test_stale_reads_near.py runs the same check with the
    # near cache (the default) on.
    result = run_check(redis_url=REDIS_URL, writers=WRITERS, readers=readers,
                       backend_options={"near_cache": False}, **options)
    print(f"\n{label}: {result.line()}\nserved by shape: {result.served_shapes}\n"
          f"stale by shape: {result.stale_shapes}")
    return result


def test_no_process_reads_a_version_older_than_a_returned_write():
    result = _check("cached", readers=READERS, seconds=7.0, workloads=("versions", "moves"))

    assert_fresh_run(result)
    assert min(result.ops.values()) >= 3, f"some write kinds barely ran: {result.ops}"
    # Both writers moved the shared rows, in the same seconds.
    assert len(result.shared_moves) == WRITERS, result.line()
    assert min(result.shared_moves) > 0, result.line()
    assert result.hits > 100, f"the cache barely served, nothing was tested: {result.line()}"
    assert result.stores > 0, result.line()
    # The moves workload's reads were served from the cache, pinned and unpinned: a
    # stale entry could have been caught (how often each shape hits depends on the
    # machine's speed: a slower one writes more between two reads).
    for shapes in (MoveReader.PINNED, MoveReader.UNPINNED):
        assert sum(result.served_shapes.get(s, 0) for s in shapes) >= 20, result.served_shapes


def test_negative_control_a_never_invalidated_cache_is_caught():
    result = _check("broken", seconds=2.0, broken=True)

    assert result.writes > 0, result.line()
    assert result.hits > 0, result.line()
    assert result.stale > 0, f"the checker missed a cache nothing invalidates: {result.line()}"


def test_negative_control_writers_that_forget_pinned_stamps_are_caught():
    result = _check("pins dropped", seconds=2.0, workloads=("moves",), drop_tags=PIN_TAGS)

    assert result.left_out.get("pin", 0) > 0, result.left_out
    assert result.left_out.get("pinned", 0) > 0, result.left_out
    assert result.stale > 0, (
        f"the checker missed writers that replace no pinned stamp: {result.line()}")
    # The unpinned reads of the same rows depend on other stamps: still fresh.
    assert set(result.stale_shapes) <= set(MoveReader.PINNED), result.stale_shapes


def test_negative_control_writers_that_forget_the_set_a_row_leaves_are_caught():
    """Only the compare-and-set moves name the old publisher in their WHERE; only the
    reads pinned on the publisher can see what they keep."""
    result = _check("old sets kept", seconds=2.5, workloads=("moves",),
                    ops=["op_shared_cas"], shapes=list(BY_PUBLISHER),
                    writer_hook=Build(f"{__name__}:forget_the_sets_rows_leave"))

    assert result.ops.get("op_shared_cas", 0) > 0, result.ops
    assert result.stale > 0, (
        f"the checker missed writers that keep the set a row leaves: {result.line()}")
