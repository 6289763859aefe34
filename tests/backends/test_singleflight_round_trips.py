"""A distributed singleflight miss: three round trips for the process that computes.

The lookup (``MGET`` of the entry and its stamps); one script that takes the lease
and, in the same round trip, reads the entry and the stamps again (another process
may have stored it meanwhile) and creates the stamps that are absent; one script that
stores if the stamps are still current and releases the lease, waking the waiters.
It used to be five (lookup, ``SET NX``, lookup again, store script, release script),
six when a stamp was absent.

The counts are made on real redis-server processes of the tests' own (client round
trips and server commands); the primitives' contract (every backend, sync and async)
and fail-open run on fakeredis too.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
import redis

from relaycache import InMemoryCache, RedisCache
from relaycache.backends.base import BaseCache
from tests.servers import command_stats, reset_stats
from tests.support import CountingConnection

pytest_plugins = ("tests.servers",)


def _prefix() -> str:
    return f"sfrt{uuid.uuid4().hex[:8]}:"


def _data_commands(stats: dict[str, int]) -> dict[str, int]:
    """Commands the cache issued: everything but the INFO/CONFIG/EXISTS the test sent."""
    return {name: calls for name, calls in stats.items()
            if name not in ("info", "exists") and not name.startswith("config")}


class _TwoPrimitivesEach(RedisCache):
    """The negative control: a ``RedisCache`` whose singleflight primitives are
    ``BaseCache``'s, made of the other primitives as the miss used to call them (take
    the lease, look again; store, release)."""

    acquire_lease_and_fetch = BaseCache.acquire_lease_and_fetch  # type: ignore[assignment]
    store_and_release_lease = BaseCache.store_and_release_lease  # type: ignore[assignment]


def _counting_backend(server, prefix: str, cls: type[RedisCache] = RedisCache
                      ) -> RedisCache:
    # No near cache: its tracking connection (same class) and heartbeat would be
    # counted too. It does not change a miss: a lookup is one pipeline either way.
    pool = redis.ConnectionPool(host="127.0.0.1", port=server.port,
                                connection_class=CountingConnection)
    return cls(redis.Redis(connection_pool=pool), value_prefix=prefix,
               meta_prefix=prefix + "meta:", near_cache=False)


@pytest.mark.real_redis
def test_a_distributed_singleflight_miss_is_three_round_trips(redis_server):
    admin = redis_server.client()
    prefix = _prefix()
    backend = _counting_backend(redis_server, prefix)
    control = _counting_backend(redis_server, prefix, _TwoPrimitivesEach)
    tags = ["a", "b", "c"]
    stamps = len(tags) + len(backend.implicit_tags)
    for cache_ in (backend, control):  # connections open and checked, scripts loaded
        name = type(cache_).__name__
        assert cache_.get_or_set(name, lambda: 0, tags=tags, singleflight=True) == 0
        assert cache_.get_or_set(name + "plain", lambda: 0, tags=tags) == 0
        cache_.release_lease(cache_.lease_key(name), "token")
    rounds: dict[str, tuple[int, dict[str, int]]] = {}
    when_computed: dict[str, int] = {}
    stamps_there: dict[str, bool] = {}

    def miss(label, cache_, key, value, tags_, singleflight=True):
        skeys = cache_.entry_tags(tags_)[1]

        def compute():
            when_computed[label] = CountingConnection.sent
            stamps_there[label] = admin.exists(*skeys) == len(skeys)
            assert admin.exists(cache_.lease_key(cache_.value_key(key))) == singleflight
            return value

        reset_stats(admin)
        CountingConnection.sent = 0
        assert cache_.get_or_set(key, compute, tags=tags_, singleflight=singleflight
                                 ) == value
        rounds[label] = (CountingConnection.sent, _data_commands(command_stats(admin)))
        assert admin.exists(cache_.lease_key(cache_.value_key(key))) == 0, "not released"
        assert cache_.get(key, tags=tags_) == (True, value), "not stored"

    miss("stamps present", backend, "k", 1, tags)
    backend.invalidate(["a"])
    miss("stale entry", backend, "k", 2, tags)
    miss("2 stamps absent", backend, "k2", 3, [*tags, "new1", "new2"])
    # Negative controls: the counter sees every round trip. Without singleflight a
    # miss is two; with the old sequence of primitives the same miss is five.
    miss("no singleflight", backend, "k3", 4, tags, singleflight=False)
    miss("old primitives", control, "k4", 5, tags)
    miss("old primitives, 2 stamps absent", control, "k5", 6, [*tags, "new3", "new4"])

    # The async driver on the asyncio client: the same commands, one per round trip
    # (a plain pool: a connection class of its own would run the sync primitives in a
    # thread instead).
    async_backend = RedisCache(redis.Redis(host="127.0.0.1", port=redis_server.port),
                               value_prefix=prefix, meta_prefix=prefix + "meta:",
                               near_cache=False)

    async def async_miss(key, tags_):
        reset_stats(admin)
        assert await async_backend.aget_or_set(key, _value(7), tags=tags_,
                                               singleflight=True) == 7
        return _data_commands(command_stats(admin))

    async def async_misses():
        await async_backend.aget_or_set("async warm", _value(0), tags=tags,
                                        singleflight=True)
        return await async_miss("k6", tags), await async_miss("k7", [*tags, "new5"])

    async_present, async_absent = asyncio.run(async_misses())

    print(f"\nsingleflight miss round trips and commands: {rounds}; "
          f"async: {async_present}, {async_absent}")
    # On the server: the lookup's MGET; the first script's SET NX (the lease) and MGET;
    # the second one's GET of the lease, DEL, PUBLISH, GET of each stamp, SET.
    three = {"mget": 2, "evalsha": 2, "set": 2, "get": 1 + stamps, "del": 1,
             "publish": 1}
    assert rounds["stamps present"] == (3, three)
    assert rounds["stale entry"] == (3, three)
    # Absent stamps are created in the script that takes the lease (a SET NX each).
    assert rounds["2 stamps absent"] == (3, {**three, "set": 2 + 2, "get": 1 + stamps + 2})
    assert rounds["no singleflight"] == (2, {"mget": 1, "evalsha": 1, "get": stamps,
                                             "set": 1})
    assert rounds["old primitives"][0] == 5
    assert rounds["old primitives, 2 stamps absent"][0] == 6
    # Taken before computing: the lookup and the lease with its second look.
    assert when_computed == {"stamps present": 2, "stale entry": 2, "2 stamps absent": 2,
                             "no singleflight": 1, "old primitives": 3,
                             "old primitives, 2 stamps absent": 4}
    assert all(stamps_there.values()), "every stamp must exist before computing"
    assert async_present == three
    assert async_absent == {**three, "set": 2 + 1, "get": 1 + stamps + 1}
    assert backend.stats.errors == control.stats.errors == async_backend.stats.errors == 0


@pytest.mark.real_redis
def test_a_compute_that_raises_releases_the_lease_alone(redis_server):
    admin = redis_server.client()
    backend = _counting_backend(redis_server, _prefix())
    assert backend.get_or_set("warm", lambda: 0, tags=["t"], singleflight=True) == 0
    backend.release_lease(backend.lease_key("warm"), "token")  # its script loaded too
    lkey = backend.lease_key(backend.value_key("k"))

    def fail():
        assert admin.exists(lkey)
        raise LookupError("the database said no")

    CountingConnection.sent = 0
    with pytest.raises(LookupError):
        backend.get_or_set("k", fail, tags=["t"], singleflight=True)
    # The lookup, the lease (with its second look), the release.
    assert CountingConnection.sent == 3
    assert admin.exists(lkey) == 0
    assert backend.get("k", tags=["t"]) == (False, None)


def _value(value):
    async def run():
        return value
    return run


# -- the two primitives, on every backend -------------------------------------------------


def _stamp_keys(backend, tags):
    return backend.entry_tags(tags)[1]


def test_acquire_lease_and_fetch_reads_after_taking_the_lease(backend):
    vkey, lkey = backend.value_key("k"), backend.lease_key(backend.value_key("k"))
    skeys = _stamp_keys(backend, ["t"])
    stamps = list(backend.acquire_stamps(skeys))
    assert backend.store_if_current(vkey, b"entry", skeys, stamps, None)

    fetched = backend.acquire_lease_and_fetch(lkey, "a", 60_000, vkey, skeys)
    assert fetched is not None
    assert fetched[0] == b"entry"
    assert [s.decode() if isinstance(s, bytes) else s for s in fetched[1:]] == stamps
    # Held: someone else gets None, and reads nothing.
    assert backend.acquire_lease_and_fetch(lkey, "b", 60_000, vkey, skeys) is None
    backend.release_lease(lkey, "a")
    assert backend.acquire_lease(lkey, "b", 60_000)
    backend.release_lease(lkey, "b")


def test_acquire_lease_and_fetch_creates_absent_stamps_or_leaves_them_none(backend):
    vkey, lkey = backend.value_key("new"), backend.lease_key(backend.value_key("new"))
    skeys = _stamp_keys(backend, ["fresh1", "fresh2"])
    fetched = backend.acquire_lease_and_fetch(lkey, "a", 60_000, vkey, skeys)
    assert fetched is not None and fetched[0] is None
    created = [s.decode() if isinstance(s, bytes) else s for s in fetched[1:]]
    current = list(backend.acquire_stamps(skeys))
    # Created ones are the current ones; none is shared by two tags.
    assert all(c is None or c == s for c, s in zip(created, current, strict=True))
    assert len(set(current)) == len(current)
    backend.release_lease(lkey, "a")


def test_store_and_release_lease_stores_only_under_current_stamps_and_always_releases(
        backend):
    vkey, lkey = backend.value_key("k"), backend.lease_key(backend.value_key("k"))
    skeys = _stamp_keys(backend, ["t"])
    stamps = list(backend.acquire_stamps(skeys))
    assert backend.acquire_lease(lkey, "a", 60_000)
    assert backend.store_and_release_lease(vkey, b"1", skeys, stamps, None, lkey, "a")
    assert backend.fetch([vkey])[0] == b"1"
    assert backend.acquire_lease(lkey, "b", 60_000), "the store did not release the lease"

    backend.replace_stamps(skeys)  # an invalidation while it was computed
    assert not backend.store_and_release_lease(vkey, b"2", skeys, stamps, None, lkey, "b")
    assert backend.fetch([vkey])[0] == b"1"
    assert backend.acquire_lease(lkey, "c", 60_000), "a refused store kept the lease"

    # Not the holder's token: stored, and the holder keeps its lease.
    fresh = list(backend.acquire_stamps(skeys))
    assert backend.store_and_release_lease(vkey, b"3", skeys, fresh, 30_000, lkey, "x")
    assert not backend.acquire_lease(lkey, "d", 60_000)
    backend.release_lease(lkey, "c")


def test_the_async_twins_agree(backend):
    async def scenario():
        vkey, lkey = backend.value_key("k"), backend.lease_key(backend.value_key("k"))
        skeys = _stamp_keys(backend, ["t"])
        fetched = await backend.aacquire_lease_and_fetch(lkey, "a", 60_000, vkey, skeys)
        assert fetched is not None and fetched[0] is None
        assert await backend.aacquire_lease_and_fetch(lkey, "b", 60_000, vkey,
                                                      skeys) is None
        stamps = list(await backend.aacquire_stamps(skeys))
        assert await backend.astore_and_release_lease(vkey, b"1", skeys, stamps, None,
                                                      lkey, "a")
        assert (await backend.afetch([vkey]))[0] == b"1"
        assert await backend.aacquire_lease(lkey, "b", 60_000)
        await backend.arelease_lease(lkey, "b")

    asyncio.run(scenario())


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_singleflight_miss_stores_releases_and_serves(backend, asynchronous):
    calls: list[int] = []

    def compute():
        calls.append(1)
        return {"v": len(calls)}

    async def acompute():
        return compute()

    def get():
        if asynchronous:
            return asyncio.run(backend.aget_or_set("k", acompute, tags=["t", "u"],
                                                   singleflight=True))
        return backend.get_or_set("k", compute, tags=["t", "u"], singleflight=True)

    assert get() == {"v": 1}
    assert get() == {"v": 1}
    assert calls == [1]
    lkey = backend.lease_key(backend.value_key("k"))
    assert backend.acquire_lease(lkey, "next", 60_000), "the lease was not released"
    backend.release_lease(lkey, "next")
    backend.invalidate(["u"])
    assert get() == {"v": 2}


# -- fail-open ------------------------------------------------------------------------


def test_a_failed_store_and_release_still_releases_and_returns_the_value(redis_backend):
    lkey = redis_backend.lease_key(redis_backend.value_key("k"))

    def broken(*args):
        raise redis.ConnectionError("the store went away")

    redis_backend.store_and_release_lease = broken
    assert redis_backend.get_or_set("k", lambda: 42, tags=["t"], singleflight=True) == 42
    assert redis_backend.stats.errors == 1
    # Released alone after the failure: the next holder is not kept waiting.
    assert redis_backend.acquire_lease(lkey, "next", 60_000)


def test_a_failed_lease_computes_uncached(redis_backend):
    def broken(*args):
        raise redis.ConnectionError("the store went away")

    redis_backend.acquire_lease_and_fetch = broken
    assert redis_backend.get_or_set("k", lambda: 42, tags=["t"], singleflight=True) == 42
    assert redis_backend.stats.errors == 1
    assert redis_backend.stats.stores == 0


def test_the_default_releases_a_lease_it_could_not_look_under(redis_backend):
    """``BaseCache``'s composite: a fetch that fails after the lease was taken releases
    it, as the miss did when the two were separate steps."""
    lkey = redis_backend.lease_key(redis_backend.value_key("k"))

    def broken(keys):
        raise redis.ConnectionError("the store went away")

    redis_backend.fetch = broken
    with pytest.raises(redis.ConnectionError):
        BaseCache.acquire_lease_and_fetch(redis_backend, lkey, "a", 60_000,
                                          redis_backend.value_key("k"), [])
    assert redis_backend.acquire_lease(lkey, "b", 60_000)


def test_nothing_to_store_releases_the_lease_alone(backend):
    """An entry over ``max_entry_size`` is not stored: the lease is released alone."""
    backend.max_entry_size = 10
    assert backend.get_or_set("big", lambda: "x" * 100, singleflight=True) == "x" * 100
    assert backend.stats.oversize == 1
    lkey = backend.lease_key(backend.value_key("big"))
    assert backend.acquire_lease(lkey, "next", 60_000), "the lease was kept"
    backend.release_lease(lkey, "next")


class _HangsAfterTakingTheLease(InMemoryCache):
    """Takes the lease, then waits on the network for ever (a reply that never comes)."""

    async def aacquire_lease_and_fetch(self, lkey, token, ttl_ms, vkey, skeys):
        self.acquire_lease(lkey, token, ttl_ms)
        await asyncio.sleep(60)


def test_a_task_cancelled_while_taking_the_lease_releases_it():
    backend = _HangsAfterTakingTheLease(default_ttl=60, lease_ttl=30)
    lkey = backend.lease_key(backend.value_key("k"))

    async def scenario():
        task = asyncio.create_task(backend.aget_or_set("k", _value(1), singleflight=True))
        while backend.fetch([lkey])[0] is None:
            await asyncio.sleep(0.001)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return backend.fetch([lkey])[0]

    assert asyncio.run(scenario()) is None, "the cancelled task kept its lease"
