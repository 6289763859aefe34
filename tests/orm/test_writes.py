"""Every way Django writes invalidates the cached reads of the tables it wrote."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

from django.core.management import call_command
from django.db import connection
from django.db.models import Count, Exists, F, OuterRef, Sum

from relaycache.orm.sqlwrites import ALL_TABLES, changes_views, written_tables
from tests.orm.support import ORM_SCENARIO, outcome, read
from tests.ormapp.models import (
    Book,
    BookGenre,
    Ebook,
    Genre,
    Label,
    Plain,
    Publisher,
    Review,
    Shelf,
    ShelfItem,
)

pytestmark = ORM_SCENARIO

FIXTURES = Path(__file__).parent / "fixtures"


def titles(**filters):
    return read(lambda: Book.objects.filter(**filters).order_by("title"))


# -- save / create / delete ------------------------------------------------------------

def test_save_update(scenario, shop):
    def write():
        shop.dune.title = "Dune Messiah"
        shop.dune.price = Decimal("11.50")
        shop.dune.save()

    scenario.check_write(
        write,
        titles(author="Herbert"),
        read(lambda: Book.objects.filter(main_publisher__name="Tor").values("title", "price")),
        read(lambda: Book.objects.all(), lambda qs: qs.get(pk=shop.dune.pk)),
    )


def test_save_insert(scenario, shop):
    def write():
        Book(title="Children of Dune", author="Herbert", isbn="10",
             publication_date=dt.date(1976, 4, 1), main_publisher=shop.tor).save()

    scenario.check_write(
        write,
        titles(author="Herbert"),
        read(lambda: Publisher.objects.annotate(n=Count("main_books")).order_by("name")),
        read(lambda: Book.objects.all(), lambda qs: qs.count()),
    )


def test_save_update_fields(scenario, shop):
    def write():
        shop.hobbit.price = Decimal("1.00")
        shop.hobbit.title = "ignored: not in update_fields"
        shop.hobbit.save(update_fields=["price"])

    afters = scenario.check_write(
        write, read(lambda: Book.objects.all(), lambda qs: qs.aggregate(total=Sum("price"))))
    assert afters[0] == {"total": Decimal("50.49")}
    assert Book.objects.cached().get(pk=shop.hobbit.pk).title == "The Hobbit"


def test_create(scenario, shop):
    unrelated = read(lambda: Genre.objects.order_by("id"))
    scenario.warm(unrelated)
    scenario.check_write(
        lambda: Review.objects.create(book=shop.neuromancer, stars=4),
        read(lambda: Book.objects.annotate(n=Count("reviews")).order_by("id").values("title", "n")),
        read(lambda: Review.objects.filter(book=shop.neuromancer).order_by("id")),
    )
    scenario.hit(unrelated)  # a table the write did not touch stays cached


def test_delete_instance_cascades(scenario, shop):
    """Deleting a book cascades to its genres, reviews, publishers and shelf items;
    reads of those tables alone are invalidated too."""
    scenario.check_write(
        shop.dune.delete,
        read(lambda: BookGenre.objects.filter(genre__slug="sf").order_by("id")),
        read(lambda: Review.objects.all(), lambda qs: qs.count()),
        read(lambda: Review.objects.values_list("stars", flat=True).order_by("id")),
        read(lambda: ShelfItem.objects.order_by("id").values_list("book_id", "note")),
        read(lambda: Genre.objects.annotate(n=Count("bookgenre")).order_by("slug")),
        titles(),
    )


def test_delete_sets_null_on_reverse_fk(scenario, shop):
    scenario.check_write(
        shop.tor.delete,
        read(lambda: Book.objects.filter(main_publisher__isnull=True).order_by("title")),
        read(lambda: Book.objects.values_list("title", "main_publisher_id").order_by("id")),
    )


def test_get_or_create(scenario, shop):
    existing = read(lambda: Genre.objects.order_by("slug").values_list("slug", flat=True))
    scenario.warm(existing)
    genre, created = Genre.objects.get_or_create(slug="sf", defaults={"name": "x"})
    assert not created and genre.pk == shop.sf.pk
    scenario.hit(existing)  # a get_or_create that only reads writes nothing
    scenario.check_write(lambda: Genre.objects.get_or_create(slug="poetry",
                                                             defaults={"name": "Poetry"}),
                         existing)


def test_get_or_create_through_a_cached_queryset(scenario, shop):
    lookup = read(lambda: Label.objects.all(), outcome(lambda qs: qs.get(name="rare")))
    scenario.warm(lookup)
    label, created = Label.objects.cached().get_or_create(name="rare")
    assert created
    after = scenario.fresh(lookup)
    assert after == ("ok", label)
    label2, created = Label.objects.cached().get_or_create(name="rare")
    assert not created and label2.pk == label.pk


def test_update_or_create(scenario, shop):
    def write():
        _, created = Publisher.objects.update_or_create(name="Ace",
                                                        defaults={"country": "CA"})
        assert not created

    scenario.check_write(
        write,
        read(lambda: Publisher.objects.filter(country="US").order_by("name")),
        read(lambda: Book.objects.filter(main_publisher__country="CA").order_by("id")),
    )
    scenario.check_write(
        lambda: Publisher.objects.cached().update_or_create(name="Baen",
                                                            defaults={"country": "US"}),
        read(lambda: Publisher.objects.filter(country="US").order_by("name")),
    )


def test_queryset_update_with_f_expression(scenario, shop):
    scenario.check_write(
        lambda: Book.objects.filter(main_publisher=shop.tor).update(price=F("price") + 1),
        read(lambda: Book.objects.values_list("title", "price").order_by("id")),
        read(lambda: Book.objects.all(), lambda qs: qs.aggregate(Sum("price"))),
        read(lambda: Book.objects.filter(price__gte=10).order_by("id")),
    )


def test_update_through_a_cached_queryset(scenario, shop):
    scenario.check_write(
        lambda: Book.objects.cached().filter(author="Gibson").update(is_featured=True),
        read(lambda: Book.objects.filter(is_featured=True).order_by("id")),
    )


def test_queryset_delete(scenario, shop):
    scenario.check_write(
        lambda: Review.objects.filter(stars__lt=4).delete(),
        read(lambda: Review.objects.all(), lambda qs: qs.aggregate(total=Sum("stars"))),
        read(lambda: Book.objects.filter(reviews__stars__lt=4).order_by("id")),
    )


def test_queryset_delete_through_a_cached_queryset_cascades(scenario, shop):
    scenario.check_write(
        lambda: Book.objects.cached().filter(main_publisher__country="US").delete(),
        read(lambda: Review.objects.order_by("id")),
        read(lambda: Label.objects.annotate(n=Count("books")).order_by("id")),
        titles(),
    )


def test_bulk_create(scenario, shop):
    scenario.check_write(
        lambda: Label.objects.bulk_create([Label(name="bulk1"), Label(name="bulk2")]),
        read(lambda: Label.objects.order_by("name")),
        read(lambda: Label.objects.all(), lambda qs: qs.count()),
    )


def test_bulk_create_upsert(scenario, shop):
    scenario.check_write(
        lambda: Genre.objects.bulk_create(
            [Genre(name="SF (renamed)", slug="sf"), Genre(name="Horror", slug="horror")],
            update_conflicts=True, unique_fields=["slug"], update_fields=["name"]),
        read(lambda: Genre.objects.order_by("slug").values_list("slug", "name")),
        read(lambda: Book.objects.filter(genres__genre__name__startswith="SF")),
    )


def test_bulk_update(scenario, shop):
    def write():
        for b in shop.books:
            b.title = b.title.upper()
            b.price += 1
        Book.objects.bulk_update(shop.books, ["title", "price"])

    scenario.check_write(
        write,
        read(lambda: Book.objects.values("title", "price").order_by("id")),
        read(lambda: BookGenre.objects.select_related("book").order_by("id"),
             lambda qs: [(bg.book.title, bg.book.price) for bg in qs]),
    )


# -- many-to-many ------------------------------------------------------------------------

def labelled(name):
    return read(lambda: Book.objects.filter(labels__name=name).order_by("id"))


def test_m2m_add(scenario, shop):
    scenario.check_write(
        lambda: shop.spqr.labels.add(shop.new, shop.award),
        labelled("new"),
        read(lambda: Label.objects.annotate(n=Count("books")).order_by("id")),
    )


def test_m2m_remove(scenario, shop):
    scenario.check_write(lambda: shop.dune.labels.remove(shop.classic), labelled("classic"))


def test_m2m_clear(scenario, shop):
    scenario.check_write(
        shop.dune.labels.clear,
        labelled("award"),
        read(lambda: Book.objects.annotate(n=Count("labels")).values_list("n", flat=True)),
    )


def test_m2m_set(scenario, shop):
    scenario.check_write(lambda: shop.hobbit.labels.set([shop.new]),
                         labelled("classic"), labelled("new"))


def test_m2m_reverse_side_add(scenario, shop):
    scenario.check_write(lambda: shop.new.books.add(shop.dune, shop.hobbit),
                         labelled("new"))


def test_m2m_related_manager_reads(scenario, shop):
    scenario.check_write(
        lambda: shop.dune.labels.add(shop.new),
        read(lambda: shop.dune.labels.order_by("name")),
        read(lambda: shop.new.books.order_by("id")),
    )


def test_m2m_through_model_write(scenario, shop):
    through = Book.labels.through
    scenario.check_write(
        lambda: through.objects.filter(label=shop.award).delete(),
        labelled("award"),
    )


def test_explicit_through_create_and_delete(scenario, shop):
    on_shelf = read(lambda: Book.objects.filter(shelves=shop.favourites).order_by("id"))
    item = None

    def create():
        nonlocal item
        item = ShelfItem.objects.create(shelf=shop.favourites, book=shop.foundation,
                                        note="new")

    scenario.check_write(create, on_shelf,
                         read(lambda: Shelf.objects.annotate(n=Count("books")).order_by("id")))
    scenario.check_write(item.delete, on_shelf)


def test_explicit_through_add_with_through_defaults(scenario, shop):
    scenario.check_write(
        lambda: shop.bedside.books.add(shop.neuromancer, through_defaults={"note": "next"}),
        read(lambda: ShelfItem.objects.filter(note="next").values_list("book__title",
                                                                       flat=True)),
        read(lambda: Book.objects.filter(shelves__name="Bedside").order_by("id")),
        read(lambda: shop.neuromancer.shelves.order_by("id")),
    )


def test_explicit_through_remove_clear_set(scenario, shop):
    on_shelf = read(lambda: shop.favourites.books.order_by("id"))
    scenario.check_write(lambda: shop.favourites.books.remove(shop.dune), on_shelf)
    scenario.check_write(
        lambda: shop.favourites.books.set([shop.spqr, shop.foundation],
                                          through_defaults={"note": "set"}),
        on_shelf,
    )
    scenario.check_write(shop.favourites.books.clear, on_shelf)


# -- reverse foreign keys ------------------------------------------------------------------

def published_by(name):
    return read(lambda: Book.objects.filter(main_publisher__name=name).order_by("id"))


def test_reverse_fk_add_and_remove(scenario, shop):
    scenario.check_write(lambda: shop.ace.main_books.add(shop.spqr), published_by("Ace"))
    scenario.check_write(lambda: shop.tor.main_books.remove(shop.foundation),
                         published_by("Tor"))


def test_reverse_fk_clear_set_create(scenario, shop):
    counts = read(lambda: Publisher.objects.annotate(n=Count("main_books"))
                  .order_by("id").values_list("name", "n"))
    scenario.check_write(shop.tor.main_books.clear, counts, published_by("Tor"))
    scenario.check_write(lambda: shop.ace.main_books.set([shop.dune, shop.foundation]),
                         counts)
    scenario.check_write(
        lambda: shop.penguin.main_books.create(title="Emma", author="Austen", isbn="20",
                                               publication_date=dt.date(1815, 12, 23)),
        counts, read(lambda: shop.penguin.main_books.order_by("id")),
    )


def test_reverse_fk_related_manager_update_and_delete(scenario, shop):
    scenario.check_write(lambda: shop.tor.main_books.update(is_featured=True),
                         read(lambda: Book.objects.filter(is_featured=True).order_by("id")))
    scenario.check_write(lambda: shop.hobbit.reviews.filter(stars=5).delete(),
                         read(lambda: Review.objects.order_by("id")))


def test_reverse_fk_related_manager_create(scenario, shop):
    scenario.check_write(
        lambda: shop.spqr.reviews.create(stars=1),
        read(lambda: shop.spqr.reviews.all()),
        read(lambda: Book.objects.filter(reviews__stars=1).order_by("id")),
    )


# -- raw SQL ----------------------------------------------------------------------------

def raw(sql, params=()):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def test_raw_sql_insert(scenario, shop):
    scenario.check_write(
        lambda: raw("INSERT INTO ormapp_label (name) VALUES (%s)", ["raw"]),
        read(lambda: Label.objects.order_by("name")),
    )


def test_raw_sql_update(scenario, shop):
    scenario.check_write(
        lambda: raw("UPDATE ormapp_book SET price = price * 2 WHERE author = %s", ["Asimov"]),
        read(lambda: Book.objects.values_list("price", flat=True).order_by("id")),
        read(lambda: BookGenre.objects.filter(book__price__gt=14).order_by("id")),
    )


def test_raw_sql_delete(scenario, shop):
    scenario.check_write(
        lambda: raw("DELETE FROM ormapp_review WHERE stars = %s", [5]),
        read(lambda: Review.objects.all(), lambda qs: qs.count()),
        read(lambda: Book.objects.annotate(n=Count("reviews")).values_list("n", flat=True)),
    )


def test_raw_sql_spelling_variants(scenario, shop):
    """Quoted, mixed-case and commented statements name their table too."""
    prices = read(lambda: Book.objects.values_list("price", flat=True).order_by("id"))
    scenario.check_write(
        lambda: raw('/* batch */ -- prices\n  update "ormapp_book" SET "price" = 1'), prices)
    scenario.check_write(lambda: raw("Update OrmApp_Book Set price = 2"), prices)
    scenario.check_write(
        lambda: raw("DELETE FROM ormapp_review WHERE id IN "
                    "(SELECT id FROM ormapp_review WHERE stars < 5)"),
        read(lambda: Review.objects.values_list("stars", flat=True).order_by("id")),
    )


def test_raw_sql_upsert_and_insert_select(scenario, shop):
    genres = read(lambda: Genre.objects.order_by("slug").values_list("slug", "name"))
    scenario.check_write(
        lambda: raw("INSERT INTO ormapp_genre (name, slug) VALUES (%s, %s) "
                    "ON CONFLICT (slug) DO UPDATE SET name = excluded.name",
                    ["Sci-fi", "sf"]),
        genres)
    scenario.check_write(
        lambda: raw("INSERT INTO ormapp_label (name) SELECT title FROM ormapp_book "
                    "WHERE is_featured = %s", [True]),
        read(lambda: Label.objects.order_by("id").values_list("name", flat=True)))


def test_raw_sql_executemany(scenario, shop):
    def write():
        with connection.cursor() as cursor:
            cursor.executemany("INSERT INTO ormapp_label (name) VALUES (%s)",
                               [["m1"], ["m2"], ["m3"]])

    scenario.check_write(write, read(lambda: Label.objects.all(), lambda qs: qs.count()))


def test_raw_sql_with_cte_then_update(scenario, shop):
    """``WITH ... UPDATE``: the leading word is not the write, so everything is
    invalidated."""
    scenario.check_write(
        lambda: raw("WITH cheap AS (SELECT id FROM ormapp_book WHERE price < 10) "
                    "UPDATE ormapp_book SET is_featured = %s "
                    "WHERE id IN (SELECT id FROM cheap)", [True]),
        read(lambda: Book.objects.filter(is_featured=True).order_by("id")),
    )


# -- models the cache does not manage -------------------------------------------------

def test_plain_model_write_invalidates_cached_join(scenario, shop):
    """``Plain`` has Django's own manager; cached reads joining its table still see its
    writes, and plain querysets of it never touch the cache."""
    Plain.objects.create(name="p", book=shop.dune)
    joined = read(lambda: Book.objects.filter(plains__name="p").order_by("id"))
    counted = read(lambda: Book.objects.annotate(n=Count("plains")).values_list("n", flat=True))
    exists = read(lambda: Book.objects.filter(
        Exists(Plain.objects.filter(book=OuterRef("pk"), name="p"))).order_by("id"))
    scenario.check_write(lambda: Plain.objects.create(name="p", book=shop.spqr),
                         joined, counted, exists)
    scenario.check_write(lambda: Plain.objects.filter(book=shop.dune).update(name="q"),
                         joined)
    scenario.check_write(lambda: Plain.objects.all().delete(), counted)


# -- management commands ----------------------------------------------------------------

def test_flush_command(scenario, shop):
    scenario.check_write(
        lambda: call_command("flush", interactive=False, verbosity=0),
        titles(),
        read(lambda: Label.objects.all(), lambda qs: qs.count()),
        read(lambda: Review.objects.all(), lambda qs: qs.exists()),
    )


def test_loaddata_command(scenario, shop):
    Publisher.objects.create(pk=901, name="Old name", country="FR")
    scenario.check_write(
        lambda: call_command("loaddata", str(FIXTURES / "shop.json"), verbosity=0),
        read(lambda: Publisher.objects.filter(pk=901).values("name", "country")),
        titles(author="Fixture"),
        labelled("loaded"),
        read(lambda: Book.objects.filter(main_publisher__name="Gollancz").order_by("id")),
    )


# -- multi-table inheritance --------------------------------------------------------------

def test_mti_ebook_writes_invalidate_book_reads(scenario, shop):
    ebook = None

    def create():
        nonlocal ebook
        ebook = Ebook.objects.create(title="Dune (ebook)", author="Herbert", isbn="e1",
                                     publication_date=dt.date(2000, 1, 1), file_size=10)

    books = titles(author="Herbert")
    with_ebook = read(lambda: Book.objects.select_related("ebook").order_by("id"),
                      lambda qs: [(b.title, getattr(b, "ebook", None)) for b in qs])
    scenario.check_write(create, books, with_ebook)

    def grow():
        ebook.file_size = 99
        ebook.save()

    scenario.check_write(grow, with_ebook,
                         read(lambda: Book.objects.filter(ebook__file_size__gt=50)))
    scenario.check_write(lambda: Ebook.objects.filter(pk=ebook.pk).update(title="Renamed"),
                         books)


def test_mti_book_writes_invalidate_ebook_reads(scenario, shop):
    ebook = Ebook.objects.create(title="Neuromancer (ebook)", author="Gibson", isbn="e2",
                                 publication_date=dt.date(2001, 1, 1), file_size=5)
    ebooks = read(lambda: Ebook.objects.order_by("id"))
    scenario.check_write(lambda: Book.objects.filter(pk=ebook.pk).update(price=3), ebooks)

    def rename_parent():
        parent = Book.objects.get(pk=ebook.pk)
        parent.title = "Count Zero"
        parent.save()

    scenario.check_write(rename_parent, ebooks,
                         read(lambda: Ebook.objects.values_list("title", flat=True)))
    scenario.check_write(lambda: Book.objects.filter(pk=ebook.pk).delete(), ebooks,
                         read(lambda: Ebook.objects.all(), lambda qs: qs.count()))


# -- statements that write through another object ------------------------------------------
# (run against PostgreSQL's objects in test_indirect_writes.py)

def test_statement_classification_of_views_and_procedures():
    assert written_tables('REFRESH MATERIALIZED VIEW CONCURRENTLY "public"."mv"') == {"mv"}
    assert written_tables("refresh materialized view mv with no data") == {"mv"}
    assert written_tables("CALL bump()") == ALL_TABLES
    for ddl in ("CREATE OR REPLACE VIEW v AS SELECT 1", "/* migration */ DROP VIEW v",
                "ALTER MATERIALIZED VIEW mv RENAME TO mv2", "ALTER TABLE t RENAME TO u",
                "CREATE RULE r AS ON INSERT TO v DO INSTEAD NOTHING"):
        assert changes_views(ddl), ddl
    for other in ("CREATE TABLE t (a int)", "SELECT * FROM view_of_books",
                  "UPDATE t SET review = 1"):
        assert not changes_views(other), other
