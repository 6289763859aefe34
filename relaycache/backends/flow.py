"""Every decision about serving or storing an entry, written once for sync and async.

Each public operation of :class:`~relaycache.backends.base.BaseCache` is a generator
here. It never does I/O itself: it yields *steps* (call a storage primitive, compute
the value, wait for another caller's computation) and receives their results. The
cache's two drivers, ``BaseCache._run`` and ``BaseCache._arun``, carry the steps out,
one calling the sync primitives, the other awaiting their ``a``-twins; a primitive
that raises one of the backend's ``errors`` comes back as :data:`FAILED` (fail-open).
This is the shape of httpx's ``Auth.auth_flow``.

An entry is ``orjson([tags, stamps, value])``. It is served only if its tags are the
ones asked for (by ``get`` without tags: the ones it was stored under, which it
records) and every stamp equals that tag's current stamp (:func:`_judge`, the one
decision every read goes through); the stamps are taken
*before* the value is computed, so an invalidation that lands while it is computed
makes it unservable (no stale set), and a missing stamp is never equal to anything.
"""

from __future__ import annotations

import itertools
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
ACQUIRE_LEASE_AND_FETCH = Primitive("acquire_lease_and_fetch")
STORE_AND_RELEASE_LEASE = Primitive("store_and_release_lease")
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
    """A stamp as ``str`` (stores may hand back UTF-8 bytes); ``None`` for bytes that
    are not UTF-8, which another client wrote there: like a missing stamp, it matches
    no entry."""
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return None
    return value


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


class _Corrupt:
    """What :func:`_read` returns for bytes that are not an entry."""

    __slots__ = ()


_CORRUPT = _Corrupt()
Entry = tuple[bytes, Any, Any, Any]
"""A decoded entry: its (decompressed) bytes, tags, stamps and encoded value."""


def _read(cache: BaseCache, raw: Any) -> Entry | _Corrupt | None:
    """Decode a fetched entry: ``None`` if absent, :data:`_CORRUPT` if not an entry."""
    if raw is None:
        return None
    try:
        if cache.compression is not None:
            raw = cache.compression.decompress(raw)
        entry_tags, entry_stamps, data = orjson.loads(raw)
    except (ValueError, TypeError, KeyError, LookupError) as exc:
        logger.warning("relaycache: corrupt entry treated as a miss: %s", exc)
        return _CORRUPT
    entry: Entry = (raw, entry_tags, entry_stamps, data)
    return entry


def _texts(current: list[Any]) -> Stamps:
    """Fetched stamps as ``str`` (:func:`stamp_text` of each), in one pass when they
    are all UTF-8 bytes, as Redis returns them."""
    try:
        return [stamp.decode() for stamp in current]
    except (AttributeError, UnicodeDecodeError):  # str (InMemoryCache), None, garbage
        return [stamp_text(stamp) for stamp in current]


Judged = tuple[bool, Any, Any, list[str]]
"""``(found, value, stamps, garbage)``: see :func:`_judge`."""


def _judge(cache: BaseCache, vkey: str, tags: list[str], skeys: list[str],
           fetched: list[Any], entry: Entry | _Corrupt | None = None) -> Judged:
    """The one decision of every read, on what one ``FETCH`` of ``[vkey, *skeys]``
    returned: served only if the entry's tags are ``tags`` and its stamps the current
    ones, none missing. No I/O, so a hit is straight-line code in the calling flow.

    ``(True, value, stamps, [])`` on a hit. On a miss, counted with its reason,
    ``(False, None, stamps, garbage)``: ``stamps`` the current ones as ``str`` (``None``
    where absent), for the miss to store under without asking again; ``garbage`` the
    stamp keys that hold what is not a stamp, which the caller replaces. ``entry``:
    the entry already decoded (``get`` without tags decodes it to learn its tags)."""
    current = fetched[1:]
    if entry is None:
        entry = _read(cache, fetched[0])
    if entry is None:
        reason = "absent"
    elif entry is _CORRUPT:
        reason = "corrupt"
    else:
        raw, entry_tags, entry_stamps, data = entry  # type: ignore[misc]
        # Stamps as stored are str; InMemoryCache's compare equal as fetched, Redis's
        # bytes are decoded first.
        if entry_stamps != current:
            current = _texts(current)
        if entry_tags == tags and entry_stamps == current and None not in current:
            try:
                value = from_json(data) if may_hold_markers(raw) else data
            except (ValueError, TypeError, KeyError, LookupError) as exc:
                logger.warning("relaycache: corrupt entry treated as a miss: %s", exc)
                reason = "corrupt"
            else:
                cache.stats.incr("hits")
                if events.listeners:
                    events.emit("hit", cache, key=vkey)
                return True, value, current, []
        else:
            reason = "stale"
    stamps = [stamp_text(stamp) for stamp in current]
    garbage: list[str] = []
    if None in stamps:
        garbage = [skey for skey, raw_stamp, stamp in zip(skeys, fetched[1:], stamps,
                                                           strict=True)
                   if stamp is None and raw_stamp is not None]  # there, but not a stamp
        if garbage:
            reason = "corrupt"
    _missed(cache, vkey, reason)
    return False, None, stamps, garbage


def _missed(cache: BaseCache, vkey: str, reason: str) -> None:
    cache.stats.incr("misses")
    if reason != "absent":
        cache.stats.incr(reason)
    if events.listeners:
        events.emit("miss", cache, key=vkey, reason=reason)


# -- flows ------------------------------------------------------------------------

def lookup(cache: BaseCache, vkey: str, tags: list[str] | None, skeys: list[str]
           ) -> Flow[tuple[bool, Any, Any]]:
    """``(found, value, stamps)``; ``stamps`` is :data:`FAILED` when the backend could
    not be asked.

    With ``tags`` (and their stamp keys ``skeys``, as ``BaseCache.entry_tags`` gives
    them), one round trip fetches the entry and the current stamps. With ``tags=None``
    (``get`` without tags) the entry's own tags are used: the entry first, then the
    stamps of the tags it was stored under, two round trips. Either way the entry is
    judged by :func:`_judge`: its stored tags must be these (the backend's implicit
    ones included), its stamps the current ones."""
    entry: Entry | _Corrupt | None = None
    if tags is None:
        fetched = yield FETCH, ([vkey],)
        if fetched is FAILED:
            return False, None, FAILED
        entry = _read(cache, fetched[0])
        if entry is None or entry is _CORRUPT:
            _missed(cache, vkey, "absent" if entry is None else "corrupt")
            return False, None, []
        try:
            tags, skeys = cache.entry_tags(entry[1])  # type: ignore[index]
        except (TypeError, ValueError):  # not tags: not an entry of ours
            _missed(cache, vkey, "corrupt")
            return False, None, []
        found_stamps = (yield FETCH, (skeys,)) if skeys else []
        if found_stamps is FAILED:
            return False, None, FAILED
        fetched = [fetched[0], *found_stamps]
    else:
        fetched = yield FETCH, ([vkey, *skeys],)
        if fetched is FAILED:
            return False, None, FAILED
    found, value, stamps, garbage = _judge(cache, vkey, tags, skeys, fetched, entry)
    if garbage:
        yield from _replace_garbage(garbage)
    return found, value, stamps


def _replace_garbage(skeys: list[str]) -> Flow[None]:
    """Replace stamp keys that hold what is not a stamp (another client wrote there),
    as an invalidation of their tags would, which is always safe: their tags can be
    cached under again."""
    logger.warning("relaycache: %d tag stamp(s) held something else; replaced", len(skeys))
    if (yield REPLACE_STAMPS, (skeys,)) is False:
        yield DELETE_KEYS, (skeys,)  # a full store refuses the write, not the delete


def _current_stamps(cache: BaseCache, skeys: list[str]) -> Flow[Any]:
    """The stamps to store under (``ACQUIRE_STAMPS``), or :data:`FAILED`: the store
    could not be asked, or a stamp key held what is not a stamp (the primitive creates
    absent ones, so ``None`` means that too). That one is then replaced, counted as
    corrupt, and nothing is stored this time: never under garbage."""
    acquired = yield ACQUIRE_STAMPS, (skeys,)
    if acquired is FAILED:
        return FAILED
    stamps = [stamp_text(stamp) for stamp in acquired]
    if None in stamps:
        yield from _replace_garbage([skey for skey, stamp in zip(skeys, stamps, strict=True)
                                     if stamp is None])
        cache.stats.incr("corrupt")
        return FAILED
    return stamps


def _bypass(cache: BaseCache) -> None:
    """Count a call made without the cache because an invalidation or delete of this
    process is still undelivered: until it lands, nothing is served from the cache or
    stored in it (fresh after our own writes). No delivery is tried here: the
    redelivery thread does it, so the call waits on nothing."""
    cache.stats.incr("bypassed")


def get_entry(cache: BaseCache, key: str, tags: Iterable[str] | None
              ) -> Flow[tuple[bool, Any]]:
    """``(hit, value)`` of ``key``: :func:`lookup` with the caller's tags, or with the
    entry's own when ``tags`` is ``None``."""
    vkey = cache.value_key(key)
    checked, skeys = (None, []) if tags is None else cache.entry_tags(tags)
    if cache.undelivered:
        _bypass(cache)
        return False, None
    found, value, _ = yield from lookup(cache, vkey, checked, skeys)
    return found, value


def set_entry(cache: BaseCache, key: str, value: Any, ttl: float | None, tags: Iterable[str]
        ) -> Flow[bool]:
    vkey, (tags, skeys) = cache.value_key(key), cache.entry_tags(tags)
    ttl_ms = cache.ttl_ms(ttl)
    to_json(value)  # unencodable values fail here, whatever the backend's health
    if cache.undelivered:
        _bypass(cache)
        return False
    stamps = yield from _current_stamps(cache, skeys)
    if stamps is FAILED:
        return False
    return (yield from _store(cache, vkey, tags, skeys, stamps, value, ttl_ms))


def get_or_set(cache: BaseCache, flights: Flight, key: str, ttl: float | None,
               tags: Iterable[str], singleflight: bool, store: bool, strict: bool,
               lease_ttl: float | None = None, lease_wait: float | None = None
               ) -> Flow[Any]:
    """Serve ``key`` or compute it (the ``COMPUTE`` step), store it and return it.

    A hit is one ``FETCH`` and straight-line code (:func:`_judge`); a miss keeps what
    that fetch returned: its stamps are stored under, only absent ones are acquired.
    ``lease_ttl`` (seconds; ``None``: the cache's) bounds how long a computing caller
    holds others back; ``lease_wait`` (``None``: twice ``lease_ttl``) how long a
    distributed waiter waits before it computes itself."""
    vkey, (tags, skeys) = cache.value_key(key), cache.entry_tags(tags)
    ttl_ms = cache.ttl_ms(ttl)
    if cache.undelivered:
        _bypass(cache)
        return (yield COMPUTE, _NO_ARGS)
    fetched = yield FETCH, ([vkey, *skeys],)
    if fetched is FAILED:
        return (yield COMPUTE, _NO_ARGS)
    found, value, stamps, garbage = _judge(cache, vkey, tags, skeys, fetched)
    if found:
        return value
    if garbage:
        yield from _replace_garbage(garbage)
    if not store:
        return (yield COMPUTE, _NO_ARGS)
    lease = cache.lease_ttl if lease_ttl is None else lease_ttl
    miss = _Miss(cache, vkey, tags, skeys, ttl_ms, strict, lease,
                 2 * lease if lease_wait is None else lease_wait)
    event = flights.join(vkey)
    if event is not None:
        # Another caller in this process computes: wait for it (at most a lease), then
        # serve what it stored, or compute if it failed or stored nothing.
        cache.stats.incr("singleflight_waits")
        yield WAIT, (event, lease)
        found, value, stamps = yield from lookup(cache, vkey, tags, skeys)
        if found or stamps is FAILED:
            return value if found else (yield COMPUTE, _NO_ARGS)
        return (yield from miss.run(stamps, singleflight))
    try:
        return (yield from miss.run(stamps, singleflight))
    finally:
        flights.leave(vkey)


class _Lease:
    """A distributed singleflight lease: ``held`` once taken, until released by the
    store (:data:`STORE_AND_RELEASE_LEASE`) or alone (:data:`RELEASE_LEASE`)."""

    __slots__ = ("held", "key", "token")

    def __init__(self, key: str, token: str) -> None:
        self.key, self.token, self.held = key, token, False


class _Miss:
    """One miss of one key: lease (with distributed singleflight), compute, store."""

    __slots__ = ("cache", "lease_ttl", "lease_wait", "skeys", "strict", "tags", "ttl_ms",
                 "vkey")

    def __init__(self, cache: BaseCache, vkey: str, tags: list[str], skeys: list[str],
                 ttl_ms: int | None, strict: bool, lease_ttl: float, lease_wait: float
                 ) -> None:
        self.cache, self.vkey, self.tags, self.skeys = cache, vkey, tags, skeys
        self.ttl_ms, self.strict = ttl_ms, strict
        self.lease_ttl, self.lease_wait = lease_ttl, lease_wait

    def run(self, stamps: Stamps, singleflight: bool) -> Flow[Any]:
        """Compute and store; with ``singleflight``, under a lease, in three round trips
        in all on Redis: the lookup (already made), one that takes the lease and looks
        again (``ACQUIRE_LEASE_AND_FETCH``: another process may have stored it between
        our lookup and the lease, or it would be computed twice), and one that stores
        and releases (``STORE_AND_RELEASE_LEASE``). The lease is released alone if
        nothing is stored (a hit under the lease, nothing to store, compute raised) or
        the store failed."""
        if not singleflight:
            return (yield from self.compute_and_store(stamps))
        cache = self.cache
        lease = _Lease(cache.lease_key(self.vkey), new_token())
        lease_ms = max(1, int(self.lease_ttl * 1000))
        deadline = time.monotonic() + self.lease_wait
        while True:
            try:
                fetched = yield ACQUIRE_LEASE_AND_FETCH, (lease.key, lease.token, lease_ms,
                                                          self.vkey, self.skeys)
            except GeneratorExit:
                raise
            except BaseException:
                # Cancelled (or interrupted) inside the primitive: the lease may be ours.
                yield RELEASE_LEASE, (lease.key, lease.token)
                raise
            if fetched is FAILED:
                return (yield COMPUTE, _NO_ARGS)
            if fetched is not None:
                lease.held = True
                try:
                    found, value, stamps, garbage = _judge(cache, self.vkey, self.tags,
                                                           self.skeys, fetched)
                    if found:
                        return value
                    if garbage:
                        yield from _replace_garbage(garbage)
                    return (yield from self.compute_and_store(stamps, lease))
                finally:
                    if lease.held:
                        lease.held = False
                        yield RELEASE_LEASE, (lease.key, lease.token)
            cache.stats.incr("singleflight_waits")
            yield WAIT_LEASE, (lease.key, max(0.0, deadline - time.monotonic()))
            found, value, stamps = yield from lookup(cache, self.vkey, self.tags, self.skeys)
            if found or stamps is FAILED:
                return value if found else (yield COMPUTE, _NO_ARGS)
            if time.monotonic() >= deadline:
                return (yield from self.compute_and_store(stamps))

    def compute_and_store(self, stamps: Any, lease: _Lease | None = None) -> Flow[Any]:
        """Compute, and store under ``stamps``: the ones the lookup fetched, taken
        before the computation; only absent ones are acquired (one round trip). With
        ``lease`` (held), the store releases it in the same round trip."""
        cache = self.cache
        if None in stamps:
            stamps = yield from _complete_stamps(cache, self.skeys, stamps)
        value = yield COMPUTE, _NO_ARGS
        if stamps is FAILED:
            if self.strict:
                to_json(value)
            return value
        try:
            yield from _store(cache, self.vkey, self.tags, self.skeys, stamps, value,
                              self.ttl_ms, lease)
        except TypeError as exc:
            if self.strict:
                raise
            cache.stats.incr("bypassed")
            logger.debug("relaycache: result not cached: %s", exc)
        return value


def _complete_stamps(cache: BaseCache, skeys: list[str], stamps: Stamps) -> Flow[Any]:
    """``stamps`` (as a lookup fetched them) with each absent one acquired
    (:func:`_current_stamps`), or :data:`FAILED`. Those present are not asked again:
    taken before the computation, they are as good as newer ones, and the store
    checks that they are still current."""
    missing = [index for index, stamp in enumerate(stamps) if stamp is None]
    acquired = yield from _current_stamps(cache, [skeys[index] for index in missing])
    if acquired is FAILED:
        return FAILED
    complete = list(stamps)
    for index, stamp in zip(missing, acquired, strict=True):
        complete[index] = stamp
    return complete


def _store(cache: BaseCache, vkey: str, tags: list[str], skeys: list[str], stamps: Stamps,
           value: Any, ttl_ms: int | None, lease: _Lease | None = None) -> Flow[bool]:
    """Store ``value`` if ``stamps`` are still current. With ``lease`` (held by the
    caller) the same round trip releases it, and ``lease.held`` becomes ``False``; it
    stays ``True`` if nothing was sent or the store failed (FAILED: it may not have
    run), for the caller to release it alone."""
    raw = encode_for_store(cache, tags, stamps, value)
    if raw is None or not cache.keeps_entries:
        return False
    if lease is not None and lease.held:
        stored = yield STORE_AND_RELEASE_LEASE, (vkey, raw, skeys, stamps, ttl_ms,
                                                 lease.key, lease.token)
        if stored is not FAILED:
            lease.held = False
    else:
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
    if events.invalidation_hooks:
        events.run_invalidation_hooks(cache, checked)


def deliver(cache: BaseCache) -> Flow[bool]:
    """Deliver the invalidations and deletes not tried yet: the caller's own, and any a
    concurrent caller added meanwhile, so a caller returns once what it asked for
    landed or was handed to the redelivery thread. ``False`` if they did not land: the
    thread retries them. Earlier failures are that thread's alone, so a call costs
    O(what it added), however many are pending (an outage of 8,000 per-row tags)."""
    pending = cache.undelivered
    tags, keys = pending.untried()
    if (yield from _send(cache, tags, keys)):
        return True
    pending.hand_over(tags, keys)
    return cache.redeliver_later(len(pending))


REDELIVERY_BATCH = 1000
"""Tags (or keys) per round trip of the redelivery thread; each batch that lands is
forgotten, so a failure midway resends only the rest."""


def redeliver(cache: BaseCache) -> Flow[bool]:
    """The redelivery thread's pass: everything pending, oldest first, in batches;
    ``False`` if a batch did not land."""
    pending = cache.undelivered
    while True:
        tags, keys = pending.oldest(REDELIVERY_BATCH)
        if not (tags or keys):
            return True
        if not (yield from _send(cache, tags, keys)):
            return False


def _send(cache: BaseCache, tags: dict[str, int], keys: dict[str, int]) -> Flow[bool]:
    """Replace the stamps of ``tags`` and delete ``keys``, forgetting each part that
    landed (at the generation sent); ``False`` if one did not."""
    pending = cache.undelivered
    if tags:
        skeys = cache.stamp_keys(list(tags))
        replaced = yield REPLACE_STAMPS, (skeys,)
        if replaced is False:
            # The store refused new stamps (a full Redis under noeviction refuses
            # writes but not deletes): a missing stamp invalidates as surely.
            replaced = yield DELETE_KEYS, (skeys,)
        if replaced is FAILED:
            return False
        pending.forget(tags=tags)
    if keys:
        if (yield DELETE_KEYS, (list(keys),)) is FAILED:
            return False
        pending.forget(keys=keys)
    return True


# -- bookkeeping ------------------------------------------------------------------

class Undelivered:
    """Writes (tag invalidations, entry deletes) that have not reached the backend.

    Each addition gets a new generation, and a delivery forgets only what it sent: an
    invalidation of the same tag requested while a delivery was in flight may be newer
    than that delivery, so it stays until it is delivered itself. What was added but
    not tried yet is also kept apart (:meth:`untried`), so that a caller delivers its
    own additions without touching, copying or sorting what earlier failures left to
    the redelivery thread: every operation here is O(what it is given or returns).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = 0
        self.tags: dict[str, int] = {}
        self.keys: dict[str, int] = {}
        self._untried_tags: dict[str, int] = {}
        self._untried_keys: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self.tags or self.keys)

    def __len__(self) -> int:
        return len(self.tags) + len(self.keys)

    def add(self, tags: Iterable[str] = (), keys: Iterable[str] = ()) -> None:
        with self._lock:
            self._generation += 1
            added_tags = dict.fromkeys(tags, self._generation)
            added_keys = dict.fromkeys(keys, self._generation)
            self.tags.update(added_tags)
            self.keys.update(added_keys)
            self._untried_tags.update(added_tags)
            self._untried_keys.update(added_keys)

    def untried(self) -> tuple[dict[str, int], dict[str, int]]:
        """What was added and not tried yet (it stays so until :meth:`forget` or
        :meth:`hand_over`: a concurrent caller may send it too, which is harmless)."""
        with self._lock:
            return dict(self._untried_tags), dict(self._untried_keys)

    def hand_over(self, tags: dict[str, int], keys: dict[str, int]) -> None:
        """Leave what a caller tried and could not deliver to the redelivery thread."""
        with self._lock:
            self._drop(tags, self._untried_tags)
            self._drop(keys, self._untried_keys)

    def oldest(self, count: int) -> tuple[dict[str, int], dict[str, int]]:
        """At most ``count`` pending tags and ``count`` pending keys, oldest first."""
        with self._lock:
            return (dict(itertools.islice(self.tags.items(), count)),
                    dict(itertools.islice(self.keys.items(), count)))

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        with self._lock:
            return dict(self.tags), dict(self.keys)

    def forget(self, tags: dict[str, int] | None = None, keys: dict[str, int] | None = None
               ) -> None:
        """Drop what was delivered, unless added again since (a newer generation)."""
        with self._lock:
            for sent, pending, untried in ((tags or {}, self.tags, self._untried_tags),
                                           (keys or {}, self.keys, self._untried_keys)):
                self._drop(sent, pending)
                self._drop(sent, untried)

    @staticmethod
    def _drop(sent: dict[str, int], held: dict[str, int]) -> None:
        for name, generation in sent.items():
            if held.get(name) == generation:
                del held[name]
