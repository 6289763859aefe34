"""Where the relaycache 0.1 library's README imported ``invalidate`` from
(``from custom_cache.utils import invalidate``); the names live in :mod:`relaycache`."""

from .core.decorator import ainvalidate, invalidate

__all__ = ["ainvalidate", "invalidate"]
