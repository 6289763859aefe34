"""A minimal third-party backend: a plain dict, one lock and expiry times."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from relaycache.backends.base import BaseCache, KeyDescription
from relaycache.backends.flow import new_token


class DictCache(BaseCache):
    """Entries, stamps and leases as ``key: (value, expires_at)`` in one dict."""

    shared = False  # other processes do not see this dict
    errors = ()  # a dict is never unavailable: there is nothing to fail open on

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._items: dict[str, tuple[Any, float | None]] = {}
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)  # wakes wait_lease()

    def _live(self, key: str) -> Any:
        """The value of ``key``, ``None`` if absent or expired. Hold the lock."""
        value, expires = self._items.get(key, (None, None))
        if expires is not None and expires <= time.monotonic():
            del self._items[key]
            return None
        return value

    def _put(self, key: str, value: Any, ttl_ms: float | None) -> None:
        expires = None if ttl_ms is None else time.monotonic() + ttl_ms / 1000
        self._items[key] = (value, expires)

    def fetch(self, keys: list[str]) -> list[Any]:
        with self._lock:
            return [self._live(key) for key in keys]

    def acquire_stamps(self, skeys: list[str]) -> list[str]:
        with self._lock:  # check-and-create under one lock: callers agree on a stamp
            for skey in skeys:
                if self._live(skey) is None:
                    self._put(skey, new_token(), self.stamp_ttl * 1000)
            return [self._items[skey][0] for skey in skeys]

    def store_if_current(self, vkey: str, raw: bytes, skeys: list[str], stamps: list[str],
                         ttl_ms: int | None) -> bool:
        with self._lock:
            if [self._live(skey) for skey in skeys] != stamps:
                return False
            self._put(vkey, raw, ttl_ms)
            return True

    def replace_stamps(self, skeys: list[str]) -> bool:
        with self._lock:
            for skey in skeys:
                self._put(skey, new_token(), self.stamp_ttl * 1000)
        return True  # a dict is never full

    def delete_keys(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._released.notify_all()

    def acquire_lease(self, lkey: str, token: str, ttl_ms: int) -> bool:
        with self._lock:
            if self._live(lkey) is not None:
                return False
            self._put(lkey, token, ttl_ms)
            return True

    def release_lease(self, lkey: str, token: str) -> None:
        with self._lock:
            if self._live(lkey) == token:
                del self._items[lkey]
                self._released.notify_all()

    def wait_lease(self, lkey: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._live(lkey) is not None:
                expires = self._items[lkey][1] or deadline
                left = min(deadline, expires) - time.monotonic()
                if left <= 0:
                    return
                self._released.wait(left)  # until a release, or the lease expires

    def scan_keys(self) -> Iterator[str]:
        with self._lock:
            keys = [key for key in list(self._items) if self._live(key) is not None]
        yield from keys

    def describe_keys(self, keys: list[str], head: int = 0) -> list[KeyDescription | None]:
        described: list[KeyDescription | None] = []
        with self._lock:
            for key in keys:
                value = self._live(key)
                if value is None:
                    described.append(None)
                    continue
                data = value if isinstance(value, bytes) else value.encode()
                expires = self._items[key][1]
                ttl_ms = None if expires is None else int((expires - time.monotonic()) * 1000)
                described.append(KeyDescription(size=len(data), ttl_ms=ttl_ms,
                                                head=data[:head] if head else None))
        return described
