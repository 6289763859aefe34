"""Row caching at the SQL compiler: Django builds results from cached rows itself.

A cached query's compiler compiles once, derives the entry key from the SQL and its
parameters and the tags from the tables it reads, and serves the database rows from
the cache. Everything after the rows (converters, ``from_db_value``, model
construction, ``select_related`` objects, ``values``/``values_list`` shapes) is
Django's own code, so cached results are exactly the uncached ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.core.exceptions import EmptyResultSet
from django.db.models.sql.constants import GET_ITERATOR_CHUNK_SIZE, MULTI, SINGLE

from ..core import events
from ..core.codec import DECODE_ERRORS
from . import memo
from .options import CacheOptions, active_options, computing
from .plan import Analysis, analyse, note_uncacheable, plan_for
from .rows import pack_rows, unpack_rows
from .tables import Uncacheable

if TYPE_CHECKING:
    # The mixin is only ever combined with a ``SQLCompiler`` subclass (see
    # ``queryset._caching_compiler``): type it as one, so super() calls are checked.
    from django.db.models.sql.compiler import SQLCompiler as _CompilerBase
else:
    _CompilerBase = object

logger = logging.getLogger("relaycache.orm")


@dataclass(frozen=True)
class CompiledRead:
    """One compile of a cached read: what a later query in the same state reuses."""

    sql: str
    # What Django's compiler set up for its iterables; django-stubs types these Any.
    select: Any
    klass_info: Any
    annotation_col_map: Any
    col_count: int | None
    has_extra_select: bool
    analysis: Analysis


class CachingCompilerMixin(_CompilerBase):
    """Mixed into the database backend's ``SQLCompiler`` for cached querysets."""

    elide_empty: bool  # set by SQLCompiler.__init__; not declared by django-stubs
    # The SQL and its parameters (values for the database adapter).
    _relaycache_compiled: tuple[str, Any] | None = None

    # Passes through whatever a backend's compiler accepts (some take more arguments).
    def as_sql(self, *args: Any, **kwargs: Any) -> tuple[str, Any]:
        # execute_sql() compiles again after we compiled to derive the key: reuse it.
        if not args and not kwargs and self._relaycache_compiled is not None:
            return self._relaycache_compiled
        return super().as_sql(*args, **kwargs)

    def _compile_read(self, result_type: str, options: CacheOptions) -> CompiledRead:
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
        reused: a read that reaches the database compiles its own. The remembered
        parameters could wrap objects the first caller changed since, compiling sets
        up the query's own state (its alias map, which code may read after the query
        ran), and what the query's state leaves out (a model's ``Meta.ordering``
        changed at run time, as Django's own tests do) is then read afresh."""
        self.select, self.klass_info = read.select, read.klass_info
        self.annotation_col_map = read.annotation_col_map
        self.col_count, self.has_extra_select = read.col_count, read.has_extra_select

    # The result's type depends on ``result_type`` (a cursor, rows or None), as in
    # Django's overloads; this override serves every one of them.
    def execute_sql(self, result_type: Any = MULTI, chunked_fetch: bool = False,
                    chunk_size: int = GET_ITERATOR_CHUNK_SIZE) -> Any:
        parent = super().execute_sql
        options = active_options(self.query)
        if (options is None or chunked_fetch or computing.get()
                or result_type not in (MULTI, SINGLE)):
            return parent(result_type, chunked_fetch, chunk_size)
        # Annotated ``type``: mypy does not see ``type[Self]`` as Hashable (mypy#17730).
        compiler_class: type = type(self)
        state = memo.fingerprint(self.query, compiler_class, self.connection.alias,
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

        ran: list[bool] = []

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
        except DECODE_ERRORS as exc:
            options.cache.stats.incr("corrupt")
            logger.warning("relaycache: unreadable cached rows, querying instead: %s", exc)
            return parent(result_type, chunked_fetch, chunk_size)
        if result_type == SINGLE:
            return rows[0] if rows else None
        return [rows]
