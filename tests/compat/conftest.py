"""What the relaycache 0.1 library's README examples connect to.

They build ``redis.Redis(host='localhost', port=6379, db=0)`` and
``redis.asyncio.Redis(...)``. While ``seed_redis`` is active both names are
subclasses that keep every other option but connect to fakeredis (one server for both,
so sync and async clients share data) or, with ``RELAYCACHE_TEST_REDIS_URL``, to the
test server, whose database is flushed before and after.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import redis.asyncio

from tests.conftest import REDIS_URL

_WHERE = {"host", "port", "db", "password", "username", "unix_socket_path"}
_REAL = {"sync": redis.Redis, "async": redis.asyncio.Redis}


def _patched(kind: str, server: Any) -> type:
    import fakeredis

    real = _REAL[kind]
    base = real if REDIS_URL else {"sync": fakeredis.FakeRedis,
                                   "async": fakeredis.FakeAsyncRedis}[kind]
    parts = urlsplit(REDIS_URL) if REDIS_URL else None

    class Meta(type(base)):
        # A client the cache derives (a clone of the given one's pool) is an instance
        # of the real class: isinstance() against the patched name must accept it.
        def __instancecheck__(cls, obj: Any) -> bool:
            return isinstance(obj, real)

    class SeedRedis(base, metaclass=Meta):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if args or "connection_pool" not in kwargs:
                args = ()
                for name in _WHERE & kwargs.keys():
                    del kwargs[name]
                if parts is not None:
                    kwargs.update(host=parts.hostname or "127.0.0.1", port=parts.port or 6379,
                                  db=int(parts.path.lstrip("/") or 0))
                else:
                    kwargs["server"] = server
            super().__init__(*args, **kwargs)

    return SeedRedis


@pytest.fixture
def seed_redis(monkeypatch):
    """Patch ``redis.Redis`` and ``redis.asyncio.Redis``; yields a sync admin client on
    the same data."""
    import fakeredis

    server = None if REDIS_URL else fakeredis.FakeServer()
    monkeypatch.setattr(redis, "Redis", _patched("sync", server))
    monkeypatch.setattr(redis.asyncio, "Redis", _patched("async", server))
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
