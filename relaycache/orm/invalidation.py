"""Automatic invalidation: every SQL write on every connection replaces its tables' stamps.

One database-level hook (an ``execute_wrapper`` on every connection) sees all writes:
``save()``, ``update()``, ``bulk_*``, m2m changes, cascades, raw SQL, ``flush``,
``loaddata`` and migrations alike, from cached querysets or not. In autocommit the
write is committed when the statement returns, so its tables are invalidated at once;
inside a transaction (``atomic``, or autocommit off) they are marked dirty (this
connection's reads of them bypass the cache) and invalidated right after the COMMIT,
ahead of the application's ``on_commit`` callbacks (:mod:`.patches`). An explicit
invalidation made inside a transaction is made again after its COMMIT, and reads and
writes of PostgreSQL views carry the tables the views read (docs/consistency.md).
"""

from __future__ import annotations

import contextvars
import functools
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.core.signals import setting_changed
from django.db import Error, connections
from django.db.backends.signals import connection_created
from django.db.models.signals import class_prepared, post_migrate

from ..backends.base import BaseCache
from ..core import events
from ..core.defaults import get_default_backend
from . import patches
from .scope import track_statement
from .sqlwrites import (
    ALL_TABLES,
    changes_views,
    snapshot_isolation,
    table_name,
    written_tables,
)

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

DATABASE_NAMESPACES: dict[str, str] = {}
"""Database alias -> invalidation namespace; aliases that share data (a primary and its
replicas) map to one name, so a write through one invalidates reads through the other."""

_extra_backends: weakref.WeakSet[BaseCache] = weakref.WeakSet()
_lock = threading.Lock()


def namespace(using: str) -> str:
    """The invalidation namespace of a database alias: the alias, or the name
    ``DATABASE_NAMESPACES`` maps it to.

    Tags are deliberately coarser than keys: a key also holds the identity of the
    database and the connection's session state (``plan.read_scope``), tags do not, so
    that every process writing the data meets every reader of it, however it spells
    the database's address or sets its search_path (docs/consistency.md).
    """
    return DATABASE_NAMESPACES.get(using, using)


def table_tag(table: str, using: str = "default") -> str:
    """The tag every cached query reading ``table`` through ``using`` carries.

    ``table`` is named as in ``db_table`` or in SQL, schema-qualified or not: the tag
    knows it by :func:`~.sqlwrites.table_name`, as reads and writes do.
    """
    return f"table:{namespace(using)}:{table_name(table)}"


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


def is_replica(using: str) -> bool:
    """Whether ``using`` reads a copy of another database: ``DATABASE_NAMESPACES`` maps
    it to another alias of ``DATABASES`` (``{"replica": "default"}``). A copy may lag
    behind writes that were committed and invalidated, so nothing read through it is
    stored (docs/consistency.md, "Replicas")."""
    target = DATABASE_NAMESPACES.get(using)
    return target is not None and target != using and target in connections.settings


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

_own: contextvars.ContextVar[bool] = contextvars.ContextVar("relaycache_own_invalidation",
                                                            default=False)
"""Set while RelayCache makes an invalidation of its own (a write's, or a repeat after a
COMMIT): the invalidation hook repeats only those asked for by the application."""


def _invalidate_own(backends: Iterable[BaseCache], tags: list[str]) -> None:
    token = _own.set(True)
    try:
        for backend in backends:
            backend.invalidate(tags)
    finally:
        _own.reset(token)


def in_transaction(connection: BaseDatabaseWrapper) -> bool:
    """Whether statements on ``connection`` run in a transaction that has not committed
    yet: inside ``atomic``, or with autocommit off. Only an open connection can be in
    one (and asking Django for the autocommit of a closed one would open it)."""
    return connection.in_atomic_block or (
        connection.connection is not None and not connection.autocommit)


class _InvalidateOnCommit(patches.AfterCommit):
    """Invalidates the tables a transaction wrote, right after its COMMIT."""

    __slots__ = ("tables", "using")

    def __init__(self, tables: frozenset[str], using: str) -> None:
        self.tables = tables
        self.using = using

    def __call__(self) -> None:
        _invalidate_own(orm_backends(), write_tags(self.tables, self.using))

    def covers(self, other: patches.AfterCommit) -> bool:
        return isinstance(other, _InvalidateOnCommit) and self.tables >= other.tables


class _InvalidateAgain(patches.AfterCommit):
    """Makes an invalidation the application asked for inside a transaction again,
    right after its COMMIT: a reader may have cached the old, still committed data
    under the new stamps meanwhile."""

    __slots__ = ("backend", "tags")

    def __init__(self, backend: BaseCache, tags: frozenset[str]) -> None:
        self.backend = backend
        self.tags = tags

    def __call__(self) -> None:
        _invalidate_own([self.backend], sorted(self.tags))

    def covers(self, other: patches.AfterCommit) -> bool:
        return (isinstance(other, _InvalidateAgain) and other.backend is self.backend
                and self.tags >= other.tags)


class _SnapshotTransaction(patches.AfterCommit):
    """A no-op marker: this transaction's reads are snapshots."""

    __slots__ = ()

    def __call__(self) -> None:
        return None

    def covers(self, other: patches.AfterCommit) -> bool:
        return isinstance(other, _SnapshotTransaction)


_Callback = _InvalidateOnCommit | _InvalidateAgain | _SnapshotTransaction

_snapshot_sessions: weakref.WeakSet[BaseDatabaseWrapper] = weakref.WeakSet()


def _schedule_once(connection: BaseDatabaseWrapper, callback: _Callback) -> None:
    """Run ``callback`` after the COMMIT, unless one registered at this savepoint level
    or an enclosing one covers it: that one survives every rollback that would not undo
    what ``callback`` is for too."""
    active = set(connection.savepoint_ids)
    for savepoints, pending in patches.pending(connection):
        if savepoints <= active and isinstance(pending, _Callback) and pending.covers(callback):
            return
    patches.schedule(connection, callback)


def dirty_tables(connection: BaseDatabaseWrapper) -> set[str]:
    """Tables written by this connection's open transaction (empty outside one)."""
    if not in_transaction(connection):
        return set()
    return set().union(*(callback.tables for _, callback in patches.pending(connection)
                         if isinstance(callback, _InvalidateOnCommit)))


def record_write(connection: BaseDatabaseWrapper, tables: frozenset[str]) -> None:
    """Invalidate what a statement wrote: at once in autocommit, right after the COMMIT
    in a transaction. A write through a view writes the tables the view reads."""
    using = connection.alias
    if not tables >= ALL_TABLES:
        try:
            tables = tables | view_bases(connection, tables)
        except Error:  # the catalog cannot be read now: assume the worst
            tables = ALL_TABLES
    if not in_transaction(connection):
        _invalidate_own(orm_backends(), write_tags(tables, using))
        return
    if not connection.in_atomic_block:
        # Autocommit off: also at once, which bounds the harm of a COMMIT RelayCache
        # does not see (raw SQL, the driver's own commit(); docs/limits.md).
        _invalidate_own(orm_backends(), write_tags(tables, using))
    _schedule_once(connection, _InvalidateOnCommit(tables, using))


def record_isolation(connection: BaseDatabaseWrapper, scope: str) -> None:
    """Note raw SQL asking for snapshot reads (REPEATABLE READ or SERIALIZABLE)."""
    if scope == "session":
        _snapshot_sessions.add(connection)
    elif connection.in_atomic_block:
        _schedule_once(connection, _SnapshotTransaction())


def _repeat_after_commit(backend: BaseCache, tags: list[str]) -> None:
    """The invalidation hook (:data:`relaycache.core.events.invalidation_hooks`): an
    invalidation the application asked for while a connection of this thread is in a
    transaction is made again right after that connection's COMMIT. Which database it
    is about is unknown, so every such connection repeats it."""
    if _own.get():
        return
    for connection in connections.all(initialized_only=True):
        if in_transaction(connection):
            _schedule_once(connection, _InvalidateAgain(backend, frozenset(tags)))


def can_store_inside_transaction(connection: BaseDatabaseWrapper) -> bool:
    """Whether a miss read inside a transaction may be stored: only under READ
    COMMITTED, where the read saw committed data as of its own start."""
    if connection.vendor != "postgresql" or connection in _snapshot_sessions:
        return False
    if any(isinstance(callback, _SnapshotTransaction)
           for _, callback in patches.pending(connection)):
        return False
    from django.db.backends.postgresql.psycopg_any import IsolationLevel

    level = getattr(connection, "isolation_level", IsolationLevel.READ_COMMITTED)
    return level in (IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED)


# -- views (PostgreSQL) --------------------------------------------------------------

# Every relation named in the list (in any user schema) with, for a view, each table,
# materialized view or foreign table it reads, through views of views: a view's query
# is a rewrite rule, whose dependencies on relations pg_depend records.
_VIEW_BASES_SQL = """
WITH RECURSIVE base(root, rel) AS (
    SELECT c.oid, c.oid
    FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
    WHERE lower(c.relname) = ANY(%s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  UNION
    SELECT base.root, d.refobjid
    FROM base
    JOIN pg_class AS v ON v.oid = base.rel AND v.relkind = 'v'
    JOIN pg_rewrite AS r ON r.ev_class = v.oid
    JOIN pg_depend AS d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
        AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> v.oid
)
SELECT lower(root.relname), lower(rel.relname), base.rel = base.root, rel.relkind
FROM base
JOIN pg_class AS root ON root.oid = base.root
JOIN pg_class AS rel ON rel.oid = base.rel
"""
_BASE_KINDS = frozenset({"r", "p", "m", "f"})

_model_tables: frozenset[str] | None = None
_relation_bases: dict[tuple[str, str], frozenset[str]] = {}
_bases_of: dict[tuple[str, frozenset[str]], frozenset[str]] = {}


def _managed_tables() -> frozenset[str]:
    """Tables of managed models (many-to-many ones included): tables, not views, so
    they need no look-up."""
    global _model_tables
    if _model_tables is None:
        _model_tables = frozenset(
            table_name(model._meta.db_table)
            for model in apps.get_models(include_auto_created=True)
            if model._meta.managed and not model._meta.proxy)
    return _model_tables


def forget_views(setting: str = "DATABASES", **kwargs: Any) -> None:
    """Forget what is known of views: after DDL on a view, ``migrate``, a new model
    or new ``DATABASES`` (a signal receiver)."""
    global _model_tables
    if setting != "DATABASES":
        return
    _model_tables = None
    _relation_bases.clear()
    _bases_of.clear()


def view_bases(connection: BaseDatabaseWrapper, relations: frozenset[str]) -> frozenset[str]:
    """The tables (and materialized views) the views among ``relations`` read.

    Empty on other databases than PostgreSQL (docs/limits.md) and for managed models'
    tables; other relations are looked up in the catalog once per process, in one query,
    then remembered: this costs a read of an unmanaged model one query the first time.
    Raises ``django.db.Error`` when the catalog cannot be read.
    """
    key = (connection.alias, relations)
    found = _bases_of.get(key)
    if found is not None:
        return found
    if connection.vendor != "postgresql" or "*" in relations:
        found = frozenset()
    else:
        unknown = relations - _managed_tables()
        missing = [name for name in unknown if (connection.alias, name) not in _relation_bases]
        if missing and not _look_up(connection, missing):
            # A relation that does not exist (yet): look again next time.
            return _union(connection.alias, unknown)
        found = _union(connection.alias, unknown)
    _bases_of[key] = found
    return found


def _union(alias: str, relations: frozenset[str]) -> frozenset[str]:
    return frozenset().union(*(_relation_bases.get((alias, name), frozenset())
                               for name in relations))


def _look_up(connection: BaseDatabaseWrapper, names: list[str]) -> bool:
    """Remember the base tables of ``names``; whether every one of them exists. Runs in
    a savepoint inside a transaction, so that a failure leaves the transaction usable."""
    savepoint = connection.savepoint() if in_transaction(connection) else None
    try:
        with connection.cursor() as cursor:
            cursor.execute(_VIEW_BASES_SQL, [sorted(names)])
            rows = cursor.fetchall()
    except Error:
        if savepoint is not None:
            connection.savepoint_rollback(savepoint)
        raise
    if savepoint is not None:
        connection.savepoint_commit(savepoint)
    existing: set[str] = set()
    bases: dict[str, set[str]] = {}
    for root, relation, is_root, kind in rows:
        if is_root:
            existing.add(root)
        elif kind in _BASE_KINDS:
            bases.setdefault(root, set()).add(relation)
    for name in existing:
        _relation_bases[(connection.alias, name)] = frozenset(bases.get(name, ()))
    return existing >= set(names)


# -- the hook ---------------------------------------------------------------------

@functools.lru_cache(maxsize=4096)
def _inspect(sql: str) -> tuple[frozenset[str], str | None, bool]:
    return written_tables(sql), snapshot_isolation(sql), changes_views(sql)


# Django's execute_wrapper protocol: params and the result are the database adapter's.
def _on_execute(execute: Callable[[str, Any, bool, dict[str, Any]], Any], sql: str,
                params: Any, many: bool, context: dict[str, Any]) -> Any:
    try:
        return execute(sql, params, many, context)
    finally:
        track_statement(context["connection"], sql, params, many)
        tables, isolation, views = (_inspect(sql) if isinstance(sql, str)
                                    else (ALL_TABLES, None, True))
        if views:
            forget_views()
        if tables:
            record_write(context["connection"], tables)
        if isolation:
            record_isolation(context["connection"], isolation)


def install(connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    """Add the write hook to ``connection`` (idempotent)."""
    if _on_execute not in connection.execute_wrappers:
        connection.execute_wrappers.append(_on_execute)


def _on_callproc(connection: BaseDatabaseWrapper) -> None:
    """A procedure may write anything: the whole database is written."""
    record_write(connection, ALL_TABLES)


def install_everywhere() -> None:
    """All of the ORM layer's wiring (from ``AppConfig.ready()``)."""
    connection_created.connect(install, dispatch_uid="relaycache.orm.install")
    for connection in connections.all(initialized_only=True):
        install(connection)
    patches.install(on_callproc=_on_callproc)
    events.add_invalidation_hook(_repeat_after_commit)
    for signal in (class_prepared, post_migrate, setting_changed):
        signal.connect(forget_views, dispatch_uid="relaycache.orm.forget_views")
