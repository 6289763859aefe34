"""RedisCache on a Redis Cluster whose topology changes under it: a replica taking
over its master (``CLUSTER FAILOVER``) and a slot moving to another master.

What is promised on Cluster (docs/limits.md: the restart check is not done there):
no exception reaches the caller, an invalidation that returned is honoured by every
later read, hits resume; ``stats.errors`` may rise while the topology changes.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time

import pytest
from redis.cluster import RedisCluster

from relaycache import CircuitBreaker, RedisCache, cache, invalidate
from tests.reliability.support import prefix
from tests.servers import HOST
from tests.support import concurrently, wait_until

pytest_plugins = ("tests.servers",)
pytestmark = [pytest.mark.real_redis, pytest.mark.cluster]



def _backend(cluster) -> RedisCache:
    client = RedisCluster(host=HOST, port=cluster.master_ports()[0])
    value_prefix = prefix("clf")
    return RedisCache(client, default_ttl=300, value_prefix=value_prefix,
                      meta_prefix=value_prefix + "meta:",
                      breaker=CircuitBreaker(threshold=3, cooldown=0.2))


def _owner(backend: RedisCache, key: str) -> int:
    """The port of the master serving ``key`` now (the slot map is read afresh)."""
    client = backend.redis_client
    client.nodes_manager.initialize()
    return client.nodes_manager.get_node_from_slot(client.keyslot(key)).port


class Shop:
    """Books whose versions change; records when each invalidation returned."""

    def __init__(self, backend: RedisCache, books: int, key: str = "book:<n>") -> None:
        self.backend = backend
        self.version = dict.fromkeys(range(books), 0)
        self.invalidated: list[tuple[float, int, int]] = []  # (returned at, n, version)
        self.reads: list[tuple[float, int, int]] = []  # (began at, n, version read)
        self.computed = 0
        self._lock = threading.Lock()

        @cache(backend=backend, tags=lambda n: [f"book:{n}", "books"],
               key=lambda n: key.replace("<n>", str(n)))
        def get_book(n):
            self.computed += 1
            return {"n": n, "version": self.version[n]}

        self.get_book = get_book

    def read(self, n: int) -> dict:
        began = time.monotonic()
        got = self.get_book(n)
        assert got["n"] == n, got
        with self._lock:
            self.reads.append((began, n, got["version"]))
        return got

    def write(self, n: int) -> None:
        with self._lock:
            self.version[n] += 1
            version = self.version[n]
        invalidate([f"book:{n}"], backend=self.backend)
        with self._lock:
            self.invalidated.append((time.monotonic(), n, version))

    def stale_reads(self) -> list[tuple[int, int, int]]:
        """Reads that began after an invalidation returned and saw an older version."""
        stale = []
        for began, n, seen in self.reads:
            due = max((v for at, m, v in self.invalidated if m == n and at < began), default=0)
            if seen < due:
                stale.append((n, seen, due))
        return stale


def _load(shop: Shop) -> contextlib.AbstractContextManager[list]:
    """Two readers and a writer calling the shop while a ``with`` block runs; an
    exception that reaches one of them fails the test."""
    books, stop = len(shop.version), threading.Event()

    def repeat(i: int) -> None:
        action, pause = (shop.read, 0.001) if i < 2 else (shop.write, 0.01)
        rng = random.Random(i if i < 2 else 99)
        while not stop.is_set():
            action(rng.randrange(books))
            time.sleep(pause)

    return concurrently(repeat, 3, stop=stop)


@pytest.mark.parametrize("node", ["stamps", "entries"])
def test_cluster_failover_keeps_reads_fresh(redis_cluster_with_replicas, node):
    cluster = redis_cluster_with_replicas
    backend = _backend(cluster)
    shop = Shop(backend, books=20)
    stamps_port = _owner(backend, backend.stamp_keys(["books"])[0])
    if node == "stamps":
        port = stamps_port
    else:  # the node of an entry, not the one holding the stamps
        n = next(n for n in range(200)
                 if _owner(backend, backend.value_key(f"book:{n}")) != stamps_port)
        port = _owner(backend, backend.value_key(f"book:{n}"))
    replica = cluster.replica_of(port)
    for n in range(20):
        shop.read(n)
        shop.read(n)
    assert shop.computed == 20 and backend.stats.hits == 20 and backend.stats.errors == 0

    with _load(shop):
        time.sleep(0.3)
        began = time.monotonic()
        with cluster.server(replica).client() as promoted:
            assert promoted.execute_command("CLUSTER FAILOVER") in (b"OK", "OK", True)
        assert wait_until(lambda: cluster.roles()[replica].get("role") == "master"
                          and cluster.roles()[port].get("role") == "slave", 15, 0.05), (
            f"the replica did not take over: {cluster.roles()}\n"
            f"{cluster.server(replica).log()[-2000:]}\n{cluster.server(port).log()[-2000:]}")
        switched = time.monotonic() - began
        cluster.wait_ok(15)
        cluster.wait_replicas_synced(15)
        settled = time.monotonic() - began
        time.sleep(0.5)  # load keeps running on the new topology
    reads_during = len(shop.reads)

    # After the failover: invalidations are honoured, misses store, hits serve.
    assert wait_until(lambda: backend.pending_invalidations == [], 10, 0.05)
    assert wait_until(lambda: not backend.breaker.is_open, 5, 0.05)
    errors_before = backend.stats.errors
    for n in range(20):
        shop.read(n)
    hits = backend.stats.hits
    for n in range(20):
        assert shop.read(n)["version"] == shop.version[n]
    assert backend.stats.hits == hits + 20, "no hits after the failover"
    for n in range(20):
        shop.write(n)
        assert shop.read(n)["version"] == shop.version[n]
        assert shop.read(n)["version"] == shop.version[n]
    assert backend.stats.errors == errors_before, "errors after the topology settled"
    assert shop.stale_reads() == [], f"stale reads (book, seen, due): {shop.stale_reads()[:5]}"
    print(f"\ncluster failover of the {node} node: replica master after {switched:.2f} s, "
          f"cluster settled after {settled:.2f} s; {reads_during} reads and "
          f"{len(shop.invalidated)} invalidations checked; stats {backend.stats.snapshot()}")
    backend.clear()


def _cluster_setslot(cluster, slot: int, *args) -> None:
    for port in cluster.master_ports():
        with cluster.server(port).client() as node:
            node.execute_command("CLUSTER SETSLOT", slot, *args)


@pytest.mark.parametrize("what", ["entries", "stamps"])
def test_slot_migration_keeps_reads_correct(redis_cluster_with_replicas, what):
    cluster = redis_cluster_with_replicas
    backend = _backend(cluster)
    # Five entries in one slot (hash tag), so the slot moves in two halves.
    shop = Shop(backend, books=5, key="{shelf}:book:<n>")
    client = backend.redis_client
    if what == "entries":
        slot = client.keyslot(backend.value_key("{shelf}:book:0"))
    else:
        slot = client.keyslot(backend.stamp_keys(["books"])[0])
    source = _owner(backend, backend.value_key("{shelf}:book:0") if what == "entries"
                    else backend.stamp_keys(["books"])[0])
    target = next(p for p in cluster.master_ports() if p != source)
    source_id, target_id = cluster.node_id(source), cluster.node_id(target)
    phases: dict[str, dict] = {}

    def check(phase: str) -> None:
        """Every read equals the truth; an invalidation made now is honoured."""
        # What failed in the previous phase (a TRYAGAIN while half the stamps had moved)
        # opened the breaker and left an invalidation to redeliver: let it recover.
        wait_until(lambda: backend.pending_invalidations == [], 5, 0.05)
        if backend.breaker.is_open:
            time.sleep(backend.breaker.cooldown + 0.05)
        before = backend.stats.snapshot()
        for n in range(5):
            assert shop.read(n)["version"] == shop.version[n], (phase, n)
            assert shop.read(n)["version"] == shop.version[n], (phase, n)
        shop.write(phase_no := len(phases) % 5)
        assert shop.read(phase_no)["version"] == shop.version[phase_no], phase
        after = backend.stats.snapshot()
        phases[phase] = {k: after[k] - before[k] for k in ("hits", "misses", "errors")}

    check("before")
    src, dst = cluster.server(source).client(), cluster.server(target).client()
    try:
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        check("migrating")
        keys = src.execute_command("CLUSTER GETKEYSINSLOT", slot, 10_000)
        assert keys, "the slot holds none of our keys"
        half = keys[: len(keys) // 2] or keys
        assert src.execute_command("MIGRATE", HOST, target, "", 0, 5000, "KEYS", *half)
        check("half moved")
        rest = src.execute_command("CLUSTER GETKEYSINSLOT", slot, 10_000)
        if rest:
            assert src.execute_command("MIGRATE", HOST, target, "", 0, 5000, "KEYS", *rest)
        check("all moved")
        _cluster_setslot(cluster, slot, "NODE", target_id)
        assert wait_until(lambda: src.execute_command("CLUSTER COUNTKEYSINSLOT", slot) == 0
                          and dst.execute_command("CLUSTER COUNTKEYSINSLOT", slot) > 0, 5)
        cluster.wait_ok(15)
        check("done")
    finally:
        src.close()
        dst.close()
    print(f"\nslot {slot} ({what}, {len(keys)} keys) moved {source} -> {target}; per phase "
          f"{phases}; stats {backend.stats.snapshot()}")
    assert shop.stale_reads() == []
    assert _owner(backend, backend.value_key("{shelf}:book:0") if what == "entries"
                  else backend.stamp_keys(["books"])[0]) == target
    assert phases["done"]["errors"] == 0 and phases["done"]["hits"] >= 5, phases
    assert phases["before"]["errors"] == 0 and phases["before"]["hits"] >= 5, phases
    assert backend.pending_invalidations == []
    backend.clear()


def test_an_unreachable_cluster_never_raises_into_the_caller(redis_cluster_with_replicas):
    """Runs last in this module: it kills every node. A dead cluster must cost misses
    that compute, like a dead single server (docs/failure.md), not exceptions."""
    cluster = redis_cluster_with_replicas
    backend = _backend(cluster)
    shop = Shop(backend, books=3)
    for n in range(3):
        shop.read(n)
        shop.read(n)
    assert backend.stats.hits == 3
    for server in cluster.servers:
        server.kill()
    outcomes = {}
    for name, call in [
        ("get_or_set", lambda: shop.get_book(1)),
        ("get", lambda: backend.get("book:1", tags=["book:1", "books"])),
        ("set", lambda: backend.set("x", 1, tags=["x"])),
        ("invalidate", lambda: backend.invalidate(["book:1"])),
        ("get_or_set again", lambda: shop.get_book(2)),
    ]:
        began = time.monotonic()
        try:
            outcomes[name] = (call(), round(time.monotonic() - began, 2))
        except Exception as exc:
            outcomes[name] = (f"{type(exc).__name__}: {str(exc)[:80]}", None)
    print(f"\nevery cluster node killed: {outcomes}; stats {backend.stats.snapshot()}")
    raised = {name: got for name, (got, took) in outcomes.items() if took is None}
    assert raised == {}, f"exceptions reached the caller: {raised}"
    assert outcomes["get_or_set"][0] == {"n": 1, "version": 0}
    assert outcomes["get"][0] == (False, None) and outcomes["set"][0] is False
    assert backend.pending_invalidations == ["book:1"]
