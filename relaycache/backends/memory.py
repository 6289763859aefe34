"""The embedded default: the same semantics as Redis, inside one process."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from .base import BaseCache, KeyDescription
from .flow import Stamps, new_token

__all__ = ["InMemoryCache"]


class InMemoryCache(BaseCache):
    """A thread-safe, size-bounded (LRU) cache for development and single processes.

    Entries are kept encoded, so every read returns a fresh copy and nothing a caller
    mutates reaches the cache. Stamps are bounded too: evicting one only makes the
    entries under its tag miss.

    :param max_entries: entries, stamps and leases kept at most (least recently used
        go first).
    Other options are :class:`~relaycache.backends.base.BaseCache`'s.
    """

    shared = False

    def __init__(self, default_ttl: float | None = 3600, *, max_entries: int = 10_000,
                 **options: Any) -> None:
        super().__init__(default_ttl=default_ttl, **options)
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._data: OrderedDict[str, tuple[Any, float | None]] = OrderedDict()
        self._lock = threading.RLock()
        self._released = threading.Condition(self._lock)

    def __repr__(self) -> str:
        return f"<InMemoryCache entries={len(self._data)}>"

    def _get(self, key: str, now: float) -> Any:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] is not None and item[1] <= now:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return item[0]

    def _put(self, key: str, value: Any, ttl_ms: float | None, now: float) -> None:
        self._data[key] = (value, None if ttl_ms is None else now + ttl_ms / 1000)
        self._data.move_to_end(key)
        # Entries, stamps and leases share one bound, so memory stays O(max_entries).
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    # -- the storage contract ------------------------------------------------------

    def fetch(self, keys: list[str]) -> list[Any]:
        # _get, unrolled: this loop is most of an InMemoryCache hit.
        now = time.monotonic()
        data = self._data
        found: list[Any] = []
        with self._lock:
            for key in keys:
                item = data.get(key)
                if item is None:
                    found.append(None)
                elif item[1] is not None and item[1] <= now:
                    del data[key]
                    found.append(None)
                else:
                    data.move_to_end(key)
                    found.append(item[0])
        return found

    def acquire_stamps(self, skeys: list[str]) -> Stamps:
        now = time.monotonic()
        stamp_ms = self.stamp_ttl * 1000
        with self._lock:
            stamps: Stamps = []
            for skey in skeys:
                stamp = self._get(skey, now)
                if stamp is None:
                    stamp = new_token()
                    self._put(skey, stamp, stamp_ms, now)
                stamps.append(stamp)
            return stamps

    def store_if_current(self, vkey: str, raw: bytes, skeys: list[str], stamps: list[str],
                         ttl_ms: int | None) -> bool:
        now = time.monotonic()
        with self._lock:
            if [self._get(k, now) for k in skeys] != stamps:
                return False
            self._put(vkey, raw, ttl_ms, now)
            return True

    def replace_stamps(self, skeys: list[str]) -> bool:
        now = time.monotonic()
        with self._lock:
            for skey in skeys:
                self._put(skey, new_token(), self.stamp_ttl * 1000, now)
        return True

    def delete_keys(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._released.notify_all()

    def acquire_lease(self, lkey: str, token: str, ttl_ms: int) -> bool:
        now = time.monotonic()
        with self._lock:
            if self._get(lkey, now) is not None:
                return False
            self._put(lkey, token, ttl_ms, now)
            return True

    def release_lease(self, lkey: str, token: str) -> None:
        with self._lock:
            if self._get(lkey, time.monotonic()) == token:
                del self._data[lkey]
            self._released.notify_all()

    def acquire_lease_and_fetch(self, lkey: str, token: str, ttl_ms: int, vkey: str,
                                skeys: list[str]) -> list[Any] | None:
        # Under one lock hold, as RedisCache's script runs; absent stamps are not
        # created here (the flow acquires them, as it did before). The async twin is
        # BaseCache's: the async twins of the two parts, in turn.
        with self._lock:
            if not self.acquire_lease(lkey, token, ttl_ms):
                return None
            return self.fetch([vkey, *skeys])

    def store_and_release_lease(self, vkey: str, raw: bytes, skeys: list[str],
                                stamps: list[str], ttl_ms: int | None, lkey: str,
                                token: str) -> bool:
        with self._lock:
            try:
                return self.store_if_current(vkey, raw, skeys, stamps, ttl_ms)
            finally:
                self.release_lease(lkey, token)

    def wait_lease(self, lkey: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                now = time.monotonic()
                item = self._data.get(lkey)
                if item is None or now >= deadline or (item[1] is not None and item[1] <= now):
                    return
                expires = item[1] if item[1] is not None else deadline
                self._released.wait(min(deadline, expires) - now)

    def scan_keys(self) -> Iterator[str]:
        now = time.monotonic()
        with self._lock:
            live = [key for key, (_, expires) in self._data.items()
                    if expires is None or expires > now]
        yield from live

    def describe_keys(self, keys: list[str], head: int = 0) -> list[KeyDescription | None]:
        now = time.monotonic()
        described: list[KeyDescription | None] = []
        with self._lock:
            for key in keys:
                item = self._data.get(key)
                if item is None or (item[1] is not None and item[1] <= now):
                    described.append(None)
                    continue
                value, expires = item
                data = value if isinstance(value, bytes) else str(value).encode()
                ttl = None if expires is None else max(0, int((expires - now) * 1000))
                described.append(KeyDescription(size=len(data), ttl_ms=ttl,
                                                head=data[:head] if head else None))
        return described

    def keys(self) -> list[str]:
        """Every live key, entries and stamps alike (for inspection and tests)."""
        return list(self.scan_keys())
