"""Every kind of queryset evaluation: a hit returns exactly what the ORM returns
uncached, with zero SQL, and is fresh after a write to any table it reads."""

from __future__ import annotations

import datetime as dt
import json
import os
import pickle
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.paginator import Paginator
from django.db.models import (
    Avg,
    Case,
    Count,
    DecimalField,
    Exists,
    ExpressionWrapper,
    F,
    FilteredRelation,
    Max,
    Min,
    OuterRef,
    Prefetch,
    Q,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Coalesce, Lower

from relaycache import InMemoryCache
from tests.orm.support import ORM_SCENARIO, outcome, read, snap
from tests.ormapp.models import (
    AllTypes,
    Book,
    BookGenre,
    BookPublisher,
    Genre,
    Label,
    Plain,
    Publisher,
    Review,
    Shelf,
)

pytestmark = ORM_SCENARIO


def books():
    return Book.objects.all()


def test_iteration_and_list(scenario, shop):
    def iterate(qs):
        return [b for b in qs]

    scenario.check_write(
        lambda: Book.objects.create(title="Ubik", author="Dick", isbn="30",
                                    publication_date=dt.date(1969, 1, 1)),
        read(books, iterate),
        read(lambda: Book.objects.filter(author__in=["Dick", "Gibson"])),
    )


def test_get(scenario, shop):
    by_isbn = read(books, outcome(lambda qs: qs.get(isbn="3")))
    missing = read(books, outcome(lambda qs: qs.get(isbn="99")))
    assert scenario.warm(missing) == ("raised", Book.DoesNotExist)

    def write():
        Book.objects.filter(isbn="3").update(title="Count Zero")
        Book.objects.create(title="Mona Lisa Overdrive", author="Gibson", isbn="99",
                            publication_date=dt.date(1988, 1, 1))

    scenario.check_write(write, by_isbn, missing)


def test_first_and_last(scenario, shop):
    def write():
        Book.objects.filter(pk=shop.dune.pk).delete()
        Book.objects.filter(pk=shop.spqr.pk).update(title="SPQR!")

    empty = read(lambda: Book.objects.filter(author="Nobody"), lambda qs: qs.first())
    assert scenario.warm(empty) is None  # None is a cached result, not a miss
    scenario.check_write(
        write,
        read(books, lambda qs: qs.first()),
        read(books, lambda qs: qs.last()),
        read(lambda: Book.objects.order_by("-price"), lambda qs: qs.first()),
    )


def test_earliest_and_latest(scenario, shop):
    scenario.check_write(
        lambda: Book.objects.filter(pk=shop.hobbit.pk).update(
            publication_date=dt.date(2020, 1, 1)),
        read(books, lambda qs: qs.earliest("publication_date")),
        read(books, lambda qs: qs.latest("publication_date", "-title")),
    )


def test_count(scenario, shop):
    scenario.check_write(
        lambda: Review.objects.create(book=shop.foundation, stars=5),
        read(lambda: Review.objects.all(), lambda qs: qs.count()),
        read(lambda: Book.objects.filter(reviews__stars=5), lambda qs: qs.count()),
        read(lambda: Book.objects.filter(reviews__stars=5).distinct(), lambda qs: qs.count()),
        read(lambda: Review.objects.order_by("id")[2:], lambda qs: qs.count()),
    )


def test_exists(scenario, shop):
    scenario.check_write(
        lambda: Review.objects.filter(stars=2).delete(),
        read(lambda: Review.objects.filter(stars=2), lambda qs: qs.exists()),
        read(lambda: Book.objects.filter(reviews__stars__lte=2), lambda qs: qs.exists()),
    )


def test_aggregate_over_joins(scenario, shop):
    def aggregates(qs):
        return qs.aggregate(Sum("reviews__stars"), avg=Avg("reviews__stars"),
                            top=Max("price"), oldest=Min("publication_date"),
                            n=Count("labels", distinct=True))

    afters = scenario.check_write(
        lambda: Review.objects.create(book=shop.neuromancer, stars=1),
        read(books, aggregates),
        read(lambda: Publisher.objects.filter(country="US"),
             lambda qs: qs.aggregate(total=Sum("main_books__price"),
                                     stars=Avg("main_books__reviews__stars"))),
    )
    assert type(afters[0]["avg"]) is float and type(afters[0]["top"]) is Decimal


def test_aggregate_after_price_change(scenario, shop):
    scenario.check_write(
        lambda: Book.objects.filter(main_publisher=shop.penguin).update(price=100),
        read(lambda: Genre.objects.filter(slug="fantasy"),
             lambda qs: qs.aggregate(total=Sum("bookgenre__book__price"))),
        read(lambda: Book.objects.filter(price__gt=10),
             lambda qs: qs.aggregate(Avg("price"), Count("id"))),
    )


def test_in_bulk(scenario, shop):
    ids = [shop.dune.pk, shop.spqr.pk, 999]
    scenario.check_write(
        lambda: Book.objects.filter(pk=shop.spqr.pk).update(author="M. Beard"),
        read(books, lambda qs: qs.in_bulk(ids)),
        read(books, lambda qs: qs.in_bulk(["1", "5"], field_name="isbn")),
    )


def test_values(scenario, shop):
    scenario.check_write(
        lambda: Publisher.objects.filter(pk=shop.tor.pk).update(country="CA"),
        read(lambda: Book.objects.values("title", "price", "main_publisher__country",
                                         "publication_date").order_by("id")),
        read(lambda: Book.objects.values("main_publisher__country")
             .annotate(n=Count("id"), total=Sum("price")).order_by("main_publisher__country")),
    )


def test_values_list_flat_and_named(scenario, shop):
    afters = scenario.check_write(
        lambda: Book.objects.filter(pk=shop.neuromancer.pk).update(price=Decimal("3.33")),
        read(lambda: Book.objects.values_list("price", flat=True).order_by("id")),
        read(lambda: Book.objects.values_list("title", "price", named=True).order_by("id")),
        read(lambda: Book.objects.values_list("id", "price", "publication_date")),
    )
    assert type(afters[1][0]).__name__ == "Row" and afters[1][2].price == Decimal("3.33")


def test_dates_and_datetimes(scenario, shop, all_types):
    scenario.check_write(
        lambda: Book.objects.filter(pk=shop.spqr.pk).update(
            publication_date=dt.date(1999, 3, 1)),
        read(lambda: Book.objects.dates("publication_date", "year")),
        read(lambda: Book.objects.dates("publication_date", "month", order="DESC")),
    )
    scenario.check_write(
        lambda: AllTypes.objects.filter(pk=all_types.full.pk).update(
            moment=dt.datetime(2030, 5, 5, 5, 5, tzinfo=dt.UTC)),
        read(lambda: AllTypes.objects.datetimes("moment", "hour")),
        read(lambda: AllTypes.objects.datetimes("moment", "day", order="DESC")),
    )


def test_select_related_objects_are_loaded(scenario, shop, django_assert_num_queries):
    def with_related(qs):
        return [(bg, bg.book, bg.book.main_publisher, bg.genre) for bg in qs]

    deep = read(lambda: BookGenre.objects.select_related("book__main_publisher", "genre")
                .order_by("id"), with_related)
    scenario.warm(deep)
    with django_assert_num_queries(0):
        hit = list(BookGenre.objects.cached().select_related("book__main_publisher", "genre")
                   .order_by("id"))
        related = [(bg.book.title, getattr(bg.book.main_publisher, "name", None),
                    bg.genre.slug) for bg in hit]
    assert related[0] == ("Dune", "Tor", "sf") and related[4] == ("SPQR", None, "history")
    scenario.check_write(lambda: Publisher.objects.filter(pk=shop.tor.pk).update(name="TOR"),
                         deep)
    scenario.check_write(lambda: Genre.objects.filter(pk=shop.sf.pk).update(slug="scifi"),
                         deep)


def test_select_related_nullable_and_reverse_one_to_one(scenario, shop):
    scenario.check_write(
        lambda: Book.objects.filter(pk=shop.spqr.pk).update(main_publisher=shop.penguin),
        read(lambda: Book.objects.select_related("main_publisher").order_by("-id"),
             lambda qs: [(b, b.main_publisher) for b in qs]),
        read(lambda: Book.objects.select_related("main_publisher", "ebook"),
             lambda qs: qs.get(pk=shop.spqr.pk)),
    )


def _prefetched(qs):
    return [(b, list(b.labels.all()), list(b.reviews.all()),
             [bg.genre_id for bg in b.genres.all()]) for b in qs]


def test_prefetch_related_strings(scenario, shop):
    """Reverse foreign keys and many-to-many prefetches are cached too: a hit runs no
    SQL at all."""
    prefetch = read(lambda: Book.objects.prefetch_related("labels", "reviews", "genres")
                    .order_by("id"), _prefetched)
    reverse = read(lambda: Label.objects.prefetch_related("books__reviews").order_by("id"),
                   lambda qs: [(label, [(b, list(b.reviews.all())) for b in label.books.all()])
                               for label in qs])
    scenario.check_write(lambda: shop.spqr.labels.add(shop.new), prefetch, reverse)
    scenario.check_write(lambda: Review.objects.create(book=shop.neuromancer, stars=2),
                         prefetch, reverse)


def test_prefetch_related_objects(scenario, shop):
    def evaluate(qs):
        return [(b, b.good_reviews, list(b.labels.all())) for b in qs]

    prefetch = read(lambda: Book.objects.prefetch_related(
        Prefetch("reviews", queryset=Review.objects.filter(stars__gte=4).order_by("-stars"),
                 to_attr="good_reviews"),
        Prefetch("labels", queryset=Label.objects.order_by("-name")),
    ).order_by("id"), evaluate)
    shelves = read(lambda: Shelf.objects.prefetch_related(
        Prefetch("books", queryset=Book.objects.select_related("main_publisher")
                 .order_by("title"))).order_by("id"),
        lambda qs: [(s, [(b, b.main_publisher) for b in s.books.all()]) for s in qs])
    scenario.check_write(lambda: Review.objects.create(book=shop.foundation, stars=4),
                         prefetch)
    scenario.check_write(lambda: Label.objects.filter(pk=shop.award.pk).update(name="zzz"),
                         prefetch)
    scenario.check_write(lambda: shop.bedside.books.add(shop.foundation), shelves)
    scenario.check_write(lambda: Publisher.objects.filter(pk=shop.tor.pk).update(name="T"),
                         shelves)


def test_prefetch_related_forward_fk_is_fresh(scenario, shop, django_assert_num_queries):
    """Forward foreign keys prefetch through the base manager, which is documented as
    not cached: the result is still exact and fresh, and only that query runs."""
    def evaluate(qs):
        return [(bg, bg.genre, bg.book) for bg in qs]

    def build():
        return BookGenre.objects.prefetch_related("genre", "book").order_by("id")

    first = evaluate(build().cached())
    with django_assert_num_queries(2):  # the two forward prefetches
        hit = evaluate(build().cached())
    assert snap(hit) == snap(first) == snap(evaluate(build()))
    Genre.objects.filter(pk=shop.fantasy.pk).update(name="High fantasy")
    assert snap(evaluate(build().cached())) == snap(evaluate(build()))


def test_prefetch_of_a_plain_model_is_fresh(scenario, shop, django_assert_num_queries):
    Plain.objects.create(name="a", book=shop.dune)

    def evaluate(qs):
        return [(b, [p.name for p in b.plains.all()]) for b in qs]

    def build():
        return Book.objects.prefetch_related("plains").order_by("id")

    evaluate(build().cached())
    with django_assert_num_queries(1):  # Plain uses Django's manager: never cached
        evaluate(build().cached())
    Plain.objects.create(name="b", book=shop.dune)
    assert snap(evaluate(build().cached())) == snap(evaluate(build()))


def test_prefetch_with_a_nocache_queryset_reads_the_database(scenario, shop,
                                                             django_assert_num_queries):
    """``nocache()`` on a ``Prefetch`` queryset: "always reads the database"."""
    def build():
        return Book.objects.prefetch_related(
            Prefetch("reviews", queryset=Review.objects.nocache())).order_by("id")

    list(build().cached())
    with django_assert_num_queries(1):
        hit = _prefetched_reviews(build().cached())
    assert snap(hit) == snap(_prefetched_reviews(build()))


def _prefetched_reviews(qs):
    return [(b, list(b.reviews.all())) for b in qs]


def test_only_and_defer(scenario, shop):
    def deferred(qs):
        return [(b, sorted(b.get_deferred_fields())) for b in qs]

    scenario.check_write(
        lambda: Book.objects.filter(pk=shop.foundation.pk).update(title="Foundation!",
                                                                  author="I. Asimov"),
        read(lambda: Book.objects.only("title", "price").order_by("id"), deferred),
        read(lambda: Book.objects.defer("author", "isbn").order_by("id"), deferred),
        read(lambda: Book.objects.select_related("main_publisher")
             .only("title", "main_publisher__name").order_by("id"),
             lambda qs: [(b, b.main_publisher) for b in qs]),
    )


def test_annotate_count_over_reverse_fk(scenario, shop):
    scenario.check_write(
        lambda: Review.objects.create(book=shop.spqr, stars=3),
        read(lambda: Book.objects.annotate(n=Count("reviews")).order_by("-n", "id")),
        read(lambda: Book.objects.annotate(n=Count("reviews")).filter(n__gte=1)
             .values_list("title", "n")),
    )


def test_annotate_subquery_outerref(scenario, shop):
    best = Review.objects.filter(book=OuterRef("pk")).order_by("-stars", "id")
    scenario.check_write(
        lambda: Review.objects.create(book=shop.foundation, stars=5),
        read(lambda: Book.objects.annotate(best=Subquery(best.values("stars")[:1]))
             .order_by("id").values_list("title", "best")),
    )
    scenario.check_write(
        lambda: Book.objects.filter(pk=shop.foundation.pk).update(price=99),
        read(lambda: Publisher.objects.annotate(
            top_title=Subquery(Book.objects.filter(main_publisher=OuterRef("pk"))
                               .order_by("-price").values("title")[:1])).order_by("id")),
    )


def test_annotate_and_filter_exists(scenario, shop):
    five = Review.objects.filter(book=OuterRef("pk"), stars=5)
    scenario.check_write(
        lambda: Review.objects.create(book=shop.neuromancer, stars=5),
        read(lambda: Book.objects.annotate(has_five=Exists(five)).order_by("id")),
        read(lambda: Book.objects.filter(Exists(five)).order_by("id")),
        read(lambda: Book.objects.filter(~Exists(five)).order_by("id")),
    )


def test_filter_in_subquery(scenario, shop):
    scenario.check_write(
        lambda: Review.objects.filter(book=shop.hobbit).update(stars=1),
        read(lambda: Book.objects.filter(
            pk__in=Review.objects.filter(stars=5).values("book_id")).order_by("id")),
        read(lambda: Genre.objects.filter(
            bookgenre__book__in=Book.objects.filter(reviews__stars=5)).distinct()
            .order_by("id")),
    )


def test_q_objects(scenario, shop):
    scenario.check_write(
        lambda: Book.objects.filter(pk=shop.spqr.pk).update(is_featured=True),
        read(lambda: Book.objects.filter(Q(author="Herbert") | Q(price__gte=15)
                                         & ~Q(is_featured=False)).order_by("id")),
        read(lambda: Book.objects.filter(Q(is_featured=True), ~Q(labels__name="award"))
             .distinct().order_by("id")),
    )


def test_exclude_across_m2m(scenario, shop):
    scenario.check_write(
        lambda: shop.neuromancer.labels.add(shop.classic),
        read(lambda: Book.objects.exclude(labels__name="classic").order_by("id")),
        read(lambda: Label.objects.exclude(books__author="Gibson").order_by("id")),
    )


def test_order_by_across_relations(scenario, shop):
    scenario.check_write(
        lambda: Publisher.objects.filter(pk=shop.ace.pk).update(name="Zebra"),
        read(lambda: Book.objects.order_by("main_publisher__name", "title")
             .values_list("title", flat=True)),
        read(lambda: BookGenre.objects.order_by("-book__main_publisher__name", "id")),
        read(lambda: Book.objects.order_by(Lower("main_publisher__name").desc(nulls_last=True),
                                           "id")),
    )


def test_slicing(scenario, shop):
    scenario.check_write(
        lambda: Book.objects.filter(pk=shop.foundation.pk).update(price=50),
        read(lambda: Book.objects.order_by("-price")[1:3]),
        read(lambda: Book.objects.order_by("-price")[:1]),
        read(lambda: Book.objects.order_by("-price"), lambda qs: qs[0]),
        read(lambda: Book.objects.order_by("price")[2:]),
    )


def test_distinct(scenario, shop):
    scenario.check_write(
        lambda: Book.objects.filter(author="Gibson").update(author="Herbert"),
        read(lambda: Book.objects.values("author").distinct().order_by("author")),
        read(lambda: Book.objects.filter(labels__name__in=["classic", "award"]).distinct()
             .order_by("id")),
    )


def test_union(scenario, shop):
    scenario.check_write(
        lambda: Book.objects.filter(pk=shop.spqr.pk).update(price=1),
        read(lambda: Book.objects.filter(price__lt=8).order_by().union(
            Book.objects.filter(is_featured=True).order_by()).order_by("title")),
        read(lambda: Book.objects.filter(price__lt=8).order_by().values_list("title", flat=True)
             .union(Publisher.objects.values_list("name", flat=True), all=True)
             .order_by("title")),
    )


def test_union_count_and_exists(scenario, shop):
    scenario.check_write(
        lambda: Publisher.objects.create(name="Orbit", country="US"),
        read(lambda: Book.objects.order_by().values_list("id").union(
            Publisher.objects.filter(country="US").values_list("id")),
            lambda qs: (qs.count(), qs.exists())),
    )


def test_intersection_and_difference(scenario, shop):
    def write():
        shop.spqr.labels.add(shop.classic)
        Book.objects.filter(pk=shop.spqr.pk).update(is_featured=True)

    scenario.check_write(
        write,
        read(lambda: Book.objects.filter(labels__name="classic").order_by().intersection(
            Book.objects.filter(is_featured=True).order_by()).order_by("id")),
        read(lambda: Book.objects.order_by().difference(
            Book.objects.filter(labels__name="classic").order_by()).order_by("id")),
    )


def test_filtered_relation(scenario, shop):
    scenario.check_write(
        lambda: Review.objects.create(book=shop.neuromancer, stars=4),
        read(lambda: Book.objects.annotate(
            good=FilteredRelation("reviews", condition=Q(reviews__stars__gte=4)))
            .filter(good__isnull=False).distinct().order_by("id")),
        read(lambda: Book.objects.annotate(
            good=FilteredRelation("reviews", condition=Q(reviews__stars__gte=4)))
            .annotate(n=Count("good")).order_by("id").values_list("title", "n")),
    )


def test_f_expressions(scenario, shop):
    scenario.check_write(
        lambda: Publisher.objects.filter(pk=shop.tor.pk).update(name="Aardvark"),
        read(lambda: Book.objects.annotate(
            publisher=F("main_publisher__name"),
            doubled=ExpressionWrapper(F("price") * 2,
                                      output_field=DecimalField(max_digits=10,
                                                                decimal_places=2)),
        ).order_by("id").values("title", "publisher", "doubled")),
        read(lambda: Book.objects.filter(title__lt=F("main_publisher__name")).order_by("id")),
    )
    scenario.check_write(
        lambda: Book.objects.filter(pk=shop.dune.pk).update(main_publisher=shop.penguin),
        read(lambda: BookPublisher.objects.filter(publisher__name=F(
            "book__main_publisher__name")).order_by("id")),
    )
    scenario.check_write(
        lambda: Review.objects.filter(book=shop.dune).update(stars=F("stars") - 3),
        read(lambda: Book.objects.filter(reviews__stars__gt=F("price") / 4).distinct()
             .order_by("id")),
    )


def test_case_when(scenario, shop):
    scenario.check_write(
        lambda: Book.objects.filter(pk=shop.foundation.pk).update(price=Decimal("10.00")),
        read(lambda: Book.objects.annotate(tier=Case(
            When(price__gte=15, then=Value("premium")),
            When(price__gte=10, then=Value("standard")),
            default=Value("budget"))).order_by("id").values_list("title", "tier")),
        read(books, lambda qs: qs.aggregate(
            budget=Count(Case(When(price__lt=10, then=1))),
            featured_total=Coalesce(Sum("price", filter=Q(is_featured=True)),
                                    Decimal("0")))),
    )


def test_paginator(scenario, shop):
    def page_two(qs):
        page = Paginator(qs, 2).page(2)
        return page.paginator.count, page.paginator.num_pages, list(page.object_list)

    scenario.check_write(
        lambda: Book.objects.create(title="A Paginated Book", author="P", isbn="60",
                                    publication_date=dt.date(2001, 1, 1)),
        read(lambda: Book.objects.order_by("title"), page_two),
    )


def test_parameter_types_are_part_of_the_key(scenario, shop):
    """The same SQL with a parameter of another type is another entry."""
    for value in (1, True, 1.0, "1", Decimal("1"), Decimal("1.0"), dt.date(2001, 1, 1),
                  "2001-01-01"):
        scenario.warm(read(lambda v=value: Book.objects.annotate(x=Value(v))
                           .order_by("id").values_list("x", flat=True)))


def _add_review(shop):
    Review.objects.create(book=shop.spqr, stars=1)


def _raise_price(shop):
    Book.objects.filter(pk=shop.spqr.pk).update(price=99)


@pytest.mark.parametrize(("aggregate", "write"), [
    (lambda qs: qs.annotate(n=Count("reviews")).aggregate(Avg("n"), Max("n")), _add_review),
    (lambda qs: qs.aggregate(price=Max("price"), title=Min("title")), _raise_price),
], ids=["over-an-aggregate-annotation", "alias-named-like-a-field"])
def test_aggregate_forms_are_cached(aggregate, write, scenario, shop):
    scenario.check_write(lambda: write(shop), read(books, aggregate))


def test_pickled_querysets_and_queries_stay_cached(shop, django_assert_num_queries):
    """Django pickles querysets (evaluated) and their ``query`` into caches and
    sessions; unpickled, they are still cached, and served from the cache."""
    queryset = Book.objects.cached(ttl=30, tags=["books"]).filter(price__gt=8).order_by("id")
    restored = pickle.loads(pickle.dumps(queryset))  # pickling evaluates it: a miss
    assert [(book.pk, book.title, book.price, book._state.db) for book in restored] == [
        (book.pk, book.title, book.price, book._state.db) for book in queryset]
    assert restored.cache_options == queryset.cache_options
    with django_assert_num_queries(0):
        again = list(restored.all())
    assert snap(again) == snap(list(queryset))
    rebuilt = Book.objects.all()
    rebuilt.query = pickle.loads(pickle.dumps(queryset.query))
    with django_assert_num_queries(0):
        assert snap(list(rebuilt)) == snap(list(queryset))


_UNPICKLE_IN_A_CHILD = """
import json, pickle, sys
import django
django.setup()
from tests.ormapp.models import Book
queryset, query = pickle.loads(sys.stdin.buffer.read())
rebuilt = Book.objects.all()
rebuilt.query = query
print(json.dumps({"titles": [book.title for book in queryset],
                  "cached": queryset.filter(pk__gt=0).cache_info().cached,
                  "rebuilt": rebuilt.cache_info().cached}))
"""


def test_a_pickled_queryset_is_unpickled_and_cached_in_another_process(shop):
    queryset = Book.objects.cached().filter(price__gt=8).order_by("id")
    child = subprocess.run(
        [sys.executable, "-c", _UNPICKLE_IN_A_CHILD],
        input=pickle.dumps((queryset, queryset.query)), capture_output=True, timeout=60,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}, check=False)
    assert child.returncode == 0, child.stderr.decode()
    assert json.loads(child.stdout) == {
        "titles": [book.title for book in queryset], "cached": True, "rebuilt": True}


def test_a_queryset_cached_on_a_given_backend_says_why_it_cannot_be_pickled():
    with pytest.raises(pickle.PicklingError, match=r"cached\(backend=\.\.\.\)"):
        pickle.dumps(Book.objects.cached(backend=InMemoryCache()).query)
