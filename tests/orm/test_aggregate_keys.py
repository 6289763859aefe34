"""Aggregations are keyed by their SQL and parameters, never by ``repr()`` of values."""

import datetime as dt

from django.db.models import Count, Q, Sum

from tests.orm.support import ORM_SCENARIO
from tests.ormapp.models import Book, Publisher

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
