"""``Model.objects.cached()``: the manager and queryset a model opts in with."""

from __future__ import annotations

import contextvars
import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.core.exceptions import EmptyResultSet, FieldError
from django.db import NotSupportedError, connections, models
from django.db.models import Count, Prefetch, prefetch_related_objects
from django.db.models.sql.constants import MULTI
from django.db.models.sql.query import Query

from ..backends.base import BaseCache
from ..keys import check_tags, check_ttl
from . import memo
from .compiler import (
    DISABLED,
    Analysis,
    CacheOptions,
    CachingCompilerMixin,
    active_options,
    analyse,
    computing,
    note_uncacheable,
    param_data,
    plan_for,
    plan_read,
)
from .invalidation import install_everywhere, register_backend
from .tables import Uncacheable

Q = TypeVar("Q", bound="CachedQuerySetMixin")

_prefetch_options: contextvars.ContextVar[CacheOptions | None] = contextvars.ContextVar(
    "relaycache_prefetch_options", default=None)

_DEFAULT_OPTIONS = CacheOptions()
_compiler_classes: dict[type, type] = {}
_query_classes: dict[type, type] = {}


def _caching_compiler(base: type) -> type:
    cls = _compiler_classes.get(base)
    if cls is None:
        cls = _compiler_classes[base] = type(base.__name__, (CachingCompilerMixin, base), {})
    return cls


class CachedQueryMixin:
    """Mixed into a queryset's ``Query`` once ``.cached()`` is called; clones keep it."""

    relaycache_options: CacheOptions | None = None
    compiler: str

    def get_compiler(self, using: str | None = None, connection: Any = None,
                     elide_empty: bool = True) -> Any:
        if active_options(self) is None or self.compiler != "SQLCompiler":
            return super().get_compiler(using, connection, elide_empty)  # type: ignore[misc]
        if using:
            connection = connections[using]
        if connection is None:
            raise ValueError("Need either using or connection")
        compiler = _caching_compiler(connection.ops.compiler(self.compiler))
        return compiler(self, connection, using, elide_empty)


def _cached_query_class(base: type) -> type:
    cls = _query_classes.get(base)
    if cls is None:
        cls = _query_classes[base] = type(f"Cached{base.__name__}", (CachedQueryMixin, base), {})
    return cls


@dataclass(frozen=True)
class CacheInfo:
    """How a queryset's rows query would go through the cache (``qs.cache_info()``)."""

    cached: bool
    reason: str | None = None
    key: str | None = None
    tags: tuple[str, ...] = ()
    store: bool = False


class CachedQuerySetMixin:
    """Adds ``cached()``/``nocache()`` to a ``QuerySet`` subclass."""

    query: Query
    db: str
    _result_cache: Any
    _prefetch_related_lookups: tuple[Any, ...]
    _prefetch_done: bool

    def cached(self: Q, ttl: float | None = None, tags: Iterable[str] | None = None,
               key: str | None = None, backend: BaseCache | None = None,
               singleflight: bool = False) -> Q:
        """A copy of this queryset whose evaluations go through the cache.

        :param ttl: seconds (``None``: the backend's ``default_ttl``).
        :param tags: extra tags, for :func:`relaycache.invalidate`; naming tags also
            allows ``RawSQL``/``extra()`` fragments, which you then invalidate yourself.
        :param key: a readable prefix for this queryset's entries (default ``"orm"``).
        :param backend: the backend (``None``: the default backend).
        :param singleflight: concurrent misses of one query in every process sharing the
            backend run it once (a lease in Redis; in-process misses always do).
        """
        if ttl is None and tags is None and key is None and backend is None and not singleflight:
            return self._with_cache_options(_DEFAULT_OPTIONS)
        check_ttl(ttl)
        if key is not None and (not isinstance(key, str) or not key or len(key) > 200):
            raise ValueError(f"key must be a non-empty str of at most 200 characters: {key!r}")
        if backend is not None:
            if not isinstance(backend, BaseCache):
                raise TypeError(f"backend must be a relaycache backend, got {backend!r}")
            register_backend(backend)
        options = CacheOptions(ttl=ttl, tags=tuple(check_tags(tags or ())), key=key,
                               backend=backend, singleflight=bool(singleflight))
        return self._with_cache_options(options)

    def nocache(self: Q) -> Q:
        """A copy of this queryset that always reads the database, also when it is a
        ``Prefetch`` queryset under a cached one."""
        return self._with_cache_options(DISABLED)

    def _with_cache_options(self: Q, options: CacheOptions) -> Q:
        clone = self._chain()  # type: ignore[attr-defined]
        query = clone.query
        if options.enabled and not isinstance(query, CachedQueryMixin):
            query.__class__ = _cached_query_class(type(query))
        query.relaycache_options = options
        return clone

    @property
    def cache_options(self) -> CacheOptions | None:
        """The options this queryset is cached with, ``None`` if it is not."""
        return active_options(self.query)

    def cache_info(self) -> CacheInfo:
        """Whether and how iterating this queryset is cached, without running it."""
        options = self.cache_options
        if options is None:
            return CacheInfo(cached=False, reason="not marked with .cached()")
        compiler = self.query.chain().get_compiler(self.db)
        try:
            sql, params = compiler.as_sql()
        except EmptyResultSet:
            return CacheInfo(cached=False, reason="matches nothing: no query runs")
        try:
            plan = plan_read(compiler.query, compiler.connection, sql, params,
                             [MULTI, compiler.col_count], options)
        except Uncacheable as reason:
            return CacheInfo(cached=False, reason=str(reason))
        return CacheInfo(cached=True, key=plan.key, tags=tuple(plan.tags), store=plan.store)

    # -- results Django computes outside the rows query ------------------------------

    def count(self) -> int:
        options = self.cache_options
        if options is None or self._result_cache is not None or computing.get():
            return super().count()  # type: ignore[misc]
        return self._cached_aggregate("count", {"relaycache_count": Count("*")},
                                      super().count, options)  # type: ignore[misc]

    def aggregate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        options = self.cache_options
        parent = super().aggregate  # type: ignore[misc]
        if options is None or computing.get():
            return parent(*args, **kwargs)
        try:
            named = {**{arg.default_alias: arg for arg in args}, **kwargs}
        except (AttributeError, TypeError):
            return parent(*args, **kwargs)  # Django raises its own error for these
        return self._cached_aggregate("aggregate", named, lambda: parent(*args, **kwargs),
                                      options)

    def _cached_aggregate(self, kind: str, named: dict[str, Any], compute: Callable[[], Any],
                          options: CacheOptions) -> Any:
        named_state = memo.pickled(named)
        state = None if named_state is None else memo.fingerprint(
            self.query, "aggregate", self.db, kind, bool(options.tags), named_state)
        try:
            analysis = memo.remembered(
                state, lambda: self._aggregate_analysis(kind, named, options))
            plan = plan_for(analysis, connections[self.db], options)
        except EmptyResultSet:
            return compute()
        except Uncacheable as reason:
            note_uncacheable(options, reason, "")
            return compute()

        def run() -> Any:
            token = computing.set(True)
            try:
                return compute()
            finally:
                computing.reset(token)

        return options.cache.get_or_set(plan.key, run, ttl=options.ttl, tags=plan.tags,
                                        singleflight=options.singleflight, store=plan.store,
                                        strict=False)

    def _aggregate_analysis(self, kind: str, named: dict[str, Any],
                            options: CacheOptions) -> Analysis:
        """Key an aggregation by SQL that determines it, compiled once.

        An aggregation of the query's own columns (``count()``, ``Sum("price")``) reads
        no other table: it is keyed by this queryset's SQL and each aggregate's own SQL.
        One that follows relations (``Count("reviews")``) is keyed by the SQL of this
        queryset annotated with it, which has the aggregation's joins and tables.
        Raises ``EmptyResultSet`` (nothing to run) or :class:`Uncacheable`.
        """
        compiler = self.query.chain().get_compiler(self.db)
        try:
            sql, params = compiler.as_sql()
            shape = [kind, *_aggregates_sql(compiler, named)]
        except (TypeError, ValueError) as exc:  # Django reports bad aggregates itself
            raise Uncacheable(f"{kind}() of this query: {exc}") from None
        except FieldError:  # the aggregates need joins: key by the annotated query
            try:
                probe = self.annotate(**named)  # type: ignore[attr-defined]
            except (NotSupportedError, FieldError, TypeError, ValueError):
                raise Uncacheable(f"{kind}() of this query") from None
            compiler = probe.query.get_compiler(self.db)
            sql, params = compiler.as_sql()
            shape = [kind]
        return analyse(compiler.query, compiler.connection, sql, params, shape, options)

    def _prefetch_related_objects(self) -> None:
        # Django offers no public hook here. The related managers of models using
        # CachedManager read _prefetch_options, and user Prefetch querysets of such
        # models get the same options, so prefetches are cached like the main query.
        options = self.cache_options
        if options is None:
            super()._prefetch_related_objects()  # type: ignore[misc]
            return
        lookups = [_cached_prefetch(lookup, options) for lookup in self._prefetch_related_lookups]
        token = _prefetch_options.set(options)
        try:
            prefetch_related_objects(self._result_cache, *lookups)
        finally:
            _prefetch_options.reset(token)
        self._prefetch_done = True


def _aggregates_sql(compiler: Any, named: dict[str, Any]) -> list[Any]:
    """Each aggregate's own SQL and parameters, so the key never rests on ``repr()`` of
    values. Raises ``FieldError`` if an aggregate adds a join (it reads other tables)."""
    query = compiler.query
    aliases = set(query.alias_map)
    parts = []
    for alias in sorted(named):
        resolved = named[alias].resolve_expression(query, allow_joins=True, reuse=None,
                                                   summarize=True)
        if set(query.alias_map) != aliases or getattr(resolved, "contains_subquery", False):
            raise FieldError("the aggregate reads other tables")
        agg_sql, agg_params = compiler.compile(resolved)
        parts.append([alias, agg_sql, [param_data(p) for p in agg_params]])
    return parts


def _cached_prefetch(lookup: Any, options: CacheOptions) -> Any:
    if not isinstance(lookup, Prefetch):
        return lookup
    queryset = lookup.queryset
    if (not isinstance(queryset, CachedQuerySetMixin)
            or getattr(queryset.query, "relaycache_options", None) is not None):
        return lookup  # not ours, or cached()/nocache() chosen explicitly
    lookup = copy.copy(lookup)
    lookup.queryset = queryset._with_cache_options(options)
    return lookup


class CachedQuerySet(CachedQuerySetMixin, models.QuerySet):
    """A ``QuerySet`` with ``cached()``; subclass it for custom querysets."""


class CachedManager(models.Manager.from_queryset(CachedQuerySet)):  # type: ignore[misc]
    """``objects = CachedManager()``: ``Model.objects.cached()`` caches; plain
    ``Model.objects`` querysets behave exactly like Django's.

    For a custom queryset: ``CachedManager.from_queryset(MyQuerySet)()``, where
    ``MyQuerySet`` subclasses :class:`CachedQuerySet`.
    """

    def get_queryset(self) -> Any:
        queryset = super().get_queryset()
        options = _prefetch_options.get()
        if options is not None and isinstance(queryset, CachedQuerySetMixin):
            queryset = queryset._with_cache_options(options)
        return queryset


install_everywhere()
