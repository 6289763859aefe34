"""How one compiled read goes through the cache: its entry digest, tags and store
policy, or the reason it cannot be cached."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.db import Error, connections
from django.db.models.sql.query import Query
from django.db.utils import load_backend

from ..core import events
from ..core.codec import to_json
from ..core.keys import digest
from . import pins
from .invalidation import (
    can_store_inside_transaction,
    database_tag,
    dirty_tables,
    has_baseline,
    is_replica,
    namespace,
    view_bases,
)
from .options import CacheOptions
from .patches import manual_transaction
from .rows import ROWS_FORMAT
from .scope import session_state
from .sqlwrites import identifiers, identifiers_past_select
from .tables import Uncacheable, query_tables

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

logger = logging.getLogger("relaycache.orm")

_PREFETCH_EXTRA_PREFIX = "_prefetch_related_val_"

UNKNOWN_SESSION = ("the connection's session state is unknown (a SET inside a transaction "
                   "or that failed, SET SESSION AUTHORIZATION, temporary tables)")


@dataclass
class ReadPlan:
    """How one compiled read goes through the cache."""

    key: str
    tags: list[str]
    store: bool


@dataclass(frozen=True)
class Analysis:
    """The part of a read's plan that follows from its SQL alone: ``digest`` covers the
    SQL, its parameters and the result shape, not the database or session state the
    SQL runs in, which :func:`plan_for` adds to the key of every read."""

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


def _aggregates_in_place(query: Query, shape: Sequence[object]) -> bool:
    """Whether ``shape`` is a ``count()``/``aggregate()`` Django runs on the query's own
    FROM and WHERE, replacing its select list (no subquery: nothing that makes the
    selected values matter, such as DISTINCT, a slice, a combinator or GROUP BY)."""
    return bool(shape) and shape[0] in ("count", "aggregate") and not (
        query.distinct or query.is_sliced or query.combinator or query.annotations
        or query.group_by is not None or query.extra or query.distinct_fields)


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [text for item in value for text in _strings(item)]
    return []


def analyse(query: Query, connection: BaseDatabaseWrapper, sql: str, params: Iterable[object],
            shape: Sequence[object], options: CacheOptions) -> Analysis:
    """Entry digest and tags of a compiled read; raises :class:`Uncacheable`.

    A table the walk finds but whose name the SQL never spells is not read (a join
    Django trimmed, a relation only filtered on by its key): it is no dependency. The
    SQL of the result ``shape`` counts as spelled too (an aggregate's own SQL, which
    names the columns it reads: ``values("id").aggregate(Sum("price"))``), and when
    Django aggregates over the query's FROM and WHERE directly, its select list does
    not (``count()`` reads no column it selects).
    """
    if query.explain_info is not None:
        raise Uncacheable("explain() output is not cached")
    allow_raw = bool(options.tags) or _allows_extra(query)
    spelled = identifiers_past_select(sql) if _aggregates_in_place(query, shape) else (
        identifiers(sql))
    names = spelled | identifiers(" ".join(_strings(shape)))
    occurrences = {table: count for table, count in
                   query_tables(query, allow_raw=allow_raw).items() if table in names}
    using = connection.alias
    try:
        encoded_params = [param_data(param) for param in params]
    except TypeError as exc:
        raise Uncacheable(f"a parameter cannot be encoded: {exc}") from None
    entry_digest = digest([ROWS_FORMAT, sql, encoded_params, shape])
    tags = (database_tag(using), *pins.read_tags(query, connection, occurrences, names,
                                                 namespace(using), raw=allow_raw))
    return Analysis(digest=entry_digest, tables=frozenset(occurrences), tags=tags)


_identities: dict[tuple[object, ...], str] = {}
_process = secrets.token_hex(8)


def _new_process() -> None:
    """A forked child's in-memory SQLite databases are its own from now on."""
    global _process
    _process = secrets.token_hex(8)
    _identities.clear()


os.register_at_fork(after_in_child=_new_process)


def _identity(name: str, config: dict[str, Any]) -> str:
    options = config.get("OPTIONS") or {}
    database = config.get("NAME") or ""
    if load_backend(str(config.get("ENGINE"))).DatabaseWrapper.vendor == "sqlite":
        if not isinstance(database, Path) and (
                database == ":memory:" or "mode=memory" in str(database)):
            where = ["memory", _process]
        else:
            where = [socket.gethostname(), os.path.abspath(database)]
        return digest([name, str(config.get("ENGINE")), *where])
    return digest([name, *(str(config.get(key) or "") for key in (
        "ENGINE", "HOST", "PORT", "NAME", "USER")), *(str(options.get(key) or "") for key in (
        "service", "options", "assume_role"))])


def database_identity(using: str) -> str:
    """The database a read through ``using`` runs on, as part of its key: two sites, or
    staging and production, whose ``default`` alias is a different database never
    share entries, even on one Redis.

    The alias's namespace (``DATABASE_NAMESPACES``, so a replica mapped to its primary
    shares the primary's entries) with, when the namespace is an alias of
    ``DATABASES``, its engine, host, port, database name, user and the PostgreSQL
    connection options that choose the database or its session defaults (``service``,
    ``options``, ``assume_role``); for SQLite, the file's absolute path on this host,
    or this process for an in-memory database. A namespace that names no alias is the
    identity you chose for the database (docs/configuration.md).
    """
    name = namespace(using)
    config = connections.settings.get(name)
    if config is None:
        return name
    options = config.get("OPTIONS") or {}
    state = (name, config.get("ENGINE"), config.get("NAME"), config.get("HOST"),
             config.get("PORT"), config.get("USER"), options.get("service"),
             options.get("options"), options.get("assume_role"))
    try:
        found = _identities.get(state)
    except TypeError:  # an unhashable setting: not remembered
        return _identity(name, config)
    if found is None:
        found = _identities[state] = _identity(name, config)
    return found


def read_scope(connection: BaseDatabaseWrapper) -> str | None:
    """What a read's SQL runs on besides its text: the database's identity and the
    connection's session state (``None``: unknown, see :mod:`.scope`)."""
    state = session_state(connection)
    if state is None:
        return None
    return f"{database_identity(connection.alias)}|{state}"


def plan_for(analysis: Analysis, connection: BaseDatabaseWrapper, options: CacheOptions
             ) -> ReadPlan:
    """The plan of one read now: a table written in the open transaction bypasses;
    the key adds the database and session state to the analysis's digest, the tags the
    tables of the views it reads.

    A miss is stored only if it reads committed data at least as new as every write
    invalidated before its stamps were taken: in autocommit, or inside ``atomic`` under
    READ COMMITTED; never with autocommit off (it may see its own uncommitted writes),
    never through a replica alias (it may lag) (docs/consistency.md); in a test's
    transaction counted as committed (:func:`~.invalidation.set_baseline`), on any
    database and isolation level.
    """
    try:
        views = view_bases(connection, analysis.tables) - analysis.tables
    except Error as exc:
        raise Uncacheable(f"the tables of the views it reads are unknown: {exc}") from None
    dirty = dirty_tables(connection)
    if dirty and ("*" in dirty or dirty & (analysis.tables | views)):
        raise Uncacheable("a table it reads was written in this transaction")
    scope = read_scope(connection)
    if scope is None:
        raise Uncacheable(UNKNOWN_SESSION)
    store = not manual_transaction(connection) and not is_replica(connection.alias) and (
        not connection.in_atomic_block or can_store_inside_transaction(connection)
        or has_baseline(connection))
    key = hashlib.blake2b(f"{scope}|{analysis.digest}".encode(), digest_size=16).hexdigest()
    ns = namespace(connection.alias)
    tags = [*analysis.tags,
            *(tag for t in sorted(views) for tag in pins.unpinned_tags(ns, t, None)),
            *options.tags]
    return ReadPlan(key=f"{options.key or 'orm'}:{key}", tags=tags, store=store)


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
