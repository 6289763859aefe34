"""A transaction's invalidations run right after its COMMIT, ahead of the application's
``on_commit`` callbacks and whatever they do, and an invalidation asked for inside a
transaction is made again after its COMMIT (docs/consistency.md, "Transactions" and
"Explicit invalidations inside a transaction").

The scenarios run on both databases and both backends; ``test_commit_processes.py``
runs the same races between real processes on PostgreSQL and Redis. Every assumption
``relaycache/orm/patches.py`` makes about Django is exercised here, so running this
module on Django 5.2 and 6.x checks both.
"""

from __future__ import annotations

import contextlib

import pytest
from django.db import connection, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper

from relaycache import cache, invalidate
from relaycache.orm import patches
from tests.orm.support import ORM_SCENARIO, in_thread, read
from tests.ormapp.models import Book, Label, Review

pytestmark = ORM_SCENARIO


class QueueDown(Exception):
    pass


def titles():
    return read(lambda: Book.objects.values_list("title", flat=True).order_by("id"))


def review_count():
    return read(lambda: Review.objects.all(), lambda qs: qs.count())


# -- the order of invalidations and callbacks ----------------------------------------

@pytest.mark.parametrize("robust", [False, True], ids=["plain", "robust"])
def test_a_failing_callback_registered_first_does_not_stop_the_invalidation(
        scenario, shop, robust):
    """A task queue that is down: its callback, registered before the write, raises.
    Django stops running callbacks at a plain one that raises; the invalidation has
    already run."""
    query = titles()
    scenario.warm(query)

    def enqueue():
        raise QueueDown

    raises = pytest.raises(QueueDown) if not robust else contextlib.nullcontext()
    with raises, transaction.atomic():
        transaction.on_commit(enqueue, robust=robust)
        Book.objects.filter(pk=shop.dune.pk).update(title="committed")
    assert scenario.fresh(query)[0] == "committed"


def test_a_callback_reads_every_table_the_transaction_wrote_fresh(scenario, shop):
    """A callback registered between writes to two tables reads both after their
    invalidation (it would read the second one stale if its invalidation came later)."""
    query, counts = titles(), review_count()
    scenario.warm(query)
    before = scenario.warm(counts)
    seen = {}

    def callback():
        seen["titles"] = scenario.cached(query)
        seen["reviews"] = scenario.cached(counts)

    with transaction.atomic():
        Book.objects.filter(pk=shop.dune.pk).update(title="committed")
        transaction.on_commit(callback)
        Review.objects.create(book=shop.dune, stars=5)
    assert seen["titles"][0] == "committed"
    assert seen["reviews"] == before + 1 == scenario.truth(counts)


def test_invalidations_run_after_the_commit_before_the_block_returns(scenario, shop,
                                                                      orm_cache):
    """Once per savepoint level (however many writes), not before the COMMIT, and not
    again from Django's own list."""
    query = titles()
    scenario.warm(query)
    invalidations = orm_cache.stats.invalidations
    with transaction.atomic():
        Book.objects.filter(pk=shop.dune.pk).update(title="first")
        Book.objects.filter(pk=shop.dune.pk).update(title="first")
        with transaction.atomic():
            Book.objects.filter(pk=shop.foundation.pk).update(title="second")
            Book.objects.filter(pk=shop.foundation.pk).update(title="second")
        assert orm_cache.stats.invalidations == invalidations
        assert len(list(patches.pending(connection))) == 2  # one per level
    assert orm_cache.stats.invalidations == invalidations + 2
    assert connection.run_on_commit == []
    assert scenario.fresh(query)[:2] == ["first", "second"]


# -- explicit invalidations inside a transaction --------------------------------------

def test_an_invalidation_inside_atomic_is_made_again_after_the_commit(orm_cache):
    """An invalidation inside ``atomic``; before the COMMIT a reader caches the data as
    it still is (the old, committed rows) under the new stamp. The data changes at the
    COMMIT: the entry must not outlive it. The data is a dict here, since SQLite locks
    a written table against other connections; test_commit_processes.py runs the same
    with a reader process on PostgreSQL."""
    committed = {"name": "old"}

    @cache(ttl=60, tags=["label:1"])
    def label_name():
        return committed["name"]

    assert label_name() == "old"
    with transaction.atomic():
        invalidate(["label:1"])
        assert in_thread(label_name) == "old"  # cached again, under the new stamp
        committed["name"] = "new"  # what the COMMIT makes visible
    assert label_name() == "new"
    assert label_name() == "new"


def test_an_invalidation_in_a_rolled_back_transaction_is_not_repeated(shop, orm_cache):
    """A rollback drops the repeat (the data did not change); a committed transaction
    repeats the same tags once, however often it asked."""
    invalidations = orm_cache.stats.invalidations
    with pytest.raises(QueueDown), transaction.atomic():
        invalidate(["label:x"])
        raise QueueDown
    assert orm_cache.stats.invalidations == invalidations + 1
    with transaction.atomic():
        invalidate(["label:x"])
        with transaction.atomic():
            invalidate(["label:x"])  # covered by the repeat already registered
    assert orm_cache.stats.invalidations == invalidations + 4


def test_an_invalidation_outside_a_transaction_is_made_once(shop, orm_cache):
    invalidations = orm_cache.stats.invalidations
    invalidate(["label:x"])
    assert orm_cache.stats.invalidations == invalidations + 1
    assert connection.run_on_commit == []


# -- what patches.py assumes of Django ---------------------------------------------------

def test_django_methods_are_wrapped_once():
    for owner, name in [(BaseDatabaseWrapper, "commit"),
                        (BaseDatabaseWrapper, "set_autocommit"), (CursorWrapper, "callproc")]:
        method = getattr(owner, name)
        assert getattr(method, "_relaycache_wrapped", False), (owner, name)
        assert not getattr(method.__wrapped__, "_relaycache_wrapped", False)
    patches.install(on_callproc=lambda connection: None)
    assert not getattr(BaseDatabaseWrapper.commit.__wrapped__, "_relaycache_wrapped", False)


def test_capture_on_commit_callbacks_sees_ours(django_capture_on_commit_callbacks):
    """Tests that never commit (Django's ``TestCase``) capture RelayCache's callbacks
    among the application's, in order, and can run them."""
    ran = []
    with pytest.raises(QueueDown), transaction.atomic():
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            transaction.on_commit(lambda: ran.append("app"))
            Label.objects.create(name="captured")
        raise QueueDown
    assert len(callbacks) == 2 and ran == ["app"]
    assert isinstance(callbacks[1], patches.AfterCommit)
