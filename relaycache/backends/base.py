"""What every backend shares: tag stamps, entry validation, singleflight, fail-open.

A backend subclass supplies a handful of storage primitives (``_fetch``, ``_store``,
``_acquire_stamps``, ``_replace_stamps``, leases, ...); everything that decides whether
a result may be served or stored lives here, once, for both sync and async callers.

An entry is ``orjson([tags, stamps, value])``. It is served only if its tags are the
ones asked for and every stamp equals that tag's current stamp; the stamps are taken
*before* the value is computed, so an invalidation that lands while it is computed
makes it unservable (no stale set), and a missing stamp is never equal to anything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import orjson

from .. import events
from ..breaker import CircuitBreaker
from ..codec import from_json, may_hold_markers, to_json
from ..compression import Zstd
from ..keys import check_key, check_tags, check_ttl
from ..stats import Stats

logger = logging.getLogger("relaycache")

T = TypeVar("T")
_MAX_REMEMBERED_TAG_LISTS = 4096
Stamps = list[str | None]


class _Failed:
    """Result of a backend call that failed or was not attempted."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "FAILED"


FAILED: Any = _Failed()


class _Unstorable:
    """A computed value to hand back without storing it."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def new_token() -> str:
    return os.urandom(8).hex()


class _Undelivered:
    """Writes (tag invalidations, entry deletes) that have not reached the backend.

    Each addition gets a new generation, and a delivery forgets only what it sent: an
    invalidation of the same tag requested while a delivery was in flight may be newer
    than that delivery, so it stays until it is delivered itself.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = 0
        self.tags: dict[str, int] = {}
        self.keys: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self.tags or self.keys)

    def add(self, tags: Iterable[str] = (), keys: Iterable[str] = ()) -> None:
        with self._lock:
            self._generation += 1
            self.tags.update(dict.fromkeys(tags, self._generation))
            self.keys.update(dict.fromkeys(keys, self._generation))

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        with self._lock:
            return dict(self.tags), dict(self.keys)

    def forget(self, tags: dict[str, int] | None = None, keys: dict[str, int] | None = None
               ) -> None:
        with self._lock:
            for sent, pending in ((tags or {}, self.tags), (keys or {}, self.keys)):
                for name, generation in sent.items():
                    if pending.get(name) == generation:
                        del pending[name]


class _LocalFlights:
    """In-process singleflight: the first caller of a key computes, the others wait."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, threading.Event] = {}

    def join(self, key: str) -> threading.Event | None:
        """``None`` makes the caller the leader; otherwise an event to wait on."""
        with self._lock:
            event = self._events.get(key)
            if event is None:
                self._events[key] = threading.Event()
            return event

    def leave(self, key: str) -> None:
        with self._lock:
            self._events.pop(key).set()


class _AsyncLocalFlights:
    def __init__(self) -> None:
        self._events: dict[tuple[int, str], asyncio.Event] = {}

    def join(self, key: str) -> asyncio.Event | None:
        slot = (id(asyncio.get_running_loop()), key)
        event = self._events.get(slot)
        if event is None:
            self._events[slot] = asyncio.Event()
        return event

    def leave(self, key: str) -> None:
        self._events.pop((id(asyncio.get_running_loop()), key)).set()


class BaseCache:
    """Tag-stamped cache logic over a key-value store; see the module docstring.

    :param default_ttl: seconds an entry lives when no ``ttl`` is given (``None``: no
        expiry).
    :param value_prefix: prefix of entry keys.
    :param meta_prefix: prefix of tag stamps and singleflight leases.
    :param stamp_ttl: seconds a tag stamp lives; defaults to twice ``default_ttl``
        and at least a day. An expired stamp only costs misses, never a stale read.
    :param lease_ttl: seconds a singleflight holder may compute before others proceed.
    :param max_entry_size: encoded entries larger than this (bytes, after compression)
        are not stored.
    :param compression: a :class:`relaycache.compression.Zstd` to compress large
        entries (``None``: no compression).
    """

    errors: tuple[type[BaseException], ...] = ()
    implicit_tags: tuple[str, ...] = ()
    """Tags every entry carries besides its own (see ``RedisCache``)."""

    def __init__(
        self,
        *,
        default_ttl: float | None = 3600,
        value_prefix: str = "rc:",
        meta_prefix: str = "rc:meta:",
        stamp_ttl: float | None = None,
        lease_ttl: float = 30.0,
        max_entry_size: int = 1024 * 1024,
        breaker: CircuitBreaker | None = None,
        compression: Zstd | None = None,
    ) -> None:
        check_ttl(default_ttl)
        if not value_prefix or not meta_prefix or value_prefix == meta_prefix:
            raise ValueError("value_prefix and meta_prefix must be distinct and non-empty")
        if meta_prefix.startswith(value_prefix):
            self._reserved = meta_prefix[len(value_prefix) :]
        else:
            self._reserved = ""
        if value_prefix.startswith(meta_prefix):
            raise ValueError("value_prefix must not start with meta_prefix")
        self.default_ttl = default_ttl
        self.value_prefix = value_prefix
        self.meta_prefix = meta_prefix
        self.stamp_ttl = stamp_ttl or max(2 * (default_ttl or 0), 86400)
        self.lease_ttl = lease_ttl
        self.max_entry_size = max_entry_size
        self.breaker = breaker or CircuitBreaker()
        self.compression = compression
        self.stats = Stats()
        self._flights = _LocalFlights()
        self._aflights = _AsyncLocalFlights()
        self._pending = _Undelivered()
        self._retry_lock = threading.Lock()
        self._retry_thread: threading.Thread | None = None
        self._last_retry_log = -5.0
        self._addressed: dict[tuple[str, ...], tuple[list[str], list[str]]] = {}

    # -- storage primitives a backend provides -------------------------------------

    def _fetch(self, vkey: str, skeys: list[str]) -> tuple[Any, Stamps]:
        """The raw entry and the current stamps, in ONE round trip."""
        raise NotImplementedError

    def _acquire_stamps(self, skeys: list[str]) -> list[str]:
        """Current stamps, creating the missing ones."""
        raise NotImplementedError

    def _store(self, vkey: str, raw: bytes, skeys: list[str], stamps: list[str],
               ttl_ms: int | None) -> bool:
        """Write the entry only if ``stamps`` are still current."""
        raise NotImplementedError

    def _replace_stamps(self, skeys: list[str]) -> None:
        raise NotImplementedError

    def _delete(self, vkey: str) -> None:
        raise NotImplementedError

    def _clear(self) -> None:
        raise NotImplementedError

    def _acquire_lease(self, lkey: str, token: str, ttl_ms: int) -> bool:
        raise NotImplementedError

    def _release_lease(self, lkey: str, token: str) -> None:
        raise NotImplementedError

    def _wait_lease(self, lkey: str, timeout: float) -> None:
        """Block until the lease is released or expired, or ``timeout`` passes."""
        raise NotImplementedError

    # Async primitives default to the sync ones, which suits a backend without I/O.
    async def _afetch(self, vkey: str, skeys: list[str]) -> tuple[Any, Stamps]:
        return self._fetch(vkey, skeys)

    async def _aacquire_stamps(self, skeys: list[str]) -> list[str]:
        return self._acquire_stamps(skeys)

    async def _astore(self, vkey: str, raw: bytes, skeys: list[str], stamps: list[str],
                      ttl_ms: int | None) -> bool:
        return self._store(vkey, raw, skeys, stamps, ttl_ms)

    async def _areplace_stamps(self, skeys: list[str]) -> None:
        self._replace_stamps(skeys)

    async def _aacquire_lease(self, lkey: str, token: str, ttl_ms: int) -> bool:
        return self._acquire_lease(lkey, token, ttl_ms)

    async def _arelease_lease(self, lkey: str, token: str) -> None:
        self._release_lease(lkey, token)

    async def _await_lease(self, lkey: str, timeout: float) -> None:
        await asyncio.sleep(min(timeout, 0.05))

    # -- naming ---------------------------------------------------------------------

    def value_key(self, key: str) -> str:
        check_key(key)
        if self._reserved and key.startswith(self._reserved):
            raise ValueError(f"cache keys must not start with {self._reserved!r} (meta_prefix)")
        return self.value_prefix + key

    def _entry_tags(self, tags: Iterable[str]) -> tuple[list[str], list[str]]:
        """The tags an entry is stored under (the caller's and the backend's own) and
        their stamp keys. Remembered per tag list, since hits repeat the same few:
        callers must not change the lists."""
        if isinstance(tags, (str, bytes)):
            check_tags(tags)  # raises: a single string is not a list of tags
        given = tuple(tags)
        try:
            found = self._addressed.get(given)
        except TypeError:  # an unhashable tag
            check_tags(given)
            raise
        if found is None:
            checked = check_tags(given)
            if self.implicit_tags:
                checked = sorted({*checked, *self.implicit_tags})
            found = (checked, self.stamp_keys(checked))
            if len(self._addressed) >= _MAX_REMEMBERED_TAG_LISTS:
                self._addressed.clear()
            self._addressed[given] = found
        return found

    def stamp_keys(self, tags: list[str]) -> list[str]:
        return [f"{self.meta_prefix}t:{tag}" for tag in tags]

    def lease_key(self, key: str) -> str:
        return f"{self.meta_prefix}l:{key}"

    def _ttl_ms(self, ttl: float | None) -> int | None:
        ttl = check_ttl(ttl)
        if ttl is None:
            ttl = self.default_ttl
        return None if ttl is None else max(1, int(ttl * 1000))

    # -- guarded calls --------------------------------------------------------------

    def _guard(self, primitive: Callable[..., T], *args: Any) -> T:
        if not self.breaker.allow():
            return FAILED
        try:
            result = primitive(*args)
        except self.errors as exc:
            self._record_failure(primitive, exc)
            return FAILED
        self.breaker.record_success()
        return result

    async def _aguard(self, primitive: Callable[..., Awaitable[T]], *args: Any) -> T:
        if not self.breaker.allow():
            return FAILED
        try:
            result = await primitive(*args)
        except self.errors as exc:
            self._record_failure(primitive, exc)
            return FAILED
        self.breaker.record_success()
        return result

    def _record_failure(self, primitive: Callable[..., Any], exc: BaseException) -> None:
        self.breaker.record_failure()
        self.stats.incr("errors")
        logger.warning("relaycache: %s failed on %r: %s", primitive.__name__.lstrip("_"),
                       self, exc)

    def _usable(self) -> bool:
        """Reads are served only when no invalidation of ours is still undelivered."""
        if self._pending:
            self._deliver_pending()
        if self._pending:
            self.stats.incr("bypassed")
            return False
        return True

    # -- entries --------------------------------------------------------------------

    def _pack(self, tags: list[str], stamps: Stamps, value: Any) -> bytes:
        return orjson.dumps([tags, stamps, to_json(value)])

    def _unpack(self, vkey: str, raw: Any, tags: list[str], stamps: Stamps
                ) -> tuple[bool, Any]:
        if raw is None:
            return self._missed(vkey, "absent")
        try:
            if self.compression is not None:
                raw = self.compression.decompress(raw)
            entry_tags, entry_stamps, data = orjson.loads(raw)
            fresh = entry_tags == tags and entry_stamps == stamps and None not in stamps
            value = from_json(data) if fresh and may_hold_markers(raw) else data
        except (ValueError, TypeError, KeyError, LookupError) as exc:
            logger.warning("relaycache: corrupt entry treated as a miss: %s", exc)
            return self._missed(vkey, "corrupt")
        if not fresh:
            return self._missed(vkey, "stale")
        self.stats.incr("hits")
        if events.listeners:
            events.emit("hit", self, key=vkey)
        return True, value

    def _missed(self, vkey: str, reason: str) -> tuple[bool, None]:
        self.stats.incr("misses")
        if reason != "absent":
            self.stats.incr(reason)
        if events.listeners:
            events.emit("miss", self, key=vkey, reason=reason)
        return False, None

    def _encode_for_store(self, tags: list[str], stamps: Stamps, value: Any) -> bytes | None:
        raw = self._pack(tags, stamps, value)
        if self.compression is not None:
            raw = self.compression.compress(raw)
        if len(raw) > self.max_entry_size:
            self.stats.incr("oversize")
            logger.info("relaycache: entry of %d bytes over max_entry_size not stored", len(raw))
            return None
        return raw

    # -- public API -----------------------------------------------------------------

    def get(self, key: str, default: Any = None, *, tags: Iterable[str] = ()) -> Any:
        """The cached value, or ``default`` when absent or invalidated."""
        vkey, (tags, skeys) = self.value_key(key), self._entry_tags(tags)
        if not self._usable():
            return default
        fetched = self._guard(self._fetch, vkey, skeys)
        if fetched is FAILED:
            return default
        found, value = self._unpack(vkey, fetched[0], tags, fetched[1])
        return value if found else default

    def set(self, key: str, value: Any, ttl: float | None = None, *,
            tags: Iterable[str] = ()) -> bool:
        """Store ``value`` under the current stamps of ``tags``; ``False`` if not stored."""
        vkey, (tags, skeys) = self.value_key(key), self._entry_tags(tags)
        ttl_ms = self._ttl_ms(ttl)
        to_json(value)  # unencodable values fail here, whatever the backend's health
        if not self._usable():
            return False
        stamps = self._guard(self._acquire_stamps, skeys)
        if stamps is FAILED:
            return False
        return self._store_entry(vkey, tags, skeys, stamps, value, ttl_ms)

    def delete(self, key: str) -> None:
        """Drop one entry (other entries under its tags stay valid); retried like an
        invalidation if the backend cannot be reached."""
        self._pending.add(keys=[self.value_key(key)])
        self._deliver_pending()

    def clear(self) -> None:
        """Remove every key under this cache's prefixes, and nothing else."""
        self._clear()

    def invalidate(self, tags: Iterable[str]) -> None:
        """Make every entry under any of ``tags`` unservable, in O(len(tags)).

        If the backend cannot be reached, the tags are kept and redelivered in the
        background until they land; meanwhile this process serves nothing from cache.
        """
        tags = check_tags(tags)
        if not tags:
            return
        self.stats.incr("invalidations")
        self._pending.add(tags=tags)
        self._deliver_pending()
        if events.listeners:
            events.emit("invalidated", self, tags=tags)

    async def ainvalidate(self, tags: Iterable[str]) -> None:
        tags = check_tags(tags)
        if not tags:
            return
        self.stats.incr("invalidations")
        self._pending.add(tags=tags)
        batch, _ = self._pending.snapshot()
        if await self._aguard(self._areplace_stamps, self.stamp_keys(sorted(batch))) is FAILED:
            self._schedule_retry()
        else:
            self._pending.forget(tags=batch)
        if events.listeners:
            events.emit("invalidated", self, tags=tags)

    @property
    def pending_invalidations(self) -> list[str]:
        """Tags whose invalidation has not reached the backend yet."""
        return sorted(self._pending.snapshot()[0])

    def _deliver_pending(self) -> bool:
        """Deliver undelivered invalidations and deletes; ``False`` if some remain."""
        tags, keys = self._pending.snapshot()
        if tags:
            if self._guard(self._replace_stamps, self.stamp_keys(sorted(tags))) is FAILED:
                return self._retry_later(len(tags) + len(keys))
            self._pending.forget(tags=tags)
        for vkey, generation in keys.items():
            if self._guard(self._delete, vkey) is FAILED:
                return self._retry_later(len(keys))
            self._pending.forget(keys={vkey: generation})
        return True

    def _retry_later(self, count: int) -> bool:
        now = time.monotonic()
        if now - self._last_retry_log >= 5.0:  # one line per 5 s, not one per call
            self._last_retry_log = now
            logger.error("relaycache: %d invalidation(s) not delivered yet; retrying", count)
        self._schedule_retry()
        return False

    def _schedule_retry(self) -> None:
        with self._retry_lock:
            if self._retry_thread is not None and self._retry_thread.is_alive():
                return
            self._retry_thread = threading.Thread(
                target=self._retry_loop, name="relaycache-invalidation-retry", daemon=True
            )
            self._retry_thread.start()

    def _retry_loop(self) -> None:
        delay = 0.05
        while self._pending:
            time.sleep(delay)
            self.stats.incr("invalidations_retried")
            if self._deliver_pending():
                logger.warning("relaycache: pending invalidations delivered")
                return
            delay = min(delay * 2, self.breaker.cooldown or 1.0, 5.0)

    # -- read-through ---------------------------------------------------------------

    def get_or_set(self, key: str, compute: Callable[[], T], *, ttl: float | None = None,
                   tags: Iterable[str] = (), singleflight: bool = False, store: bool = True,
                   strict: bool = True) -> T:
        """Serve ``key`` from the cache or compute, store and return it.

        Concurrent misses of one key in this process compute once; with
        ``singleflight`` a lease extends that to every process sharing the backend.
        ``store=False`` serves hits but never stores (a read inside a snapshot
        transaction); ``strict=False`` returns an unencodable value uncached instead of
        raising ``TypeError``.
        """
        vkey, (tags, skeys) = self.value_key(key), self._entry_tags(tags)
        ttl_ms = self._ttl_ms(ttl)
        if not self._usable():
            return compute()
        found, value, stamps = self._lookup(vkey, tags, skeys)
        if found:
            return value
        if stamps is FAILED or not store:
            return compute()
        if not strict:
            compute = self._lenient(compute)
        event = self._flights.join(vkey)
        if event is not None:
            self.stats.incr("singleflight_waits")
            event.wait(self.lease_ttl)
            found, value, stamps = self._lookup(vkey, tags, skeys)
            if found or stamps is FAILED:
                return value if found else compute()
            return self._miss(vkey, tags, skeys, stamps, ttl_ms, compute, singleflight)
        try:
            return self._miss(vkey, tags, skeys, stamps, ttl_ms, compute, singleflight)
        finally:
            self._flights.leave(vkey)

    def _lenient(self, compute: Callable[[], T]) -> Callable[[], T]:
        """Wrap ``compute`` so that a value the codec cannot encode is not stored."""

        def checked() -> Any:
            value = compute()
            try:
                to_json(value)
            except TypeError as exc:
                self.stats.incr("bypassed")
                logger.debug("relaycache: result not cached: %s", exc)
                return _Unstorable(value)
            return value

        return checked  # type: ignore[return-value]

    def _lookup(self, vkey: str, tags: list[str], skeys: list[str]) -> tuple[bool, Any, Any]:
        fetched = self._guard(self._fetch, vkey, skeys)
        if fetched is FAILED:
            return False, None, FAILED
        found, value = self._unpack(vkey, fetched[0], tags, fetched[1])
        return found, value, fetched[1]

    def _miss(self, vkey: str, tags: list[str], skeys: list[str], stamps: Stamps,
              ttl_ms: int | None, compute: Callable[[], T], singleflight: bool) -> T:
        if not singleflight:
            return self._compute_and_store(vkey, tags, skeys, stamps, ttl_ms, compute)
        lkey, token = self.lease_key(vkey), new_token()
        lease_ms = max(1, int(self.lease_ttl * 1000))
        deadline = time.monotonic() + 2 * self.lease_ttl
        while True:
            leased = self._guard(self._acquire_lease, lkey, token, lease_ms)
            if leased is FAILED:
                return compute()
            if leased:
                try:
                    found, value, stamps = self._lookup(vkey, tags, skeys)
                    if found or stamps is FAILED:
                        return value if found else compute()
                    return self._compute_and_store(vkey, tags, skeys, stamps, ttl_ms, compute)
                finally:
                    self._guard(self._release_lease, lkey, token)
            self.stats.incr("singleflight_waits")
            self._guard(self._wait_lease, lkey, max(0.0, deadline - time.monotonic()))
            found, value, stamps = self._lookup(vkey, tags, skeys)
            if found or stamps is FAILED:
                return value if found else compute()
            if time.monotonic() >= deadline:
                return self._compute_and_store(vkey, tags, skeys, stamps, ttl_ms, compute)

    def _compute_and_store(self, vkey: str, tags: list[str], skeys: list[str], stamps: Stamps,
                           ttl_ms: int | None, compute: Callable[[], T]) -> T:
        if None in stamps:
            stamps = self._guard(self._acquire_stamps, skeys)
        value = compute()
        if type(value) is _Unstorable:
            return value.value
        if stamps is FAILED:
            to_json(value)
        else:
            self._store_entry(vkey, tags, skeys, stamps, value, ttl_ms)
        return value

    def _store_entry(self, vkey: str, tags: list[str], skeys: list[str], stamps: Stamps,
                     value: Any, ttl_ms: int | None) -> bool:
        raw = self._encode_for_store(tags, stamps, value)
        if raw is None:
            return False
        stored = self._guard(self._store, vkey, raw, skeys, stamps, ttl_ms)
        return self._count_store(stored)

    def _count_store(self, stored: Any) -> bool:
        if stored is FAILED:
            return False
        self.stats.incr("stores" if stored else "stores_rejected")
        return bool(stored)

    # -- async read-through (same flow, awaiting the backend) ------------------------

    async def aget_or_set(self, key: str, compute: Callable[[], Awaitable[T]], *,
                          ttl: float | None = None, tags: Iterable[str] = (),
                          singleflight: bool = False) -> T:
        """Async :meth:`get_or_set`: ``compute`` returns an awaitable."""
        vkey, (tags, skeys) = self.value_key(key), self._entry_tags(tags)
        ttl_ms = self._ttl_ms(ttl)
        if not self._usable():
            return await compute()
        found, value, stamps = await self._alookup(vkey, tags, skeys)
        if found:
            return value
        if stamps is FAILED:
            return await compute()
        event = self._aflights.join(vkey)
        if event is not None:
            self.stats.incr("singleflight_waits")
            await event.wait()
            found, value, stamps = await self._alookup(vkey, tags, skeys)
            if found or stamps is FAILED:
                return value if found else await compute()
            return await self._amiss(vkey, tags, skeys, stamps, ttl_ms, compute, singleflight)
        try:
            return await self._amiss(vkey, tags, skeys, stamps, ttl_ms, compute, singleflight)
        finally:
            self._aflights.leave(vkey)

    async def _alookup(self, vkey: str, tags: list[str], skeys: list[str]
                       ) -> tuple[bool, Any, Any]:
        fetched = await self._aguard(self._afetch, vkey, skeys)
        if fetched is FAILED:
            return False, None, FAILED
        found, value = self._unpack(vkey, fetched[0], tags, fetched[1])
        return found, value, fetched[1]

    async def _amiss(self, vkey: str, tags: list[str], skeys: list[str], stamps: Stamps,
                     ttl_ms: int | None, compute: Callable[[], Awaitable[T]],
                     singleflight: bool) -> T:
        if not singleflight:
            return await self._acompute_and_store(vkey, tags, skeys, stamps, ttl_ms, compute)
        lkey, token = self.lease_key(vkey), new_token()
        lease_ms = max(1, int(self.lease_ttl * 1000))
        deadline = time.monotonic() + 2 * self.lease_ttl
        while True:
            leased = await self._aguard(self._aacquire_lease, lkey, token, lease_ms)
            if leased is FAILED:
                return await compute()
            if leased:
                try:
                    found, value, stamps = await self._alookup(vkey, tags, skeys)
                    if found or stamps is FAILED:
                        return value if found else await compute()
                    return await self._acompute_and_store(vkey, tags, skeys, stamps, ttl_ms,
                                                          compute)
                finally:
                    await self._aguard(self._arelease_lease, lkey, token)
            self.stats.incr("singleflight_waits")
            await self._aguard(self._await_lease, lkey, max(0.0, deadline - time.monotonic()))
            found, value, stamps = await self._alookup(vkey, tags, skeys)
            if found or stamps is FAILED:
                return value if found else await compute()
            if time.monotonic() >= deadline:
                return await self._acompute_and_store(vkey, tags, skeys, stamps, ttl_ms,
                                                      compute)

    async def _acompute_and_store(self, vkey: str, tags: list[str], skeys: list[str],
                                  stamps: Stamps, ttl_ms: int | None,
                                  compute: Callable[[], Awaitable[T]]) -> T:
        if None in stamps:
            stamps = await self._aguard(self._aacquire_stamps, skeys)
        value = await compute()
        if stamps is FAILED:
            to_json(value)
            return value
        raw = self._encode_for_store(tags, stamps, value)
        if raw is not None:
            self._count_store(await self._aguard(self._astore, vkey, raw, skeys, stamps,
                                                 ttl_ms))
        return value
