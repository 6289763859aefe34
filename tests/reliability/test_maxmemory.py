"""A server far too small for what is cached (``--maxmemory 2mb``), under each eviction
policy, while the source of truth keeps changing and is invalidated as it changes:
no read is ever stale, no exception reaches the caller; under ``noeviction`` the cache
degrades to misses (refused writes are counted in ``stats.errors``)."""

from __future__ import annotations

import random

import pytest
import redis

from relaycache import CircuitBreaker, RedisCache, cache, invalidate
from tests.reliability.support import prefix
from tests.servers import HOST
from tests.support import wait_until

pytest_plugins = ("tests.servers",)
pytestmark = pytest.mark.real_redis

MAXMEMORY = 2 * 1024 * 1024
BOOKS = 300
PAD = "x" * 2000  # every book entry is about 2 KB
FILL = "f" * 6000


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru", "noeviction"])
def test_a_full_server_never_serves_stale_data(redis_server_factory, policy):
    server = redis_server_factory(extra_args=(
        "--maxmemory", str(MAXMEMORY), "--maxmemory-policy", policy))
    value_prefix = prefix("mm")

    def process() -> RedisCache:
        return RedisCache(redis.Redis(host=HOST, port=server.port), default_ttl=600,
                          value_prefix=value_prefix, meta_prefix=value_prefix + "meta:",
                          breaker=CircuitBreaker(threshold=3, cooldown=0.05))

    backend, other = process(), process()
    truth = dict.fromkeys(range(BOOKS), 0)

    def book_reader(on: RedisCache):
        @cache(backend=on, tags=lambda n: [f"book:{n}", "books"], key=lambda n: f"book:{n}")
        def get_book(n):
            return {"n": n, "v": truth[n], "pad": PAD}

        return get_book

    get_book = book_reader(backend)
    other_get_book = book_reader(other)  # another process sharing the server

    @cache(backend=backend, key=lambda shelf: f"shelf:{shelf}",
           tags=lambda shelf: ["books", *(f"book:{n}" for n in range(shelf, shelf + 10))])
    def get_shelf(shelf):
        return [(n, truth[n]) for n in range(shelf, shelf + 10)]

    # Stored by the other process before the server fills up.
    probe = {"v": 1}

    @cache(backend=other, tags=["probe"], key=lambda: "probe")
    def read_probe():
        return dict(probe)

    assert read_probe() == {"v": 1} and read_probe() == {"v": 1}

    rng = random.Random(policy)
    stale, other_stale, reads = [], [], 0
    written = 0
    for i in range(4000):
        n = rng.randrange(BOOKS)
        op = rng.random()
        if op < 0.15:
            truth[n] += 1
            invalidate([f"book:{n}"], backend=backend)
        elif op < 0.16:
            for m in range(BOOKS):
                truth[m] += 1
            invalidate(["books"], backend=backend)
        elif op < 0.7:
            got = get_book(n)
            reads += 1
            if got["v"] != truth[n]:
                stale.append((i, n, got["v"], truth[n]))
            if other_get_book(n)["v"] != truth[n]:
                other_stale.append((i, n))
        else:
            shelf = n - n % 10
            reads += 1
            if get_shelf(shelf) != [(m, truth[m]) for m in range(shelf, shelf + 10)]:
                stale.append((i, "shelf", shelf))
        # Unrelated entries keep arriving, far beyond what the server can hold.
        backend.set(f"fill:{i}", FILL, tags=[f"fill:{i % 50}"])
        written += len(FILL)

    # Once full: a write and its invalidation by this process; what does the other
    # process read? (Under noeviction the server refuses the invalidation.)
    probe["v"] = 2
    invalidate(["probe"], backend=backend)
    other_probe = read_probe()

    admin = server.client()
    memory, stats = admin.info("memory"), admin.info("stats")
    snapshot = backend.stats.snapshot()
    print(f"\n{policy}: {reads} reads, {written / 1e6:.0f} MB offered to a "
          f"{MAXMEMORY / 1e6:.1f} MB server; used_memory {memory['used_memory'] / 1e6:.2f} MB, "
          f"evicted_keys {stats['evicted_keys']}, dbsize {admin.dbsize()}; stats {snapshot}; "
          f"pending {len(backend.pending_invalidations)}; stale reads by another process "
          f"during the run: {len(other_stale)}, after the last invalidation: "
          f"{other_probe != probe}")
    # Let the refused invalidations land, so that no retry thread outlives the test.
    admin.config_set("maxmemory", 0)
    drained = wait_until(lambda: backend.pending_invalidations == [], 10, 0.05)

    assert stale == [], f"stale reads (iteration, book, served, truth): {stale[:5]}"
    # Under noeviction too: a refused invalidation deletes the stamps instead.
    assert other_stale == [], f"another process read stale data: {other_stale[:5]}"
    assert other_probe == {"v": 2}
    assert drained, f"invalidations still pending once memory was freed: {snapshot}"
    assert written > 10 * MAXMEMORY
    if policy == "noeviction":
        assert stats["evicted_keys"] == 0
        assert snapshot["errors"] > 0, "refused writes were not counted"
        # Degraded to misses: the hits it still had came from entries stored before
        # the server filled up; afterwards nearly everything is computed.
        assert snapshot["stores"] < 1500, snapshot
    else:
        assert stats["evicted_keys"] > 0
        assert snapshot["hits"] > 100, "the cache stopped serving anything"
        assert snapshot["stores"] > 4000
