"""``Model.objects.cached()``: the manager and queryset a model opts in with."""

from __future__ import annotations

import contextvars
import copy
import hashlib
import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from django.core.exceptions import EmptyResultSet, FieldError
from django.db import NotSupportedError, connections, models
from django.db.models import Count, Model, Prefetch, prefetch_related_objects
from django.db.models.sql.constants import MULTI
from django.db.models.sql.query import Query
from django.db.transaction import TransactionManagementError

from ..backends.base import BaseCache
from ..core import events
from ..core.keys import check_tags, check_ttl
from . import memo
from .compiler import CachingCompilerMixin
from .invalidation import register_backend
from .options import (
    DISABLED,
    CacheOptions,
    active_options,
    caching_enabled,
    computing,
    explicit_options,
)
from .plan import Analysis, analyse, note_uncacheable, param_data, plan_for, plan_read
from .tables import SELECT_FOR_UPDATE, Uncacheable

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.models.sql.compiler import SQLCompiler

    # The mixins are only ever combined with these classes: type them as such, so
    # super() calls and Django's attributes are checked.
    _QueryBase = Query
    _QuerySetBase = models.QuerySet[Any, Any]
else:
    _QueryBase = _QuerySetBase = object

T = TypeVar("T")
_M = TypeVar("_M", bound=Model, covariant=True)

_prefetch_options: contextvars.ContextVar[CacheOptions | None] = contextvars.ContextVar(
    "relaycache_prefetch_options", default=None)

_DEFAULT_OPTIONS = CacheOptions()
_compiler_classes: dict[type[SQLCompiler], type[CachingCompilerMixin]] = {}
_query_classes: dict[type[Query], type[CachedQueryMixin]] = {}


def _caching_compiler(base: type[SQLCompiler]) -> type[CachingCompilerMixin]:
    cls = _compiler_classes.get(base)
    if cls is None:
        # type() makes a subclass of both, which mypy cannot infer from its arguments.
        cls = _compiler_classes[base] = cast(
            "type[CachingCompilerMixin]",
            type(base.__name__, (CachingCompilerMixin, base), {}))
    return cls


class CachedQueryMixin(_QueryBase):
    """Mixed into a queryset's ``Query`` once ``.cached()`` is called; clones keep it."""

    relaycache_options: CacheOptions | None = None
    relaycache_base: type[Query]
    """The ``Query`` class this one was made from (see :func:`_cached_query_class`)."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Django pickles querysets (and their ``query``) into caches and sessions. This
        # class is made at run time, so pickle cannot find it by name: it is rebuilt
        # from the class it was made from, in any process.
        options = self.relaycache_options
        if options is not None and options.backend is not None:
            raise pickle.PicklingError(
                "a queryset cached with cached(backend=...) cannot be pickled: the backend "
                "lives in this process; pickle it without backend= (the default backend)")
        return _unpickle_query, (self.relaycache_base,), self.__getstate__()

    def get_compiler(self, using: str | None = None,
                     connection: BaseDatabaseWrapper | None = None,
                     elide_empty: bool = True) -> SQLCompiler:
        if active_options(self) is None or self.compiler != "SQLCompiler":
            parent: SQLCompiler = super().get_compiler(using, connection, elide_empty)
            return parent  # (django-stubs returns Any here)
        if using:
            connection = connections[using]
        if connection is None:
            raise ValueError("Need either using or connection")
        compiler = _caching_compiler(connection.ops.compiler(self.compiler))
        return compiler(self, connection, using, elide_empty)


def _cached_query_class(base: type[Query]) -> type[CachedQueryMixin]:
    cls = _query_classes.get(base)
    if cls is None:
        # type() makes a subclass of both, which mypy cannot infer from its arguments.
        cls = _query_classes[base] = cast(
            "type[CachedQueryMixin]",
            type(f"Cached{base.__name__}", (CachedQueryMixin, base),
                 {"relaycache_base": base}))
    return cls


def _unpickle_query(base: type[Query]) -> CachedQueryMixin:
    """An empty cached query made from ``base``; pickle then restores its state."""
    cls = _cached_query_class(base)
    return cls.__new__(cls)


@dataclass(frozen=True)
class CacheInfo:
    """How a queryset's rows query would go through the cache (``qs.cache_info()``)."""

    cached: bool
    reason: str | None = None
    key: str | None = None
    tags: tuple[str, ...] = ()
    store: bool = False


class CachedQuerySetMixin(_QuerySetBase):
    """Adds ``cached()``/``nocache()`` to a ``QuerySet`` subclass."""

    if TYPE_CHECKING:
        # Private QuerySet API this mixin uses, which django-stubs does not declare.
        _prefetch_related_lookups: tuple[str | Prefetch[Any, Any, Any], ...]
        _prefetch_done: bool

        def _chain(self) -> Self: ...

    def cached(self, ttl: float | None = None, tags: Iterable[str] | None = None,
               key: str | None = None, backend: BaseCache | None = None,
               singleflight: bool = False) -> Self:
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
            given = (f"{len(key)} characters: {key!r:.60}" if isinstance(key, str)
                     else type(key).__qualname__)
            raise ValueError(f"key must be a non-empty str of at most 200 characters, "
                             f"got {given}")
        if backend is not None:
            if not isinstance(backend, BaseCache):
                raise TypeError(f"backend must be a relaycache backend, got {backend!r}")
            register_backend(backend)
        options = CacheOptions(ttl=ttl, tags=tuple(check_tags(tags or ())), key=key,
                               backend=backend, singleflight=bool(singleflight))
        return self._with_cache_options(options)

    def nocache(self) -> Self:
        """A copy of this queryset that always reads the database, also when it is a
        ``Prefetch`` queryset under a cached one."""
        return self._with_cache_options(DISABLED)

    def _follows_cached_parent(self) -> bool:
        """Whether, as a ``Prefetch`` queryset under a cached one, it takes that one's
        options (unless ``cached()``/``nocache()`` chose)."""
        return True

    def _with_cache_options(self, options: CacheOptions) -> Self:
        clone = self._chain()
        clone._set_cache_options(options)
        return clone

    def _set_cache_options(self, options: CacheOptions) -> None:
        """Mark this queryset's own query; only for a queryset no one else holds yet
        (a clone, or one a manager just made)."""
        query = self.query
        if options.enabled and not isinstance(query, CachedQueryMixin):
            query.__class__ = _cached_query_class(type(query))
        # Also on a plain Query (nocache() marks one without the mixin): an instance
        # attribute either way, which mypy only knows on CachedQueryMixin.
        vars(query)["relaycache_options"] = options

    @property
    def cache_options(self) -> CacheOptions | None:
        """The options this queryset is cached with, ``None`` if it is not."""
        return active_options(self.query)

    def cache_info(self) -> CacheInfo:
        """Whether and how iterating this queryset is cached, without running it."""
        options = self.cache_options
        if options is None:
            marked: CacheOptions | None = getattr(self.query, "relaycache_options", None)
            if marked is not None and marked.enabled and not caching_enabled():
                return CacheInfo(cached=False, reason="RELAYCACHE['ENABLED'] is False")
            if marked is not None and marked.automatic:
                return CacheInfo(cached=False, reason="RELAYCACHE['MODELS'] does not cache "
                                                      "iterating this model's querysets")
            return CacheInfo(cached=False, reason="not marked with .cached()")
        if self.query.select_for_update:
            # Not compiled: outside a transaction, compiling it raises.
            return CacheInfo(cached=False, reason=SELECT_FOR_UPDATE)
        compiler: SQLCompiler = self.query.chain().get_compiler(self.db)
        try:
            sql, params = compiler.as_sql()
        except EmptyResultSet:
            return CacheInfo(cached=False, reason="matches nothing: no query runs")
        except TransactionManagementError:
            # Django's only use of it while compiling: a select_for_update() in a
            # subquery, outside a transaction. Evaluating the queryset raises it too.
            return CacheInfo(cached=False, reason=SELECT_FOR_UPDATE)
        except NotSupportedError as exc:
            return CacheInfo(cached=False, reason=f"the database cannot run it: {exc}")
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
            return super().count()
        return self._cached_aggregate("count", {"relaycache_count": Count("*")},
                                      super().count, options)

    def aggregate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        options = self.cache_options
        parent = super().aggregate
        if options is None or computing.get() or not all(
                hasattr(value, "resolve_expression") for value in (*args, *kwargs.values())):
            return parent(*args, **kwargs)  # Django raises its own error for non-expressions
        try:
            named = {**{arg.default_alias: arg for arg in args}, **kwargs}
        except (AttributeError, TypeError):
            return parent(*args, **kwargs)  # Django raises its own error for these
        return self._cached_aggregate("aggregate", named, lambda: parent(*args, **kwargs),
                                      options)

    def _cached_aggregate(self, kind: str, named: dict[str, Any], compute: Callable[[], T],
                          options: CacheOptions) -> T:
        named_state = memo.pickled(named)
        state = None if named_state is None else memo.fingerprint(
            self.query, "aggregate", self.db, kind, bool(options.tags), named_state)
        try:
            analysis, sql = memo.remembered(
                state, lambda: self._aggregate_analysis(kind, named, options))
            plan = plan_for(analysis, connections[self.db], options)
        except EmptyResultSet:
            return compute()
        except Uncacheable as reason:
            note_uncacheable(options, reason, "")
            return compute()

        ran: list[bool] = []

        def run() -> T:
            ran.append(True)
            token = computing.set(True)
            try:
                return compute()
            finally:
                computing.reset(token)

        result = options.cache.get_or_set(plan.key, run, ttl=options.ttl, tags=plan.tags,
                                          singleflight=options.singleflight,
                                          store=plan.store, strict=False)
        if events.listeners:
            # ``sql`` is what keys the entry (the queryset's), ``operation`` says what
            # was computed from it, for the debug panel and the sample's request log.
            events.emit("query", options.cache, sql=sql, key=plan.key, tags=plan.tags,
                        hit=not ran, operation=kind)
        return result

    def _aggregate_analysis(self, kind: str, named: dict[str, Any],
                            options: CacheOptions) -> tuple[Analysis, str]:
        """Key an aggregation by SQL that determines it, compiled once.

        An aggregation of the query's own columns (``count()``, ``Sum("price")``) reads
        no other table: it is keyed by this queryset's SQL and each aggregate's own SQL.
        One that follows relations (``Count("reviews")``) is keyed by the SQL of this
        queryset annotated with it, which has the aggregation's joins and tables.
        Either way the key also holds what converts each aggregate's value
        (:func:`_result_type`): ``Sum("pages")`` and ``Sum("pages",
        output_field=FloatField())`` run the same SQL and return an int and a float.
        Raises ``EmptyResultSet`` (nothing to run) or :class:`Uncacheable`. Returns the
        analysis and the SQL it keys.
        """
        if self.query.select_for_update:
            # Django aggregates it without the lock; compiling it here would raise
            # outside a transaction.
            raise Uncacheable(SELECT_FOR_UPDATE)
        compiler: SQLCompiler = self.query.chain().get_compiler(self.db)
        try:
            try:
                sql, params = compiler.as_sql()
                shape: list[object] = [kind, *_aggregates_sql(compiler, named)]
            except (TypeError, ValueError) as exc:  # Django reports bad aggregates itself
                raise Uncacheable(f"{kind}() of this query: {exc}") from None
            except FieldError:  # the aggregates need joins: key by the annotated query
                try:
                    probe = self.annotate(**named)
                except (NotSupportedError, FieldError, TypeError, ValueError):
                    raise Uncacheable(f"{kind}() of this query") from None
                compiler = probe.query.get_compiler(self.db)
                sql, params = compiler.as_sql()
                annotations = compiler.query.annotations
                shape = [kind, *([alias, *_result_type(annotations[alias])]
                                 for alias in sorted(named))]
        except TransactionManagementError:
            # A select_for_update() in a subquery, outside a transaction: Django's own
            # run of the aggregation raises it to the caller.
            raise Uncacheable(SELECT_FOR_UPDATE) from None
        return analyse(compiler.query, compiler.connection, sql, params, shape, options), sql

    def _prefetch_related_objects(self) -> None:
        # Django offers no public hook here. The related managers of models using
        # CachedManager read _prefetch_options, and user Prefetch querysets of such
        # models get the same options, so prefetches are cached like the main query.
        options = self.cache_options
        if options is None or options.automatic:
            # Not cached, or cached by RELAYCACHE["MODELS"]: each related model's
            # querysets follow that model's own setting. Private QuerySet API, not
            # declared by django-stubs.
            super()._prefetch_related_objects()  # type: ignore[misc]
            return
        lookups = [_cached_prefetch(lookup, options) for lookup in self._prefetch_related_lookups]
        token = _prefetch_options.set(options)
        try:
            # (``None`` only before evaluation; no instances is a no-op for Django too.)
            prefetch_related_objects(self._result_cache or [], *lookups)
        finally:
            _prefetch_options.reset(token)
        self._prefetch_done = True


def _aggregates_sql(compiler: SQLCompiler, named: dict[str, Any]) -> list[list[object]]:
    """Each aggregate's own SQL and parameters, so the key never rests on ``repr()`` of
    values. Raises ``FieldError`` if an aggregate adds a join (it reads other tables)."""
    query = compiler.query
    aliases = set(query.alias_map)
    parts: list[list[object]] = []
    for alias in sorted(named):
        resolved = named[alias].resolve_expression(query, allow_joins=True, reuse=None,
                                                   summarize=True)
        if set(query.alias_map) != aliases or getattr(resolved, "contains_subquery", False):
            raise FieldError("the aggregate reads other tables")
        agg_sql, agg_params = compiler.compile(resolved)
        parts.append([alias, agg_sql, [param_data(p) for p in agg_params],
                      *_result_type(resolved)])
    return parts


def _result_type(expression: Any) -> list[str]:
    """What Django converts an aggregate's database value with, as key data: the
    expression's class (its ``convert_value``) and its output field, pickled: a model's
    field by reference, any other (``output_field=DecimalField(decimal_places=1)``) with
    every attribute a converter or ``from_db_value`` may read."""
    field = memo.pickled(expression.output_field)
    if field is None:
        raise Uncacheable("an aggregate's output field cannot be pickled")
    kind = type(expression)
    return [f"{kind.__module__}.{kind.__qualname__}",
            hashlib.blake2b(field, digest_size=16).hexdigest()]


def _cached_prefetch(lookup: str | Prefetch[Any, Any, Any], options: CacheOptions
                     ) -> str | Prefetch[Any, Any, Any]:
    if not isinstance(lookup, Prefetch):
        return lookup
    queryset = lookup.queryset
    if (not isinstance(queryset, CachedQuerySetMixin) or not queryset._follows_cached_parent()
            or explicit_options(queryset.query) is not None):
        return lookup  # not ours, or cached()/nocache() chosen explicitly
    lookup = copy.copy(lookup)
    lookup.queryset = queryset._with_cache_options(options)
    return lookup


class CachedQuerySet(CachedQuerySetMixin, models.QuerySet[_M]):
    """A ``QuerySet`` with ``cached()``; subclass it for custom querysets."""


_CachedManagerBase = models.Manager.from_queryset(CachedQuerySet)


class CachedManager(_CachedManagerBase[_M]):
    """``objects = CachedManager()``: ``Model.objects.cached()`` caches; plain
    ``Model.objects`` querysets behave exactly like Django's.

    For a custom queryset: ``CachedManager.from_queryset(MyQuerySet)()``, where
    ``MyQuerySet`` subclasses :class:`CachedQuerySet`.
    """

    def get_queryset(self) -> models.QuerySet[_M]:
        queryset = super().get_queryset()
        options = _prefetch_options.get()
        if options is not None and isinstance(queryset, CachedQuerySetMixin):
            queryset = queryset._with_cache_options(options)
        return queryset
