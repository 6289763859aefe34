"""``AsyncRedisKeyLock``: the relaycache 0.1 library's distributed lock, on our leases.

The lock is the singleflight lease of :mod:`relaycache.backends.flow` under a name of
the caller's choosing: ``SET key token NX PX ttl``, released by the script that deletes
the key only while it holds the owner's token and wakes waiters on a channel named
after it. A waiter sleeps on that channel (or until the key's TTL runs out), it does
not poll; a holder that dies blocks the others only until its lock expires.
"""

from __future__ import annotations

import math
import os
import time
from types import TracebackType
from typing import Any

from .redis import RELEASE_SCRIPT, await_release


class AsyncRedisKeyLock:
    """A lock on ``key`` shared by every process using the same Redis.

    :param client: a ``redis.asyncio.Redis`` (``decode_responses`` either way).
    :param key: the Redis key that holds the lock while it is taken.
    :param ttl_ms: milliseconds after which a lock not released expires (its holder
        died or hangs), so that others can take it.
    :param timeout_sec: seconds :meth:`acquire` waits for the lock before giving up.

    ``async with lock:`` acquires (``TimeoutError`` if it cannot in time) and releases.
    """

    def __init__(self, client: Any, key: str, ttl_ms: int = 5000,
                 timeout_sec: float = 2.0) -> None:
        if not isinstance(key, str) or not key:
            raise TypeError(f"AsyncRedisKeyLock needs a non-empty str key, got {key!r}")
        if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int | float) or not (
                math.isfinite(ttl_ms) and ttl_ms >= 1):
            raise ValueError(f"ttl_ms must be at least 1 (milliseconds), got {ttl_ms!r}")
        if isinstance(timeout_sec, bool) or not isinstance(timeout_sec, int | float) or not (
                math.isfinite(timeout_sec) and timeout_sec >= 0):
            raise ValueError(f"timeout_sec must be finite seconds >= 0, got {timeout_sec!r}")
        self.client = client
        self.key = key
        self.ttl_ms = int(ttl_ms)
        self.timeout_sec = float(timeout_sec)
        self.token: str | None = None
        """This holder's token while it holds the lock, else ``None``."""
        self._release = client.register_script(RELEASE_SCRIPT)

    def __repr__(self) -> str:
        state = "held" if self.token else "not held"
        return f"<AsyncRedisKeyLock {self.key!r} {state}>"

    async def acquire(self) -> bool:
        """Take the lock, waiting up to ``timeout_sec``; ``False`` if it stayed taken."""
        token = os.urandom(16).hex()
        deadline = time.monotonic() + self.timeout_sec
        while True:
            if await self.client.set(self.key, token, nx=True, px=self.ttl_ms):
                self.token = token
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await await_release(self.client, self.key, remaining)

    async def release(self) -> bool:
        """Release the lock if this holder still owns it; ``False`` if it did not (never
        taken, or expired and perhaps taken by another since): another holder's lock
        is never removed."""
        token, self.token = self.token, None
        if token is None:
            return False
        return bool(await self._release(keys=[self.key], args=[token]))

    async def __aenter__(self) -> AsyncRedisKeyLock:
        if not await self.acquire():
            raise TimeoutError(f"lock {self.key!r} not acquired within {self.timeout_sec} s")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.release()
