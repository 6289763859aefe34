"""RedisCache on a Sentinel-managed master that fails over (``SENTINEL FAILOVER``).

One master, one replica and three Sentinels, every one a process of its own on
loopback. The replica is writable (``replica-read-only no``) only so that a test can
make it diverge from its master, as asynchronous replication does when a master
fails before its last writes reached the replica.
"""

from __future__ import annotations

import threading
import time

import orjson
import pytest
from redis.sentinel import Sentinel

from relaycache import CircuitBreaker, RedisCache, cache, invalidate
from tests.reliability.support import prefix
from tests.support import concurrently, wait_until

pytest_plugins = ("tests.servers",)
pytestmark = pytest.mark.real_redis



def _sentinel_backend(group, value_prefix: str) -> RedisCache:
    sentinel = Sentinel(group.sentinel_addresses, socket_timeout=1,
                        sentinel_kwargs={"socket_timeout": 1})
    client = sentinel.master_for(group.name, socket_timeout=1)
    return RedisCache(client, default_ttl=300, value_prefix=value_prefix,
                      meta_prefix=value_prefix + "meta:",
                      breaker=CircuitBreaker(threshold=3, cooldown=0.2))


def _book_reader(backend: RedisCache, truth: dict[int, str], computed: list[int]):
    @cache(backend=backend, tags=lambda n: [f"book:{n}", "books"], key=lambda n: f"book:{n}")
    def get_book(n):
        computed.append(n)
        return {"n": n, "v": truth[n]}

    return get_book


def test_failover_refuses_every_entry_from_before_and_caching_resumes(redis_sentinel):
    group = redis_sentinel
    old_master, replica = group.master, group.replica
    backend = _sentinel_backend(group, prefix("sen"))
    truth = dict.fromkeys(range(10), "v1")
    computed: list[int] = []
    get_book = _book_reader(backend, truth, computed)

    # Before the failover: misses, then hits, and invalidation works.
    for n in range(10):
        assert get_book(n) == {"n": n, "v": "v1"}
    for n in range(10):
        assert get_book(n) == {"n": n, "v": "v1"}
    assert computed == list(range(10)) and backend.stats.hits == 10
    truth[0] = "v2"
    invalidate(["book:0"], backend=backend)
    assert get_book(0) == {"n": 0, "v": "v2"} and get_book(0) == {"n": 0, "v": "v2"}
    assert computed[-1] == 0 and len(computed) == 11

    # A write whose invalidation reaches the master but not the replica that will be
    # promoted (asynchronous replication: the master failed right after it).
    master_admin, replica_admin = old_master.client(), replica.client()
    stamp_key = backend.stamp_keys(["book:1"])[0]
    old_stamp = master_admin.get(stamp_key)
    truth[1] = "v2"
    invalidate(["book:1"], backend=backend)
    assert master_admin.get(stamp_key) != old_stamp
    assert master_admin.wait(1, 2000) == 1
    replica_admin.set(stamp_key, old_stamp, keepttl=True)
    # Proof that the replica alone would serve book 1 stale: its entry cites exactly the
    # stamps the replica holds. Only the server tag can make it miss after promotion.
    entry_tags, entry_stamps, data = orjson.loads(
        replica_admin.get(backend.value_key("book:1")))
    on_replica = [replica_admin.get(k) for k in backend.stamp_keys(entry_tags)]
    assert [s.decode() for s in on_replica] == entry_stamps and data == {"n": 1, "v": "v1"}

    # Calls keep running in threads during the failover; none may raise.
    stop = threading.Event()
    bad: list[tuple[int, object]] = []
    background_calls = [0]

    @cache(backend=backend, tags=lambda i: [f"bg:{i}"], key=lambda i: f"bg:{i}")
    def background(i):
        return {"bg": i}

    def loop(worker: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            got = background((worker * 7 + i) % 13)
            if got != {"bg": (worker * 7 + i) % 13}:
                bad.append((i, got))
            if i % 5 == 0:
                backend.invalidate([f"bg:{i % 13}"])
            background_calls[0] += 1
            time.sleep(0.005)

    with concurrently(loop, 2, stop=stop):
        began = time.monotonic()
        new_master = group.failover()
        failover_seconds = time.monotonic() - began
        assert new_master is replica

        # Caching resumes on the new master within a bounded time.
        resumed = time.monotonic()
        probes = iter(range(10_000))

        @cache(backend=backend, tags=["probe"], key=lambda i: f"probe:{i}")
        def probe(i):
            return i

        def caches_again() -> bool:
            i = next(probes)
            hits = backend.stats.hits
            return probe(i) == i and probe(i) == i and backend.stats.hits == hits + 1

        assert wait_until(caches_again, 10, 0.05), "no hit within 10 s of the failover"
        resume_seconds = time.monotonic() - resumed
    assert bad == [], bad[:3]
    assert background_calls[0] > 0

    # Every entry stored before the failover misses once (stale: it cites the old
    # server stamp), book 1 included, whose invalidation the new master never got.
    before = backend.stats.snapshot()
    computed.clear()
    for n in range(10):
        assert get_book(n) == {"n": n, "v": truth[n]}, f"book {n} served stale"
    after = backend.stats.snapshot()
    assert sorted(computed) == list(range(10)), f"served from before the failover: {computed}"
    assert after["hits"] == before["hits"]
    assert after["stale"] - before["stale"] == 10
    # ...and is cached again.
    for n in range(10):
        assert get_book(n) == {"n": n, "v": truth[n]}
    assert backend.stats.hits == after["hits"] + 10 and len(computed) == 10
    truth[5] = "v3"
    invalidate(["book:5"], backend=backend)
    assert get_book(5) == {"n": 5, "v": "v3"}
    assert backend.pending_invalidations == []
    print(f"\nsentinel failover: {failover_seconds:.1f} s until the old master followed the "
          f"new one; first hit {resume_seconds:.2f} s later; stats {backend.stats.snapshot()}")


@pytest.mark.parametrize("min_replicas", [0, 1], ids=["default", "min-replicas-to-write"])
def test_an_invalidation_sent_to_the_deposed_master_is_not_lost(redis_sentinel, min_replicas):
    """Sentinel turns the old master into a replica about 8 s after promoting the
    replica; until then the old master still accepts writes from connections opened
    before the failover. A process holding such a connection invalidates there, while a
    process started after the failover caches on the new master. Once the failover is
    complete, no process may serve what that invalidation dropped.

    With ``min-replicas-to-write 1`` (docs/redis.md) the deposed master, which lost its
    replica, refuses the invalidation; it is kept and redelivered to the new master."""
    group = redis_sentinel
    old_master, new_master = group.master, group.replica
    for server in (old_master, new_master):
        with server.client() as admin:
            admin.config_set("min-replicas-to-write", min_replicas)
            admin.config_set("min-replicas-max-lag", 2)
    value_prefix = prefix("dep")
    truth = {1: "v1"}
    writer = _sentinel_backend(group, value_prefix)  # lives through the failover
    assert writer.get("warm-up") == (False, None)  # a pooled connection to the old master

    group.request_failover()
    group.wait_promoted(new_master)

    computed: list[int] = []
    reader = _sentinel_backend(group, value_prefix)  # started after the promotion
    read = _book_reader(reader, truth, computed)
    assert read(1) == {"n": 1, "v": "v1"} and read(1) == {"n": 1, "v": "v1"}
    if not min_replicas:
        assert computed == [1], "the new process did not cache on the new master"
        with new_master.client() as admin:
            assert admin.exists(reader.value_key("book:1"))
    # (With min-replicas-to-write the new master refuses writes until the old one
    # follows it: nothing is cached meanwhile.)

    truth[1] = "v2"
    invalidated_at = time.monotonic()
    invalidate(["book:1"], backend=writer)  # returns: delivered to the old master, or kept
    with old_master.client() as admin:
        old_role = admin.info("replication")["role"]
    assert old_role == "master", "the old master was converted before the test could write"
    if min_replicas:
        assert writer.pending_invalidations == ["book:1"], "the deposed master took it"
    window_read = read(1)

    group.wait_converted(old_master, new_master)
    converted_at = time.monotonic()
    # The writer's connection was killed by Sentinel; it reconnects to the new master.
    assert wait_until(lambda: writer.get("warm-up") == (False, None)
                      and not writer.breaker.is_open, 5, 0.05)
    assert wait_until(lambda: writer.pending_invalidations == [], 5, 0.05)
    from_writer = _book_reader(writer, truth, [])(1)
    from_reader = read(1)
    print(f"\nmin-replicas-to-write {min_replicas}: invalidation sent to the {old_role} "
          f"old master; read during the "
          f"window: {window_read}; {converted_at - invalidated_at:.1f} s later the old "
          f"master followed the new one; then the writer read {from_writer}, the reader "
          f"{from_reader}; stats writer {writer.stats.snapshot()} reader "
          f"{reader.stats.snapshot()}")
    assert from_writer == {"n": 1, "v": "v2"} and from_reader == {"n": 1, "v": "v2"}, (
        "an invalidation delivered to the deposed master before Sentinel reconfigured "
        "it was lost: the entry the new process cached on the new master is still "
        "served after the failover completed")
