"""Stale-read checker for invariant 1 of DESIGN.md ("fresh after write"), with real
processes on a real PostgreSQL and a real Redis. Two workloads, run together or alone.

**versions.** W writer processes change a handful of ``Book`` rows, each change
bumping the row's version (kept in ``Book.price``), through every kind of write:
``save()``, ``QuerySet.update()``, ``bulk_update()``, raw SQL on the ORM connection,
``atomic`` blocks with savepoints (released and rolled back), ``select_for_update``, a
transaction managed by hand (autocommit off, ``commit()``) and an ``atomic`` block whose
first ``on_commit`` callback raises (a task queue that is down). Once a write's call has
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

**moves** (issue 11, granular invalidation): the same writers move ``BookPublisher``
rows between three publishers (the sets that ``filter(publisher_id=x)`` pins), every
writer moving some rows by ``save()``, ``update()``, ``bulk_update()``, delete and
re-insert, and all writers moving shared rows at once (one 1st -> 2nd publisher, the
other 2nd -> 3rd), and add and remove many-to-many pairs; readers read the pinned sets
(``filter(fk=x)``, ``get(pk=)``, reverse managers, through joins) and unpinned reads
(a listing, ``count()``). A writer records each version of each row or pair with the
state it made and when its call began; a read must show, for every row it covers, a
state at least as new as the last version recorded before it started (see
:class:`MoveWriter`, :func:`judge_later`). ``--drop-tags REGEX`` is a negative control
for it: writer processes leave the matching tags out of their invalidations.

By hand (creates and drops a scratch database; exit status 1 when stale > 0)::

    RELAYCACHE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \\
    RELAYCACHE_TEST_REDIS_URL=redis://127.0.0.1:6379/15 \\
    .venv/bin/python -m tests.orm.stale_worker --seconds 10 [--workloads moves] \\
        [--broken | --drop-tags '^(pin|pinned):']

It prints ``reads=N stale=M hits=H ...``. Every Redis key it uses (cache entries, tag
stamps, the harness's own keys) is under a per-run prefix and deleted at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import redis

ROOT = Path(__file__).resolve().parents[2]
CONFIG_ENV = "RELAYCACHE_STALE_WORKER"
# A worker's database session cannot wait on a lock or a statement for ever.
PG_SESSION_OPTIONS = "-c statement_timeout=10000 -c lock_timeout=10000"
MAX_EXAMPLES = 8
WORKLOADS = ("versions", "moves")
OWN_LINKS = 3  # BookPublisher rows (and books with many-to-many pairs) per writer
SHARED_LINKS = 3  # rows every writer moves


# -- shared helpers ------------------------------------------------------------------

class Keys:
    """The harness's own Redis keys (the cache's live under ``{run}:c:``)."""

    def __init__(self, run: str) -> None:
        self.run = run
        self.cache_prefix = f"{run}:c:"
        self.committed = f"{run}:h:committed"  # zset: row id -> highest returned version
        self.ops = f"{run}:h:ops"  # hash: "row:version" -> the writer operation that made it
        self.moved = f"{run}:h:moved"  # zset: entity -> highest returned version
        self.history = f"{run}:h:history"  # hash: "entity@version" -> [state, start, op, w]
        self.ready = f"{run}:h:ready"
        self.go = f"{run}:h:go"
        self.origin = f"{run}:h:origin"  # the harness's monotonic clock at the start
        self.writers_done = f"{run}:h:writers_done"


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

    OPERATIONS = ("op_save", "op_update", "op_atomic", "op_bulk_update", "op_raw_sql",
                  "op_atomic_update", "op_rolled_back_savepoint", "op_locked_shared_row",
                  "op_manual_commit", "op_failing_callback")

    def __init__(self, own: list[int], shared: int, rng: random.Random) -> None:
        from tests.ormapp.models import Book

        self.Book = Book
        self.rng = rng
        self.own = own
        self.shared = shared
        self.books = {b.pk: b for b in Book.objects.filter(pk__in=own)}
        self.version = {pk: int(b.price) for pk, b in self.books.items()}
        self.ops: list[Callable[[], dict[int, int]]] = [
            getattr(self, name) for name in self.OPERATIONS]

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


def _record_versions(pipe: Any, keys: Keys, op: str, writer: int,
                     written: dict[int, int]) -> int:
    pipe.zadd(keys.committed, {str(pk): v for pk, v in written.items()}, gt=True)
    pipe.hset(keys.ops, mapping={f"{pk}:{v}": op for pk, v in written.items()})
    return len(written)


def _record_moves(pipe: Any, keys: Keys, op: str, writer: int, moves: list[Move]) -> int:
    """The history first: a reader that sees a version in ``moved`` finds its state."""
    if moves:
        pipe.hset(keys.history, mapping={f"{m.entity}@{m.version}": json.dumps(
            [m.state, m.start, op, writer]) for m in moves})
        pipe.zadd(keys.moved, {m.entity: m.version for m in moves}, gt=True)
    return len(moves)


def write_loop(cfg: dict[str, Any], client: redis.Redis, keys: Keys) -> dict[str, Any]:
    rng = random.Random(cfg["seed"])
    plan: list[tuple[Callable[[], Any], Callable[..., int]]] = []
    if "versions" in cfg["workloads"]:
        writer = Writer(cfg["own_rows"], cfg["shared_row"], rng)
        plan += [(op, _record_versions) for op in writer.ops]
    mover = None
    if "moves" in cfg["workloads"]:
        mover = MoveWriter(cfg["universe"], cfg["index"], rng)
        plan += [(op, _record_moves) for op in mover.ops]
    if cfg.get("ops"):
        plan = [(op, record) for op, record in plan if op.__name__ in cfg["ops"]]
    shared = {link_entity(pk) for pk in cfg["universe"].get("shared_links", [])}
    shared_moves = 0
    ops: Counter[str] = Counter()
    idle: Counter[str] = Counter()  # a shared row another writer had moved: no write
    deadline = time.monotonic() + cfg["seconds"]
    index = 0
    while time.monotonic() < deadline:
        op, record = plan[index % len(plan)]
        index += 1
        written = op()
        # Recorded only now that the write call has returned.
        pipe = client.pipeline(transaction=False)
        if record(pipe, keys, op.__name__, cfg["index"], written):
            pipe.execute()
            ops[op.__name__] += 1
            shared_moves += sum(isinstance(m, Move) and m.entity in shared for m in written)
        else:
            idle[op.__name__] += 1
        time.sleep(rng.uniform(0, cfg["pause"]))
    client.incr(keys.writers_done)
    return {"writes": sum(ops.values()), "ops": dict(ops), "idle": dict(idle),
            "lost_races": mover.lost_races if mover else 0, "shared_moves": shared_moves}


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


def _served(before: dict[str, int], after: dict[str, int]) -> bool:
    """Whether a read between these two stats snapshots was served from the cache."""
    return after["misses"] == before["misses"] and (
        after["hits"] > before["hits"] or after["near_hits"] > before["near_hits"])


def read_loop(cfg: dict[str, Any], client: redis.Redis, keys: Keys,
              stats: Any) -> dict[str, Any]:
    rng = random.Random(cfg["seed"])
    shapes: list[tuple[Callable[..., Any], bool]] = []  # (shape, of the moves workload)
    if "versions" in cfg["workloads"]:
        reader = Reader(cfg["rows"], rng, cfg["broken"])
        shapes += [(shape, False) for shape in reader.shapes]
    if "moves" in cfg["workloads"]:
        shapes += [(shape, True) for shape in MoveReader(cfg["universe"], rng).shapes]
    if cfg["shapes"]:
        shapes = [(shape, moves) for shape, moves in shapes if shape.__name__ in cfg["shapes"]]
    history = History(client, keys)
    origin = float(client.get(keys.origin) or 0)
    reads = stale = 0
    by_shape: Counter[str] = Counter()
    stale_by_shape: Counter[str] = Counter()
    served: Counter[str] = Counter()
    examples: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    deadline = time.monotonic() + cfg["seconds"]
    while time.monotonic() < deadline:
        # First what is known committed and returned, THEN the read.
        pipe = client.pipeline(transaction=False)
        pipe.zrange(keys.committed, 0, -1, withscores=True)
        pipe.zrange(keys.moved, 0, -1, withscores=True)
        committed, moved = pipe.execute()
        shape, of_moves = rng.choice(shapes)
        name = shape.__name__
        before = stats.snapshot()
        start = time.monotonic()
        if of_moves:
            checks = shape()
        else:
            observed = shape({int(m): int(s) for m, s in committed})
        end = time.monotonic()
        reads += 1
        by_shape[name] += 1
        served[name] += _served(before, stats.snapshot())
        if of_moves:
            need = {m.decode(): int(s) for m, s in moved}
            certain, later = judge_now(checks, need, history)
            if later and not certain:  # a read is counted stale once
                pending.append({"shape": name, "checks": later, "start": start, "end": end,
                                "need": {e: need.get(e, 0) for c in later for e in c[1]}})
            behind_moves = [c for c in checks if c[0] == "ver" and c[2] < need.get(c[1], 0)]
            if certain and len(examples) < MAX_EXAMPLES:
                examples.append(_move_example(name, behind_moves, need, history,
                                              (start, end, origin)))
            is_stale = certain
        else:
            behind = [(pk, seen, required) for pk, seen, required in observed
                      if seen < required]
            if behind and len(examples) < MAX_EXAMPLES:
                examples.append(_example(reader, client, keys, name, behind, start - origin))
            is_stale = bool(behind)
        stale += is_stale
        stale_by_shape[name] += is_stale
    if pending:
        _wait_for_writers(client, keys, cfg["writers"])
        final = {m.decode(): int(s) for m, s in client.zrange(keys.moved, 0, -1,
                                                               withscores=True)}
        for item in pending:
            failed = judge_later(item, final, history)
            stale += bool(failed)
            stale_by_shape[item["shape"]] += bool(failed)
            if failed and len(examples) < MAX_EXAMPLES:
                examples.append(_move_example(item["shape"], failed, item["need"], history,
                                              (item["start"], item["end"], origin), final))
    return {"reads": reads, "stale": stale, "shapes": dict(by_shape),
            "stale_shapes": {k: n for k, n in stale_by_shape.items() if n},
            "served_shapes": dict(served), "judged_later": len(pending),
            "examples": examples}


def _wait_for_writers(client: redis.Redis, keys: Keys, writers: int) -> None:
    """Until every writer has recorded its last write (and so every version exists)."""
    deadline = time.monotonic() + 60
    while int(client.get(keys.writers_done) or 0) < writers:
        if time.monotonic() > deadline:
            raise SystemExit("the writers never finished")
        time.sleep(0.05)


def _move_example(shape: str, failed: list[Check], need: dict[str, int], history: History,
                  window: tuple[float, float, float],
                  final: dict[str, int] | None = None) -> dict[str, Any]:
    """A stale read of the moves workload: the checks it failed, the window it ran in
    and, for each row or pair, the versions around the one it had to reflect (version,
    state, when its write began, the operation, the writer), times from the start."""
    start, end, origin = window
    rows = {}
    for check in failed[:4]:
        for entity in [check[1]] if check[0] == "ver" else check[1]:
            r = need.get(entity, 0)
            last = min(max(r, (final or {}).get(entity, r)), r + 3)
            versions = range(max(r - 2, 0), last + 1)
            history.load([f"{entity}@{v}" for v in versions])
            rows[entity] = {"required": r, "versions": [
                [v, record[0], round(record[1] - origin, 4), *record[2:]]
                for v in versions if (record := history.get(entity, v)) is not None]}
    return {"shape": shape, "read_s": [round(start - origin, 4), round(end - origin, 4)],
            "checks": [list(c) for c in failed][:4], "rows": rows}


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


# -- the "moves" workload: rows entering and leaving pinned sets ----------------------
#
# Entities, each with a version history kept by the writers in Redis:
#   link:<id>            a BookPublisher row; state: its publisher id, None when deleted;
#                        version: its ``position`` column (so readers see it)
#   label:<book>:<label> a Book.labels pair (auto-created through table); state: bool
#   shelf:<book>:<shelf> a ShelfItem (explicit through model); state: bool
# A writer records ``entity@version -> [state, start, op, writer]`` (``start``: the
# monotonic clock, system-wide on Linux, before the write call began) and then
# ``ZADD GT entity version``, once the call has returned. A read that started after
# version r was recorded may show the state of any version v >= r whose write began
# before the read ended; anything else is stale.


class Move(NamedTuple):
    entity: str
    version: int
    state: Any
    start: float


Check = tuple[Any, ...]
"""``("ver", entity, version seen)``: the read showed this version of a link row;
``("count", entities, op, value, n)``: n of ``entities`` had a state ``== value``
(op ``"eq"``) or ``!= value`` (op ``"ne"``)."""


def link_entity(pk: int) -> str:
    return f"link:{pk}"


def pair_entity(kind: str, book: int, other: int) -> str:
    return f"{kind}:{book}:{other}"


class MoveWriter:
    """Moves BookPublisher rows between three publishers (the sets ``publisher_id = x``
    readers pin), deletes and re-inserts them under the same primary key, and adds and
    removes many-to-many pairs.

    Its own links go between the first two publishers and back, by ``save()`` (all
    fields, or ``update_fields``), ``update()`` (by primary key, or through a join:
    rows the statement does not name), ``bulk_update()``, two in
    one ``atomic`` block, and ``delete()`` (of the instance, a queryset, or its book:
    the collector's cascade) then ``save(force_insert=True)``/``bulk_create()``. The
    shared links are moved by every writer at once: even writers move them 1st -> 2nd
    and 3rd -> 1st publisher, odd writers 2nd -> 3rd, by compare-and-set ``update()``
    (with and without the old publisher in the ``WHERE``), by a blind ``update()`` in
    ``atomic`` (the row lock orders two writers; the new version is read back before
    the COMMIT), and by ``select_for_update()`` then ``save()`` or ``bulk_update()``.
    Many-to-many pairs: ``add()``/``remove()`` from either side of ``Book.labels``,
    ``ShelfItem`` created or deleted, or ``Shelf.books.add()``.
    """

    OPERATIONS = ("op_move_save", "op_move_save_fields", "op_move_update",
                  "op_move_by_join", "op_move_bulk_update", "op_move_in_atomic",
                  "op_delete_or_insert",
                  "op_label_toggle", "op_labels_clear_or_set", "op_shelf_toggle",
                  "op_shelf_bulk", "op_shared_cas", "op_shared_cas_blind_old",
                  "op_shared_blind_update", "op_shared_locked_save",
                  "op_shared_locked_bulk_update")

    def __init__(self, universe: dict[str, Any], index: int, rng: random.Random) -> None:
        from tests.ormapp.models import Book, BookPublisher, Label, Shelf, ShelfItem

        self.Link, self.ShelfItem = BookPublisher, ShelfItem
        self.rng = rng
        self.pubs: list[int] = universe["publishers"]
        own = universe["own_links"][index]
        self.links: dict[int, Any] = {
            link.pk: link for link in BookPublisher.objects.filter(pk__in=own)}
        self.book_of = {pk: link.book_id for pk, link in self.links.items()}
        self.version = {pk: link.position for pk, link in self.links.items()}
        self.shared: list[int] = universe["shared_links"]
        self.known: dict[int, tuple[int, int]] = {}
        self._refresh(self.shared)
        # Even writers: 1st -> 2nd, 3rd -> 1st; odd writers: 2nd -> 3rd.
        a, b, c = self.pubs
        self.rule = {a: b, c: a} if index % 2 == 0 else {b: c}
        self.blind_targets = [b, a] if index % 2 == 0 else [c]
        self.book_by_id = Book.objects.in_bulk(self.book_of.values())
        self.labels = list(Label.objects.filter(pk__in=universe["labels"]).order_by("pk"))
        self.shelf = Shelf.objects.get(pk=universe["shelf"])
        self.pairs: dict[str, tuple[bool, int]] = {}
        self.turn: Counter[str] = Counter()
        self.lost_races = 0  # compare-and-set updates another writer's move got before
        self.deleted_books: set[int] = set()
        self.ops: list[Callable[[], list[Move]]] = [
            getattr(self, name) for name in self.OPERATIONS]

    # own links --------------------------------------------------------------------

    def _alternate(self, name: str) -> bool:
        self.turn[name] += 1
        return self.turn[name] % 2 == 0

    def _present(self, count: int = 1) -> list[int]:
        present = [pk for pk, link in self.links.items() if link is not None]
        return self.rng.sample(present, min(count, len(present)))

    def _other(self, pk: int) -> int:
        a, b = self.pubs[:2]
        return b if self.links[pk].publisher_id == a else a

    def _moved(self, pk: int, start: float) -> Move:
        link = self.links[pk]
        link.publisher_id = self._other(pk)
        link.position = self.version[pk] = self.version[pk] + 1
        return Move(link_entity(pk), link.position, link.publisher_id, start)

    def op_move_save(self) -> list[Move]:
        (pk,) = self._present()
        move = self._moved(pk, time.monotonic())
        self.links[pk].save()
        return [move]

    def op_move_save_fields(self) -> list[Move]:
        (pk,) = self._present()
        move = self._moved(pk, time.monotonic())
        self.links[pk].save(update_fields=["publisher", "position"])
        return [move]

    def op_move_update(self) -> list[Move]:
        (pk,) = self._present()
        move = self._moved(pk, time.monotonic())
        assert self.Link.objects.filter(pk=pk).update(
            publisher_id=move.state, position=move.version) == 1
        return [move]

    def op_move_by_join(self) -> list[Move]:
        """``filter(pk=, book__title=).update()``: Django selects the rows in a
        subquery, so the statement does not name them."""
        (pk,) = self._present()
        move = self._moved(pk, time.monotonic())
        title = self.book_by_id[self.book_of[pk]].title
        assert self.Link.objects.filter(pk=pk, book__title=title).update(
            publisher_id=move.state, position=move.version) == 1
        return [move]

    def op_move_bulk_update(self) -> list[Move]:
        start = time.monotonic()
        rows = self._present(2)
        moves = [self._moved(pk, start) for pk in rows]
        self.Link.objects.bulk_update([self.links[pk] for pk in rows],
                                      ["publisher", "position"])
        return moves

    def op_move_in_atomic(self) -> list[Move]:
        """Two rows moved in one transaction (invalidated after its COMMIT), and one of
        them first moved to the third publisher in a savepoint that rolls back."""
        from django.db import transaction

        first, second = self._present(2)
        start = time.monotonic()
        with transaction.atomic():
            moves = [self._moved(first, start)]
            self.links[first].save(update_fields=["publisher", "position"])
            with contextlib.suppress(_Rollback), transaction.atomic():
                self.Link.objects.filter(pk=second).update(
                    publisher_id=self.pubs[2], position=self.version[second] + 1)
                raise _Rollback
            moves.append(self._moved(second, start))
            assert self.Link.objects.filter(pk=second).update(
                publisher_id=moves[1].state, position=moves[1].version) == 1
        return moves

    def op_delete_or_insert(self) -> list[Move]:
        """Re-insert a deleted own link under its primary key (and its book, if that
        was deleted), else delete one: ``delete()`` of the instance, of a queryset by
        primary key or through a join, or of its book, whose collector deletes the
        book's link and pairs."""
        start = time.monotonic()
        deleted = [pk for pk, link in self.links.items() if link is None]
        if deleted:
            pk = deleted[0]
            book_id = self.book_of[pk]
            if book_id in self.deleted_books:
                book = self.book_by_id[book_id]
                book.pk = book_id  # delete() set it to None
                book.save(force_insert=True)
                self.deleted_books.discard(book_id)
            version = self.version[pk] = self.version[pk] + 1
            row = self.Link(pk=pk, book_id=self.book_of[pk], position=version,
                            publisher_id=self.rng.choice(self.pubs[:2]))
            if self._alternate("insert"):
                self.Link.objects.bulk_create([row])
            else:
                row.save(force_insert=True)
            self.links[pk] = row
            return [Move(link_entity(pk), version, row.publisher_id, start)]
        (pk,) = self._present()
        version = self.version[pk] = self.version[pk] + 1
        moves = [Move(link_entity(pk), version, None, start)]
        self.turn["delete"] += 1
        book = self.book_of[pk]
        if self.turn["delete"] % 4 == 0:
            self.links[pk].delete()
        elif self.turn["delete"] % 4 == 1:
            assert self.Link.objects.filter(pk=pk).delete()[0] == 1
        elif self.turn["delete"] % 4 == 2:
            title = self.book_by_id[book].title
            assert self.Link.objects.filter(pk=pk, book__title=title).delete()[0] == 1
        else:
            for entity, (present, pair_version) in list(self.pairs.items()):
                if present and entity.split(":")[1] == str(book):
                    self.pairs[entity] = (False, pair_version + 1)
                    moves.append(Move(entity, pair_version + 1, False, start))
            self.book_by_id[book].delete()
            self.deleted_books.add(book)
        self.links[pk] = None
        return moves

    # many-to-many pairs ---------------------------------------------------------------

    def _toggle(self, entity: str) -> tuple[bool, int]:
        present, version = self.pairs.get(entity, (False, 0))
        self.pairs[entity] = (not present, version + 1)
        return self.pairs[entity]

    def _live_books(self) -> list[Any]:
        return [self.book_by_id[b] for b in self.book_of.values() if b not in self.deleted_books]

    def op_label_toggle(self) -> list[Move]:
        """``add()``/``remove()`` through either side of ``Book.labels``."""
        book, label = self.rng.choice(self._live_books()), self.rng.choice(self.labels)
        start = time.monotonic()
        entity = pair_entity("label", book.pk, label.pk)
        present, version = self._toggle(entity)
        if self._alternate("label"):
            (book.labels.add if present else book.labels.remove)(label)
        else:
            (label.books.add if present else label.books.remove)(book)
        return [Move(entity, version, present, start)]

    def _toggled(self, entities: list[str], start: float) -> list[Move]:
        return [Move(e, version, present, start) for e in entities
                for present, version in [self._toggle(e)]]

    def _has(self, entity: str) -> bool:
        return self.pairs.get(entity, (False, 0))[0]

    def op_labels_clear_or_set(self) -> list[Move]:
        """``clear()`` a book's labels, or ``set()`` them all."""
        book = self.rng.choice(self._live_books())
        entities = [pair_entity("label", book.pk, label.pk) for label in self.labels]
        present = [e for e in entities if self._has(e)]
        start = time.monotonic()
        if present:
            book.labels.clear()
            return self._toggled(present, start)
        book.labels.set(self.labels)
        return self._toggled(entities, start)

    def op_shelf_bulk(self) -> list[Move]:
        """``bulk_create()`` of two ShelfItems (PostgreSQL's ``UNNEST`` form), or a
        ``filter(book_id__in=...)`` delete of two."""
        entity = {b.pk: pair_entity("shelf", b.pk, self.shelf.pk) for b in self._live_books()}
        absent = [pk for pk, e in entity.items() if not self._has(e)]
        start = time.monotonic()
        if len(absent) >= 2:
            chosen = self.rng.sample(absent, 2)
            self.ShelfItem.objects.bulk_create(
                [self.ShelfItem(shelf=self.shelf, book_id=pk) for pk in chosen])
        else:
            chosen = [pk for pk, e in entity.items() if self._has(e)][:2]
            assert self.ShelfItem.objects.filter(
                shelf=self.shelf, book_id__in=chosen).delete()[0] == len(chosen)
        return self._toggled([entity[pk] for pk in chosen], start)

    def op_shelf_toggle(self) -> list[Move]:
        """ShelfItem ``create()`` or ``Shelf.books.add()``; instance or queryset
        ``delete()``."""
        book = self.rng.choice(self._live_books())
        start = time.monotonic()
        entity = pair_entity("shelf", book.pk, self.shelf.pk)
        present, version = self._toggle(entity)
        alternate = self._alternate("shelf" if present else "unshelf")
        if present and alternate:
            self.ShelfItem.objects.create(shelf=self.shelf, book=book, note=f"v{version}")
        elif present:
            self.shelf.books.add(book)
        elif alternate:
            self.ShelfItem.objects.get(shelf=self.shelf, book=book).delete()
        else:
            assert self.ShelfItem.objects.filter(shelf=self.shelf, book=book).delete()[0] == 1
        return [Move(entity, version, present, start)]

    # shared links ------------------------------------------------------------------

    def _refresh(self, pks: list[int]) -> None:
        rows = self.Link.objects.nocache().filter(pk__in=pks).values_list(
            "pk", "publisher_id", "position")
        self.known.update((pk, (publisher, position)) for pk, publisher, position in rows)

    def _movable(self) -> int | None:
        """A shared link this writer's rule moves, as far as it knows."""
        candidates = [pk for pk in self.shared if self.known[pk][0] in self.rule]
        if not candidates:
            self._refresh(self.shared)
            candidates = [pk for pk in self.shared if self.known[pk][0] in self.rule]
        return self.rng.choice(candidates) if candidates else None

    def _cas(self, name_old: bool) -> list[Move]:
        pk = self._movable()
        if pk is None:
            return []
        old, version = self.known[pk]
        new = self.rule[old]
        start = time.monotonic()
        where = {"pk": pk, "position": version}
        if name_old:
            where["publisher_id"] = old
        if self.Link.objects.filter(**where).update(publisher_id=new,
                                                   position=version + 1) == 0:
            self._refresh([pk])  # another writer moved it first
            self.lost_races += 1
            return []
        self.known[pk] = (new, version + 1)
        return [Move(link_entity(pk), version + 1, new, start)]

    def op_shared_cas(self) -> list[Move]:
        """``filter(pk=, publisher_id=old, position=v).update(...)``."""
        return self._cas(name_old=True)

    def op_shared_cas_blind_old(self) -> list[Move]:
        """``filter(pk=, position=v).update(...)``: the old publisher is not in the SQL."""
        return self._cas(name_old=False)

    def op_shared_blind_update(self) -> list[Move]:
        """``filter(pk=).update(publisher=x, position=F + 1)`` whatever the row holds;
        the row lock orders it after a concurrent writer's."""
        from django.db import transaction
        from django.db.models import F

        pk = self.rng.choice(self.shared)
        target = self.rng.choice(self.blind_targets)
        start = time.monotonic()
        with transaction.atomic():
            assert self.Link.objects.filter(pk=pk).update(
                publisher_id=target, position=F("position") + 1) == 1
            version = self.Link.objects.nocache().values_list(
                "position", flat=True).get(pk=pk)
        self.known[pk] = (target, version)
        return [Move(link_entity(pk), version, target, start)]

    def op_shared_locked_save(self) -> list[Move]:
        from django.db import transaction

        pk = self.rng.choice(self.shared)
        start = time.monotonic()
        with transaction.atomic():
            link = self.Link.objects.select_for_update().get(pk=pk)
            if link.publisher_id not in self.rule:
                self.known[pk] = (link.publisher_id, link.position)
                return []
            link.publisher_id = self.rule[link.publisher_id]
            link.position += 1
            link.save()
        self.known[pk] = (link.publisher_id, link.position)
        return [Move(link_entity(pk), link.position, link.publisher_id, start)]

    def op_shared_locked_bulk_update(self) -> list[Move]:
        from django.db import transaction

        rows = self.rng.sample(self.shared, 2)
        start = time.monotonic()
        with transaction.atomic():
            links = list(self.Link.objects.select_for_update().filter(pk__in=rows)
                         .order_by("pk"))
            moved = [link for link in links if link.publisher_id in self.rule]
            for link in moved:
                link.publisher_id = self.rule[link.publisher_id]
                link.position += 1
            if moved:
                self.Link.objects.bulk_update(moved, ["publisher", "position"])
        for link in links:
            self.known[link.pk] = (link.publisher_id, link.position)
        return [Move(link_entity(link.pk), link.position, link.publisher_id, start)
                for link in moved]


class MoveReader:
    """Reads the pinned sets the writers move rows between, and unpinned reads of the
    same tables; every shape returns :data:`Check` items for every entity it covers,
    so a row missing from a result is checked as well as a row present."""

    PINNED = ("pinned_filter", "pinned_in", "pinned_count", "pinned_in_atomic",
              "reverse_fk_manager", "pinned_get", "book_links_reverse",
              "through_books_of_publisher", "through_publishers_of_book", "books_of_label",
              "labels_of_book", "label_count_of_book", "books_on_shelf")
    UNPINNED = ("listing", "count", "count_joined", "label_counts")

    def __init__(self, universe: dict[str, Any], rng: random.Random) -> None:
        from django.db.models import Count

        from tests.ormapp.models import Book, BookPublisher, Label, Publisher

        self.Book, self.Link, self.Publisher, self.Label = Book, BookPublisher, Publisher, Label
        self.Count = Count
        self.rng = rng
        self.book_of = {int(pk): book for pk, book in universe["links"].items()}
        self.link_of = {book: pk for pk, book in self.book_of.items()}
        self.entities = [link_entity(pk) for pk in self.book_of]
        self.pubs: list[int] = universe["publishers"]
        self.publishers = list(Publisher.objects.filter(pk__in=self.pubs).order_by("pk"))
        self.second_name = self.publishers[1].name
        self.books = Book.objects.in_bulk(list(self.book_of.values()))
        self.pair_books: list[int] = universe["pair_books"]
        self.labels: list[int] = universe["labels"]
        self.shelf: int = universe["shelf"]
        self.others: int = universe["other_links"]
        self.shapes: list[Callable[[], list[Check]]] = [
            getattr(self, name) for name in self.PINNED + self.UNPINNED]

    def _links(self, rows: list[tuple[int, int]], absent: Check) -> list[Check]:
        """Checks for links read as ``(id, position)`` rows; a link not among them must
        have been in a state satisfying ``absent`` (``("eq", value, 0)`` etc.)."""
        seen = {pk for pk, _ in rows if pk in self.book_of}
        checks: list[Check] = [("ver", link_entity(pk), position) for pk, position in rows
                               if pk in self.book_of]
        checks += [("count", [link_entity(pk)], *absent) for pk in self.book_of
                   if pk not in seen]
        return checks

    def _pairs(self, kind: str, pairs: list[tuple[int, int]], present: set[tuple[int, int]]
               ) -> list[Check]:
        return [("count", [pair_entity(kind, book, other)], "eq", True,
                 int((book, other) in present)) for book, other in pairs]

    # pinned ----------------------------------------------------------------------------

    def pinned_filter(self) -> list[Check]:
        x = self.rng.choice(self.pubs)
        rows = list(self.Link.objects.cached().filter(publisher_id=x)
                    .values_list("id", "position"))
        return self._links(rows, ("eq", x, 0))

    def pinned_in(self) -> list[Check]:
        """``publisher_id IN (x, y)``: a row moving between x and y stays in it."""
        pubs = self.rng.sample(self.pubs, 2)
        rows = list(self.Link.objects.cached().filter(publisher_id__in=pubs)
                    .values_list("id", "position", "publisher_id"))
        seen = {pk for pk, _, _ in rows}
        return [("ver", link_entity(pk), position) for pk, position, _ in rows] + [
            ("count", [link_entity(pk)], "eq", p, 0) for pk in self.book_of
            if pk not in seen for p in pubs]

    def pinned_count(self) -> list[Check]:
        """``count()`` (an aggregate query, cached apart from row queries)."""
        x = self.rng.choice(self.pubs)
        n = self.Link.objects.cached().filter(publisher_id=x).count()
        return [("count", self.entities, "eq", x, n)]

    def pinned_in_atomic(self) -> list[Check]:
        """Inside ``atomic`` (READ COMMITTED on PostgreSQL: stored too)."""
        from django.db import transaction

        with transaction.atomic():
            return self.pinned_filter()

    def reverse_fk_manager(self) -> list[Check]:
        publisher = self.rng.choice(self.publishers)
        rows = list(publisher.books.cached().values_list("id", "position"))
        return self._links(rows, ("eq", publisher.pk, 0))

    def pinned_get(self) -> list[Check]:
        pk = self.rng.choice(list(self.book_of))
        try:
            link = self.Link.objects.cached().get(pk=pk)
        except self.Link.DoesNotExist:
            return [("count", [link_entity(pk)], "eq", None, 1)]
        return [("ver", link_entity(pk), link.position)]

    def book_links_reverse(self) -> list[Check]:
        """``book.publishers`` (pinned on ``book_id``): its one link, or none while
        the link is deleted."""
        pk = self.rng.choice(list(self.book_of))
        book = self.books[self.book_of[pk]]
        rows = list(book.publishers.cached().values_list("id", "position"))
        return [("ver", link_entity(pk), position) for _, position in rows] or [
            ("count", [link_entity(pk)], "eq", None, 1)]

    def through_books_of_publisher(self) -> list[Check]:
        """Books joined through their links (pinned on the link's ``publisher_id``)."""
        x = self.rng.choice(self.pubs)
        books = set(self.Book.objects.cached().filter(publishers__publisher_id=x)
                    .values_list("id", flat=True))
        return [("count", [link_entity(pk)], "eq", x, int(book in books))
                for pk, book in self.book_of.items()]

    def through_publishers_of_book(self) -> list[Check]:
        """The page read of issue 11: a book's publishers, through its links (pinned on
        the link's ``book_id``)."""
        pk = self.rng.choice(list(self.book_of))
        found = list(self.Publisher.objects.cached().filter(books__book_id=self.book_of[pk])
                     .values_list("id", flat=True))
        assert len(found) <= 1, found
        return [("count", [link_entity(pk)], "eq", found[0] if found else None, 1)]

    def books_of_label(self) -> list[Check]:
        label = self.rng.choice(self.labels)
        books = set(self.Book.objects.cached().filter(labels=label)
                    .values_list("id", flat=True))
        return self._pairs("label", [(b, label) for b in self.pair_books],
                           {(b, label) for b in books})

    def labels_of_book(self) -> list[Check]:
        book = self.books[self.rng.choice(self.pair_books)]
        labels = set(book.labels.cached().values_list("id", flat=True))
        return self._pairs("label", [(book.pk, label) for label in self.labels],
                           {(book.pk, label) for label in labels})

    def label_count_of_book(self) -> list[Check]:
        book = self.books[self.rng.choice(self.pair_books)]
        n = book.labels.cached().count()
        return [("count", [pair_entity("label", book.pk, label) for label in self.labels],
                 "eq", True, n)]

    def books_on_shelf(self) -> list[Check]:
        books = set(self.Book.objects.cached().filter(shelves=self.shelf)
                    .values_list("id", flat=True))
        return self._pairs("shelf", [(b, self.shelf) for b in self.pair_books],
                           {(b, self.shelf) for b in books})

    # unpinned --------------------------------------------------------------------------

    def listing(self) -> list[Check]:
        rows = list(self.Link.objects.cached().order_by("id").values_list("id", "position"))
        return self._links(rows, ("eq", None, 1))

    def count(self) -> list[Check]:
        n = self.Link.objects.cached().count() - self.others
        return [("count", self.entities, "ne", None, n)]

    def count_joined(self) -> list[Check]:
        """Books whose link's publisher has a given name: no pinned column."""
        n = self.Book.objects.cached().filter(
            publishers__publisher__name=self.second_name).count()
        return [("count", self.entities, "eq", self.pubs[1], n)]

    def label_counts(self) -> list[Check]:
        counts = dict(self.Label.objects.cached().filter(pk__in=self.labels)
                      .annotate(n=self.Count("books")).values_list("id", "n"))
        return [("count", [pair_entity("label", b, label) for b in self.pair_books],
                 "eq", True, counts[label]) for label in self.labels]


def _holds(op: str, value: Any, state: Any) -> int:
    return int(state == value if op == "eq" else state != value)


class History:
    """The writers' record of every entity's versions, read from Redis and kept."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client, self.keys = client, keys
        self.known: dict[str, list[Any]] = {}

    def load(self, names: list[str]) -> None:
        missing = sorted({n for n in names if n not in self.known})
        if missing:
            for name, raw in zip(missing, self.client.hmget(self.keys.history, missing),
                                 strict=True):
                if raw is not None:
                    self.known[name] = json.loads(raw)

    def get(self, entity: str, version: int) -> list[Any] | None:
        """``[state, start, op, writer]`` of that version, if recorded."""
        return self.known.get(f"{entity}@{version}")


def judge_now(checks: list[Check], need: dict[str, int], history: History
              ) -> tuple[bool, list[Check]]:
    """Whether the read is certainly stale, and the checks the states of the versions
    it had to reflect do not explain (a later write may; judged once all are known)."""
    history.load([f"{c[1]}@{need.get(c[1], 0)}" for c in checks if c[0] == "ver"] +
                 [f"{e}@{need.get(e, 0)}" for c in checks if c[0] == "count" for e in c[1]])
    stale, later = False, []
    for check in checks:
        if check[0] == "ver":
            stale = stale or check[2] < need.get(check[1], 0)
            continue
        _, entities, op, value, n = check
        if sum(_holds(op, value, history.get(e, need.get(e, 0))[0]) for e in entities) != n:
            later.append(check)
    return stale, later


def judge_later(pending: dict[str, Any], final: dict[str, int], history: History
                ) -> list[Check]:
    """The checks of a read no version it could have seen explains: a version at least
    the one it had to reflect, whose write began before the read ended."""
    need, end = pending["need"], pending["end"]
    names = [f"{e}@{v}" for c in pending["checks"] for e in c[1]
             for v in range(need.get(e, 0), final.get(e, 0) + 1)]
    history.load(names)
    failed = []
    for _, entities, op, value, n in pending["checks"]:
        low = high = 0
        for e in entities:
            r = need.get(e, 0)
            seen = {_holds(op, value, history.get(e, r)[0])}
            for v in range(r + 1, final.get(e, 0) + 1):
                record = history.get(e, v)
                if record is None:  # never happens: versions are recorded in order
                    seen |= {0, 1}
                elif record[1] < end:
                    seen.add(_holds(op, value, record[0]))
            low, high = low + min(seen), high + max(seen)
        if not low <= n <= high:
            failed.append(("count", entities, op, value, n))
    return failed


# -- one worker process ----------------------------------------------------------------

@dataclass(frozen=True)
class Build:
    """A backend option each worker process makes for itself (options cross to the
    workers as JSON): ``target`` is ``"module:attribute"``, called with no arguments."""

    target: str


def _option(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"build"}:
        module, _, name = value["build"].partition(":")
        return getattr(importlib.import_module(module), name)()
    return value


def _leave_out_tags(backend: Any, pattern: str) -> Counter[str]:
    """The moves workload's negative control, in writer processes only: their
    invalidations leave out the tags matching ``pattern``. Returns the count of tags
    left out, by kind (the text before the first colon)."""
    match = re.compile(pattern).search
    invalidate = backend.invalidate
    left_out: Counter[str] = Counter()

    def leaky(tags: Any) -> None:
        tags = list(tags)
        left_out.update(t.partition(":")[0] for t in tags if match(t))
        kept = [t for t in tags if not match(t)]
        if kept:
            invalidate(kept)

    backend.invalidate = leaky
    return left_out


def worker_main(cfg: dict[str, Any]) -> None:
    keys = Keys(cfg["run"])
    options = {name: _option(value) for name, value in cfg["backend_options"].items()}
    configure_django({"default": cfg["database"]}, {
        "BACKEND": cfg["redis_url"], "KEY_PREFIX": keys.cache_prefix, "DEFAULT_TTL": 60,
        "OPTIONS": {"socket_timeout": 2.0, **options},
    })
    from django.db import connection

    from relaycache import RedisCache, get_default_backend

    backend = get_default_backend()
    assert isinstance(backend, RedisCache), backend
    client = redis.Redis.from_url(cfg["redis_url"], socket_timeout=10)
    connection.ensure_connection()
    backend.redis_client.ping()
    left_out: Counter[str] = Counter()
    if cfg["role"] == "writer" and cfg["drop_tags"]:
        left_out = _leave_out_tags(backend, cfg["drop_tags"])
    if cfg["role"] == "writer" and cfg["writer_hook"]:
        _option({"build": cfg["writer_hook"]})
    client.incr(keys.ready)
    deadline = time.monotonic() + 90
    while client.blpop([keys.go], timeout=5) is None:  # shorter than the socket timeout
        if time.monotonic() > deadline:
            raise SystemExit("never told to go")
    if cfg["role"] == "writer":
        result = write_loop(cfg, client, keys)
    else:
        result = read_loop(cfg, client, keys, backend.stats)
    result.update(role=cfg["role"], pid=os.getpid(), stats=backend.stats.snapshot(),
                  left_out=dict(left_out))
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
    judged_later: int = 0
    lost_races: int = 0
    shared_moves: list[int] = field(default_factory=list)  # by each writer
    seconds: float = 0.0
    ops: dict[str, int] = field(default_factory=dict)
    idle: dict[str, int] = field(default_factory=dict)
    shapes: dict[str, int] = field(default_factory=dict)
    served_shapes: dict[str, int] = field(default_factory=dict)
    stale_shapes: dict[str, int] = field(default_factory=dict)
    left_out: dict[str, int] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)  # every worker's, summed
    examples: list[dict[str, Any]] = field(default_factory=list)

    def line(self) -> str:
        return (f"reads={self.reads} stale={self.stale} hits={self.hits} "
                f"misses={self.misses} writes={self.writes} stores={self.stores} "
                f"stores_rejected={self.stores_rejected} invalidations={self.invalidations} "
                f"bypassed={self.bypassed} errors={self.errors} "
                f"judged_later={self.judged_later} shared_moves={self.shared_moves} "
                f"lost_races={self.lost_races} seconds={self.seconds:.1f}")

    def details(self) -> str:
        return json.dumps({"ops": self.ops, "idle": self.idle, "shapes": self.shapes,
                           "served_shapes": self.served_shapes,
                           "stale_shapes": self.stale_shapes, "left_out": self.left_out,
                           "examples": self.examples}, indent=1)

    def add(self, report: dict[str, Any]) -> None:
        stats = report["stats"]
        _merge(self.stats, stats)
        self.errors += stats["errors"]
        self.invalidations += stats["invalidations"]
        if report["role"] == "writer":
            self.writes += report["writes"]
            self.lost_races += report["lost_races"]
            self.shared_moves.append(report["shared_moves"])
            _merge(self.ops, report["ops"])
            _merge(self.idle, report["idle"])
            _merge(self.left_out, report["left_out"])
            return
        self.reads += report["reads"]
        self.stale += report["stale"]
        self.judged_later += report["judged_later"]
        for name in ("hits", "misses", "stores", "stores_rejected", "bypassed"):
            setattr(self, name, getattr(self, name) + stats[name])
        _merge(self.shapes, report["shapes"])
        _merge(self.served_shapes, report["served_shapes"])
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


def seed_moves(run: str, writers: int, client: redis.Redis, keys: Keys
               ) -> tuple[dict[str, Any], list[Any]]:
    """The moves workload's rows: three publishers, ``OWN_LINKS`` books per writer and
    ``SHARED_LINKS`` more, each with one BookPublisher link at the first publisher, two
    labels and a shelf; version 0 of every row and pair recorded. Returns what the
    workers get, and the objects to delete afterwards (their deletion cascades)."""
    import datetime as dt

    from tests.ormapp.models import Book, BookPublisher, Label, Publisher, Shelf

    tag = run[-8:]
    publishers = [Publisher.objects.create(name=f"stale {tag} p{i}", country="x")
                  for i in range(3)]
    labels = [Label.objects.create(name=f"stale {tag} l{i}") for i in range(2)]
    shelf = Shelf.objects.create(name=f"stale {tag}")
    books = [Book.objects.create(title=f"moves {tag} {i}", author="checker",
                                 isbn=f"m{tag}{i:02d}", publication_date=dt.date(2000, 1, 1))
             for i in range(writers * OWN_LINKS + SHARED_LINKS)]
    links = [BookPublisher.objects.create(book=b, publisher=publishers[0]) for b in books]
    pair_books = [b.pk for b in books[:writers * OWN_LINKS]]
    universe = {
        "publishers": [p.pk for p in publishers], "labels": [x.pk for x in labels],
        "shelf": shelf.pk, "links": {str(link.pk): link.book_id for link in links},
        "own_links": [[link.pk for link in links[i * OWN_LINKS:(i + 1) * OWN_LINKS]]
                      for i in range(writers)],
        "shared_links": [link.pk for link in links[writers * OWN_LINKS:]],
        "pair_books": pair_books,
        "other_links": BookPublisher.objects.exclude(pk__in=[x.pk for x in links]).count(),
    }
    initial = {link_entity(link.pk): publishers[0].pk for link in links}
    initial.update({pair_entity("label", b, x.pk): False for b in pair_books for x in labels})
    initial.update({pair_entity("shelf", b, shelf.pk): False for b in pair_books})
    now = time.monotonic()
    client.hset(keys.history, mapping={f"{e}@0": json.dumps([state, now, "seed", -1])
                                       for e, state in initial.items()})
    client.zadd(keys.moved, dict.fromkeys(initial, 0))
    return universe, [*books, *publishers, *labels, shelf]


def _delete_keys(client: redis.Redis, run: str) -> None:
    batch = list(client.scan_iter(match=f"{run}:*", count=1000))
    for start in range(0, len(batch), 500):
        client.unlink(*batch[start:start + 500])


def run_check(*, redis_url: str, seconds: float = 8.0, writers: int = 2, readers: int = 4,
              rows_per_writer: int = 3, pause: float = 0.03, broken: bool = False,
              ops: list[str] | None = None, shapes: list[str] | None = None,
              workloads: tuple[str, ...] = ("versions",),
              backend_options: dict[str, Any] | None = None, drop_tags: str | None = None,
              writer_hook: Build | None = None, startup_timeout: float = 60.0
              ) -> CheckResult:
    """Run the check on the current Django ``default`` database (it must be PostgreSQL
    and hold the test models' tables); return the summed results of every worker.

    :param ops: the writer operations to run (default: all of the workloads').
    :param shapes: the reads to make (default: all of the workloads').
    :param workloads: ``"versions"``, ``"moves"`` or both (see the module).
    :param backend_options: added to every worker's ``RELAYCACHE["OPTIONS"]``; JSON
        values, or :class:`Build` for an object each worker makes (a near cache).
    :param drop_tags: a negative control: a regular expression of tags that writer
        processes leave out of their invalidations.
    :param writer_hook: a negative control: called in each writer process once Django
        is set up (to break something there).
    """
    from django.db import connection

    from tests.ormapp.models import Book

    if connection.vendor != "postgresql":
        raise RuntimeError(f"the stale-read check needs PostgreSQL, not {connection.vendor}")
    if rows_per_writer < 2:
        raise ValueError("rows_per_writer must be at least 2")
    if not workloads or set(workloads) - set(WORKLOADS):
        raise ValueError(f"workloads must be some of {WORKLOADS}, not {workloads!r}")
    run = f"stale{uuid.uuid4().hex[:10]}"
    keys = Keys(run)
    admin = redis.Redis.from_url(redis_url, socket_timeout=10)
    ids = seed(run, writers * rows_per_writer + 1) if "versions" in workloads else []
    shared, owned = (ids[-1] if ids else None), ids[:-1]
    universe, made = (seed_moves(run, writers, admin, keys) if "moves" in workloads
                      else ({}, []))
    options = {name: {"build": value.target} if isinstance(value, Build) else value
               for name, value in (backend_options or {}).items()}
    base = {"run": run, "redis_url": redis_url, "seconds": seconds, "broken": broken,
            "database": database_settings(connection.settings_dict),
            "workloads": list(workloads), "universe": universe, "writers": writers,
            "backend_options": options, "drop_tags": drop_tags, "shapes": shapes,
            "writer_hook": writer_hook.target if writer_hook else None}
    configs = [{**base, "role": "writer", "index": i, "seed": i, "pause": pause,
                "shared_row": shared, "ops": ops,
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
            admin.set(keys.origin, repr(began))
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
                lines = _text(out, tail=10_000_000).strip().splitlines()
                try:
                    result.add(json.loads(lines[-1]))
                except (IndexError, ValueError):
                    raise RuntimeError(f"worker printed no result:\n{_text(out)}\n"
                                       f"{_text(err)}") from None
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
            for obj in made:
                obj.delete()


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


def _text(stream: Any, tail: int = 4000) -> str:
    stream.seek(0)
    return stream.read().decode(errors="replace")[-tail:]


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
    parser.add_argument("--workloads", default="versions,moves",
                        help="comma-separated, of: " + ", ".join(WORKLOADS))
    parser.add_argument("--near-cache", action="store_true",
                        help="keep every worker's near cache on (the default of RedisCache)")
    parser.add_argument("--drop-tags", metavar="REGEX",
                        help="negative control: writers leave matching tags out of "
                             "their invalidations, e.g. '^(pin|pinned):'")
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
                           broken=args.broken, workloads=tuple(args.workloads.split(",")),
                           drop_tags=args.drop_tags,
                           backend_options=None if args.near_cache else {"near_cache": False},
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
