"""The cache never breaks the app: Redis down, hanging or coming back."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import fakeredis
import pytest
import redis

from relaycache import CircuitBreaker, InMemoryCache, RedisCache, cache, invalidate
from tests.support import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drain(backend: RedisCache) -> None:
    """Hygiene only: forget what a dead backend could not deliver, so its daemon retry
    thread ends with the test."""
    pending = backend.undelivered
    tags, keys = pending.snapshot()
    pending.forget(tags=tags, keys=keys)
    thread = getattr(backend, "_retry_thread", None)
    if thread is not None and not pending:
        thread.join(timeout=10)


@pytest.fixture
def dead_backend():
    client = redis.Redis(host="127.0.0.1", port=free_port())
    backend = RedisCache(client, default_ttl=60, value_prefix="dead:", meta_prefix="dead:meta:")
    yield backend
    drain(backend)


@pytest.fixture
def flaky():
    """A RedisCache on a fakeredis server the test can take down and bring back."""
    server = fakeredis.FakeServer()
    backend = RedisCache(fakeredis.FakeRedis(server=server), default_ttl=60,
                         breaker=CircuitBreaker(threshold=3, cooldown=0.1))
    yield server, backend
    server.connected = True
    drain(backend)


class Compute:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args):
        self.calls += 1
        return {"computed": self.calls}


# -- Redis down ---------------------------------------------------------------------------

def test_calls_return_the_computed_value_when_redis_is_down(dead_backend, caplog):
    caplog.set_level(logging.INFO, logger="relaycache")
    compute = Compute()

    @cache(backend=dead_backend, tags=lambda n: [f"n:{n}"])
    def f(n):
        return compute()

    assert [f(1)["computed"] for _ in range(5)] == [1, 2, 3, 4, 5]
    assert dead_backend.get("k") == (False, None)
    assert dead_backend.set("k", 1) is False
    dead_backend.delete("k")  # no exception either
    assert dead_backend.stats.errors >= 1
    assert dead_backend.stats.hits == 0
    failures = [r for r in caplog.records if r.name == "relaycache"]
    assert failures and all(r.levelno >= logging.WARNING for r in failures)
    assert any("failed" in r.getMessage() for r in failures)


def test_breaker_opens_after_three_failures_and_stops_connecting(dead_backend):
    assert dead_backend.breaker.threshold == 3
    compute = Compute()
    for expected_errors in (1, 2):
        dead_backend.get_or_set("k", compute)
        assert dead_backend.stats.errors == expected_errors
        assert not dead_backend.breaker.is_open
    dead_backend.get_or_set("k", compute)
    assert dead_backend.stats.errors == 3
    assert dead_backend.breaker.is_open

    started = time.monotonic()
    for _ in range(200):
        dead_backend.get_or_set("k", compute)
        dead_backend.get("k")
    # no further connection attempt: nothing failed, nothing was counted
    assert dead_backend.stats.errors == 3
    assert compute.calls == 203
    assert time.monotonic() - started < 5  # generous: the point is "no per-call timeout"


def test_breaker_lets_one_trial_through_after_its_cooldown():
    client = redis.Redis(host="127.0.0.1", port=free_port())
    backend = RedisCache(client, breaker=CircuitBreaker(threshold=3, cooldown=0.2))
    for _ in range(3):
        backend.get("k")
    assert backend.breaker.is_open and backend.stats.errors == 3
    backend.get("k")
    assert backend.stats.errors == 3
    time.sleep(0.3)
    backend.get("k")  # the half-open trial: attempted, failed, open again
    assert backend.stats.errors == 4
    assert backend.breaker.is_open
    backend.get("k")
    assert backend.stats.errors == 4


def test_the_users_client_is_kept_as_given():
    client = redis.Redis(host="127.0.0.1", port=free_port(), decode_responses=True)
    kwargs_before = dict(client.connection_pool.connection_kwargs)
    backend = RedisCache(client, socket_timeout=0.1)
    assert backend.redis_client is client
    assert client.connection_pool.connection_kwargs == kwargs_before


def test_hanging_redis_costs_the_requested_timeout_not_a_hang():
    """The guide builds its client with ``redis.Redis(host=..., port=...)``; a Redis that
    accepts connections but never answers must cost about ``socket_timeout``, not more."""
    listener = socket.socket()  # accepts TCP connections (kernel backlog), never answers
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        client = redis.Redis(host="127.0.0.1", port=listener.getsockname()[1])
        backend = RedisCache(client, socket_timeout=0.2,
                             breaker=CircuitBreaker(threshold=1, cooldown=60))
        compute = Compute()
        started = time.monotonic()
        first = backend.get_or_set("k", compute)
        elapsed = time.monotonic() - started
        assert first == {"computed": 1}
        assert backend.stats.errors == 1 and backend.breaker.is_open
        assert elapsed < 3, f"one call on a hanging Redis took {elapsed:.1f}s (timeout 0.2s)"
        started = time.monotonic()
        rest = [backend.get_or_set("k", compute) for _ in range(5)]
        assert [r["computed"] for r in rest] == [2, 3, 4, 5, 6]
        assert time.monotonic() - started < 3
    finally:
        listener.close()


def test_hanging_redis_from_url_costs_a_bounded_timeout():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        client = redis.Redis.from_url(f"redis://127.0.0.1:{listener.getsockname()[1]}/0")
        backend = RedisCache(client, socket_timeout=0.2)
        compute = Compute()
        started = time.monotonic()
        results = [backend.get_or_set("k", compute) for _ in range(6)]
        elapsed = time.monotonic() - started
        assert [r["computed"] for r in results] == [1, 2, 3, 4, 5, 6]
        assert backend.breaker.is_open and backend.stats.errors == 3
        assert elapsed < 10, f"calls on a hanging Redis took {elapsed:.1f}s"
    finally:
        listener.close()


def test_async_calls_fail_open_too(dead_backend):
    compute = Compute()

    @cache(backend=dead_backend)
    async def f(n):
        await asyncio.sleep(0)
        return compute()

    async def main():
        return [await f(1) for _ in range(4)]

    assert [r["computed"] for r in asyncio.run(main())] == [1, 2, 3, 4]
    assert dead_backend.stats.errors == 3
    assert dead_backend.breaker.is_open


# -- undelivered invalidations --------------------------------------------------------------

def test_undelivered_invalidation_is_kept_and_reads_bypass_the_cache(dead_backend, caplog):
    caplog.set_level(logging.INFO, logger="relaycache")
    compute = Compute()

    @cache(backend=dead_backend, tags=["books"])
    def f():
        return compute()

    invalidate(["books", "book:1"], backend=dead_backend)  # no exception
    assert dead_backend.pending_invalidations == ["book:1", "books"]
    bypassed = dead_backend.stats.bypassed
    assert f() == {"computed": 1}
    assert f() == {"computed": 2}
    assert dead_backend.get("k") == (False, None)
    assert dead_backend.stats.bypassed >= bypassed + 3
    assert dead_backend.pending_invalidations == ["book:1", "books"]
    errors = [r for r in caplog.records if r.name == "relaycache" and r.levelno >= logging.ERROR]
    assert any("not delivered" in r.getMessage() for r in errors)


def test_async_undelivered_invalidation_is_kept(dead_backend):
    async def main():
        await dead_backend.ainvalidate(["books"])

    asyncio.run(main())
    assert dead_backend.pending_invalidations == ["books"]


def test_invalidation_is_redelivered_when_redis_comes_back(flaky):
    server, backend = flaky
    compute = Compute()

    @cache(backend=backend, tags=["books"])
    def f():
        return compute()

    assert f() == {"computed": 1}
    assert f() == {"computed": 1}

    server.connected = False
    invalidate(["books"], backend=backend)
    assert backend.pending_invalidations == ["books"]
    assert f() == {"computed": 2}  # served without the cache meanwhile

    server.connected = True
    assert wait_until(lambda: not backend.pending_invalidations, 10, 0.05)
    assert backend.stats.invalidations_retried >= 1
    # the entry computed before the outage must never come back
    assert f() == {"computed": 3}
    assert f() == {"computed": 3}


def test_reads_resume_once_redis_is_back(flaky):
    server, backend = flaky
    compute = Compute()
    server.connected = False
    for _ in range(4):
        backend.get_or_set("k", compute)
    assert backend.breaker.is_open
    server.connected = True
    time.sleep(0.15)  # past the breaker's cooldown
    backend.get_or_set("k", compute)
    assert not backend.breaker.is_open
    assert backend.get_or_set("k", compute) == {"computed": 5}
    assert compute.calls == 5


def test_delete_during_an_outage_is_not_silently_dropped(flaky):
    """``wrapper.delete()`` that could not reach Redis must not let the old entry return."""
    server, backend = flaky
    source = {"title": "old"}

    @cache(backend=backend)
    def get_book():
        return dict(source)

    assert get_book() == {"title": "old"}
    source["title"] = "new"
    server.connected = False
    get_book.delete()  # the app changed the data and drops the entry: Redis is down
    server.connected = True
    time.sleep(0.3)
    assert get_book() == {"title": "new"}


# -- the cost of an outage ---------------------------------------------------------------

class Unreachable(InMemoryCache):
    """An InMemoryCache whose store cannot be reached while ``down``. It records, per
    thread, how many tags each ``stamp_keys()`` call named and how many keys each
    ``replace_stamps()`` call was given: the work a call does for what is pending."""

    errors = (ConnectionError,)

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.down = False
        self.named: list[tuple[str, int]] = []
        self.replaced: list[tuple[str, int]] = []

    def stamp_keys(self, tags):
        self.named.append((threading.current_thread().name, len(tags)))
        return super().stamp_keys(tags)

    def replace_stamps(self, skeys):
        self.replaced.append((threading.current_thread().name, len(skeys)))
        if self.down:
            raise ConnectionError("store unreachable")
        return super().replace_stamps(skeys)


RETRY = "relaycache-invalidation-retry"


def _by(thread: str, calls: list[tuple[str, int]]) -> list[int]:
    return [n for name, n in calls if name == thread]


def test_an_invalidation_during_an_outage_costs_what_it_adds_not_what_is_pending():
    """With 8,000 per-row tags pending, every ``invalidate()`` used to snapshot, sort
    and name all of them again (and send them all, or fail to): the work over an
    outage grew quadratically. A call now touches only what it adds; the redelivery
    thread delivers the rest in batches once the store is back."""
    backend = Unreachable(default_ttl=60, breaker=CircuitBreaker(threshold=3, cooldown=0.05))
    main = threading.current_thread().name
    backend.set("row:5", "old", tags=["row:5"])
    backend.down = True
    backend.invalidate([f"row:{i}" for i in range(8000)])  # e.g. a bulk update
    assert len(backend.pending_invalidations) == 8000
    backend.named.clear()
    backend.replaced.clear()

    for i in range(100):
        backend.invalidate([f"row:{8000 + i}"])
        assert backend.get("row:5", tags=["row:5"]) == (False, None)
    named, replaced = _by(main, backend.named), _by(main, backend.replaced)
    assert sum(named) <= 100 and max(named) == 1, (
        f"invalidate() named {max(named)} tags for the 1 it added")
    assert replaced == [] or max(replaced) == 1, (
        f"invalidate() sent {max(replaced)} stamps for the 1 it added")
    assert len(backend.pending_invalidations) == 8100
    assert backend.stats.hits == 0  # nothing is served while any invalidation is pending

    backend.down = False
    assert wait_until(lambda: backend.pending_invalidations == [], 10, 0.02)
    assert max(_by(RETRY, backend.replaced)) <= 1000, "the redelivery was not batched"
    assert backend.get("row:5", tags=["row:5"]) == (False, None)
    assert backend.set("row:5", "new", tags=["row:5"])
    assert backend.get("row:5", tags=["row:5"]) == (True, "new")


def test_an_invalidation_repeated_during_a_redelivery_is_not_forgotten_with_it():
    """A delivery forgets only what it sent: the same tag invalidated again while the
    redelivery thread's batch was in flight stays pending until it lands itself."""
    backend = Unreachable(default_ttl=60, breaker=CircuitBreaker(threshold=3, cooldown=0.05))
    backend.down = True
    backend.invalidate(["books"])  # undelivered: the redelivery thread retries it
    in_flight, repeated = threading.Event(), threading.Event()

    def replace(skeys):  # the store is back for the thread's first batch, only for it
        if threading.current_thread().name == RETRY and not in_flight.is_set():
            in_flight.set()
            assert repeated.wait(5)
            return InMemoryCache.replace_stamps(backend, skeys)
        raise ConnectionError("store unreachable")

    backend.replace_stamps = replace
    assert in_flight.wait(5)
    backend.invalidate(["books"])  # again, while that batch is in flight: undelivered
    repeated.set()
    assert wait_until(lambda: backend.stats.invalidations_retried >= 2, 5, 0.01)
    assert backend.pending_invalidations == ["books"], "forgotten with the older batch"
    del backend.replace_stamps
    backend.down = False
    assert wait_until(lambda: backend.pending_invalidations == [], 10, 0.02)
