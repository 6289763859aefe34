"""How one compiled read goes through the cache: its entry digest, tags and store
policy, or the reason it cannot be cached."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db.models.sql.query import Query

from ..core import events
from ..core.codec import to_json
from ..core.keys import digest
from .invalidation import (
    can_store_inside_transaction,
    database_tag,
    dirty_tables,
    namespace,
    table_tag,
)
from .options import CacheOptions
from .rows import ROWS_FORMAT
from .tables import Uncacheable, query_tables

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

logger = logging.getLogger("relaycache.orm")

_PREFETCH_EXTRA_PREFIX = "_prefetch_related_val_"


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


# type[Any]: each one's constructor accepts an instance of itself (a subclass's).
_SCALAR_BASES: tuple[type[Any], ...] = (bool, int, float, str, bytes)


def param_data(param: object) -> Any:
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


def analyse(query: Query, connection: BaseDatabaseWrapper, sql: str, params: Iterable[object],
            shape: Sequence[object], options: CacheOptions) -> Analysis:
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


def plan_for(analysis: Analysis, connection: BaseDatabaseWrapper, options: CacheOptions
             ) -> ReadPlan:
    """The plan of one read now: a table written in the open transaction bypasses."""
    dirty = dirty_tables(connection)
    if dirty and ("*" in dirty or dirty & analysis.tables):
        raise Uncacheable("a table it reads was written in this transaction")
    store = connection.get_autocommit() and not connection.in_atomic_block
    store = store or can_store_inside_transaction(connection)
    return ReadPlan(key=f"{options.key or 'orm'}:{analysis.digest}",
                    tags=[*analysis.tags, *options.tags], store=store)


def plan_read(query: Query, connection: BaseDatabaseWrapper, sql: str,
              params: Iterable[object], shape: Sequence[object], options: CacheOptions
              ) -> ReadPlan:
    """Key, tags and store policy for a compiled read; raises :class:`Uncacheable`."""
    return plan_for(analyse(query, connection, sql, params, shape, options), connection,
                    options)


def note_uncacheable(options: CacheOptions, reason: Uncacheable, sql: str) -> None:
    backend = options.cache
    backend.stats.incr("bypassed")
    logger.debug("relaycache: query not cached (%s): %s", reason, sql)
    if events.listeners:
        events.emit("uncacheable", backend, sql=sql, reason=str(reason))
