"""Automatic invalidation: every SQL write on every connection replaces the stamps of
the rows, key values and columns it names (:mod:`.pins`), or of its whole tables.

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
from . import patches, pins
from .scope import track_statement
from .sqlwrites import (
    ALL_TABLES,
    changes_views,
    row_write,
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
    """The tag every write to ``table`` through ``using`` replaces: give it to a cached
    function, view or template fragment that reads the table.

    (Cached ORM queries depend on finer tags, which writes replace too: docs/consistency.md,
    "Granular invalidation".) ``table`` is named as in ``db_table`` or in SQL,
    schema-qualified or not: the tag knows it by :func:`~.sqlwrites.table_name`, as reads
    and writes do.
    """
    return pins.table_tag(namespace(using), table_name(table))


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
    """The tags a write to every row of ``tables`` replaces."""
    if frozenset(tables) >= ALL_TABLES:
        return [database_tag(using)]
    ns = namespace(using)
    return [tag for t in tables for tag in (pins.table_tag(ns, table_name(t)),
                                            pins.all_tag(ns, table_name(t)))]


def invalidate_tables(tables: Iterable[str], using: str = "default") -> None:
    """Invalidate cached queries reading ``tables`` (``{"*"}``: the whole database), and
    what was tagged with their :func:`table_tag`.

    Raises ``TypeError`` for a bare string (one table is ``["shop_book"]``) or a model
    class (use ``invalidate_model``), ``ValueError`` for an empty name or an alias that
    is not in ``DATABASES``.
    """
    if isinstance(tables, (str, bytes)):
        raise TypeError(f"invalidate_tables() takes a list of table names, not one string: "
                        f"write invalidate_tables([{tables!r}])")
    names = list(tables)
    for name in names:
        if isinstance(name, type):
            raise TypeError(f"invalidate_tables() takes table names; for the model {name!r} "
                            f"use invalidate_model({name.__name__})")
        if not isinstance(name, str) or not name.strip():
            raise TypeError(f"invalidate_tables() takes table names (strings), got {name!r}")
    if using not in connections.settings:
        raise ValueError(f"invalidate_tables(using={using!r}): no such database alias; "
                         f"DATABASES has {sorted(connections.settings)}")
    tags = write_tags(names, using)
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
    """Invalidates what a transaction wrote, right after its COMMIT; ``tables`` are the
    tables written (which its own reads bypass until then), ``tags`` what to replace."""

    __slots__ = ("tables", "tags")

    def __init__(self, tables: frozenset[str], tags: frozenset[str]) -> None:
        self.tables = set(tables)
        self.tags = set(tags)

    def merge(self, other: _InvalidateOnCommit) -> None:
        self.tables |= other.tables
        self.tags |= other.tags

    def __call__(self) -> None:
        _invalidate_own(orm_backends(), sorted(self.tags))

    def covers(self, other: patches.AfterCommit) -> bool:
        return (isinstance(other, _InvalidateOnCommit) and self.tables >= other.tables
                and self.tags >= other.tags)


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


class _Baseline(patches.AfterCommit):
    """Marks the transaction as counted as committed in the atomic block it was
    registered in (:func:`set_baseline`); holds the tables it wrote and the tags those
    writes replaced, which its rollback changes back (:func:`end_baseline`)."""

    __slots__ = ("tables", "tags")

    def __init__(self, tables: set[str], tags: set[str]) -> None:
        self.tables = tables
        self.tags = tags

    def __call__(self) -> None:
        return None


_Callback = _InvalidateOnCommit | _InvalidateAgain | _SnapshotTransaction

_snapshot_sessions: weakref.WeakSet[BaseDatabaseWrapper] = weakref.WeakSet()


def _schedule_once(connection: BaseDatabaseWrapper, callback: _Callback) -> None:
    """Run ``callback`` after the COMMIT, unless one registered at this savepoint level
    or an enclosing one covers it: that one survives every rollback that would not undo
    what ``callback`` is for too. Invalidations at one savepoint level share one
    callback, whose fate under rollbacks is theirs."""
    active = set(connection.savepoint_ids)
    for savepoints, pending in patches.pending(connection):
        if savepoints <= active and isinstance(pending, _Callback) and pending.covers(callback):
            return
    if isinstance(callback, _InvalidateOnCommit):
        for savepoints, pending in patches.pending(connection):
            if savepoints == active and isinstance(pending, _InvalidateOnCommit):
                pending.merge(callback)
                return
    patches.schedule(connection, callback)


def dirty_tables(connection: BaseDatabaseWrapper) -> set[str]:
    """Tables written by this connection's open transaction (empty outside one)."""
    if not in_transaction(connection):
        return set()
    return set().union(*(callback.tables for _, callback in patches.pending(connection)
                         if isinstance(callback, _InvalidateOnCommit)))


def set_baseline(connection: BaseDatabaseWrapper) -> None:
    """Tests only (:mod:`relaycache.testing`): let ``connection``'s open transaction,
    which will be rolled back, count as committed for the cache, the atomic block open
    now as if it ran in autocommit. What it wrote so far is invalidated now and no
    longer bypasses the cache; writes made directly in that block are invalidated when
    their statement runs; misses read anywhere in the transaction are stored. Writes in
    atomic blocks opened inside it bypass as usual until the transaction ends.

    Sound while no other connection writes the tables its reads cache, as in one test's
    transaction, and if :func:`end_baseline` is called before the rollback.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("set_baseline() needs a connection inside atomic")
    tables: set[str] = set()
    tags: set[str] = set()
    kept = []
    for entry in connection.run_on_commit:
        if isinstance(entry[1], _InvalidateOnCommit):
            tables |= entry[1].tables
            tags |= entry[1].tags
        else:
            kept.append(entry)
    connection.run_on_commit = kept
    patches.schedule(connection, _Baseline(tables, tags))
    _invalidate_own(orm_backends(), sorted(tags))


def end_baseline(connection: BaseDatabaseWrapper) -> None:
    """End :func:`set_baseline` before the transaction rolls back: what its writes
    replaced is invalidated again now (the rollback writes those rows back), and reads
    of the tables it wrote bypass the cache until it ends."""
    baseline = _baseline(connection)
    if baseline is None:
        return
    connection.run_on_commit = [entry for entry in connection.run_on_commit
                                if entry[1] is not baseline]
    if baseline.tables:
        _schedule_once(connection, _InvalidateOnCommit(frozenset(baseline.tables),
                                                       frozenset(baseline.tags)))
        _invalidate_own(orm_backends(), sorted(baseline.tags))


def _baseline(connection: BaseDatabaseWrapper, here: bool = False) -> _Baseline | None:
    """The open transaction's :func:`set_baseline` marker (``here``: only if
    statements run directly in its block). The marker leaves with the transaction, or
    with the savepoint it was set in if that rolls back. ``atomic(savepoint=False)``
    blocks (``None`` ids; Django's own ``delete()`` opens one) share their enclosing
    block's fate, so they do not count."""
    if not connection.in_atomic_block:
        return None
    for savepoints, callback in patches.pending(connection):
        if isinstance(callback, _Baseline):
            if here and {sid for sid in savepoints if sid is not None} != {
                    sid for sid in connection.savepoint_ids if sid is not None}:
                return None
            return callback
    return None


def has_baseline(connection: BaseDatabaseWrapper) -> bool:
    """Whether the open transaction counts as committed (:func:`set_baseline`)."""
    return _baseline(connection) is not None


def record_write(connection: BaseDatabaseWrapper, tables: frozenset[str],
                 row_tags: list[str] | None = None) -> None:
    """Invalidate what a statement wrote: at once in autocommit, right after the COMMIT
    in a transaction. ``row_tags``: the finer tags the statement's rows replace
    (:mod:`.pins`), else its tables'. A write through a view writes the tables the view
    reads, as a whole."""
    using = connection.alias
    if not tables >= ALL_TABLES:
        try:
            bases = view_bases(connection, tables)
        except Error:  # the catalog cannot be read now: assume the worst
            tables, bases = ALL_TABLES, frozenset()
        if bases:
            tables, row_tags = tables | bases, None
    tags = write_tags(tables, using) if row_tags is None else row_tags
    if not in_transaction(connection):
        _invalidate_own(orm_backends(), tags)
        return
    baseline = _baseline(connection, here=True)
    if baseline is not None:
        baseline.tables |= tables
        baseline.tags.update(tags)
        _invalidate_own(orm_backends(), tags)
        return
    if not connection.in_atomic_block:
        # Autocommit off: also at once, which bounds the harm of a COMMIT RelayCache
        # does not see (raw SQL, the driver's own commit(); docs/limits.md).
        _invalidate_own(orm_backends(), tags)
    _schedule_once(connection, _InvalidateOnCommit(tables, frozenset(tags)))


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
    pins.forget()
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


_RETURNING_VENDORS = frozenset({"postgresql", "sqlite"})


def _keys_to_return(connection: BaseDatabaseWrapper, sql: Any, many: bool) -> list[str]:
    """Key columns an UPDATE or DELETE should return: their values in the rows it
    touches, which its statement does not say (``instance.delete()``'s foreign keys,
    ``save(update_fields=...)``'s). Read atomically with the write, they spare
    invalidating every value of those keys."""
    if many or not isinstance(sql, str) or connection.vendor not in _RETURNING_VENDORS:
        return []
    write = row_write(sql)
    if write is None or not connection.features.can_return_columns_from_insert:
        return []
    return pins.unstated_keys(write)


def _row_tags(sql: str, params: Any, context: dict[str, Any],
              returned: dict[str, list[Any]] | None) -> list[str] | None:
    """The finer tags a statement that ran replaces, if its SQL names its rows."""
    write = row_write(sql)
    if write is None:
        return None
    rowcount = getattr(context["cursor"], "rowcount", -1)
    return pins.write_tags(write, params, rowcount if isinstance(rowcount, int) else -1,
                           namespace(context["connection"].alias), returned)


# Django's execute_wrapper protocol: params and the result are the database adapter's.
def _on_execute(execute: Callable[[str, Any, bool, dict[str, Any]], Any], sql: str,
                params: Any, many: bool, context: dict[str, Any]) -> Any:
    connection = context["connection"]
    keys = _keys_to_return(connection, sql, many)
    returned: dict[str, list[Any]] | None = None
    ran = False
    try:
        if not keys:
            result = execute(sql, params, many, context)
        else:
            quote = connection.ops.quote_name
            result = execute(f"{sql} RETURNING {', '.join(map(quote, keys))}", params, many,
                             context)
            rows = context["cursor"].fetchall()  # the row count is final once fetched
            returned = {key: [row[i] for row in rows] for i, key in enumerate(keys)}
        ran = True
        return result
    finally:
        track_statement(connection, sql, params, many)
        tables, isolation, views = (_inspect(sql) if isinstance(sql, str)
                                    else (ALL_TABLES, None, True))
        if views:
            forget_views()
        if tables:
            row_tags = (_row_tags(sql, params, context, returned) if ran and not many
                        and len(tables) == 1 and not tables >= ALL_TABLES else None)
            if row_tags != []:  # [] : it changed no row
                record_write(connection, tables, row_tags)
        if isolation:
            record_isolation(connection, isolation)


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
