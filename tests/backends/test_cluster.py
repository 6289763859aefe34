"""RedisCache on a real 3-master Redis Cluster (``redis.cluster.RedisCluster``).

Tag stamps and entries hash to different slots and nodes, so every multi-key
operation must be split without CROSSSLOT errors, and ``clear()`` must reach every
node. Failures inside the cache are swallowed and counted, so ``stats.errors == 0``
is asserted wherever a step must have worked.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter

import pytest
from redis.cluster import RedisCluster

from relaycache import RedisCache, cache, invalidate
from tests.servers import command_stats, reset_stats
from tests.support import run_concurrently, timed_calls, warm_square

pytest_plugins = ("tests.servers",)
pytestmark = [pytest.mark.real_redis, pytest.mark.cluster]

# Sent by the test itself, or by a client to set up a connection / learn the topology.
_NOT_DATA = ("info", "config", "hello", "client", "cluster", "command", "ping")


@pytest.fixture
def cluster_client(redis_cluster):
    client = RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0])
    yield client
    client.close()


def _backend(client: RedisCluster, prefix: str | None = None, **options) -> RedisCache:
    prefix = prefix or f"cl{uuid.uuid4().hex[:8]}:"
    # Every hit asks Redis: these tests count that path's commands (the near cache, on
    # by default, is tested in test_near_cache.py).
    options.setdefault("near_cache", False)
    return RedisCache(client, value_prefix=prefix, meta_prefix=prefix + "meta:", **options)


def _port_of(client: RedisCluster, key: str) -> int:
    return client.nodes_manager.get_node_from_slot(client.keyslot(key)).port


def _keys_on_each_node(client: RedisCluster, backend: RedisCache) -> list[str]:
    """One entry key per node: key ``i`` lives on the ``i``-th distinct node."""
    by_port: dict[int, str] = {}
    for i in range(1000):
        key = f"entry{i}"
        by_port.setdefault(_port_of(client, backend.value_key(key)), key)
        if len(by_port) == 3:
            return [by_port[p] for p in sorted(by_port)]
    raise AssertionError("keys did not spread over 3 nodes")


def _node_keys(redis_cluster) -> dict[int, list[str]]:
    return {server.port: sorted(k.decode() for k in server.client().scan_iter(count=1000))
            for server in redis_cluster.servers}


def _no_crossslot(caplog) -> None:
    assert not [r for r in caplog.records if "CROSSSLOT" in r.getMessage()]


def test_hits_misses_and_invalidation_across_nodes(cluster_client, caplog):
    caplog.set_level(logging.WARNING, logger="relaycache")
    backend = _backend(cluster_client)
    tags = ["tag-a", "tag-b", "tag-c"]
    # All stamps share one slot (a hit is two MGETs); the entries spread over the nodes.
    assert len({cluster_client.keyslot(k) for k in backend.stamp_keys(tags)}) == 1
    multi_key, solo_key, _ = _keys_on_each_node(cluster_client, backend)
    computed = []

    @cache(backend=backend, tags=tags, key=lambda: multi_key)
    def multi():
        computed.append("multi")
        return {"tags": tags, "n": len(computed)}

    @cache(backend=backend, tags=tags[:1], key=lambda: solo_key)
    def solo():
        computed.append("solo")
        return ("solo", len(computed))

    first_multi, first_solo = multi(), solo()
    for _ in range(3):
        assert multi() == first_multi and solo() == first_solo
    assert computed == ["multi", "solo"]
    assert backend.stats.hits == 6 and backend.stats.stores == 2

    # Invalidate the third tag: only the entry citing it recomputes.
    invalidate(tags=[tags[2]], backend=backend)
    assert multi() != first_multi and solo() == first_solo
    assert computed == ["multi", "solo", "multi"]

    # From another client ("another process"): the first tag drops both.
    other = _backend(RedisCluster(host="127.0.0.1", port=cluster_client.get_nodes()[-1].port),
                     backend.value_prefix)
    other.invalidate([tags[0]])
    multi()
    solo()
    assert computed == ["multi", "solo", "multi", "multi", "solo"]
    assert other.get(multi_key, tags=tags) == (True, multi())
    assert backend.stats.errors == 0 and other.stats.errors == 0
    assert backend.pending_invalidations == [] and other.pending_invalidations == []
    _no_crossslot(caplog)
    backend.clear()


def test_clear_removes_only_own_keys_on_every_node(cluster_client, redis_cluster, caplog):
    caplog.set_level(logging.WARNING, logger="relaycache")
    ours = _backend(cluster_client)
    theirs = _backend(cluster_client)
    foreign = [f"{ours.value_prefix.rstrip(':')}-not-ours:{i}" for i in range(20)]
    for key in foreign:
        cluster_client.set(key, "keep", ex=300)
    for i in range(60):
        for backend in (ours, theirs):
            assert backend.set(f"e{i}", {"i": i}, tags=[f"t{i % 7}", "all"])
    with_prefix = lambda keys, prefix: [k for k in keys if k.startswith(prefix)]  # noqa: E731
    before = _node_keys(redis_cluster)
    assert all(with_prefix(keys, ours.value_prefix) for keys in before.values()), (
        "our keys should be spread over all 3 nodes")

    ours.clear()

    after = _node_keys(redis_cluster)
    for port in after:
        assert with_prefix(after[port], ours.value_prefix) == [], f"left on node {port}"
        assert with_prefix(after[port], theirs.value_prefix) == with_prefix(
            before[port], theirs.value_prefix), f"another cache's keys removed on {port}"
    assert [cluster_client.get(k) for k in foreign] == [b"keep"] * len(foreign)
    assert ours.get("e1", tags=["t1", "all"]) == (False, None)
    assert theirs.get("e1", tags=["t1", "all"]) == (True, {"i": 1})
    assert ours.stats.errors == 0 and theirs.stats.errors == 0
    _no_crossslot(caplog)
    theirs.clear()
    cluster_client.delete(*foreign)


def test_distributed_singleflight_on_the_cluster(redis_cluster, caplog):
    caplog.set_level(logging.WARNING, logger="relaycache")
    prefix = f"cl{uuid.uuid4().hex[:8]}:"
    computed, backends = [], []

    def slow(n):
        computed.append(n)
        time.sleep(0.3)
        return {"n": n, "token": uuid.uuid4().hex}

    def run(i):
        own = _backend(RedisCluster(host="127.0.0.1", port=redis_cluster.ports[i % 3]), prefix)
        backends.append(own)
        fn = cache(backend=own, tags=["sf", "sf2", "sf3"], key=lambda n: f"sf:{n}",
                   distributed_singleflight=True)(slow)
        return fn(1)

    started = time.monotonic()
    results = run_concurrently(run, 6, timeout=15)
    elapsed = time.monotonic() - started
    assert computed == [1], f"computed {len(computed)} times"
    assert all(r == results[0] for r in results)
    assert elapsed < 5, f"waiters were not woken by the release ({elapsed:.1f}s)"
    assert sum(b.stats.errors for b in backends) == 0
    _no_crossslot(caplog)
    backends[0].clear()


@pytest.mark.parametrize("tag_count", [1, 10])
def test_a_hit_is_at_most_one_mget_per_node(cluster_client, redis_cluster, tag_count):
    backend = _backend(cluster_client)
    tags = [f"many{i}" for i in range(tag_count)]
    calls = []

    @cache(backend=backend, tags=tags, key=lambda: "wide")
    def wide():
        calls.append(1)
        return "value"

    assert wide() == "value" and wide() == "value"  # stored, then a warm hit
    nodes = redis_cluster.node_clients()
    for node in nodes:
        reset_stats(node)
    hits = 10
    for _ in range(hits):
        assert wide() == "value"
    per_node = {}
    for server, node in zip(redis_cluster.servers, nodes, strict=True):
        per_node[server.port] = {k: v for k, v in command_stats(node).items()
                                 if not k.startswith(_NOT_DATA)}
    total = Counter()
    for commands in per_node.values():
        total.update(commands)
    slots = len({cluster_client.keyslot(k)
                 for k in [backend.value_key("wide"), *backend.stamp_keys(tags)]})
    print(f"\ncluster hit with {tag_count} tags ({slots} slots): per hit "
          f"{ {k: v / hits for k, v in total.items()} }, per node {per_node}")
    assert calls == [1] and backend.stats.errors == 0
    assert set(total) == {"mget"}, f"a hit issued other commands: {dict(total)}"
    assert total["mget"] / hits <= len(nodes), (
        f"a hit with {tag_count} tags issued {total['mget'] / hits:g} MGETs over "
        f"{len(nodes)} nodes (one per slot, not per node): {per_node}")
    backend.clear()


def test_a_stopped_node_costs_bounded_latency(cluster_client, redis_cluster):
    """Runs last: it SIGSTOPs one node for a few seconds (far below the node timeout)."""
    backend = _backend(cluster_client)
    square = warm_square(backend)
    port = _port_of(cluster_client, backend.value_key("n:3"))
    server = next(s for s in redis_cluster.servers if s.port == port)
    server.pause()
    try:
        outcome, timings = timed_calls({"hit": lambda: square(3), "miss": lambda: square(4)},
                                       timeout=5)
    finally:
        server.resume()
    redis_cluster.wait_ok()
    print(f"\ncluster node SIGSTOPped, seconds per call: "
          f"{ {k: round(v, 2) for k, v in timings.items()} }")
    assert outcome == {"hit": 9, "miss": 16}, outcome
    assert max(timings.values()) < 2.0, timings
