"""Row caching at the SQL compiler: Django builds results from cached rows itself.

A cached query's compiler compiles once, derives the entry key from the SQL and its
parameters and the tags from the tables it reads, and serves the database rows from
the cache. Everything after the rows (converters, ``from_db_value``, model
construction, ``select_related`` objects, ``values``/``values_list`` shapes) is
Django's own code, so cached results are exactly the uncached ones.
"""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db.models.sql.constants import GET_ITERATOR_CHUNK_SIZE, MULTI, SINGLE
from django.db.models.sql.query import Query

from .. import events
from ..backends.base import BaseCache
from ..codec import to_json
from ..config import get_default_backend
from ..keys import digest
from . import memo
from .invalidation import (
    can_store_inside_transaction,
    database_tag,
    dirty_tables,
    namespace,
    table_tag,
)
from .rows import ROWS_FORMAT, pack_rows, unpack_rows
from .tables import Uncacheable, query_tables

logger = logging.getLogger("relaycache.orm")

computing: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "relaycache_orm_computing", default=False)
"""True while a cached result is computed, so its inner queries are not cached twice."""

_PREFETCH_EXTRA_PREFIX = "_prefetch_related_val_"


@dataclass(frozen=True)
class CacheOptions:
    """What ``.cached(...)`` was given; :data:`DISABLED` records ``.nocache()``."""

    ttl: float | None = None
    tags: tuple[str, ...] = ()
    key: str | None = None
    backend: BaseCache | None = None
    singleflight: bool = False
    enabled: bool = True

    @property
    def cache(self) -> BaseCache:
        return self.backend or get_default_backend()


DISABLED = CacheOptions(enabled=False)


def active_options(query: Query) -> CacheOptions | None:
    """The options a query is cached with, or ``None`` if it is not."""
    options = getattr(query, "relaycache_options", None)
    return options if options is not None and options.enabled else None


@dataclass
class ReadPlan:
    """How one compiled read goes through the cache."""

    key: str
    tags: list[str]
    store: bool


@dataclass(frozen=True)
class Analysis:
    """The part of a read's plan that follows from its SQL alone."""

    digest: str
    tables: frozenset[str]
    tags: tuple[str, ...]


def _allows_extra(query: Query) -> bool:
    """Django's own m2m prefetch adds an ``extra(select=...)`` naming a joined column."""
    return bool(query.extra) and not query.extra_tables and all(
        name.startswith(_PREFETCH_EXTRA_PREFIX) for name in query.extra)


_SCALAR_BASES = (bool, int, float, str, bytes)


def param_data(param: Any) -> Any:
    """A parameter as key data. Database adapters wrap some values (psycopg's ``Int4``
    for ``Value(1)``, ``Jsonb`` for JSON lookups); the wrapper's type is part of the key
    since it changes the SQL the database runs."""
    try:
        return to_json(param)
    except TypeError:
        kind = f"{type(param).__module__}.{type(param).__qualname__}"
        for base in _SCALAR_BASES:
            if isinstance(param, base):
                return {"~param": [kind, to_json(base(param))]}
        if hasattr(param, "obj"):
            return {"~param": [kind, to_json(param.obj)]}
        raise


def analyse(query: Query, connection: Any, sql: str, params: Any, shape: Any,
            options: CacheOptions) -> Analysis:
    """Entry digest and table tags of a compiled read; raises :class:`Uncacheable`."""
    if query.explain_info is not None:
        raise Uncacheable("explain() output is not cached")
    allow_raw = bool(options.tags) or _allows_extra(query)
    tables = frozenset(query_tables(query, allow_raw=allow_raw))
    using = connection.alias
    try:
        encoded_params = [param_data(param) for param in params]
    except TypeError as exc:
        raise Uncacheable(f"a parameter cannot be encoded: {exc}") from None
    entry_digest = digest([ROWS_FORMAT, namespace(using), sql, encoded_params, shape])
    tags = (database_tag(using), *(table_tag(t, using) for t in tables))
    return Analysis(digest=entry_digest, tables=tables, tags=tags)


def plan_for(analysis: Analysis, connection: Any, options: CacheOptions) -> ReadPlan:
    """The plan of one read now: a table written in the open transaction bypasses."""
    dirty = dirty_tables(connection)
    if dirty and ("*" in dirty or dirty & analysis.tables):
        raise Uncacheable("a table it reads was written in this transaction")
    store = connection.get_autocommit() and not connection.in_atomic_block
    store = store or can_store_inside_transaction(connection)
    return ReadPlan(key=f"{options.key or 'orm'}:{analysis.digest}",
                    tags=[*analysis.tags, *options.tags], store=store)


def plan_read(query: Query, connection: Any, sql: str, params: Any, shape: Any,
              options: CacheOptions) -> ReadPlan:
    """Key, tags and store policy for a compiled read; raises :class:`Uncacheable`."""
    return plan_for(analyse(query, connection, sql, params, shape, options), connection,
                    options)


def note_uncacheable(options: CacheOptions, reason: Uncacheable, sql: str) -> None:
    backend = options.cache
    backend.stats.incr("bypassed")
    logger.debug("relaycache: query not cached (%s): %s", reason, sql)
    if events.listeners:
        events.emit("uncacheable", backend, sql=sql, reason=str(reason))


@dataclass(frozen=True)
class CompiledRead:
    """One compile of a cached read: what a later query in the same state reuses."""

    sql: str
    select: Any
    klass_info: Any
    annotation_col_map: Any
    col_count: int
    has_extra_select: bool
    analysis: Analysis


class CachingCompilerMixin:
    """Mixed into the database backend's ``SQLCompiler`` for cached querysets."""

    query: Query
    connection: Any
    elide_empty: bool
    select: Any
    klass_info: Any
    annotation_col_map: Any
    col_count: int
    has_extra_select: bool
    _relaycache_compiled: tuple[str, Any] | None = None

    def as_sql(self, *args: Any, **kwargs: Any) -> tuple[str, Any]:
        # execute_sql() compiles again after we compiled to derive the key: reuse it.
        if not args and not kwargs and self._relaycache_compiled is not None:
            return self._relaycache_compiled
        return super().as_sql(*args, **kwargs)  # type: ignore[misc]

    def _compile_read(self, result_type: Any, options: CacheOptions) -> CompiledRead:
        """Raises ``EmptyResultSet``, or :class:`Uncacheable` (already noted)."""
        sql, params = self._relaycache_compiled = self.as_sql()
        if not sql:
            raise EmptyResultSet
        try:
            analysis = analyse(self.query, self.connection, sql, params,
                               [result_type, self.col_count], options)
        except Uncacheable as reason:
            note_uncacheable(options, reason, sql)
            raise
        return CompiledRead(sql, self.select, self.klass_info, self.annotation_col_map,
                            self.col_count, self.has_extra_select, analysis)

    def _reuse(self, read: CompiledRead) -> None:
        """Set up what Django's iterables read after ``execute_sql()``. The SQL is not
        reused: a read that reaches the database compiles its own (the remembered
        parameters could wrap objects the first caller changed since)."""
        self.select, self.klass_info = read.select, read.klass_info
        self.annotation_col_map = read.annotation_col_map
        self.col_count, self.has_extra_select = read.col_count, read.has_extra_select

    def execute_sql(self, result_type: Any = MULTI, chunked_fetch: bool = False,
                    chunk_size: int = GET_ITERATOR_CHUNK_SIZE) -> Any:
        parent = super().execute_sql  # type: ignore[misc]
        options = active_options(self.query)
        if (options is None or chunked_fetch or computing.get()
                or result_type not in (MULTI, SINGLE)):
            return parent(result_type, chunked_fetch, chunk_size)
        state = memo.fingerprint(self.query, type(self), self.connection.alias,
                                 self.elide_empty, result_type, bool(options.tags))
        try:
            read = memo.remembered(state, lambda: self._compile_read(result_type, options))
        except (EmptyResultSet, Uncacheable):
            return parent(result_type, chunked_fetch, chunk_size)
        self._reuse(read)
        try:
            plan = plan_for(read.analysis, self.connection, options)
        except Uncacheable as reason:
            note_uncacheable(options, reason, read.sql)
            return parent(result_type, chunked_fetch, chunk_size)

        ran = []

        def fetch_rows() -> Any:
            ran.append(True)
            result = parent(result_type, False, chunk_size)
            if result_type == SINGLE:
                rows = [] if result is None else [list(result)]
            else:
                rows = [list(row) for chunk in result for row in chunk]
            try:
                return pack_rows(rows)
            except TypeError:
                return [None, rows]  # not encodable: get_or_set returns it unstored

        data = options.cache.get_or_set(plan.key, fetch_rows, ttl=options.ttl, tags=plan.tags,
                                        singleflight=options.singleflight, store=plan.store,
                                        strict=False)
        if events.listeners:
            events.emit("query", options.cache, sql=read.sql, key=plan.key, tags=plan.tags,
                        hit=not ran)
        try:
            rows = unpack_rows(data)
        except (ValueError, TypeError, LookupError) as exc:
            options.cache.stats.incr("corrupt")
            logger.warning("relaycache: unreadable cached rows, querying instead: %s", exc)
            return parent(result_type, chunked_fetch, chunk_size)
        if result_type == SINGLE:
            return rows[0] if rows else None
        return [rows]
