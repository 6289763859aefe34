"""Aggregations are keyed by their SQL and parameters, never by ``repr()`` of values,
and by what converts their values."""

import datetime as dt
from decimal import Decimal

import pytest
from django.db.models import Avg, Count, DecimalField, FloatField, IntegerField, Max, Q, Sum

from tests.orm.support import ORM_SCENARIO, same
from tests.ormapp.models import Book, Publisher, Review

pytestmark = ORM_SCENARIO


def test_aggregates_filtered_by_instances_that_print_alike_get_their_own_entries(orm_cache):
    first = Publisher.objects.create(name="Same", country="FR")
    second = Publisher.objects.create(name="Same", country="FR")  # same repr()
    for i, publisher in enumerate([first, first, second]):
        Book.objects.create(title=f"b{i}", author="a", isbn=str(i), price=10,
                            publication_date=dt.date(2000, 1, 1), main_publisher=publisher)

    def count_for(publisher):
        return Book.objects.cached().aggregate(
            n=Count("id", filter=Q(main_publisher=publisher)),
            total=Sum("price", filter=Q(main_publisher=publisher)))

    assert count_for(first) == {"n": 2, "total": 20}
    assert count_for(second) == {"n": 1, "total": 10}
    assert count_for(first) == {"n": 2, "total": 20}
    assert orm_cache.stats.hits == 1


def test_aggregates_equal_but_for_their_output_type_get_their_own_entries(orm_cache, shop):
    """``Sum("stars")`` and ``Sum("stars", output_field=FloatField())`` run the same
    SQL; Django converts the value by the output field, so each is served its own
    type (and ``decimal_places`` its own rounding), miss and hit alike."""
    variants = [
        {"s": Sum("stars")},
        {"s": Sum("stars", output_field=FloatField())},
        {"s": Sum("stars", output_field=DecimalField(max_digits=10, decimal_places=2))},
        {"s": Sum("stars", output_field=DecimalField(max_digits=10, decimal_places=1))},
        {"s": Avg("stars")},
        {"s": Avg("stars", output_field=DecimalField(max_digits=10, decimal_places=3))},
    ]
    for _ in range(2):
        for aggregates in variants:
            cached = Review.objects.cached().aggregate(**aggregates)
            assert same(cached, Review.objects.aggregate(**aggregates)), aggregates
    assert orm_cache.stats.hits == len(variants)


def test_max_of_a_decimal_as_a_float(orm_cache, shop):
    for _ in range(2):
        as_decimal = Book.objects.cached().aggregate(m=Max("price"))
        as_float = Book.objects.cached().aggregate(m=Max("price", output_field=FloatField()))
        assert as_decimal["m"] == Decimal("20") and type(as_decimal["m"]) is Decimal
        assert same(as_float, {"m": 20.0})
    assert orm_cache.stats.hits == 2


def test_aggregates_across_relations_are_keyed_by_their_output_type_too(orm_cache, shop):
    """Aggregates that join other tables are keyed by the annotated query's SQL."""
    variants = [{"s": Sum("main_books__price")},
                {"s": Sum("main_books__price", output_field=FloatField())},
                {"s": Sum("main_books__price", output_field=IntegerField())}]
    for _ in range(2):
        for aggregates in variants:
            cached = Publisher.objects.cached().aggregate(**aggregates)
            assert same(cached, Publisher.objects.aggregate(**aggregates)), aggregates
    assert orm_cache.stats.hits == len(variants)


@pytest.mark.parametrize("call", [
    lambda qs: qs.aggregate(is_book=True),
    lambda qs: qs.aggregate(Sum("price"), "title"),
    lambda qs: qs.aggregate(Sum("price") + 1),
], ids=["keyword-value", "positional-value", "no-alias"])
def test_invalid_aggregates_raise_djangos_own_error(orm_cache, call):
    with pytest.raises(TypeError) as plain:
        call(Book.objects.all())
    with pytest.raises(TypeError) as cached:
        call(Book.objects.cached())
    assert str(cached.value) == str(plain.value)
