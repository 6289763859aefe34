"""The process-wide default backend used when ``backend=None``."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from ..backends.base import BaseCache
from ..backends.memory import InMemoryCache

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


@contextlib.contextmanager
def use_backend(backend: BaseCache) -> Iterator[BaseCache]:
    """Make ``backend`` the default inside the block; the previous default after
    (including "none chosen yet", so a fresh embedded default follows)."""
    global _default
    with _lock:
        previous, _default = _default, backend
    try:
        yield backend
    finally:
        with _lock:
            _default = previous
