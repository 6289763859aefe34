"""Workload 4, the page load of issue 11, as one worker process runs it.

A read request is one Zipf-chosen book page: the book (``get(pk)``), its publishers
(``select_related("publisher")``) and its genres (the sample's book page query); one
request in :data:`LISTING_EVERY` also opens one of the book's genres, the way the
sample's genre page does it: a ``count()`` of the genre's books (the paginator's) and
one page of 20 of them. A write request changes the chosen book in one of three ways,
picked in turn: ``save(update_fields=["title"])``, ``filter(pk=...).update(title=...)``
or adding/removing one of its ``BookGenre`` rows.

Stale reads are detected as in workload 6, for every read whose data a write of this
workload can change (the book's title, the titles of a listing's books, the book's
genres): every title carries a version (``<title> #v<n>``); writes to one book are
serialized by a Redis lock and record each version (title) or state (genres) with the
time their call returned, on the machine's monotonic clock. A read is stale when it
returns a version older than, or a genre set other than, the last one returned before
the read started (or one written since). The harness' bookkeeping runs outside the
timed calls and its time is subtracted from the window throughput is computed over.
"""

from __future__ import annotations

import bisect
import itertools
import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

perf_ns = time.perf_counter_ns
mono_ns = time.monotonic_ns  # CLOCK_MONOTONIC: one clock for every process

LISTING_EVERY = 5  # one request in five also opens a genre page (count + 20 books)
PAGE_SIZE = 20
MAX_PAGE = 5  # listing page p is chosen with probability 2**-p (p <= MAX_PAGE)
HISTORY = 6  # recorded versions/states kept per book
WRITE_KINDS = ("save", "update", "bookgenre")
QUERY_KINDS = ("get", "publishers", "genres", "listing", "count")
VERSION = re.compile(r" #v(\d+)$")


def version_of(title: str) -> int:
    match = VERSION.search(title)
    return int(match.group(1)) if match else 0


def base_title(title: str) -> str:
    return title.split(" #")[0][:200]


class PageLoad:
    """The page workload for one library in one process (see the module docstring)."""

    def __init__(self, worker: Any, counter: Any, harness: str) -> None:
        from books.models import Book, BookGenre, BookPublisher, Genre

        self.w = worker
        self.lib = worker.lib
        self.client = worker.client
        self.counter = counter
        self.models = Book, BookGenre, BookPublisher, Genre
        self.lock_prefix = f"{harness}w4:lock:"
        self.title_log = f"{harness}w4:titles"  # book -> json [[version, returned_ns], ...]
        self.genre_log = f"{harness}w4:genres"  # book -> json [[n, returned_ns, ids], ...]
        self.version_key = f"{harness}w4:version"  # book -> last title version
        self.initial_genres: dict[int, frozenset[int]] = {}
        for link in self.lib.load_all(BookGenre):
            self.initial_genres[link.book_id] = (
                self.initial_genres.get(link.book_id, frozenset()) | {link.genre_id})
        self.genre_ids = sorted(g.pk for g in self.lib.load_all(Genre))

    # -- reads ---------------------------------------------------------------------

    def page_queries(self, book_id: int) -> list[tuple[str, Callable[[], Any]]]:
        Book, _, BookPublisher, Genre = self.models
        qs = self.lib.qs
        return [
            ("get", lambda: qs(Book).get(pk=book_id)),
            ("publishers", lambda: list(
                qs(BookPublisher).select_related("publisher").filter(book_id=book_id))),
            ("genres", lambda: list(
                qs(Genre).filter(bookgenre__book_id=book_id).order_by("name")
                .values("id", "name", "slug"))),
        ]

    def listing_queries(self, genre: int, page: int) -> list[tuple[str, Callable[[], Any]]]:
        books = self.lib.qs(self.models[0]).filter(genres__genre_id=genre)
        start = (page - 1) * PAGE_SIZE
        return [("count", books.count),
                ("listing", lambda: list(books.order_by("title", "id")
                                         [start:start + PAGE_SIZE]))]

    def run_queries(self, queries: list[tuple[str, Callable[[], Any]]],
                    hits: Counter[str]) -> dict[str, Any]:
        """Run them; ``hits[kind]`` counts those that ran no SELECT."""
        results = {}
        for kind, run in queries:
            before = self.counter.selects
            results[kind] = run()
            if self.counter.selects == before:
                hits[kind] += 1
        return results

    def request(self, book_id: int, rng: random.Random, hits: Counter[str]
                ) -> tuple[dict[str, Any], tuple[int, int] | None]:
        """One page request: the book page, then, one time in LISTING_EVERY, one of
        the book's genres (a page chosen with probability 2**-p)."""
        listing = not rng.randrange(LISTING_EVERY)
        page = 1
        while page < MAX_PAGE and rng.random() < 0.5:
            page += 1
        pick = rng.random()
        results = self.run_queries(self.page_queries(book_id), hits)
        genres = results["genres"]
        if not listing or not genres:
            return results, None
        genre = genres[int(pick * len(genres))]["id"]
        results.update(self.run_queries(self.listing_queries(genre, page), hits))
        return results, (genre, page)

    # -- writes --------------------------------------------------------------------

    def write(self, kind: str, book_id: int, rng: random.Random) -> tuple[int, float]:
        """One write of ``kind`` to the book, serialized per book with the other
        processes; returns the ns the library's call took and the harness' seconds."""
        lock = f"{self.lock_prefix}{book_id}"
        token = str(rng.random())
        spent = -time.monotonic()
        while not self.client.set(lock, token, nx=True, px=5000):
            time.sleep(0.0005)
        try:
            if kind == "bookgenre":
                elapsed = self._toggle_genre(book_id, rng)
            else:
                elapsed = self._title(kind, book_id)
        finally:
            if self.client.get(lock) == token.encode():
                self.client.delete(lock)
        spent += time.monotonic() - elapsed / 1e9
        return elapsed, spent

    def _title(self, kind: str, book_id: int) -> int:
        Book = self.models[0]
        book = self.w.books()[book_id]
        version = self.client.hincrby(self.version_key, str(book_id), 1)
        title = f"{base_title(book.title)} #v{version}"
        t0 = perf_ns()
        if kind == "save":
            book.title = title
            book.save(update_fields=["title"])
        else:
            self.lib.update_one(Book, book_id, title=title)
            book.title = title
        elapsed = perf_ns() - t0
        self._log(self.title_log, book_id, [version, mono_ns()])
        return elapsed

    def _toggle_genre(self, book_id: int, rng: random.Random) -> int:
        BookGenre = self.models[1]
        history = self._history(self.genre_log, book_id)
        initial = self.initial_genres.get(book_id, frozenset())
        current = frozenset(history[-1][2]) if history else initial
        added = sorted(current - initial)
        if added:
            genre, new = added[0], current - {added[0]}
        else:
            genre = rng.choice([g for g in self.genre_ids if g not in current])
            new = current | {genre}
        n = history[-1][0] + 1 if history else 1
        # recorded before the write (no return time yet): a read may see it at once
        self._log(self.genre_log, book_id, [n, None, sorted(new)], history)
        t0 = perf_ns()
        if added:
            BookGenre.objects.filter(book_id=book_id, genre_id=genre).delete()
        else:
            BookGenre.objects.create(book_id=book_id, genre_id=genre)
        elapsed = perf_ns() - t0
        history[-1][1] = mono_ns()
        self.client.hset(self.genre_log, str(book_id), json.dumps(history[-HISTORY:]))
        return elapsed

    def _history(self, key: str, book_id: int) -> list[list[Any]]:
        raw = self.client.hget(key, str(book_id))
        return json.loads(raw) if raw else []

    def _log(self, key: str, book_id: int, entry: list[Any],
             history: list[list[Any]] | None = None) -> None:
        if history is None:
            history = self._history(key, book_id)
        history.append(entry)
        self.client.hset(key, str(book_id), json.dumps(history[-HISTORY:]))

    # -- stale check ---------------------------------------------------------------

    def stale(self, book_id: int, results: dict[str, Any], started_ns: int) -> list[str]:
        """The kinds of query of this request that returned data older than a write
        that had returned before ``started_ns``."""
        titles = {book_id: results["get"].title}
        titles.update((b.pk, b.title) for b in results.get("listing", ()))
        ids = list(titles)
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(self.title_log, [str(i) for i in ids])
        pipe.hget(self.genre_log, str(book_id))
        title_logs, genre_log = pipe.execute()
        found = []
        for pk, raw in zip(ids, title_logs, strict=True):
            if raw is None:
                continue
            needed = max((v for v, t in json.loads(raw) if t < started_ns), default=0)
            if version_of(titles[pk]) < needed:
                found.append("get" if pk == book_id else "listing")
        if genre_log is not None:
            seen = frozenset(g["id"] for g in results["genres"])
            allowed = self._allowed(json.loads(genre_log), book_id, started_ns)
            if allowed is not None and seen not in allowed:
                found.append("genres")
        return sorted(set(found))

    def _allowed(self, history: list[list[Any]], book_id: int, started_ns: int
                 ) -> set[frozenset[int]] | None:
        """The genre sets a read that started at ``started_ns`` may return: the last one
        written before it, and any written (or being written) since."""
        before = [e for e in history if e[1] is not None and e[1] < started_ns]
        later = [frozenset(e[2]) for e in history if e[1] is None or e[1] >= started_ns]
        if before:
            return {frozenset(before[-1][2]), *later}
        if history[0][0] == 1:  # every state since the seed is in the log
            return {self.initial_genres.get(book_id, frozenset()), *later}
        return None  # HISTORY writes during one read: the state before is unknown

    # -- the run -------------------------------------------------------------------

    def prefill(self, ranked: list[int], index: int, procs: int) -> set[tuple[Any, ...]]:
        """Read (and so cache) this process' share of the pages of the ``ranked`` books
        and of every listing page; returns the keys of all processes' shares."""
        unused: Counter[str] = Counter()
        for book_id in ranked[index::procs]:
            self.run_queries(self.page_queries(book_id), unused)
        for genre in self.genre_ids[index::procs]:
            for page in range(1, MAX_PAGE + 1):
                self.run_queries(self.listing_queries(genre, page), unused)
        keys = {(kind, b) for b in ranked for kind in ("get", "publishers", "genres")}
        keys.update(("count", g) for g in self.genre_ids)
        keys.update(("listing", g, p) for g in self.genre_ids for p in range(1, MAX_PAGE + 1))
        return keys

    def run(self, seconds: float, warmup: float, write_ratio: float, seed: int,
            order: list[int], cum: list[float], prefilled: set[tuple[Any, ...]],
            barrier: Callable[[], None]) -> dict[str, Any]:
        total = cum[-1]
        rng = random.Random(seed)
        kinds = itertools.cycle(WRITE_KINDS[seed % 3:] + WRITE_KINDS[:seed % 3])
        barrier()
        start = time.monotonic()
        measure_from = start + warmup
        end = measure_from + seconds
        reads: list[int] = []
        writes: dict[str, list[int]] = {k: [] for k in WRITE_KINDS}
        hits: Counter[str] = Counter()
        queries: Counter[str] = Counter()
        cold: Counter[str] = Counter()
        stale: Counter[str] = Counter()
        examples: list[dict[str, Any]] = []
        seen: set[tuple[Any, ...]] = set()
        harness_s = 0.0
        checked = errors = 0
        error_text = ""
        while True:
            now = time.monotonic()
            if now >= end:
                break
            measuring = now >= measure_from
            book_id = order[bisect.bisect_left(cum, rng.random() * total)]
            try:
                if rng.random() < write_ratio:
                    write_kind = next(kinds)
                    elapsed, spent = self.write(write_kind, book_id, rng)
                    if measuring:
                        writes[write_kind].append(elapsed)
                        harness_s += spent
                    continue
                page_hits: Counter[str] = Counter()
                started = mono_ns()
                t0 = perf_ns()
                results, listing = self.request(book_id, rng, page_hits)
                elapsed = perf_ns() - t0
            except Exception as exc:
                errors += 1
                error_text = error_text or f"{type(exc).__name__}: {exc}"
                continue
            h0 = time.monotonic()
            keys: list[tuple[Any, ...]] = [(k, book_id) for k in ("get", "publishers", "genres")]
            if listing is not None:
                keys += [("count", listing[0]), ("listing", *listing)]
            if measuring:
                reads.append(elapsed)
                for key in keys:
                    kind = key[0]
                    queries[kind] += 1
                    hits[kind] += page_hits[kind]
                    if not page_hits[kind] and key not in seen and key not in prefilled:
                        cold[kind] += 1
                checked += 1
                for kind in self.stale(book_id, results, started):
                    stale[kind] += 1
                    if len(examples) < 3:
                        examples.append({"kind": kind, "book": book_id})
            seen.update(keys)
            if measuring:
                harness_s += time.monotonic() - h0
        return {"reads": reads, "writes": writes, "queries": dict(queries),
                "hits": dict(hits), "cold_misses": dict(cold), "stale": dict(stale),
                "stale_checked": checked, "stale_examples": examples, "seconds": seconds,
                "harness_s": harness_s, "errors": errors, "error": error_text}
