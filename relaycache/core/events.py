"""Hooks for metrics: callables told of every hit, miss and invalidation.

The Django app turns them into the signals ``cache_hit``, ``cache_miss`` and
``cache_invalidated``; anything else (a StatsD client, a test) can listen with ``add_listener``.
With no subscriber, the cost on the hot path is one list check.

:data:`invalidation_hooks` are not for metrics: they let a layer above the core act on
every invalidation (the ORM layer repeats one made inside a database transaction after
its COMMIT) without the core knowing of databases.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..backends.base import BaseCache

logger = logging.getLogger("relaycache")

Listener = Callable[..., None]
"""Called as ``listener(event, backend, **data)``: ``event`` is ``"hit"`` (``key``),
``"miss"`` (``key``, ``reason``: ``"absent"``, ``"stale"`` or ``"corrupt"``),
``"invalidated"`` (``tags``), and from the ORM layer ``"query"`` (a cached read: ``sql``,
``key``, ``tags``, ``hit``, and ``operation``: ``"count"`` or ``"aggregate"`` for
those) or ``"uncacheable"`` (a read run uncached: ``sql``,
``reason``)."""

listeners: list[Listener] = []


def add_listener(listener: Listener) -> None:
    if listener not in listeners:
        listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    if listener in listeners:
        listeners.remove(listener)


def emit(event: str, backend: BaseCache, **data: Any) -> None:
    """Tell every listener; a failing listener is logged, never raised to the caller."""
    for listener in list(listeners):
        try:
            listener(event, backend, **data)
        except Exception:
            logger.exception("relaycache: event listener %r failed", listener)


InvalidationHook = Callable[["BaseCache", list[str]], None]
"""Called as ``hook(backend, tags)``, ``tags`` checked, sorted and de-duplicated."""

invalidation_hooks: list[InvalidationHook] = []
"""Called after every invalidation was sent to the backend, or queued for redelivery
when it could not be: what the caller asked for has happened, whatever a hook does."""


def add_invalidation_hook(hook: InvalidationHook) -> None:
    if hook not in invalidation_hooks:
        invalidation_hooks.append(hook)


def remove_invalidation_hook(hook: InvalidationHook) -> None:
    if hook in invalidation_hooks:
        invalidation_hooks.remove(hook)


def run_invalidation_hooks(backend: BaseCache, tags: list[str]) -> None:
    """Call every hook; a failing hook is logged, never raised to the invalidating
    caller (its invalidation is done)."""
    for hook in list(invalidation_hooks):
        try:
            hook(backend, tags)
        except Exception:
            logger.exception("relaycache: invalidation hook %r failed", hook)
