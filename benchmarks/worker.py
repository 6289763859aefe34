"""One benchmark worker process: Django set up for ONE library (``BENCH_LIBRARY``).

The harness (:mod:`benchmarks.run`) starts it, sends one JSON command per line on its
standard input and reads one JSON reply per line from its standard output (anything a
library prints goes to standard error instead). Commands that several processes run at
once (mixed load, stampede, stale-read check) meet at a barrier in Redis: each process
increments a ready counter, then blocks on a list the harness pushes "go" tokens to.

Every SQL statement the process runs is counted by an ``execute_wrapper`` installed on
each connection, so "served from the cache" always means "no SELECT reached
PostgreSQL", for every library alike.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import itertools
import json
import os
import random
import statistics
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from typing import Any

import redis

from benchmarks.keyspace import prefix_usage

perf_ns = time.perf_counter_ns
cpu_ns = time.process_time_ns  # CPU of the whole worker process (all its threads)


# -- SQL statement counter ---------------------------------------------------------------

class _Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.selects = 0
        self.writes = 0

    def __call__(self, execute: Any, sql: Any, params: Any, many: bool, context: Any) -> Any:
        try:
            return execute(sql, params, many, context)
        finally:
            select = isinstance(sql, str) and sql.lstrip()[:6].upper() == "SELECT"
            with self.lock:
                if select:
                    self.selects += 1
                else:
                    self.writes += 1


DB = _Counter()


def _install_counter(connection: Any, **kwargs: Any) -> None:
    if DB not in connection.execute_wrappers:
        connection.execute_wrappers.insert(0, DB)


def _neutralize_relaycache() -> None:
    """The sample's models import relaycache (``CachedManager``), which hooks every
    connection and the sample's signal receivers invalidate its backend. In the other
    libraries' processes neither must cost anything."""
    from books import signals
    from books.models import Book, BookGenre, BookPublisher
    from django.db import connections
    from django.db.backends.signals import connection_created
    from django.db.models.signals import post_delete, post_save

    from relaycache.orm import invalidation

    connection_created.disconnect(dispatch_uid="relaycache.orm.install")
    for conn in connections.all(initialized_only=True):
        if invalidation._on_execute in conn.execute_wrappers:
            conn.execute_wrappers.remove(invalidation._on_execute)
    for signal in (post_save, post_delete):
        for sender in (Book, BookGenre, BookPublisher):
            signal.disconnect(signals.invalidate_book_listings, sender=sender)


@contextlib.contextmanager
def _without_sample_receivers(active: bool) -> Iterator[None]:
    """The sample's receivers that keep its ``@cache`` services' tags fresh, off: the
    page load reads no such service, and a site that only uses ``.cached()`` querysets
    has none, so they would add an ``invalidate()`` round trip to every relaycache
    write that is no cost of its ORM cache."""
    if not active:
        yield
        return
    from books import signals
    from books.models import Book, BookGenre, BookPublisher
    from django.db.models.signals import post_delete, post_save

    pairs = [(signal, sender) for signal in (post_save, post_delete)
             for sender in (Book, BookGenre, BookPublisher)]
    for signal, sender in pairs:
        signal.disconnect(signals.invalidate_book_listings, sender=sender)
    try:
        yield
    finally:
        for signal, sender in pairs:
            signal.connect(signals.invalidate_book_listings, sender=sender)


def summary(samples: list[int]) -> dict[str, Any]:
    ordered = sorted(samples)
    n = len(ordered)
    return {"n": n, "median_ns": statistics.median(ordered),
            "p10_ns": ordered[n // 10], "p90_ns": ordered[min(n - 1, (n * 9) // 10)],
            "p99_ns": ordered[min(n - 1, (n * 99) // 100)]}


# Lua: copy one entry under ``count`` new keys (and add them to a set, for cacheops'
# conj sets); run in batches so that no call blocks the shared server for long.
_CLONE = """
local v = redis.call('GET', KEYS[1])
if not v then return -1 end
local first = tonumber(ARGV[2])
local ttl = tonumber(ARGV[4])
for i = first, first + tonumber(ARGV[3]) - 1 do
  local k = ARGV[1] .. i
  redis.call('SET', k, v, 'PX', ttl)
  if ARGV[5] ~= '' then redis.call('SADD', ARGV[5], k) end
end
return 1
"""
CLONE_BATCH = 5_000


class Worker:
    def __init__(self) -> None:
        from django.conf import settings
        from django.db import connection
        from django.db.backends.signals import connection_created

        from benchmarks import libs

        self.settings = settings
        self.name = settings.LIBRARY
        self.relay = self.name in settings.RELAYCACHE_LIBS  # this project's cache
        if not self.relay:
            _neutralize_relaycache()
        connection_created.connect(_install_counter, weak=False)
        if connection.connection is not None:
            _install_counter(connection)
        self.client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=30)
        self.libs = libs
        self.lib = libs.LIBRARY_CLASSES[self.name](self.client)
        self.plain = libs.Library(self.client)
        self.floor = (libs.Floor(self.client, settings.PREFIXES["floor"],
                                 in_process=self.name == "dict")
                      if self.name in ("floor", "dict") else None)
        self.params: dict[str, Any] = {}
        self._books: dict[int, Any] | None = None
        self._clone_script = self.client.register_script(_CLONE)
        self.harness = settings.HARNESS_PREFIX
        self._pageload: Any = None
        self._pg: tuple[Any, int] | None = None

    # -- CPU of the worker and of its PostgreSQL backend -------------------------------

    def pg_pid(self) -> int:
        """The PID of this process' PostgreSQL backend (``SELECT pg_backend_pid()``,
        asked again only when Django opened a new connection)."""
        from django.db import connection

        connection.ensure_connection()
        if self._pg is None or self._pg[0] is not connection.connection:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                self._pg = (connection.connection, cursor.fetchone()[0])
        return self._pg[1]

    @staticmethod
    def pg_cpu_ns(pid: int) -> int | None:
        """CPU time the backend ``pid`` has used (same machine): the scheduler's exact
        ``/proc/<pid>/schedstat`` run time, else utime + stime of ``/proc/<pid>/stat``
        (clock ticks); None when neither can be read (another host)."""
        try:
            with open(f"/proc/{pid}/schedstat", "rb") as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf(
                "SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def cpu_marks(self) -> tuple[int, int | None]:
        return cpu_ns(), self.pg_cpu_ns(self.pg_pid())

    # -- helpers -------------------------------------------------------------------

    def barrier(self, name: str, timeout: float = 120.0) -> None:
        self.client.incr(f"{self.harness}b:{name}:ready")
        if self.client.blpop([f"{self.harness}b:{name}:go"], timeout=timeout) is None:
            raise RuntimeError(f"barrier {name}: never told to go")

    def books(self) -> dict[int, Any]:
        if self._books is None:
            from books.models import Book

            self._books = {b.pk: b for b in self.lib.load_all(Book)}
        return self._books

    def call(self, query: str) -> Any:
        if self.floor is not None:
            return self.floor.readers[query]()
        return self.libs.QUERIES[query].run(self.lib, self.params)

    # -- setup ----------------------------------------------------------------------

    def cmd_migrate_seed(self, books: int, genres: int, publishers: int) -> dict[str, Any]:
        from books.models import Book, BookPublisher, Genre, Publisher
        from django.core.management import call_command

        started = time.monotonic()
        call_command("migrate", verbosity=0)
        call_command("seed_books", books=books, genres=genres, publishers=publishers,
                     no_progress=True, stdout=sys.stderr)
        return {"seconds": time.monotonic() - started, "books": Book.objects.count(),
                "genres": Genre.objects.count(), "publishers": Publisher.objects.count(),
                "book_publishers": BookPublisher.objects.count()}

    def cmd_params(self) -> dict[str, Any]:
        """Parameters of workload 1, the same in every process: the genre with the most
        featured books, the median book and publisher."""
        from books.models import Book, Genre, Publisher
        from django.db.models import Count, Q

        genre = (Genre.objects.annotate(n=Count("bookgenre", filter=Q(
            bookgenre__book__is_featured=True))).order_by("-n", "id").first())
        ids = list(Book.objects.order_by("id").values_list("id", flat=True))
        pubs = list(Publisher.objects.order_by("id").values_list("id", flat=True))
        return {"slug": genre.slug, "book_id": ids[len(ids) // 2],
                "publisher_id": pubs[len(pubs) // 2], "book_ids": [ids[0], ids[-1]],
                "books": len(ids)}

    def cmd_set_params(self, params: dict[str, Any]) -> bool:
        self.params = params
        if self.floor is not None:
            for query in self.libs.QUERIES.values():
                self.floor.prepare(query, query.run(self.plain, params))
        return True

    def cmd_reset(self) -> int:
        return self.lib.reset()

    def cmd_make_stale_rows(self, count: int) -> list[int]:
        import datetime as dt

        from books.models import Book, BookPublisher, Publisher

        publisher = Publisher.objects.order_by("id").first()
        stamp = os.urandom(3).hex()
        books = Book.objects.bulk_create(
            Book(title="v000000000", author="stale checker", isbn=f"s{stamp}{i:04d}"[:13],
                 publication_date=dt.date(2000, 1, 1)) for i in range(count))
        BookPublisher.objects.bulk_create(
            BookPublisher(book=b, publisher=publisher, position=0) for b in books)
        return [b.pk for b in books]

    def cmd_exit(self) -> bool:
        return True

    # -- workload 1: hits -----------------------------------------------------------

    def cmd_hit(self, query: str, n: int, budget_s: float, warmup: int,
                min_n: int = 20) -> dict[str, Any]:
        for _ in range(warmup):
            result = self.call(query)
        pid = self.pg_pid()
        stats = self._backend_stats()
        selects = DB.selects
        samples: list[int] = []
        deadline = time.monotonic() + budget_s
        cpu0, pg0 = cpu_ns(), self.pg_cpu_ns(pid)
        for i in range(n):
            t0 = perf_ns()
            result = self.call(query)
            samples.append(perf_ns() - t0)
            if i >= min_n and time.monotonic() > deadline:
                break
        cpu1, pg1 = cpu_ns(), self.pg_cpu_ns(pid)
        out = summary(samples)
        out.update(db_selects=DB.selects - selects, fingerprint=self.libs.fingerprint(result),
                   backend=self._stats_delta(stats), cpu_ns=cpu1 - cpu0,
                   pg_cpu_ns=None if pg0 is None or pg1 is None else pg1 - pg0)
        return out

    def cmd_page_cpu(self, books: list[int], budget_s: float, min_n: int = 20
                     ) -> dict[str, Any]:
        """CPU of fully cached book pages (workload 4's three page queries, each a hit
        for the caches): the pages of ``books`` are read twice first, then read in turn
        for ``budget_s``. Returns the pages read, their wall time, the worker's CPU and
        its PostgreSQL backend's CPU, and the SELECTs they ran."""
        from benchmarks.pageload import PageLoad

        if self._pageload is None:
            self._pageload = PageLoad(self, DB, self.harness)
        load = self._pageload
        unused: Counter[str] = Counter()
        for _ in range(2):
            for book_id in books:
                load.run_queries(load.page_queries(book_id), unused)
        pid = self.pg_pid()
        selects = DB.selects
        deadline = time.monotonic() + budget_s
        pages = 0
        t0, cpu0, pg0 = perf_ns(), cpu_ns(), self.pg_cpu_ns(pid)
        while pages < min_n or time.monotonic() < deadline:
            for _kind, run in load.page_queries(books[pages % len(books)]):
                run()
            pages += 1
        t1, cpu1, pg1 = perf_ns(), cpu_ns(), self.pg_cpu_ns(pid)
        return {"pages": pages, "wall_ns": t1 - t0, "cpu_ns": cpu1 - cpu0,
                "pg_cpu_ns": None if pg0 is None or pg1 is None else pg1 - pg0,
                "db_selects": DB.selects - selects}

    def _backend_stats(self) -> dict[str, int] | None:
        if not self.relay:
            return None
        return dict(self.settings.CACHE_BACKEND.stats.snapshot())

    def _stats_delta(self, before: dict[str, int] | None) -> dict[str, int] | None:
        if before is None:
            return None
        after = self.settings.CACHE_BACKEND.stats.snapshot()
        return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}

    def cmd_profile(self, query: str, n: int, warmup: int = 50, top: int = 30,
                    miss: bool = False) -> dict[str, Any]:
        """cProfile of ``n`` calls of a workload-1 query (or ``invalidate``: the
        invalidation a books_book write triggers), after an unprofiled timing. With
        ``miss``, the query's tables are invalidated before each call, untimed and
        unprofiled, as in workload 2."""
        import cProfile
        import io
        import pstats

        q = self.libs.QUERIES.get(query)
        book_id = self.params["book_id"] if query == "decorator" else None

        def call() -> Any:
            if query == "invalidate":
                return self.lib.invalidate_table_only()
            return self.call(query)

        def prepare() -> None:
            if miss and q is not None:
                self.lib.invalidate_tables(q.models, book_id)

        for _ in range(warmup):
            prepare()
            call()
        samples = []
        for _ in range(n):
            prepare()
            t0 = perf_ns()
            call()
            samples.append(perf_ns() - t0)
        profiler = cProfile.Profile()
        for _ in range(n):
            prepare()
            profiler.enable()
            call()
            profiler.disable()
        text = {}
        for order in ("cumulative", "tottime"):
            buf = io.StringIO()
            pstats.Stats(profiler, stream=buf).strip_dirs().sort_stats(order).print_stats(top)
            text[order] = buf.getvalue()
        return {"timing": summary(samples), "profile": text,
                "keys": self.client.dbsize()}

    def cmd_fill_copies(self, count: int) -> int:
        """Add ``count`` valid copies of one books_book entry (for profiling
        invalidation with many entries); returns the keys in the database."""
        list(self._inval_queryset(0))
        template = self._entry_key(self._inval_queryset(0))
        add_to = self._conj_key if self.name == "cacheops" else ""
        self._clone(template, 10_000_000, count, add_to)
        return self.client.dbsize()

    # -- workload 2: misses ---------------------------------------------------------

    def cmd_miss(self, query: str, n: int, budget_s: float, min_n: int = 10
                 ) -> dict[str, Any]:
        q = self.libs.QUERIES[query]
        book_id = self.params["book_id"] if query == "decorator" else None
        self.call(query)
        pid = self.pg_pid()
        pg_cpu = self.pg_cpu_ns
        samples: list[int] = []
        selects = cpu = 0
        pg: int | None = 0
        deadline = time.monotonic() + budget_s
        for i in range(n):
            self.lib.invalidate_tables(q.models, book_id)
            before = DB.selects
            c0, p0 = cpu_ns(), pg_cpu(pid)
            t0 = perf_ns()
            self.call(query)
            samples.append(perf_ns() - t0)
            c1, p1 = cpu_ns(), pg_cpu(pid)
            cpu += c1 - c0
            pg = None if pg is None or p0 is None or p1 is None else pg + p1 - p0
            selects += DB.selects - before
            if i >= min_n and time.monotonic() > deadline:
                break
        out = summary(samples)
        out["db_selects_per_call"] = selects / len(samples)
        out.update(cpu_ns=cpu, pg_cpu_ns=pg)
        return out

    # -- workload 3: invalidation cost versus entries --------------------------------

    def _inval_queryset(self, i: int) -> Any:
        """Reads the title: a title save changes what it shows (RelayCache drops
        only the entries naming the columns an UPDATE sets)."""
        from books.models import Book

        return (self.lib.qs(Book).filter(id__gte=i).order_by("id")
                .values_list("id", "title")[:1])

    def _inval_tags(self) -> list[str]:
        """The tags of RelayCache's workload-3 entries (all alike but for ``i``)."""
        return list(self._inval_queryset(0).cache_info().tags)

    def _entry_key(self, queryset: Any) -> str:
        """The raw Redis key the library stored ``queryset``'s result under."""
        if self.relay:
            return self.settings.CACHE_BACKEND.value_key(queryset.cache_info().key)
        if self.name == "cacheops":
            return queryset._cache_key()
        if self.name == "cachalot":
            from cachalot.settings import cachalot_settings
            from django.core.cache import caches

            compiler = queryset.query.get_compiler("default")
            return caches["default"].make_key(cachalot_settings.CACHALOT_QUERY_KEYGEN(compiler))
        raise ValueError(self.name)

    def _clone_key(self, i: int) -> str:
        p = self.lib.prefix
        return {"relaycache": f"{p}orm:fill:{i}", "relaycache_near": f"{p}orm:fill:{i}",
                "cacheops": f"{p}q:fill{i}", "cachalot": f"{p}:1:fill{i}"}[self.name]

    def _clone(self, template: str, first: int, count: int, add_to: str) -> None:
        prefix = self._clone_key(0)[:-1]
        ttl_ms = self.settings.CACHE_TTL * 1000
        done = 0
        while done < count:
            size = min(CLONE_BATCH, count - done)
            if self._clone_script(keys=[template], args=[prefix, first + done, size, ttl_ms,
                                                  add_to]) != 1:
                raise RuntimeError(f"template entry {template} is gone")
            done += size

    def _clone_valid(self, i: int) -> bool:
        """Whether clone ``i`` would be served, by the library's own rule."""
        key = self._clone_key(i)
        if self.relay:
            backend = self.settings.CACHE_BACKEND
            hit, _ = backend.get(key[len(backend.value_prefix):], tags=self._inval_tags())
            return hit
        if self.name == "cacheops":
            return bool(self.client.exists(key)) and bool(
                self.client.sismember(self._conj_key, key))
        if self.name == "cachalot":
            from django.core.cache import caches

            cache = caches["default"]
            entry = cache.get(f"fill{i}")  # Django adds "<KEY_PREFIX>:1:"
            stamp = cache.get(self._cachalot_table_key())
            return entry is not None and stamp is not None and entry[0] >= stamp
        raise ValueError(self.name)

    def _cachalot_table_key(self) -> str:
        from cachalot.settings import cachalot_settings

        return cachalot_settings.CACHALOT_TABLE_KEYGEN("default", "books_book")

    @property
    def _conj_key(self) -> str:
        return f"{self.lib.prefix}conj:books_book:"

    def cmd_inval(self, size: int, api_entries: int, repeats: int, refill_budget: int
                  ) -> dict[str, Any]:
        """``size`` valid entries under books_book (``api_entries`` of them real cached
        querysets, the rest copies of one, written in the library's own layout), then
        the median time of the invalidation a write triggers, and of a whole save()."""
        from books.models import Book

        lib = self.lib
        lib.reset()
        n_api = min(size - 1, api_entries)  # at least one copy: the probe of validity
        t0 = time.monotonic()
        for i in range(n_api):
            list(self._inval_queryset(i))
        fill_api = time.monotonic() - t0
        template = self._entry_key(self._inval_queryset(0))
        if not self.client.exists(template):
            raise RuntimeError(f"{self.name}: no entry at {template}")
        holder = f"{lib.prefix}tpl:inval"  # a copy no invalidation deletes
        self.client.copy(template, holder, replace=True)
        add_to = self._conj_key if self.name == "cacheops" else ""
        if add_to and not self.client.sismember(add_to, template):
            raise RuntimeError(f"cacheops entry {template} is not in {add_to}")
        t0 = time.monotonic()
        self._clone(holder, n_api, size - n_api, add_to)
        fill_clone = time.monotonic() - t0
        keys = self.client.dbsize()

        # What makes the entries valid again after a timed invalidation.
        if self.relay:
            backend = self.settings.CACHE_BACKEND
            stamp_keys = backend.stamp_keys(self._inval_tags())
            saved = self.client.mget(stamp_keys)
            stamp_ms = int(backend.stamp_ttl * 1000)

            def restore() -> None:
                pipe = self.client.pipeline(transaction=False)
                for skey, value in zip(stamp_keys, saved, strict=True):
                    pipe.set(skey, value, px=stamp_ms)
                pipe.execute()
        elif self.name == "cachalot":
            from django.core.cache import caches

            table_key = caches["default"].make_key(self._cachalot_table_key())
            saved_stamp = self.client.get(table_key)

            def restore() -> None:
                self.client.set(table_key, saved_stamp, px=self.settings.CACHE_TTL * 1000)
        else:
            def restore() -> None:  # cacheops deleted them: write them all again
                self._clone(holder, 0, size, add_to)

        book = self.lib.load_all(Book, [self.params["book_id"]])[0]
        base_title = book.title[:200]
        probe = size - 1
        checks: Counter[str] = Counter()
        timings: dict[str, list[int]] = {"invalidate": [], "save": []}
        reps = repeats
        if self.name == "cacheops":
            reps = max(1, min(repeats, refill_budget // (2 * size)))
        counter = itertools.count()
        for rep in range(reps):
            for kind in ("invalidate", "save"):
                if rep or kind == "save":
                    restore()
                checks["valid_before"] += self._clone_valid(probe)
                if rep == 0 and kind == "invalidate":
                    before = DB.selects
                    list(self._inval_queryset(0))
                    checks["api_hit_before"] += DB.selects == before
                if kind == "invalidate":
                    t0 = perf_ns()
                    lib.invalidate_table_only()
                    timings[kind].append(perf_ns() - t0)
                else:
                    book.title = f"{base_title} #{next(counter)}"
                    t0 = perf_ns()
                    book.save(update_fields=["title"])
                    timings[kind].append(perf_ns() - t0)
                checks["invalid_after"] += not self._clone_valid(probe)
                if rep == 0 and kind == "invalidate":
                    before = DB.selects
                    list(self._inval_queryset(0))
                    checks["api_miss_after"] += DB.selects == before + 1
        checks["samples"] = 2 * reps
        result = {"size": size, "api_entries": n_api, "cloned_entries": size - n_api,
                  "fill_api_s": fill_api, "fill_clone_s": fill_clone, "db_keys": keys,
                  "repeats": reps, "checks": dict(checks)}
        for kind, samples in timings.items():
            result[kind] = summary(samples)
        lib.reset()
        return result

    # -- workload 4: mixed load ------------------------------------------------------

    def _zipf(self, s: float) -> tuple[list[int], list[float]]:
        ids = sorted(self.books())
        order = ids[:]
        random.Random(42).shuffle(order)  # popularity is not id order
        weights = itertools.accumulate(1.0 / (rank ** s) for rank in range(1, len(order) + 1))
        return order, list(weights)

    def _page(self, book_id: int) -> None:
        from books.models import Book, BookPublisher

        self.lib.qs(Book).get(pk=book_id)
        list(self.lib.qs(BookPublisher).select_related("publisher").filter(book_id=book_id))

    def _write(self, book_id: int, n: int) -> None:
        book = self.books()[book_id]
        book.title = f"{book.title.split(' #')[0][:200]} #{n}"
        book.save(update_fields=["title"])

    def cmd_mixed(self, seconds: float, warmup: float, write_ratio: float, seed: int,
                  barrier: str, index: int, procs: int, prefill: int,
                  zipf_s: float = 1.1) -> dict[str, Any]:
        """The page load of :mod:`benchmarks.pageload`: first this process' share of
        the ``prefill`` most popular books' pages and of the listings is read (so
        that the run starts warm), then all processes start together."""
        order, cum = self._zipf(zipf_s)
        if self._pageload is None:
            from benchmarks.pageload import PageLoad

            self._pageload = PageLoad(self, DB, self.harness)
        load = self._pageload
        t0 = time.monotonic()
        prefilled = load.prefill(order[:prefill], index, procs)
        prefill_s = time.monotonic() - t0
        stats = self._backend_stats()
        with _without_sample_receivers(self.relay):
            result = load.run(seconds, warmup, write_ratio, seed, order, cum, prefilled,
                              lambda: self.barrier(barrier))
        result["prefill_s"] = prefill_s
        result["backend"] = self._stats_delta(stats)
        return result

    # -- workload 5: stampede --------------------------------------------------------

    def cmd_stampede(self, threads: int, round_no: int, barrier: str) -> dict[str, Any]:
        from books.models import Book
        from django.db import connection

        def query() -> Any:
            return list(self.lib.qs_singleflight(Book)
                        .filter(is_featured=True, id__gte=-1000 - round_no)
                        .order_by("-publication_date", "id").values("id", "title")[:10])

        connected = threading.Barrier(threads + 1)
        go = threading.Event()
        results: list[Any] = [None] * threads

        def run(i: int) -> None:
            try:
                connection.ensure_connection()
                connected.wait()
                go.wait()
                t0 = perf_ns()
                rows = query()
                results[i] = (perf_ns() - t0, self.libs.fingerprint(rows), None)
            except Exception:
                results[i] = (0, None, traceback.format_exc())
            finally:
                connection.close()

        pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
        for t in pool:
            t.start()
        connected.wait()
        before = DB.selects
        stats = self._backend_stats()
        self.barrier(barrier)
        go.set()
        for t in pool:
            t.join(120)
        return {"db_selects": DB.selects - before,
                "latencies_ns": [r[0] for r in results if r],
                "fingerprints": sorted({r[1] for r in results if r and r[1]}),
                "errors": [r[2] for r in results if r and r[2]][:2],
                "backend": self._stats_delta(stats)}

    # -- workload 6: stale reads -----------------------------------------------------

    def cmd_stale(self, role: str, seconds: float, rows: list[int], seed: int, barrier: str,
                  zset: str, pause: float) -> dict[str, Any]:
        rng = random.Random(seed)
        self.barrier(barrier)
        if role == "writer":
            return self._stale_writer(seconds, rows, rng, zset, pause)
        return self._stale_reader(seconds, rows, rng, zset)

    def _stale_writer(self, seconds: float, rows: list[int], rng: random.Random, zset: str,
                      pause: float) -> dict[str, Any]:
        from books.models import Book
        from django.db import transaction

        books = {b.pk: b for b in self.lib.load_all(Book, rows)}
        version = dict.fromkeys(rows, 0)
        ops: Counter[str] = Counter()

        def save() -> dict[int, int]:
            pk = rng.choice(rows)
            version[pk] += 1
            books[pk].title = f"v{version[pk]:09d}"
            books[pk].save(update_fields=["title"])
            return {pk: version[pk]}

        def update() -> dict[int, int]:
            pk = rng.choice(rows)
            version[pk] += 1
            self.lib.update_one(Book, pk, title=f"v{version[pk]:09d}")
            return {pk: version[pk]}

        def atomic() -> dict[int, int]:
            first, second = rng.sample(rows, 2)
            with transaction.atomic():
                version[first] += 1
                books[first].title = f"v{version[first]:09d}"
                books[first].save(update_fields=["title"])
                version[second] += 1
                self.lib.update_one(Book, second, title=f"v{version[second]:09d}")
            return {first: version[first], second: version[second]}

        operations = [save, update, atomic]
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            op = operations[sum(ops.values()) % len(operations)]
            written = op()  # returned: from now on no read may see older versions
            self.client.zadd(zset, {str(pk): v for pk, v in written.items()}, gt=True)
            ops[op.__name__] += 1
            time.sleep(rng.uniform(0, pause))
        return {"role": "writer", "writes": sum(ops.values()), "ops": dict(ops)}

    def _stale_reader(self, seconds: float, rows: list[int], rng: random.Random, zset: str
                      ) -> dict[str, Any]:
        from books.models import Book, BookPublisher

        lib = self.lib

        def version(title: str) -> int:
            return int(title[1:10])

        def get() -> list[tuple[int, int]]:
            pk = rng.choice(rows)
            return [(pk, version(lib.qs(Book).get(pk=pk).title))]

        def instances() -> list[tuple[int, int]]:
            return [(b.pk, version(b.title)) for b in
                    lib.qs(Book).filter(pk__in=rows).order_by("id")]

        def values() -> list[tuple[int, int]]:
            return [(r["id"], version(r["title"])) for r in
                    lib.qs(Book).filter(pk__in=rows).values("id", "title")]

        def select_related() -> list[tuple[int, int]]:
            return [(bp.book_id, version(bp.book.title)) for bp in
                    lib.qs(BookPublisher).select_related("book").filter(book_id__in=rows)]

        shapes = [get, get, instances, values, select_related]
        reads = stale = hits = 0
        per_shape: Counter[str] = Counter()
        stale_shapes: Counter[str] = Counter()
        examples: list[Any] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            need = {int(m): int(s) for m, s in self.client.zrange(zset, 0, -1, withscores=True)}
            shape = rng.choice(shapes)
            before = DB.selects
            seen = shape()
            hits += DB.selects == before
            reads += 1
            per_shape[shape.__name__] += 1
            old = [(pk, v, need[pk]) for pk, v in seen if v < need.get(pk, 0)]
            if old:
                stale += 1
                stale_shapes[shape.__name__] += 1
                if len(examples) < 3:
                    examples.append({"shape": shape.__name__, "row": old[0][0],
                                     "seen": old[0][1], "returned_before": old[0][2]})
        return {"role": "reader", "reads": reads, "stale": stale, "hits": hits,
                "shapes": dict(per_shape), "stale_shapes": dict(stale_shapes),
                "examples": examples}

    # -- workload 7: memory ----------------------------------------------------------

    def cmd_entry_memory(self, count: int) -> dict[str, Any]:
        """Redis bytes per cached entry: ``count`` distinct get(pk) entries, then
        ``count // 4`` distinct 20-row lists."""
        from books.models import Book

        ids = sorted(self.books())[:count]
        out = {}
        shapes = {
            "get": (ids, lambda i: self.lib.qs(Book).get(pk=i)),
            "list20": (ids[: max(1, count // 4)],
                       lambda i: list(self.lib.qs(Book).filter(id__gte=i).order_by("id")[:20])),
        }
        for shape, (args, read) in shapes.items():
            self.lib.reset()
            base = prefix_usage(self.client, self.lib.prefix)
            if self.name == "floor":
                self._floor_entries(shape, args)
            else:
                for i in args:
                    read(i)
                    read(i)
            usage = prefix_usage(self.client, self.lib.prefix)
            out[shape] = {"entries": len(args), "keys": usage["keys"] - base["keys"],
                          "bytes": usage["bytes"] - base["bytes"],
                          "bytes_per_entry": (usage["bytes"] - base["bytes"]) / len(args),
                          "kinds": usage["kinds"]}
        self.lib.reset()
        return out

    def _floor_entries(self, shape: str, args: list[int]) -> None:
        import orjson
        from books.models import Book

        pipe = self.client.pipeline(transaction=False)
        for i in args:
            objs = ([Book.objects.get(pk=i)] if shape == "get"
                    else list(Book.objects.filter(id__gte=i).order_by("id")[:20]))
            rows = [[c.isoformat() if hasattr(c, "isoformat") else c
                     for c in (getattr(o, f.attname) for f in Book._meta.concrete_fields)]
                    for o in objs]
            pipe.set(f"{self.lib.prefix}{shape}:{i}", orjson.dumps(rows),
                     px=self.settings.CACHE_TTL * 1000)
        pipe.execute()

    def cmd_growth(self, writes: int, reads_per_write: float, seed: int) -> dict[str, Any]:
        """``writes`` single-row saves of Zipf-chosen books, with page reads between
        them (``reads_per_write`` on average)."""
        order, cum = self._zipf(1.1)
        total = cum[-1]
        rng = random.Random(seed)
        t0 = time.monotonic()
        done = 0
        start = int(seed) * 10_000_000
        while done < writes:
            book_id = order[bisect.bisect_left(cum, rng.random() * total)]
            if rng.random() < reads_per_write / (1 + reads_per_write):
                self._page(book_id)
                continue
            done += 1
            self._write(book_id, start + done)
        return {"writes": writes, "seconds": time.monotonic() - t0}


def main() -> None:
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever a library prints goes to stderr, not into the protocol
    sys.stdout = sys.stderr
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    import django

    django.setup()
    worker = Worker()
    gc.collect()
    out.write(json.dumps({"ok": True, "result": {"pid": os.getpid(), "ready": True}}) + "\n")
    for line in sys.stdin:
        message = json.loads(line)
        command = message.pop("cmd")
        try:
            reply = {"ok": True, "result": getattr(worker, f"cmd_{command}")(**message)}
        except Exception:
            reply = {"ok": False, "error": traceback.format_exc()}
        out.write(json.dumps(reply) + "\n")
        if command == "exit":
            break


if __name__ == "__main__":
    main()
