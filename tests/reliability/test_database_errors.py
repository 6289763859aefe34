"""A database error inside a cached function or a cached queryset: nothing is cached,
the exception reaches the caller unchanged (same type and message), the next call
computes again, and the cache itself is not harmed (no error counted, breaker closed,
no lease left behind)."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
import redis
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext

from relaycache import RedisCache, cache
from relaycache.testing import use_backend
from tests.ormapp.models import Book
from tests.reliability.support import prefix
from tests.servers import HOST
from tests.support import run_concurrently

pytest_plugins = ("tests.servers",)
pytestmark = [pytest.mark.real_redis, pytest.mark.django_db(transaction=True)]

BAD_SQL = "SELECT no_such_column FROM ormapp_book"


@pytest.fixture
def backend(redis_server):
    # Entries and meta keys under unrelated prefixes, so "no entry" is one SCAN.
    tag = prefix("dbe")
    backend = RedisCache(redis.Redis(host=HOST, port=redis_server.port), default_ttl=60,
                         value_prefix=f"v-{tag}", meta_prefix=f"m-{tag}")
    with use_backend(backend):
        yield backend


def _entries(backend: RedisCache) -> list[bytes]:
    return list(backend.redis_client.scan_iter(match=backend.value_prefix + "*"))


def _uncached_error(run) -> BaseException:
    with pytest.raises(Exception) as info:
        run()
    return info.value


def _assert_same_error(got: BaseException, expected: BaseException) -> None:
    assert type(got) is type(expected), (type(got), type(expected))
    assert str(got) == str(expected)
    assert isinstance(got, DatabaseError)


@pytest.mark.parametrize("singleflight", [False, True], ids=["plain", "singleflight"])
def test_a_function_raising_a_database_error_caches_nothing(backend, singleflight,
                                                              no_gc_pauses):
    calls = []
    state = {"fail": "raised", "error": None}

    @cache(backend=backend, tags=["books"], key=lambda n: f"fn:{n}",
           distributed_singleflight=singleflight)
    def titles(n):
        calls.append(n)
        if state["fail"] == "raised":
            state["error"] = DatabaseError(f"server closed the connection while reading {n}")
            raise state["error"]
        if state["fail"] == "real":
            with connection.cursor() as cursor:
                cursor.execute(BAD_SQL)
        return [b.title for b in Book.objects.order_by("id")]

    Book.objects.create(title="Dune", author="Herbert", isbn="1",
                        publication_date=dt.date(1965, 8, 1))
    vkey = backend.value_key("fn:1")
    lease = backend.lease_key(vkey)

    with pytest.raises(DatabaseError) as info:
        titles(1)
    assert info.value is state["error"], "not the exception the function raised"
    assert str(info.value) == "server closed the connection while reading 1"

    # A real driver error, compared with the same SQL run without the cache.
    def run_bad_sql():
        with connection.cursor() as cursor:
            cursor.execute(BAD_SQL)

    expected = _uncached_error(run_bad_sql)
    state["fail"] = "real"
    with pytest.raises(DatabaseError) as info:
        titles(1)
    _assert_same_error(info.value, expected)

    assert _entries(backend) == [] and backend.stats.stores == 0
    assert not backend.redis_client.exists(lease), "a lease outlived its failed holder"
    # The next call computes (and, now that the database answers, stores).
    state["fail"] = None
    began = time.monotonic()
    assert titles(1) == ["Dune"]
    assert time.monotonic() - began < 1, "the next call waited for a lease"
    assert titles(1) == ["Dune"]
    assert calls == [1, 1, 1] and backend.stats.hits == 1 and backend.stats.stores == 1
    assert backend.stats.errors == 0 and not backend.breaker.is_open
    assert backend.pending_invalidations == []


def test_concurrent_callers_of_a_failing_function_each_get_the_error(backend):
    """In-process singleflight: the leader fails; the waiters compute themselves (and
    fail the same way) instead of waiting for a result that never comes."""
    calls = []

    @cache(backend=backend, tags=["books"], key=lambda: "shared")
    def slow_failure():
        calls.append(threading.get_ident())
        time.sleep(0.2)
        raise DatabaseError("deadlock detected")

    began = time.monotonic()
    outcomes = run_concurrently(lambda _: slow_failure(), 4, return_exceptions=True)
    elapsed = time.monotonic() - began
    assert all(type(o) is DatabaseError and str(o) == "deadlock detected" for o in outcomes), (
        outcomes)
    assert elapsed < 3, f"waiters were held {elapsed:.1f} s"
    assert _entries(backend) == [] and backend.stats.stores == 0
    assert backend.stats.errors == 0


@pytest.mark.parametrize("singleflight", [False, True], ids=["plain", "singleflight"])
def test_a_cached_queryset_that_fails_caches_nothing(backend, singleflight):
    Book.objects.create(title="Dune", author="Herbert", isbn="1",
                        publication_date=dt.date(1965, 8, 1))

    def failing():
        return (Book.objects.cached(tags=["books-extra"], singleflight=singleflight)
                .extra(where=["no_such_column = 1"]))

    assert failing().cache_info().cached, "the query would not go through the cache"
    cases = {
        "list": (lambda qs: list(qs), lambda: list(Book.objects.extra(
            where=["no_such_column = 1"]))),
        "count": (lambda qs: qs.count(), lambda: Book.objects.extra(
            where=["no_such_column = 1"]).count()),
        "first": (lambda qs: qs.first(), lambda: Book.objects.extra(
            where=["no_such_column = 1"]).first()),
        "values": (lambda qs: list(qs.values("title")), lambda: list(Book.objects.extra(
            where=["no_such_column = 1"]).values("title"))),
    }
    for name, (cached_call, uncached_call) in cases.items():
        expected = _uncached_error(uncached_call)
        for attempt in range(2):  # the second attempt runs the query again
            with CaptureQueriesContext(connection) as queries:
                got = _uncached_error(lambda call=cached_call: call(failing()))
            _assert_same_error(got, expected)
            assert len(queries) == 1, (name, attempt, [q["sql"] for q in queries])
    assert _entries(backend) == [] and backend.stats.stores == 0
    assert backend.stats.errors == 0 and not backend.breaker.is_open
    leases = list(backend.redis_client.scan_iter(match=backend.meta_prefix + "l:*"))
    assert leases == []

    # The cache still works for queries that succeed.
    good = lambda: Book.objects.cached(tags=["books-extra"]).filter(author="Herbert")  # noqa: E731
    assert [b.title for b in good()] == ["Dune"]
    with CaptureQueriesContext(connection) as queries:
        assert [b.title for b in good()] == ["Dune"]
    assert len(queries) == 0 and backend.stats.hits >= 1
