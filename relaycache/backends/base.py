"""The storage contract every backend implements, and the cache API built on it.

A backend subclasses :class:`BaseCache` and implements the *storage primitives*
below (``fetch``, ``acquire_stamps``, ``store_if_current``, ``replace_stamps``,
``delete_keys``, ``clear``, the three lease primitives, and ``scan_keys``/
``describe_keys`` for the ``relaycache`` command). Each states what it must guarantee;
one left out raises ``NotImplementedError`` naming it. Two more, for a distributed
singleflight miss (``acquire_lease_and_fetch``, ``store_and_release_lease``), are made
of those by default; a networked backend overrides them to save round trips. The async
twins (``afetch``...) call the sync ones by default, which suits a backend without
I/O; a networked backend overrides them (the two composite ones call the async twins
of their parts). Everything that decides whether a result may be served or stored
lives in :mod:`relaycache.backends.flow`, once, and is carried out here by two drivers
(:meth:`BaseCache._run` and :meth:`BaseCache._arun`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..core.breaker import CircuitBreaker
from ..core.compression import Zstd
from ..core.keys import (
    MAX_KEY_LENGTH,
    bounded_key,
    check_key,
    check_tags,
    check_ttl,
    tags_problem,
)
from ..core.stats import Stats
from . import flow
from .flow import COMPUTE, FAILED, WAIT, Flow, Stamps, Undelivered

__all__ = ["FAILED", "BaseCache", "KeyDescription", "Stamps"]

logger = logging.getLogger("relaycache")

T = TypeVar("T")
_MAX_REMEMBERED_TAG_LISTS = 4096
_MAX_REMEMBERED_KEYS = 8192


@dataclass(frozen=True)
class KeyDescription:
    """What :meth:`BaseCache.describe_keys` reports of one key."""

    size: int
    """Bytes of the stored value."""
    ttl_ms: int | None
    """Milliseconds left; ``None`` when the key does not expire."""
    head: bytes | None = None
    """The value's first bytes (as many as asked for), ``None`` if not asked for."""
    memory: int | None = None
    """Bytes the store spends on the key, where it can tell (Redis ``MEMORY USAGE``)."""


class _ThreadFlights:
    """In-process singleflight for threads: the first caller of a key computes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, threading.Event] = {}

    def join(self, key: str) -> threading.Event | None:
        with self._lock:
            event = self._events.get(key)
            if event is None:
                self._events[key] = threading.Event()
            return event

    def leave(self, key: str) -> None:
        with self._lock:
            self._events.pop(key).set()


class _TaskFlights:
    """In-process singleflight for the tasks of each event loop."""

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
    """Tag-stamped cache over a key-value store; see the module docstring.

    :param default_ttl: seconds an entry lives when no ``ttl`` is given (``None``: no
        expiry).
    :param value_prefix: prefix of entry keys.
    :param meta_prefix: prefix of tag stamps and singleflight leases.
    :param stamp_ttl: seconds a tag stamp lives; defaults to twice ``default_ttl``
        and at least a day. An expired stamp only costs misses, never a stale read.
    :param lease_ttl: seconds a singleflight holder may compute before others proceed.
    :param max_entry_size: encoded entries larger than this (bytes, after compression)
        are not stored.
    :param breaker: the :class:`~relaycache.CircuitBreaker` of fail-open.
    :param compression: a :class:`relaycache.Zstd` to compress large entries
        (``None``: no compression).
    """

    errors: tuple[type[BaseException], ...] = ()
    """Exceptions of the primitives that mean "the store is unavailable": the call is
    then a miss (reads) or retried later (invalidations), never an error to the app."""
    implicit_tags: tuple[str, ...] = ()
    """Tags every entry carries besides its own (see ``RedisCache``)."""
    shared: bool = True
    """Whether other processes see this cache (``False``: private to the process)."""
    keeps_entries: bool = True
    """``False`` for a backend that never stores (``relaycache.testing.DisabledCache``):
    values are still encoded, so what cannot be cached still fails as it would."""

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
        self.stamp_ttl: float = stamp_ttl or max(2 * (default_ttl or 0), 86400)
        self.lease_ttl = lease_ttl
        self.max_entry_size = max_entry_size
        self.breaker = breaker or CircuitBreaker()
        self.compression = compression
        self.stats = Stats()
        self._flights = _ThreadFlights()
        self._task_flights = _TaskFlights()
        self.undelivered = Undelivered()
        """Invalidations and deletes not yet delivered (redelivered in the background)."""
        self._retry_lock = threading.Lock()
        self._retry_thread: threading.Thread | None = None
        self._last_retry_log = -5.0
        self._addressed: dict[tuple[str, ...], tuple[list[str], list[str]]] = {}
        self._value_keys: dict[str, str] = {}
        self._ttl_ms: dict[float, int] = {}

    # -- the storage contract ------------------------------------------------------

    def fetch(self, keys: list[str]) -> list[Any]:
        """The stored values of ``keys`` (``None`` for an absent or expired key), in
        ONE round trip: it is the whole of a cache hit. Entries come back as stored
        (bytes); stamps as ``str`` or UTF-8 ``bytes`` (other bytes, written by another
        client, are not a stamp: the flow treats them as none and replaces them)."""
        raise NotImplementedError(f"{type(self).__name__} must implement fetch()")

    def acquire_stamps(self, skeys: list[str]) -> Sequence[str | None]:
        """The current stamp of each key, atomically creating (with a new token from
        :func:`~relaycache.backends.flow.new_token`, expiring after ``stamp_ttl``)
        each one that is absent. Two concurrent callers must get the same stamp. A key
        holding what is not a stamp (bytes that are not UTF-8, written by another
        client) may come back as it is, or as ``None``: the flow replaces it, and
        stores nothing under it."""
        raise NotImplementedError(f"{type(self).__name__} must implement acquire_stamps()")

    def store_if_current(self, vkey: str, raw: bytes, skeys: list[str], stamps: list[str],
                         ttl_ms: int | None) -> bool:
        """Write ``raw`` under ``vkey`` (expiring after ``ttl_ms``, ``None``: never)
        only if every stamp key still holds the given stamp; ``False`` if not written.
        The check saves work; correctness rests on the read-side check, so it need not
        be atomic with the write where the store cannot make it so (Redis Cluster)."""
        raise NotImplementedError(f"{type(self).__name__} must implement store_if_current()")

    def replace_stamps(self, skeys: list[str]) -> bool:
        """Give each stamp key a new token (expiring after ``stamp_ttl``). Return
        ``False`` if the store refused to write (full): the stamps are then deleted
        with :meth:`delete_keys`, which invalidates just as surely."""
        raise NotImplementedError(f"{type(self).__name__} must implement replace_stamps()")

    def delete_keys(self, keys: list[str]) -> None:
        """Remove ``keys`` (absent ones are no error)."""
        raise NotImplementedError(f"{type(self).__name__} must implement delete_keys()")

    def clear(self) -> None:
        """Remove every key under this cache's two prefixes, and nothing else."""
        raise NotImplementedError(f"{type(self).__name__} must implement clear()")

    def acquire_lease(self, lkey: str, token: str, ttl_ms: int) -> bool:
        """Take the lease ``lkey`` for ``ttl_ms`` if no one holds it."""
        raise NotImplementedError(f"{type(self).__name__} must implement acquire_lease()")

    def release_lease(self, lkey: str, token: str) -> None:
        """Release ``lkey`` if ``token`` still holds it, and wake its waiters."""
        raise NotImplementedError(f"{type(self).__name__} must implement release_lease()")

    def acquire_lease_and_fetch(self, lkey: str, token: str, ttl_ms: int, vkey: str,
                                skeys: list[str]) -> list[Any] | None:
        """Take the lease as :meth:`acquire_lease` does; ``None`` if someone holds it.
        Taken, what :meth:`fetch` of ``[vkey, *skeys]`` returns read after the lease
        was taken (another process may have stored the entry meanwhile), except that a
        stamp that is absent may come back created, as :meth:`acquire_stamps` creates
        it (the flow acquires those that come back ``None`` itself).

        The default takes the lease, then fetches: two round trips for a networked
        store. ``RedisCache`` does both, and creates the absent stamps, in one."""
        if not self.acquire_lease(lkey, token, ttl_ms):
            return None
        try:
            return self.fetch([vkey, *skeys])
        except self.errors:
            # Taken but not looked at: the flow computes uncached (FAILED) without
            # knowing it holds the lease, so it is released here.
            with contextlib.suppress(*self.errors):
                self.release_lease(lkey, token)
            raise

    def store_and_release_lease(self, vkey: str, raw: bytes, skeys: list[str],
                                stamps: list[str], ttl_ms: int | None, lkey: str,
                                token: str) -> bool:
        """:meth:`store_if_current`, then :meth:`release_lease` (the lease is released
        even if the store raises); whether it wrote. Waiters woken by the release must
        find what was stored.

        The default calls the two: two round trips for a networked store.
        ``RedisCache`` does both in one script."""
        try:
            return self.store_if_current(vkey, raw, skeys, stamps, ttl_ms)
        finally:
            self.release_lease(lkey, token)

    def wait_lease(self, lkey: str, timeout: float) -> None:
        """Block until ``lkey`` is released or expires, or ``timeout`` seconds pass,
        without busy-spinning."""
        raise NotImplementedError(f"{type(self).__name__} must implement wait_lease()")

    def scan_keys(self) -> Iterator[str]:
        """Every key under this cache's prefixes (for ``relaycache stats``), without
        blocking the store (``SCAN``, never ``KEYS``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement scan_keys()")

    def describe_keys(self, keys: list[str], head: int = 0
                      ) -> list[KeyDescription | None]:
        """A :class:`KeyDescription` of each key (``None`` if absent), with the first
        ``head`` bytes of its value (for ``relaycache stats`` and ``inspect``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement describe_keys()")

    def ping(self) -> None:
        """Raise one of :attr:`errors` if the store cannot be reached."""
        self.fetch([self.meta_prefix + "ping"])

    async def afetch(self, keys: list[str]) -> list[Any]:
        return self.fetch(keys)

    async def aacquire_stamps(self, skeys: list[str]) -> Sequence[str | None]:
        return self.acquire_stamps(skeys)

    async def astore_if_current(self, vkey: str, raw: bytes, skeys: list[str],
                                stamps: list[str], ttl_ms: int | None) -> bool:
        return self.store_if_current(vkey, raw, skeys, stamps, ttl_ms)

    async def areplace_stamps(self, skeys: list[str]) -> bool:
        return self.replace_stamps(skeys)

    async def adelete_keys(self, keys: list[str]) -> None:
        self.delete_keys(keys)

    async def aclear(self) -> None:
        """Async :meth:`clear`."""
        self.clear()

    async def aacquire_lease(self, lkey: str, token: str, ttl_ms: int) -> bool:
        return self.acquire_lease(lkey, token, ttl_ms)

    async def arelease_lease(self, lkey: str, token: str) -> None:
        self.release_lease(lkey, token)

    async def aacquire_lease_and_fetch(self, lkey: str, token: str, ttl_ms: int,
                                       vkey: str, skeys: list[str]) -> list[Any] | None:
        # The async twins of the two it is made of: a backend that overrides those
        # (it does I/O) gets no blocking call from this default.
        if not await self.aacquire_lease(lkey, token, ttl_ms):
            return None
        try:
            return await self.afetch([vkey, *skeys])
        except self.errors:
            with contextlib.suppress(*self.errors):
                await self.arelease_lease(lkey, token)
            raise

    async def astore_and_release_lease(self, vkey: str, raw: bytes, skeys: list[str],
                                       stamps: list[str], ttl_ms: int | None, lkey: str,
                                       token: str) -> bool:
        try:
            return await self.astore_if_current(vkey, raw, skeys, stamps, ttl_ms)
        finally:
            await self.arelease_lease(lkey, token)

    async def await_lease(self, lkey: str, timeout: float) -> None:
        # The sync wait would block the event loop: poll the lease instead.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (await self.afetch([lkey]))[0] is not None:
            await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    # -- naming ---------------------------------------------------------------------

    def value_key(self, key: str) -> str:
        """The stored key of the entry ``key`` (a long one digested: ``bounded_key``).
        Remembered per key, since hits repeat the same ones: a hit pays a dict lookup,
        not the checks."""
        if key.__class__ is str:
            found = self._value_keys.get(key)
            if found is not None:
                return found
        check_key(key)
        if self._reserved and key.startswith(self._reserved):
            raise ValueError(f"cache keys must not start with {self._reserved!r} (meta_prefix)")
        vkey = self.value_prefix + (bounded_key(key) if len(key) > MAX_KEY_LENGTH else key)
        if len(self._value_keys) >= _MAX_REMEMBERED_KEYS:
            self._value_keys.clear()
        self._value_keys[key] = vkey
        return vkey

    def entry_tags(self, tags: Iterable[str]) -> tuple[list[str], list[str]]:
        """The tags an entry is stored under (the caller's and the backend's own) and
        their stamp keys. Remembered per tag list, since hits repeat the same few:
        callers must not change the lists."""
        if not isinstance(tags, (list, tuple)) and tags_problem(tags) is not None:
            check_tags(tags)  # raises: a string, a mapping, None are not lists of tags
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
        """The stamp keys of ``tags``."""
        return [f"{self.meta_prefix}t:{tag}" for tag in tags]

    def lease_key(self, key: str) -> str:
        return f"{self.meta_prefix}l:{key}"

    def ttl_ms(self, ttl: float | None) -> int | None:
        """``ttl`` (``None``: the default) in whole milliseconds, ``None`` for never.
        Remembered per ``int``/``float`` ttl: every call checks it, hits included."""
        if ttl.__class__ is int or ttl.__class__ is float:
            found = self._ttl_ms.get(ttl)
            if found is not None:
                return found
        ttl = check_ttl(ttl)
        if ttl is None:
            ttl = self.default_ttl
            return None if ttl is None else max(1, int(ttl * 1000))
        ms = max(1, int(ttl * 1000))
        if len(self._ttl_ms) >= _MAX_REMEMBERED_TAG_LISTS:
            self._ttl_ms.clear()
        self._ttl_ms[ttl] = ms
        return ms

    def current_stamps(self, tags: list[str]) -> dict[str, str | None]:
        """The current stamp of each tag (``None``: none, which matches no entry)."""
        result: dict[str, str | None] = {}
        for start in range(0, len(tags), 500):
            chunk = tags[start:start + 500]
            found = self.fetch(self.stamp_keys(chunk))
            result.update(zip(chunk, (flow.stamp_text(stamp) for stamp in found), strict=True))
        return result

    # -- the cache API ----------------------------------------------------------------

    def get(self, key: str, *, tags: Iterable[str] | None = None) -> tuple[bool, Any]:
        """``(hit, value)``: ``(True, value)`` for a valid entry (``None`` is a value),
        ``(False, None)`` when absent, invalidated, expired or unreadable.

        Without ``tags`` the entry is checked against the stamps of the tags it was
        stored with (it records them): two round trips. With ``tags``, one: an entry
        stored under other tags is then a miss.
        """
        return self._run(flow.get_entry(self, key, tags))

    async def aget(self, key: str, *, tags: Iterable[str] | None = None
                   ) -> tuple[bool, Any]:
        """Async :meth:`get`."""
        return await self._arun(flow.get_entry(self, key, tags))

    def set(self, key: str, value: Any, ttl: float | None = None, *,
            tags: Iterable[str] | None = None) -> bool:
        """Store ``value`` under the current stamps of ``tags`` for ``ttl`` seconds
        (``None``: ``default_ttl``); ``False`` if not stored (backend unavailable, an
        invalidation of this process undelivered, too large)."""
        return self._run(flow.set_entry(self, key, value, ttl, () if tags is None else tags))

    async def aset(self, key: str, value: Any, ttl: float | None = None, *,
                   tags: Iterable[str] | None = None) -> bool:
        """Async :meth:`set`."""
        return await self._arun(flow.set_entry(self, key, value, ttl,
                                               () if tags is None else tags))

    def delete(self, key: str) -> None:
        """Drop one entry (other entries under its tags stay valid); retried like an
        invalidation if the backend cannot be reached."""
        self._run(flow.delete_entry(self, key))

    async def adelete(self, key: str) -> None:
        """Async :meth:`delete`."""
        await self._arun(flow.delete_entry(self, key))

    def invalidate(self, tags: Iterable[str]) -> None:
        """Make every entry under any of ``tags`` unservable, in O(len(tags)).

        If the backend cannot be reached, the tags are kept and redelivered in the
        background until they land; meanwhile this process serves nothing from cache.
        """
        self._run(flow.invalidate(self, tags))

    async def ainvalidate(self, tags: Iterable[str]) -> None:
        """Async :meth:`invalidate`."""
        await self._arun(flow.invalidate(self, tags))

    def invalidate_tags(self, tags: Iterable[str]) -> None:
        """:meth:`invalidate`, under the relaycache 0.1 library's name."""
        self._run(flow.invalidate(self, tags))

    async def ainvalidate_tags(self, tags: Iterable[str]) -> None:
        """:meth:`ainvalidate`, under the relaycache 0.1 library's name."""
        await self._arun(flow.invalidate(self, tags))

    # -- the mapping protocol (``backend[key]``), as the relaycache 0.1 library's ----

    def __getitem__(self, key: str) -> Any:
        """The value of a valid entry (:meth:`get` without tags); ``KeyError`` on a miss."""
        hit, value = self.get(key)
        if not hit:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        """:meth:`set` with ``default_ttl`` and no tags."""
        self.set(key, value)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` has a valid entry (one that :meth:`get` would serve)."""
        return isinstance(key, str) and self.get(key)[0]

    def get_or_set(self, key: str, compute: Callable[[], T], *, ttl: float | None = None,
                   tags: Iterable[str] = (), singleflight: bool = False, store: bool = True,
                   strict: bool = True, lease_ttl: float | None = None,
                   lease_wait: float | None = None) -> T:
        """Serve ``key`` from the cache or compute, store and return it.

        Concurrent misses of one key in this process compute once (the others wait at
        most ``lease_ttl``); with ``singleflight`` a lease extends that to every
        process sharing the backend, and a waiter computes itself after ``lease_wait``
        seconds (``None``: twice ``lease_ttl``; ``lease_ttl=None``: the cache's).
        ``store=False`` serves hits but never stores (a read inside a snapshot
        transaction); ``strict=False`` returns a value the codec cannot encode uncached
        instead of raising ``TypeError``.
        """
        value: T = self._run(flow.get_or_set(self, self._flights, key, ttl, tags,
                                             singleflight, store, strict, lease_ttl,
                                             lease_wait), compute)
        return value

    async def aget_or_set(self, key: str, compute: Callable[[], Awaitable[T]], *,
                          ttl: float | None = None, tags: Iterable[str] = (),
                          singleflight: bool = False, store: bool = True,
                          strict: bool = True, lease_ttl: float | None = None,
                          lease_wait: float | None = None) -> T:
        """Async :meth:`get_or_set`: ``compute`` returns an awaitable."""
        return await self._arun(flow.get_or_set(self, self._task_flights, key, ttl, tags,
                                                singleflight, store, strict, lease_ttl,
                                                lease_wait), compute)

    @property
    def pending_invalidations(self) -> list[str]:
        """Tags whose invalidation has not reached the backend yet, sorted (for
        inspection: the cache's own calls never sort what is pending)."""
        return sorted(self.undelivered.snapshot()[0])

    # -- the two drivers ------------------------------------------------------------

    def _run(self, steps: Flow[T], compute: Callable[[], Any] | None = None) -> T:
        """Carry out a flow with the sync primitives. Whatever a step raises is thrown
        back into the flow, so its ``finally`` blocks (leave the flight, release the
        lease) run before the exception reaches the caller."""
        sent: Any = None
        error: BaseException | None = None
        while True:
            try:
                step, args = steps.send(sent) if error is None else steps.throw(error)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            error = None
            try:
                if step is COMPUTE:
                    sent = compute()  # type: ignore[misc]
                elif step is WAIT:
                    sent = args[0].wait(args[1])
                else:
                    sent = self._call(step.name, args)
            except BaseException as exc:
                error = exc

    async def _arun(self, steps: Flow[T],
                    compute: Callable[[], Awaitable[Any]] | None = None) -> T:
        """Carry out a flow with the async primitives (see :meth:`_run`); a cancelled
        task still leaves its flight and releases its lease."""
        sent: Any = None
        error: BaseException | None = None
        while True:
            try:
                step, args = steps.send(sent) if error is None else steps.throw(error)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            error = None
            try:
                if step is COMPUTE:
                    sent = await compute()  # type: ignore[misc]
                elif step is WAIT:
                    try:
                        sent = await asyncio.wait_for(args[0].wait(), args[1])
                    except TimeoutError:
                        sent = False
                else:
                    sent = await self._acall(step.aname, step.name, args)
            except BaseException as exc:
                error = exc

    def _call(self, name: str, args: tuple[Any, ...]) -> Any:
        """A primitive call: ``FAILED`` if the breaker is open or it raised one of
        :attr:`errors` (fail-open), its result otherwise."""
        if not self.breaker.allow():
            return FAILED
        try:
            result = getattr(self, name)(*args)
        except self.errors as exc:
            self._record_failure(name, exc)
            return FAILED
        self.breaker.record_success()
        return result

    async def _acall(self, aname: str, name: str, args: tuple[Any, ...]) -> Any:
        """Async :meth:`_call`."""
        if not self.breaker.allow():
            return FAILED
        try:
            result = await getattr(self, aname)(*args)
        except self.errors as exc:
            self._record_failure(name, exc)
            return FAILED
        self.breaker.record_success()
        return result

    def _record_failure(self, name: str, exc: BaseException) -> None:
        self.breaker.record_failure()
        self.stats.incr("errors")
        logger.warning("relaycache: %s failed on %r: %s", name, self, exc)

    # -- redelivery -----------------------------------------------------------------

    def redeliver_later(self, count: int) -> bool:
        """Log (at most every 5 s) and make sure the redelivery thread runs; ``False``."""
        now = time.monotonic()
        if now - self._last_retry_log >= 5.0:  # one line per 5 s, not one per call
            self._last_retry_log = now
            logger.error("relaycache: %d invalidation(s) not delivered yet; retrying", count)
        with self._retry_lock:
            if self._retry_thread is None or not self._retry_thread.is_alive():
                self._retry_thread = threading.Thread(
                    target=self._retry_loop, name="relaycache-invalidation-retry",
                    daemon=True)
                self._retry_thread.start()
        return False

    def redelivery_backend(self) -> BaseCache:
        """The backend whose primitives the redelivery thread calls: this one. The
        thread keeps no caller waiting, so it may wait on the store longer than a call
        would; ``RedisCache`` returns a twin whose client does, so that invalidations
        still land over a link slower than its ``socket_timeout``."""
        return self

    def _redeliver(self) -> bool:
        """One pass of the redelivery thread (:func:`flow.redeliver`) on
        :meth:`redelivery_backend`: :meth:`_run`, except that the circuit breaker does
        not hold the calls back (they report to it all the same). The breaker spares
        callers the wait on a store that does not answer in time; this thread keeps
        nobody waiting, and on a busy server callers would take every half-open trial
        (and fail it, over a slow link), leaving it none: its invalidations would never
        land while its callers' link stays slow."""
        target = self.redelivery_backend()
        steps = flow.redeliver(self)
        sent: Any = None
        while True:
            try:
                step, args = steps.send(sent)
            except StopIteration as done:
                return bool(done.value)
            try:
                sent = getattr(target, step.name)(*args)
            except self.errors as exc:
                self._record_failure(step.name, exc)
                sent = FAILED
            else:
                self.breaker.record_success()

    def _retry_loop(self) -> None:
        """Redeliver until nothing is pending, with backoff. It stops only under
        ``_retry_lock`` with nothing pending, and :meth:`redeliver_later` (called after
        the addition) starts a new thread under that lock: nothing added is left
        without a thread to deliver it."""
        delay = 0.05
        while True:
            time.sleep(delay)
            with self._retry_lock:
                if not self.undelivered:
                    self._retry_thread = None
                    return
            self.stats.incr("invalidations_retried")
            if self._redeliver():
                logger.warning("relaycache: pending invalidations delivered")
                delay = 0.05
            else:
                delay = min(delay * 2, self.breaker.cooldown or 1.0, 5.0)
