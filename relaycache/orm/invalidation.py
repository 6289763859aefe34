"""Automatic invalidation: every SQL write on every connection replaces its tables' stamps.

One database-level hook (an ``execute_wrapper`` on every connection) sees all writes:
``save()``, ``update()``, ``bulk_*``, m2m changes, cascades, raw SQL, ``flush``,
``loaddata`` and migrations alike, from cached querysets or not. In autocommit the
write is committed when the statement returns, so its tables are invalidated at once;
inside ``atomic`` they are marked dirty (this connection's reads of them bypass the
cache) and invalidated by ``transaction.on_commit``, before the block returns.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from django.db import connections, transaction
from django.db.backends.signals import connection_created

from ..backends.base import BaseCache
from ..core.defaults import get_default_backend
from .sqlwrites import ALL_TABLES, snapshot_isolation, written_tables

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

DATABASE_NAMESPACES: dict[str, str] = {}
"""Database alias -> invalidation namespace; aliases that share data (a primary and its
replicas) map to one name, so a write through one invalidates reads through the other."""

_extra_backends: weakref.WeakSet[BaseCache] = weakref.WeakSet()
_lock = threading.Lock()


def namespace(using: str) -> str:
    return DATABASE_NAMESPACES.get(using, using)


def table_tag(table: str, using: str = "default") -> str:
    """The tag every cached query reading ``table`` through ``using`` carries."""
    return f"table:{namespace(using)}:{table.lower()}"


def database_tag(using: str = "default") -> str:
    """Carried by every cached query of the database: invalidating it drops them all."""
    return f"db:{namespace(using)}"


def register_backend(backend: BaseCache) -> None:
    """Make writes invalidate ``backend`` too (done for every ``cached(backend=...)``)."""
    with _lock:
        _extra_backends.add(backend)


def orm_backends() -> list[BaseCache]:
    default = get_default_backend()
    with _lock:
        extra = [b for b in _extra_backends if b is not default]
    return [default, *extra]


def write_tags(tables: Iterable[str], using: str) -> list[str]:
    if frozenset(tables) >= ALL_TABLES:
        return [database_tag(using)]
    return [table_tag(t, using) for t in tables]


def invalidate_tables(tables: Iterable[str], using: str = "default") -> None:
    """Invalidate cached queries reading ``tables`` (``{"*"}``: the whole database)."""
    tags = write_tags(tables, using)
    for backend in orm_backends():
        backend.invalidate(tags)


# -- transactions ------------------------------------------------------------------

class _InvalidateOnCommit:
    """The ``on_commit`` callback that invalidates tables a transaction wrote."""

    __slots__ = ("tables", "using")

    def __init__(self, tables: frozenset[str], using: str) -> None:
        self.tables = tables
        self.using = using

    def __call__(self) -> None:
        invalidate_tables(self.tables, self.using)


class _SnapshotTransaction:
    """A no-op ``on_commit`` marker: this transaction's reads are snapshots."""

    __slots__ = ()

    def __call__(self) -> None:
        return None


_snapshot_sessions: weakref.WeakSet[BaseDatabaseWrapper] = weakref.WeakSet()


def _registered(connection: BaseDatabaseWrapper
                ) -> list[tuple[set[str], _InvalidateOnCommit]]:
    """Our callbacks still pending on this connection, with their savepoint ids.

    Django lists ``on_commit`` callbacks only in ``connection.run_on_commit`` (entries
    ``(savepoint ids, func, robust)``); it empties the list when a transaction ends and
    drops the entries of a rolled-back savepoint, which is exactly the lifetime of "this
    transaction wrote these tables". Reading it here, and only here, keeps no state of
    our own that could outlive a transaction.
    """
    return [(entry[0], entry[1]) for entry in connection.run_on_commit
            if isinstance(entry[1], _InvalidateOnCommit)]


def dirty_tables(connection: BaseDatabaseWrapper) -> set[str]:
    """Tables written by this connection's open transaction (empty outside one)."""
    if not connection.in_atomic_block:
        return set()
    return set().union(*(callback.tables for _, callback in _registered(connection)))


def record_write(connection: BaseDatabaseWrapper, tables: frozenset[str]) -> None:
    using = connection.alias
    if not connection.in_atomic_block:
        invalidate_tables(tables, using)
        return
    # A callback registered at this savepoint level or an enclosing one already
    # covers the write: it survives every rollback that would not undo the write too.
    active = set(connection.savepoint_ids)
    for savepoints, callback in _registered(connection):
        if callback.tables >= tables and savepoints <= active:
            return
    transaction.on_commit(_InvalidateOnCommit(tables, using), using=using)


def record_isolation(connection: BaseDatabaseWrapper, scope: str) -> None:
    """Note raw SQL asking for snapshot reads (REPEATABLE READ or SERIALIZABLE)."""
    if scope == "session":
        _snapshot_sessions.add(connection)
    elif connection.in_atomic_block:
        transaction.on_commit(_SnapshotTransaction(), using=connection.alias)


def can_store_inside_transaction(connection: BaseDatabaseWrapper) -> bool:
    """Whether a miss read inside a transaction may be stored: only under READ
    COMMITTED, where the read saw committed data as of its own start."""
    if connection.vendor != "postgresql" or connection in _snapshot_sessions:
        return False
    if any(isinstance(entry[1], _SnapshotTransaction) for entry in connection.run_on_commit):
        return False
    from django.db.backends.postgresql.psycopg_any import IsolationLevel

    level = getattr(connection, "isolation_level", IsolationLevel.READ_COMMITTED)
    return level in (IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED)


# -- the hook ---------------------------------------------------------------------

@functools.lru_cache(maxsize=4096)
def _inspect(sql: str) -> tuple[frozenset[str], str | None]:
    return written_tables(sql), snapshot_isolation(sql)


# Django's execute_wrapper protocol: params and the result are the database adapter's.
def _on_execute(execute: Callable[[str, Any, bool, dict[str, Any]], Any], sql: str,
                params: Any, many: bool, context: dict[str, Any]) -> Any:
    try:
        return execute(sql, params, many, context)
    finally:
        tables, isolation = _inspect(sql) if isinstance(sql, str) else (ALL_TABLES, None)
        if tables:
            record_write(context["connection"], tables)
        if isolation:
            record_isolation(context["connection"], isolation)


def install(connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    """Add the write hook to ``connection`` (idempotent)."""
    if _on_execute not in connection.execute_wrappers:
        connection.execute_wrappers.append(_on_execute)


def install_everywhere() -> None:
    connection_created.connect(install, dispatch_uid="relaycache.orm.install")
    for connection in connections.all(initialized_only=True):
        install(connection)
