"""Django signals for cache events, sent by an events listener the app installs.

    from relaycache.signals import cache_hit, cache_miss

    @receiver(cache_miss)
    def count_miss(sender, key, reason, **kwargs): ...

``sender`` is the backend. Keyword arguments are those of :mod:`relaycache.core.events`:

- ``cache_hit``: ``key`` (the full key, prefix included);
- ``cache_miss``: ``key``, ``reason`` (``"absent"``, ``"stale"`` or ``"corrupt"``);
- ``cache_invalidated``: ``tags`` (sorted list);
- ``query_uncacheable``: ``sql``, ``reason`` (a cached queryset that ran uncached).

Receivers run synchronously in the thread that used the cache, on the hot path: keep
them cheap. A receiver that raises is logged and never reaches the caller, and the
other receivers still run.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from django.dispatch import Signal

from .core import events

if TYPE_CHECKING:
    from .backends.base import BaseCache

logger = logging.getLogger("relaycache")

cache_hit = Signal()
cache_miss = Signal()
cache_invalidated = Signal()
query_uncacheable = Signal()

SIGNALS: dict[str, Signal] = {
    "hit": cache_hit,
    "miss": cache_miss,
    "invalidated": cache_invalidated,
    "uncacheable": query_uncacheable,
}


def relay(event: str, backend: BaseCache, **data: Any) -> None:
    """The events listener: send the event's signal, if anything receives it."""
    signal = SIGNALS.get(event)
    if signal is None or not signal.receivers:
        return
    for receiver, result in signal.send_robust(sender=backend, **data):
        if isinstance(result, Exception):
            logger.error("relaycache: %s receiver %r failed", event, receiver,
                         exc_info=result)


def install() -> None:
    """Start sending the signals (idempotent; the app calls it in ``ready()``)."""
    events.add_listener(relay)

