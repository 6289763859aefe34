"""Transactions: read-your-own-writes inside ``atomic`` and with autocommit off,
invalidation at the commit, nothing to undo at a rollback."""

from __future__ import annotations

import contextlib

import pytest
from django.db import IntegrityError, ProgrammingError, connection, transaction
from django.db.models import Count

from tests.orm.support import ORM_SCENARIO, in_thread, read, snap
from tests.ormapp.models import Book, Genre, Label, Publisher, Review

pytestmark = ORM_SCENARIO

DIRTY = "a table it reads was written in this transaction"


class Rollback(Exception):
    pass


def book_titles():
    return read(lambda: Book.objects.values_list("title", flat=True).order_by("id"))


def review_count():
    return read(lambda: Review.objects.all(), lambda qs: qs.count())


def test_read_your_own_writes_inside_atomic(scenario, shop, orm_cache):
    titles = book_titles()
    before = scenario.warm(titles)
    with transaction.atomic():
        Book.objects.filter(pk=shop.dune.pk).update(title="Dune (revised)")
        info = Book.objects.cached().values_list("title", flat=True).cache_info()
        assert (info.cached, info.reason) == (False, DIRTY)
        bypassed = orm_cache.stats.bypassed
        inside = scenario.fresh(titles, rehit=False)
        assert orm_cache.stats.bypassed > bypassed
        assert "Dune (revised)" in inside and snap(inside) != snap(before)
        # a joined read of the written table bypasses too
        joined = scenario.fresh(read(lambda: Review.objects.filter(book__title__contains="revised")
                                     .order_by("id")), rehit=False)
        assert len(joined) == 2
        # ...and so does a read naming the table only in a subquery
        sub = scenario.fresh(read(lambda: Publisher.objects.filter(
            main_books__in=Book.objects.filter(title__contains="revised"))), rehit=False)
        assert [p.name for p in sub] == ["Tor"]
    scenario.fresh(titles)


def test_commit_makes_new_data_visible(scenario, shop):
    titles, counts = book_titles(), review_count()

    def write():
        with transaction.atomic():
            Book.objects.filter(pk=shop.spqr.pk).update(title="SPQR (2nd ed.)")
            Review.objects.create(book=shop.spqr, stars=4)
            Review.objects.create(book=shop.spqr, stars=3)

    scenario.check_write(write, titles, counts)


def test_commit_is_visible_to_other_threads(scenario, shop):
    query = read(lambda: Label.objects.order_by("id").values_list("name", flat=True))
    scenario.warm(query)

    def other_thread_read():
        return list(Label.objects.cached().order_by("id").values_list("name", flat=True))

    with transaction.atomic():
        Label.objects.create(name="committed")
    assert in_thread(other_thread_read) == ["classic", "award", "new", "committed"]
    scenario.fresh(query)


def test_rollback_leaves_cache_correct(scenario, shop):
    titles, counts = book_titles(), review_count()
    before = [scenario.warm(titles), scenario.warm(counts)]
    with pytest.raises(Rollback), transaction.atomic():
        Book.objects.filter(pk=shop.dune.pk).update(title="rolled back")
        Review.objects.all().delete()
        raise Rollback
    after = [scenario.hit(titles), scenario.hit(counts)]
    assert snap(after) == snap(before)


def test_rollback_then_commit_invalidates(scenario, shop):
    """A rolled-back transaction, then a committed one writing the same table, with no
    cached read in between: the commit must invalidate."""
    titles = book_titles()
    before = scenario.warm(titles)
    with pytest.raises(Rollback), transaction.atomic():
        Book.objects.filter(pk=shop.dune.pk).update(title="rolled back")
        raise Rollback
    with transaction.atomic():
        Book.objects.filter(pk=shop.dune.pk).update(title="committed")
    after = scenario.fresh(titles)
    assert after[0] == "committed" and snap(after) != snap(before)


def test_failed_bulk_create_then_bulk_create(scenario, shop):
    """Django's own atomic blocks count too: a ``bulk_create`` that fails on a unique
    constraint (rolled back), then one that succeeds."""
    slugs = read(lambda: Genre.objects.order_by("slug").values_list("slug", flat=True))
    scenario.warm(slugs)
    with pytest.raises(IntegrityError):
        Genre.objects.bulk_create([Genre(name="dup", slug="sf")])
    Genre.objects.bulk_create([Genre(name="Poetry", slug="poetry")])
    assert "poetry" in scenario.fresh(slugs)


def test_second_transaction_after_a_read_in_another_thread(scenario, shop):
    """Two committed transactions on one connection write the same table; between
    them another thread caches the state the first one committed. The second commit
    must invalidate that entry."""
    titles = book_titles()
    scenario.warm(titles)
    with transaction.atomic():
        Book.objects.filter(pk=shop.dune.pk).update(title="first")

    def cache_in_other_thread():
        return list(Book.objects.cached().values_list("title", flat=True).order_by("id"))

    assert in_thread(cache_in_other_thread)[0] == "first"
    with transaction.atomic():
        Book.objects.filter(pk=shop.dune.pk).update(title="second")
    assert scenario.fresh(titles)[0] == "second"


def test_savepoint_rollback(scenario, shop):
    titles, counts = book_titles(), review_count()
    prices = read(lambda: Book.objects.values_list("price", flat=True).order_by("id"))
    before = [scenario.warm(titles), scenario.warm(counts), scenario.warm(prices)]
    with transaction.atomic():
        Book.objects.filter(pk=shop.hobbit.pk).update(title="There and Back Again")
        with pytest.raises(Rollback), transaction.atomic():
            Book.objects.filter(pk=shop.hobbit.pk).update(price=0)
            Review.objects.create(book=shop.hobbit, stars=1)
            raise Rollback
        inside = scenario.fresh(prices, rehit=False)
        assert snap(inside) == snap(before[2])
    after = [scenario.fresh(titles), scenario.fresh(counts), scenario.fresh(prices)]
    assert after[0][3] == "There and Back Again"
    assert snap(after[1:]) == snap(before[1:])


def test_outer_rollback_after_inner_commit(scenario, shop):
    titles, counts = book_titles(), review_count()
    before = [scenario.warm(titles), scenario.warm(counts)]
    with pytest.raises(Rollback), transaction.atomic():
        with transaction.atomic():
            Book.objects.update(title="inner")
            Review.objects.create(book=shop.dune, stars=1)
        raise Rollback
    assert snap([scenario.hit(titles), scenario.hit(counts)]) == snap(before)
    scenario.check_write(lambda: Review.objects.create(book=shop.dune, stars=1), counts)


def test_savepoint_rollback_of_the_only_write(scenario, shop):
    counts = review_count()
    before = scenario.warm(counts)
    with transaction.atomic():
        with pytest.raises(Rollback), transaction.atomic():
            Review.objects.all().delete()
            raise Rollback
        Label.objects.create(name="unrelated")
    assert scenario.fresh(counts) == before


def test_nested_atomic_commit(scenario, shop):
    titles = book_titles()
    labels = read(lambda: Label.objects.annotate(n=Count("books")).order_by("id"))
    before = [scenario.warm(titles), scenario.warm(labels)]
    with transaction.atomic():
        with transaction.atomic():
            Book.objects.filter(pk=shop.spqr.pk).update(title="inner")
            with transaction.atomic():
                shop.spqr.labels.add(shop.new)
        # the inner blocks are done, the transaction is not: still dirty
        assert Book.objects.cached().cache_info().reason == DIRTY
        assert scenario.fresh(titles, rehit=False)[4] == "inner"

        def other_thread():
            return list(Book.objects.cached().values_list("title", flat=True)
                        .order_by("id"))

        assert snap(in_thread(other_thread)) == snap(before[0])  # not committed yet
    after = [scenario.fresh(titles), scenario.fresh(labels)]
    assert snap(after) != snap(before)


def test_clean_tables_stay_cached_inside_atomic(scenario, shop):
    """Reads of tables the transaction did not write are still served from the cache."""
    genres = read(lambda: Genre.objects.order_by("slug"))
    scenario.warm(genres)
    with transaction.atomic():
        Review.objects.create(book=shop.dune, stars=1)
        scenario.hit(genres)
        info = Genre.objects.cached().cache_info()
        assert info.cached and info.reason is None


def test_no_stale_set_when_a_write_commits_during_a_miss(scenario, shop, orm_cache,
                                                         monkeypatch):
    """A reader misses and reads the database; before it stores, another connection
    commits a write (and invalidates). The reader's old rows must not be served."""
    labels = read(lambda: Label.objects.order_by("id").values_list("name", flat=True))
    store = orm_cache.store_if_current
    writes = []

    def store_after_a_concurrent_write(*args):
        if not writes:
            writes.append(in_thread(lambda: Label.objects.create(name="concurrent")))
        return store(*args)

    monkeypatch.setattr(orm_cache, "store_if_current", store_after_a_concurrent_write)
    rejected = orm_cache.stats.stores_rejected
    old = scenario.cached(labels)
    assert writes and "concurrent" not in old  # read before the write committed
    assert orm_cache.stats.stores_rejected == rejected + 1
    monkeypatch.setattr(orm_cache, "store_if_current", store)
    assert scenario.fresh(labels)[-1] == "concurrent"


# -- transactions managed by hand (autocommit off) -----------------------------------------

@contextlib.contextmanager
def autocommit_off():
    """``set_autocommit(False)`` for the block; rolled back and restored if left open."""
    transaction.set_autocommit(False)
    try:
        yield
    finally:
        if not transaction.get_autocommit():
            transaction.rollback()
            transaction.set_autocommit(True)


def test_manual_transaction_reads_its_writes_and_stores_nothing(scenario, shop, orm_cache):
    """The issue's case: a cached read after ``update()`` in a manual transaction, then
    ``rollback()``: the value that was never committed must not be served."""
    titles = book_titles()
    before = scenario.warm(titles)
    genres = read(lambda: Genre.objects.order_by("slug"))
    scenario.warm(genres)
    with autocommit_off():
        Book.objects.filter(pk=shop.dune.pk).update(title="999")
        info = Book.objects.cached().values_list("title", flat=True).cache_info()
        assert (info.cached, info.reason) == (False, DIRTY)
        assert scenario.cached(titles)[0] == "999"
        scenario.hit(genres)  # a table it did not write is still served...
        assert Genre.objects.cached().cache_info().store is False  # ...nothing is stored
        stores = orm_cache.stats.stores
        assert scenario.cached(read(lambda: Genre.objects.filter(slug="sf")))
        assert orm_cache.stats.stores == stores
        transaction.rollback()
        transaction.set_autocommit(True)
    assert snap(scenario.fresh(titles)) == snap(before)


def test_manual_commit_invalidates_again(scenario, shop, orm_cache):
    """A write is invalidated when it runs and again right after ``commit()``: a reader
    may have cached the old rows in between (test_commit_processes.py has one)."""
    titles = book_titles()
    scenario.warm(titles)
    with autocommit_off():
        Book.objects.filter(pk=shop.dune.pk).update(title="first")
        Book.objects.filter(pk=shop.spqr.pk).update(title="second")
        invalidations = orm_cache.stats.invalidations
        transaction.commit()
        assert orm_cache.stats.invalidations == invalidations + 1
        Review.objects.create(book=shop.dune, stars=1)  # a new transaction, rolled back
        transaction.rollback()
        transaction.set_autocommit(True)
    assert orm_cache.stats.invalidations == invalidations + 2  # at the write only
    after = scenario.fresh(titles)
    assert (after[0], after[4]) == ("first", "second")


def test_atomic_inside_a_manual_transaction(scenario, shop):
    """``atomic`` with autocommit off commits nothing when it exits: its writes stay
    this connection's until ``commit()``."""
    titles = book_titles()
    scenario.warm(titles)
    with autocommit_off():
        with transaction.atomic():
            Book.objects.filter(pk=shop.dune.pk).update(title="inside")
            assert Genre.objects.cached().cache_info().store is False
        assert Book.objects.cached().cache_info().reason == DIRTY
        assert scenario.cached(titles)[0] == "inside"
        transaction.commit()
        transaction.set_autocommit(True)
    assert scenario.fresh(titles)[0] == "inside"


def test_autocommit_turned_back_on_with_a_transaction_open(scenario, shop, orm_cache):
    """SQLite commits it (no ``commit()`` call): the writes are invalidated then.
    psycopg refuses (Django requires ``commit()`` or ``rollback()`` first)."""
    titles = book_titles()
    scenario.warm(titles)
    with autocommit_off():
        Book.objects.filter(pk=shop.dune.pk).update(title="implicit")
        invalidations = orm_cache.stats.invalidations
        if connection.vendor != "sqlite":
            with pytest.raises(ProgrammingError):
                transaction.set_autocommit(True)
            return
        transaction.set_autocommit(True)
    assert orm_cache.stats.invalidations == invalidations + 1
    assert scenario.fresh(titles)[0] == "implicit"
