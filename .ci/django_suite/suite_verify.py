"""Verify mode for the Django-suite leg: every entry served is compared with the database.

``VerifyingCache`` is an ``InMemoryCache`` (chosen with ``RELAYCACHE["BACKEND"]``) whose
``get_or_set`` checks each read the ORM layer sends through it:

- a hit is read again from the database, uncached and hidden from the test (no query
  log entry, no ``execute_wrapper``), and both must be equal type for type;
- a miss that was stored is served back at once and compared with the rows the
  database returned for it, so every stored entry is read through the cache at least
  once even where the test never repeats the read.

ORM rows are compared as the database cursor gave them (captured before RelayCache
packs them), not after a round trip through RelayCache's own encoding. Counts and
mismatches are kept in :data:`COUNTS` and :data:`PROBLEMS` for ``run.py``.

``reconcile_query_counts()`` lets an ``assertNumQueries`` block pass when the queries
it ran plus the hits served in it equal the expected number: a hit runs no SQL, and
that is the only difference the leg forgives. The block itself still runs in full.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from relaycache import InMemoryCache

COUNTS: Counter[str] = Counter()
"""hits (served to the test), hits_verified, misses, stored_read_back, not_stored,
verify_skipped, count_reconciled."""
PROBLEMS: list[dict[str, str]] = []
"""Mismatches and failed verification reads, each with the test it happened in."""
HITS_BY_TEST: Counter[str] = Counter()
CURRENT_TEST = ["(no test)"]

_lock = threading.Lock()
_local = threading.local()
_EXACT_REPR = (Decimal, datetime, date, time, timedelta, UUID)


def same(a: Any, b: Any) -> bool:
    """Equal value and exactly equal type, all the way down (``Decimal("1.0")`` is
    not ``Decimal("1.00")``; a datetime's tzinfo must match too)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, memoryview):
        return a.format == b.format and a.tobytes() == b.tobytes()
    if isinstance(a, float):
        return repr(a) == repr(b)
    if isinstance(a, _EXACT_REPR):
        return bool(a == b) and repr(a) == repr(b)
    return bool(a == b)


def _rows(value: Any) -> list[tuple[Any, ...]]:
    """The rows of a packed ORM entry, decoded as the compiler decodes them (on a copy:
    the compiler decodes the original in place afterwards)."""
    from relaycache.orm.rows import unpack_rows

    codes, rows = value
    return unpack_rows([codes, [list(row) for row in rows]])


def capture_database_rows() -> None:
    """Keep a copy of the rows each ORM miss read from the database, before packing."""
    from relaycache.orm import compiler

    pack = compiler.pack_rows

    def capturing(rows: list[list[Any]]) -> list[Any]:
        _local.rows = [tuple(row) for row in rows]
        return pack(rows)

    compiler.pack_rows = capturing


@contextlib.contextmanager
def _hidden() -> Iterator[None]:
    """Queries run inside are not logged (``assertNumQueries``, ``connection.queries``)
    and pass no ``execute_wrapper`` of the test."""
    from django.db import connections

    saved = []
    for conn in connections.all():
        saved.append((conn, conn.force_debug_cursor, conn.execute_wrappers,
                      len(conn.queries_log)))
        conn.force_debug_cursor = False
        conn.execute_wrappers = []
    try:
        yield
    finally:
        for conn, force, wrappers, logged in saved:
            conn.force_debug_cursor, conn.execute_wrappers = force, wrappers
            while len(conn.queries_log) > logged:
                conn.queries_log.pop()


def _broken_transaction() -> bool:
    from django.db import connections

    return any(conn.needs_rollback for conn in connections.all())


def _problem(kind: str, key: str, served: Any, expected: Any) -> None:
    with _lock:
        PROBLEMS.append({"test": CURRENT_TEST[0], "kind": kind, "key": key,
                         "served": repr(served)[:600], "database": repr(expected)[:600]})


class VerifyingCache(InMemoryCache):
    """``InMemoryCache`` that checks every hit and every stored miss (module docstring)."""

    def get_or_set(self, key: str, compute: Callable[[], Any], **kwargs: Any) -> Any:
        if getattr(_local, "busy", False):
            return super().get_or_set(key, compute, **kwargs)
        computed: list[tuple[Any, Any]] = []

        def tracked() -> Any:
            _local.rows = None
            value = compute()
            computed.append((value, _local.rows))
            return value

        value = super().get_or_set(key, tracked, **kwargs)
        _local.busy = True
        try:
            if computed:
                self._read_back(key, computed[0], kwargs)
            else:
                self._check_hit(key, value, compute)
        finally:
            _local.busy = False
        return value

    def _read_back(self, key: str, computed: tuple[Any, Any], kwargs: dict[str, Any]) -> None:
        """Serve a stored miss back from the cache and compare it with what was read."""
        value, rows = computed
        with _lock:
            COUNTS["misses"] += 1
        if not kwargs.get("store", True):
            return
        again: list[bool] = []

        def not_stored() -> Any:
            again.append(True)
            return value

        served = super().get_or_set(key, not_stored, **{**kwargs, "store": False})
        if again:
            with _lock:
                COUNTS["not_stored"] += 1
            return
        if rows is not None:
            served, value = _rows(served), rows
        with _lock:
            COUNTS["stored_read_back"] += 1
        if not same(served, value):
            _problem("stored entry differs from the rows it was stored from", key,
                     served, value)

    def _check_hit(self, key: str, value: Any, compute: Callable[[], Any]) -> None:
        """Read a hit again from the database, hidden from the test, and compare."""
        with _lock:
            COUNTS["hits"] += 1
            HITS_BY_TEST[CURRENT_TEST[0]] += 1
        if _broken_transaction():
            with _lock:
                COUNTS["verify_skipped"] += 1
            return
        _local.rows = None
        try:
            with _hidden():
                fresh = compute()
        except Exception as exc:  # reported, never raised into the test
            _problem("the verification read failed", key, value, exc)
            return
        if _local.rows is not None:
            value, fresh = _rows(value), _local.rows
        with _lock:
            COUNTS["hits_verified"] += 1
        if not same(value, fresh):
            _problem("hit differs from the database", key, value, fresh)


def hits_served() -> int:
    with _lock:
        return COUNTS["hits"]


def reconcile_query_counts() -> None:
    """``assertNumQueries(n)`` passes when queries run + hits served in the block == n."""
    from django.test.testcases import _AssertNumQueriesContext
    from django.test.utils import CaptureQueriesContext

    enter, exit_ = _AssertNumQueriesContext.__enter__, _AssertNumQueriesContext.__exit__

    def __enter__(self: Any) -> Any:
        self.relaycache_hits = hits_served()
        return enter(self)

    def __exit__(self: Any, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        hits = hits_served() - self.relaycache_hits
        if exc_type is None and hits and len(self) != self.num and len(self) + hits == self.num:
            CaptureQueriesContext.__exit__(self, exc_type, exc_value, traceback)
            with _lock:
                COUNTS["count_reconciled"] += 1
            return
        exit_(self, exc_type, exc_value, traceback)

    _AssertNumQueriesContext.__enter__ = __enter__
    _AssertNumQueriesContext.__exit__ = __exit__
