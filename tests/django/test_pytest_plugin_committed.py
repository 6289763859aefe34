"""``relaycache_committed``: under pytest-django's ``django_db`` (the test in a
transaction rolled back after it), cached querysets hit, writes in the test body still
invalidate, and nothing cached from the rolled-back data outlives the test."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from tests.ormapp.models import Book

pytest_plugins = ("pytester",)

WRITTEN_IN_TRANSACTION = "a table it reads was written in this transaction"


def add_book(title: str) -> Book:
    return Book.objects.create(title=title, author="a", isbn=title[:13],
                               publication_date=datetime.date(2024, 1, 1))


def titles() -> list[str]:
    return [book.title for book in Book.objects.cached().order_by("title")]


def titles_without_queries() -> list[str]:
    """The cached titles, asserting the database was not queried for them."""
    with CaptureQueriesContext(connection) as queries:
        result = titles()
    assert [q["sql"] for q in queries.captured_queries] == []
    return result


@pytest.fixture
def shelf(db):
    """Data written by a fixture, inside the test's transaction."""
    add_book("dune")
    add_book("emma")


@pytest.mark.django_db
def test_fixture_data_is_served_from_the_cache(shelf, default_backend, relaycache_counter,
                                               relaycache_committed):
    assert titles() == ["dune", "emma"]
    assert titles_without_queries() == ["dune", "emma"]
    relaycache_counter.assert_misses(1)
    relaycache_counter.assert_hits(1)
    relaycache_counter.assert_uncacheable(0)


@pytest.mark.django_db
def test_without_it_the_test_transaction_bypasses(shelf, default_backend, relaycache_counter):
    # The negative control: the same reads, no relaycache_committed.
    assert titles() == titles() == ["dune", "emma"]
    relaycache_counter.assert_hits(0)
    assert relaycache_counter.uncacheable == [WRITTEN_IN_TRANSACTION] * 2


@pytest.mark.django_db
def test_writes_in_the_test_body_invalidate_at_once(shelf, default_backend,
                                                    relaycache_counter, relaycache_committed):
    assert titles() == titles() == ["dune", "emma"]
    add_book("faust")
    assert titles() == ["dune", "emma", "faust"]  # a miss: the create invalidated
    assert titles_without_queries() == ["dune", "emma", "faust"]
    Book.objects.filter(title="dune").update(title="ulysses")
    assert titles() == ["emma", "faust", "ulysses"]
    Book.objects.filter(title="emma").delete()
    assert titles() == ["faust", "ulysses"]
    relaycache_counter.assert_hits(2)
    relaycache_counter.assert_misses(4)
    relaycache_counter.assert_uncacheable(0)


@pytest.mark.django_db
def test_writes_in_an_atomic_block_of_the_body_bypass(shelf, default_backend,
                                                      relaycache_counter,
                                                      relaycache_committed):
    assert titles() == titles() == ["dune", "emma"]
    with transaction.atomic():
        add_book("faust")
        assert titles() == ["dune", "emma", "faust"]
    assert titles() == ["dune", "emma", "faust"]  # uncommitted until the test ends
    relaycache_counter.assert_hits(1)
    assert relaycache_counter.uncacheable == [WRITTEN_IN_TRANSACTION] * 2


@pytest.mark.django_db
def test_a_rolled_back_atomic_block_of_the_body(shelf, default_backend, relaycache_counter,
                                                relaycache_committed):
    assert titles() == ["dune", "emma"]
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        add_book("faust")
        1 / 0  # noqa: B018
    assert titles_without_queries() == ["dune", "emma"]  # the cached entry still holds
    relaycache_counter.assert_hits(1)


ACROSS_TESTS = '''
import datetime

import pytest

from relaycache import InMemoryCache
from relaycache.testing import use_backend
from tests.ormapp.models import Book, Genre, Publisher

SHARED = InMemoryCache()


@pytest.fixture(autouse=True)
def shared_backend():
    with use_backend(SHARED):
        yield


@pytest.fixture
def publisher(db):
    Publisher.objects.create(name="written by a fixture", country="nowhere")


def names():
    return ([book.title for book in Book.objects.cached()],
            [publisher.name for publisher in Publisher.objects.cached()],
            [genre.name for genre in Genre.objects.cached()])


@pytest.mark.django_db
def test_caches_rolled_back_data(publisher, relaycache_committed, relaycache_counter):
    Book.objects.create(title="written by the test", author="a", isbn="1",
                        publication_date=datetime.date(2024, 1, 1))
    expected = (["written by the test"], ["written by a fixture"], [])
    assert names() == names() == expected
    relaycache_counter.assert_hits(3)


@pytest.mark.django_db
def test_next_test_does_not_see_it(relaycache_committed, relaycache_counter):
    assert names() == ([], [], [])
    relaycache_counter.assert_hits(1)  # Genre, which the rollback did not change
'''


def test_nothing_cached_in_a_test_outlives_its_rollback(pytester, monkeypatch):
    # Two tests sharing one backend, in a pytest-django run of their own: the second
    # must not be served the first one's rows, which its rollback removed.
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "tests.settings")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH")])))
    pytester.makepyfile(test_across=ACROSS_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=2)
