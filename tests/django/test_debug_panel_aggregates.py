"""The debug-toolbar panel lists cached ``count()`` and ``aggregate()`` calls, which
are cached above the SQL compiler, as well as row queries."""

import datetime as dt

import pytest
from django.db.models import Max, Sum

from relaycache import InMemoryCache, set_default_backend
from relaycache.debug_panel import RelayCachePanel
from tests.django.test_debug_panel import _Toolbar
from tests.ormapp.models import Book


@pytest.mark.django_db(transaction=True)
def test_panel_lists_count_and_aggregate_hits_and_misses():
    set_default_backend(InMemoryCache())
    Book.objects.create(title="Dune", author="Herbert", isbn="1", price=10,
                        publication_date=dt.date(1965, 8, 1))
    panel = RelayCachePanel(_Toolbar(), lambda request: None)
    panel.enable_instrumentation()
    try:
        for _ in range(2):
            assert Book.objects.cached().filter(author="Herbert").count() == 1
            assert Book.objects.cached().aggregate(Sum("price"), Max("title")) == {
                "price__sum": 10, "title__max": "Dune"}
            # An aggregate that joins: keyed by the annotated query.
            assert Book.objects.cached().aggregate(Max("reviews__stars")) == {
                "reviews__stars__max": None}
    finally:
        panel.disable_instrumentation()
    panel.generate_stats(None, None)

    events = panel.get_stats()["events"]
    assert [e["kind"] for e in events] == ["miss"] * 3 + ["hit"] * 3
    count, aggregate, joined = events[:3]
    assert count["sql"].startswith("count() of SELECT") and "ormapp_book" in count["sql"]
    assert "ormapp_book" in count["detail"]
    assert aggregate["sql"].startswith("aggregate() of SELECT")
    assert "ormapp_review" in joined["sql"] and "ormapp_review" in joined["detail"]
    assert [e["sql"] for e in events[3:]] == [e["sql"] for e in events[:3]]
    assert panel.nav_subtitle == "3 hits, 3 misses"
