"""Compiled reads are reused by query state: never for a query in another state.

Every test of the suite also runs under the ``_compiled_reads_checked`` fixture of
``tests/conftest.py``, which compiles each reused read again and compares.
"""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.management.sql import emit_post_migrate_signal
from django.db.models import Case, CharField, F, Func, Value, When
from django.db.models.functions import TruncDay
from django.db.models.sql.compiler import SQLCompiler
from django.test import override_settings
from django.utils import timezone
from django.utils.functional import lazy

from relaycache.orm import memo
from tests.orm.support import ORM_SCENARIO, snap
from tests.ormapp.models import AllTypes, Book, Publisher

CURRENT = {"title": "Dune"}


def _current_title() -> str:
    return CURRENT["title"]

pytestmark = ORM_SCENARIO


@pytest.fixture
def compiles(monkeypatch):
    """Each time Django compiles a query (``SQLCompiler.as_sql`` runs); the suite's
    cross-check, which compiles again on purpose, is off."""
    monkeypatch.setattr(memo, "remembered", memo.remembered.unchecked)
    calls = []
    as_sql = SQLCompiler.as_sql

    def counted(self, *args, **kwargs):
        calls.append(self.query.model)
        return as_sql(self, *args, **kwargs)

    monkeypatch.setattr(SQLCompiler, "as_sql", counted)
    return calls


def test_a_repeated_read_is_compiled_once(shop, compiles, django_assert_num_queries):
    memo.forget()
    for _ in range(2):  # the first compile also fills caches of shared Col objects
        list(Book.objects.cached().filter(is_featured=True).order_by("title"))
        Book.objects.cached().filter(is_featured=True).count()
    assert compiles
    compiles.clear()
    with django_assert_num_queries(0):
        books = list(Book.objects.cached().filter(is_featured=True).order_by("title"))
        count = Book.objects.cached().filter(is_featured=True).count()
    assert compiles == []
    assert [b.title for b in books] == ["Dune", "The Hobbit"] and count == 2


def test_expressions_with_their_own_output_field_are_compiled_once(shop, compiles):
    def read():
        return list(Book.objects.cached()
                    .annotate(label=Value("book", output_field=CharField()))
                    .order_by("title").values_list("title", "label"))

    for _ in range(2):
        read()
    compiles.clear()
    assert read()[0] == ("Dune", "book")
    assert compiles == []


def test_queries_in_other_states_get_their_own_results(shop):
    for title in ["Dune", "SPQR", "Dune", "Foundation", "SPQR"]:
        cached = Book.objects.cached().get(title=title)
        assert snap(cached) == snap(Book.objects.get(title=title))
    for limit in [1, 3, 1, 2]:
        titles = list(Book.objects.cached().order_by("-price").values_list("title", flat=True)
                      [:limit])
        assert titles == list(Book.objects.order_by("-price").values_list("title", flat=True)
                              [:limit])
    for value in [0.0, -0.0, 1, 1.0, True]:
        rows = list(Book.objects.cached().annotate(v=Value(value)).values_list("v", flat=True)
                    [:1])
        truth = list(Book.objects.annotate(v=Value(value)).values_list("v", flat=True)[:1])
        assert snap(rows) == snap(truth)


def test_the_active_time_zone_is_part_of_the_state(shop):
    moment = dt.datetime(2024, 1, 1, 20, 30, tzinfo=dt.UTC)
    AllTypes.objects.create(moment=moment)
    for zone in ["UTC", "Asia/Tokyo", "UTC", "America/New_York"]:
        with timezone.override(zone):
            read = AllTypes.objects.annotate(d=TruncDay("moment")).values_list("d")
            assert snap(list(read.cached())) == snap(list(read.nocache()))


def test_unpicklable_query_state_is_compiled_each_time(shop, compiles):
    class Upper(Func):  # a local class: pickle cannot name it
        function = "UPPER"

    memo.forget()
    for _ in range(3):
        titles = list(Book.objects.cached().annotate(t=Upper(F("title")))
                      .order_by("t").values_list("t", flat=True))
        assert titles == ["DUNE", "FOUNDATION", "NEUROMANCER", "SPQR", "THE HOBBIT"]
    assert len(compiles) == 3
    assert memo._entries == {}


def test_settings_changes_forget_compiled_reads(shop):
    list(Book.objects.cached().filter(is_featured=True))
    assert memo._entries
    with override_settings(USE_TZ=True):
        assert memo._entries == {}


def test_migrations_forget_compiled_reads(shop):
    """Generic relations compile content type ids in, which a migrate may change."""
    list(Book.objects.cached().filter(is_featured=True))
    assert memo._entries
    emit_post_migrate_signal(verbosity=0, interactive=False, db="default")
    assert memo._entries == {}


def test_the_memo_is_bounded(shop, monkeypatch):
    monkeypatch.setattr(memo, "MAX_ENTRIES", 3)
    memo.forget()
    for title in ["a", "b", "c", "d", "e"]:
        list(Book.objects.cached().filter(title=title))
        assert len(memo._entries) <= 3


def test_the_suite_cross_check_catches_a_fingerprint_that_misses_state(shop, monkeypatch):
    """Negative control for ``_compiled_reads_checked``: with a fingerprint blind to
    the query, the second query reuses the first one's compile, and the check fails."""
    monkeypatch.setattr(memo, "fingerprint", lambda query, *context: "blind")
    memo.forget()
    list(Book.objects.cached().filter(title="Dune"))
    with pytest.raises(AssertionError, match="compile of a different query"):
        list(Book.objects.cached().filter(title="SPQR"))


def test_a_miss_compiles_its_own_parameters(shop):
    """The first query's parameters may wrap objects its caller changes afterwards
    (psycopg's ``Jsonb`` keeps the dict): a later equal query must not run with them."""
    one, two = AllTypes.objects.create(data={"k": 1}), AllTypes.objects.create(data={"k": 2})
    wanted = {"k": 1}
    assert list(AllTypes.objects.cached().filter(data=wanted).values_list("id", flat=True)) \
        == [one.id]
    wanted["k"] = 2  # the caller reuses its dict
    AllTypes.objects.filter(pk=two.pk).update(text="x")  # the entry is invalidated
    ids = list(AllTypes.objects.cached().filter(data={"k": 1}).values_list("id", flat=True))
    assert ids == [one.id]


def test_querysets_inside_expressions_are_not_evaluated_on_hits(
        shop, django_assert_num_queries):
    def read():
        uk = Publisher.objects.filter(country="UK")
        return list(Book.objects.cached().annotate(
            uk=Case(When(main_publisher__in=uk, then=Value(1)), default=Value(0)))
            .order_by("title").values_list("title", "uk"))

    read()
    with django_assert_num_queries(0):
        rows = read()
    assert ("The Hobbit", 1) in rows and ("Dune", 0) in rows


def test_lazy_values_are_read_at_each_evaluation(shop):
    """A lazy value stays unevaluated in the query until it is compiled."""
    title = lazy(_current_title, str)()
    for current in ["Dune", "SPQR", "Dune"]:
        CURRENT["title"] = current
        read = Book.objects.annotate(v=Value(title, output_field=CharField())).filter(isbn="1")
        assert list(read.cached().values_list("v", flat=True)) == [current]
