"""Counters a backend keeps about itself, for dashboards and tests."""

from __future__ import annotations

import threading

COUNTERS = (
    "hits",
    "misses",
    "stale",
    "stores",
    "stores_rejected",
    "oversize",
    "singleflight_waits",
    "errors",
    "corrupt",
    "bypassed",
    "invalidations",
    "invalidations_retried",
    "near_hits",
    "near_misses",
    "near_evictions",
    "near_resets",
)


class Stats:
    """Monotonic counters, readable as attributes or with :meth:`snapshot`.

    ``misses`` counts every lookup that did not serve a value; ``stale`` the misses
    whose entry was found but rejected because a tag stamp changed, ``corrupt`` those
    whose entry could not be decoded. ``bypassed`` counts calls served without the cache
    (an invalidation still undelivered, or a query that cannot be cached safely).
    With a near cache, ``near_hits`` counts fetches served from the process,
    ``near_misses`` those that went to Redis, ``near_evictions`` local copies dropped
    for room, ``near_resets`` the times it was emptied because invalidation messages
    may have been lost (a tracking connection lost, a failover).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def incr(self, name: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {name: getattr(self, name) for name in COUNTERS}

    def reset(self) -> None:
        with self._lock:
            for name in COUNTERS:
                setattr(self, name, 0)

    def __repr__(self) -> str:
        return f"Stats({self.snapshot()})"
