"""The near cache is on by default, where it can work, and the option says how.

``RedisCache(client)`` gives itself a :class:`~relaycache.NearCache` when the client
connects through redis-py's own sockets, which a server can push invalidation messages
to; with a test double (fakeredis) it keeps none, so nothing is ever served without
tracking. The real-server half checks what a user gets from a URL and from settings.
"""

from __future__ import annotations

import fakeredis
import pytest
import redis

from relaycache import NearCache, RedisCache
from relaycache.settings import DEFAULTS, build_backend

pytest_plugins = ("tests.servers",)


def _cache(client, **options) -> RedisCache:
    return RedisCache(client, value_prefix="nd:", meta_prefix="nd:meta:", **options)


def test_a_test_double_gets_no_near_cache_even_when_asked_for_the_default():
    for options in ({}, {"near_cache": True}):
        backend = _cache(fakeredis.FakeRedis(), **options)
        assert backend._near is None
        backend.set("k", 1, tags=["t"])
        assert backend.get("k", tags=["t"]) == (True, 1)
        assert backend.stats.near_misses == 0  # no near cache was even asked


@pytest.mark.parametrize("off", [False, None])
def test_false_or_none_turns_it_off(off):
    assert _cache(redis.Redis(), near_cache=off)._near is None


def test_a_near_cache_or_its_options_are_used_as_given():
    near = NearCache(max_entries=5)
    assert _cache(redis.Redis(), near_cache=near)._near is near
    built = _cache(redis.Redis(), near_cache={"max_entries": 7, "max_bytes": 1000})._near
    assert built is not None and (built.max_entries, built.max_bytes) == (7, 1000)


@pytest.mark.parametrize("bad", ["yes", 1, ["max_entries"]])
def test_any_other_value_is_a_type_error_naming_the_option(bad):
    with pytest.raises(TypeError, match="near_cache must be True, False, a NearCache"):
        _cache(redis.Redis(), near_cache=bad)


@pytest.mark.real_redis
def test_a_cache_from_a_url_serves_hits_from_the_process(redis_server):
    backend = RedisCache.from_url(redis_server.url, value_prefix="nd:",
                                  meta_prefix="nd:meta:")
    assert isinstance(backend._near, NearCache)
    backend.set("k", {"v": 1}, tags=["t"])
    for _ in range(3):
        assert backend.get("k", tags=["t"]) == (True, {"v": 1})
    assert backend.stats.near_hits == 2, backend.stats  # the first read filled it
    redis_server.client().set("nd:meta:t:t", "replaced by another client")
    assert backend.get("k", tags=["t"]) == (False, None)


@pytest.mark.real_redis
@pytest.mark.parametrize(("options", "near"), [({}, True), ({"near_cache": False}, False),
                                               ({"near_cache": {"max_entries": 3}}, True)])
def test_settings_turn_it_off_or_bound_it(redis_server, options, near):
    backend = build_backend({**DEFAULTS, "BACKEND": redis_server.url, "OPTIONS": options})
    assert isinstance(backend, RedisCache)
    assert (backend._near is not None) is near
    if options.get("near_cache"):
        assert backend._near.max_entries == 3


@pytest.mark.real_redis
@pytest.mark.cluster
def test_a_cluster_client_gets_one_too(shared_redis_cluster):
    from redis.cluster import RedisCluster

    client = RedisCluster(host="127.0.0.1", port=shared_redis_cluster.ports[0])
    try:
        backend = _cache(client)
        assert isinstance(backend._near, NearCache)
        backend.set("k", 1, tags=["t"])
        for _ in range(3):
            assert backend.get("k", tags=["t"]) == (True, 1)
        assert backend.stats.near_hits == 2, backend.stats
    finally:
        client.close()
