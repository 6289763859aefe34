"""The integration guide's services, with ``custom_cache`` read as ``relaycache``.

Two fixes to the guide: ``author`` is a CharField, so ``select_related('author')`` is
dropped (Django rejects it), and search keys use a stable digest instead of
``hash(query)``, which differs between processes.
"""

import hashlib
from typing import Any

from django.conf import settings
from django.core.paginator import Paginator
from django.db.models import Prefetch, Q

from relaycache import cache

from .models import Book, BookPublisher


def _stable(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@cache(
    ttl=1800,
    backend=settings.CACHE_BACKEND,
    tags=lambda slug: [f"books_top:{slug}", "books", "book_listings"],
    key=lambda slug: f"books_top:{slug}",
)
def get_books_top(slug):
    """Top books by genre slug (explicit tags, invalidated by books/signals.py)."""
    return list(
        Book.objects.filter(genres__genre__slug=slug, is_featured=True)
        .prefetch_related(
            Prefetch("publishers", queryset=BookPublisher.objects.select_related("publisher"))
        )
        .order_by("publishers__position")
        .values()
    )


@cache(
    ttl=1800,
    backend=settings.CACHE_BACKEND,
    tags=lambda slug: [f"books_all:{slug}", "books", "book_listings"],
    key=lambda slug: f"books_all_except:{slug}",
)
def get_books_all_except(slug):
    """All books except one genre."""
    return list(
        Book.objects.exclude(genres__genre__slug=slug)
        .prefetch_related(
            Prefetch("publishers", queryset=BookPublisher.objects.select_related("publisher"))
        )
        .order_by("title")
        .values()
    )


BOOKS_PER_PAGE = 25


def genre_books(slug):
    """The same kind of listing with no tags to maintain: the ORM layer caches the rows
    and any write to the tables the query reads invalidates it.

    Lazy: the genre page hands it to a ``Paginator``, whose ``count()`` and each page's
    slice are cached queries of their own. Ordered by title, then id, so that pages
    never overlap when two titles are equal."""
    return (
        Book.objects.cached()
        .filter(genres__genre__slug=slug)
        .order_by("title", "id")
        .values("id", "title", "author", "publication_date", "is_featured")
    )


def books_in_genre(slug, limit=50):
    """The first ``limit`` books of :func:`genre_books`, as a list."""
    return list(genre_books(slug)[:limit])


def page_of_book(slug, book):
    """The page of the genre's listing that shows ``book`` (a cached count)."""
    before = genre_books(slug).filter(
        Q(title__lt=book.title) | Q(title=book.title, id__lt=book.id)).count()
    return before // BOOKS_PER_PAGE + 1


class BookService:
    @staticmethod
    @cache(
        ttl=3600,
        backend=settings.CACHE_BACKEND,
        tags=lambda book_id: [f"book:{book_id}", "books"],
        distributed_singleflight=True,
    )
    def get_book_details(book_id: int) -> dict[str, Any] | None:
        try:
            book = Book.objects.prefetch_related(
                "genres__genre", "publishers__publisher"
            ).get(id=book_id)
        except Book.DoesNotExist:
            return None
        return {
            "id": book.id,
            "title": book.title,
            "author": book.author,
            "isbn": book.isbn,
            "genres": [bg.genre.name for bg in book.genres.all()],
            "publishers": [bp.publisher.name for bp in book.publishers.all()],
            "publication_date": book.publication_date.isoformat()
            if book.publication_date else None,
        }

    @staticmethod
    @cache(
        ttl=7200,
        backend=settings.CACHE_BACKEND,
        tags=lambda: ["book_stats", "analytics"],
        key=lambda: "book_global_stats",
    )
    def get_book_statistics() -> dict[str, int]:
        return {
            "total_books": Book.objects.count(),
            "featured_books": Book.objects.filter(is_featured=True).count(),
            "recent_books": Book.objects.filter(publication_date__year=2024).count(),
        }


class BookSearchService:
    @staticmethod
    @cache(
        ttl=900,
        backend=settings.CACHE_BACKEND,
        tags=lambda query, genre=None: [
            f"search:{_stable(query)}", "book_search",
            f"genre:{genre}" if genre else "all_genres",
        ],
        key=lambda query, genre=None: f"search:{_stable(query)}:genre:{genre or 'all'}",
    )
    def search_books(query: str, genre: str | None = None) -> list[dict]:
        qs = Book.objects.prefetch_related("genres__genre")
        qs = qs.filter(Q(title__icontains=query) | Q(author__icontains=query)
                       | Q(isbn__icontains=query))
        if genre:
            qs = qs.filter(genres__genre__slug=genre)
        return list(qs.values("id", "title", "author", "isbn", "publication_date")[:50])


@cache(
    ttl=1800,
    backend=settings.CACHE_BACKEND,
    tags=lambda page=1, genre=None: [
        f"books_page:{page}", f"genre:{genre}" if genre else "all_genres", "book_listings",
    ],
    key=lambda page=1, genre=None: f"books:page:{page}:genre:{genre or 'all'}",
)
def get_paginated_books(page=1, genre=None):
    qs = Book.objects.prefetch_related("genres__genre")
    if genre:
        qs = qs.filter(genres__genre__slug=genre)
    qs = qs.order_by("-publication_date", "title")
    paginator = Paginator(qs, 20)
    page_obj = paginator.get_page(page)
    return {
        "books": list(page_obj.object_list.values()),
        "has_next": page_obj.has_next(),
        "has_previous": page_obj.has_previous(),
        "num_pages": paginator.num_pages,
        "current_page": page,
    }
