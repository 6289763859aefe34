"""``async def`` functions under ``@cache``: hits, invalidation, stampedes, no threads."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import inspect
import os
import threading
import uuid

import pytest
import redis
import redis.asyncio
from asgiref.sync import async_to_sync

from relaycache import InMemoryCache, RedisCache, ainvalidate, cache, invalidate
from tests.support import IN_PROCESS_BACKENDS

pytest_plugins = ("tests.servers",)


class NoThreadsExecutor(concurrent.futures.ThreadPoolExecutor):
    """A default executor that fails the test if anything hands work to a thread."""

    def submit(self, *args, **kwargs):
        raise AssertionError("the async path handed work to a thread")


def run_without_threads(coro_factory):
    async def main():
        asyncio.get_running_loop().set_default_executor(NoThreadsExecutor(max_workers=1))
        return await coro_factory()

    return asyncio.run(main())


def _real_backend(url: str, decode_responses: bool) -> RedisCache:
    client = redis.Redis.from_url(url, decode_responses=decode_responses)
    client.ping()  # an unreachable server is an error, never a skip
    prefix = f"async{uuid.uuid4().hex[:8]}:"
    return RedisCache(client, default_ttl=60, value_prefix=prefix, meta_prefix=prefix + "m:")


def _close(backend: RedisCache) -> None:
    backend.clear()  # only this cache's keys
    backend.redis_client.close()


@pytest.fixture(params=[False, True], ids=["bytes", "decoded"])
def real_redis_backend(request, real_redis_url):
    backend = _real_backend(real_redis_url, request.param)
    yield backend
    _close(backend)


_REAL = pytest.mark.real_redis


@pytest.fixture(params=["memory", pytest.param("redis", marks=_REAL),
                        pytest.param("redis-decoded", marks=_REAL), "dict"])
def async_backend(request):
    """The async contract: as ``backend``, on a real server for Redis (whose asyncio
    client fakeredis cannot stand in for), and the dict backend of docs/backends.md
    through the default async twins."""
    if request.param in IN_PROCESS_BACKENDS:
        yield IN_PROCESS_BACKENDS[request.param](default_ttl=60)
        return
    backend = _real_backend(request.getfixturevalue("real_redis_url"),
                            request.param == "redis-decoded")
    yield backend
    _close(backend)


class Counter:
    def __init__(self) -> None:
        self.calls = 0


def test_decorated_coroutine_function_stays_a_coroutine_function():
    @cache(backend=InMemoryCache())
    async def f(x):
        return x

    assert inspect.iscoroutinefunction(f)
    assert asyncio.run(f(3)) == 3


def test_async_hits_and_invalidation(async_backend):
    seen = Counter()

    @cache(backend=async_backend, tags=lambda book_id: [f"book:{book_id}", "books"])
    async def details(book_id):
        seen.calls += 1
        await asyncio.sleep(0)
        return {"id": book_id, "n": seen.calls, "pair": (1, 2)}

    async def scenario():
        first = await details(1)
        second = await details(1)
        other = await details(2)
        await ainvalidate(["book:1"], backend=async_backend)
        third = await details(1)
        still = await details(2)
        return first, second, other, third, still

    first, second, other, third, still = run_without_threads(scenario)
    assert first == second == {"id": 1, "n": 1, "pair": (1, 2)}
    assert type(second["pair"]) is tuple
    assert other == still == {"id": 2, "n": 2, "pair": (1, 2)}
    assert third == {"id": 1, "n": 3, "pair": (1, 2)}
    assert seen.calls == 3
    assert async_backend.stats.hits == 2
    assert async_backend.pending_invalidations == []


def test_none_is_cached_on_the_async_path(async_backend):
    seen = Counter()

    @cache(backend=async_backend)
    async def nothing():
        seen.calls += 1
        return None

    async def scenario():
        return [await nothing() for _ in range(3)]

    assert run_without_threads(scenario) == [None, None, None]
    assert seen.calls == 1


def test_sync_invalidation_reaches_async_entries_and_back(async_backend):
    seen = Counter()

    @cache(backend=async_backend, tags=["shared"])
    async def f():
        seen.calls += 1
        return seen.calls

    assert asyncio.run(f()) == 1
    assert asyncio.run(f()) == 1  # a new event loop: still served
    invalidate(["shared"], backend=async_backend)
    assert asyncio.run(f()) == 2
    # and an entry stored synchronously is served to the async path
    async_backend.set("plain", [1, 2], tags=["shared"])

    async def read():
        return await async_backend.aget_or_set("plain", _never, tags=["shared"])

    assert run_without_threads(read) == [1, 2]


async def _never():
    raise AssertionError("must be served from the cache")


def test_async_stale_set_is_not_served(async_backend):
    seen = Counter()

    @cache(backend=async_backend, tags=["books"])
    async def f():
        seen.calls += 1
        if seen.calls == 1:
            await ainvalidate(["books"], backend=async_backend)  # a writer commits
            return "old"
        return "new"

    async def scenario():
        return [await f(), await f(), await f()]

    assert run_without_threads(scenario) == ["old", "new", "new"]
    assert seen.calls == 2


@pytest.mark.parametrize("singleflight", [False, True], ids=["local", "distributed"])
def test_twenty_concurrent_tasks_compute_once(async_backend, singleflight):
    seen = Counter()

    @cache(backend=async_backend, tags=["t"], distributed_singleflight=singleflight)
    async def slow(x):
        seen.calls += 1
        await asyncio.sleep(0.2)
        return {"x": x}

    async def scenario():
        return await asyncio.wait_for(asyncio.gather(*(slow(1) for _ in range(20))), 10)

    results = run_without_threads(scenario)
    assert seen.calls == 1
    assert results == [{"x": 1}] * 20


def test_async_exception_propagates_and_is_not_cached(async_backend):
    seen = Counter()

    @cache(backend=async_backend)
    async def boom():
        seen.calls += 1
        raise RuntimeError("nope")

    async def scenario():
        for _ in range(2):
            with pytest.raises(RuntimeError):
                await boom()

    run_without_threads(scenario)
    assert seen.calls == 2


def test_async_hit_does_not_start_a_thread(async_backend):
    @cache(backend=async_backend)
    async def f():
        return "v"

    async def scenario():
        await f()
        # The miss started the near cache's tracking connection (real Redis) on a
        # thread of its own, once: let it finish before counting.
        connector = getattr(getattr(async_backend, "_near", None), "_connector", None)
        while connector is not None and connector.is_alive():
            await asyncio.sleep(0.01)
        before = threading.active_count()
        for _ in range(20):
            assert await f() == "v"
        return before, threading.active_count()

    before, after = run_without_threads(scenario)
    assert after == before
    assert async_backend.stats.hits == 20


@pytest.mark.real_redis
def test_async_path_uses_an_asyncio_redis_client(real_redis_backend):
    async def scenario():
        client = real_redis_backend._loop_client().client
        assert isinstance(client, redis.asyncio.Redis)
        assert real_redis_backend._loop_client().client is client  # one per event loop
        await real_redis_backend.aget_or_set("k", _value, tags=["t"])
        return await real_redis_backend.aget_or_set("k", _never, tags=["t"])

    assert run_without_threads(scenario) == {"v": 1}
    raw = real_redis_backend.redis_client.get(real_redis_backend.value_prefix + "k")
    assert raw is not None


async def _value():
    return {"v": 1}


@pytest.mark.real_redis
def test_async_entries_are_visible_to_other_processes(real_redis_backend, real_redis_url):
    other = RedisCache(redis.Redis.from_url(real_redis_url),
                       value_prefix=real_redis_backend.value_prefix,
                       meta_prefix=real_redis_backend.meta_prefix)

    @cache(backend=real_redis_backend, key=lambda: "shared", tags=["t"])
    async def f():
        return [1, (2, 3)]

    assert asyncio.run(f()) == [1, (2, 3)]
    assert other.get("shared", tags=["t"]) == (True, [1, (2, 3)])
    other.invalidate(["t"])
    assert real_redis_backend.get("shared", tags=["t"]) == (False, None)
    other.redis_client.close()



def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.real_redis
def test_each_event_loops_client_is_closed_with_its_loop(redis_server):
    """``async_to_sync`` runs each call in an event loop of its own. The loop's asyncio
    client used to stay open for ever (its connections kept the loop alive in the weak
    dictionary of per-loop clients): 200 calls, 200 more connections and file
    descriptors. Each is now closed as its loop shuts down."""
    admin = redis_server.client()
    prefix = f"loops{uuid.uuid4().hex[:8]}:"
    backend = RedisCache(redis.Redis(host="127.0.0.1", port=redis_server.port),
                         default_ttl=60, value_prefix=prefix, meta_prefix=prefix + "m:")

    @cache(backend=backend, tags=["t"], key=lambda n: f"n:{n}")
    async def square(n):
        return n * n

    call = async_to_sync(square)
    assert call(3) == 9  # the sync client's connection, and one loop's, come and go
    gc.collect()
    connections, fds = admin.info("clients")["connected_clients"], _open_fds()
    assert [call(n % 10) for n in range(200)] == [(n % 10) ** 2 for n in range(200)]
    gc.collect()
    added = admin.info("clients")["connected_clients"] - connections
    assert added <= 1, f"{added} more connections to Redis after 200 calls"
    assert _open_fds() - fds <= 1, f"{_open_fds() - fds} more file descriptors"
    assert len(backend._loop_clients) == 0
    assert backend.stats.hits >= 190 and backend.stats.errors == 0

    async def inside_one_loop():  # a long-lived loop keeps its one client meanwhile
        first = backend._loop_client()
        assert [await square(n) for n in range(5)] == [0, 1, 4, 9, 16]
        return first is backend._loop_client()

    assert asyncio.run(inside_one_loop())
    assert len(backend._loop_clients) == 0
