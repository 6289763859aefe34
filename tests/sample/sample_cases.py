"""The sample project (``sample_books/``) through Django's test client.

Not collected by the suite itself (the name does not match ``test_*.py``): it runs
under the sample's own settings, ``config.settings``, in a subprocess started by
``tests/sample/test_sample_project.py``, which reports each case here as a test of
its own. Run it by hand with::

    PYTHONPATH=sample_books .venv/bin/pytest --ds=config.settings \\
        --confcutdir=tests/sample -p no:cacheprovider tests/sample/sample_cases.py

``DATABASE_URL`` and ``RELAYCACHE_URL`` switch the sample to PostgreSQL and Redis as
they do for ``runserver``. Every case uses ``django_db(transaction=True)``: cached
querysets store nothing inside a test transaction on SQLite, so the hit/miss badge
would never say "hit" in a plain ``TestCase``.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import re
from datetime import date

import pytest
from books.management.commands.seed_books import BATCH
from books.models import Book, BookGenre, BookPublisher, Genre, Publisher
from books.services import (
    BookSearchService,
    BookService,
    books_in_genre,
    get_books_all_except,
    get_books_top,
    get_paginated_books,
)
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db.models import Count
from django.test import Client

pytestmark = pytest.mark.django_db(transaction=True)

BACKEND = settings.CACHE_BACKEND


@pytest.fixture(scope="session")
def django_db_modify_db_settings():
    """One PostgreSQL test database per run (as tests/settings.py does), so that two
    runs on one server never drop each other's database."""
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("postgresql"):
        db.setdefault("TEST", {})["NAME"] = f"test_sample_books_{os.getpid()}"


@pytest.fixture(autouse=True)
def _empty_cache():
    """Each case starts from an empty cache: entries of the explicitly tagged services
    are not dropped by the database flush between cases (it sends no signals)."""
    BACKEND.clear()
    yield
    BACKEND.clear()


# -- helpers -----------------------------------------------------------------------

def seed(books: int = 60, genres: int = 5, publishers: int = 8, *extra: str) -> str:
    out = io.StringIO()
    call_command("seed_books", "--books", str(books), "--genres", str(genres),
                 "--publishers", str(publishers), *extra, stdout=out)
    return out.getvalue()


@pytest.fixture
def seeded():
    seed()
    return Genre.objects.order_by("name")


class Counted:
    """Hits and misses of the sample's backend inside a ``with`` block."""

    def __enter__(self):
        self.before = BACKEND.stats.snapshot()
        return self

    def __exit__(self, *exc_info):
        after = BACKEND.stats.snapshot()
        self.hits = after["hits"] - self.before["hits"]
        self.misses = after["misses"] - self.before["misses"]


def badge(response) -> str:
    text = response.content.decode()
    found = re.search(r'<span id="cache-badge" class="badge (\w+)">(\w+)</span>', text)
    assert found, text
    assert found[1] == found[2]
    assert found[1] in ("hit", "miss")
    return found[1]


def cache_ms(response) -> float:
    found = re.search(r'<span id="cache-time">([0-9.]+) ms</span>', response.content.decode())
    assert found, response.content.decode()
    return float(found[1])


BOOK_ROW = re.compile(r'<tr id="book-(\d+)"><td><a href="/book/(\d+)/">(.*?)</a></td>'
                      r"<td>(.*?)</td><td>(.*?)</td><td>(★?)</td></tr>")


def book_rows(response) -> list[dict]:
    """The rows of the genre page's ``#books`` table."""
    block = re.search(r'<table id="books">(.*?)</table>', response.content.decode(), re.S)
    assert block, response.content.decode()
    rows = []
    for row_id, link_id, title, author, published, star in BOOK_ROW.findall(block[1]):
        assert row_id == link_id
        rows.append({"id": int(row_id), "title": html.unescape(title),
                     "author": html.unescape(author), "published": html.unescape(published),
                     "featured": star == "★"})
    assert block[1].count("<tr") == len(rows) + 1, block[1]  # the header, then books
    return rows


def table_rows(response) -> list[tuple[str, str, str]]:
    return [(row["title"], row["author"], row["published"]) for row in book_rows(response)]


def hits_and_misses(response) -> tuple[int, int]:
    found = re.search(r"\((\d+) hits?, (\d+) miss(?:es)?\)", response.content.decode())
    assert found, response.content.decode()
    return int(found[1]), int(found[2])


READ_ROW = re.compile(r'<tr class="read (\w+)"><td><span class="badge (\w+)">(\w+)</span>'
                      r'</td><td><code class="(\w+)">(.*?)</code>.*?</td>'
                      r'<td class="tags">(.*?)</td></tr>', re.S)


def cached_reads(response) -> list[dict]:
    """The page's "Cached reads of this request" table, one dict per read."""
    block = re.search(r'<section id="cache-reads">(.*?)</section>', response.content.decode(),
                      re.S)
    assert block, response.content.decode()
    reads = []
    for kind, badge_class, outcome, code_class, label, tags in READ_ROW.findall(block[1]):
        assert badge_class == outcome
        assert code_class == {"query": "sql", "function": "call", "entry": "key"}[kind]
        tags = html.unescape(tags)
        reads.append({"kind": kind, "outcome": outcome, "label": html.unescape(label),
                      "tags": [] if tags == "—" else tags.split(", ")})
    if not reads:
        assert "<p>None.</p>" in block[1]
    return reads


def page_links(response) -> dict[str, str]:
    """The genre page's pagination links: text -> href."""
    nav = re.search(r'<nav id="pages">(.*?)</nav>', response.content.decode(), re.S)
    assert nav, response.content.decode()
    return {html.unescape(text): html.unescape(href)
            for href, text in re.findall(r'<a href="([^"]+)"[^>]*>(.*?)</a>', nav[1])}


def page_summary(response) -> str:
    found = re.search(r'<span id="page-summary">(.*?)</span>', response.content.decode())
    assert found, response.content.decode()
    return html.unescape(found[1])


def featured_items(response) -> list[str]:
    block = re.search(r'<ul id="featured">(.*?)</ul>', response.content.decode(), re.S)
    assert block
    return [html.unescape(item) for item in re.findall(r"<li>(.*?)</li>", block[1])]


def index_genres(response) -> list[tuple[str, str, int]]:
    text = response.content.decode()
    found = re.findall(r'<li><a href="/genre/([\w-]+)/">(.*?)</a> \((\d+)\)</li>', text)
    return [(slug, html.unescape(name), int(n)) for slug, name, n in found]


def top_query(slug: str) -> list[dict]:
    """``get_books_top``'s query, uncached."""
    return get_books_top.func(slug)


def genre_with_books() -> Genre:
    return Genre.objects.filter(bookgenre__isnull=False).order_by("slug").first()


def new_book(title: str, *, author: str = "Ada Quux", isbn: str = "9990000000001",
             featured: bool = False, published: date = date(2020, 5, 17)) -> Book:
    return Book.objects.create(title=title, author=author, isbn=isbn,
                               publication_date=published, is_featured=featured)


# -- seed_books ----------------------------------------------------------------------

def test_seed_books_small_with_progress():
    out = seed(25, 4, 5)
    assert "\r[" in out and "] 25/25 books" in out
    assert "[" + "#" * 30 + "] 25/25 books" in out
    assert out.rstrip().endswith("Seeded 25 books, 4 genres, 5 publishers.")
    assert (Book.objects.count(), Genre.objects.count(), Publisher.objects.count()) == (25, 4, 5)
    for book in Book.objects.prefetch_related("genres", "publishers"):
        assert 1 <= len(book.genres.all()) <= 3
        assert len({bg.genre_id for bg in book.genres.all()}) == len(book.genres.all())
        assert 1 <= len(book.publishers.all()) <= 2
        assert len(book.isbn) == 13 and book.isbn.isdigit()
    assert len(set(Genre.objects.values_list("slug", flat=True))) == 4


def test_seed_books_progress_per_batch():
    out = seed(BATCH + 5, 3, 3)
    frames = re.findall(r"\r\[([#-]{30})\] (\d+)/(\d+) books", out)
    assert [(int(done), int(total)) for _, done, total in frames] == [
        (BATCH, BATCH + 5), (BATCH + 5, BATCH + 5)]
    assert frames[-1][0] == "#" * 30 and "-" in frames[0][0]
    assert Book.objects.count() == BATCH + 5


def test_seed_books_no_progress():
    out = seed(10, 2, 2, "--no-progress")
    assert out == "Seeded 10 books, 2 genres, 2 publishers.\n"


def test_seed_books_is_idempotent_without_append():
    seed(20, 3, 4)
    before = (Book.objects.count(), Genre.objects.count(), Publisher.objects.count(),
              BookGenre.objects.count(), BookPublisher.objects.count())
    out = seed(20, 3, 4)
    assert out == "The database already has books; pass --append to add more.\n"
    assert (Book.objects.count(), Genre.objects.count(), Publisher.objects.count(),
            BookGenre.objects.count(), BookPublisher.objects.count()) == before


def test_seed_books_append_adds_more():
    seed(20, 3, 4)
    out = seed(15, 2, 3, "--append")  # existing genres and publishers are reused
    assert out.rstrip().endswith("Seeded 15 books, 3 genres, 4 publishers.")
    assert Book.objects.count() == 35
    assert Genre.objects.count() == 3 and Publisher.objects.count() == 4
    isbns = list(Book.objects.values_list("isbn", flat=True))
    assert len(set(isbns)) == 35
    assert BookGenre.objects.filter(book__isbn__in=isbns[20:]).exists()


def test_seed_books_rejects_bad_counts():
    with pytest.raises(CommandError, match="--books must be >= 0"):
        seed(-1)
    with pytest.raises(CommandError):
        seed(5, 0)
    assert not Book.objects.exists()


def test_seed_books_zero_books():
    out = seed(0, 2, 2)
    assert out == "Seeded 0 books, 2 genres, 2 publishers.\n"
    assert Genre.objects.count() == 2 and not Book.objects.exists()


# -- pages ---------------------------------------------------------------------------

def test_genre_index_lists_seeded_genres(client, seeded):
    response = client.get("/")
    assert response.status_code == 200
    assert "<h1>Genres</h1>" in response.content.decode()
    expected = [(g.slug, g.name, BookGenre.objects.filter(genre=g).count())
                for g in Genre.objects.order_by("name")]
    assert index_genres(response) == expected
    assert badge(response) == "miss"
    assert cache_ms(response) >= 0
    again = client.get("/")
    assert badge(again) == "hit"
    assert index_genres(again) == expected
    assert "(1 hit, 0 misses)" in again.content.decode()


def test_genre_index_empty_database(client):
    response = client.get("/")
    assert response.status_code == 200
    assert "No genres yet" in response.content.decode()


def test_book_list_page_shows_the_genre(client, seeded):
    for genre in seeded[:3]:
        response = client.get(f"/genre/{genre.slug}/")
        assert response.status_code == 200
        text = response.content.decode()
        assert f'<h1 id="genre-name">{html.escape(genre.name)}</h1>' in text
        assert f"<title>{html.escape(genre.name)} · RelayCache sample</title>" in text
        expected = list(Book.objects.filter(genres__genre=genre).order_by("title", "id")[:25])
        rows = table_rows(response)
        assert rows, "a genre with books shows book rows"
        assert [title for title, _, _ in rows] == [b.title for b in expected]
        assert sorted(rows) == sorted(
            (b.title, b.author, _date(b.publication_date)) for b in expected)
        top = top_query(genre.slug)
        assert featured_items(response) == ([b["title"] for b in top[:10]]
                                            or ["None featured."])
        assert badge(response) == "miss"
        again = client.get(f"/genre/{genre.slug}/")
        assert badge(again) == "hit"
        # the genre, the paginator's count, the page's rows, get_books_top
        assert "(4 hits, 0 misses)" in again.content.decode()
        assert table_rows(again) == rows
        assert featured_items(again) == featured_items(response)


def _date(value: date) -> str:
    from django.utils import formats

    return formats.date_format(value)


def test_book_list_unknown_genre_is_404(client, seeded):
    assert client.get("/genre/no-such-genre/").status_code == 404


def test_orm_write_turns_the_page_fresh(client, seeded):
    genre = genre_with_books()
    url = f"/genre/{genre.slug}/"
    client.get(url)
    assert badge(client.get(url)) == "hit"

    # save(): the ORM layer drops the cached rows, signals.py the tagged services.
    book = Book.objects.filter(genres__genre=genre).order_by("title").first()
    book.title = "1 renamed by save"
    book.save()
    response = client.get(url)
    assert badge(response) == "miss"
    # The genre lookup reads books_genre only, and the count only the books' ids (which
    # save() does not assign): both still hit. The page's rows (which show the title)
    # and get_books_top (signals.py) miss.
    assert "(2 hits, 2 misses)" in response.content.decode()
    reads = cached_reads(response)
    assert (reads[0]["kind"], reads[0]["outcome"]) == ("query", "hit")
    assert reads[0]["tags"] == ["db:default", "all:default:books_genre",
                                "rows:default:books_genre", "upd:default:books_genre"]
    assert [r["outcome"] for r in reads[1:]] == ["hit", "miss", "miss"]
    assert table_rows(response)[0][0] == "1 renamed by save"
    assert badge(client.get(url)) == "hit"

    # QuerySet.update() sends no signal; the ORM layer still sees the UPDATE.
    Book.objects.filter(pk=book.pk).update(title="1 renamed by update")
    response = client.get(url)
    assert badge(response) == "miss"
    assert table_rows(response)[0][0] == "1 renamed by update"

    # A new book in the genre appears, through the BookGenre table.
    newcomer = new_book("0 newcomer", featured=True)
    BookGenre.objects.create(book=newcomer, genre=genre)
    BookPublisher.objects.create(book=newcomer, publisher=Publisher.objects.first())
    response = client.get(url)
    assert badge(response) == "miss"
    assert table_rows(response)[0][0] == "0 newcomer"
    assert featured_items(response) == [b["title"] for b in top_query(genre.slug)[:10]]
    assert newcomer.id in {b["id"] for b in get_books_top(genre.slug)}
    assert badge(client.get(url)) == "hit"

    # The index counts follow.
    counts = {slug: n for slug, _, n in index_genres(client.get("/"))}
    assert counts[genre.slug] == BookGenre.objects.filter(genre=genre).count()


def test_genre_rename_shows_on_both_pages(client, seeded):
    genre = genre_with_books()
    client.get("/")
    client.get(f"/genre/{genre.slug}/")
    genre.name = "Renamed Genre"
    genre.save()
    assert "Renamed Genre" in [name for _, name, _ in index_genres(client.get("/"))]
    assert '<h1 id="genre-name">Renamed Genre</h1>' in client.get(
        f"/genre/{genre.slug}/").content.decode()


# -- pagination ----------------------------------------------------------------------

PER_PAGE = 25
PREVIOUS, NEXT = "\u2039 previous", "next \u203a"  # as the page spells them


def walk_pages(client, slug: str) -> list:
    """Every page of a genre, followed through its NEXT links from page 1."""
    pages, url = [], f"/genre/{slug}/"
    while url is not None:
        response = client.get(url if url.startswith("/") else f"/genre/{slug}/{url}")
        assert response.status_code == 200
        pages.append(response)
        assert len(pages) < 100
        url = page_links(response).get(NEXT)
    return pages


def test_genre_pages_list_every_book(client):
    seed(200, 3, 4, "--no-progress")
    genre = Genre.objects.annotate(n=Count("bookgenre")).order_by("-n").first()
    expected = list(Book.objects.filter(genres__genre=genre).order_by("title", "id")
                    .values_list("id", "title"))
    assert len(expected) > 2 * PER_PAGE  # several pages

    pages = walk_pages(client, genre.slug)
    num_pages = math.ceil(len(expected) / PER_PAGE)
    assert len(pages) == num_pages
    listed = [(row["id"], row["title"]) for page in pages for row in book_rows(page)]
    assert listed == expected  # all of them, once each, in order
    for number, page in enumerate(pages, 1):
        rows = book_rows(page)
        assert len(rows) == min(PER_PAGE, len(expected) - (number - 1) * PER_PAGE)
        first = (number - 1) * PER_PAGE + 1
        assert page_summary(page) == (f"Page {number} of {num_pages} · books "
                                      f"{first}\u2013{first + len(rows) - 1} of {len(expected)}")
        links = page_links(page)
        assert (PREVIOUS in links) == (number > 1)
        assert (NEXT in links) == (number < num_pages)
        assert links.get("1", "?page=1") == "?page=1"
        assert f'<strong>{number}</strong>' in page.content.decode()
        # each page is a cached query of its own: the first visit of page 2 and later
        # misses its rows, but hits the genre, the count and get_books_top
        assert badge(page) == "miss"
        reads = cached_reads(page)
        outcomes = [r["outcome"] for r in reads]
        assert outcomes == (["miss"] * 4 if number == 1 else ["hit", "hit", "miss", "hit"])
        rows_sql = reads[2]["label"]
        assert "LIMIT" in rows_sql and ("OFFSET" in rows_sql) == (number > 1)

    # Every page again: all hits, the same rows.
    for number, page in enumerate(pages, 1):
        again = client.get(f"/genre/{genre.slug}/?page={number}")
        assert badge(again) == "hit"
        assert hits_and_misses(again) == (4, 0)
        assert book_rows(again) == book_rows(page)

    # Out of range or not a number: the last page, or the first (Paginator.get_page).
    assert book_rows(client.get(f"/genre/{genre.slug}/?page=999")) == book_rows(pages[-1])
    assert book_rows(client.get(f"/genre/{genre.slug}/?page=x")) == book_rows(pages[0])


def test_genre_page_links_elide_far_pages(client):
    seed(400, 1, 2, "--no-progress")  # one genre: every book in it, 16 pages
    slug = Genre.objects.get().slug
    links = page_links(client.get(f"/genre/{slug}/?page=8"))
    assert set(links) == {PREVIOUS, NEXT, "1", "6", "7", "9", "10", "16"}
    assert (links[PREVIOUS], links[NEXT]) == ("?page=7", "?page=9")
    text = client.get(f"/genre/{slug}/?page=8").content.decode()
    assert text.count("<span>…</span>") == 2


def test_empty_genre_has_one_empty_page(client):
    seed(0, 2, 1)
    genre = Genre.objects.first()
    response = client.get(f"/genre/{genre.slug}/")
    assert response.status_code == 200
    assert book_rows(response) == []
    assert page_links(response) == {}
    assert page_summary(response).startswith("Page 1 of 1 ·")


# -- the list of cached reads ----------------------------------------------------------

def test_cached_reads_are_listed_with_tags(client, seeded):
    genre = genre_with_books()
    response = client.get(f"/genre/{genre.slug}/")
    reads = cached_reads(response)
    assert [r["kind"] for r in reads[:3:2]] == ["query", "query"]
    assert [r["outcome"] for r in reads] == ["miss"] * 4
    assert hits_and_misses(response) == (0, len(reads))
    genre_read, count_read, rows_read, top_read = reads
    assert genre_read["label"].startswith("SELECT") and "books_genre" in genre_read["label"]
    assert genre_read["tags"] == ["db:default", "all:default:books_genre",
                                  "rows:default:books_genre", "upd:default:books_genre"]
    assert rows_read["label"].startswith("SELECT") and "LIMIT" in rows_read["label"]
    # every table it reads, by the columns it names (books_bookgenre: all of them)
    assert set(rows_read["tags"]) == {
        "db:default", "all:default:books_genre", "rows:default:books_genre",
        "col:default:books_genre:id", "col:default:books_genre:slug",
        "all:default:books_book", "rows:default:books_book", "col:default:books_book:id",
        "col:default:books_book:title", "col:default:books_book:author",
        "col:default:books_book:publication_date", "col:default:books_book:is_featured",
        "all:default:books_bookgenre", "rows:default:books_bookgenre",
        "upd:default:books_bookgenre"}
    # the Paginator's count(): listed with its SQL and tags once RelayCache reports
    # them for counts, with its key until then
    assert count_read["kind"] in ("query", "entry")
    if count_read["kind"] == "entry":
        assert count_read["label"].startswith("orm:") and count_read["tags"] == []
    assert top_read == {"kind": "function", "outcome": "miss",
                        "label": f"@cache get_books_top('{genre.slug}')",
                        "tags": ["book_listings", "books", f"books_top:{genre.slug}"]}

    again = cached_reads(client.get(f"/genre/{genre.slug}/"))
    assert [r["outcome"] for r in again] == ["hit"] * 4
    assert [(r["kind"], r["label"], r["tags"]) for r in again] == [
        (r["kind"], r["label"], r["tags"]) for r in reads]

    index = cached_reads(client.get("/"))
    assert [(r["kind"], r["outcome"]) for r in index] == [("query", "miss")]
    assert [r["outcome"] for r in cached_reads(client.get("/"))] == ["hit"]
    # it reads books_genre and books_bookgenre, never books_book
    assert {tag.split(":")[2] for tag in index[0]["tags"] if tag != "db:default"} == {
        "books_genre", "books_bookgenre"}


def test_cached_reads_of_an_empty_request(client):
    response = client.get("/genre/no-such-genre/")
    assert response.status_code == 404
    reads = cached_reads(client.get("/"))
    assert [(r["kind"], r["outcome"]) for r in reads] == [("query", "miss")]


def test_meter_keeps_its_own_thread():
    """The listener list is process-wide: a meter ignores other threads' reads (the
    dev server answers requests in threads)."""
    import threading

    from books.meter import CacheMeter

    seed(10, 2, 2, "--no-progress")
    with CacheMeter() as meter:
        worker = threading.Thread(target=lambda: list(Genre.objects.cached().all()))
        worker.start()
        worker.join()
        assert meter.reads == []
        list(Genre.objects.cached().all())
    assert [(r.kind, r.outcome) for r in meter.reads] == [("query", "hit")]
    assert (meter.badge, meter.hits, meter.misses) == ("hit", 1, 0)  # this thread's only


# -- editing a book --------------------------------------------------------------------

@pytest.fixture
def csrf_client():
    return Client(enforce_csrf_checks=True)


def form_token(response) -> str:
    found = re.search(r'<input type="hidden" name="csrfmiddlewaretoken" value="([^"]+)">',
                      response.content.decode())
    assert found, response.content.decode()
    return found[1]


def form_data(book: Book, token: str, **changes) -> dict:
    data = {"title": book.title, "author": book.author,
            "publication_date": book.publication_date.isoformat(),
            "csrfmiddlewaretoken": token, **changes}
    featured = data.pop("is_featured", book.is_featured)
    if featured:
        data["is_featured"] = "on"
    return data


def messages_of(response) -> list[str]:
    block = re.search(r'<ul id="messages">(.*?)</ul>', response.content.decode(), re.S)
    return [] if block is None else [html.unescape(m)
                                     for m in re.findall(r"<li[^>]*>(.*?)</li>", block[1])]


def detail_title(response) -> str:
    found = re.search(r'<h1 id="book-title">(.*?)</h1>', response.content.decode())
    assert found, response.content.decode()
    return html.unescape(found[1])


def test_book_page_shows_the_book_and_its_form(client, seeded):
    book = Book.objects.filter(genres__isnull=False).first()
    response = client.get(f"/book/{book.id}/")
    assert response.status_code == 200
    text = response.content.decode()
    assert detail_title(response) == book.title
    assert f"<title>{html.escape(book.title)} · RelayCache sample</title>" in text
    assert '<form method="post" id="edit-book">' in text
    assert 'name="csrfmiddlewaretoken"' in text
    assert f'value="{html.escape(book.title)}"' in text
    assert f'value="{book.publication_date.isoformat()}"' in text
    assert "A demo: anyone can edit here, no login." in text
    details = BookService.get_book_details.func(book.id)
    assert html.escape(", ".join(details["publishers"])) in text
    for genre in Genre.objects.filter(bookgenre__book=book):
        assert re.search(rf'<a href="/genre/{genre.slug}/\?page=\d+#book-{book.id}">'
                         rf"{re.escape(html.escape(genre.name))}</a>", text)
    reads = cached_reads(response)
    assert [r["outcome"] for r in reads] == ["miss"] * len(reads)
    # get_book_details is a singleflight: it looks twice, listed and counted once
    assert hits_and_misses(response) == (0, len(reads))
    # pinned to the book's primary key: only a write to this book drops it
    assert reads[0]["kind"] == "query" and reads[0]["tags"] == [
        "db:default", "all:default:books_book", "pinned:default:books_book:id",
        f"pin:default:books_book:id:{book.id}"]
    assert reads[1] == {"kind": "function", "outcome": "miss",
                        "label": f"@cache get_book_details({book.id})",
                        "tags": [f"book:{book.id}", "books"]}
    again = client.get(f"/book/{book.id}/")
    assert badge(again) == "hit"
    assert [r["outcome"] for r in cached_reads(again)] == ["hit"] * len(reads)
    assert hits_and_misses(again) == (len(reads), 0)


def test_book_page_genre_links_find_the_book(client):
    seed(200, 2, 3, "--no-progress")
    for book in Book.objects.order_by("?")[:5]:
        text = client.get(f"/book/{book.id}/").content.decode()
        links = re.findall(r'<a href="(/genre/[\w-]+/\?page=\d+)#book-(\d+)">', text)
        assert len(links) == BookGenre.objects.filter(book=book).count()
        for url, book_id in links:
            assert int(book_id) == book.id
            assert book.id in [row["id"] for row in book_rows(client.get(url))]


def test_edit_invalidates_and_shows_the_new_value(csrf_client, seeded):
    client = csrf_client
    genre = genre_with_books()
    book = (Book.objects.filter(genres__genre=genre, is_featured=False).order_by("title")
            .last())
    if book is None:
        book = new_book("Plain")
        BookGenre.objects.create(book=book, genre=genre)
    genre_url, book_url = f"/genre/{genre.slug}/", f"/book/{book.id}/"

    # Everything cached first: the index, the genre page, the book page.
    client.get("/")
    client.get(genre_url)
    page = client.get(book_url)
    assert badge(client.get("/")) == "hit"
    assert badge(client.get(genre_url)) == "hit"
    assert badge(client.get(book_url)) == "hit"
    token = form_token(page)

    # Without the CSRF token: refused, nothing written.
    refused = client.post(book_url, form_data(book, "", title="Hacked"))
    assert refused.status_code == 403
    assert Book.objects.get(pk=book.pk).title == book.title
    assert badge(client.get(book_url)) == "hit"

    # Saved: a redirect back to the book page (POST/redirect/GET).
    saved = client.post(book_url, form_data(book, token, title="0 Edited on the page",
                                            is_featured=True))
    assert saved.status_code == 302 and saved["Location"] == book_url
    fresh = Book.objects.get(pk=book.pk)
    assert (fresh.title, fresh.is_featured) == ("0 Edited on the page", True)

    # The page it lands on misses, shows the new values at once and says why.
    landed = client.get(book_url)
    assert badge(landed) == "miss"
    assert detail_title(landed) == "0 Edited on the page"
    assert '<td id="book-featured">yes</td>' in landed.content.decode()
    assert 'value="0 Edited on the page"' in landed.content.decode()
    [message] = messages_of(landed)
    assert message.startswith("Saved “0 Edited on the page”. The write invalidated ")
    assert "table:default:books_book" in message and f"book:{book.id}" in message
    reads = cached_reads(landed)
    assert reads[0]["outcome"] == "miss" and "books_book" in reads[0]["label"]
    assert reads[1]["label"] == f"@cache get_book_details({book.id})"
    assert reads[1]["outcome"] == "miss"

    # Reload: every read hits, the message is gone, the value stays.
    reloaded = client.get(book_url)
    assert badge(reloaded) == "hit"
    assert messages_of(reloaded) == []
    assert detail_title(reloaded) == "0 Edited on the page"

    # The genre page: its rows and the featured list miss once and show the edit
    # (first by title, now featured); the genre lookup, which reads no books, and the
    # count, which reads only their ids, hit.
    listing = client.get(genre_url)
    assert badge(listing) == "miss"
    assert hits_and_misses(listing) == (2, 2)
    first = book_rows(listing)[0]
    assert (first["id"], first["title"], first["featured"]) == (
        book.id, "0 Edited on the page", True)
    assert "0 Edited on the page" in featured_items(listing)
    assert badge(client.get(genre_url)) == "hit"

    # The index counts books per genre (books_genre, books_bookgenre): a title edit
    # does not touch those tables, so it still hits.
    assert badge(client.get("/")) == "hit"


def test_edit_with_errors_writes_nothing(csrf_client, seeded):
    book = Book.objects.first()
    url = f"/book/{book.id}/"
    token = form_token(csrf_client.get(url))
    csrf_client.get(url)
    response = csrf_client.post(url, form_data(book, token, title="",
                                               publication_date="not a date"))
    assert response.status_code == 200
    text = response.content.decode()
    assert text.count('class="errorlist') == 2
    assert "This field is required." in text and "Enter a valid date." in text
    assert Book.objects.get(pk=book.pk).title == book.title
    assert badge(response) == "hit"  # nothing was written: nothing invalidated
    assert messages_of(response) == []


def test_edit_without_changes_writes_nothing(csrf_client, seeded):
    book = Book.objects.first()
    url = f"/book/{book.id}/"
    token = form_token(csrf_client.get(url))
    response = csrf_client.post(url, form_data(book, token))
    assert response.status_code == 302 and response["Location"] == url
    landed = csrf_client.get(url)
    assert messages_of(landed) == [
        "Nothing changed: nothing written, nothing invalidated."]
    assert badge(landed) == "hit"


def test_edit_featured_flag_updates_the_featured_list(csrf_client, seeded):
    """is_featured feeds get_books_top, an @cache service with explicit tags: the
    sample's signal handlers drop it on save, so the Featured list follows too."""
    genre = genre_with_books()
    book = Book.objects.filter(genres__genre=genre).order_by("title", "id").first()
    url = f"/book/{book.id}/"
    token = form_token(csrf_client.get(url))
    for featured in (not book.is_featured, book.is_featured):
        csrf_client.get(f"/genre/{genre.slug}/")
        assert csrf_client.post(url, form_data(book, token, is_featured=featured)
                                ).status_code == 302
        listing = csrf_client.get(f"/genre/{genre.slug}/")
        assert badge(listing) == "miss"
        top = top_query(genre.slug)
        assert (book.id in {b["id"] for b in top}) is featured
        assert featured_items(listing) == ([b["title"] for b in top[:10]]
                                           or ["None featured."])
        assert book_rows(listing)[0]["id"] == book.id
        assert book_rows(listing)[0]["featured"] is featured


def test_book_page_methods_and_unknown_ids(client, seeded):
    book = Book.objects.first()
    assert client.put(f"/book/{book.id}/").status_code == 405
    assert client.delete(f"/book/{book.id}/").status_code == 405
    assert client.head(f"/book/{book.id}/").status_code == 200
    missing = Book.objects.order_by("-id").first().id + 1000
    assert client.get(f"/book/{missing}/").status_code == 404
    assert client.post(f"/book/{missing}/", {"title": "x"}).status_code == 404
    assert not Book.objects.filter(pk=missing).exists()


def test_footer_says_how_to_reach_the_admin(client, seeded):
    genre = genre_with_books()
    for url in ("/", f"/genre/{genre.slug}/",
                f"/book/{Book.objects.filter(genres__genre=genre).first().id}/"):
        footer = re.search(r'<footer id="footer">(.*?)</footer>',
                           client.get(url).content.decode(), re.S)
        assert footer, url
        assert '<a href="/admin/">/admin/</a>' in footer[1]
        assert "<code>.venv/bin/python sample_books/manage.py createsuperuser</code>" in footer[1]
        assert "anyone can edit books here" in footer[1]


def test_admin_lists_books_for_a_superuser(client, django_user_model, seeded):
    admin = django_user_model.objects.create_superuser("admin", "admin@example.com", "pw")
    client.force_login(admin)
    book = Book.objects.first()
    response = client.get("/admin/books/book/", {"q": book.isbn})
    assert response.status_code == 200
    assert html.escape(book.title) in response.content.decode()


# -- the clear-cache endpoint --------------------------------------------------------

URL = "/admin/clear-cache/"


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user("staff", password="pw", is_staff=True)


@pytest.fixture
def staff_client(staff):
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    return client


def csrf_token(client) -> str:
    """The token a staff member's browser holds: the admin index sets the cookie."""
    assert client.get("/admin/").status_code == 200
    return client.cookies["csrftoken"].value


def test_clear_cache_anonymous_is_sent_to_login(client):
    response = client.post(URL, {"cache_type": "all"})
    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/admin/clear-cache/"
    assert client.get(URL).status_code == 405


def test_clear_cache_non_staff_is_sent_to_login(client, django_user_model):
    user = django_user_model.objects.create_user("reader", password="pw")
    client.force_login(user)
    response = client.post(URL, {"cache_type": "all"})
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_clear_cache_staff_get_is_405(staff_client):
    response = staff_client.get(URL)
    assert response.status_code == 405
    assert response["Allow"] == "POST"


def test_clear_cache_staff_post_without_csrf_is_403(staff_client):
    response = staff_client.post(URL, {"cache_type": "all"})
    assert response.status_code == 403
    assert b"CSRF" in response.content


def test_clear_cache_staff_post_with_token(staff_client, seeded):
    token = csrf_token(staff_client)
    slug = genre_with_books().slug

    def post(cache_type):
        response = staff_client.post(URL, {"cache_type": cache_type,
                                           "csrfmiddlewaretoken": token})
        assert response["Content-Type"] == "application/json"
        return response.status_code, json.loads(response.content)

    get_books_top(slug)
    BookService.get_book_statistics()
    books_in_genre(slug)

    assert post("books") == (200, {"status": "success", "message": "Book cache cleared"})
    with Counted() as books:
        get_books_top(slug)
    with Counted() as stats:
        BookService.get_book_statistics()
    with Counted() as orm:
        books_in_genre(slug)
    assert (books.misses, stats.hits, orm.hits) == (1, 1, 1)

    assert post("stats") == (200, {"status": "success", "message": "Stats cache cleared"})
    with Counted() as stats:
        BookService.get_book_statistics()
    with Counted() as books:
        get_books_top(slug)
    assert (stats.misses, books.hits) == (1, 1)

    # The token also works as a header, as JavaScript sends it.
    response = staff_client.post(URL, {"cache_type": "all"}, headers={"X-CSRFToken": token})
    assert response.status_code == 200
    assert json.loads(response.content) == {"status": "success",
                                            "message": "All cache cleared"}
    with Counted() as everything:
        get_books_top(slug)
        BookService.get_book_statistics()
        books_in_genre(slug)
    assert (everything.hits, everything.misses) == (0, 3)


@pytest.mark.parametrize("cache_type", ["bogus", "", None])
def test_clear_cache_bad_type_is_400(staff_client, cache_type):
    token = csrf_token(staff_client)
    data = {"csrfmiddlewaretoken": token}
    if cache_type is not None:
        data["cache_type"] = cache_type
    response = staff_client.post(URL, data)
    assert response.status_code == 400
    assert json.loads(response.content) == {"status": "error",
                                            "message": "Invalid cache_type"}


# -- the guide's services ----------------------------------------------------------------

def test_get_books_top(seeded):
    for genre in seeded:
        with Counted() as first:
            result = get_books_top(genre.slug)
        assert result == top_query(genre.slug)
        featured = set(Book.objects.filter(genres__genre=genre, is_featured=True)
                       .values_list("id", flat=True))
        assert {row["id"] for row in result} == featured
        assert all(row["is_featured"] for row in result)
        assert all(isinstance(row["publication_date"], date) for row in result)
        with Counted() as second:
            assert get_books_top(genre.slug) == result
        assert (first.misses, second.hits) == (1, 1)
    assert get_books_top("no-such-genre") == []


def test_get_books_top_invalidated_by_signals(seeded):
    genre = genre_with_books()
    before = get_books_top(genre.slug)
    book = Book.objects.filter(genres__genre=genre, is_featured=False).first()
    if book is None:  # every book of the genre is featured: make one that is not
        book = new_book("Plain")
        BookGenre.objects.create(book=book, genre=genre)
        before = get_books_top(genre.slug)
    book.is_featured = True
    book.save()
    after = get_books_top(genre.slug)
    assert book.id in {row["id"] for row in after}
    assert book.id not in {row["id"] for row in before}
    assert after == top_query(genre.slug)


def test_get_books_all_except(seeded):
    genre = genre_with_books()
    result = get_books_all_except(genre.slug)
    expected = list(Book.objects.exclude(genres__genre__slug=genre.slug)
                    .order_by("title").values())
    assert result == expected
    assert {row["id"] for row in result}.isdisjoint(
        BookGenre.objects.filter(genre=genre).values_list("book_id", flat=True))
    assert len(result) == Book.objects.count() - Book.objects.filter(
        genres__genre=genre).count()
    with Counted() as again:
        assert get_books_all_except(genre.slug) == result
    assert again.hits == 1
    # Moving a book out of the genre (a BookGenre delete) brings it into the list.
    link = BookGenre.objects.filter(genre=genre).first()
    link.delete()
    if not BookGenre.objects.filter(book_id=link.book_id, genre=genre).exists():
        assert link.book_id in {row["id"] for row in get_books_all_except(genre.slug)}


def test_get_book_details(seeded):
    book = Book.objects.prefetch_related("genres__genre", "publishers__publisher").first()
    details = BookService.get_book_details(book.id)
    assert details == {
        "id": book.id,
        "title": book.title,
        "author": book.author,
        "isbn": book.isbn,
        "genres": [bg.genre.name for bg in book.genres.all()],
        "publishers": [bp.publisher.name for bp in book.publishers.all()],
        "publication_date": book.publication_date.isoformat(),
    }
    with Counted() as again:
        assert BookService.get_book_details(book.id) == details
    assert again.hits == 1


def test_get_book_details_missing_id_is_a_cached_none(seeded):
    missing = Book.objects.order_by("-id").first().id + 1000
    with Counted() as first:
        assert BookService.get_book_details(missing) is None
    with Counted() as second:
        assert BookService.get_book_details(missing) is None
    # (a distributed singleflight looks the key up again once it holds the lease)
    assert first.hits == 0 and first.misses >= 1
    assert (second.hits, second.misses) == (1, 0)
    # Creating the book under that id drops the cached None (tag book:<id>).
    Book.objects.create(id=missing, title="Late arrival", author="X", isbn="9990000000002",
                        publication_date=date(2021, 1, 1))
    assert BookService.get_book_details(missing)["title"] == "Late arrival"


def test_get_book_details_invalidated_by_signals(seeded):
    book = Book.objects.first()
    BookService.get_book_details(book.id)
    book.title = "A new title"
    book.save()
    assert BookService.get_book_details(book.id)["title"] == "A new title"

    genre = Genre.objects.exclude(bookgenre__book=book).first()
    BookGenre.objects.create(book=book, genre=genre)
    assert genre.name in BookService.get_book_details(book.id)["genres"]

    publisher = Publisher.objects.exclude(books__book=book).first()
    BookPublisher.objects.create(book=book, publisher=publisher, position=9)
    assert publisher.name in BookService.get_book_details(book.id)["publishers"]

    BookGenre.objects.filter(book=book, genre=genre).delete()  # a queryset delete
    assert genre.name not in BookService.get_book_details(book.id)["genres"]

    book.delete()
    assert BookService.get_book_details(book.id) is None


def test_get_book_statistics(seeded):
    stats = BookService.get_book_statistics()
    assert stats == {
        "total_books": Book.objects.count(),
        "featured_books": Book.objects.filter(is_featured=True).count(),
        "recent_books": Book.objects.filter(publication_date__year=2024).count(),
    }
    with Counted() as again:
        assert BookService.get_book_statistics() == stats
    assert again.hits == 1

    new_book("Recent", featured=True, published=date(2024, 3, 1))
    assert BookService.get_book_statistics() == {
        "total_books": stats["total_books"] + 1,
        "featured_books": stats["featured_books"] + 1,
        "recent_books": stats["recent_books"] + 1,
    }
    Book.objects.get(isbn="9990000000001").delete()
    assert BookService.get_book_statistics() == stats


def test_search_books(seeded):
    genre, other = Genre.objects.order_by("slug")[:2]
    assert BookSearchService.search_books("zebra") == []
    with Counted() as cached_empty:
        assert BookSearchService.search_books("zebra") == []
    assert cached_empty.hits == 1

    book = new_book("The Relay Zebra Handbook", author="Ada Quux", isbn="9990000000042")
    found = BookSearchService.search_books("zebra")
    assert found == [{"id": book.id, "title": "The Relay Zebra Handbook",
                      "author": "Ada Quux", "isbn": "9990000000042",
                      "publication_date": date(2020, 5, 17)}]
    assert BookSearchService.search_books("QUUX") == found       # author, any case
    assert BookSearchService.search_books("9990000000042") == found  # ISBN

    assert BookSearchService.search_books("zebra", genre.slug) == []
    BookGenre.objects.create(book=book, genre=genre)
    assert BookSearchService.search_books("zebra", genre.slug) == found
    assert BookSearchService.search_books("zebra", other.slug) == []

    # A seeded title word finds what the ORM finds.
    word = Book.objects.exclude(pk=book.pk).first().title.split()[0]
    expected = {b.id for b in Book.objects.filter(title__icontains=word)}
    expected |= set(Book.objects.filter(author__icontains=word).values_list("id", flat=True))
    ids = {row["id"] for row in BookSearchService.search_books(word)}
    if len(expected) <= 50:
        assert ids == expected
    else:
        assert len(ids) == 50 and ids <= expected


def test_get_paginated_books(seeded):
    total = Book.objects.count()
    ordered = list(Book.objects.order_by("-publication_date", "title").values())
    first = get_paginated_books(1)
    assert first == {
        "books": ordered[:20], "has_next": True, "has_previous": False,
        "num_pages": math.ceil(total / 20), "current_page": 1,
    }
    second = get_paginated_books(2)
    assert second["books"] == ordered[20:40]
    assert second["has_previous"] is True

    genre = genre_with_books()
    in_genre = list(Book.objects.filter(genres__genre=genre)
                    .order_by("-publication_date", "title").values())
    by_genre = get_paginated_books(1, genre.slug)
    assert by_genre["books"] == in_genre[:20]
    assert by_genre["num_pages"] == max(1, math.ceil(len(in_genre) / 20))

    with Counted() as again:
        assert get_paginated_books(1) == first
    assert again.hits == 1

    # A new, most recent book leads page 1 once saved (tag book_listings).
    newest = new_book("Newest", published=date.today())
    assert get_paginated_books(1)["books"][0]["id"] == newest.id


def test_books_in_genre_needs_no_signal(seeded):
    """The ORM-layer listing of the sample is invalidated by any write to its tables,
    including writes that send no signal (QuerySet.update, bulk_create)."""
    genre = genre_with_books()
    rows = books_in_genre(genre.slug)
    with Counted() as again:
        assert books_in_genre(genre.slug) == rows
    assert again.hits == 1
    Book.objects.filter(pk=rows[0]["id"]).update(author="Updated Author")
    assert books_in_genre(genre.slug)[0]["author"] == "Updated Author"
    extra = Book.objects.bulk_create([Book(title="0 bulk", author="B", isbn="9990000000077",
                                           publication_date=date(2001, 1, 1))])
    BookGenre.objects.bulk_create([BookGenre(book=extra[0], genre=genre)])
    assert books_in_genre(genre.slug)[0]["title"] == "0 bulk"


# -- management commands -----------------------------------------------------------------

def run_command(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_clear_book_cache_all_books(seeded):
    slug = genre_with_books().slug
    get_books_top(slug)
    BookService.get_book_statistics()
    assert run_command("clear_book_cache", "--all-books") == "All book cache cleared\n"
    with Counted() as books:
        get_books_top(slug)
    with Counted() as stats:
        BookService.get_book_statistics()
    assert (books.misses, stats.hits) == (1, 1)


def test_clear_book_cache_by_tag(seeded):
    slug = genre_with_books().slug
    get_books_top(slug)
    BookService.get_book_statistics()
    out = run_command("clear_book_cache", "--tag", "book_stats")
    assert out == 'Cache with tag "book_stats" cleared\n'
    with Counted() as stats:
        BookService.get_book_statistics()
    with Counted() as books:
        get_books_top(slug)
    assert (stats.misses, books.hits) == (1, 1)
    run_command("clear_book_cache", "--tag", f"books_top:{slug}")
    with Counted() as books:
        get_books_top(slug)
    assert books.misses == 1


def test_clear_book_cache_needs_an_option():
    with pytest.raises(CommandError, match="Specify --tag or --all-books"):
        run_command("clear_book_cache")


def test_cache_stats(seeded):
    slug = genre_with_books().slug
    BACKEND.stats.reset()
    get_books_top(slug)
    get_books_top(slug)
    out = run_command("cache_stats")
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert lines["hits"] == "1"
    assert lines["misses"] == "1"
    assert lines["stores"] == "1"
    assert set(BACKEND.stats.snapshot()) <= set(lines)
    if hasattr(BACKEND, "redis_client"):
        assert re.fullmatch(r"[0-9.]+[BKMG]", lines["Redis memory used"])
    else:
        assert "Redis memory used" not in lines


def test_relaycache_invalidate_model_drops_the_listing(seeded):
    slug = genre_with_books().slug
    books_in_genre(slug)
    out = run_command("relaycache", "invalidate", "--model", "books.Book")
    assert "books_book" in out
    with Counted() as after:
        books_in_genre(slug)
    assert after.misses == 1
