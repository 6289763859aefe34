"""What ``.cached(...)`` was given, and whether a result is being computed."""

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
    options: CacheOptions | None = getattr(query, "relaycache_options", None)
    return options if options is not None and options.enabled else None
