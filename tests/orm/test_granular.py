"""Granular invalidation (issue 11), end to end: every write path against reads pinned
to key values and reads that are not.

Each scenario warms its reads, makes one write, then checks three kinds of read:

- ``changed``: reads the write changes. The next cached read equals the database (the
  same query with ``.nocache()``) and differs from before, so the check has teeth;
- ``kept``: reads the write cannot change and whose tags the write does not replace
  (docs/consistency.md, "Granular invalidation"): still served without SQL;
- ``other``: reads the write leaves unchanged but may drop (the design gives up on the
  values its statement does not say): whether hit or miss, they equal the database.

Only statements whose rows the design says it knows are expected to keep reads; the
reads a ``RETURNING`` clause spares are test_returning.py's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.models import Count, Exists, F, OuterRef, Q, Subquery, Sum
from django.db.models.functions import Coalesce

from tests.orm.support import ORM_SCENARIO, Read, Scenario, outcome, read, snap
from tests.ormapp.models import (
    Book,
    BookGenre,
    BookPublisher,
    Ebook,
    Genre,
    Publisher,
    Review,
    ShelfItem,
)

pytestmark = ORM_SCENARIO

Reads = Mapping[str, Read]
NONE: Reads = MappingProxyType({})

FAILURES = (AssertionError, pytest.fail.Exception)
"""What a failed check raises (``django_assert_num_queries`` fails with the latter)."""


class Rollback(Exception):
    """Raised to roll an atomic block back."""


def check(scenario: Scenario, write: Callable[[], Any], changed: Reads,
          kept: Reads = NONE, other: Reads = NONE) -> None:
    """Warm every read, ``write``, then check each kind (module docstring); one failure
    lists every read that failed."""
    before = {name: scenario.warm(r) for name, r in changed.items()}
    for r in (*kept.values(), *other.values()):
        scenario.warm(r)
    write()
    failures = []

    def attempt(kind: str, name: str, step: Callable[[], Any]) -> None:
        try:
            step()
        except FAILURES as exc:
            failures.append(f"{kind} read {name!r}: {str(exc).splitlines()[0]}")

    def changes(name: str, r: Read) -> None:
        after = scenario.fresh(r)
        assert snap(after) != snap(before[name]), f"did not change: {after!r}"

    for name, r in kept.items():
        attempt("kept", name, lambda r=r: scenario.hit(r))
    for name, r in changed.items():
        attempt("changed", name, lambda name=name, r=r: changes(name, r))
    for name, r in other.items():
        attempt("other", name, lambda r=r: scenario.fresh(r))
    assert not failures, "\n".join(failures)


# -- reads ---------------------------------------------------------------------------

def get_book(book: Book) -> Read:
    pk = book.pk
    return read(lambda: Book.objects.all(), outcome(lambda qs: qs.get(pk=pk)))


def books_in(*books: Book) -> Read:
    pks = [b.pk for b in books]
    return read(lambda: Book.objects.filter(pk__in=pks).order_by("id"))


def books_of(publisher: Publisher) -> Read:
    return read(lambda: Book.objects.filter(main_publisher=publisher).order_by("id"))


def main_books(publisher: Publisher) -> Read:
    """The reverse foreign key's related manager."""
    return read(lambda: publisher.main_books.order_by("id"))


def genres_of(book: Book) -> Read:
    """Pinned on ``ormapp_bookgenre.book_id``; the SQL never reads ``ormapp_book``."""
    pk = book.pk
    return read(lambda: BookGenre.objects.filter(book_id=pk).order_by("id"))


def genres_with_book(book: Book) -> Read:
    """The same rows with the book joined: it does read ``ormapp_book``."""
    pk = book.pk
    return read(lambda: BookGenre.objects.select_related("book").filter(book_id=pk)
                .order_by("id"))


def books_of_genre(genre: Genre) -> Read:
    """A through join pinned on ``ormapp_bookgenre.genre_id``."""
    pk = genre.pk
    return read(lambda: Book.objects.filter(genres__genre_id=pk).order_by("id"))


def publishers_of(book: Book) -> Read:
    """Pinned on ``ormapp_bookpublisher.book_id``, the publisher selected across it."""
    return read(lambda: BookPublisher.objects.select_related("publisher").filter(book=book)
                .order_by("position"))


def reviews_of(book: Book) -> Read:
    return read(lambda: book.reviews.order_by("id"))


def book_with_publisher(book: Book) -> Read:
    pk = book.pk
    return read(lambda: Book.objects.select_related("main_publisher").filter(pk=pk))


def labels_of(book: Book) -> Read:
    return read(lambda: book.labels.order_by("id"))


def books_labelled(label_id: int) -> Read:
    return read(lambda: Book.objects.filter(labels__id=label_id).order_by("id"))


def shelf_books(shelf: Any) -> Read:
    return read(lambda: shelf.books.order_by("id"))


def book_shelves(book: Book) -> Read:
    return read(lambda: book.shelves.order_by("id"))


def titles() -> Read:
    return read(lambda: Book.objects.order_by("id").values_list("title", flat=True))


def authors() -> Read:
    return read(lambda: Book.objects.order_by("id").values_list("author", flat=True))


def prices() -> Read:
    return read(lambda: Book.objects.order_by("id").values("id", "price"))


def book_count() -> Read:
    return read(lambda: Book.objects.all(), lambda qs: qs.count())


def herbert_exists() -> Read:
    return read(lambda: Book.objects.filter(author="Herbert"), lambda qs: qs.exists())


def total_price() -> Read:
    return read(lambda: Book.objects.all(), lambda qs: qs.aggregate(total=Sum("price")))


def featured() -> Read:
    return read(lambda: Book.objects.filter(is_featured=True).order_by("id"))


def publisher_counts() -> Read:
    return read(lambda: Publisher.objects.annotate(n=Count("main_books")).order_by("id")
                .values_list("name", "n"))


def genre_names() -> Read:
    return read(lambda: Genre.objects.order_by("id").values_list("name", flat=True))


def self_join(book: Book, other_title: str) -> Read:
    """Reads ``ormapp_book`` twice: the outer alias pinned to one book, the second alias
    (the publisher's other books) not."""
    pk = book.pk
    return read(lambda: Book.objects.filter(pk=pk, main_publisher__main_books__title=other_title)
                .order_by("id"))


def pinned_subquery(book: Book, other: Book) -> Read:
    """A book pinned at the top level with a subquery pinned to another book: the
    subquery's pin is not a top-level one, so the read depends on every book."""
    pk, other_pk = book.pk, other.pk
    return read(lambda: Book.objects.filter(pk=pk).annotate(
        other_title=Subquery(Book.objects.filter(pk=other_pk).values("title")))
        .values_list("title", "other_title"))


def cheaper_exists(book: Book) -> Read:
    pk = book.pk
    return read(lambda: Book.objects.filter(pk=pk).annotate(
        has_cheaper=Exists(Book.objects.filter(price__lt=OuterRef("price"))))
        .values_list("id", "has_cheaper"))


def next_pk(model: Any) -> int:
    last = model.objects.order_by("-pk").values_list("pk", flat=True).first()
    return (last or 0) + 1


def new_book(isbn: str, publisher: Publisher | None, title: str = "New") -> Book:
    return Book(title=title, author="Someone", isbn=isbn, publication_date=dt.date(2000, 1, 1),
                price=Decimal("3.00"), main_publisher=publisher)


# -- instance save() ---------------------------------------------------------------

def test_save_update_fields_drops_only_its_row_and_column(scenario, shop):
    def write():
        shop.dune.title = "Dune Messiah"
        shop.dune.save(update_fields=["title"])

    check(scenario, write, changed={
        "get dune": get_book(shop.dune),
        "dune and foundation": books_in(shop.dune, shop.foundation),
        "titles": titles(),
        "tor's books": books_of(shop.tor),
        "tor.main_books": main_books(shop.tor),
        "dune with publisher": book_with_publisher(shop.dune),
        "genres of dune, book joined": genres_with_book(shop.dune),
        "books of sf": books_of_genre(shop.sf),
    }, kept={
        "get foundation": get_book(shop.foundation),
        "neuromancer and hobbit": books_in(shop.neuromancer, shop.hobbit),
        "genres of dune": genres_of(shop.dune),
        "genres of foundation": genres_of(shop.foundation),
        "publishers of dune": publishers_of(shop.dune),
        "publishers of hobbit": publishers_of(shop.hobbit),
        "reviews of dune": reviews_of(shop.dune),
        "count": book_count(),
        "exists": herbert_exists(),
        "total price": total_price(),
        "authors": authors(),
        "genre names": genre_names(),
        "hobbit with publisher": book_with_publisher(shop.hobbit),
    }, other={
        "ace's books": books_of(shop.ace),
    })


def test_full_save_drops_its_row_and_every_listing_of_the_table(scenario, shop):
    def write():
        shop.dune.price = Decimal("1.00")
        shop.dune.save()

    check(scenario, write, changed={
        "get dune": get_book(shop.dune),
        "prices": prices(),
        "total price": total_price(),
        "tor's books": books_of(shop.tor),
        "cheaper than foundation exists": cheaper_exists(shop.foundation),
    }, kept={
        "get foundation": get_book(shop.foundation),
        "neuromancer and hobbit": books_in(shop.neuromancer, shop.hobbit),
        "count": book_count(),
        "genres of dune": genres_of(shop.dune),
        "publishers of hobbit": publishers_of(shop.hobbit),
    }, other={
        "titles": titles(),
        "ace's books": books_of(shop.ace),
        "exists": herbert_exists(),
    })


def test_save_moving_a_row_between_publishers_drops_both_sets(scenario, shop):
    def write():
        shop.dune.main_publisher = shop.ace
        shop.dune.save()

    check(scenario, write, changed={
        "tor's books": books_of(shop.tor),
        "ace's books": books_of(shop.ace),
        "tor.main_books": main_books(shop.tor),
        "ace.main_books": main_books(shop.ace),
        "dune with publisher": book_with_publisher(shop.dune),
        "publisher counts": publisher_counts(),
        "get dune": get_book(shop.dune),
    }, kept={
        "get foundation": get_book(shop.foundation),
        "count": book_count(),
        "publishers of dune": publishers_of(shop.dune),
    }, other={
        "penguin's books": books_of(shop.penguin),
    })


def test_save_moving_a_through_row_drops_both_sets(scenario, shop):
    """``BookPublisher`` (dune, penguin) moves to ace: the entries pinned on either
    publisher refresh; ``ormapp_book`` is not written."""
    moved = BookPublisher.objects.get(book=shop.dune, publisher=shop.penguin)
    other = BookPublisher.objects.get(book=shop.hobbit)

    def on(publisher):
        return read(lambda: BookPublisher.objects.filter(publisher=publisher).order_by("id"))

    def write():
        moved.publisher = shop.ace
        moved.save()

    check(scenario, write, changed={
        "penguin's": on(shop.penguin),
        "ace's": on(shop.ace),
        "penguin.books": read(lambda: shop.penguin.books.order_by("id")),
        "publishers of dune": publishers_of(shop.dune),
    }, kept={
        "get hobbit's row": read(lambda: BookPublisher.objects.all(),
                                 lambda qs: qs.get(pk=other.pk)),
        "get dune": get_book(shop.dune),
        "books of sf": books_of_genre(shop.sf),
    }, other={
        "tor's": on(shop.tor),
        "publishers of hobbit": publishers_of(shop.hobbit),
    })


def test_create_drops_the_sets_it_enters(scenario, shop):
    pk = next_pk(Book)

    def write():
        Book.objects.create(title="Gateway", author="Pohl", isbn="10",
                            publication_date=dt.date(1977, 1, 1), main_publisher=shop.ace)

    check(scenario, write, changed={
        "get new pk": read(lambda: Book.objects.all(), outcome(lambda qs: qs.get(pk=pk))),
        "new pk in": read(lambda: Book.objects.filter(pk__in=[pk, shop.dune.pk])),
        "ace's books": books_of(shop.ace),
        "ace.main_books": main_books(shop.ace),
        "count": book_count(),
        "titles": titles(),
        "publisher counts": publisher_counts(),
    }, kept={
        "tor's books": books_of(shop.tor),
        "genres of dune": genres_of(shop.dune),
        "publishers of dune": publishers_of(shop.dune),
    }, other={
        "get dune": get_book(shop.dune),
    })


def test_create_through_row_drops_its_book_and_genre_only(scenario, shop):
    """The issue's example: BookGenre(book=b5, genre=g3) drops the genres of book 5 and
    the books of genre 3, not the genres of book 7."""
    check(scenario, lambda: BookGenre.objects.create(book=shop.dune, genre=shop.fantasy),
          changed={
              "genres of dune": genres_of(shop.dune),
              "books of fantasy": books_of_genre(shop.fantasy),
              "genres of dune, book joined": genres_with_book(shop.dune),
              "books of sf and fantasy": read(lambda: Book.objects.filter(
                  genres__genre_id=shop.sf.pk).filter(genres__genre_id=shop.fantasy.pk)),
              "books of sf, not fantasy": read(lambda: Book.objects.filter(
                  genres__genre_id=shop.sf.pk).exclude(genres__genre_id=shop.fantasy.pk)),
              "prefetched genres": read(lambda: Book.objects.filter(
                  pk__in=[shop.dune.pk, shop.hobbit.pk]).prefetch_related("genres")),
          }, kept={
              "genres of foundation": genres_of(shop.foundation),
              "books of history": books_of_genre(shop.history),
              "books of sf": books_of_genre(shop.sf),
              "get dune": get_book(shop.dune),
              "genre names": genre_names(),
          })


# -- queryset update() -------------------------------------------------------------

def test_update_by_pk(scenario, shop):
    check(scenario, lambda: Book.objects.filter(pk=shop.dune.pk).update(price=Decimal("1")),
          changed={
              "get dune": get_book(shop.dune),
              "dune and foundation": books_in(shop.dune, shop.foundation),
              "prices": prices(),
              "total price": total_price(),
              "tor's books": books_of(shop.tor),
          }, kept={
              "get foundation": get_book(shop.foundation),
              "neuromancer and hobbit": books_in(shop.neuromancer, shop.hobbit),
              "count": book_count(),
              "titles": titles(),
              "genres of dune": genres_of(shop.dune),
              "publishers of dune": publishers_of(shop.dune),
          }, other={
              "ace's books": books_of(shop.ace),
          })


def test_update_by_pk_in(scenario, shop):
    pks = [shop.dune.pk, shop.foundation.pk]
    check(scenario, lambda: Book.objects.filter(pk__in=pks).update(is_featured=True),
          changed={
              "get foundation": get_book(shop.foundation),
              "foundation and neuromancer": books_in(shop.foundation, shop.neuromancer),
              "featured": featured(),
          }, kept={
              "get neuromancer": get_book(shop.neuromancer),
              "neuromancer and hobbit": books_in(shop.neuromancer, shop.hobbit),
              "titles": titles(),
              "count": book_count(),
          }, other={
              "get dune": get_book(shop.dune),
          })


def test_update_moving_rows_by_their_foreign_key(scenario, shop):
    """WHERE main_publisher_id = tor, SET ace: both values are in the statement."""
    check(scenario,
          lambda: Book.objects.filter(main_publisher=shop.tor).update(main_publisher=shop.ace),
          changed={
              "tor's books": books_of(shop.tor),
              "ace's books": books_of(shop.ace),
              "tor.main_books": main_books(shop.tor),
              "dune with publisher": book_with_publisher(shop.dune),
              "publisher counts": publisher_counts(),
              "get dune": get_book(shop.dune),
          }, kept={
              "penguin's books": books_of(shop.penguin),
              "count": book_count(),
              "titles": titles(),
          }, other={
              "get hobbit": get_book(shop.hobbit),
          })


def test_update_with_an_arbitrary_filter_stays_fresh(scenario, shop):
    check(scenario,
          lambda: Book.objects.filter(author="Herbert").update(price=Decimal("2.00")),
          changed={
              "get dune": get_book(shop.dune),
              "prices": prices(),
              "tor's books": books_of(shop.tor),
          }, kept={
              "count": book_count(),
              "genres of dune": genres_of(shop.dune),
          }, other={
              "get foundation": get_book(shop.foundation),
              "titles": titles(),
          })


def test_update_through_a_join_falls_back_to_the_table(scenario, shop):
    """``filter(genres__genre=sf)`` makes Django write ``WHERE id IN (SELECT ...)``."""
    check(scenario,
          lambda: Book.objects.filter(genres__genre=shop.sf).update(price=Decimal("4.00")),
          changed={
              "get dune": get_book(shop.dune),
              "get neuromancer": get_book(shop.neuromancer),
              "books of sf": books_of_genre(shop.sf),
              "total price": total_price(),
          }, kept={
              "genres of dune": genres_of(shop.dune),
              "genre names": genre_names(),
          }, other={
              "get hobbit": get_book(shop.hobbit),
              "count": book_count(),
          })


def test_update_moving_rows_by_an_expression(scenario, shop):
    """The new key is a subquery: its value is not in the statement."""
    ace = Publisher.objects.filter(name="Ace").values("id")
    check(scenario,
          lambda: Book.objects.filter(pk=shop.dune.pk).update(main_publisher=Subquery(ace)),
          changed={
              "tor's books": books_of(shop.tor),
              "ace's books": books_of(shop.ace),
          }, kept={
              "get foundation": get_book(shop.foundation),
              "count": book_count(),
          })


def test_update_of_the_primary_key_moves_the_row(scenario, shop):
    book = Book.objects.create(title="Loose", author="Nobody", isbn="20",
                               publication_date=dt.date(2001, 1, 1))
    free = next_pk(Book) + 100

    def get(pk):
        return read(lambda: Book.objects.all(), outcome(lambda qs: qs.get(pk=pk)))

    check(scenario, lambda: Book.objects.filter(pk=book.pk).update(id=free), changed={
        "get old pk": get(book.pk),
        "get new pk": get(free),
        "old and new pk": read(lambda: Book.objects.filter(pk__in=[book.pk, free])
                               .values_list("id", flat=True)),
    }, kept={
        "get dune": get_book(shop.dune),
        "count": book_count(),
    })


def test_bulk_create_updating_conflicts_moves_rows(scenario, shop):
    """``ON CONFLICT DO UPDATE`` changes an existing row (dune, by its isbn): the
    reads pinned on its old publisher refresh too."""
    def write():
        Book.objects.bulk_create([new_book("1", shop.ace, "Dune")], update_conflicts=True,
                                 unique_fields=["isbn"], update_fields=["main_publisher"])

    check(scenario, write, changed={
        "tor's books": books_of(shop.tor),
        "ace's books": books_of(shop.ace),
        "get dune": get_book(shop.dune),
    }, other={
        "count": book_count(),
        "get foundation": get_book(shop.foundation),
    })


def test_update_of_a_parent_field_through_a_child_model(scenario, shop):
    """Multi-table inheritance: the child's update writes the parent's table."""
    ebook = Ebook.objects.create(title="E", author="Digital", isbn="30",
                                 publication_date=dt.date(2020, 1, 1), file_size=1)
    pk = ebook.pk
    check(scenario, lambda: Ebook.objects.filter(pk=pk).update(title="E2", file_size=2),
          changed={
              "get as book": read(lambda: Book.objects.all(), lambda qs: qs.get(pk=pk)),
              "get as ebook": read(lambda: Ebook.objects.all(), lambda qs: qs.get(pk=pk)),
              "ebook titles": read(lambda: Ebook.objects.values_list("title", "file_size")),
          }, kept={
              "get dune": get_book(shop.dune),
              "count": book_count(),
          })


def test_bulk_update(scenario, shop):
    def write():
        shop.dune.price = Decimal("1.00")
        shop.foundation.price = Decimal("2.00")
        Book.objects.bulk_update([shop.dune, shop.foundation], ["price"])

    check(scenario, write, changed={
        "get dune": get_book(shop.dune),
        "dune and foundation": books_in(shop.dune, shop.foundation),
        "prices": prices(),
    }, kept={
        "get hobbit": get_book(shop.hobbit),
        "neuromancer and hobbit": books_in(shop.neuromancer, shop.hobbit),
        "titles": titles(),
        "count": book_count(),
        "genres of dune": genres_of(shop.dune),
    }, other={
        "ace's books": books_of(shop.ace),
    })


def test_bulk_create(scenario, shop):
    pk = next_pk(Book)

    def write():
        Book.objects.bulk_create([new_book("10", shop.ace, "A"), new_book("11", None, "B")])

    check(scenario, write, changed={
        "get new pk": read(lambda: Book.objects.all(), outcome(lambda qs: qs.get(pk=pk))),
        "ace's books": books_of(shop.ace),
        "count": book_count(),
        "titles": titles(),
    }, kept={
        "tor's books": books_of(shop.tor),
        "genres of dune": genres_of(shop.dune),
    }, other={
        "get dune": get_book(shop.dune),
    })


def test_bulk_create_through_rows(scenario, shop):
    def write():
        BookGenre.objects.bulk_create([BookGenre(book=shop.dune, genre=shop.fantasy),
                                       BookGenre(book=shop.spqr, genre=shop.fantasy)])

    check(scenario, write, changed={
        "genres of dune": genres_of(shop.dune),
        "genres of spqr": genres_of(shop.spqr),
        "books of fantasy": books_of_genre(shop.fantasy),
    }, kept={
        "genres of foundation": genres_of(shop.foundation),
        "books of sf": books_of_genre(shop.sf),
        "books of history": books_of_genre(shop.history),
        "get dune": get_book(shop.dune),
    })


# -- delete() ----------------------------------------------------------------------

def test_instance_delete_with_cascades(scenario, shop):
    dune = Book(pk=shop.dune.pk)  # the related managers of a deleted row, by its key
    check(scenario, shop.dune.delete, changed={
        "get dune": get_book(dune),
        "dune and foundation": books_in(dune, shop.foundation),
        "genres of dune": genres_of(dune),
        "books of sf": books_of_genre(shop.sf),
        "publishers of dune": publishers_of(dune),
        "reviews of dune": reviews_of(dune),
        "labels of dune": labels_of(dune),
        "books labelled award": books_labelled(shop.award.pk),
        "favourite shelf": shelf_books(shop.favourites),
        "tor's books": books_of(shop.tor),
        "count": book_count(),
        "titles": titles(),
    }, kept={
        "get foundation": get_book(shop.foundation),
        "neuromancer and hobbit": books_in(shop.neuromancer, shop.hobbit),
        "genre names": genre_names(),
    }, other={
        "genres of hobbit": genres_of(shop.hobbit),
        "reviews of hobbit": reviews_of(shop.hobbit),
        "labels of foundation": labels_of(shop.foundation),
        "bedside shelf": shelf_books(shop.bedside),
    })


def test_delete_setting_foreign_keys_to_null(scenario, shop):
    """Deleting ace sets neuromancer's ``main_publisher`` to NULL (``SET_NULL``)."""
    ace = Publisher(pk=shop.ace.pk)
    check(scenario, shop.ace.delete, changed={
        "ace's books": books_of(ace),
        "get neuromancer": get_book(shop.neuromancer),
        "neuromancer with publisher": book_with_publisher(shop.neuromancer),
        "publisher counts": publisher_counts(),
    }, kept={
        "titles": titles(),
        "genres of dune": genres_of(shop.dune),
    }, other={
        "get dune": get_book(shop.dune),
        "tor's books": books_of(shop.tor),
        "publishers of dune": publishers_of(shop.dune),
    })


def test_queryset_delete_by_pk(scenario, shop):
    check(scenario, lambda: Book.objects.filter(pk=shop.spqr.pk).delete(), changed={
        "get spqr": get_book(shop.spqr),
        "genres of spqr": genres_of(shop.spqr),
        "books of history": books_of_genre(shop.history),
        "bedside shelf": shelf_books(shop.bedside),
        "count": book_count(),
    }, kept={
        "get dune": get_book(shop.dune),
        "genres of dune (by book_id)": genres_of(shop.dune),
        "publishers of dune": publishers_of(shop.dune),
    }, other={
        "favourite shelf": shelf_books(shop.favourites),
    })


def test_queryset_delete_with_an_arbitrary_filter(scenario, shop):
    def stars(book):
        return read(lambda: Review.objects.filter(book=book).order_by("id")
                    .values_list("stars", flat=True))

    check(scenario, lambda: Review.objects.filter(stars__lt=4).delete(), changed={
        "reviews of hobbit": stars(shop.hobbit),
        "reviews of foundation": stars(shop.foundation),
        "review count": read(lambda: Review.objects.all(), lambda qs: qs.count()),
        "sum of stars": read(lambda: Review.objects.all(),
                              lambda qs: qs.aggregate(n=Sum("stars"))),
    }, kept={
        "get dune": get_book(shop.dune),
        "titles": titles(),
    }, other={
        "reviews of dune": stars(shop.dune),
    })


def test_collector_delete_with_an_arbitrary_filter(scenario, shop):
    """The collector selects the rows, then deletes them by key, cascades first."""
    check(scenario, lambda: Book.objects.filter(author="Herbert").delete(), changed={
        "get dune": get_book(shop.dune),
        "count": book_count(),
        "tor's books": books_of(shop.tor),
        "books of sf": books_of_genre(shop.sf),
        "favourite shelf": shelf_books(shop.favourites),
    }, kept={
        "get foundation": get_book(shop.foundation),
        "neuromancer and hobbit": books_in(shop.neuromancer, shop.hobbit),
    }, other={
        "genres of foundation": genres_of(shop.foundation),
        "publishers of hobbit": publishers_of(shop.hobbit),
    })


def test_write_that_matches_no_row_drops_nothing(scenario, shop):
    def write():
        assert Book.objects.filter(pk=-1).update(title="x") == 0
        assert Book.objects.filter(pk__in=[-1, -2]).update(price=Decimal("1")) == 0
        assert Book.objects.filter(title="no such book").update(title="x") == 0
        assert BookGenre.objects.filter(book_id=-1).update(genre=shop.fantasy) == 0
        assert Review.objects.filter(stars=99).delete()[0] == 0
        assert BookGenre.objects.filter(pk=-1).delete()[0] == 0
        assert Book.objects.filter(pk=-1).delete()[0] == 0
        with connection.cursor() as cursor:
            cursor.execute("UPDATE ormapp_book SET title = %s WHERE id = %s", ["x", -1])
            cursor.execute("DELETE FROM ormapp_bookgenre WHERE genre_id = %s", [-1])

    check(scenario, write, changed={}, kept={
        "get dune": get_book(shop.dune),
        "dune and foundation": books_in(shop.dune, shop.foundation),
        "tor's books": books_of(shop.tor),
        "titles": titles(),
        "prices": prices(),
        "count": book_count(),
        "genres of dune": genres_of(shop.dune),
        "books of sf": books_of_genre(shop.sf),
        "reviews of hobbit": reviews_of(shop.hobbit),
    })


# -- many-to-many ------------------------------------------------------------------

def test_m2m_add(scenario, shop):
    check(scenario, lambda: shop.dune.labels.add(shop.new), changed={
        "labels of dune": labels_of(shop.dune),
        "books labelled new": books_labelled(shop.new.pk),
        "new.books": read(lambda: shop.new.books.order_by("id")),
    }, kept={
        "labels of foundation": labels_of(shop.foundation),
        "books labelled classic": books_labelled(shop.classic.pk),
        "get dune": get_book(shop.dune),
    })


def test_m2m_remove(scenario, shop):
    check(scenario, lambda: shop.dune.labels.remove(shop.award), changed={
        "labels of dune": labels_of(shop.dune),
        "books labelled award": books_labelled(shop.award.pk),
    }, kept={
        "labels of foundation": labels_of(shop.foundation),
        "labels of neuromancer": labels_of(shop.neuromancer),
        "books labelled classic": books_labelled(shop.classic.pk),
        "get dune": get_book(shop.dune),
    })


def test_m2m_set(scenario, shop):
    check(scenario, lambda: shop.dune.labels.set([shop.classic, shop.new]), changed={
        "labels of dune": labels_of(shop.dune),
        "books labelled award": books_labelled(shop.award.pk),
        "books labelled new": books_labelled(shop.new.pk),
    }, kept={
        "labels of foundation": labels_of(shop.foundation),
        "books labelled classic": books_labelled(shop.classic.pk),
        "get dune": get_book(shop.dune),
    })


def test_m2m_clear(scenario, shop):
    check(scenario, shop.dune.labels.clear, changed={
        "labels of dune": labels_of(shop.dune),
        "books labelled award": books_labelled(shop.award.pk),
        "books labelled classic": books_labelled(shop.classic.pk),
    }, kept={
        "labels of foundation": labels_of(shop.foundation),
        "labels of hobbit": labels_of(shop.hobbit),
        "get dune": get_book(shop.dune),
    })


def test_explicit_through_create(scenario, shop):
    check(scenario, lambda: ShelfItem.objects.create(shelf=shop.bedside, book=shop.dune),
          changed={
              "bedside shelf": shelf_books(shop.bedside),
              "shelves of dune": book_shelves(shop.dune),
          }, kept={
              "favourite shelf": shelf_books(shop.favourites),
              "shelves of hobbit": book_shelves(shop.hobbit),
          })


def test_explicit_through_delete(scenario, shop):
    def write():
        ShelfItem.objects.filter(shelf=shop.favourites, book=shop.hobbit).delete()

    check(scenario, write, changed={
        "favourite shelf": shelf_books(shop.favourites),
        "shelves of hobbit": book_shelves(shop.hobbit),
    }, kept={
        "bedside shelf": shelf_books(shop.bedside),
        "shelves of dune": book_shelves(shop.dune),
    })


def test_explicit_through_instance_delete(scenario, shop):
    item = ShelfItem.objects.get(shelf=shop.bedside, book=shop.spqr)
    check(scenario, item.delete, changed={
        "bedside shelf": shelf_books(shop.bedside),
        "shelves of spqr": book_shelves(shop.spqr),
    }, other={
        "favourite shelf": shelf_books(shop.favourites),
    })


def test_explicit_through_row_moved_by_update(scenario, shop):
    item = ShelfItem.objects.get(shelf=shop.favourites, book=shop.hobbit)
    check(scenario, lambda: ShelfItem.objects.filter(pk=item.pk).update(shelf=shop.bedside),
          changed={
              "favourite shelf": shelf_books(shop.favourites),
              "bedside shelf": shelf_books(shop.bedside),
              "shelves of hobbit": book_shelves(shop.hobbit),
          }, kept={
              "get hobbit": get_book(shop.hobbit),
              "shelves of dune": book_shelves(shop.dune),
          })


# -- raw SQL -----------------------------------------------------------------------

def raw(sql: str, params: list[Any] | None = None) -> Callable[[], None]:
    def run() -> None:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
    return run


def test_raw_update_by_pk(scenario, shop):
    check(scenario, raw("UPDATE ormapp_book SET price = %s WHERE id = %s",
                        [Decimal("1.00"), shop.dune.pk]),
          changed={
              "get dune": get_book(shop.dune),
              "prices": prices(),
          }, kept={
              "get foundation": get_book(shop.foundation),
              "count": book_count(),
          }, other={
              "tor's books": books_of(shop.tor),
          })


@pytest.mark.parametrize("sql", [
    # literals, no parameters
    "UPDATE ormapp_book SET title = 'Raw' WHERE author = 'Herbert' OR author = 'Asimov'",
    # upper case names
    "UPDATE ORMAPP_BOOK SET TITLE = 'Raw' WHERE ID IN ({dune}, {foundation})",
    # a row named by arithmetic on the value
    "UPDATE ormapp_book SET title = 'Raw' WHERE id = {foundation} - 1 OR id = {dune} + 1",
    # a range
    "UPDATE ormapp_book SET title = 'Raw' WHERE id <= {foundation}",
    # a comment, then more condition
    "UPDATE ormapp_book SET title = 'Raw' WHERE id = {dune} /* c */ OR id = {foundation}",
    # the rows chosen through another table
    "UPDATE ormapp_book SET title = 'Raw' FROM ormapp_bookgenre WHERE "
    "ormapp_bookgenre.book_id = ormapp_book.id AND ormapp_bookgenre.genre_id = {sf}",
])
def test_raw_sql_with_literals_stays_fresh(scenario, shop, sql):
    """Dune and foundation are written (the sf genre also has neuromancer)."""
    sql = sql.format(dune=shop.dune.pk, foundation=shop.foundation.pk, sf=shop.sf.pk)
    check(scenario, raw(sql), changed={
        "get dune": get_book(shop.dune),
        "get foundation": get_book(shop.foundation),
        "dune and foundation": books_in(shop.dune, shop.foundation),
        "titles": titles(),
    }, other={
        "get hobbit": get_book(shop.hobbit),
        "count": book_count(),
    })


def _dune_genre_row(shop: Any) -> int:
    return BookGenre.objects.get(book=shop.dune).pk


@pytest.mark.parametrize("sql, param", [
    ("UPDATE ormapp_book SET title = %s WHERE id = %s - 1", lambda s: s.foundation.pk),
    ("UPDATE ormapp_book SET title = %s WHERE id = -%s", lambda s: -s.dune.pk),
    ("UPDATE ormapp_book SET title = %s WHERE id = %s * 1 - 1", lambda s: s.foundation.pk),
    ("UPDATE ormapp_book SET title = %s WHERE ID = (%s - 1)", lambda s: s.foundation.pk),
    ("UPDATE ormapp_book SET title = %s WHERE id = abs(%s) - 1", lambda s: s.foundation.pk),
    ("UPDATE ormapp_book SET title = %s WHERE id = %s OR id = 0", lambda s: s.dune.pk),
    ("UPDATE ORMAPP_BOOK SET TITLE = %s WHERE ID = %s", lambda s: s.dune.pk),
    ("UPDATE ormapp_book SET title = %s WHERE id = CAST(%s AS INTEGER) - 1",
     lambda s: s.foundation.pk),
    # (id = %s) IS NOT NULL: every row
    ("UPDATE ormapp_book SET title = %s WHERE id = %s IS NOT NULL", lambda s: s.dune.pk),
    # AND binds tighter than OR: dune, and every book by Asimov
    ("UPDATE ormapp_book SET title = %s WHERE id = %s AND author = 'Herbert' "
     "OR author = 'Asimov'", lambda s: s.dune.pk),
    ("UPDATE ormapp_book SET title = %s WHERE id = %s --\n OR author = 'Asimov'",
     lambda s: s.dune.pk),
    ("UPDATE ormapp_book SET title = %s WHERE id = %s /* */ OR author = 'Asimov'",
     lambda s: s.dune.pk),
    ("UPDATE ormapp_book SET title = %s FROM ormapp_bookgenre WHERE "
     "ormapp_bookgenre.book_id = ormapp_book.id AND ormapp_bookgenre.id = %s", _dune_genre_row),
    ("UPDATE ormapp_book SET title = %s FROM ormapp_bookgenre AS g WHERE "
     "g.book_id = ormapp_book.id AND g.id = %s", _dune_genre_row),
])
def test_raw_sql_with_parameters_stays_fresh(scenario, shop, sql, param):
    """Dune is written (some forms write more rows); in most forms the parameter is
    not dune's key."""
    check(scenario, raw(sql, ["Raw", param(shop)]), changed={
        "get dune": get_book(shop.dune),
        "titles": titles(),
    }, other={
        "get foundation": get_book(shop.foundation),
        "get hobbit": get_book(shop.hobbit),
    })


def test_raw_executemany_stays_fresh(scenario, shop):
    def write():
        with connection.cursor() as cursor:
            cursor.executemany("UPDATE ormapp_book SET price = %s WHERE id = %s",
                               [(Decimal("1.00"), shop.dune.pk),
                                (Decimal("2.00"), shop.foundation.pk)])

    check(scenario, write, changed={
        "get dune": get_book(shop.dune),
        "get foundation": get_book(shop.foundation),
        "prices": prices(),
    }, other={
        "get hobbit": get_book(shop.hobbit),
    })


def test_raw_insert_and_delete_of_through_rows(scenario, shop):
    def write():
        raw("INSERT INTO ormapp_bookgenre (genre_id, book_id) VALUES (%s, %s)",
            [shop.history.pk, shop.dune.pk])()
        raw("DELETE FROM ormapp_bookgenre WHERE book_id = %s AND genre_id = %s",
            [shop.hobbit.pk, shop.fantasy.pk])()

    check(scenario, write, changed={
        "genres of dune": genres_of(shop.dune),
        "books of history": books_of_genre(shop.history),
        "genres of hobbit": genres_of(shop.hobbit),
        "books of fantasy": books_of_genre(shop.fantasy),
    }, kept={
        "genres of foundation": genres_of(shop.foundation),
        "books of sf": books_of_genre(shop.sf),
    })


def test_raw_insert_with_an_expression_stays_fresh(scenario, shop):
    raw_sql = "INSERT INTO ormapp_bookgenre (book_id, genre_id) VALUES (%s + 1, %s)"
    check(scenario, raw(raw_sql, [shop.dune.pk, shop.history.pk]), changed={
        "genres of foundation": genres_of(shop.foundation),
        "books of history": books_of_genre(shop.history),
    }, other={
        "genres of dune": genres_of(shop.dune),
    })


# -- aggregates ----------------------------------------------------------------------

@pytest.mark.parametrize("build", [
    lambda: Book.objects.values("title"),
    lambda: Book.objects.values_list("id"),
    lambda: Book.objects.defer("price"),
    lambda: Book.objects.only("title"),
    lambda: Book.objects.filter(author="Herbert").values("author"),
], ids=["values", "values_list", "defer", "only", "filter-values"])
def test_aggregate_of_a_column_the_queryset_does_not_select(scenario, shop, build):
    """The aggregate reads ``price`` though the queryset's own SELECT does not name it."""
    total = read(build, lambda qs: qs.aggregate(total=Sum("price")))
    check(scenario, lambda: Book.objects.filter(pk=shop.dune.pk).update(price=Decimal("1")),
          changed={"total": total})


def test_aggregate_of_a_filtered_column(scenario, shop):
    """The columns only an aggregate's ``filter`` names."""
    def write():
        shop.dune.title = "Messiah"
        shop.dune.save(update_fields=["title"])

    check(scenario, write, changed={
        "count starting with D": read(lambda: Book.objects.all(), lambda qs: qs.aggregate(
            n=Count("id", filter=Q(title__startswith="D")))),
        "sum over D": read(lambda: Book.objects.values("id"), lambda qs: qs.aggregate(
            total=Coalesce(Sum("price", filter=Q(title__startswith="D")), Decimal(0)))),
    }, kept={
        "count": book_count(),
        "total price": total_price(),
    })


@pytest.mark.parametrize("build", [
    lambda: Book.objects.values("author").distinct(),
    lambda: Book.objects.filter(price__lt=10),
    lambda: Book.objects.alias(p=F("price")).filter(p__lt=10),
    lambda: Book.objects.filter(author="Herbert"),
    lambda: Book.objects.values("author").annotate(n=Count("id")),
    lambda: Book.objects.filter(author="Herbert").order_by().values("id").union(
        Book.objects.filter(price__gt=40).order_by().values("id")),
], ids=["distinct", "filter", "alias", "exact", "group", "union"])
def test_count_follows_the_columns_it_depends_on(scenario, shop, build):
    def write():
        Book.objects.filter(pk=shop.foundation.pk).update(author="Herbert", price=Decimal(50))

    check(scenario, write, changed={"count": read(build, lambda qs: qs.count())})


# -- reads of one table twice --------------------------------------------------------

def test_self_join_and_subqueries_follow_writes_to_other_rows(scenario, shop):
    """Each read pins dune at the top level but also reads foundation's row."""
    def write():
        shop.foundation.title = "Foundation and Empire"
        shop.foundation.price = Decimal("99.00")
        shop.foundation.save(update_fields=["title", "price"])

    check(scenario, write, changed={
        "self join": self_join(shop.dune, "Foundation"),
        "self join pinned twice": read(lambda: Book.objects.filter(
            pk=shop.dune.pk, main_publisher__main_books__pk=shop.foundation.pk)
            .values_list("id", "main_publisher__main_books__title")),
        "subquery": pinned_subquery(shop.dune, shop.foundation),
        "exists": cheaper_exists(shop.dune),
    }, kept={
        "get dune": get_book(shop.dune),
    })


# -- over-tagging --------------------------------------------------------------------

def test_reads_by_a_foreign_key_do_not_depend_on_the_parent_table(scenario, shop):
    """Their SQL never reads ``ormapp_book``: no write to it drops them; the same rows
    with the book selected across the join are dropped."""
    def write():
        shop.dune.title = "Dune Messiah"
        shop.dune.save()
        Book.objects.filter(title__startswith="F").update(title="F")
        with connection.cursor() as cursor:
            cursor.execute("UPDATE ormapp_book SET author = 'Anon'")

    check(scenario, write, changed={
        "genres of dune, book joined": genres_with_book(shop.dune),
        "dune with publisher": book_with_publisher(shop.dune),
    }, kept={
        "genres of dune": genres_of(shop.dune),
        "genres of dune by object": read(lambda: BookGenre.objects.filter(book=shop.dune)),
        "dune's genres manager": read(lambda: shop.dune.genres.order_by("id")),
        "reviews of dune": reviews_of(shop.dune),
        "publishers of dune": publishers_of(shop.dune),
        "book ids of sf": read(lambda: BookGenre.objects.filter(genre=shop.sf)
                               .values_list("book_id", flat=True).order_by("book_id")),
    })


def test_reads_by_a_foreign_key_to_a_publisher(scenario, shop):
    def write():
        shop.tor.name = "Tor Books"
        shop.tor.save()

    check(scenario, write, changed={
        "tor's books with publisher": read(lambda: Book.objects.select_related(
            "main_publisher").filter(main_publisher_id=shop.tor.pk).order_by("id")),
        "publishers of dune": publishers_of(shop.dune),
    }, kept={
        "tor's books": books_of(shop.tor),
        "tor.main_books": main_books(shop.tor),
        "get dune": get_book(shop.dune),
    })


# -- transactions --------------------------------------------------------------------

def test_rolled_back_write_drops_nothing(scenario, shop):
    def write():
        with pytest.raises(Rollback), transaction.atomic():
            shop.dune.title = "rolled back"
            shop.dune.save(update_fields=["title"])
            Book.objects.filter(pk=shop.foundation.pk).update(price=Decimal("1"))
            BookGenre.objects.create(book=shop.dune, genre=shop.history)
            shop.hobbit.labels.clear()
            inside = Book.objects.cached().get(pk=shop.dune.pk)
            assert inside.title == "rolled back"
            raise Rollback
        shop.dune.refresh_from_db()

    check(scenario, write, changed={}, kept={
        "get dune": get_book(shop.dune),
        "get foundation": get_book(shop.foundation),
        "titles": titles(),
        "prices": prices(),
        "genres of dune": genres_of(shop.dune),
        "books of history": books_of_genre(shop.history),
        "labels of hobbit": labels_of(shop.hobbit),
        "count": book_count(),
    })


def test_committed_transaction_is_granular_after_commit(scenario, shop):
    def write():
        with transaction.atomic():
            Book.objects.filter(pk=shop.dune.pk).update(price=Decimal("1"))
            BookGenre.objects.create(book=shop.dune, genre=shop.history)
            inside = BookGenre.objects.cached().filter(book=shop.dune).order_by("id")
            assert [g.genre_id for g in inside] == [shop.sf.pk, shop.history.pk]

    check(scenario, write, changed={
        "get dune": get_book(shop.dune),
        "prices": prices(),
        "genres of dune": genres_of(shop.dune),
        "books of history": books_of_genre(shop.history),
        "books of sf (dune's price)": books_of_genre(shop.sf),
    }, kept={
        "get foundation": get_book(shop.foundation),
        "titles": titles(),
        "genres of foundation": genres_of(shop.foundation),
        "rows of sf": read(lambda: BookGenre.objects.filter(genre=shop.sf).order_by("id")),
    })


def test_savepoint_rollback_inside_a_committed_transaction(scenario, shop):
    def write():
        with transaction.atomic():
            Book.objects.filter(pk=shop.foundation.pk).update(price=Decimal("1"))
            with pytest.raises(Rollback), transaction.atomic():
                Book.objects.filter(pk=shop.dune.pk).update(price=Decimal("2"))
                shop.neuromancer.main_publisher = shop.tor
                shop.neuromancer.save()
                raise Rollback
        shop.neuromancer.refresh_from_db()

    check(scenario, write, changed={
        "get foundation": get_book(shop.foundation),
        "prices": prices(),
    }, kept={
        "get hobbit": get_book(shop.hobbit),
        "count": book_count(),
    }, other={
        "get dune": get_book(shop.dune),
        "get neuromancer": get_book(shop.neuromancer),
        "tor's books": books_of(shop.tor),
        "ace's books": books_of(shop.ace),
    })
