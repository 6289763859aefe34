"""``@cache`` as users write it: functions, methods, tags, keys, the guide's examples."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import threading
import time
from decimal import Decimal
from typing import Any

import pytest

import relaycache
from relaycache import InMemoryCache, cache, get_default_backend, invalidate, set_default_backend
from tests.support import run_concurrently


class Counter:
    """Records calls so a test can tell a hit from a recomputation."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self._lock = threading.Lock()

    def __call__(self, *args: Any) -> None:
        with self._lock:
            self.calls.append(args)

    @property
    def count(self) -> int:
        return len(self.calls)


# -- plain functions -------------------------------------------------------------------

def test_plain_function_is_cached_per_arguments(backend):
    seen = Counter()

    @cache(backend=backend)
    def square(n):
        seen(n)
        return n * n

    assert [square(2), square(2), square(3), square(3), square(2)] == [4, 4, 9, 9, 4]
    assert seen.calls == [(2,), (3,)]


def test_bare_decorator_uses_the_default_backend():
    seen = Counter()

    @cache
    def f(x):
        seen(x)
        return [x]

    assert f(1) == [1] and f(1) == [1]
    assert seen.count == 1
    assert get_default_backend().stats.hits == 1


def test_wrapper_looks_like_the_function():
    @cache(backend=InMemoryCache())
    def documented(a, b=1):
        """Docstring."""
        return a

    assert documented.__name__ == "documented"
    assert documented.__doc__ == "Docstring."
    assert documented.__wrapped__(5) == 5


def test_none_is_cached_not_a_miss(backend):
    seen = Counter()

    @cache(backend=backend, tags=["t"])
    def nothing(x):
        seen(x)
        return None

    assert nothing(1) is None
    assert nothing(1) is None
    assert nothing(1) is None
    assert seen.count == 1
    assert backend.stats.hits == 2


@pytest.mark.parametrize("falsy", [0, "", [], {}, False, 0.0, ()])
def test_falsy_results_are_cached(falsy):
    backend = InMemoryCache()
    seen = Counter()

    @cache(backend=backend)
    def f():
        seen()
        return falsy

    assert f() == falsy and f() == falsy
    assert type(f()) is type(falsy)
    assert seen.count == 1


def test_exceptions_propagate_and_are_not_cached(backend):
    seen = Counter()

    @cache(backend=backend)
    def boom(x):
        seen(x)
        raise RuntimeError("nope")

    with pytest.raises(RuntimeError):
        boom(1)
    with pytest.raises(RuntimeError):
        boom(1)
    assert seen.count == 2


def test_exact_types_come_back_from_a_hit(backend):
    value = {
        "when": dt.datetime(2024, 3, 31, 2, 30, tzinfo=dt.UTC),
        "day": dt.date(2024, 1, 1),
        "price": Decimal("19.90"),
        "pair": (1, 2),
        "ids": {1, 2},
        "raw": b"\x00\xff",
        7: "int key",
    }

    @cache(backend=backend)
    def f():
        return value

    f()
    back = f()
    assert backend.stats.hits == 1
    assert back == value
    assert type(back["pair"]) is tuple and type(back["ids"]) is set
    assert str(back["price"]) == "19.90"
    assert back["when"].tzinfo is dt.UTC


# -- methods ---------------------------------------------------------------------------

def test_staticmethod_above_cache(backend):
    seen = Counter()

    class Service:
        @staticmethod
        @cache(backend=backend, tags=lambda book_id: [f"book:{book_id}"])
        def details(book_id):
            seen(book_id)
            return {"id": book_id}

    assert Service.details(1) == {"id": 1}
    assert Service().details(1) == {"id": 1}
    assert Service.details(book_id=1) == {"id": 1}
    assert seen.count == 1
    invalidate(["book:1"], backend=backend)
    assert Service.details(1) == {"id": 1}
    assert seen.count == 2
    assert Service.details.cache_key(1) == Service().details.cache_key(book_id=1)


def test_cache_above_staticmethod(backend):
    seen = Counter()

    class Service:
        @cache(backend=backend, tags=lambda book_id: [f"book:{book_id}"])
        @staticmethod
        def details(book_id):
            seen(book_id)
            return {"id": book_id}

    assert isinstance(Service.__dict__["details"], staticmethod)
    assert Service.details(1) == {"id": 1}
    assert Service().details(1) == {"id": 1}
    assert seen.count == 1
    invalidate(["book:1"], backend=backend)
    assert Service.details(1) == {"id": 1}
    assert seen.count == 2
    Service.details.delete(1)
    Service.details(1)
    assert seen.count == 3


def test_classmethod_above_cache(backend):
    seen = Counter()

    class Repo:
        table = "books"

        @classmethod
        @cache(backend=backend, tags=lambda cls, n: [f"{cls.table}:{n}"])
        def fetch(cls, n):
            seen(cls, n)
            return [cls.table, n]

    assert Repo.fetch(1) == ["books", 1]
    assert Repo().fetch(1) == ["books", 1]
    assert seen.count == 1
    invalidate(["books:1"], backend=backend)
    assert Repo.fetch(1) == ["books", 1]
    assert seen.count == 2


def test_cache_above_classmethod(backend):
    seen = Counter()

    class Repo:
        table = "books"

        @cache(backend=backend, tags=lambda n: [f"n:{n}"])
        @classmethod
        def fetch(cls, n):
            seen(cls, n)
            return [cls.table, n]

    class Archive(Repo):
        table = "archive"

    assert isinstance(Repo.__dict__["fetch"], classmethod)
    assert Repo.fetch(1) == ["books", 1]
    assert Repo.fetch(n=1) == ["books", 1]
    assert seen.count == 1
    # a subclass is a different ``cls`` argument: it must not get the parent's result
    assert Archive.fetch(1) == ["archive", 1]
    assert seen.count == 2
    invalidate(["n:1"], backend=backend)
    assert Repo.fetch(1) == ["books", 1]
    assert seen.count == 3


def test_instance_method_tags_by_name_may_leave_out_self(backend):
    seen = Counter()

    class Books:
        @cache(backend=backend, tags=lambda book_id: [f"book:{book_id}"])
        def get(self, book_id, lang="en"):
            seen(book_id, lang)
            return {"id": book_id, "lang": lang}

        @cache(backend=backend, tags=lambda self, book_id: [f"{self.kind}:{book_id}"])
        def get_with_self(self, book_id):
            seen("self", book_id)
            return book_id

        kind = "book"

    books = Books()
    assert books.get(1) == {"id": 1, "lang": "en"}
    assert books.get(1, "en") == {"id": 1, "lang": "en"}
    assert books.get(book_id=1) == {"id": 1, "lang": "en"}
    assert books.get(1, lang="fr") == {"id": 1, "lang": "fr"}
    assert seen.count == 2
    invalidate(["book:1"], backend=backend)
    books.get(1)
    books.get(1, "fr")
    assert seen.count == 4

    assert books.get_with_self(5) == 5 and books.get_with_self(5) == 5
    assert seen.count == 5
    invalidate(["book:5"], backend=backend)
    books.get_with_self(5)
    assert seen.count == 6


def test_instance_method_key_callable_may_use_self(backend):
    class Tenant:
        def __init__(self, name):
            self.name = name

        @cache(backend=backend, key=lambda self, x: f"tenant:{self.name}:{x}")
        def report(self, x):
            return f"{self.name}-{x}"

    assert Tenant("a").report(1) == "a-1"
    assert Tenant("b").report(1) == "b-1"
    assert Tenant("a").report.__wrapped__(Tenant("a"), 1) == "a-1"
    assert backend.get("tenant:b:1") == (True, "b-1")


def test_cache_key_and_delete_through_an_instance():
    """``obj.method.cache_key(x)`` addresses the entry of ``obj.method(x)``."""
    backend = InMemoryCache()
    seen = Counter()

    class Books:
        @cache(backend=backend)
        def get(self, book_id=1):
            seen(book_id)
            return book_id

    books = Books()
    books.get(7)
    books.get(1)
    assert books.get.cache_key(7) == Books.get.cache_key(books, 7)
    books.get.delete(7)
    books.get(7)
    books.get(1)
    assert seen.calls == [(7,), (1,), (7,)]


def test_cache_key_and_delete_through_a_classmethod():
    backend = InMemoryCache()
    seen = Counter()

    class Repo:
        @cache(backend=backend)
        @classmethod
        def fetch(cls, n):
            seen(n)
            return n

    Repo.fetch(3)
    assert Repo.fetch.cache_key(3) == Repo.fetch.cache_key(n=3)
    Repo.fetch.delete(3)
    Repo.fetch(3)
    assert seen.count == 2


# -- tags ------------------------------------------------------------------------------

def test_tags_as_a_list(backend):
    seen = Counter()

    @cache(backend=backend, tags=["books", "listings"])
    def f(n):
        seen(n)
        return n

    f(1), f(2), f(1), f(2)
    assert seen.count == 2
    invalidate(["listings"], backend=backend)
    f(1), f(2)
    assert seen.count == 4
    invalidate(["unrelated"], backend=backend)
    f(1), f(2)
    assert seen.count == 4


def test_tags_as_a_tuple_or_set_or_generator_result(backend):
    seen = Counter()

    @cache(backend=backend, tags=lambda a: (t for t in {f"a:{a}", "all"}))
    def f(a):
        seen(a)
        return a

    f(1), f(1)
    assert seen.count == 1
    invalidate(["a:1"], backend=backend)
    f(1)
    assert seen.count == 2


def test_tags_callable_with_the_same_parameters(backend):
    seen = Counter()

    @cache(backend=backend, tags=lambda a, b: [f"a:{a}", f"b:{b}"])
    def f(a, b):
        seen(a, b)
        return a + b

    f(1, 2), f(1, 3), f(1, 2), f(a=1, b=3)
    assert seen.count == 2
    invalidate(["b:3"], backend=backend)
    f(1, 2), f(1, 3)
    assert seen.calls[-1] == (1, 3) and seen.count == 3
    invalidate(["a:1"], backend=backend)
    f(1, 2), f(1, 3)
    assert seen.count == 5


def test_zero_argument_tags_callable(backend):
    seen = Counter()

    @cache(backend=backend, tags=lambda: ["stats"])
    def f(a, b=2):
        seen(a)
        return a

    f(1), f(1)
    assert seen.count == 1
    invalidate(["stats"], backend=backend)
    f(1)
    assert seen.count == 2


def test_tags_callable_using_a_subset_of_parameter_names(backend):
    seen = Counter()

    @cache(backend=backend, tags=lambda genre: [f"genre:{genre}"])
    def search(query, page, genre):
        seen(query, page, genre)
        return [query, page, genre]

    search("q", 1, "sf"), search("q", 2, "sf"), search("q", 1, "crime")
    search("q", 1, "sf"), search(query="q", page=2, genre="sf")
    assert seen.count == 3
    invalidate(["genre:sf"], backend=backend)
    search("q", 1, "sf"), search("q", 1, "crime")
    assert seen.count == 4


def test_tags_callable_sees_defaults_applied(backend):
    seen = Counter()

    @cache(backend=backend, tags=lambda page: [f"page:{page}"])
    def listing(genre=None, page=1):
        seen(genre, page)
        return page

    listing(), listing("sf")
    assert seen.count == 2
    invalidate(["page:1"], backend=backend)
    listing(), listing("sf")
    assert seen.count == 4


def test_tags_callable_with_other_names_gets_arguments_by_position(backend):
    seen = Counter()

    @cache(backend=backend, tags=lambda x, y: [f"x:{x}", f"y:{y}"])
    def f(a, b=5):
        seen(a, b)
        return a

    f(1), f(1)
    assert seen.count == 1
    invalidate(["y:5"], backend=backend)
    f(1)
    assert seen.count == 2


def test_tags_callable_with_varargs_gets_everything(backend):
    seen = Counter()

    @cache(backend=backend, tags=lambda *args, **kwargs: [f"first:{args[0]}"])
    def f(a, b=5):
        seen(a, b)
        return a

    f(1), f(1)
    invalidate(["first:1"], backend=backend)
    f(1)
    assert seen.count == 2


def test_tags_are_computed_per_call(backend):
    @cache(backend=backend, tags=lambda n: [f"n:{n}"])
    def f(n):
        return n

    f(1), f(2)
    assert backend.get(f.cache_key(1), tags=["n:1"]) == (True, 1)
    assert backend.get(f.cache_key(2), tags=["n:2"]) == (True, 2)


# -- keys ------------------------------------------------------------------------------

def test_key_callable_sets_the_stored_key(backend):
    seen = Counter()

    @cache(backend=backend, key=lambda slug: f"books_top:{slug}", tags=["books"])
    def top(slug, limit=10):
        seen(slug, limit)
        return [slug] * 2

    assert top("sf") == ["sf", "sf"]
    assert top.cache_key("sf") == "books_top:sf"
    assert backend.get("books_top:sf", tags=["books"]) == (True, ["sf", "sf"])
    # the key ignores limit, so a different limit is the same entry (the user's choice)
    assert top("sf", limit=99) == ["sf", "sf"]
    assert seen.count == 1


def test_zero_argument_key_callable(backend):
    seen = Counter()

    @cache(backend=backend, key=lambda: "global")
    def stats(x=0):
        seen(x)
        return {"x": x}

    assert stats() == {"x": 0}
    assert stats(5) == {"x": 0}
    assert seen.count == 1
    assert stats.cache_key(123) == "global"


def test_cache_key_matches_the_entry_and_delete_drops_only_it(backend):
    seen = Counter()

    @cache(backend=backend, tags=["shared"])
    def f(n, m=0):
        seen(n, m)
        return n * 10 + m

    f(1), f(2)
    assert backend.get(f.cache_key(1), tags=["shared"]) == (True, 10)
    assert backend.get(f.cache_key(1, 0), tags=["shared"]) == (True, 10)
    assert backend.get(f.cache_key(n=2), tags=["shared"]) == (True, 20)
    f.delete(n=1, m=0)
    assert backend.get(f.cache_key(1), tags=["shared"]) == (False, None)
    f(1), f(2)
    assert seen.calls == [(1, 0), (2, 0), (1, 0)]
    f.delete(99)  # deleting an entry that does not exist is fine


def test_adelete_drops_one_entry_of_sync_async_and_bound_functions(backend):
    seen = Counter()

    class Shelf:
        @cache(backend=backend, tags=["shared"])
        def book(self, n):
            seen("method", n)
            return n

    @cache(backend=backend, tags=["shared"])
    async def afetch(n):
        seen("async", n)
        return n

    async def scenario():
        shelf = Shelf()
        shelf.book(1), shelf.book(2), await afetch(1)
        await shelf.book.adelete(1)
        await afetch.adelete(1)
        shelf.book(1), shelf.book(2), await afetch(1)

    asyncio.run(scenario())
    assert seen.calls == [("method", 1), ("method", 2), ("async", 1), ("method", 1),
                          ("async", 1)]


# -- the integration guide's examples (ORM bodies replaced by plain Python) ----------

BOOKS = [
    {"id": 1, "title": "Dune", "author": "Herbert", "isbn": "1", "genre": "sf",
     "is_featured": True, "publication_date": dt.date(1965, 8, 1), "publishers": ["Chilton"]},
    {"id": 2, "title": "Emma", "author": "Austen", "isbn": "2", "genre": "classic",
     "is_featured": True, "publication_date": dt.date(1815, 12, 23), "publishers": ["Murray"]},
    {"id": 3, "title": "Solaris", "author": "Lem", "isbn": "3", "genre": "sf",
     "is_featured": False, "publication_date": dt.date(1961, 1, 1), "publishers": []},
]


def test_integration_guide_examples(backend):
    settings_cache_backend = backend
    db_reads = Counter()

    @cache(
        ttl=1800,
        backend=settings_cache_backend,
        tags=lambda slug: [f"books_top:{slug}", "books", "book_listings"],
        key=lambda slug: f"books_top:{slug}",
    )
    def get_books_top(slug):
        db_reads("top", slug)
        return [b for b in BOOKS if b["genre"] == slug and b["is_featured"]]

    @cache(
        ttl=1800,
        backend=settings_cache_backend,
        tags=lambda slug: [f"books_all:{slug}", "books", "book_listings"],
        key=lambda slug: f"books_all_except:{slug}",
    )
    def get_books_all_except(slug):
        db_reads("all_except", slug)
        return sorted((b for b in BOOKS if b["genre"] != slug), key=lambda b: b["title"])

    class BookService:
        @staticmethod
        @cache(
            ttl=3600,
            backend=settings_cache_backend,
            tags=lambda book_id: [f"book:{book_id}", "books"],
            distributed_singleflight=True,
        )
        def get_book_details(book_id: int) -> dict[str, Any] | None:
            db_reads("details", book_id)
            for book in BOOKS:
                if book["id"] == book_id:
                    return {
                        "id": book["id"], "title": book["title"], "author": book["author"],
                        "isbn": book["isbn"], "genres": [book["genre"]],
                        "publishers": book["publishers"],
                        "publication_date": book["publication_date"].isoformat(),
                    }
            return None  # Book.DoesNotExist

        @staticmethod
        @cache(
            ttl=7200,
            backend=settings_cache_backend,
            tags=lambda: ["book_stats", "analytics"],
            key=lambda: "book_global_stats",
        )
        def get_book_statistics() -> dict[str, int]:
            db_reads("stats")
            return {
                "total_books": len(BOOKS),
                "featured_books": sum(b["is_featured"] for b in BOOKS),
                "recent_books": sum(b["publication_date"].year == 2024 for b in BOOKS),
            }

    class BookSearchService:
        @staticmethod
        @cache(
            ttl=900,
            backend=settings_cache_backend,
            tags=lambda query, genre=None: [
                f"search:{hash(query)}",
                "book_search",
                f"genre:{genre}" if genre else "all_genres",
            ],
            key=lambda query, genre=None: f"search:{hash(query)}:genre:{genre or 'all'}",
        )
        def search_books(query: str, genre: str | None = None) -> list[dict]:
            db_reads("search", query, genre)
            return [{"id": b["id"], "title": b["title"]} for b in BOOKS
                    if query.lower() in b["title"].lower() and (not genre or b["genre"] == genre)]

    @cache(
        ttl=1800,
        backend=settings_cache_backend,
        tags=lambda page=1, genre=None: [
            f"books_page:{page}",
            f"genre:{genre}" if genre else "all_genres",
            "book_listings",
        ],
        key=lambda page=1, genre=None: f"books:page:{page}:genre:{genre or 'all'}",
    )
    def get_paginated_books(page=1, genre=None):
        db_reads("page", page, genre)
        rows = [b for b in BOOKS if not genre or b["genre"] == genre]
        return {"books": rows[(page - 1) * 2: page * 2], "has_next": len(rows) > page * 2,
                "has_previous": page > 1, "num_pages": (len(rows) + 1) // 2,
                "current_page": page}

    # every function: first call computes, second is a hit with the same value
    first = [
        get_books_top("sf"), get_books_all_except("sf"), BookService.get_book_details(1),
        BookService.get_book_details(404), BookService.get_book_statistics(),
        BookSearchService.search_books("e"), BookSearchService.search_books("e", "classic"),
        get_paginated_books(1, "sf"), get_paginated_books(), get_paginated_books(2),
    ]
    reads = db_reads.count
    assert reads == 10
    second = [
        get_books_top("sf"), get_books_all_except("sf"), BookService.get_book_details(1),
        BookService.get_book_details(404), BookService.get_book_statistics(),
        BookSearchService.search_books("e"), BookSearchService.search_books("e", "classic"),
        get_paginated_books(1, "sf"), get_paginated_books(page=1), get_paginated_books(2, None),
    ]
    assert second == first
    assert db_reads.count == reads
    assert first[0][0]["publication_date"] == dt.date(1965, 8, 1)
    assert first[3] is None and second[3] is None  # None is cached too

    # the explicit keys are the ones the guide names
    assert get_books_top.cache_key("sf") == "books_top:sf"
    assert BookService.get_book_statistics.cache_key() == "book_global_stats"
    assert get_paginated_books.cache_key(1, "sf") == "books:page:1:genre:sf"
    assert get_paginated_books.cache_key() == "books:page:1:genre:all"

    # post_save(Book 1) handler from the guide
    invalidate(tags=["book:1", "books", "book_listings", "book_stats", "books_top:sf",
                     "books_all:sf"], backend=settings_cache_backend)
    get_books_top("sf"), get_books_all_except("sf"), BookService.get_book_details(1)
    BookService.get_book_statistics(), get_paginated_books(1, "sf")
    assert db_reads.count == reads + 5
    # search results carry none of those tags
    BookSearchService.search_books("e")
    assert db_reads.count == reads + 5

    # clear_books_by_genre / clear_book_stats
    invalidate(tags=["genre:classic"], backend=settings_cache_backend)
    BookSearchService.search_books("e", "classic")
    BookSearchService.search_books("e")
    assert db_reads.count == reads + 6
    invalidate(tags=["book_stats", "analytics"], backend=settings_cache_backend)
    BookService.get_book_statistics()
    assert db_reads.count == reads + 7

    # the admin endpoint's "all": clear() drops everything of this cache
    settings_cache_backend.clear()
    get_books_top("sf"), get_paginated_books(2)
    assert db_reads.count == reads + 9


def test_integration_guide_cache_view_helper(backend):
    """The guide's ``cache_view`` builds a fresh ``@cache`` per request with key=lambda: k."""
    from functools import wraps

    def cache_view(ttl=3600, tags=None, key_func=None):
        def decorator(view_func):
            @wraps(view_func)
            def wrapper(request, *args, **kwargs):
                cache_key = key_func(request, *args, **kwargs)
                cache_tags = tags(request, *args, **kwargs) if callable(tags) else tags or []

                @cache(ttl=ttl, backend=backend, tags=cache_tags, key=lambda: cache_key)
                def cached_view():
                    return view_func(request, *args, **kwargs)

                return cached_view()
            return wrapper
        return decorator

    rendered = Counter()

    @cache_view(
        ttl=1800,
        tags=lambda request, slug: [f"book_page:{slug}", "book_pages"],
        key_func=lambda request, slug: f"book_list:{slug}",
    )
    def book_list_view(request, slug):
        rendered(slug)
        return f"<html>{slug}</html>"

    assert book_list_view(object(), "sf") == "<html>sf</html>"
    assert book_list_view(object(), "sf") == "<html>sf</html>"
    assert book_list_view(object(), "crime") == "<html>crime</html>"
    assert rendered.count == 2
    invalidate(["book_page:sf"], backend=backend)
    book_list_view(object(), "sf"), book_list_view(object(), "crime")
    assert rendered.count == 3


# -- default backend -------------------------------------------------------------------

def test_backend_none_resolves_the_default_at_call_time():
    seen = Counter()

    @cache(tags=["t"])
    def f(x):
        seen(x)
        return x

    first, second = InMemoryCache(), InMemoryCache()
    set_default_backend(first)
    assert get_default_backend() is first
    f(1), f(1)
    assert seen.count == 1 and first.stats.stores == 1 and first.stats.hits == 1
    set_default_backend(second)
    f(1), f(1)
    assert seen.count == 2 and second.stats.stores == 1 and second.stats.hits == 1
    assert first.stats.hits == 1
    invalidate(["t"])  # no backend: the default one
    f(1)
    assert seen.count == 3
    set_default_backend(first)
    f(1)
    assert seen.count == 3  # first still holds its valid entry


def test_set_default_backend_none_restores_a_working_default():
    custom = InMemoryCache()
    set_default_backend(custom)
    set_default_backend(None)
    default = get_default_backend()
    assert default is not custom
    assert isinstance(default, relaycache.BaseCache)
    assert get_default_backend() is default


def test_default_backend_can_be_a_redis_cache(redis_backend):
    seen = Counter()

    @cache(tags=["t"])
    def f(x):
        seen(x)
        return {"x": x}

    set_default_backend(redis_backend)
    f(1), f(1)
    assert seen.count == 1 and redis_backend.stats.hits == 1
    assert any(k for k in redis_backend.redis_client.keys(redis_backend.value_prefix + "*"))


def test_set_default_backend_rejects_non_backends():
    with pytest.raises(TypeError):
        set_default_backend(object())
    with pytest.raises(TypeError):
        cache(backend="redis://localhost")(lambda: 1)


# -- validation ------------------------------------------------------------------------

@pytest.mark.parametrize("ttl", [0, -1, -0.5, True, False, "10", [1]])
def test_invalid_ttl_is_refused_at_decoration(ttl):
    with pytest.raises(ValueError, match="ttl"):
        cache(ttl=ttl, backend=InMemoryCache())(lambda: 1)


@pytest.mark.parametrize("ttl", [math.nan, math.inf])
def test_non_finite_ttl_is_refused_at_decoration(ttl):
    """A ttl that cannot become milliseconds must fail at import, not on every call."""
    with pytest.raises(ValueError, match="ttl"):
        cache(ttl=ttl, backend=InMemoryCache())(lambda: 1)


def test_valid_ttls_are_accepted(backend):
    for ttl in (1, 0.5, 3600, 10**6, None):
        @cache(ttl=ttl, backend=backend)
        def f():
            return 1

        assert f() == 1 and f() == 1


def test_key_must_be_callable():
    with pytest.raises(TypeError):
        cache(key="fixed", backend=InMemoryCache())(lambda: 1)


def test_unencodable_result_raises_type_error_at_the_call_site(backend):
    seen = Counter()

    class Opaque:
        pass

    @cache(backend=backend)
    def f():
        seen()
        return {"ok": [1, Opaque()]}

    with pytest.raises(TypeError, match="Opaque"):
        f()
    with pytest.raises(TypeError, match="Opaque"):
        f()
    assert seen.count == 2  # nothing half-stored
    assert backend.stats.stores == 0


# -- isolation of results ----------------------------------------------------------------

def test_mutating_a_result_does_not_change_the_cache(backend):
    @cache(backend=backend)
    def f():
        return {"items": [1, 2], "meta": {"n": 2}, "tags": {"a"}}

    expected = {"items": [1, 2], "meta": {"n": 2}, "tags": {"a"}}
    miss = f()
    miss["items"].append(3)
    miss["meta"]["n"] = 99
    miss["tags"].add("b")
    miss["new"] = True
    hit = f()
    assert hit == expected
    hit["items"].clear()
    hit["meta"].clear()
    hit["tags"].clear()
    assert f() == expected
    assert f() is not f()
    assert backend.stats.hits == 4


def test_mutating_the_source_object_after_the_call_does_not_change_the_cache(backend):
    shared = {"n": [1]}

    @cache(backend=backend)
    def f():
        return shared

    f()
    shared["n"].append(2)
    assert f() == {"n": [1]}


# -- ttl -------------------------------------------------------------------------------

def test_ttl_expiry_recomputes(backend):
    seen = Counter()

    @cache(ttl=0.2, backend=backend, tags=["t"])
    def f():
        seen()
        return seen.count

    assert f() == 1
    assert f() == 1
    time.sleep(0.35)
    assert f() == 2
    assert f() == 2


def test_per_function_ttl_overrides_the_backend_default(backend):
    seen = Counter()

    @cache(ttl=0.2, backend=backend)
    def short():
        seen("short")
        return 1

    @cache(backend=backend)  # backend default_ttl is 60 s
    def long():
        seen("long")
        return 2

    short(), long()
    time.sleep(0.35)
    short(), long()
    assert seen.calls == [("short",), ("long",), ("short",)]


# -- in-process stampede -------------------------------------------------------------

def test_concurrent_misses_of_one_key_compute_once(backend):
    seen = Counter()

    @cache(backend=backend, tags=["t"])
    def slow(x):
        seen(x)
        time.sleep(0.3)
        return {"x": x, "computed_by": threading.get_ident()}

    results = run_concurrently(lambda _: slow(1), 16, timeout=20)
    assert seen.count == 1
    assert all(r == results[0] for r in results)


def test_concurrent_misses_of_different_keys_do_not_serialize_each_other(backend):
    seen = Counter()
    barrier = threading.Barrier(4)

    @cache(backend=backend)
    def slow(x):
        seen(x)
        barrier.wait(timeout=5)  # all four computations must run at the same time
        return x

    assert run_concurrently(slow, 4) == [0, 1, 2, 3]
    assert seen.count == 4
