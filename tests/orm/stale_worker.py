"""Stale-read checker for invariant 1 of DESIGN.md ("fresh after write"), with real
processes on a real PostgreSQL and a real Redis.

W writer processes change a handful of ``Book`` rows, each change bumping the row's
version (kept in ``Book.price``), through every kind of write: ``save()``,
``QuerySet.update()``, ``bulk_update()``, raw SQL on the ORM connection, ``atomic``
blocks with savepoints (released and rolled back), ``select_for_update``, a transaction
managed by hand (autocommit off, ``commit()``) and an ``atomic`` block whose first
``on_commit`` callback raises (a task queue that is down). Once a write's call has
*returned*, the writer records the row's new version in a Redis sorted set (``ZADD GT``:
the highest version known to be committed and returned).

R reader processes loop: read that sorted set first, then read the rows through
``Book.objects.cached()`` in many shapes (``get``, instances, ``values``,
``values_list``, ``exists``, ``count``, ``aggregate``, ``select_related`` from another
model, reads inside ``atomic``). A read is *stale* when it shows a row at a version
older than one whose write had returned before the read started. The readers count
their reads, their stale reads and their backend's ``stats`` (hits prove the cache
actually served, so the check cannot pass by never caching).

``--broken`` is the negative control: readers go through a plain ``@cache`` function
with a fixed tag no write ever invalidates, and the checker must report stale reads.

By hand (creates and drops a scratch database; exit status 1 when stale > 0)::

    RELAYCACHE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \\
    RELAYCACHE_TEST_REDIS_URL=redis://127.0.0.1:6379/15 \\
    .venv/bin/python -m tests.orm.stale_worker --seconds 10 [--broken]

It prints ``reads=N stale=M hits=H ...``. Every Redis key it uses (cache entries, tag
stamps, the harness's own keys) is under a per-run prefix and deleted at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[2]
CONFIG_ENV = "RELAYCACHE_STALE_WORKER"
# A worker's database session cannot wait on a lock or a statement for ever.
PG_SESSION_OPTIONS = "-c statement_timeout=10000 -c lock_timeout=10000"
MAX_EXAMPLES = 8


# -- shared helpers ------------------------------------------------------------------

class Keys:
    """The harness's own Redis keys (the cache's live under ``{run}:c:``)."""

    def __init__(self, run: str) -> None:
        self.run = run
        self.cache_prefix = f"{run}:c:"
        self.committed = f"{run}:h:committed"  # zset: row id -> highest returned version
        self.ops = f"{run}:h:ops"  # hash: "row:version" -> the writer operation that made it
        self.ready = f"{run}:h:ready"
        self.go = f"{run}:h:go"


def configure_django(databases: dict[str, Any], relaycache: dict[str, Any] | None) -> None:
    """Set up Django from ``tests.settings`` with these ``DATABASES`` (and ``RELAYCACHE``)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django
    from django.conf import settings

    settings.DATABASES = databases
    if relaycache is not None:
        settings.RELAYCACHE = relaycache
    django.setup()


def database_settings(settings_dict: dict[str, Any]) -> dict[str, Any]:
    """The connection settings a worker needs to reach the same database."""
    options = dict(settings_dict.get("OPTIONS") or {})
    options["options"] = (options.get("options", "") + " " + PG_SESSION_OPTIONS).strip()
    return {
        "ENGINE": settings_dict["ENGINE"],
        "NAME": settings_dict["NAME"],
        "USER": settings_dict.get("USER") or "",
        "PASSWORD": settings_dict.get("PASSWORD") or "",
        "HOST": settings_dict.get("HOST") or "",
        "PORT": str(settings_dict.get("PORT") or ""),
        "OPTIONS": options,
    }


# -- writers ---------------------------------------------------------------------------

class _Rollback(Exception):
    pass


class _QueueDown(Exception):
    pass


def _enqueue() -> None:
    raise _QueueDown("the task queue is down")


class Writer:
    """Owns some rows (so it knows their versions without reading them) and shares one
    row with the other writers, which it only changes under a row lock."""

    def __init__(self, own: list[int], shared: int, rng: random.Random) -> None:
        from tests.ormapp.models import Book

        self.Book = Book
        self.rng = rng
        self.own = own
        self.shared = shared
        self.books = {b.pk: b for b in Book.objects.filter(pk__in=own)}
        self.version = {pk: int(b.price) for pk, b in self.books.items()}
        self.ops: list[Callable[[], dict[int, int]]] = [
            self.op_save, self.op_update, self.op_atomic, self.op_bulk_update,
            self.op_raw_sql, self.op_atomic_update, self.op_rolled_back_savepoint,
            self.op_locked_shared_row, self.op_manual_commit, self.op_failing_callback,
        ]

    def _next(self, pk: int, step: int = 1) -> int:
        return self.version[pk] + step

    def _done(self, pk: int, version: int) -> tuple[int, int]:
        self.version[pk] = version
        self.books[pk].price = version
        return pk, version

    def op_save(self) -> dict[int, int]:
        pk = self.rng.choice(self.own)
        version = self._next(pk)
        book = self.books[pk]
        book.price = version
        book.save()
        return dict([self._done(pk, version)])

    def op_update(self) -> dict[int, int]:
        from django.db.models import F

        pk = self.rng.choice(self.own)
        assert self.Book.objects.filter(pk=pk).update(price=F("price") + 1) == 1
        return dict([self._done(pk, self._next(pk))])

    def op_atomic(self) -> dict[int, int]:
        """Outer-level save() and a released savepoint's update() in one transaction."""
        from django.db import transaction

        first, second = self.rng.sample(self.own, 2)
        with transaction.atomic():
            book = self.books[first]
            book.price = self._next(first)
            book.save()
            with transaction.atomic():
                self.Book.objects.filter(pk=second).update(price=self._next(second))
        return dict([self._done(first, self._next(first)),
                     self._done(second, self._next(second))])

    def op_bulk_update(self) -> dict[int, int]:
        rows = self.rng.sample(self.own, 2)
        books = [self.books[pk] for pk in rows]
        for book in books:
            book.price = self._next(book.pk)
        self.Book.objects.bulk_update(books, ["price"])
        return dict(self._done(pk, self._next(pk)) for pk in rows)

    def op_raw_sql(self) -> dict[int, int]:
        from django.db import connection

        pk = self.rng.choice(self.own)
        table = connection.ops.quote_name(self.Book._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(f"UPDATE {table} SET price = %s WHERE id = %s", [self._next(pk), pk])
        return dict([self._done(pk, self._next(pk))])

    def op_atomic_update(self) -> dict[int, int]:
        """One outermost ``atomic`` block writing at its own level only."""
        from django.db import transaction

        pk = self.rng.choice(self.own)
        with transaction.atomic():
            self.Book.objects.filter(pk=pk).update(price=self._next(pk))
        return dict([self._done(pk, self._next(pk))])

    def op_rolled_back_savepoint(self) -> dict[int, int]:
        """+1 at the outer level, +2 in a savepoint that rolls back: +1 commits."""
        from django.db import transaction

        pk = self.rng.choice(self.own)
        with transaction.atomic():
            self.Book.objects.filter(pk=pk).update(price=self._next(pk))
            with contextlib.suppress(_Rollback), transaction.atomic():
                self.Book.objects.filter(pk=pk).update(price=self._next(pk, 2))
                raise _Rollback
        return dict([self._done(pk, self._next(pk))])

    def op_manual_commit(self) -> dict[int, int]:
        """Autocommit off, an update, some work, ``commit()``: readers may cache the old
        row between the update and the COMMIT."""
        from django.db import transaction

        pk = self.rng.choice(self.own)
        transaction.set_autocommit(False)
        try:
            self.Book.objects.filter(pk=pk).update(price=self._next(pk))
            time.sleep(self.rng.uniform(0, 0.01))
            transaction.commit()
        finally:
            if not transaction.get_autocommit():
                transaction.rollback()
                transaction.set_autocommit(True)
        return dict([self._done(pk, self._next(pk))])

    def op_failing_callback(self) -> dict[int, int]:
        """An ``on_commit`` callback registered before the write raises after the
        COMMIT; the write is committed all the same."""
        from django.db import transaction

        pk = self.rng.choice(self.own)
        with contextlib.suppress(_QueueDown), transaction.atomic():
            transaction.on_commit(_enqueue)
            self.Book.objects.filter(pk=pk).update(price=self._next(pk))
        return dict([self._done(pk, self._next(pk))])

    def op_locked_shared_row(self) -> dict[int, int]:
        """The row every writer changes: lock, bump, read back, commit."""
        from django.db import transaction

        with transaction.atomic():
            book = self.Book.objects.select_for_update().get(pk=self.shared)
            book.price += 1
            book.save(update_fields=["price"])
            version = int(book.price)
        return {self.shared: version}


def write_loop(cfg: dict[str, Any], client: redis.Redis, keys: Keys) -> dict[str, Any]:
    rng = random.Random(cfg["seed"])
    writer = Writer(cfg["own_rows"], cfg["shared_row"], rng)
    if cfg.get("ops"):
        writer.ops = [getattr(writer, name) for name in cfg["ops"]]
    ops: Counter[str] = Counter()
    deadline = time.monotonic() + cfg["seconds"]
    index = 0
    while time.monotonic() < deadline:
        op = writer.ops[index % len(writer.ops)]
        index += 1
        written = op()
        # Recorded only now that the write call has returned.
        pipe = client.pipeline(transaction=False)
        pipe.zadd(keys.committed, {str(pk): v for pk, v in written.items()}, gt=True)
        pipe.hset(keys.ops, mapping={f"{pk}:{v}": op.__name__ for pk, v in written.items()})
        pipe.execute()
        ops[op.__name__] += 1
        time.sleep(rng.uniform(0, cfg["pause"]))
    return {"writes": sum(ops.values()), "ops": dict(ops)}


# -- readers ---------------------------------------------------------------------------

Observation = list[tuple[int, int, int]]  # (row, version seen, version required)


class Reader:
    def __init__(self, rows: list[int], rng: random.Random, broken: bool) -> None:
        from django.db import transaction
        from django.db.models import Sum

        from relaycache import cache
        from tests.ormapp.models import Book, Review

        self.Book, self.Review, self.Sum = Book, Review, Sum
        self.atomic = transaction.atomic
        self.rows = rows
        self.rng = rng

        @cache(ttl=60, tags=["stale-control"], key=lambda pk: f"control:{pk}")
        def control_price(pk: int) -> int:
            # Never invalidated by any write: the deliberately broken configuration.
            return int(Book.objects.filter(pk=pk).values_list("price", flat=True).get())

        self.control_price = control_price
        shapes: list[Callable[[dict[int, int]], Observation]] = [
            self.get, self.get, self.get, self.instances, self.values, self.values_list_get,
            self.values_list, self.exists, self.count, self.aggregate, self.select_related,
            self.get_in_atomic,
        ]
        self.shapes = [self.control] if broken else shapes

    def _row(self) -> int:
        return self.rng.choice(self.rows)

    def control(self, need: dict[int, int]) -> Observation:
        pk = self._row()
        return [(pk, self.control_price(pk), need.get(pk, 0))]

    def get(self, need: dict[int, int]) -> Observation:
        pk = self._row()
        return [(pk, int(self.Book.objects.cached().get(pk=pk).price), need.get(pk, 0))]

    def instances(self, need: dict[int, int]) -> Observation:
        books = list(self.Book.objects.cached().filter(pk__in=self.rows))
        assert len(books) == len(self.rows)
        return [(b.pk, int(b.price), need.get(b.pk, 0)) for b in books]

    def values(self, need: dict[int, int]) -> Observation:
        rows = list(self.Book.objects.cached().filter(pk__in=self.rows).values("id", "price"))
        assert len(rows) == len(self.rows)
        return [(r["id"], int(r["price"]), need.get(r["id"], 0)) for r in rows]

    def values_list(self, need: dict[int, int]) -> Observation:
        rows = list(self.Book.objects.cached().filter(pk__in=self.rows)
                    .order_by("-price").values_list("id", "price"))
        assert len(rows) == len(self.rows)
        return [(pk, int(price), need.get(pk, 0)) for pk, price in rows]

    def values_list_get(self, need: dict[int, int]) -> Observation:
        pk = self._row()
        price = self.Book.objects.cached().values_list("price", flat=True).get(pk=pk)
        return [(pk, int(price), need.get(pk, 0))]

    def exists(self, need: dict[int, int]) -> Observation:
        pk = self._row()
        ok = self.Book.objects.cached().filter(pk=pk, price__gte=need.get(pk, 0)).exists()
        return [(pk, need.get(pk, 0) if ok else -1, need.get(pk, 0))]

    def count(self, need: dict[int, int]) -> Observation:
        pk = self._row()
        n = self.Book.objects.cached().filter(pk=pk, price__lt=need.get(pk, 0)).count()
        return [(pk, need.get(pk, 0) if n == 0 else -1, need.get(pk, 0))]

    def aggregate(self, need: dict[int, int]) -> Observation:
        total = self.Book.objects.cached().filter(pk__in=self.rows).aggregate(
            total=self.Sum("price"))["total"]
        return [(0, int(total), sum(need.get(pk, 0) for pk in self.rows))]

    def select_related(self, need: dict[int, int]) -> Observation:
        pk = self._row()
        review = self.Review.objects.cached().select_related("book").filter(book_id=pk).first()
        assert review is not None
        return [(pk, int(review.book.price), need.get(pk, 0))]

    def get_in_atomic(self, need: dict[int, int]) -> Observation:
        with self.atomic():
            return self.get(need)


def read_loop(cfg: dict[str, Any], client: redis.Redis, keys: Keys) -> dict[str, Any]:
    rng = random.Random(cfg["seed"])
    reader = Reader(cfg["rows"], rng, cfg["broken"])
    reads = stale = 0
    by_shape: Counter[str] = Counter()
    stale_by_shape: Counter[str] = Counter()
    examples: list[dict[str, Any]] = []
    began = time.monotonic()
    deadline = began + cfg["seconds"]
    while time.monotonic() < deadline:
        # First what is known committed and returned, THEN the read.
        need = {int(m): int(s) for m, s in client.zrange(keys.committed, 0, -1, withscores=True)}
        shape = rng.choice(reader.shapes)
        observed = shape(need)
        reads += 1
        by_shape[shape.__name__] += 1
        behind = [(pk, seen, required) for pk, seen, required in observed if seen < required]
        if behind:
            stale += 1
            stale_by_shape[shape.__name__] += 1
            if len(examples) < MAX_EXAMPLES:
                examples.append(_example(reader, client, keys, shape.__name__, behind,
                                         time.monotonic() - began))
    return {"reads": reads, "stale": stale, "shapes": dict(by_shape),
            "stale_shapes": dict(stale_by_shape), "examples": examples}


def _example(reader: Reader, client: redis.Redis, keys: Keys, shape: str,
             behind: Observation, at: float) -> dict[str, Any]:
    """What a stale read saw, what the database holds now, and which writer operations
    made the versions it missed."""
    rows = []
    for pk, seen, required in behind:
        if not pk:  # an aggregate over every row
            rows.append({"row": "all", "seen": seen, "required": required})
            continue
        missed = [f"{pk}:{v}" for v in range(max(seen, 0) + 1, required + 1)][-4:]
        rows.append({
            "row": pk, "seen": seen, "required": required,
            "database_now": int(reader.Book.objects.filter(pk=pk).values_list(
                "price", flat=True).get()),
            "missed_writes": dict(zip(missed, [_text_or_none(v) for v in client.hmget(
                keys.ops, missed)], strict=True)) if missed else {},
        })
    return {"shape": shape, "at_s": round(at, 3), "rows": rows}


def _text_or_none(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


# -- one worker process ----------------------------------------------------------------

def worker_main(cfg: dict[str, Any]) -> None:
    keys = Keys(cfg["run"])
    configure_django({"default": cfg["database"]}, {
        "BACKEND": cfg["redis_url"], "KEY_PREFIX": keys.cache_prefix, "DEFAULT_TTL": 60,
        "OPTIONS": {"socket_timeout": 2.0},
    })
    from django.db import connection

    from relaycache import RedisCache, get_default_backend

    backend = get_default_backend()
    assert isinstance(backend, RedisCache), backend
    client = redis.Redis.from_url(cfg["redis_url"], socket_timeout=10)
    connection.ensure_connection()
    backend.redis_client.ping()
    client.incr(keys.ready)
    deadline = time.monotonic() + 90
    while client.blpop([keys.go], timeout=5) is None:  # shorter than the socket timeout
        if time.monotonic() > deadline:
            raise SystemExit("never told to go")
    loop = write_loop if cfg["role"] == "writer" else read_loop
    result = loop(cfg, client, keys)
    result.update(role=cfg["role"], pid=os.getpid(), stats=backend.stats.snapshot())
    connection.close()
    print(json.dumps(result), flush=True)


# -- the harness -------------------------------------------------------------------------

@dataclass
class CheckResult:
    reads: int = 0
    stale: int = 0
    writes: int = 0
    hits: int = 0
    misses: int = 0
    stores: int = 0
    stores_rejected: int = 0
    invalidations: int = 0
    bypassed: int = 0
    errors: int = 0
    seconds: float = 0.0
    ops: dict[str, int] = field(default_factory=dict)
    shapes: dict[str, int] = field(default_factory=dict)
    stale_shapes: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def line(self) -> str:
        return (f"reads={self.reads} stale={self.stale} hits={self.hits} "
                f"misses={self.misses} writes={self.writes} stores={self.stores} "
                f"stores_rejected={self.stores_rejected} invalidations={self.invalidations} "
                f"bypassed={self.bypassed} errors={self.errors} seconds={self.seconds:.1f}")

    def details(self) -> str:
        return json.dumps({"ops": self.ops, "shapes": self.shapes,
                           "stale_shapes": self.stale_shapes, "examples": self.examples},
                          indent=1)

    def add(self, report: dict[str, Any]) -> None:
        stats = report["stats"]
        self.errors += stats["errors"]
        self.invalidations += stats["invalidations"]
        if report["role"] == "writer":
            self.writes += report["writes"]
            _merge(self.ops, report["ops"])
            return
        self.reads += report["reads"]
        self.stale += report["stale"]
        for name in ("hits", "misses", "stores", "stores_rejected", "bypassed"):
            setattr(self, name, getattr(self, name) + stats[name])
        _merge(self.shapes, report["shapes"])
        _merge(self.stale_shapes, report["stale_shapes"])
        self.examples.extend(report["examples"][: MAX_EXAMPLES - len(self.examples)])


def _merge(total: dict[str, int], part: dict[str, int]) -> None:
    for name, n in part.items():
        total[name] = total.get(name, 0) + n


def seed(run: str, count: int) -> list[int]:
    """``count`` books at version 0, each with one review (for ``select_related``)."""
    import datetime as dt

    from tests.ormapp.models import Book, Review

    tag = run[-8:]
    books = [Book.objects.create(title=f"stale {tag} {i}", author="checker",
                                 isbn=f"s{tag}{i:02d}", publication_date=dt.date(2000, 1, 1),
                                 price=0)
             for i in range(count)]
    for book in books:
        Review.objects.create(book=book, stars=1)
    return [book.pk for book in books]


def _delete_keys(client: redis.Redis, run: str) -> None:
    batch = list(client.scan_iter(match=f"{run}:*", count=1000))
    for start in range(0, len(batch), 500):
        client.unlink(*batch[start:start + 500])


def run_check(*, redis_url: str, seconds: float = 8.0, writers: int = 2, readers: int = 4,
              rows_per_writer: int = 3, pause: float = 0.03, broken: bool = False,
              ops: list[str] | None = None, startup_timeout: float = 60.0) -> CheckResult:
    """Run the check on the current Django ``default`` database (it must be PostgreSQL
    and hold the test models' tables); return the summed results of every worker."""
    from django.db import connection

    from tests.ormapp.models import Book

    if connection.vendor != "postgresql":
        raise RuntimeError(f"the stale-read check needs PostgreSQL, not {connection.vendor}")
    if rows_per_writer < 2:
        raise ValueError("rows_per_writer must be at least 2")
    run = f"stale{uuid.uuid4().hex[:10]}"
    keys = Keys(run)
    admin = redis.Redis.from_url(redis_url, socket_timeout=10)
    ids = seed(run, writers * rows_per_writer + 1)
    shared, owned = ids[-1], ids[:-1]
    base = {"run": run, "redis_url": redis_url, "seconds": seconds, "broken": broken,
            "database": database_settings(connection.settings_dict)}
    configs = [{**base, "role": "writer", "seed": i, "pause": pause, "shared_row": shared,
                "ops": ops,
                "own_rows": owned[i * rows_per_writer:(i + 1) * rows_per_writer]}
               for i in range(writers)]
    configs += [{**base, "role": "reader", "seed": 1000 + i, "rows": ids}
                for i in range(readers)]
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    procs: list[tuple[subprocess.Popen[bytes], Any, Any]] = []
    result = CheckResult()
    with contextlib.ExitStack() as files:
        try:
            for cfg in configs:
                out = files.enter_context(tempfile.TemporaryFile())
                err = files.enter_context(tempfile.TemporaryFile())
                proc = subprocess.Popen(
                    [sys.executable, "-m", "tests.orm.stale_worker", "--worker"], cwd=ROOT,
                    env={**env, CONFIG_ENV: json.dumps(cfg)}, stdout=out, stderr=err)
                procs.append((proc, out, err))
            _wait_ready(procs, admin, keys, startup_timeout)
            began = time.monotonic()
            admin.rpush(keys.go, *["go"] * len(procs))
            finish = began + seconds + 30
            for proc, out, err in procs:
                try:
                    proc.wait(timeout=max(0.1, finish - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise RuntimeError(f"worker {proc.pid} still running {seconds + 30}s "
                                       f"after the start:\n{_text(err)}") from None
                if proc.returncode != 0:
                    raise RuntimeError(f"worker exited {proc.returncode}:\n{_text(err)}")
                lines = _text(out).strip().splitlines()
                if not lines:
                    raise RuntimeError(f"worker printed no result:\n{_text(err)}")
                result.add(json.loads(lines[-1]))
            result.seconds = time.monotonic() - began
            return result
        finally:
            for proc, _, _ in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
            _delete_keys(admin, run)
            admin.close()
            Book.objects.filter(pk__in=ids).delete()


def _wait_ready(procs: list[tuple[subprocess.Popen[bytes], Any, Any]], admin: redis.Redis,
                keys: Keys, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while int(admin.get(keys.ready) or 0) < len(procs):
        for proc, _, err in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited {proc.returncode} before starting:\n"
                                   f"{_text(err)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers not ready within {timeout}s")
        time.sleep(0.05)


def _text(stream: Any) -> str:
    stream.seek(0)
    return stream.read().decode(errors="replace")[-4000:]


# -- command line ------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.orm.stale_worker",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--rows-per-writer", type=int, default=3)
    parser.add_argument("--pause", type=float, default=0.03,
                        help="a writer sleeps up to this many seconds between writes")
    parser.add_argument("--ops", help="comma-separated writer operations (default: all), "
                                      "e.g. op_save,op_update")
    parser.add_argument("--broken", action="store_true",
                        help="negative control: readers use a never-invalidated @cache")
    parser.add_argument("--database-url", default=os.environ.get(
        "RELAYCACHE_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
        help="server to create the scratch database on")
    parser.add_argument("--db-name", help="use this existing, migrated database instead "
                                          "of a scratch one")
    parser.add_argument("--redis-url", default=os.environ.get(
        "RELAYCACHE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))
    parser.add_argument("-v", "--verbose", action="store_true", help="print per-shape details")
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(json.loads(os.environ[CONFIG_ENV]))
        return 0

    from tests.settings import _database

    server = _database(args.database_url)
    if server["ENGINE"] != "django.db.backends.postgresql":
        parser.error("--database-url must be a postgres:// URL")
    name = args.db_name or f"relaycache_stale_{uuid.uuid4().hex[:8]}"
    if not args.db_name:
        _admin_sql(server, f'CREATE DATABASE "{name}"')
    try:
        configure_django({"default": {**server, "NAME": name}}, None)
        from django.core.management import call_command
        from django.db import connections

        if not args.db_name:
            call_command("migrate", run_syncdb=True, verbosity=0)
        result = run_check(redis_url=args.redis_url, seconds=args.seconds,
                           writers=args.writers, readers=args.readers,
                           rows_per_writer=args.rows_per_writer, pause=args.pause,
                           broken=args.broken,
                           ops=args.ops.split(",") if args.ops else None)
        connections.close_all()
    finally:
        if not args.db_name:
            _admin_sql(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(result.line())
    if args.verbose or result.stale:
        print(result.details())
    return 1 if result.stale else 0


def _admin_sql(server: dict[str, Any], sql: str) -> None:
    import psycopg

    with psycopg.connect(dbname="postgres", user=server["USER"],
                         password=server["PASSWORD"] or None, host=server["HOST"],
                         port=server["PORT"], autocommit=True) as conn:
        conn.execute(sql)


if __name__ == "__main__":
    sys.exit(main())
