"""The contract suite here also runs on ``AioredisCache``: the backend of an application
whose only Redis client is a ``redis.asyncio.Redis`` must keep every promise the other
backends keep, from sync and async callers alike."""

from __future__ import annotations

import uuid

import pytest

from relaycache import AioredisCache
from tests.conftest import REDIS_URL, _make_client, redis_cache_on_a_clean_db
from tests.support import IN_PROCESS_BACKENDS


def make_async_client(decode_responses: bool = False, server=None):
    """A ``redis.asyncio.Redis`` on the test server, or on fakeredis ``server``."""
    if REDIS_URL:
        import redis.asyncio as aredis

        return aredis.Redis.from_url(REDIS_URL, decode_responses=decode_responses)
    import fakeredis

    return fakeredis.FakeAsyncRedis(server=server, decode_responses=decode_responses)


def make_sync_client(decode_responses: bool = False, server=None):
    """A sync client on the same data as :func:`make_async_client` with ``server``."""
    if REDIS_URL:
        return _make_client(decode_responses)
    import fakeredis

    return fakeredis.FakeRedis(server=server, decode_responses=decode_responses)


@pytest.fixture(params=["memory", "redis", "redis-decoded", "dict", "aioredis"])
def backend(request):
    """The root ``backend`` fixture's backends, and ``AioredisCache``."""
    if request.param in IN_PROCESS_BACKENDS:
        yield IN_PROCESS_BACKENDS[request.param](default_ttl=60)
        return
    if request.param == "aioredis":
        import fakeredis

        server = None if REDIS_URL else fakeredis.FakeServer()
        admin = make_sync_client(server=server)
        admin.flushdb()
        prefix = f"t{uuid.uuid4().hex[:8]}:"
        cache = AioredisCache(make_async_client(server=server), default_ttl=60,
                              value_prefix=prefix, meta_prefix=prefix + "meta:")
        cache.test_admin = admin  # a sync client on the same data, for the tests' checks
        yield cache
        admin.flushdb()
        admin.close()
        return
    with redis_cache_on_a_clean_db(request.param == "redis-decoded") as backend:
        yield backend
