"""Queries that cannot be cached safely run against the database, say why in
``cache_info().reason``, and count in ``stats.bypassed``; with ``tags=`` raw SQL is
cached and invalidated by the user."""

from __future__ import annotations

import pytest
from django.db import transaction
from django.db.models import F
from django.db.models.expressions import RawSQL
from django.db.models.functions import Now

import relaycache
from tests.orm.support import ORM_SCENARIO, read, snap
from tests.ormapp.models import Book, Review

pytestmark = ORM_SCENARIO

RAW_REVIEWS = RawSQL("SELECT COUNT(*) FROM ormapp_review WHERE ormapp_review.book_id = "
                     "ormapp_book.id", ())


def assert_bypassed(qs_factory, reason, backend, assert_num_queries, compare=None):
    """Each evaluation runs one query, is counted as bypassed, and is never a hit."""
    info = qs_factory().cache_info()
    assert (info.cached, info.reason) == (False, reason)
    stats = backend.stats
    hits, bypassed, stores = stats.hits, stats.bypassed, stats.stores
    for _ in range(2):
        with assert_num_queries(1):
            result = list(qs_factory())
    assert stats.bypassed == bypassed + 2
    assert (stats.hits, stats.stores) == (hits, stores)
    if compare is not None:
        assert compare(result) == compare(list(qs_factory().nocache()))
    return result


def test_select_for_update_inside_atomic(shop, orm_cache, django_assert_num_queries):
    """The same filter, cached outside, then locked inside a transaction: the locking
    read must reach the database."""
    plain = read(lambda: Book.objects.filter(author="Herbert"))
    list(plain.build().cached())
    with transaction.atomic():
        assert_bypassed(lambda: Book.objects.cached().filter(author="Herbert")
                        .select_for_update(),
                        "select_for_update() locks rows; it must reach the database",
                        orm_cache, django_assert_num_queries, snap)


def test_select_for_update_does_not_disable_caching_the_plain_query(
        scenario, shop, orm_cache, django_assert_num_queries):
    """The locking read first (a filter no other scenario uses), then the same filter
    without the lock: that one is cached as usual."""
    with transaction.atomic():
        assert_bypassed(lambda: Book.objects.cached().filter(isbn__endswith="3")
                        .select_for_update(),
                        "select_for_update() locks rows; it must reach the database",
                        orm_cache, django_assert_num_queries, snap)
    info = Book.objects.cached().filter(isbn__endswith="3").cache_info()
    assert (info.cached, info.reason) == (True, None)
    scenario.warm(read(lambda: Book.objects.filter(isbn__endswith="3")))


def test_select_for_update_in_a_subquery(shop, orm_cache, django_assert_num_queries):
    """A lock taken by a subquery must be taken on every evaluation, and the same query
    without the lock (the same SQL on SQLite, which drops FOR UPDATE) stays cacheable."""
    def locking():
        return Book.objects.cached().filter(
            pk__in=Book.objects.filter(author="Herbert").select_for_update().values("pk"))

    with transaction.atomic():
        assert_bypassed(locking, "select_for_update() locks rows; it must reach the database",
                        orm_cache, django_assert_num_queries, snap)
    info = Book.objects.cached().filter(
        pk__in=Book.objects.filter(author="Herbert").values("pk")).cache_info()
    assert (info.cached, info.reason) == (True, None)


def test_random_order(shop, orm_cache, django_assert_num_queries):
    assert_bypassed(lambda: Book.objects.cached().order_by("?"), "order_by('?') is random",
                    orm_cache, django_assert_num_queries, lambda r: sorted(b.pk for b in r))


def test_now_annotation(shop, orm_cache, django_assert_num_queries):
    assert_bypassed(lambda: Book.objects.cached().annotate(now=Now()),
                    "Now() changes between runs", orm_cache, django_assert_num_queries)
    assert_bypassed(lambda: Book.objects.cached().filter(publication_date__lt=Now()),
                    "Now() changes between runs", orm_cache, django_assert_num_queries)


def test_raw_sql_without_tags(shop, orm_cache, django_assert_num_queries):
    assert_bypassed(lambda: Book.objects.cached().annotate(n=RAW_REVIEWS).order_by("id"),
                    "RawSQL is raw SQL; pass tags= to cache it", orm_cache,
                    django_assert_num_queries, snap)
    assert_bypassed(lambda: Book.objects.cached().filter(
        price__gt=RawSQL("SELECT MIN(price) FROM ormapp_book", ())),
        "RawSQL is raw SQL; pass tags= to cache it", orm_cache, django_assert_num_queries)


def test_extra_without_tags(shop, orm_cache, django_assert_num_queries):
    assert_bypassed(lambda: Book.objects.cached().extra(select={"double": "price * 2"}),
                    "extra() adds raw SQL; pass tags= to cache it", orm_cache,
                    django_assert_num_queries)
    assert_bypassed(lambda: Book.objects.cached().extra(where=["price > 10"]),
                    "ExtraWhere is raw SQL; pass tags= to cache it", orm_cache,
                    django_assert_num_queries)


def test_raw_sql_with_tags_is_cached_and_invalidated_by_tag(scenario, shop,
                                                            django_assert_num_queries):
    counts = read(lambda: Book.objects.annotate(n=RAW_REVIEWS).order_by("id")
                  .values_list("title", "n"), tags=["review-counts"])
    scenario.warm(counts)
    assert Book.objects.cached(tags=["review-counts"]).annotate(n=RAW_REVIEWS).cache_info() \
        .cached
    relaycache.invalidate(tags=["review-counts"])
    with django_assert_num_queries(1):
        scenario.cached(counts)
    scenario.hit(counts)
    scenario.check_write(
        lambda: (Review.objects.create(book=shop.spqr, stars=5),
                 relaycache.invalidate(tags=["review-counts"])),
        counts,
    )


def test_extra_with_tags_is_cached(scenario, shop):
    scenario.check_write(
        lambda: Book.objects.update(price=F("price") + 1),
        read(lambda: Book.objects.extra(select={"double": "price * 2"}).order_by("id")
             .values_list("title", "double"), tags=["extra"]),
    )


def test_iterator_always_reads_the_database(shop, orm_cache, django_assert_num_queries):
    qs = Book.objects.cached().filter(price__gt=5)
    list(qs)  # the same query, cached as a list
    before = orm_cache.stats.snapshot()
    for _ in range(2):
        with django_assert_num_queries(1):
            got = list(Book.objects.cached().filter(price__gt=5).iterator())
        with django_assert_num_queries(1):
            list(Book.objects.cached().filter(price__gt=5).iterator(chunk_size=2))
    after = orm_cache.stats.snapshot()
    assert (after["hits"], after["stores"]) == (before["hits"], before["stores"])
    assert snap(got) == snap(list(Book.objects.filter(price__gt=5)))
    Book.objects.filter(author="Gibson").update(price=1)
    assert snap(list(qs.iterator())) == snap(list(Book.objects.filter(price__gt=5)))


@pytest.mark.parametrize("make_qs", [
    lambda: Book.objects.cached().none(),
    lambda: Book.objects.cached().filter(pk__in=[]),
], ids=["none", "empty-in"])
def test_queries_that_match_nothing_run_nothing(make_qs, shop, django_assert_num_queries):
    info = make_qs().cache_info()
    assert (info.cached, info.reason) == (False, "matches nothing: no query runs")
    with django_assert_num_queries(0):
        assert list(make_qs()) == [] and make_qs().count() == 0
