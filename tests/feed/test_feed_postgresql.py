"""The change feed on a real PostgreSQL and a real Redis, with real processes.

The database lives on a throwaway cluster with ``wal_level=logical``
(``logical_postgres``); the test process reads it through a Django alias of its own,
``feed``, and shares one Redis cache with the ``manage.py relaycache listen`` workers
it starts. Each kind of write Django never sees follows a read served from the cache,
and must show in that cached read within ``LAG_BOUND`` seconds of its commit: by
``psql`` (a subprocess), by a plain psycopg connection, by a trigger fired from another
table, by ``ON DELETE CASCADE`` declared in SQL, by ``COPY``. Then the lag's
distribution over ``LAG_SAMPLES`` writes (printed), ``relaycache stats``, the system
check with the worker running, stopped and absent, a worker killed (SIGKILL) during a
stream of foreign writes and restarted (it replays: no stale read remains), a standby
worker taking over, a slot PostgreSQL invalidated (recreated, everything invalidated
once), and Redis unreachable (nothing is confirmed to the slot until it is delivered).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import io
import json
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.core import checks
from django.core.management import call_command
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import Sum
from django.test import override_settings

from relaycache import CircuitBreaker, RedisCache
from relaycache.orm import feed
from relaycache.orm.feed import DEFAULT_INTERVAL, Feed, FeedError, Undelivered
from relaycache.orm.invalidation import table_tag
from relaycache.testing import use_backend
from tests.conftest import REDIS_URL
from tests.feed.support import SQLITE, manage, start
from tests.ormapp.models import Book, Label, Publisher, Review, Shelf, ShelfItem
from tests.servers import HOST, PostgresCluster, RedisServer
from tests.support import concurrently, wait_until

pytest_plugins = ("tests.servers",)
pytestmark = [pytest.mark.real_redis, pytest.mark.postgres]

ALIAS = "feed"
LAG_BOUND = 3.0
"""Seconds within which a foreign write must show in a cached read (30 polls of the
default interval: generous for a loaded CI machine; the measured lag is printed)."""
RESTART_BOUND = 30.0
"""Seconds for a worker process to start (Django's set-up) and catch up."""
LAG_SAMPLES = 100
LAGS: dict[str, list[float]] = {}
"""Seconds from a foreign write's commit to the first fresh cached read, by kind."""

SCHEMA_SQL = """
CREATE FUNCTION feed_test_review_bumps_price() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE ormapp_book SET price = price + 1 WHERE id = NEW.book_id;
    RETURN NEW;
END $$;
CREATE TRIGGER feed_test_review_bumps_price AFTER INSERT ON ormapp_review
    FOR EACH ROW EXECUTE FUNCTION feed_test_review_bumps_price();
DO $$ DECLARE fk text; BEGIN
    SELECT conname INTO fk FROM pg_constraint
    WHERE conrelid = 'ormapp_shelfitem'::regclass AND confrelid = 'ormapp_shelf'::regclass;
    EXECUTE format('ALTER TABLE ormapp_shelfitem DROP CONSTRAINT %I', fk);
END $$;
ALTER TABLE ormapp_shelfitem ADD FOREIGN KEY (shelf_id) REFERENCES ormapp_shelf (id)
    ON DELETE CASCADE;
"""
"""A trigger that writes ``ormapp_book`` when a review is added, and the shelf items'
foreign key replaced by one that cascades in the database (Django's does not)."""


class FeedEnv:
    """This module's database, cache and worker processes."""

    def __init__(self, cluster: PostgresCluster, dbname: str, log_dir: Path) -> None:
        run = uuid.uuid4().hex[:8]
        self.cluster, self.dbname, self.log_dir = cluster, dbname, log_dir
        self.prefix = f"feed{run}:"
        self.slot = feed.slot_name(ALIAS, f"rc{run}")
        self.database = {"ENGINE": "django.db.backends.postgresql", "NAME": dbname,
                         "USER": "postgres", "HOST": HOST, "PORT": str(cluster.port)}
        self.relaycache = {"BACKEND": REDIS_URL, "KEY_PREFIX": self.prefix,
                           "DEFAULT_TTL": 60,
                           "FEED": {"DATABASES": [ALIAS], "SLOT_PREFIX": f"rc{run}"}}
        self.settings = {"DATABASES": {"default": SQLITE, ALIAS: self.database},
                         "RELAYCACHE": self.relaycache}
        self.backend = RedisCache.from_url(REDIS_URL, default_ttl=60, value_prefix=self.prefix,
                                           meta_prefix=self.prefix + "meta:")
        self.workers: list[tuple[subprocess.Popen[bytes], Path]] = []

    @property
    def dsn(self) -> str:
        return self.cluster.dsn(self.dbname)

    def manage(self, *args: str) -> subprocess.CompletedProcess[str]:
        return manage(self.settings, *args)

    def start_worker(self) -> subprocess.Popen[bytes]:
        path = self.log_dir / f"worker-{len(self.workers)}.log"
        with path.open("wb") as log:
            process = start(self.settings, log, "relaycache", "listen", "--database", ALIAS)
        self.workers.append((process, path))
        return process

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [process for process, _ in self.workers if process.poll() is None]

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL, like a crash: the worker gets no chance to finish anything."""
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)

    def log(self, process: subprocess.Popen[bytes]) -> str:
        path = next(path for candidate, path in self.workers if candidate is process)
        return path.read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(f"--- worker {process.pid} ---\n{self.log(process)[-3000:]}"
                         for process, _ in self.workers)

    def progress(self) -> dict[str, Any] | None:
        return feed.feed_report(self.backend, [ALIAS])[ALIAS]

    def wait_caught_up(self, after: float, timeout: float = RESTART_BOUND) -> dict[str, Any]:
        """Until a worker records that everything committed before ``after`` (a
        ``time.time()``) is invalidated; its record."""
        def caught_up() -> bool:
            record = self.progress()
            return record is not None and (record.get("caught_up_at") or 0) > after

        assert wait_until(caught_up, timeout), f"no worker caught up:\n{self.logs()}"
        record = self.progress()
        assert record is not None
        return record

    def ensure_worker(self) -> None:
        if not self.alive():
            self.start_worker()
        self.wait_caught_up(time.time())

    def slot_state(self, name: str | None = None) -> tuple[str, str | None, bool]:
        """The slot's ``wal_status``, confirmed position, and whether a session uses it."""
        [row] = self.cluster.execute(
            "SELECT wal_status, confirmed_flush_lsn::text, active FROM pg_replication_slots "
            f"WHERE slot_name = '{name or self.slot}'")
        return row[0], row[1], row[2]


@pytest.fixture(scope="module")
def env(logical_postgres: PostgresCluster, django_db_blocker: Any,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[FeedEnv]:
    """A migrated database on the logical cluster as Django alias ``feed``, its slot
    set up by ``relaycache listen --setup``, and one worker running; at the end, the
    workers killed and the slot dropped by ``relaycache listen --drop``."""
    dbname = f"feed_{uuid.uuid4().hex[:8]}"
    logical_postgres.execute(f'CREATE DATABASE "{dbname}"')
    feed_env = FeedEnv(logical_postgres, dbname, tmp_path_factory.mktemp("feed"))
    connections.settings[ALIAS] = {
        **copy.deepcopy(connections.settings[DEFAULT_DB_ALIAS]), **feed_env.database,
        "PASSWORD": "", "OPTIONS": {},
        "TEST": {"CHARSET": None, "COLLATION": None, "MIGRATE": True, "MIRROR": None,
                 "NAME": None}}
    try:
        with django_db_blocker.unblock():
            call_command("migrate", database=ALIAS, run_syncdb=True, verbosity=0)
        logical_postgres.execute(SCHEMA_SQL, dbname)
        done = feed_env.manage("relaycache", "listen", "--setup", "--database", ALIAS)
        assert done.returncode == 0, done
        assert f"Created replication slot '{feed_env.slot}'" in done.stdout, done
        assert "max_slot_wal_keep_size" not in done.stderr, done  # bounded on this cluster
        feed_env.start_worker()
        feed_env.wait_caught_up(time.time())
        yield feed_env
    finally:
        for process in feed_env.alive():
            feed_env.kill(process)
        dropped = feed_env.manage("relaycache", "listen", "--drop", "--database", ALIAS)
        with django_db_blocker.unblock():
            connections[ALIAS].close()
        with contextlib.suppress(AttributeError):
            del connections[ALIAS]
        del connections.settings[ALIAS]
        feed_env.backend.clear()
        logical_postgres.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    assert dropped.returncode == 0 and "Dropped replication slot" in dropped.stdout, dropped


@pytest.fixture(autouse=True)
def _database_access(django_db_blocker: Any) -> Iterator[None]:
    """The ``feed`` alias is this module's own: no test database, no flush."""
    with django_db_blocker.unblock():
        yield


@pytest.fixture
def cache(env: FeedEnv) -> Iterator[RedisCache]:
    """The workers' cache, as the default backend of this process."""
    with use_backend(env.backend):
        yield env.backend


# -- reads -------------------------------------------------------------------------------

@dataclass
class Read:
    """One read of the ``feed`` database, cached or straight from it."""

    model: Any
    shape: Callable[[Any], Any]

    def cached(self) -> Any:
        return self.shape(self.model.objects.using(ALIAS).cached())

    def truth(self) -> Any:
        return self.shape(self.model.objects.using(ALIAS).nocache())


def warm(cache: RedisCache, read: Read) -> Any:
    """Cache ``read`` and check that the cache serves it (the second read is a hit)."""
    first = read.cached()
    hits = cache.stats.hits
    assert read.cached() == first == read.truth()
    assert cache.stats.hits > hits, "the read is not served from the cache"
    return first


def wait_fresh(read: Read, committed: float, bound: float = LAG_BOUND,
               kind: str | None = None) -> Any:
    """Poll the cached read until it equals the database, at most ``bound`` seconds
    after ``committed`` (a ``perf_counter()``); record the lag under ``kind``."""
    truth = read.truth()
    while (seen := read.cached()) != truth:
        assert time.perf_counter() - committed < bound, (
            f"still {seen!r} in the cache, {truth!r} in the database, {bound} s after the "
            "commit")
        time.sleep(0.002)
    if kind is not None:
        LAGS.setdefault(kind, []).append(time.perf_counter() - committed)
    return truth


def make_book(name: str) -> Book:
    return Book.objects.using(ALIAS).create(
        title=name, author="feed", isbn=uuid.uuid4().hex[:13],
        publication_date=dt.date(2024, 1, 1), price=0)


def price_of(book: Book) -> Read:
    return Read(Book, lambda qs: qs.values_list("price", flat=True).get(pk=book.pk))


def foreign_update(env: FeedEnv, book: Book) -> None:
    """``price + 1`` from a connection Django knows nothing of; returns once committed."""
    with psycopg.connect(env.dsn) as conn:
        conn.execute("UPDATE ormapp_book SET price = price + 1 WHERE id = %s", [book.pk])


# -- each kind of write Django never sees ---------------------------------------------

def test_write_by_psql(env: FeedEnv, cache: RedisCache) -> None:
    label = Label.objects.using(ALIAS).create(name="before psql")
    read = Read(Label, lambda qs: list(qs.order_by("id").values_list("id", "name")))
    before = warm(cache, read)
    subprocess.run([*env.cluster.psql(env.dbname), "-c",
                    f"UPDATE ormapp_label SET name = 'set by psql' WHERE id = {label.pk}"],
                   check=True, capture_output=True, timeout=30)
    after = wait_fresh(read, time.perf_counter(), kind="psql")
    assert (label.pk, "set by psql") in after and (label.pk, "before psql") in before


def test_write_by_a_plain_psycopg_connection(env: FeedEnv, cache: RedisCache) -> None:
    read = Read(Publisher, lambda qs: qs.filter(country="XX").count())
    before = warm(cache, read)
    with psycopg.connect(env.dsn) as conn:  # commits when the block ends
        conn.execute("INSERT INTO ormapp_publisher (name, country) VALUES ('Foreign', 'XX')")
    assert wait_fresh(read, time.perf_counter(), kind="psycopg") == before + 1


def test_write_by_a_trigger_fired_from_another_table(env: FeedEnv, cache: RedisCache) -> None:
    """Django adds a review (and invalidates the reviews); the database's trigger
    changes the book, which only the feed sees."""
    book = make_book("trigger")
    before = warm(cache, price_of(book))
    Review.objects.using(ALIAS).create(book=book, stars=5)
    assert wait_fresh(price_of(book), time.perf_counter(), kind="trigger") == before + 1


def test_delete_by_on_delete_cascade_declared_in_sql(env: FeedEnv, cache: RedisCache) -> None:
    """Django deletes a shelf with raw SQL (and invalidates the shelves); the database
    deletes its items."""
    book = make_book("cascade")
    shelf = Shelf.objects.using(ALIAS).create(name="doomed")
    ShelfItem.objects.using(ALIAS).create(shelf=shelf, book=book)
    read = Read(ShelfItem, lambda qs: qs.filter(book_id=book.pk).count())
    assert warm(cache, read) == 1
    with connections[ALIAS].cursor() as cursor:
        cursor.execute("DELETE FROM ormapp_shelf WHERE id = %s", [shelf.pk])
    assert wait_fresh(read, time.perf_counter(), kind="cascade") == 0


def test_rows_added_by_copy(env: FeedEnv, cache: RedisCache) -> None:
    """psycopg's ``copy()`` on Django's own connection bypasses its execute wrappers."""
    read = Read(Label, lambda qs: sorted(qs.filter(name__startswith="copied")
                                         .values_list("name", flat=True)))
    assert warm(cache, read) == []
    with connections[ALIAS].cursor() as cursor, cursor.copy(
            "COPY ormapp_label (name) FROM STDIN") as copy_in:
        for n in range(3):
            copy_in.write_row([f"copied {n}"])
    assert wait_fresh(read, time.perf_counter(), kind="COPY") == [
        "copied 0", "copied 1", "copied 2"]


def test_a_partition_of_a_table_whose_names_need_quotes(env: FeedEnv) -> None:
    """PostgreSQL decodes a row under the partition it landed in, while reads name the
    partitioned table: both are invalidated (odd names included), with the same
    :func:`~relaycache.orm.invalidation.table_tag` Django-side writes use."""
    env.cluster.execute(
        'CREATE SCHEMA "Odd: schema"; '
        'CREATE TABLE "Odd: schema"."Parent.x" (id int) PARTITION BY RANGE (id); '
        'CREATE TABLE "Odd: schema"."Part ""1""" PARTITION OF "Odd: schema"."Parent.x" '
        "FOR VALUES FROM (0) TO (100)", env.dbname)
    stamp_keys = env.backend.stamp_keys([table_tag(name, ALIAS)
                                         for name in ("Parent.x", 'Part "1"')])
    before = env.backend.fetch(stamp_keys)
    subprocess.run([*env.cluster.psql(env.dbname), "-c",
                    'INSERT INTO "Odd: schema"."Parent.x" VALUES (1)'],
                   check=True, capture_output=True, timeout=30)
    assert wait_until(lambda: all(
        now != then for now, then in zip(env.backend.fetch(stamp_keys), before, strict=True)),
        LAG_BOUND), env.logs()


# -- lag, stats, the check -----------------------------------------------------------

def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def test_lag_from_commit_to_a_fresh_cached_read(env: FeedEnv, cache: RedisCache,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """``LAG_SAMPLES`` foreign updates one after the other, each after a cached read of
    the row: the time from the commit's return to the first cached read that shows it.
    A random pause before each write keeps them from falling into step with the
    worker's polls (a write made just after a poll waits a whole interval, one made
    just before it almost nothing), as writes of other programs would."""
    book = make_book("lag")
    pauses = random.Random(15)
    for _ in range(LAG_SAMPLES):
        warm(cache, price_of(book))
        time.sleep(pauses.uniform(0, DEFAULT_INTERVAL))
        foreign_update(env, book)
        wait_fresh(price_of(book), time.perf_counter(), kind="lag")
    lags = sorted(LAGS["lag"])
    p50, p99 = lags[len(lags) // 2], lags[int(len(lags) * 0.99)]
    record = env.progress()
    assert record is not None and record["commit_lag"]["samples"] >= LAG_SAMPLES
    worker = record["commit_lag"]
    kinds = ", ".join(f"{kind} {_ms(max(values))}" for kind, values in LAGS.items()
                      if kind != "lag")
    with capsys.disabled():
        print(f"\nchange feed lag (--interval {DEFAULT_INTERVAL}), commit to fresh cached "
              f"read over {len(lags)} foreign writes: p50 {_ms(p50)}, p99 {_ms(p99)}, max "
              f"{_ms(lags[-1])}; the worker's own commit to invalidation: p50 "
              f"{_ms(worker['p50'])}, p99 {_ms(worker['p99'])}; by kind: {kinds}")
    assert p99 < LAG_BOUND


def test_stats_shows_the_feed(env: FeedEnv) -> None:
    with override_settings(RELAYCACHE=env.relaycache):
        data = call_command_json("relaycache", "stats", "--json")
    status = data["feed"]["databases"][ALIAS]
    assert data["feed"]["configured"] is True
    assert status["slot"] == env.slot and status["lag"] < 1.0
    assert feed.lsn_value(status["lsn"]) > 0
    assert status["commit_lag"]["samples"] > 0 and status["commit_lag"]["p99"] < LAG_BOUND


def call_command_json(*args: str) -> dict[str, Any]:
    out = io.StringIO()
    call_command(*args, stdout=out)
    data: dict[str, Any] = json.loads(out.getvalue())
    return data


def feed_warnings() -> list[checks.CheckMessage]:
    return [message for message in checks.run_checks(tags=[checks.Tags.caches])
            if message.id == "relaycache.W004"]


def test_the_system_check_warns_when_the_worker_is_absent_or_behind(env: FeedEnv) -> None:
    env.ensure_worker()
    config = {**env.relaycache, "FEED": {**env.relaycache["FEED"], "MAX_LAG": 1.0}}
    with override_settings(RELAYCACHE=config):
        assert feed_warnings() == []
        for process in env.alive():
            env.kill(process)
        assert wait_until(feed_warnings, 10), "no warning once the worker stopped"
        [behind] = feed_warnings()
        assert f"The change feed of database '{ALIAS}' is" in behind.msg
        assert "s behind (MAX_LAG 1.0 s" in behind.msg and env.slot in behind.msg
    with override_settings(RELAYCACHE={**config, "KEY_PREFIX": f"{env.prefix}nobody:"}):
        [absent] = feed_warnings()  # a cache (prefix) no worker ever wrote to
        assert f"No change-feed worker has recorded progress for database '{ALIAS}'" in (
            absent.msg)
    env.ensure_worker()


# -- crashes and failures ------------------------------------------------------------

def test_worker_killed_during_foreign_writes_and_restarted(env: FeedEnv, cache: RedisCache
                                                           ) -> None:
    """While it is down the cache serves rows that changed (nothing else could have
    invalidated them); once restarted, the worker replays what it missed from the slot
    (no full invalidation) and no cached read is stale."""
    env.ensure_worker()
    [worker] = env.alive()
    ids = [make_book(f"stream {n}").pk for n in range(4)]
    reads = [Read(Book, lambda qs: list(qs.filter(pk__in=ids).order_by("id")
                                        .values_list("id", "price"))),
             Read(Book, lambda qs: qs.filter(pk__in=ids).aggregate(total=Sum("price"))),
             *(Read(Book, lambda qs, pk=pk: qs.values_list("price", flat=True).get(pk=pk))
               for pk in ids)]
    writes = {"all": 0, "while_down": 0}
    down, stop = threading.Event(), threading.Event()

    def stream(_: int) -> None:
        with psycopg.connect(env.dsn, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("UPDATE ormapp_book SET price = price + 1 WHERE id = %s",
                             [ids[writes["all"] % len(ids)]])
                writes["all"] += 1
                writes["while_down"] += down.is_set()
                time.sleep(0.002)

    with concurrently(stream, 1, stop=stop, timeout=20):
        assert wait_until(lambda: writes["all"] >= 50, 10)
        env.kill(worker)
        # Its session ends with it (and the slot is free): nothing of it is in flight.
        assert wait_until(lambda: not env.slot_state()[2], 10)
        down.set()
        held = [read.cached() for read in reads]
        hits = cache.stats.hits
        assert wait_until(lambda: writes["while_down"] >= 100, 10)
        assert [read.cached() for read in reads] == held, "the cache was invalidated"
        assert cache.stats.hits == hits + len(reads)
        assert [read.truth() for read in reads] != held, "nothing changed while down"
        restarted = env.start_worker()
        down.clear()
        restarted_at = writes["all"]
        assert wait_until(lambda: writes["all"] >= restarted_at + 100, 10)
    record = env.wait_caught_up(time.time())
    assert [read.cached() for read in reads] == [read.truth() for read in reads]
    assert record["transactions"] >= writes["while_down"], record
    assert "invalidating every cached query" not in env.log(restarted), env.log(restarted)


def test_a_standby_worker_takes_over(env: FeedEnv, cache: RedisCache) -> None:
    env.ensure_worker()
    [leader] = env.alive()
    standby = env.start_worker()
    assert wait_until(lambda: "standing by" in env.log(standby), RESTART_BOUND), env.logs()
    env.kill(leader)
    book = make_book("failover")
    before = warm(cache, price_of(book))
    foreign_update(env, book)
    assert wait_fresh(price_of(book), time.perf_counter()) == before + 1
    assert "leading" in env.log(standby)


def test_the_worker_reconnects_when_its_connection_is_killed(env: FeedEnv, cache: RedisCache
                                                            ) -> None:
    """``pg_terminate_backend`` of the leader's session (found by its advisory lock):
    the worker connects again, takes the lead again and goes on."""
    env.ensure_worker()
    [worker] = env.alive()
    [(pid,)] = env.cluster.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted", env.dbname)
    env.cluster.execute(f"SELECT pg_terminate_backend({pid})")
    book = make_book("reconnect")
    before = warm(cache, price_of(book))
    foreign_update(env, book)
    assert wait_fresh(price_of(book), time.perf_counter(), RESTART_BOUND) == before + 1
    assert "unreachable" in env.log(worker) and env.log(worker).count("leading") == 2


def test_a_slot_postgresql_invalidated_is_recreated_and_everything_invalidated(
        env: FeedEnv, cache: RedisCache) -> None:
    """The worker is away while more WAL than ``max_slot_wal_keep_size`` is written:
    PostgreSQL invalidates the slot, the changes it held are gone, and the restarted
    worker invalidates every cached query of the database."""
    for process in env.alive():
        env.kill(process)
    book = make_book("lost")
    before = warm(cache, price_of(book))
    env.cluster.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '2MB'")
    env.cluster.execute("SELECT pg_reload_conf()")
    try:
        foreign_update(env, book)
        with psycopg.connect(env.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE feed_test_filler AS "
                         "SELECT repeat('x', 1000) AS x FROM generate_series(1, 8000)")
            conn.execute("DROP TABLE feed_test_filler")
            conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
        assert env.slot_state()[0] == "lost"
    finally:
        env.cluster.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
        env.cluster.execute("SELECT pg_reload_conf()")
    assert price_of(book).cached() == before  # still served: no worker invalidated it
    worker = env.start_worker()
    assert wait_fresh(price_of(book), time.perf_counter(), RESTART_BOUND) == before + 1
    log = env.log(worker)
    assert "was invalidated by PostgreSQL" in log and "invalidating every cached query" in log
    assert env.slot_state()[0] != "lost"


def test_nothing_is_confirmed_until_the_cache_took_it(env: FeedEnv,
                                                      redis_server: RedisServer) -> None:
    """A feed of its own (a second slot, a Redis server of its own) whose Redis hangs
    (SIGSTOP): a poll raises :class:`Undelivered` and the slot stays where it was; once
    Redis answers, the same changes are invalidated and only then confirmed."""
    backend = RedisCache.from_url(redis_server.url, default_ttl=60, socket_timeout=0.3,
                                  breaker=CircuitBreaker(cooldown=0.1))
    probe = Feed(ALIAS, slot=f"{env.slot}_b")
    assert probe.setup()["created"]
    try:
        with use_backend(backend):
            assert probe.cycle()  # first start: everything invalidated once, then polled
            book = make_book("outage")
            before = warm(backend, price_of(book))
            foreign_update(env, book)
            confirmed = env.slot_state(probe.slot)[1]
            redis_server.pause()
            with pytest.raises(Undelivered):
                probe.cycle()
            assert env.slot_state(probe.slot)[1] == confirmed
            redis_server.resume()

            def delivered() -> bool:
                try:
                    return probe.cycle()
                except Undelivered:
                    return False

            assert wait_until(delivered, 10)
            assert feed.lsn_value(env.slot_state(probe.slot)[1] or "0/0") > feed.lsn_value(
                confirmed or "0/0")
            assert price_of(book).cached() == before + 1
    finally:
        redis_server.resume()
        assert probe.drop()


def test_the_worker_refuses_a_cache_private_to_its_process(env: FeedEnv) -> None:
    settings = {**env.settings, "RELAYCACHE": {**env.relaycache, "BACKEND": "memory"}}
    done = manage(settings, "relaycache", "listen", "--database", ALIAS)
    assert done.returncode == 1 and "is private to this process" in done.stderr, done
    with pytest.raises(FeedError, match="no replication slot"):
        Feed(ALIAS, slot=f"{env.slot}_never_set_up").resume()
