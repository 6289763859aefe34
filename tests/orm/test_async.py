"""The async queryset API goes through the cache like the sync one.

``async_to_sync`` runs the ORM's sync parts on this test's thread, so the query
counts below see them; ``asyncio.run`` runs them on asgiref's worker thread, whose
database connection is checked through the backend's stats instead.
"""

from __future__ import annotations

import asyncio

from asgiref.sync import async_to_sync, sync_to_async
from django.db import connections
from django.db.models import Count, Max

from tests.orm.support import ORM_SCENARIO, read, snap
from tests.ormapp.models import Book, Review

pytestmark = ORM_SCENARIO


def run(coroutine_function):
    """An ``evaluate`` for the scenario helpers: await ``coroutine_function(qs)``."""

    async def call(qs):
        return await coroutine_function(qs)

    return async_to_sync(call)


async def collect(qs):
    return [item async for item in qs]


def test_aget(scenario, shop):
    scenario.check_write(
        lambda: Book.objects.filter(pk=shop.dune.pk).update(title="Dune (async)"),
        read(lambda: Book.objects.select_related("main_publisher"),
             run(lambda qs: qs.aget(pk=shop.dune.pk))),
    )


def test_acount_and_aexists(scenario, shop):
    scenario.check_write(
        lambda: Review.objects.filter(stars=5).delete(),
        read(lambda: Review.objects.filter(stars=5), run(lambda qs: qs.acount())),
        read(lambda: Review.objects.filter(stars=5), run(lambda qs: qs.aexists())),
    )


def test_afirst_alast_and_aaggregate(scenario, shop):
    scenario.check_write(
        lambda: Book.objects.create(title="AAA", author="A", isbn="40",
                                    publication_date=shop.dune.publication_date, price=99),
        read(lambda: Book.objects.order_by("title"), run(lambda qs: qs.afirst())),
        read(lambda: Book.objects.order_by("price"), run(lambda qs: qs.alast())),
        read(lambda: Book.objects.all(), run(lambda qs: qs.aaggregate(Max("price")))),
    )


def test_async_for(scenario, shop):
    scenario.check_write(
        lambda: shop.spqr.labels.add(shop.new),
        read(lambda: Book.objects.annotate(n=Count("labels")).order_by("id"), run(collect)),
        read(lambda: Book.objects.prefetch_related("labels").order_by("id"),
             run(lambda qs: _with_labels(qs))),
        read(lambda: Book.objects.values_list("title", flat=True).filter(labels__name="new"),
             run(collect)),
    )


async def _with_labels(qs):
    return [(b, list(b.labels.all())) async for b in qs]


def test_ain_bulk_and_aget_missing(scenario, shop):
    async def missing(qs):
        try:
            return await qs.aget(isbn="404")
        except Book.DoesNotExist:
            return "missing"

    scenario.check_write(
        lambda: Book.objects.create(title="Found", author="F", isbn="404",
                                    publication_date=shop.dune.publication_date),
        read(lambda: Book.objects.all(), run(missing)),
        read(lambda: Book.objects.all(), run(lambda qs: qs.ain_bulk(["404", "1"],
                                                                    field_name="isbn"))),
    )


def test_asyncio_run_on_another_thread(shop, orm_cache):
    """Under ``asyncio.run`` the queries run on asgiref's thread and its connection;
    writes from this thread still invalidate what that connection cached."""
    async def titles():
        result = [b.title async for b in Book.objects.cached().order_by("id")]
        return result, await Book.objects.cached().acount()

    async def close():
        await sync_to_async(connections.close_all)()

    try:
        first = asyncio.run(titles())
        hits = orm_cache.stats.hits
        assert asyncio.run(titles()) == first
        assert orm_cache.stats.hits == hits + 2
        Book.objects.filter(pk=shop.dune.pk).update(title="Dune (threads)")
        Book.objects.create(title="Z", author="Z", isbn="50",
                            publication_date=shop.dune.publication_date)
        after = asyncio.run(titles())
        truth = ([b.title for b in Book.objects.order_by("id")], Book.objects.count())
        assert snap(after) == snap(truth) and after != first
    finally:
        asyncio.run(close())


def test_async_writes_invalidate(scenario, shop):
    async def writes():
        await Book.objects.filter(pk=shop.spqr.pk).aupdate(price=1)
        await Review.objects.acreate(book=shop.spqr, stars=2)
        await Review.objects.filter(stars=5).adelete()
        await shop.spqr.labels.aadd(shop.new)

    scenario.check_write(
        async_to_sync(writes),
        read(lambda: Book.objects.values_list("price", flat=True).order_by("id"),
             run(collect)),
        read(lambda: Review.objects.order_by("id"), run(collect)),
        read(lambda: Book.objects.filter(labels=shop.new), run(lambda qs: qs.acount())),
    )
