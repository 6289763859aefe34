"""The process-wide default backend used when ``backend=None``."""

from __future__ import annotations

import threading

from .backends.base import BaseCache
from .backends.memory import InMemoryCache

_lock = threading.Lock()
_default: BaseCache | None = None


def get_default_backend() -> BaseCache:
    """The configured default backend; an :class:`InMemoryCache` until one is set."""
    global _default
    if _default is None:
        with _lock:
            if _default is None:
                _default = InMemoryCache()
    return _default


def set_default_backend(backend: BaseCache | None) -> None:
    """Make ``backend`` the default (``None`` restores a fresh embedded default)."""
    global _default
    if backend is not None and not isinstance(backend, BaseCache):
        raise TypeError(f"expected a relaycache backend, got {type(backend).__qualname__}")
    with _lock:
        _default = backend
