"""What ``.cached(...)`` (or ``RELAYCACHE["MODELS"]``) chose, whether caching is on at
all, and whether a result is being computed."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..backends.base import BaseCache
from ..core.defaults import get_default_backend

if TYPE_CHECKING:
    from django.db.models.sql.query import Query

computing: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "relaycache_orm_computing", default=False)
"""True while a cached result is computed, so its inner queries are not cached twice."""

_enabled = True


@dataclass(frozen=True)
class CacheOptions:
    """What ``.cached(...)`` was given; :data:`DISABLED` records ``.nocache()``.

    ``automatic`` marks options chosen by ``RELAYCACHE["MODELS"]`` rather than by the
    caller: they are chosen again for each operation (``get()``, ``count()``...), and
    an explicit ``cached()``/``nocache()`` replaces them.
    """

    ttl: float | None = None
    tags: tuple[str, ...] = ()
    key: str | None = None
    backend: BaseCache | None = None
    singleflight: bool = False
    enabled: bool = True
    automatic: bool = False

    @property
    def cache(self) -> BaseCache:
        return self.backend or get_default_backend()


DISABLED = CacheOptions(enabled=False)


def set_enabled(enabled: bool) -> None:
    """``RELAYCACHE["ENABLED"]``: when ``False`` no ORM read is served from or stored in
    the cache, ``.cached()`` included; writes still invalidate (applied by the app)."""
    global _enabled
    _enabled = enabled


def caching_enabled() -> bool:
    return _enabled


def active_options(query: Query) -> CacheOptions | None:
    """The options a query is cached with, or ``None`` if it is not."""
    options: CacheOptions | None = getattr(query, "relaycache_options", None)
    return options if options is not None and options.enabled and _enabled else None


def explicit_options(query: Query) -> CacheOptions | None:
    """What ``cached()``/``nocache()`` chose for a query (``None``: nothing, or only
    ``RELAYCACHE["MODELS"]``), enabled or not."""
    options: CacheOptions | None = getattr(query, "relaycache_options", None)
    return None if options is None or options.automatic else options
