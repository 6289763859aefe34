"""What each library does for each benchmark operation, in the worker process that runs
it (Django is set up with :mod:`benchmarks.settings` before this module is imported).

A :class:`Library` gives the querysets of the workloads the way that library's users
write them, and the library-native ways to invalidate, to fill entries and to reset its
keys. Every query of workload 1 is defined once, in :data:`QUERIES`, as a function of a
library, so all libraries run exactly the same ORM calls.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from books.models import Book, BookGenre, BookPublisher, Genre, Publisher
from books.services import BookService
from django.conf import settings
from django.db import models
from django.db.models import Prefetch

from benchmarks.keyspace import delete_prefix

TABLES = {m: m._meta.db_table for m in (Book, BookGenre, Genre, BookPublisher, Publisher)}


# -- result fingerprints (every library must return what plain Django returns) ---------

def canonical(value: Any) -> Any:
    if isinstance(value, models.Model):
        fields = tuple((f.attname, canonical(getattr(value, f.attname)))
                       for f in value._meta.concrete_fields)
        related = tuple(sorted((name, canonical(obj))
                               for name, obj in value._state.fields_cache.items()))
        return (type(value).__name__, fields, related, value._state.db, value._state.adding)
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, canonical(v)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(canonical(v) for v in value))
    return (type(value).__name__, value)


def fingerprint(value: Any) -> str:
    return hashlib.sha1(repr(canonical(value)).encode()).hexdigest()[:12]


# -- the libraries ------------------------------------------------------------------------

class Library:
    name = "plain"
    caches = False  # does it cache ORM reads at all

    def __init__(self, client: redis.Redis) -> None:
        self.client = client  # raw client on the bench database (bytes replies)
        self.prefix = settings.PREFIXES.get(self.name, "")
        self.details = self.book_details()
        self.details_nosf = self.book_details_nosf()

    # querysets as this library's users write them
    def qs(self, model: type[models.Model]) -> models.QuerySet:
        return model.objects.all()

    def qs_singleflight(self, model: type[models.Model]) -> models.QuerySet:
        """The stampede query: with the library's dog-pile protection, if it has one."""
        return self.qs(model)

    def load_all(self, model: type[models.Model], pks: list[int] | None = None
                 ) -> list[models.Model]:
        """Rows (all, or these pks), read from the database without caching them."""
        return list(_only(model.objects.order_by("pk"), pks))

    def book_details(self) -> Callable[[int], Any]:
        """The decorator path: ``BookService.get_book_details`` as this library caches it."""
        return BookService.get_book_details.func

    def book_details_nosf(self) -> Callable[[int], Any]:
        """The same function cached without distributed singleflight (libraries that
        have the option; the others cache it as in :meth:`book_details`)."""
        return self.details

    # writes and invalidation
    def update_one(self, model: type[models.Model], pk: int, **values: Any) -> None:
        """``QuerySet.update()`` of one row, through the call the library invalidates."""
        model.objects.filter(pk=pk).update(**values)

    def invalidate_tables(self, models_: list[type[models.Model]], book_id: int | None) -> None:
        """Make the library forget what it cached from these tables (a write happened)."""

    def invalidate_table_only(self) -> None:
        """The invalidation a write to books_book triggers, without the write."""
        raise NotImplementedError

    # storage
    def reset(self) -> int:
        """Delete every key of this library's prefix; returns how many."""
        return delete_prefix(self.client, self.prefix) if self.prefix else 0


def _only(queryset: models.QuerySet, pks: list[int] | None) -> models.QuerySet:
    return queryset if pks is None else queryset.filter(pk__in=pks)


class RelayCacheLib(Library):
    name = "relaycache"
    caches = True

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(client)
        self.backend = settings.CACHE_BACKEND

    def qs(self, model):
        return model.objects.cached()

    def qs_singleflight(self, model):
        return model.objects.cached(singleflight=True)

    def book_details(self):
        return BookService.get_book_details  # distributed_singleflight=True

    def book_details_nosf(self):
        from relaycache import cache

        return cache(ttl=3600, backend=settings.CACHE_BACKEND,
                     tags=lambda book_id: [f"book:{book_id}", "books"],
                     key=lambda book_id: f"details-nosf:{book_id}",
                     )(BookService.get_book_details.func)

    def reset(self):
        # Entries and tag stamps go; the backend's other meta keys stay. It records the
        # server's run_id under its meta prefix and treats a missing record as a restart
        # (every entry invalidated, on the next new connection): deleting it would
        # simulate a Redis restart in the middle of the next workload.
        meta = self.backend.meta_prefix
        stamps = delete_prefix(self.client, meta + "t:")
        return stamps + delete_prefix(self.client, self.prefix, keep=(meta.encode(),))

    def invalidate_tables(self, models_, book_id):
        from relaycache import invalidate
        from relaycache.orm.invalidation import invalidate_tables

        invalidate_tables([TABLES[m] for m in models_])
        if book_id is not None:  # the decorator's own tags (books/signals.py's job)
            invalidate(tags=[f"book:{book_id}"], backend=self.backend)

    def invalidate_table_only(self):
        from relaycache.orm.invalidation import invalidate_tables

        invalidate_tables([TABLES[Book]])


class RelayCacheNearLib(RelayCacheLib):
    """RelayCache with ``near_cache=True`` (benchmarks/settings.py)."""

    name = "relaycache_near"


class RelayCache01Lib(Library):
    """relaycache 0.1.1 (``custom_cache``), the library this project grew from: only its
    ``@cache`` decorator, on its ``RedisCache``, around the same function. It knows
    nothing of the ORM (no invalidation on writes): a floor for the decorator query."""

    name = "relaycache01"
    caches = True

    def _decorate(self, singleflight: bool) -> Callable[[int], Any]:
        import custom_cache

        backend = getattr(self, "_rc01_backend", None)
        if backend is None:
            backend = self._rc01_backend = custom_cache.RedisCache(
                redis.Redis.from_url(settings.REDIS_URL), default_ttl=settings.CACHE_TTL,
                value_prefix=self.prefix, meta_prefix=self.prefix + "meta")
        builder = custom_cache.KeyBuilder(prefix=self.prefix.rstrip(":"))
        return custom_cache.cache(
            ttl=3600, backend=backend, key_builder=builder,
            namespace="sf" if singleflight else "nosf",
            tags=lambda book_id: [f"book:{book_id}", "books"],
            distributed_singleflight=singleflight)(BookService.get_book_details.func)

    def book_details(self):
        return self._decorate(True)

    def book_details_nosf(self):
        return self._decorate(False)

    def invalidate_tables(self, models_, book_id):
        import custom_cache

        if book_id is not None:
            custom_cache.invalidate(tags=[f"book:{book_id}"], backend=self._rc01_backend)


class CacheopsLib(Library):
    name = "cacheops"
    caches = True

    def qs(self, model):
        return model.objects.all()  # "ops": "all" caches every queryset of books.*

    def qs_singleflight(self, model):
        return model.objects.cache(lock=True)  # cacheops' dog-pile lock

    def load_all(self, model, pks=None):
        return list(_only(model.objects.nocache().order_by("pk"), pks))

    def book_details(self):
        from cacheops import cached_as

        return cached_as(Book, BookGenre, Genre, BookPublisher, Publisher,
                         timeout=settings.CACHE_TTL)(BookService.get_book_details.func)

    def update_one(self, model, pk, **values):
        # cacheops does not invalidate plain QuerySet.update(); its docs say to call this.
        model.objects.filter(pk=pk).invalidated_update(**values)

    def invalidate_tables(self, models_, book_id):
        from cacheops import invalidate_model

        for model in models_:
            invalidate_model(model)  # untimed: it runs KEYS over our prefix

    def invalidate_table_only(self):
        from cacheops import invalidate_obj

        invalidate_obj(self.sample_book)  # what its post_save handler calls

    @property
    def sample_book(self) -> Book:
        book = getattr(self, "_sample_book", None)
        if book is None:
            book = self._sample_book = Book.objects.nocache().order_by("id").first()
        return book


class CachalotLib(Library):
    name = "cachalot"
    caches = True

    def load_all(self, model, pks=None):
        from cachalot.api import cachalot_disabled

        with cachalot_disabled():
            return list(_only(model.objects.order_by("pk"), pks))

    def invalidate_tables(self, models_, book_id):
        from cachalot.api import invalidate

        invalidate(*models_)

    def invalidate_table_only(self):
        from cachalot.api import invalidate

        invalidate(TABLES[Book], db_alias="default", cache_alias="default")


class FloorLib(Library):
    """The fastest any Redis cache can be: one GET of an orjson payload, then
    ``Model.from_db`` (or the dicts ``values()`` returns)."""

    name = "floor"


class DictFloorLib(Library):
    """The fastest an in-process cache that hands out values of their own can be: the
    floor's orjson payload looked up in a dict (no round trip), then decoded and
    rebuilt the same way."""

    name = "dict"


LIBRARY_CLASSES = {cls.name: cls for cls in
                   (RelayCacheLib, RelayCacheNearLib, RelayCache01Lib, CacheopsLib,
                    CachalotLib, Library, FloorLib, DictFloorLib)}


# -- workload 1 queries -----------------------------------------------------------------

@dataclass
class Query:
    name: str
    title: str
    models: list[type[models.Model]]
    run: Callable[[Library, dict[str, Any]], Any]
    floor_kind: str  # how the floor rebuilds it


def _top(lib: Library, p: dict[str, Any]) -> Any:
    # books/services.py get_books_top's query (join + order_by + values).
    return list(
        lib.qs(Book).filter(genres__genre__slug=p["slug"], is_featured=True)
        .prefetch_related(Prefetch("publishers",
                                   queryset=lib.qs(BookPublisher).select_related("publisher")))
        .order_by("publishers__position")
        .values())


def _list20(lib: Library, p: dict[str, Any]) -> Any:
    return list(lib.qs(Book).order_by("title")[:20])


def _get(lib: Library, p: dict[str, Any]) -> Any:
    return lib.qs(Book).get(pk=p["book_id"])


def _select_related(lib: Library, p: dict[str, Any]) -> Any:
    return list(lib.qs(BookPublisher).select_related("publisher", "book")
                .filter(publisher_id=p["publisher_id"]).order_by("id")[:20])


def _count(lib: Library, p: dict[str, Any]) -> Any:
    return lib.qs(Book).filter(is_featured=True).count()


def _decorator(lib: Library, p: dict[str, Any]) -> Any:
    return lib.details(p["book_id"])


def _decorator_nosf(lib: Library, p: dict[str, Any]) -> Any:
    return lib.details_nosf(p["book_id"])


QUERIES = {q.name: q for q in [
    Query("top", "get_books_top query (join + order_by + values)",
          [Book, BookGenre, Genre, BookPublisher], _top, "values"),
    Query("list20", "20 instances ordered by title", [Book], _list20, "instances"),
    Query("get", "get(pk=...)", [Book], _get, "instance"),
    Query("select_related", "BookPublisher list, select_related(publisher, book)",
          [BookPublisher, Publisher, Book], _select_related, "select_related"),
    Query("count", "count()", [Book], _count, "count"),
    Query("decorator", "decorator path: BookService.get_book_details",
          [Book, BookGenre, Genre, BookPublisher, Publisher], _decorator, "json"),
    Query("decorator_nosf", "the same decorator without distributed singleflight",
          [Book, BookGenre, Genre, BookPublisher, Publisher], _decorator_nosf, "json"),
]}


# -- the floor --------------------------------------------------------------------------

def _plain_rows(model: type[models.Model], objs: list[models.Model]) -> list[list[Any]]:
    return [[getattr(o, f.attname) for f in model._meta.concrete_fields] for o in objs]


def _encode_cell(value: Any) -> Any:
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return value


def _date_columns(model: type[models.Model]) -> list[int]:
    return [i for i, f in enumerate(model._meta.concrete_fields)
            if isinstance(f, models.DateField) and not isinstance(f, models.DateTimeField)]


def _build(model: type[models.Model], row: list[Any], dates: list[int],
           attnames: list[str]) -> models.Model:
    for i in dates:
        if row[i] is not None:
            row[i] = dt.date.fromisoformat(row[i])
    return model.from_db("default", attnames, row)


class _DictStore:
    """The dict floor's store: ``get``/``set`` of bytes in a dict of this process."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.get = self.data.__getitem__

    def set(self, key: str, value: bytes) -> None:
        self.data[key] = value


class Floor:
    """Stores each query's plain-Django result as rows under one key; ``read()`` is one
    GET, ``orjson.loads`` and the objects rebuilt. With ``in_process``, the same bytes
    live in a dict of the process instead of Redis (the dict floor): a lookup, then the
    same decoding, as a near cache that hands out values of their own must do."""

    def __init__(self, client: redis.Redis, prefix: str, in_process: bool = False) -> None:
        self.client: Any = _DictStore() if in_process else client
        self.prefix = prefix
        self.readers: dict[str, Callable[[], Any]] = {}
        self.attnames = {m: [f.attname for f in m._meta.concrete_fields]
                         for m in (Book, BookPublisher, Publisher)}
        self.dates = {m: _date_columns(m) for m in (Book, BookPublisher, Publisher)}

    def prepare(self, query: Query, result: Any) -> None:
        key = f"{self.prefix}{query.name}"
        kind = query.floor_kind
        if kind == "values":
            columns = list(result[0]) if result else []
            dates = [i for i, c in enumerate(columns)
                     if type(result[0][c]) is dt.date] if result else []
            payload = [columns, [[_encode_cell(r[c]) for c in columns] for r in result]]
            self.client.set(key, orjson.dumps(payload))

            def read() -> Any:
                cols, rows = orjson.loads(self.client.get(key))
                out = []
                for row in rows:
                    for i in dates:
                        row[i] = dt.date.fromisoformat(row[i])
                    out.append(dict(zip(cols, row, strict=True)))
                return out
        elif kind in ("instances", "instance"):
            objs = result if kind == "instances" else [result]
            rows = [[_encode_cell(c) for c in r] for r in _plain_rows(Book, objs)]
            self.client.set(key, orjson.dumps(rows))
            names, dates = self.attnames[Book], self.dates[Book]

            def read() -> Any:
                built = [_build(Book, row, dates, names)
                         for row in orjson.loads(self.client.get(key))]
                return built if kind == "instances" else built[0]
        elif kind == "select_related":
            rows = []
            for bp in result:
                rows.append([[_encode_cell(c) for c in r] for r in (
                    _plain_rows(BookPublisher, [bp])[0], _plain_rows(Publisher, [bp.publisher])[0],
                    _plain_rows(Book, [bp.book])[0])])
            self.client.set(key, orjson.dumps(rows))
            a = self.attnames
            d = self.dates

            def read() -> Any:
                out = []
                for bp_row, pub_row, book_row in orjson.loads(self.client.get(key)):
                    bp = _build(BookPublisher, bp_row, d[BookPublisher], a[BookPublisher])
                    cache = bp._state.fields_cache
                    cache["publisher"] = _build(Publisher, pub_row, d[Publisher], a[Publisher])
                    cache["book"] = _build(Book, book_row, d[Book], a[Book])
                    out.append(bp)
                return out
        elif kind == "count" or kind == "json":
            self.client.set(key, orjson.dumps(result))

            def read() -> Any:
                return orjson.loads(self.client.get(key))
        else:
            raise ValueError(kind)
        self.readers[query.name] = read


def book_ids() -> list[int]:
    return list(Book.objects.order_by("id").values_list("id", flat=True))
