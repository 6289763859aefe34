"""The pytest plugin ``relaycache.testing``: relaycache_backend, relaycache_disabled,
relaycache_counter, used here directly and, in a subprocess, by a project without
Django settings or pytest-django."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from relaycache import InMemoryCache, cache, get_default_backend, invalidate
from relaycache.testing import CacheCounter, DisabledCache, cache_disabled
from tests.ormapp.models import Book

pytest_plugins = ("pytester",)


def counted():
    calls = []

    @cache(tags=["t"])
    def compute(x):
        calls.append(x)
        return {"x": x}

    return compute, calls


def test_relaycache_backend_is_a_fresh_default(relaycache_backend):
    assert isinstance(relaycache_backend, InMemoryCache)
    assert get_default_backend() is relaycache_backend
    assert relaycache_backend.keys() == []
    compute, calls = counted()
    compute(1), compute(1)
    assert calls == [1]
    assert relaycache_backend.get(compute.cache_key(1), tags=["t"]) == (True, {"x": 1})


def test_relaycache_disabled_runs_the_code_every_time(relaycache_disabled, relaycache_counter):
    assert isinstance(relaycache_disabled, DisabledCache)
    assert get_default_backend() is relaycache_disabled
    compute, calls = counted()
    assert compute(1) == compute(1) == {"x": 1}
    assert calls == [1, 1]
    relaycache_counter.assert_misses(2)
    relaycache_counter.assert_hits(0)
    counters = relaycache_disabled.stats.snapshot()
    assert counters["stores"] == counters["stores_rejected"] == 0  # nothing even tried
    assert relaycache_disabled.set("k", 1) is False
    assert relaycache_disabled.get("k") == (False, None)
    invalidate(["t"])
    relaycache_counter.assert_invalidated("t")


def test_relaycache_disabled_still_rejects_unencodable_values(relaycache_disabled):
    @cache
    def bad():
        return object()

    with pytest.raises(TypeError, match="cannot encode"):
        bad()


def test_relaycache_disabled_with_singleflight(relaycache_disabled):
    calls = []

    @cache(distributed_singleflight=True)
    def f():
        calls.append(1)
        return 1

    assert f() == f() == 1
    assert calls == [1, 1]


@pytest.mark.django_db(transaction=True)
def test_cached_querysets_hit_the_database_when_disabled(relaycache_backend):
    Book.objects.create(title="T", author="A", isbn="1", publication_date="2024-01-01")
    with CaptureQueriesContext(connection) as queries:
        list(Book.objects.cached()), list(Book.objects.cached())
    assert len(queries) == 1
    with cache_disabled(), CaptureQueriesContext(connection) as queries:
        list(Book.objects.cached()), list(Book.objects.cached())
        assert Book.objects.cached().count() == 1
    assert len(queries) == 3
    assert get_default_backend() is relaycache_backend  # restored after the block
    with CaptureQueriesContext(connection) as queries:
        list(Book.objects.cached())
    assert len(queries) == 0


def test_cache_disabled_context_manager_restores(relaycache_backend):
    compute, calls = counted()
    compute(1)
    with cache_disabled() as disabled:
        assert get_default_backend() is disabled
        compute(1)
    compute(1)
    assert calls == [1, 1]


def test_counter_records_and_asserts(relaycache_backend, relaycache_counter):
    compute, _ = counted()
    compute(1), compute(1), compute(2)
    invalidate(["t"])
    compute(1)
    relaycache_counter.assert_hits(1)
    relaycache_counter.assert_misses(3)
    assert relaycache_counter.stale == 1
    relaycache_counter.assert_invalidations(1)
    relaycache_counter.assert_invalidated("t")
    relaycache_counter.assert_uncacheable(0)
    with pytest.raises(AssertionError, match="expected 5 cache hits, got 1"):
        relaycache_counter.assert_hits(5)
    with pytest.raises(AssertionError, match="missing"):
        relaycache_counter.assert_invalidated("t", "other")
    relaycache_counter.reset()
    relaycache_counter.assert_misses(0)


@pytest.mark.django_db(transaction=True)
def test_counter_records_uncacheable_queries(relaycache_backend, relaycache_counter):
    list(Book.objects.cached().order_by("?"))
    relaycache_counter.assert_uncacheable(1)
    assert relaycache_counter.uncacheable == ["order_by('?') is random"]


def test_counter_of_one_backend():
    mine, other = InMemoryCache(), InMemoryCache()
    with CacheCounter(mine) as counter:
        for backend in (mine, other):
            backend.get_or_set("k", lambda: 1)
            backend.get_or_set("k", lambda: 1)
    counter.assert_hits(1)
    counter.assert_misses(1)
    mine.get_or_set("k", lambda: 1)
    counter.assert_hits(1)  # stopped listening


PLUGIN_TESTS = '''
import relaycache.core.defaults as config
from relaycache import InMemoryCache, cache, get_default_backend

SEEN = []


def test_backend(relaycache_backend):
    assert isinstance(relaycache_backend, InMemoryCache)
    assert get_default_backend() is relaycache_backend
    SEEN.append(relaycache_backend)


def test_restored_after_the_test():
    assert config._default is None


def test_each_test_gets_a_fresh_one(relaycache_backend):
    assert relaycache_backend is not SEEN[0]


def test_disabled_and_counter(relaycache_disabled, relaycache_counter):
    calls = []

    @cache(tags=["t"])
    def f():
        calls.append(1)
        return 1

    f(), f()
    assert calls == [1, 1]
    relaycache_counter.assert_misses(2)
    relaycache_counter.assert_hits(0)


def test_counter_stops_listening():
    from relaycache.core import events
    assert events.listeners == []
    assert config._default is None
'''


def test_plugin_works_without_django_settings_or_pytest_django(pytester, monkeypatch):
    # That it needs no Django at all is tests/core/test_no_django.py's to prove.
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    pytester.makepyfile(test_plugin=PLUGIN_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:django", "-p", "no:cacheprovider",
                                           "-q")
    result.assert_outcomes(passed=5)


def test_plugin_failure_messages(pytester, monkeypatch):
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    pytester.makepyfile(test_fails='''
from relaycache import cache

def test_wrong_count(relaycache_backend, relaycache_counter):
    @cache
    def f():
        return 1

    f(), f()
    relaycache_counter.assert_hits(2)
''')
    result = pytester.runpytest_subprocess("-p", "no:django", "-p", "no:cacheprovider", "-q")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*expected 2 cache hits, got 1*", "*hit {'key': *"])
