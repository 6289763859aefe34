"""``cached(ttl=, tags=, key=, backend=)``, chaining, ``nocache()``, and plain querysets."""

from __future__ import annotations

import time

import pytest
from django.db.models import Count, Q

import relaycache
from relaycache import InMemoryCache
from tests.orm.support import ORM_SCENARIO, read, snap
from tests.ormapp.models import Book, Label, Publisher, Review

pytestmark = ORM_SCENARIO


def test_ttl_expiry(scenario, shop, django_assert_num_queries):
    short = read(lambda: Book.objects.filter(is_featured=True), ttl=0.3)
    scenario.warm(short)
    time.sleep(0.5)
    with django_assert_num_queries(1):
        again = scenario.cached(short)
    assert snap(again) == snap(scenario.truth(short))
    scenario.hit(short)


def test_ttl_is_per_queryset(scenario, shop, django_assert_num_queries):
    short = read(lambda: Label.objects.order_by("id"), ttl=0.3)
    long = read(lambda: Label.objects.order_by("-id"), ttl=60)
    scenario.warm(short)
    scenario.warm(long)
    time.sleep(0.5)
    with django_assert_num_queries(1):
        scenario.cached(short)
    scenario.hit(long)


def test_tags_and_invalidate(scenario, shop, django_assert_num_queries):
    home = read(lambda: Book.objects.filter(is_featured=True).values("id", "title"),
                tags=["home"])
    other = read(lambda: Book.objects.filter(is_featured=False), tags=["other"])
    scenario.warm(home)
    scenario.warm(other)
    info = Book.objects.cached(tags=["home"]).filter(is_featured=True).cache_info()
    assert "home" in info.tags and "all:default:ormapp_book" in info.tags
    relaycache.invalidate(tags=["home"])
    with django_assert_num_queries(1):
        scenario.cached(home)
    scenario.hit(home)
    scenario.hit(other)
    # the table tags still apply to a tagged queryset
    scenario.check_write(lambda: Book.objects.filter(pk=shop.spqr.pk).update(is_featured=True),
                         home, other)


def test_key_prefix(scenario, shop, orm_cache):
    named = read(lambda: Book.objects.filter(author="Tolkien"), key="books-by-author")
    scenario.warm(named)
    info = Book.objects.cached(key="books-by-author").filter(author="Tolkien").cache_info()
    assert info.cached and info.key.startswith("books-by-author:")
    default = Book.objects.cached().filter(author="Tolkien").cache_info()
    assert default.key.startswith("orm:")
    assert default.key.split(":", 1)[1] == info.key.split(":", 1)[1]
    assert orm_cache.get(info.key, tags=info.tags) != (False, None)  # stored under that key
    assert orm_cache.get(default.key, tags=default.tags) == (False, None)  # never stored
    scenario.check_write(lambda: Book.objects.filter(author="Tolkien").update(price=1), named)


def test_specific_backend(scenario, shop, orm_cache, django_assert_num_queries):
    other = InMemoryCache(default_ttl=60)
    on_other = read(lambda: Publisher.objects.annotate(n=Count("main_books")).order_by("id"),
                    backend=other)
    default_before = orm_cache.stats.snapshot()
    scenario.warm(on_other)
    assert other.stats.hits >= 1 and other.stats.stores >= 1
    assert orm_cache.stats.snapshot() == default_before  # the default was not used
    scenario.check_write(lambda: Book.objects.filter(pk=shop.spqr.pk).update(
        main_publisher=shop.ace), on_other)
    # the same query on the default backend is a separate entry
    with django_assert_num_queries(1):
        list(Publisher.objects.cached().annotate(n=Count("main_books")).order_by("id"))


def test_specific_backend_prefetch_and_count(scenario, shop):
    other = InMemoryCache(default_ttl=60)
    scenario.check_write(
        lambda: Review.objects.create(book=shop.spqr, stars=2),
        read(lambda: Book.objects.prefetch_related("reviews").order_by("id"),
             lambda qs: [(b, list(b.reviews.all())) for b in qs], backend=other),
        read(lambda: Review.objects.all(), lambda qs: qs.count(), backend=other),
    )


def test_oversize_results_are_not_stored(scenario, shop, orm_cache,
                                        django_assert_num_queries):
    """A result over ``max_entry_size`` is returned exactly but not stored."""
    Review.objects.create(book=shop.spqr, stars=3, text="x" * (2 * 1024 * 1024))

    def build():
        return Review.objects.cached().order_by("id")

    oversize = orm_cache.stats.oversize
    first = list(build())
    assert orm_cache.stats.oversize == oversize + 1
    with django_assert_num_queries(1):
        again = list(build())
    assert snap(again) == snap(first) == snap(list(Review.objects.order_by("id")))
    scenario.warm(read(lambda: Review.objects.order_by("id").values_list("stars", flat=True)))


def test_chaining_keeps_the_flag(scenario, shop, django_assert_num_queries):
    def chained():
        return (Book.objects.cached().filter(price__gt=1).exclude(author="Beard")
                .order_by("-price")[:5])

    assert chained().cache_info().cached
    for qs in (chained(), Book.objects.cached().values("title").filter(Q(price__gt=1)),
               Book.objects.cached().select_related("main_publisher").distinct().reverse(),
               Book.objects.cached().annotate(n=Count("reviews")).values_list("n"),
               Book.objects.cached().all().filter(title__contains="u").using("default")):
        assert qs.cache_info().cached, qs.query
        assert qs.cache_options is not None
    first = list(chained())
    with django_assert_num_queries(0):
        again = list(chained())
        again_values = [b.title for b in chained()]
    assert snap(again) == snap(first) and again_values[0] == "The Hobbit"
    Book.objects.filter(author="Gibson").update(price=100)
    assert next(b.title for b in chained()) == "Neuromancer"


def test_nocache(shop, orm_cache, django_assert_num_queries):
    qs = Book.objects.cached().filter(is_featured=True)
    list(qs)
    before = orm_cache.stats.snapshot()
    info = qs.nocache().cache_info()
    assert (info.cached, info.reason) == (False, "not marked with .cached()")
    for _ in range(2):
        with django_assert_num_queries(1):
            list(qs.nocache())
        with django_assert_num_queries(1):
            qs.nocache().count()
        with django_assert_num_queries(1):
            list(qs.nocache().filter(price__gt=1).order_by("title"))
    assert orm_cache.stats.snapshot() == before
    # and cached() turns it back on
    with django_assert_num_queries(0):
        list(qs.nocache().cached())


def test_plain_querysets_never_touch_the_cache(shop, orm_cache, django_assert_num_queries):
    reads = [
        lambda: list(Book.objects.all()),
        lambda: list(Book.objects.filter(is_featured=True).values("title")),
        lambda: Book.objects.count(),
        lambda: Book.objects.exists(),
        lambda: Book.objects.aggregate(n=Count("reviews")),
        lambda: Book.objects.get(pk=shop.dune.pk),
        lambda: list(Book.objects.prefetch_related("labels")),
        lambda: shop.dune.reviews.count(),
        lambda: list(shop.dune.labels.all()),
    ]
    for fn in reads:
        fn()
    before = orm_cache.stats.snapshot()
    for fn in reads:
        fn()
    assert orm_cache.stats.snapshot() == before
    assert Book.objects.all().cache_info().cached is False


def test_invalid_options():
    with pytest.raises(ValueError):
        Book.objects.cached(ttl=0)
    with pytest.raises(ValueError):
        Book.objects.cached(ttl=-1)
    with pytest.raises(ValueError):
        Book.objects.cached(key="")
    with pytest.raises(TypeError):
        Book.objects.cached(backend=object())
