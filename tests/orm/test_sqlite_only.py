"""SQLite-only scenarios (collected only when the tests run on SQLite): its write
statement forms, and reads inside transactions, which are never stored on SQLite."""

from __future__ import annotations

from django.db import connection, transaction

from relaycache import invalidate_tables
from tests.orm.support import ORM_SCENARIO, read
from tests.ormapp.models import Book, Genre, Label, Review

pytestmark = ORM_SCENARIO


def raw(sql, params=()):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def genres():
    return read(lambda: Genre.objects.order_by("slug").values_list("slug", "name"))


def test_insert_or_replace(scenario, shop):
    scenario.check_write(
        lambda: raw("INSERT OR REPLACE INTO ormapp_genre (id, name, slug) VALUES (%s, %s, %s)",
                    [shop.sf.pk, "Speculative", "sf"]),
        genres(),
    )


def test_replace_into(scenario, shop):
    scenario.check_write(
        lambda: raw("REPLACE INTO ormapp_genre (name, slug) VALUES (%s, %s)",
                    ["Essays", "essays"]),
        genres(),
    )


def test_update_or_ignore_and_insert_or_ignore(scenario, shop):
    scenario.check_write(lambda: raw("UPDATE OR IGNORE ormapp_genre SET name = upper(name)"),
                         genres())
    scenario.check_write(
        lambda: raw("INSERT OR IGNORE INTO ormapp_genre (name, slug) VALUES ('x', 'sf'), "
                    "('Drama', 'drama')"),
        genres(),
    )


def test_executescript(scenario, shop):
    """sqlite3's ``executescript`` bypasses Django's execute wrappers, so it is not seen
    (docs/limits.md); ``invalidate_tables()`` after it is the documented remedy."""
    def write():
        with connection.cursor() as cursor:
            cursor.executescript("UPDATE ormapp_label SET name = upper(name);"
                                 "DELETE FROM ormapp_review WHERE stars < 5;")
        invalidate_tables(["ormapp_label", "ormapp_review"])

    scenario.check_write(write, read(lambda: Label.objects.order_by("id")),
                         read(lambda: Review.objects.all(), lambda qs: qs.count()))


def test_transaction_reads_are_not_stored(scenario, shop, orm_cache,
                                          django_assert_num_queries):
    """SQLite transactions are snapshots: a miss inside ``atomic`` is never stored, but
    entries stored before it are still served."""
    warm = read(lambda: Book.objects.filter(is_featured=True).order_by("id"))
    cold = read(lambda: Label.objects.order_by("-id"))
    scenario.warm(warm)
    with transaction.atomic():
        info = Label.objects.cached().order_by("-id").cache_info()
        assert info.cached and not info.store
        stores = orm_cache.stats.stores
        for _ in range(2):
            with django_assert_num_queries(1):
                scenario.cached(cold)
        assert orm_cache.stats.stores == stores
        scenario.hit(warm)
    scenario.warm(cold)
