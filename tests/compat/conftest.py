"""What the relaycache 0.1 library's README examples connect to.

They build ``redis.Redis(host='localhost', port=6379, db=0)`` and
``redis.asyncio.Redis(...)``. While ``seed_redis`` is active both names are
subclasses that keep every other option but connect to fakeredis (one server for both,
so sync and async clients share data) or, with ``RELAYCACHE_TEST_REDIS_URL``, to the
test server, whose database is flushed before and after.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
import redis.asyncio

from tests.conftest import REDIS_URL
from tests.support import redirected_redis

_REAL = {"sync": redis.Redis, "async": redis.asyncio.Redis}  # before any patch

@pytest.fixture
def seed_redis(monkeypatch):
    """Patch ``redis.Redis`` and ``redis.asyncio.Redis``; yields a sync admin client on
    the same data."""
    import fakeredis

    server = None if REDIS_URL else fakeredis.FakeServer()
    monkeypatch.setattr(redis, "Redis", redirected_redis("sync", server, REDIS_URL))
    monkeypatch.setattr(redis.asyncio, "Redis", redirected_redis("async", server, REDIS_URL))
    admin = redis.Redis()
    admin.flushdb()
    yield admin
    admin.flushdb()
    admin.close()


@pytest.fixture
def async_clients():
    """A factory of ``redis.asyncio.Redis`` clients on one empty database (fakeredis, or
    the test server), and a sync client on the same data as ``.admin``."""
    import fakeredis

    server = None if REDIS_URL else fakeredis.FakeServer()

    def make(decode_responses: bool = False) -> Any:
        if REDIS_URL:
            return _REAL["async"].from_url(REDIS_URL, decode_responses=decode_responses)
        return fakeredis.FakeAsyncRedis(server=server, decode_responses=decode_responses)

    admin = (_REAL["sync"].from_url(REDIS_URL) if REDIS_URL
             else fakeredis.FakeRedis(server=server))
    admin.flushdb()
    make.admin = admin  # type: ignore[attr-defined]
    yield make
    admin.flushdb()
    admin.close()
