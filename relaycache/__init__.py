"""RelayCache: an ORM-aware, tag-invalidated cache for Django on Redis.

The core (this module and :mod:`relaycache.backends`) needs no Django settings; the
ORM names below are imported on first use. Every name the relaycache 0.1 library
(import name ``custom_cache``) documented is here too: ``KeyBuilder``,
``AioredisCache``, ``AsyncRedisKeyLock``, ``default_backend``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .backends.base import BaseCache
from .backends.locks import AsyncRedisKeyLock
from .backends.memory import InMemoryCache
from .backends.near import NearCache
from .backends.redis import AioredisCache, RedisCache
from .core.breaker import CircuitBreaker
from .core.codec import register_type
from .core.compression import Zstd
from .core.decorator import CachedFunction, ainvalidate, cache, invalidate
from .core.defaults import get_default_backend, set_default_backend
from .core.events import add_listener, remove_listener
from .core.keys import KeyBuilder
from .core.proxy import default_backend
from .core.stats import Stats

if TYPE_CHECKING:
    from .orm.invalidation import invalidate_tables
    from .orm.queryset import CachedManager, CachedQuerySet, CachedQuerySetMixin
    from .orm.targets import invalidate_model, invalidate_obj

__version__ = "0.2.0.dev0"

__all__ = [
    "AioredisCache",
    "AsyncRedisKeyLock",
    "BaseCache",
    "CachedFunction",
    "CachedManager",
    "CachedQuerySet",
    "CachedQuerySetMixin",
    "CircuitBreaker",
    "InMemoryCache",
    "KeyBuilder",
    "NearCache",
    "RedisCache",
    "Stats",
    "Zstd",
    "add_listener",
    "ainvalidate",
    "cache",
    "default_backend",
    "get_default_backend",
    "invalidate",
    "invalidate_model",
    "invalidate_obj",
    "invalidate_tables",
    "register_type",
    "remove_listener",
    "set_default_backend",
]

_ORM_NAMES = {"CachedManager": "queryset", "CachedQuerySet": "queryset",
              "CachedQuerySetMixin": "queryset", "invalidate_tables": "invalidation",
              "invalidate_model": "targets", "invalidate_obj": "targets"}


def __getattr__(name: str) -> object:
    if name in _ORM_NAMES:
        import importlib

        return getattr(importlib.import_module(f".orm.{_ORM_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'relaycache' has no attribute {name!r}")
