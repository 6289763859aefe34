"""Invariant 7 of DESIGN.md against a redis-server that really dies, comes back with its
data, or stops answering (SIGSTOP)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis

from relaycache import CircuitBreaker, RedisCache, cache
from tests.support import concurrently, timed_calls, wait_until, warm_square

pytest_plugins = ("tests.servers",)
pytestmark = pytest.mark.real_redis



def test_outage_falls_through_and_a_pending_invalidation_lands_after_restart(
        redis_server_factory):
    server = redis_server_factory(persist=True)
    prefix = f"out{uuid.uuid4().hex[:8]}:"
    backend = RedisCache(redis.Redis(host="127.0.0.1", port=server.port),
                         value_prefix=prefix, meta_prefix=prefix + "meta:",
                         breaker=CircuitBreaker(threshold=3, cooldown=0.5))
    database = {"version": "old"}
    computed: list[int] = []

    @cache(backend=backend, tags=lambda n: [f"book:{n}", "books"], key=lambda n: f"book:{n}")
    def get_book(n):
        computed.append(n)
        return f"{database['version']}-{n}"

    for n in range(5):
        assert get_book(n) == f"old-{n}"
        assert get_book(n) == f"old-{n}"
    assert len(computed) == 5 and backend.stats.hits == 5
    admin = server.client()
    assert admin.save()
    assert server.rdb_path.exists()

    # Calls keep running from threads while the server dies; none may raise.
    stop = threading.Event()
    served: list[tuple[float, str, str]] = []  # (call started, expected, got)

    def loop(worker: int) -> None:
        i = 0
        while not stop.is_set():
            n = (worker + i) % 5
            i += 1
            began = time.monotonic()
            got = get_book(n)
            backend.get(f"book:{n}", tags=[f"book:{n}", "books"])
            backend.set(f"extra:{worker}", i, tags=["extra"])
            served.append((began, f"-{n}", got))
            time.sleep(0.002)

    with concurrently(loop, 4, stop=stop):
        time.sleep(0.2)
        server.kill()  # a crash: nothing saved after the SAVE above
        time.sleep(0.3)
        computed_before = len(computed)

        # A write happens during the outage: its invalidation cannot be delivered.
        database["version"] = "new"
        backend.invalidate(["books"])
        invalidated_at = time.monotonic()
        assert backend.pending_invalidations == ["books"]
        time.sleep(0.5)
        assert backend.pending_invalidations == ["books"], "invalidation dropped"
        assert backend.stats.errors > 0
        assert backend.breaker.is_open
        assert len(computed) > computed_before, "calls during the outage were not computed"

        # The server comes back WITH the data it had: the old entries and old stamps.
        server.start()
        restored = server.client()
        assert restored.exists(backend.value_key("book:1")), "old entry not restored"
        delivered = wait_until(lambda: backend.pending_invalidations == [], 5)
        time.sleep(0.2)
    assert delivered, f"pending invalidation not delivered: {backend.pending_invalidations}"

    stale = [(expected, got) for began, expected, got in served
             if began > invalidated_at and not got.startswith("new")]
    assert stale == [], f"served old data after invalidate() returned: {stale[:5]}"
    assert all(got.endswith(expected) for _, expected, got in served)

    # Neither this process nor any other one serves the old entries now.
    fresh = RedisCache(redis.Redis(host="127.0.0.1", port=server.port),
                       value_prefix=prefix, meta_prefix=prefix + "meta:")
    for n in range(5):
        assert fresh.get(f"book:{n}", tags=[f"book:{n}", "books"]) in ((False, None),
                                                                        (True, f"new-{n}"))
        assert get_book(n) == f"new-{n}"
        assert fresh.get(f"book:{n}", tags=[f"book:{n}", "books"]) == (True, f"new-{n}")
    assert not backend.breaker.is_open


@pytest.mark.parametrize("client_options", [{}, {"socket_timeout": None}],
                         ids=["default-client", "socket_timeout-None"])
def test_a_stopped_server_costs_bounded_latency_to_a_client_without_timeouts(
        redis_server, client_options):
    # The user sets no timeout: either the redis-py defaults (the guide's style) or an
    # explicit None. RedisCache's own socket_timeout (0.5 s) must bound cache calls.
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, **client_options)
    prefix = f"out{uuid.uuid4().hex[:8]}:"
    backend = RedisCache(client, value_prefix=prefix, meta_prefix=prefix + "meta:")
    square = warm_square(backend)

    redis_server.pause()
    try:
        outcome, timings = timed_calls({  # 4 calls of at most ~2 s each
            "hit": lambda: square(3),
            "miss": lambda: square(4),
            "invalidate": lambda: backend.invalidate(["n:3"]),
            "after": lambda: square(3),
        }, timeout=10)
    finally:
        redis_server.resume()
    print(f"\nSIGSTOPped server, seconds per call: "
          f"{ {k: round(v, 2) for k, v in timings.items()} }")
    assert outcome == {"hit": 9, "miss": 16, "invalidate": None, "after": 9}, outcome
    slow = {name: t for name, t in timings.items() if t > 2.0}
    assert slow == {}, f"calls took more than 2 s: {slow}"
    assert backend.stats.errors > 0
    assert backend.pending_invalidations == ["n:3"]

    # Once the server answers again the invalidation lands and hits are correct:
    # no reply left over from a timed-out request is read as another one's.
    assert wait_until(lambda: backend.pending_invalidations == [], 15, 0.1)
    for n in (3, 4, 5, 3, 4, 5):
        assert square(n) == n * n
    assert backend.get("n:3", tags=["n:3"]) == (True, 9)


def test_entries_restored_from_disk_after_a_restart_are_never_served(redis_server_factory):
    """An invalidation may be lost with the process that could not deliver it while
    Redis was away. When Redis comes back with its old data (RDB), no process, old or
    new, may serve an entry written before the restart."""
    server = redis_server_factory(persist=True)
    prefix = f"rs{uuid.uuid4().hex[:6]}:"
    source = {"title": "old"}

    def backend():
        return RedisCache(redis.Redis(host="127.0.0.1", port=server.port),
                          value_prefix=prefix, meta_prefix=prefix + "meta:")

    old_process = backend()

    @cache(backend=old_process, tags=["books"], key=lambda: "book")
    def read_old():
        return dict(source)

    assert read_old() == {"title": "old"} and read_old() == {"title": "old"}
    assert old_process.stats.hits == 1
    server.client().save()  # the entry and its stamps are on disk
    server.kill()
    source["title"] = "new"  # written while Redis was down; the invalidation is lost
    server.restart()

    new_process = backend()

    @cache(backend=new_process, tags=["books"], key=lambda: "book")
    def read_new():
        return dict(source)

    assert read_new() == {"title": "new"}  # a process started after the restart
    wait_until(lambda: not old_process.breaker.is_open, 10, 0.1)
    assert read_old() == {"title": "new"}  # a process that lived through it
