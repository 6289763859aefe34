"""Every decision about serving or storing an entry, written once for sync and async.

Each public operation of :class:`~relaycache.backends.base.BaseCache` is a generator
here. It never does I/O itself: it yields *steps* (call a storage primitive, compute
the value, wait for another caller's computation) and receives their results. The
cache's two drivers, ``BaseCache._run`` and ``BaseCache._arun``, carry the steps out,
one calling the sync primitives, the other awaiting their ``a``-twins; a primitive
that raises one of the backend's ``errors`` comes back as :data:`FAILED` (fail-open).
This is the shape of httpx's ``Auth.auth_flow``.

An entry is ``orjson([tags, stamps, value])``. It is served only if its tags are the
ones asked for and every stamp equals that tag's current stamp; the stamps are taken
*before* the value is computed, so an invalidation that lands while it is computed
makes it unservable (no stale set), and a missing stamp is never equal to anything.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Generator, Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import orjson

from ..core import events
from ..core.codec import from_json, may_hold_markers, to_json
from ..core.keys import check_tags

if TYPE_CHECKING:
    from .base import BaseCache

logger = logging.getLogger("relaycache")

T = TypeVar("T")
Stamps = list[str | None]


class _Failed:
    """The result of a primitive that failed or was not attempted (breaker open)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "FAILED"


FAILED: Any = _Failed()


class Primitive:
    """A storage primitive of the contract: its sync name and its ``a``-twin's."""

    __slots__ = ("aname", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.aname = "a" + name

    def __repr__(self) -> str:
        return f"<primitive {self.name}>"


FETCH = Primitive("fetch")
ACQUIRE_STAMPS = Primitive("acquire_stamps")
STORE_IF_CURRENT = Primitive("store_if_current")
REPLACE_STAMPS = Primitive("replace_stamps")
DELETE_KEYS = Primitive("delete_keys")
ACQUIRE_LEASE = Primitive("acquire_lease")
RELEASE_LEASE = Primitive("release_lease")
WAIT_LEASE = Primitive("wait_lease")

COMPUTE = Primitive("compute")
"""Step: call the caller's ``compute`` (awaited by the async driver); no arguments."""
WAIT = Primitive("wait")
"""Step: wait on an in-process flight's event, ``(event, timeout)``."""

Step = tuple[Primitive, tuple[Any, ...]]
Flow = Generator[Step, Any, T]
_NO_ARGS: tuple[Any, ...] = ()


def new_token() -> str:
    return os.urandom(8).hex()


class Flight(Protocol):
    """An in-process singleflight registry (threads, or one event loop's tasks)."""

    def join(self, key: str) -> Any:
        """``None`` makes the caller the leader; otherwise an event to wait on."""

    def leave(self, key: str) -> None: ...


# -- entries ----------------------------------------------------------------------

def stamp_text(value: Any) -> Any:
    """A stamp as ``str`` (stores may hand back UTF-8 bytes)."""
    return value.decode() if isinstance(value, bytes) else value


def pack(tags: list[str], stamps: Stamps, value: Any) -> bytes:
    return orjson.dumps([tags, stamps, to_json(value)])


def encode_for_store(cache: BaseCache, tags: list[str], stamps: Stamps, value: Any
                     ) -> bytes | None:
    """The stored form of ``value``, or ``None`` when it is too large to store.
    Raises ``TypeError`` for a value the codec cannot encode."""
    raw = pack(tags, stamps, value)
    if cache.compression is not None:
        raw = cache.compression.compress(raw)
    if len(raw) > cache.max_entry_size:
        cache.stats.incr("oversize")
        logger.info("relaycache: entry of %d bytes over max_entry_size not stored", len(raw))
        return None
    return raw


def _unpack(cache: BaseCache, vkey: str, raw: Any, tags: list[str], stamps: Stamps
            ) -> tuple[bool, Any]:
    if raw is None:
        return _missed(cache, vkey, "absent")
    try:
        if cache.compression is not None:
            raw = cache.compression.decompress(raw)
        entry_tags, entry_stamps, data = orjson.loads(raw)
        fresh = entry_tags == tags and entry_stamps == stamps and None not in stamps
        value = from_json(data) if fresh and may_hold_markers(raw) else data
    except (ValueError, TypeError, KeyError, LookupError) as exc:
        logger.warning("relaycache: corrupt entry treated as a miss: %s", exc)
        return _missed(cache, vkey, "corrupt")
    if not fresh:
        return _missed(cache, vkey, "stale")
    cache.stats.incr("hits")
    if events.listeners:
        events.emit("hit", cache, key=vkey)
    return True, value


def _missed(cache: BaseCache, vkey: str, reason: str) -> tuple[bool, None]:
    cache.stats.incr("misses")
    if reason != "absent":
        cache.stats.incr(reason)
    if events.listeners:
        events.emit("miss", cache, key=vkey, reason=reason)
    return False, None


# -- flows ------------------------------------------------------------------------

def lookup(cache: BaseCache, vkey: str, tags: list[str], skeys: list[str]
           ) -> Flow[tuple[bool, Any, Any]]:
    """``(found, value, stamps)``: one round trip for the entry and its stamps;
    ``stamps`` is :data:`FAILED` when the backend could not be asked."""
    fetched = yield FETCH, ([vkey, *skeys],)
    if fetched is FAILED:
        return False, None, FAILED
    stamps = [stamp_text(stamp) for stamp in fetched[1:]]
    found, value = _unpack(cache, vkey, fetched[0], tags, stamps)
    return found, value, stamps


def usable(cache: BaseCache) -> Flow[bool]:
    """Reads are served only when no invalidation of ours is still undelivered (call
    it when ``cache.undelivered`` is not empty: hits skip it)."""
    if (yield from deliver(cache)):
        return True
    cache.stats.incr("bypassed")
    return False


def get_entry(cache: BaseCache, key: str, default: Any, tags: Iterable[str]) -> Flow[Any]:
    vkey, (tags, skeys) = cache.value_key(key), cache.entry_tags(tags)
    if cache.undelivered and not (yield from usable(cache)):
        return default
    found, value, _ = yield from lookup(cache, vkey, tags, skeys)
    return value if found else default


def set_entry(cache: BaseCache, key: str, value: Any, ttl: float | None, tags: Iterable[str]
        ) -> Flow[bool]:
    vkey, (tags, skeys) = cache.value_key(key), cache.entry_tags(tags)
    ttl_ms = cache.ttl_ms(ttl)
    to_json(value)  # unencodable values fail here, whatever the backend's health
    if cache.undelivered and not (yield from usable(cache)):
        return False
    stamps = yield ACQUIRE_STAMPS, (skeys,)
    if stamps is FAILED:
        return False
    return (yield from _store(cache, vkey, tags, skeys, stamps, value, ttl_ms))


def get_or_set(cache: BaseCache, flights: Flight, key: str, ttl: float | None,
               tags: Iterable[str], singleflight: bool, store: bool, strict: bool
               ) -> Flow[Any]:
    """Serve ``key`` or compute it (the ``COMPUTE`` step), store it and return it."""
    vkey, (tags, skeys) = cache.value_key(key), cache.entry_tags(tags)
    ttl_ms = cache.ttl_ms(ttl)
    if cache.undelivered and not (yield from usable(cache)):
        return (yield COMPUTE, _NO_ARGS)
    found, value, stamps = yield from lookup(cache, vkey, tags, skeys)
    if found:
        return value
    if stamps is FAILED or not store:
        return (yield COMPUTE, _NO_ARGS)
    miss = _Miss(cache, vkey, tags, skeys, ttl_ms, strict)
    event = flights.join(vkey)
    if event is not None:
        # Another caller in this process computes: wait for it (at most a lease), then
        # serve what it stored, or compute if it failed or stored nothing.
        cache.stats.incr("singleflight_waits")
        yield WAIT, (event, cache.lease_ttl)
        found, value, stamps = yield from lookup(cache, vkey, tags, skeys)
        if found or stamps is FAILED:
            return value if found else (yield COMPUTE, _NO_ARGS)
        return (yield from miss.run(stamps, singleflight))
    try:
        return (yield from miss.run(stamps, singleflight))
    finally:
        flights.leave(vkey)


class _Miss:
    """One miss of one key: lease (with distributed singleflight), compute, store."""

    __slots__ = ("cache", "skeys", "strict", "tags", "ttl_ms", "vkey")

    def __init__(self, cache: BaseCache, vkey: str, tags: list[str], skeys: list[str],
                 ttl_ms: int | None, strict: bool) -> None:
        self.cache, self.vkey, self.tags, self.skeys = cache, vkey, tags, skeys
        self.ttl_ms, self.strict = ttl_ms, strict

    def run(self, stamps: Stamps, singleflight: bool) -> Flow[Any]:
        if not singleflight:
            return (yield from self.compute_and_store(stamps))
        cache = self.cache
        lkey, token = cache.lease_key(self.vkey), new_token()
        lease_ms = max(1, int(cache.lease_ttl * 1000))
        deadline = time.monotonic() + 2 * cache.lease_ttl
        while True:
            leased = yield ACQUIRE_LEASE, (lkey, token, lease_ms)
            if leased is FAILED:
                return (yield COMPUTE, _NO_ARGS)
            if leased:
                try:
                    found, value, stamps = yield from lookup(cache, self.vkey, self.tags,
                                                             self.skeys)
                    if found or stamps is FAILED:
                        return value if found else (yield COMPUTE, _NO_ARGS)
                    return (yield from self.compute_and_store(stamps))
                finally:
                    yield RELEASE_LEASE, (lkey, token)
            cache.stats.incr("singleflight_waits")
            yield WAIT_LEASE, (lkey, max(0.0, deadline - time.monotonic()))
            found, value, stamps = yield from lookup(cache, self.vkey, self.tags, self.skeys)
            if found or stamps is FAILED:
                return value if found else (yield COMPUTE, _NO_ARGS)
            if time.monotonic() >= deadline:
                return (yield from self.compute_and_store(stamps))

    def compute_and_store(self, stamps: Any) -> Flow[Any]:
        cache = self.cache
        if None in stamps:
            stamps = yield ACQUIRE_STAMPS, (self.skeys,)
        value = yield COMPUTE, _NO_ARGS
        if stamps is FAILED:
            if self.strict:
                to_json(value)
            return value
        try:
            yield from _store(cache, self.vkey, self.tags, self.skeys, stamps, value,
                              self.ttl_ms)
        except TypeError as exc:
            if self.strict:
                raise
            cache.stats.incr("bypassed")
            logger.debug("relaycache: result not cached: %s", exc)
        return value


def _store(cache: BaseCache, vkey: str, tags: list[str], skeys: list[str], stamps: Stamps,
           value: Any, ttl_ms: int | None) -> Flow[bool]:
    raw = encode_for_store(cache, tags, stamps, value)
    if raw is None or not cache.keeps_entries:
        return False
    stored = yield STORE_IF_CURRENT, (vkey, raw, skeys, stamps, ttl_ms)
    if stored is FAILED:
        return False
    cache.stats.incr("stores" if stored else "stores_rejected")
    return bool(stored)


def delete_entry(cache: BaseCache, key: str) -> Flow[None]:
    cache.undelivered.add(keys=[cache.value_key(key)])
    yield from deliver(cache)


def invalidate(cache: BaseCache, tags: Iterable[str]) -> Flow[None]:
    checked = check_tags(tags)
    if not checked:
        return
    cache.stats.incr("invalidations")
    cache.undelivered.add(tags=checked)
    yield from deliver(cache)
    if events.listeners:
        events.emit("invalidated", cache, tags=checked)


def deliver(cache: BaseCache) -> Flow[bool]:
    """Deliver undelivered invalidations and deletes; ``False`` if some remain (a
    background thread then retries them)."""
    pending = cache.undelivered
    tags, keys = pending.snapshot()
    if tags:
        skeys = cache.stamp_keys(sorted(tags))
        replaced = yield REPLACE_STAMPS, (skeys,)
        if replaced is False:
            # The store refused new stamps (a full Redis under noeviction refuses
            # writes but not deletes): a missing stamp invalidates as surely.
            replaced = yield DELETE_KEYS, (skeys,)
        if replaced is FAILED:
            return cache.redeliver_later(len(tags) + len(keys))
        pending.forget(tags=tags)
    if keys:
        if (yield DELETE_KEYS, (sorted(keys),)) is FAILED:
            return cache.redeliver_later(len(tags) + len(keys))
        pending.forget(keys=keys)
    return True


# -- bookkeeping ------------------------------------------------------------------

class Undelivered:
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
