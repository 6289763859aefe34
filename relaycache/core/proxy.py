"""``relaycache.default_backend``: the default backend, as an object to import.

The relaycache 0.1 library exported its default backend as a module attribute. Ours is
chosen at run time (``RELAYCACHE`` settings, :func:`set_default_backend`,
``use_backend``), after modules have imported names, so the exported object is a proxy
that resolves :func:`get_default_backend` on every use: imported early, it still
addresses the backend configured later.
"""

from __future__ import annotations

from typing import Any

from ..backends.base import BaseCache
from .defaults import get_default_backend


class DefaultBackend:
    """Every attribute, ``backend[key]``, ``backend[key] = value`` and ``key in
    backend`` forwarded to :func:`get_default_backend` at the time of use."""

    __slots__ = ()

    @staticmethod
    def resolve() -> BaseCache:
        """The backend this stands for now."""
        return get_default_backend()

    def __getattr__(self, name: str) -> Any:
        return getattr(get_default_backend(), name)

    def __getitem__(self, key: str) -> Any:
        return get_default_backend()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        get_default_backend()[key] = value

    def __contains__(self, key: object) -> bool:
        return key in get_default_backend()

    def __repr__(self) -> str:
        return f"<default backend: {get_default_backend()!r}>"


default_backend = DefaultBackend()
"""The process's default backend, whichever it is when used."""


def backend_or_default(backend: BaseCache | DefaultBackend | None) -> BaseCache:
    """``backend``, or the default one for ``None`` and :data:`default_backend`."""
    if backend is None or isinstance(backend, DefaultBackend):
        return get_default_backend()
    return backend
