"""Each name of the relaycache 0.1 library's API, with our semantics underneath."""

from __future__ import annotations

import asyncio
import threading
import uuid

import orjson
import pytest
import redis

import relaycache
from relaycache import (
    AioredisCache,
    AsyncRedisKeyLock,
    InMemoryCache,
    KeyBuilder,
    RedisCache,
    ainvalidate,
    cache,
    default_backend,
    invalidate,
    set_default_backend,
)
from relaycache.backends.flow import stamp_text
from tests.servers import free_port

SEED_NAMES = ["AioredisCache", "AsyncRedisKeyLock", "InMemoryCache", "KeyBuilder",
              "RedisCache", "ainvalidate", "cache", "default_backend", "invalidate"]


def test_every_seed_name_is_exported():
    assert set(SEED_NAMES) <= set(relaycache.__all__)
    for name in SEED_NAMES:
        assert getattr(relaycache, name) is not None


def _prefix() -> str:
    return f"c{uuid.uuid4().hex[:8]}:"


# -- @cache and KeyBuilder -----------------------------------------------------------------

def test_the_default_key_builder_is_the_decorators_key():
    backend = InMemoryCache()

    def area(width, height=2):
        return width * height

    cached = cache(backend=backend)(area)
    assert cached.cache_key(3) == KeyBuilder().build(area, (3,), {})
    assert cached.cache_key(3) == KeyBuilder().build(area, (), {"width": 3, "height": 2})
    assert cached.cache_key(3).startswith(f"{__name__}.{area.__qualname__}:")
    assert cached(3) == 6 and backend.get(cached.cache_key(3)) == (True, 6)


def test_key_builder_prefix_and_namespaces():
    backend = InMemoryCache()
    kb = KeyBuilder(prefix="app:", namespace="v1")

    def f(x):
        return x

    plain = cache(backend=backend, key_builder=kb)(f)
    other_ns = cache(backend=backend, key_builder=kb, namespace="v2")(f)
    assert plain.cache_key(1).startswith(f"app:v1:{__name__}.{f.__qualname__}:")
    assert other_ns.cache_key(1).startswith(f"app:v2:{__name__}.{f.__qualname__}:")
    assert other_ns.cache_key(1) == kb.build(f, (1,), {}, "v2")
    assert cache(backend=backend, namespace="v3")(f).cache_key(1).startswith("v3:")
    assert plain(1) == other_ns(1) == 1
    assert backend.stats.stores == 2  # two namespaces, two entries


def test_a_key_builder_that_replaces_build_is_used():
    seen = []

    class Flat(KeyBuilder):
        def build(self, func, args, kwargs, namespace=None):
            seen.append((args, kwargs, namespace))
            return f"flat:{args[0]}"

    backend = InMemoryCache()
    f = cache(backend=backend, key_builder=Flat(), namespace="ns")(lambda x, y=0: x + y)
    assert f(4) == f(4) == 4
    assert backend.get("flat:4") == (True, 4)
    assert seen[0] == ((4, 0), {}, "ns")


def test_ttl_may_be_given_first_as_in_the_seed_library():
    backend = InMemoryCache()

    @cache(120, backend=backend)
    def f():
        return 1

    assert f.ttl == 120 and f() == 1
    with pytest.raises(TypeError, match="ttl"):
        cache(120, ttl=60)


def test_dist_lock_ttl_is_the_lease_a_computation_holds(redis_client):
    backend = RedisCache(redis_client, default_ttl=60, value_prefix=_prefix(),
                         meta_prefix=_prefix())
    leases = []

    @cache(backend=backend, key=lambda: "k", distributed_singleflight=True,
           dist_lock_ttl=0.75)
    def f():
        leases.append(redis_client.pttl(backend.lease_key(backend.value_key("k"))))
        return 1

    assert f() == 1
    assert 0 < leases[0] <= 750


def test_dist_lock_timeout_bounds_a_waiters_wait(redis_client):
    """A process whose holder hangs computes itself after ``dist_lock_timeout``
    (here 0.2 s, not the 60 s that twice the 30 s lease would give)."""
    prefix = _prefix()
    holder, waiter = (RedisCache(redis_client, default_ttl=60, value_prefix=prefix,
                                 meta_prefix=prefix + "meta:") for _ in range(2))
    release = threading.Event()
    entered = threading.Event()

    def slow():
        entered.set()
        release.wait(30)
        return "holder"

    def options(backend):
        return {"backend": backend, "key": lambda: "k", "distributed_singleflight": True,
                "dist_lock_ttl": 30, "dist_lock_timeout": 0.2}

    hung = threading.Thread(target=cache(**options(holder))(slow))
    hung.start()
    try:
        assert entered.wait(10)
        result = []
        waiting = threading.Thread(target=lambda: result.append(
            cache(**options(waiter))(lambda: "waiter")()))
        waiting.start()
        waiting.join(10)
        assert result == ["waiter"], "the waiter did not stop waiting at dist_lock_timeout"
    finally:
        release.set()
        hung.join(10)


@pytest.mark.parametrize("value", [0, -1, float("inf"), "5"])
def test_bad_lock_options_are_refused(value):
    with pytest.raises(ValueError, match="dist_lock_ttl"):
        cache(dist_lock_ttl=value)(lambda: 1)
    with pytest.raises(ValueError, match="dist_lock_timeout"):
        cache(dist_lock_timeout=value)(lambda: 1)


# -- clear errors for bad tags ---------------------------------------------------------------

@pytest.mark.parametrize("tags", [5, 2.5, {"a": 1}, "books"])
def test_cache_refuses_tags_that_are_not_a_list(tags):
    with pytest.raises(TypeError, match=r"@cache\(tags=\.\.\.\) takes a list of tag strings "
                                        r"or a callable"):
        cache(tags=tags)(lambda: 1)


@pytest.mark.parametrize("call", [invalidate, lambda tags: asyncio.run(ainvalidate(tags))])
@pytest.mark.parametrize("tags", [None, 5, {"a": 1}, "books"])
def test_invalidate_refuses_tags_that_are_not_a_list(call, tags):
    with pytest.raises(TypeError, match=r"invalidate\(tags=\.\.\.\) takes a list of tag "
                                        r"strings, got"):
        call(tags)


def test_a_dict_of_tags_is_refused_everywhere():
    backend = InMemoryCache()
    calls = [lambda: backend.set("k", 1, tags={"a": 1}),
             lambda: backend.get("k", tags={"a": 1}),
             lambda: backend.get_or_set("k", lambda: 1, tags={"a": 1}),
             lambda: backend.invalidate({"a": 1}),
             lambda: backend.invalidate_tags({"a": 1}),
             lambda: cache(backend=backend, tags=lambda: {"a": 1})(lambda: 1)()]
    for call in calls:
        with pytest.raises(TypeError, match=r"tags must be a list of tag strings, got a dict"):
            call()
    assert backend.stats.stores == 0


# -- backend methods -------------------------------------------------------------------------

def test_get_checks_the_stamps_of_the_tags_the_entry_was_stored_with(backend):
    backend.set("k", {"v": 1}, 60, tags=["a", "b"])
    assert backend.get("k") == (True, {"v": 1})
    backend.invalidate_tags(["b"])
    assert backend.get("k") == (False, None)
    backend.set("k", None, tags=["a"])
    assert backend.get("k") == (True, None)  # None is a value, not a miss
    asyncio.run(backend.ainvalidate_tags(["a"]))
    assert asyncio.run(backend.aget("k")) == (False, None)


def test_get_without_tags_refuses_an_entry_missing_the_backends_own_tag(redis_backend):
    """An entry that does not cite the ``__server__`` tag every RedisCache entry
    carries (written by another program) is never served, though its own stamps are
    current; the same entry citing it is (the control)."""
    redis_backend.set("k", 1, tags=["t"])
    server, stamp = (stamp_text(raw) for raw in redis_backend.fetch(
        redis_backend.stamp_keys(["__server__", "t"])))
    vkey = redis_backend.value_key("k")
    for entry, served in ([["t"], [stamp], 2], (False, None)), (
            [["__server__", "t"], [server, stamp], 3], (True, 3)):
        assert redis_backend.store_if_current(vkey, orjson.dumps(entry), [], [], None)
        assert redis_backend.get("k") == served


def test_mapping_protocol(backend):
    backend["k"] = [1, 2]
    assert backend["k"] == [1, 2] and "k" in backend
    assert backend.get("k") == (True, [1, 2])
    assert "absent" not in backend and 5 not in backend
    with pytest.raises(KeyError):
        backend["absent"]
    backend.set("tagged", "v", tags=["t"])
    assert backend["tagged"] == "v"
    backend.invalidate_tags(["t"])
    assert "tagged" not in backend
    with pytest.raises(KeyError):
        backend["tagged"]


def test_setitem_uses_the_default_ttl():
    backend = InMemoryCache(default_ttl=123)
    backend["k"] = 1
    (description,) = backend.describe_keys([backend.value_key("k")])
    assert 0 < description.ttl_ms <= 123_000


def test_async_twins(backend):
    async def scenario():
        assert await backend.aset("a", 1, 60, tags=["t"]) is True
        assert await backend.aset("b", 2, tags=None) is True
        got = [await backend.aget("a"), await backend.aget("b")]
        await backend.adelete("b")
        got.append(await backend.aget("b"))
        await backend.ainvalidate_tags(["t"])
        got.append(await backend.aget("a"))
        await backend.aset("c", 3)
        await backend.aclear()
        got.append(await backend.aget("c"))
        return got

    assert asyncio.run(scenario()) == [(True, 1), (True, 2), (False, None), (False, None),
                                       (False, None)]


# -- default_backend ------------------------------------------------------------------------

def test_default_backend_follows_the_configured_default():
    configured = InMemoryCache()
    set_default_backend(configured)  # after default_backend was imported
    default_backend["k"] = 1
    assert configured.get("k") == (True, 1) and "k" in default_backend
    assert default_backend.get("k") == (True, 1) and default_backend["k"] == 1

    @cache(backend=default_backend, tags=["t"])
    def f():
        return "v"

    assert f() == "v" and configured.stats.stores == 2
    invalidate(["t"], backend=default_backend)
    assert configured.stats.invalidations == 1
    default_backend.invalidate_tags(["t"])
    assert configured.stats.invalidations == 2


# -- AioredisCache -------------------------------------------------------------------------

def test_aioredis_cache_shares_entries_and_stamps_with_redis_cache(async_clients):
    """The same machinery: what one stores the other serves, what one invalidates the
    other refuses, on the same server and prefixes."""
    prefix = _prefix()
    options = {"default_ttl": 60, "value_prefix": prefix, "meta_prefix": prefix + "meta:"}
    aio = AioredisCache(async_clients(), **options)
    sync = RedisCache(async_clients.admin, **options)

    async def scenario():
        await aio.aset("from-aio", {"n": 1}, tags=["t"])
        got = await aio.aget("from-sync")
        await aio.ainvalidate_tags(["u"])
        return got

    sync.set("from-sync", (1, 2), tags=["u"])
    assert asyncio.run(scenario()) == (True, (1, 2))
    assert sync.get("from-aio") == (True, {"n": 1})
    assert sync.get("from-sync") == (False, None)
    sync.invalidate(["t"])
    assert asyncio.run(aio.aget("from-aio")) == (False, None)


def test_aioredis_cache_works_across_event_loops_and_from_sync_code(async_clients):
    backend = AioredisCache(async_clients(decode_responses=True), default_ttl=60,
                            value_prefix=_prefix(), meta_prefix=_prefix())
    computed = []

    @cache(backend=backend, tags=lambda n: [f"n:{n}"])
    async def square(n):
        computed.append(n)
        return n * n

    assert asyncio.run(square(3)) == 9
    assert asyncio.run(square(3)) == 9  # another event loop, same entry
    invalidate([f"n:{3}"], backend=backend)  # sync, as a Django signal handler is
    assert asyncio.run(square(3)) == 9
    assert computed == [3, 3]
    backend["k"] = "v"  # sync mapping protocol
    assert backend["k"] == "v" and asyncio.run(backend.aget("k")) == (True, "v")


def test_aioredis_cache_refuses_a_sync_client(redis_client):
    with pytest.raises(TypeError, match=r"redis\.asyncio\.Redis"):
        AioredisCache(redis_client)


def test_aioredis_cache_fails_open_when_redis_is_down():
    import redis.asyncio as aredis

    backend = AioredisCache(aredis.Redis(port=free_port()), default_ttl=60)

    async def scenario():
        return (await backend.aget("k"),
                await backend.aget_or_set("k", lambda: asyncio.sleep(0, "computed")),
                await backend.aset("k", 1))

    assert asyncio.run(scenario()) == ((False, None), "computed", False)
    assert backend.get_or_set("k", lambda: "sync") == "sync"
    assert backend.stats.errors >= 1


# -- AsyncRedisKeyLock -------------------------------------------------------------------

def test_lock_release_is_owner_only(async_clients):
    async def scenario():
        client = async_clients(decode_responses=True)
        first = AsyncRedisKeyLock(client, "lock:a", ttl_ms=100, timeout_sec=0)
        second = AsyncRedisKeyLock(client, "lock:a", ttl_ms=5000, timeout_sec=5)
        assert await first.acquire()
        assert not await AsyncRedisKeyLock(client, "lock:a", ttl_ms=100,
                                           timeout_sec=0).acquire()
        assert await second.acquire()  # after first's lock expired
        released = await first.release()  # expired: must not free second's lock
        held = await client.get("lock:a")
        return released, held == second.token, await second.release(), await client.get(
            "lock:a")

    assert asyncio.run(scenario()) == (False, True, True, None)


def test_lock_waiter_takes_it_when_released(async_clients):
    async def scenario():
        client = async_clients()
        holder = AsyncRedisKeyLock(client, "lock:b", ttl_ms=60_000, timeout_sec=0)
        waiter = AsyncRedisKeyLock(async_clients(), "lock:b", ttl_ms=60_000, timeout_sec=30)
        assert await holder.acquire()
        waiting = asyncio.ensure_future(waiter.acquire())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await holder.release()
        return await asyncio.wait_for(waiting, 10)

    assert asyncio.run(scenario()) is True


def test_lock_gives_up_after_its_timeout(async_clients):
    async def scenario():
        client = async_clients()
        assert await AsyncRedisKeyLock(client, "lock:c", ttl_ms=60_000,
                                       timeout_sec=0).acquire()
        late = AsyncRedisKeyLock(client, "lock:c", ttl_ms=1000, timeout_sec=0.1)
        got = await late.acquire()
        with pytest.raises(TimeoutError):
            async with late:
                pass
        return got, late.token

    assert asyncio.run(scenario()) == (False, None)


def test_lock_as_a_context_manager(async_clients):
    async def scenario():
        client = async_clients()
        lock = AsyncRedisKeyLock(client, "lock:d", ttl_ms=5000, timeout_sec=1)
        async with lock:
            inside = await client.get("lock:d")
        return inside, await client.exists("lock:d")

    inside, after = asyncio.run(scenario())
    assert inside is not None and after == 0


@pytest.mark.parametrize("options", [{"ttl_ms": 0}, {"ttl_ms": "5"}, {"timeout_sec": -1},
                                     {"key": ""}])
def test_lock_refuses_bad_options(options):
    client = redis.asyncio.Redis()
    arguments = {"key": "k", "ttl_ms": 100, "timeout_sec": 1, **options}
    with pytest.raises((TypeError, ValueError)):
        AsyncRedisKeyLock(client, **arguments)
