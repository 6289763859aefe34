"""Helpers for the ORM scenarios: exact snapshots, shop data, and the read pattern.

Every scenario follows the same steps:

1. ``scenario.warm(read)``: the read runs through the cache (a miss), runs again with
   zero SQL queries (a hit), and both results equal the uncached read exactly (values
   *and* types, see :func:`snap`);
2. one write;
3. ``scenario.fresh(read)``: the next cached read equals the truth read with
   ``.nocache()``, and is itself served again without SQL.

``scenario.check_write(write, *reads)`` runs the three steps and also checks that each
read's result did change, so a scenario cannot pass by accident on unchanged data.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist
from django.db import connections, models
from django.db.models.query import QuerySet

from tests.ormapp.models import (
    AllTypes,
    Book,
    BookGenre,
    BookPublisher,
    Genre,
    Label,
    Publisher,
    Review,
    Shelf,
    ShelfItem,
)

ON_POSTGRESQL = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"

ORM_SCENARIO = [
    pytest.mark.django_db(transaction=True, available_apps=["tests.ormapp"]),
    pytest.mark.usefixtures("orm_cache"),
]
"""``pytestmark`` of every scenario module: real commits (nothing is stored inside a
transaction on SQLite), and each test runs once per backend (``orm_cache``).
``available_apps`` keeps the flush between tests to the app's own tables."""


def snap(value: Any, _seen: frozenset[int] = frozenset()) -> Any:
    """A comparable picture of ``value`` that includes the type of every part.

    Model instances contribute their class, every attribute in ``__dict__`` (field
    values, annotations, ``to_attr`` prefetches), ``_state.db``, ``_state.adding``,
    the ``select_related`` objects in ``_state.fields_cache``, the prefetched
    querysets and the deferred fields. An instance met again inside itself (a
    one-to-one's back reference) is named by class and primary key.
    """
    if isinstance(value, QuerySet):
        raise TypeError("snapshot a queryset's evaluated result, not the queryset")
    if isinstance(value, models.Model):
        if id(value) in _seen:
            return ("model-ref", type(value), value.pk)
        seen = _seen | {id(value)}
        state = value._state
        attrs = {k: snap(v, seen) for k, v in value.__dict__.items()
                 if k not in ("_state", "_prefetched_objects_cache")}
        related = {k: snap(v, seen) for k, v in state.fields_cache.items()}
        prefetched = {k: snap(list(qs), seen) for k, qs in
                      getattr(value, "_prefetched_objects_cache", {}).items()}
        return ("model", type(value), attrs, state.db, state.adding, related, prefetched,
                frozenset(value.get_deferred_fields()))
    if isinstance(value, dict):
        return (type(value), [(snap(k, _seen), snap(v, _seen)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return (type(value), [snap(v, _seen) for v in value])
    if isinstance(value, memoryview):
        return (memoryview, value.tobytes())
    if isinstance(value, (dt.datetime, dt.time)):
        return (type(value), value, repr(value.tzinfo), value.fold)
    if isinstance(value, Decimal):
        return (Decimal, str(value))
    if isinstance(value, float) and value != value:
        return (float, "nan")
    return (type(value), value)


def same(actual: Any, expected: Any) -> bool:
    return snap(actual) == snap(expected)


def outcome(evaluate: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap ``evaluate`` so that ``DoesNotExist`` is a comparable result too."""

    def run(qs: Any) -> Any:
        try:
            return ("ok", evaluate(qs))
        except ObjectDoesNotExist as exc:
            return ("raised", type(exc))

    return run


@dataclass
class Read:
    """A queryset builder (uncached) and how to evaluate it."""

    build: Callable[[], Any]
    evaluate: Callable[[Any], Any] = list
    options: dict[str, Any] = field(default_factory=dict)


def read(build: Callable[[], Any], evaluate: Callable[[Any], Any] = list,
         **options: Any) -> Read:
    return Read(build, evaluate, options)


class Scenario:
    def __init__(self, backend: Any, assert_num_queries: Any) -> None:
        self.backend = backend
        self.assert_num_queries = assert_num_queries

    def _cache(self, r: Read) -> Any:
        return r.options.get("backend") or self.backend

    def cached(self, r: Read) -> Any:
        return r.evaluate(r.build().cached(**r.options))

    def truth(self, r: Read) -> Any:
        return r.evaluate(r.build().cached(**r.options).nocache())

    def hit(self, r: Read) -> Any:
        """The read is served with no SQL, and equals the database."""
        stats = self._cache(r).stats
        hits = stats.hits
        with self.assert_num_queries(0):
            result = self.cached(r)
        assert stats.hits > hits
        truth = r.evaluate(r.build())  # the plain manager: never cached
        assert snap(result) == snap(truth)
        return result

    def warm(self, r: Read) -> Any:
        """Miss, then hit with no SQL; both equal the uncached read exactly."""
        first = self.cached(r)
        second = self.hit(r)
        assert snap(first) == snap(second)
        return second

    def fresh(self, r: Read, rehit: bool = True) -> Any:
        """After a write: the cached read equals ``.nocache()``'s, then is cached again."""
        got = self.cached(r)
        truth = self.truth(r)
        assert snap(got) == snap(truth)
        if rehit:
            assert snap(self.hit(r)) == snap(truth)
        return got

    def check_write(self, write: Callable[[], Any], *reads: Read,
                    rehit: bool = True) -> list[Any]:
        befores = [self.warm(r) for r in reads]
        write()
        afters = [self.fresh(r, rehit=rehit) for r in reads]
        for index, (before, after) in enumerate(zip(befores, afters, strict=True)):
            assert snap(before) != snap(after), f"read #{index} did not change: {after!r}"
        return afters


def in_thread(func: Callable[[], Any]) -> Any:
    """Run ``func`` in another thread (its own database connection) and return its result."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = func()
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    if "error" in box:
        raise box["error"]
    return box["result"]


def make_shop() -> SimpleNamespace:
    """Publishers, genres, labels, books with genres, reviews, publishers and shelves."""
    s = SimpleNamespace()
    s.penguin = Publisher.objects.create(name="Penguin", country="UK")
    s.tor = Publisher.objects.create(name="Tor", country="US")
    s.ace = Publisher.objects.create(name="Ace", country="US")
    s.sf = Genre.objects.create(name="Science fiction", slug="sf")
    s.fantasy = Genre.objects.create(name="Fantasy", slug="fantasy")
    s.history = Genre.objects.create(name="History", slug="history")
    s.classic = Label.objects.create(name="classic")
    s.award = Label.objects.create(name="award")
    s.new = Label.objects.create(name="new")

    def book(title: str, author: str, isbn: str, day: dt.date, price: str,
             publisher: Publisher | None, featured: bool = False) -> Book:
        return Book.objects.create(title=title, author=author, isbn=isbn,
                                   publication_date=day, price=Decimal(price),
                                   main_publisher=publisher, is_featured=featured)

    s.dune = book("Dune", "Herbert", "1", dt.date(1965, 8, 1), "9.99", s.tor, True)
    s.foundation = book("Foundation", "Asimov", "2", dt.date(1951, 6, 1), "7.50", s.tor)
    s.neuromancer = book("Neuromancer", "Gibson", "3", dt.date(1984, 7, 1), "12.00", s.ace)
    s.hobbit = book("The Hobbit", "Tolkien", "4", dt.date(1937, 9, 21), "15.25", s.penguin,
                    True)
    s.spqr = book("SPQR", "Beard", "5", dt.date(2015, 10, 20), "20.00", None)
    s.books = [s.dune, s.foundation, s.neuromancer, s.hobbit, s.spqr]
    s.dune.labels.add(s.classic, s.award)
    s.foundation.labels.add(s.classic)
    s.neuromancer.labels.add(s.award)
    s.hobbit.labels.add(s.classic)
    for b, g in [(s.dune, s.sf), (s.foundation, s.sf), (s.neuromancer, s.sf),
                 (s.hobbit, s.fantasy), (s.spqr, s.history)]:
        BookGenre.objects.create(book=b, genre=g)
    for b, stars in [(s.dune, 5), (s.dune, 4), (s.foundation, 3), (s.hobbit, 5),
                     (s.hobbit, 5), (s.hobbit, 2)]:
        Review.objects.create(book=b, stars=stars, text=f"{b.title}: {stars}")
    BookPublisher.objects.create(book=s.dune, publisher=s.penguin, position=1)
    BookPublisher.objects.create(book=s.dune, publisher=s.tor, position=0)
    BookPublisher.objects.create(book=s.hobbit, publisher=s.penguin, position=0)
    s.favourites = Shelf.objects.create(name="Favourites")
    s.bedside = Shelf.objects.create(name="Bedside")
    ShelfItem.objects.create(shelf=s.favourites, book=s.dune, note="top")
    ShelfItem.objects.create(shelf=s.favourites, book=s.hobbit)
    ShelfItem.objects.create(shelf=s.bedside, book=s.spqr, note="reading")
    return s


UTC = dt.UTC


def make_all_types() -> SimpleNamespace:
    """Rows of every field type: full, empty (NULLs), and extreme values."""
    s = SimpleNamespace()
    s.full = AllTypes.objects.create(
        big=2**62 + 7, small=-32768, flag=True, char="café ☕", text="line\nbreak\ttab",
        day=dt.date(2024, 2, 29),
        moment=dt.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=UTC),
        clock=dt.time(13, 14, 15, 161718),
        span=dt.timedelta(days=3, seconds=4, microseconds=5),
        amount=Decimal("12345678.1230"), ratio=0.1,
        ident=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        blob=b"\x00\x01binary\xff", data={"a": {"b": [1, 2.5, None, True, "x"]}, "n": None},
        email="a@example.com", slug="a-slug", ip="2001:db8::1",
    )
    s.empty = AllTypes.objects.create()
    s.extreme = AllTypes.objects.create(
        big=-(2**63), small=32767, flag=False, char="", day=dt.date(1, 1, 1),
        moment=dt.datetime(1970, 1, 1, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=5))),
        clock=dt.time(0, 0), span=dt.timedelta(days=-1, microseconds=1),
        amount=Decimal("-0.0001"), ratio=-1.5e300, blob=b"",
        data=[{"~t": [1, 2]}, {"~dt": "2020-01-01"}, [], {}, "", 0, -0.5, 10**15],
        ip="192.168.0.1",
    )
    return s
