"""A slow or black-holed Redis, through a loopback TCP proxy (:class:`TcpProxy`):
the latency a cache call adds stays bounded by ``socket_timeout``, the circuit breaker
opens under a black hole and closes again once the path heals."""

from __future__ import annotations

import statistics
import time

import pytest
import redis

from relaycache import CircuitBreaker, RedisCache, cache
from tests.reliability.support import prefix
from tests.servers import HOST
from tests.support import run_concurrently, wait_until

pytest_plugins = ("tests.servers",)
pytestmark = pytest.mark.real_redis

TIMEOUT = 0.2


@pytest.fixture
def proxied(redis_server, tcp_proxy_factory, no_gc_pauses):
    """A RedisCache(socket_timeout=0.2, breaker 3 failures / 1 s) reaching its
    server through a proxy; the client's own timeouts are left unset. The timed calls
    run without the cyclic collector (``no_gc_pauses``). No near cache: these tests
    time the calls that reach Redis (a near cache would answer hits from the process
    until its heartbeat, 1 s, went unanswered)."""
    proxy = tcp_proxy_factory(redis_server.port)
    value_prefix = prefix("slow")
    backend = RedisCache(redis.Redis(host=HOST, port=proxy.port), default_ttl=60,
                         socket_timeout=TIMEOUT, value_prefix=value_prefix,
                         meta_prefix=value_prefix + "meta:",
                         breaker=CircuitBreaker(threshold=3, cooldown=1), near_cache=False)
    return proxy, backend


def _timed(fn, *args):
    began = time.monotonic()
    result = fn(*args)
    return result, time.monotonic() - began


def test_latency_added_by_a_slow_redis_is_bounded_by_the_timeout(proxied):
    proxy, backend = proxied
    computed = []

    @cache(backend=backend, tags=lambda n: [f"n:{n}", "all"], key=lambda n: f"n:{n}")
    def square(n):
        computed.append(n)
        return n * n

    for n in range(20):
        assert square(n) == n * n
    baseline = [_timed(square, n % 20)[1] for n in range(200)]
    assert len(computed) == 20 and backend.stats.hits == 200

    # Slower than usual but under the timeout: still served from the cache.
    proxy.delay = 0.05
    slow = [_timed(square, n % 20) for n in range(20)]
    assert [r for r, _ in slow] == [(n % 20) ** 2 for n in range(20)]
    assert len(computed) == 20 and backend.stats.errors == 0
    slow_max = max(t for _, t in slow)
    assert slow_max < 0.05 + TIMEOUT, f"a hit took {slow_max:.3f} s with 50 ms of latency"

    # Slower than the timeout: each call waits at most a few timeouts, returns the
    # right value (computed), and once the breaker is open costs nothing more.
    proxy.delay = 1.0

    def calls():
        return [_timed(square, n) for n in range(20)]

    [over] = run_concurrently(lambda _: calls(), 1, timeout=30)  # a hang fails the test
    proxy.heal()
    assert [r for r, _ in over] == [n * n for n in range(20)]
    timings = [t for _, t in over]
    assert backend.stats.errors >= 3 and backend.breaker.is_open
    # A hit is one MGET: connect (CLIENT SETINFO, restart check) plus the command,
    # one retry: at most about 4 timeouts when the server answers nothing in time.
    assert max(timings) < 4 * TIMEOUT + 0.3, f"a call took {max(timings):.2f} s: {timings}"
    after_open = timings[5:]
    assert max(after_open) < 0.05, f"calls still wait on Redis with the breaker open: {timings}"

    # Healed: after the cooldown the breaker closes and hits are served again, with
    # values matching their keys (no late reply read as another call's).
    assert wait_until(lambda: square(3) == 9 and not backend.breaker.is_open, 5, 0.1)
    hits = backend.stats.hits
    for n in range(20):
        assert square(n) == n * n
    assert backend.stats.hits > hits
    print(f"\nslow redis (socket_timeout {TIMEOUT} s): hit median "
          f"{statistics.median(baseline) * 1e3:.2f} ms direct; max {slow_max * 1e3:.0f} ms "
          f"at +50 ms; at +1 s per reply, first calls {[round(t, 2) for t in timings[:5]]} s, "
          f"then max {max(after_open) * 1e3:.2f} ms with the breaker open; "
          f"stats {backend.stats.snapshot()}")


def test_breaker_opens_under_a_black_hole_and_closes_after_healing(proxied):
    proxy, backend = proxied
    version = {"v": 1}

    @cache(backend=backend, tags=["books"], key=lambda n: f"book:{n}")
    def book(n):
        return {"n": n, "v": version["v"]}

    for n in range(5):
        book(n)
    assert book(1) == {"n": 1, "v": 1} and backend.stats.hits == 1

    proxy.blackhole()
    opened_after, timings = None, []

    def calls():
        nonlocal opened_after
        for i in range(15):
            result, took = _timed(book, i % 5)
            assert result == {"n": i % 5, "v": version["v"]}
            timings.append(took)
            if backend.breaker.is_open and opened_after is None:
                opened_after = i + 1
        version["v"] = 2  # a write while Redis is unreachable
        backend.invalidate(["books"])
        for i in range(5):
            result, took = _timed(book, i)
            assert result == {"n": i, "v": 2}
            timings.append(took)

    began = time.monotonic()
    run_concurrently(lambda _: calls(), 1, timeout=30)
    blackholed_for = time.monotonic() - began
    assert backend.breaker.is_open, "the breaker did not open under a black hole"
    assert opened_after is not None and opened_after <= 3, opened_after
    assert max(timings) < 4 * TIMEOUT + 0.3, f"a call took {max(timings):.2f} s: {timings}"
    assert sum(timings[3:]) < 0.5, f"calls kept waiting with the breaker open: {timings}"
    assert backend.pending_invalidations == ["books"]

    # Heal: within the cooldown (1 s) the breaker lets a trial through, it succeeds,
    # the pending invalidation lands and entries from before are not served.
    proxy.heal()
    healed = time.monotonic()
    assert wait_until(lambda: not backend.breaker.is_open
                      and backend.pending_invalidations == [], 5, 0.05), (
        f"breaker still open {time.monotonic() - healed:.1f} s after healing")
    closed_after = time.monotonic() - healed
    assert closed_after < 1 + 1.5, closed_after
    for n in range(5):
        assert book(n) == {"n": n, "v": 2}
    hits = backend.stats.hits
    assert book(1) == {"n": 1, "v": 2} and backend.stats.hits == hits + 1
    print(f"\nblack hole: breaker open after {opened_after} call(s); per-call seconds "
          f"{[round(t, 2) for t in timings]} over {blackholed_for:.1f} s; closed "
          f"{closed_after:.2f} s after healing (cooldown 1 s); stats {backend.stats.snapshot()}")


def test_an_invalidation_over_a_slow_link_reaches_processes_with_a_healthy_one(
        redis_server, tcp_proxy_factory):
    """A writer whose replies take 1 s (5 times its timeout) returns within its timeout
    and serves fresh data at once; its invalidation must still reach Redis, so that a
    process with a healthy link stops serving the old row. It used to be retried with
    the callers' timeout: each new connection's setup (redis-py's handshake, the
    restart check) timed out before the write was sent, for as long as the link
    stayed slow. The redelivery waits for the link instead (docs/failure.md bounds the
    gap: about six of its round trips)."""
    proxy = tcp_proxy_factory(redis_server.port)
    value_prefix = prefix("link")
    options = {"default_ttl": 60, "value_prefix": value_prefix,
               "meta_prefix": value_prefix + "meta:"}
    writer = RedisCache(redis.Redis(host=HOST, port=proxy.port), socket_timeout=TIMEOUT,
                        breaker=CircuitBreaker(threshold=3, cooldown=1), **options)
    healthy = RedisCache(redis.Redis(host=HOST, port=redis_server.port), **options)
    database = {"title": "old"}

    def reader(backend):
        return cache(backend=backend, tags=["book:1"], key=lambda: "book:1")(
            lambda: database["title"])

    read_writer, read_healthy = reader(writer), reader(healthy)
    assert read_healthy() == "old" and read_writer() == "old" and writer.stats.hits == 1

    proxy.delay = 1.0
    assert writer.get("other") == (False, None)  # timed out: its connection is dropped
    database["title"] = "new"
    began = time.monotonic()
    writer.invalidate(["book:1"])
    returned = time.monotonic() - began
    assert returned < 4 * TIMEOUT + 0.3, f"invalidate() took {returned:.2f} s"
    assert writer.pending_invalidations == ["book:1"]
    # Meanwhile the writer reads fresh data, and waits on nothing to do so.
    began = time.monotonic()
    assert read_writer() == "new"
    assert time.monotonic() - began < 0.1, "a read waited on the pending invalidation"

    assert wait_until(lambda: read_healthy() == "new", 10, 0.05), (
        "the invalidation never reached Redis over the slow link")
    gap = time.monotonic() - began
    assert gap < 6 * proxy.delay + 1.0, f"it took {gap:.1f} s to land"
    assert wait_until(lambda: writer.pending_invalidations == [], 10, 0.05)
    assert read_healthy() == "new" and healthy.stats.hits >= 1
    proxy.heal()
    print(f"\nslow link (+{proxy.delay or 1.0} s per reply, socket_timeout {TIMEOUT} s): "
          f"invalidate() returned in {returned:.2f} s, landed {gap:.1f} s later; "
          f"writer stats {writer.stats.snapshot()}")
