"""Writes that reach a table through another object, on PostgreSQL: views (an
unmanaged model over a view; views of views; writes through a view), materialized views
(``REFRESH``) and procedures (``cursor.callproc()``). See docs/consistency.md, "Views,
materialized views and procedures"; other databases' views are a documented limit.
"""

from __future__ import annotations

import pytest
from django.db import connection, models, transaction

from relaycache import CachedManager
from relaycache.orm import pins
from tests.orm.support import ON_POSTGRESQL, ORM_SCENARIO, read
from tests.ormapp.models import Book, Publisher

pytestmark = [*ORM_SCENARIO, pytest.mark.skipif(
    not ON_POSTGRESQL, reason="views, materialized views and callproc() of PostgreSQL")]

DIRTY = "a table it reads was written in this transaction"


class BookListing(models.Model):
    """An unmanaged model over a view of a view of books, joined to publishers."""

    title = models.CharField(max_length=255)
    publisher = models.CharField(max_length=255, null=True)

    objects = CachedManager()

    class Meta:
        app_label = "ormapp"
        managed = False
        db_table = "ormapp_book_listing"


class PriceTotal(models.Model):
    """An unmanaged model over a materialized view."""

    total = models.DecimalField(max_digits=10, decimal_places=2)

    objects = CachedManager()

    class Meta:
        app_label = "ormapp"
        managed = False
        db_table = "ormapp_price_total"


LISTING = """
CREATE VIEW ormapp_book_listing AS
SELECT b.id, b.title, p.name AS publisher
FROM ormapp_book_base AS b LEFT JOIN ormapp_publisher AS p ON p.id = b.main_publisher_id
"""


def all_rows(table):
    """A read of every row of ``table``: what any write to it replaces."""
    return {pins.all_tag("default", table), pins.rows_tag("default", table),
            pins.updates_tag("default", table)}


def raw(sql, params=None):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


@pytest.fixture
def views(shop):
    raw("CREATE VIEW ormapp_book_base AS SELECT id, title, main_publisher_id FROM ormapp_book")
    raw(LISTING)
    raw("CREATE MATERIALIZED VIEW ormapp_price_total AS "
        "SELECT 1 AS id, sum(price) AS total FROM ormapp_book")
    raw("CREATE FUNCTION ormapp_discount() RETURNS void LANGUAGE sql AS "
        "'UPDATE ormapp_book SET price = price / 2'")
    yield shop
    raw("DROP FUNCTION ormapp_discount()")
    raw("DROP MATERIALIZED VIEW ormapp_price_total")
    raw("DROP VIEW ormapp_book_listing, ormapp_book_base")


def listing():
    return read(lambda: BookListing.objects.order_by("id").values_list("title", "publisher"))


def book_titles():
    return read(lambda: Book.objects.order_by("id").values_list("title", flat=True))


def test_reads_of_a_view_carry_the_tables_it_reads(views):
    tags = BookListing.objects.cached().cache_info().tags
    for table in ("ormapp_book_listing", "ormapp_book", "ormapp_publisher"):
        assert all_rows(table) <= set(tags)
    assert pins.all_tag("default", "ormapp_book_base") not in tags  # a view: its tables are


def test_a_write_to_a_table_invalidates_reads_of_views_of_it(scenario, views):
    scenario.check_write(
        lambda: Book.objects.filter(pk=views.dune.pk).update(title="Dune Messiah"),
        listing())
    scenario.check_write(
        lambda: Publisher.objects.filter(pk=views.tor.pk).update(name="Tor Books"),
        listing())


def test_a_write_through_a_view_invalidates_its_tables(scenario, views):
    scenario.check_write(
        lambda: raw("UPDATE ormapp_book_base SET title = 'via the view' WHERE id = %s",
                    [views.dune.pk]),
        book_titles(), listing())


def test_a_view_read_inside_the_transaction_that_wrote_its_table(scenario, views):
    scenario.warm(listing())
    with transaction.atomic():
        Book.objects.filter(pk=views.dune.pk).update(title="uncommitted")
        assert BookListing.objects.cached().cache_info().reason == DIRTY
        assert scenario.fresh(listing(), rehit=False)[0][0] == "uncommitted"
    assert scenario.fresh(listing())[0][0] == "uncommitted"


def test_a_redefined_view_is_looked_up_again(views):
    assert all_rows("ormapp_publisher") <= set(BookListing.objects.cached().cache_info().tags)
    raw("CREATE OR REPLACE VIEW ormapp_book_listing AS "
        "SELECT b.id, b.title, g.name::varchar(255) AS publisher FROM ormapp_book_base AS b "
        "LEFT JOIN ormapp_genre AS g ON g.id = b.main_publisher_id")
    tags = BookListing.objects.cached().cache_info().tags
    assert all_rows("ormapp_genre") <= set(tags)
    assert pins.all_tag("default", "ormapp_publisher") not in tags


def test_refresh_materialized_view_invalidates_it(scenario, views):
    totals = read(lambda: PriceTotal.objects.values_list("total", flat=True))
    before = scenario.warm(totals)
    Book.objects.update(price=1)
    assert scenario.hit(totals) == before  # a materialized view keeps its rows...
    scenario.check_write(lambda: raw("REFRESH MATERIALIZED VIEW ormapp_price_total"),
                         totals)  # ...until it is refreshed


def test_callproc_invalidates_the_database(scenario, views):
    prices = read(lambda: Book.objects.order_by("id").values_list("price", flat=True))

    def call():
        with connection.cursor() as cursor:
            cursor.callproc("ormapp_discount")

    scenario.check_write(call, prices)
