"""The async API behaves as the sync one: five places where the two used to drift.

1. an async singleflight waiter waits at most ``lease_ttl`` for a leader, as a thread
   does (it used to wait for ever on a hung leader);
2. a delete or invalidation that could not be delivered is redelivered in the
   background and logged, whichever path it failed on (``ainvalidate`` used to leave
   pending deletes alone and log nothing);
3. on a full ``noeviction`` Redis, an async invalidation deletes the stamps it cannot
   replace instead of failing (and feeding the breaker);
4. async scripts go to Redis as ``EVALSHA``, never the full text with ``EVAL``;
5. ``aget``/``aset``/``adelete`` exist, and ``cached_view`` serves an async view
   without handing each cache call to a thread (``sync_to_async``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

import pytest
import redis
from asgiref.sync import SyncToAsync
from django.http import HttpResponse
from django.test import RequestFactory

from relaycache import CircuitBreaker, InMemoryCache, RedisCache
from relaycache.http import cached_view
from tests.servers import HOST, command_stats, reset_stats

pytest_plugins = ("tests.servers",)


def _wait_until(condition, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _prefix() -> str:
    return f"parity{uuid.uuid4().hex[:8]}:"


# -- 1. a hung leader does not hold async waiters for ever ------------------------------


def test_async_singleflight_waiter_gives_up_on_a_hung_leader_after_lease_ttl():
    backend = InMemoryCache(default_ttl=60, lease_ttl=0.3)

    async def scenario():
        never = asyncio.Event()
        leader_computing = asyncio.Event()

        async def hang():
            leader_computing.set()
            await never.wait()
            return "leader"

        async def quick():
            return "waiter"

        leader = asyncio.create_task(backend.aget_or_set("k", hang))
        try:
            await asyncio.wait_for(leader_computing.wait(), 2)
            started = time.monotonic()
            # A thread would wait at most lease_ttl (0.3 s) and then compute itself.
            got = await asyncio.wait_for(backend.aget_or_set("k", quick), 2)
            return got, time.monotonic() - started
        finally:
            leader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await leader

    got, waited = asyncio.run(scenario())
    assert got == "waiter"
    assert waited >= 0.25, "the waiter did not wait for the leader at all"
    assert backend.stats.singleflight_waits == 1
    assert backend.get("k") == (True, "waiter")  # what the waiter computed was stored


# -- 2. undelivered writes are redelivered and reported alike ------------------------


class FlakyMemoryCache(InMemoryCache):
    """An InMemoryCache whose deletes and stamp replacements fail ``failures`` times
    (as an unreachable store would)."""

    errors = (ConnectionError,)

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.failures = 0

    def _maybe_fail(self) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("store unreachable")

    def delete_keys(self, keys):
        self._maybe_fail()
        return super().delete_keys(keys)

    def replace_stamps(self, skeys):
        self._maybe_fail()
        return super().replace_stamps(skeys)


def _stored(backend: InMemoryCache) -> set[str]:
    return set(backend.keys())


def test_undelivered_deletes_and_invalidations_are_redelivered_and_logged_alike(caplog):
    caplog.set_level(logging.ERROR, logger="relaycache")
    problems = []

    # A delete that failed is not served meanwhile (async or not) and lands without
    # another call: the redelivery thread delivers it, not the next caller.
    backend = FlakyMemoryCache(default_ttl=60)
    backend.set("doomed", 1)
    doomed = backend.value_key("doomed")
    backend.failures = 1
    backend.delete("doomed")
    assert doomed in _stored(backend), "the delete was expected to fail"
    if asyncio.run(backend.aget("doomed")) != (False, None):
        problems.append("the async path served an entry whose delete is pending")
    if not _wait_until(lambda: doomed not in _stored(backend)):
        problems.append("the pending delete was not redelivered")

    # An async invalidation that cannot be delivered is logged as a sync one is.
    other = FlakyMemoryCache(default_ttl=60)
    other.set("book", "v1", tags=["book"])
    caplog.clear()
    other.failures = 1
    asyncio.run(other.ainvalidate(["book"]))
    if "not delivered yet" not in caplog.text:
        problems.append(f"no 'not delivered yet' line on the async path: {caplog.text!r}")
    assert _wait_until(lambda: other.pending_invalidations == [])
    assert other.get("book") == (False, None)

    assert problems == []


# -- 3. a full noeviction server: the stamps are deleted instead ------------------------


@pytest.mark.real_redis
def test_async_invalidation_on_a_full_noeviction_server_deletes_the_stamps(
        redis_server_factory):
    server = redis_server_factory(extra_args=(
        "--maxmemory", str(4 * 1024 * 1024), "--maxmemory-policy", "noeviction"))
    prefix = _prefix()
    client = redis.Redis(host=HOST, port=server.port)
    backend = RedisCache(client, default_ttl=600, value_prefix=prefix,
                         meta_prefix=prefix + "meta:",
                         breaker=CircuitBreaker(threshold=1, cooldown=60))
    admin = server.client()
    computed = []

    def compute(value):
        async def run():
            computed.append(value)
            return value
        return run

    async def scenario():
        assert await backend.aget_or_set("book", compute("v1"), tags=["book"]) == "v1"
        assert await backend.aget_or_set("book", compute("v1"), tags=["book"]) == "v1"
        # Fill the server until it refuses writes, then keep it well over its limit
        # (at the very edge, a small write may still squeeze in).
        for i in range(2000):
            try:
                admin.set(f"fill:{i}", b"x" * 10_000)
            except redis.exceptions.OutOfMemoryError:
                break
        else:
            raise AssertionError("the server never filled up")
        admin.config_set("maxmemory", admin.info("memory")["used_memory"] // 2)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            admin.set("probe", "x")
        errors = backend.stats.errors
        await backend.ainvalidate(["book"])
        after = (backend.stats.errors - errors, backend.breaker.is_open,
                 backend.pending_invalidations)
        served = await backend.aget_or_set("book", compute("v2"), tags=["book"])
        return after, served

    try:
        (new_errors, breaker_open, pending), served = asyncio.run(scenario())
    finally:
        admin.config_set("maxmemory", 0)  # so that no retry thread outlives the test
        _wait_until(lambda: backend.pending_invalidations == [], 3)
        client.close()
        admin.close()
    assert (new_errors, breaker_open, pending) == (0, False, []), (
        "the refused stamp replacement was not replaced by a delete")
    assert served == "v2"
    assert computed == ["v1", "v2"]


# -- 4. async scripts are EVALSHA -------------------------------------------------------


@pytest.mark.real_redis
def test_async_scripts_are_sent_as_evalsha(redis_server):
    prefix = _prefix()
    client = redis.Redis(host=HOST, port=redis_server.port)
    backend = RedisCache(client, default_ttl=60, value_prefix=prefix,
                         meta_prefix=prefix + "meta:", lease_ttl=5)
    admin = redis_server.client()

    async def value():
        return {"n": 1}

    async def never():
        raise AssertionError("must be served from the cache")

    async def scenario():
        stored = await backend.aget_or_set("plain", value, tags=["t"])  # store script
        leased = await backend.aget_or_set("leased", value, tags=["t"],
                                           singleflight=True)  # + lease release script
        hit = await backend.aget_or_set("leased", never, tags=["t"])
        return stored, leased, hit

    try:
        reset_stats(admin)
        assert asyncio.run(scenario()) == ({"n": 1},) * 3
        calls = command_stats(admin)
    finally:
        client.close()
        admin.close()
    assert calls.get("eval", 0) == 0, f"scripts sent as EVAL: {calls}"
    assert calls.get("evalsha", 0) >= 3, calls  # two stores and a lease release
    assert backend.stats.stores == 2


# -- 5. aget/aset/adelete, and cached_view without thread hops --------------------------


def test_async_entry_api_and_cached_view_without_thread_hops(backend, monkeypatch):
    calls = []

    @cached_view(ttl=60, tags=["parity"], backend=backend)
    async def page(request):
        calls.append(request.path)
        return HttpResponse(f"page call={len(calls)}")

    hops = []
    original = SyncToAsync.__call__

    def counting(self, *args, **kwargs):
        hops.append(getattr(self.func, "__qualname__", repr(self.func)))
        return original(self, *args, **kwargs)

    async def serve():
        factory = RequestFactory()
        with monkeypatch.context() as patch:
            patch.setattr(SyncToAsync, "__call__", counting)
            first = await page(factory.get("/parity/"))  # computed and stored
            second = await page(factory.get("/parity/"))  # served from the cache
            head = await page(factory.head("/parity/"))  # served from the GET entry
        return first, second, head

    first, second, head = asyncio.run(serve())
    assert first.content == second.content == head.content == b"page call=1"
    assert len(calls) == 1
    assert hops == [], f"the async view handed cache calls to threads: {hops}"

    async def entries():
        stored = await backend.aset("k", {"a": [1, 2]}, tags=["t"])
        got = await backend.aget("k", tags=["t"])
        absent = await backend.aget("absent")
        await backend.adelete("k")
        deleted = await backend.aget("k", tags=["t"])
        await backend.aset("k2", 5, tags=["t"])
        await backend.ainvalidate(["t"])
        invalidated = await backend.aget("k2")
        return stored, got, absent, deleted, invalidated

    miss = (False, None)
    assert asyncio.run(entries()) == (True, (True, {"a": [1, 2]}), miss, miss, miss)
    # and the sync API agrees with the async one, both ways
    assert backend.set("sync", [1], tags=["t"])

    async def cross():
        from_sync = await backend.aget("sync", tags=["t"])
        await backend.aset("async", (1, 2), tags=["t"])
        return from_sync

    assert asyncio.run(cross()) == (True, [1])
    assert backend.get("async", tags=["t"]) == (True, (1, 2))


# -- a cancelled task still releases what it holds ---------------------------------------


class SlowFetchCache(InMemoryCache):
    """Its async fetch yields to the event loop, as a networked store's does."""

    async def afetch(self, keys):
        await asyncio.sleep(0.05)
        return self.fetch(keys)


def test_a_task_cancelled_inside_a_primitive_releases_its_lease_and_flight():
    backend = SlowFetchCache(default_ttl=60, lease_ttl=30)
    lease = backend.lease_key(backend.value_key("k"))

    async def compute():
        return "v"

    async def scenario():
        leader = asyncio.create_task(backend.aget_or_set("k", compute, singleflight=True))
        # The leader takes the lease, then looks the entry up once more (a slow fetch):
        # cancel it there.
        while backend.fetch([lease])[0] is None:
            await asyncio.sleep(0.001)
        leader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await leader
        held = backend.fetch([lease])[0]
        # The next caller is not held up by a flight or a lease nobody will release.
        value = await asyncio.wait_for(
            backend.aget_or_set("k", compute, singleflight=True), 2)
        return held, value

    held, value = asyncio.run(scenario())
    assert held is None, "the cancelled leader kept its lease until it expires"
    assert value == "v"


# -- 6. a pending invalidation does not block the event loop ------------------------------


class SlowUnreachable(InMemoryCache):
    """While ``down``, a stamp replacement takes 0.3 s and fails, as on a Redis that
    does not answer: the sync primitive blocks its thread, the async one awaits."""

    errors = (ConnectionError,)

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.down = True

    def replace_stamps(self, skeys):
        if self.down:
            time.sleep(0.3)
            raise ConnectionError("store unreachable")
        return super().replace_stamps(skeys)

    async def areplace_stamps(self, skeys):
        if self.down:
            await asyncio.sleep(0.3)
            raise ConnectionError("store unreachable")
        return super().replace_stamps(skeys)


def test_a_pending_invalidation_does_not_block_the_event_loop():
    """``aget_or_set`` used to redeliver pending invalidations synchronously, on the
    event loop's thread: every other task stalled for the store's timeout. A task
    that ticks every 10 ms must keep ticking while reads bypass the cache."""
    backend = SlowUnreachable(default_ttl=60, breaker=CircuitBreaker(threshold=100,
                                                                     cooldown=0))
    backend.set("k", "cached before the write", tags=["t"])

    async def compute():
        return "computed"

    async def scenario():
        await backend.ainvalidate(["t"])  # awaits the slow store, then stays pending
        done, gaps = asyncio.Event(), []

        async def ticker():
            last = time.monotonic()
            while not done.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        values = [await backend.aget_or_set("k", compute, tags=["t"]) for _ in range(3)]
        done.set()
        await ticking
        return values, max(gaps)

    try:
        values, worst = asyncio.run(scenario())
    finally:
        backend.down = False  # the redelivery lands: no retry thread outlives the test
    assert values == ["computed"] * 3  # never the entry from before the invalidation
    assert worst < 0.15, f"the event loop stalled for {worst:.2f} s"
    assert _wait_until(lambda: backend.pending_invalidations == [], 5)
