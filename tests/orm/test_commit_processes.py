"""Invalidation at the COMMIT, between real processes on PostgreSQL and a real Redis:
a reader process caches the old row between another process's invalidation and its
COMMIT (docs/consistency.md, "Transactions" and "Explicit invalidations inside a
transaction"). Each step of each process is driven in turn (:mod:`tests.orm.step_worker`),
so the interleaving that loses an invalidation happens every time.

Runs only with PostgreSQL and a real Redis (:mod:`tests.orm.stale_support`).
"""

from __future__ import annotations

import pytest

from tests.orm.stale_support import REAL_SERVICES, REDIS_URL, worker_databases
from tests.orm.step_worker import Workers
from tests.ormapp.models import Label

pytestmark = [*REAL_SERVICES,
              pytest.mark.django_db(transaction=True, available_apps=["tests.ormapp"])]


@pytest.fixture
def workers():
    started = Workers(REDIS_URL)
    yield started
    started.close()


@pytest.mark.parametrize("via", ["save", "update"])
def test_a_reader_process_caching_before_the_commit_is_invalidated(workers, via):
    """Writer: ``atomic``, then a write whose invalidation is explicit (the
    ``post_save`` receiver of a ``save()`` calls ``invalidate()``) or automatic
    (``update()``). Reader, between that and the COMMIT: misses and caches the
    committed, old row. After the COMMIT the reader sees the new row."""
    pk = Label.objects.create(name="old").pk
    writer, reader = workers.start(worker_databases()), workers.start(worker_databases())
    read_step = reader.label_name if via == "save" else reader.cached_name
    assert read_step(pk=pk) == "old"
    writer.begin()
    if via == "save":
        writer.save(pk=pk, name="new")
    else:
        writer.update(pk=pk, name="new")
    assert read_step(pk=pk) == "old"  # not committed yet
    stores = reader.stats()["stores"]
    writer.commit()
    assert read_step(pk=pk) == "new"
    assert reader.stats()["stores"] == stores + 1


def test_a_manual_transaction_is_invalidated_at_its_commit(workers):
    """``set_autocommit(False)``, a write, a reader caching the old row, ``commit()``."""
    pk = Label.objects.create(name="old").pk
    writer, reader = workers.start(worker_databases()), workers.start(worker_databases())
    assert reader.cached_name(pk=pk) == "old"
    writer.set_autocommit(value=False)
    writer.update(pk=pk, name="new")
    assert writer.cached_name(pk=pk) == "new"  # its own write
    assert reader.cached_name(pk=pk) == "old"  # not committed yet
    writer.manual_commit()
    assert reader.cached_name(pk=pk) == "new"
    writer.set_autocommit(value=True)


def test_nothing_read_in_a_rolled_back_manual_transaction_reaches_other_processes(workers):
    """The issue's case: ``update()`` in a manual transaction, a cached read of the row
    on the same connection, ``rollback()``: no process may then read the value that was
    never committed."""
    pk = Label.objects.create(name="committed").pk
    writer, reader = workers.start(worker_databases()), workers.start(worker_databases())
    writer.set_autocommit(value=False)
    writer.update(pk=pk, name="999")
    assert writer.cached_name(pk=pk) == "999"
    writer.manual_rollback()
    writer.set_autocommit(value=True)
    assert reader.cached_name(pk=pk) == "committed"
    assert writer.cached_name(pk=pk) == "committed"
