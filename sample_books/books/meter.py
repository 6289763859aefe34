"""What one request asked of the cache, shown at the foot of every page.

``with CacheMeter() as meter:`` around a view's cache work gives the hit/miss badge, its
time and ``meter.reads``: each cached read, hit or miss, with its SQL or function and
its tags. The reads come from RelayCache's events
(``relaycache.core.events.add_listener``): ``"hit"``/``"miss"`` for every lookup,
``"query"`` (SQL and tags) for a cached queryset's rows, ``"uncacheable"`` for a read
that ran uncached, ``"invalidated"`` for the tags a write dropped.

The listener list is process-wide and the dev server answers requests in threads, so a
meter keeps only the events of the thread that opened it (the backend's own counters,
``backend.stats``, would mix concurrent requests). Its hits and misses are those of the
listed reads: a singleflight's second look at a missing entry is not counted again.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from relaycache.core import events


@dataclass
class CachedRead:
    key: str                  # the entry's key without the backend's prefix
    outcome: str              # "hit", "miss" or "uncacheable"
    kind: str = "entry"       # "query" (a cached queryset), "function" (@cache) or "entry"
    label: str = ""           # the SQL, the call, or (unknown) the key
    tags: list[str] = field(default_factory=list)
    note: str = ""            # why an uncacheable read was not cached
    vkey: str = ""            # the key as stored, to match a "query" event to its lookup


class CacheMeter:
    """Badge, time and cached reads of the cache work inside a ``with`` block."""

    def __init__(self, backend: Any = None) -> None:
        self.backend = backend if backend is not None else settings.CACHE_BACKEND
        self.reads: list[CachedRead] = []
        self.invalidated: list[str] = []
        self.hits = self.misses = 0
        self.ms = 0.0
        self.badge = "miss"
        self._calls: dict[str, tuple[str, list[str]]] = {}
        self._thread = threading.get_ident()

    # -- the block --------------------------------------------------------------------

    def __enter__(self) -> CacheMeter:
        self._thread = threading.get_ident()
        events.add_listener(self._record)
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.ms = (time.perf_counter() - self.started) * 1000
        events.remove_listener(self._record)
        self.hits = sum(read.outcome == "hit" for read in self.reads)
        self.misses = sum(read.outcome == "miss" for read in self.reads)
        self.badge = "hit" if self.hits and not self.misses else "miss"

    def call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """Call a ``@cache`` function, noting its key and tags so that its lookup is
        listed as ``name(args)`` with the tags it declares."""
        key, tags = function.resolve(args, kwargs)
        shown = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])
        self._calls[function.backend.value_key(key)] = (f"{function.__name__}({shown})",
                                                        sorted(tags))
        return function(*args, **kwargs)

    # -- events -----------------------------------------------------------------------

    def _record(self, event: str, backend: Any, **data: Any) -> None:
        if threading.get_ident() != self._thread or backend is not self.backend:
            return
        if event in ("hit", "miss"):
            self._lookup(event, data["key"])
        elif event == "query":
            self._query(data)
        elif event == "uncacheable":
            self.reads.append(CachedRead(key="", outcome="uncacheable", kind="query",
                                         label=data.get("sql") or "",
                                         note=data.get("reason", "")))
        elif event == "invalidated":
            self.invalidated.extend(t for t in data["tags"] if t not in self.invalidated)

    def _lookup(self, outcome: str, vkey: str) -> None:
        last = self.reads[-1] if self.reads else None
        if last is not None and last.vkey == vkey and last.outcome == outcome == "miss":
            return  # a singleflight's second look after taking the lease: one read
        key = vkey.removeprefix(self.backend.value_prefix)
        read = CachedRead(key=key, outcome=outcome, label=key, vkey=vkey)
        if vkey in self._calls:
            read.kind = "function"
            read.label, read.tags = self._calls[vkey]
        self.reads.append(read)

    def _query(self, data: dict[str, Any]) -> None:
        """A cached queryset's rows: the lookup just recorded gets its SQL and tags."""
        vkey = self.backend.value_key(data["key"])
        for read in reversed(self.reads):
            if read.vkey == vkey and read.kind == "entry":
                read.kind, read.label, read.tags = "query", data["sql"], list(data["tags"])
                return
        self.reads.append(CachedRead(key=data["key"], outcome="hit" if data["hit"] else "miss",
                                     kind="query", label=data["sql"], tags=list(data["tags"]),
                                     vkey=vkey))
