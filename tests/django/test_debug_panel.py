"""The django-debug-toolbar panel lists this request's cached queries."""

import datetime as dt

import pytest
from django.test import override_settings

from relaycache import InMemoryCache, invalidate, set_default_backend
from relaycache.debug_panel import RelayCachePanel
from tests.ormapp.models import Book

TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]


class _Store:
    def save_panel(self, *args):
        pass


class _Toolbar:
    """What a panel needs of the toolbar: a stats dict and a store."""

    def __init__(self):
        self.stats = {}
        self.store = _Store()
        self.request_id = "r1"


@pytest.mark.django_db(transaction=True)
def test_panel_lists_hits_misses_uncacheable_queries_and_invalidations():
    backend = InMemoryCache()
    set_default_backend(backend)
    Book.objects.create(title="Dune", author="Herbert", isbn="1",
                        publication_date=dt.date(1965, 8, 1))
    panel = RelayCachePanel(_Toolbar(), lambda request: None)
    panel.enable_instrumentation()
    try:
        list(Book.objects.cached().order_by("title"))  # miss
        list(Book.objects.cached().order_by("title"))  # hit
        list(Book.objects.cached().order_by("?"))  # random: not cached
        invalidate(["home"], backend=backend)
    finally:
        panel.disable_instrumentation()
    list(Book.objects.cached().order_by("title"))  # after the request: not recorded
    panel.generate_stats(None, None)

    stats = panel.get_stats()
    assert [e["kind"] for e in stats["events"]] == ["miss", "hit", "uncacheable",
                                                   "invalidated"]
    assert "ormapp_book" in stats["events"][0]["sql"]
    assert "all:default:ormapp_book" in stats["events"][0]["detail"]
    assert "random" in stats["events"][2]["detail"]
    assert panel.nav_subtitle == "1 hits, 1 misses"
    with override_settings(TEMPLATES=TEMPLATES):
        html = panel.content
    assert "relaycache-hit" in html and "relaycache-uncacheable" in html
    assert "order_by(&#x27;?&#x27;) is random" in html
