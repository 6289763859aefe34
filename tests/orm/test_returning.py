"""Writes whose statement does not say its rows' foreign keys (``instance.delete()``,
``save(update_fields=...)``) learn them atomically, from a ``RETURNING`` clause added to
the statement, so they drop only the reads pinned to those values (PostgreSQL and
SQLite; elsewhere, every value of the key: docs/consistency.md)."""

from __future__ import annotations

import pytest

from relaycache.orm import invalidation
from tests.orm.support import ORM_SCENARIO, read
from tests.ormapp.models import Book, BookGenre

pytestmark = ORM_SCENARIO


def genres_of(book):
    return read(lambda: BookGenre.objects.filter(book=book).order_by("id"))


def books_of(publisher):
    return read(lambda: Book.objects.filter(main_publisher=publisher).order_by("id"))


def test_instance_delete_drops_only_the_reads_of_its_foreign_key_values(scenario, shop):
    dune, hobbit = genres_of(shop.dune), genres_of(shop.hobbit)
    scenario.warm(dune)
    scenario.warm(hobbit)
    BookGenre.objects.filter(book=shop.dune).first().delete()
    scenario.fresh(dune)
    scenario.hit(hobbit)


def test_save_with_update_fields_keeps_reads_of_other_foreign_key_values(scenario, shop):
    tor, ace = books_of(shop.tor), books_of(shop.ace)
    scenario.warm(tor)
    scenario.warm(ace)
    shop.dune.title = "Dune Messiah"
    shop.dune.save(update_fields=["title"])
    assert "Dune Messiah" in [b.title for b in scenario.fresh(tor)]
    scenario.hit(ace)


def test_moving_a_row_between_foreign_key_values_drops_both(scenario, shop):
    tor, ace = books_of(shop.tor), books_of(shop.ace)
    scenario.warm(tor)
    scenario.warm(ace)
    shop.dune.main_publisher = shop.ace
    shop.dune.save(update_fields=["main_publisher"])
    scenario.fresh(tor)
    scenario.fresh(ace)


def test_the_statement_still_reports_its_row_count(shop):
    assert Book.objects.filter(pk=shop.dune.pk).update(title="x") == 1
    assert Book.objects.filter(pk=-1).update(title="x") == 0
    assert BookGenre.objects.filter(book=shop.dune).delete()[0] >= 1


def test_without_returning_every_value_of_the_key_is_dropped(scenario, shop, monkeypatch):
    """The control: the granularity above comes from the RETURNING clause."""
    monkeypatch.setattr(invalidation, "_RETURNING_VENDORS", frozenset())
    hobbit = genres_of(shop.hobbit)
    scenario.warm(hobbit)
    BookGenre.objects.filter(book=shop.dune).first().delete()
    with pytest.raises(pytest.fail.Exception, match="queries"):
        scenario.hit(hobbit)  # it queries: the read was dropped
