"""Shared fixtures: a Redis client (fakeredis by default, a real server on request).

``RELAYCACHE_TEST_REDIS_URL=redis://127.0.0.1:6379/15`` runs every Redis test against
that server instead of fakeredis. ``RELAYCACHE_STRICT=1`` turns every skipped test
into a failure, so CI cannot pass a real-service leg that quietly skipped.
"""

from __future__ import annotations

import contextlib
import gc
import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from relaycache import RedisCache, set_default_backend
from tests.support import IN_PROCESS_BACKENDS

REDIS_URL = os.environ.get("RELAYCACHE_TEST_REDIS_URL", "")
STRICT = os.environ.get("RELAYCACHE_STRICT") == "1"


def pytest_collection_modifyitems(config, items):
    if REDIS_URL:
        return
    skip = pytest.mark.skip(reason="needs RELAYCACHE_TEST_REDIS_URL (a real redis-server)")
    for item in items:
        if "real_redis" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped under RELAYCACHE_STRICT=1: {report.longrepr}"


def _make_client(decode_responses: bool) -> redis.Redis:
    if REDIS_URL:
        client = redis.Redis.from_url(REDIS_URL, decode_responses=decode_responses)
        client.ping()  # an unreachable server is an error here, never a skip
        return client
    import fakeredis

    return fakeredis.FakeRedis(decode_responses=decode_responses)


@contextlib.contextmanager
def redis_cache_on_a_clean_db(decode_responses: bool) -> Iterator[RedisCache]:
    """A RedisCache on the test server's database (or fakeredis), flushed before and
    after."""
    client = _make_client(decode_responses)
    client.flushdb()
    try:
        yield _redis_cache(client)
    finally:
        client.flushdb()
        client.close()


def _redis_cache(client: redis.Redis, **options) -> RedisCache:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    return RedisCache(client, **{"default_ttl": 60, "value_prefix": prefix,
                                 "meta_prefix": prefix + "meta:", **options})


@pytest.fixture(params=[False, True], ids=["bytes", "decoded"])
def redis_client(request):
    """A client on an empty database, with and without ``decode_responses``."""
    client = _make_client(request.param)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def real_redis_url():
    if not REDIS_URL:
        pytest.skip("needs RELAYCACHE_TEST_REDIS_URL (a real redis-server)")
    return REDIS_URL


@pytest.fixture
def redis_backend(redis_client):
    return _redis_cache(redis_client)


@pytest.fixture
def make_redis_backend(redis_client):
    """Build more RedisCache objects on the same client (``options`` as RedisCache's)."""
    return lambda **options: _redis_cache(redis_client, **options)


@pytest.fixture(params=["memory", "redis", "redis-decoded", "dict"])
def backend(request):
    """The contract suite: each test using it runs once per backend (InMemoryCache,
    RedisCache on a bytes and on a decoding client, and the third-party example of
    docs/backends.md), since the semantics must not differ."""
    if request.param in IN_PROCESS_BACKENDS:
        yield IN_PROCESS_BACKENDS[request.param](default_ttl=60)
        return
    with redis_cache_on_a_clean_db(request.param == "redis-decoded") as backend:
        yield backend


@pytest.fixture
def no_gc_pauses():
    """Pause the cyclic collector for a test that bounds a call's wall-clock time.

    Late in the suite the heap holds about a million objects and one generation-2
    collection took 1.4 s (measured with ``gc.callbacks``), which a timed call must not
    be charged for: the bounds are about the cache's waits on Redis, not the suite's
    garbage.
    """
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture(autouse=True)
def _fresh_default_backend():
    set_default_backend(None)
    yield
    set_default_backend(None)


def _compile_outcome(value):
    """What a remembered compile must agree on: the analysis (entry digest, which
    covers the SQL, parameters and result shape, and the tables) and, for a read, the
    column layout Django's iterables read after ``execute_sql()``."""
    if not hasattr(value, "analysis"):
        return value
    klass_info = value.klass_info or {}
    return (value.analysis, value.sql, value.col_count, value.has_extra_select,
            value.annotation_col_map, klass_info.get("model"),
            klass_info.get("select_fields"), [alias for _, _, alias in value.select])


@pytest.fixture(autouse=True)
def _compiled_reads_checked(monkeypatch):
    """Every compile the ORM memo reuses is compiled again and compared, so a query
    whose fingerprint misses part of its state fails the test that built it."""
    from relaycache.orm import memo

    remembered = memo.remembered

    def checked(key, make):
        known = key is not None and key in memo._entries
        value = remembered(key, make)
        if known:
            fresh = make()
            assert _compile_outcome(fresh) == _compile_outcome(value), (
                "the ORM memo reused a compile of a different query")
        return value

    checked.unchecked = remembered  # for tests that count compiles
    monkeypatch.setattr(memo, "remembered", checked)
