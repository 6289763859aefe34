"""The change feed: writes Django never sees, learnt from PostgreSQL and invalidated.

Django-side writes are invalidated by the execute hook (:mod:`.invalidation`), which
stays the first line: such a write is fresh when its call returns. What that hook
cannot see (other programs, ``psql``, triggers, ``ON DELETE CASCADE`` declared in SQL,
``COPY``, functions that write) reaches the cache through this module: a worker
(``manage.py relaycache listen``) reads every committed change of one database from a
logical replication slot and invalidates the tables written with
:func:`~.invalidation.invalidate_tables`, the function Django-side writes use.

Why a replication slot polled through SQL, rather than triggers and ``NOTIFY`` or the
streaming protocol (docs/feed.md has the full comparison):

- a slot keeps every change until it is confirmed, so a worker that was killed or lost
  its connection replays what it missed; ``NOTIFY`` is lost when nobody listens, which
  would force a full invalidation after every reconnect, and triggers must be added to
  every table (new ones included) and make every writing transaction take the global
  ``NOTIFY`` lock at commit;
- ``pg_logical_slot_peek_changes`` reads without consuming, so a change is confirmed
  (``pg_replication_slot_advance``) only after its invalidation reached the cache:
  Redis being down delays the feed, never loses a change;
- psycopg 3 has no client for the streaming replication protocol; the SQL functions
  work through Django's own connection with either driver.

``test_decoding`` turns each change into a line of text that names the table; the poll
reduces them on the server to the distinct tables written (and their parent tables,
since a change to a partition is a change to the table Django reads) and the commit
times, so a million-row ``COPY`` costs the worker one short row.

Where a slot's history cannot be trusted (the slot was invalidated because the worker
was down longer than ``max_slot_wal_keep_size`` allows and was recreated, it was
consumed by someone else, or the position the last worker recorded in the cache is
not where the slot stands) every cached query of the database is invalidated once:
nothing is lost, at the price of a cold cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from django.db import DatabaseError, InterfaceError, OperationalError, connections

from ..backends.base import BaseCache
from ..core.defaults import get_default_backend
from .invalidation import invalidate_tables, namespace, orm_backends
from .sqlwrites import ALL_TABLES

__all__ = ["DEFAULT_INTERVAL", "Feed", "FeedError", "Undelivered", "feed_report",
           "feed_status", "read_progress", "slot_name"]

logger = logging.getLogger("relaycache.feed")

DEFAULT_INTERVAL = 0.1
"""Seconds between two polls of a caught-up slot: about half of it is the typical lag
(each poll costs the server a few milliseconds of decoding)."""
BATCH_CHANGES = 10_000
"""Change lines one poll asks for (PostgreSQL finishes the transaction it is in): a
backlog is worked off, and the progress recorded, in steps of about this size."""
LAG_SAMPLES = 1000
"""Transactions whose commit-to-invalidation lag the percentiles are taken over."""
STANDBY_RETRY = 1.0
"""Seconds a standby worker waits before trying again to take the lead."""
MAX_BACKOFF = 10.0
"""Longest wait before retrying after a failure (database or cache unreachable)."""
PROGRESS_TTL = 7 * 86400
"""Seconds the recorded progress outlives its worker: long enough that a stopped
worker shows as far behind (with where it stopped), not as never started."""
PLUGIN = "test_decoding"
OBJECT_IN_USE = "55006"
"""SQLSTATE of "replication slot ... is active for PID ..." (psycopg 3 and psycopg2
report it on the exception Django wraps)."""

# A change line of test_decoding starts with "table <schema>.<name>: ", both quoted
# as quote_ident() does: bare only for lower-case letters, digits and underscores, so
# a name with no double quote before the first ": " is all of that prefix (the fast
# path, a regular expression costing several times the decoding itself).
_TABLE_LINE = (r'^table ((?:"(?:[^"]|"")*"|[a-z0-9_]+)\.(?:"(?:[^"]|"")*"|[a-z0-9_]+)): ')
_QUALIFIED = re.compile(r'("(?:[^"]|"")*"|[^".]+)\.("(?:[^"]|"")*"|[^".]+)')

# One poll, one round trip: up to which position the WAL is flushed (the poll reads no
# further, so that position can be confirmed once it is delivered), the changes up to
# there reduced to the tables written (with every table they inherit from: reads
# name the parent of a partition) and the commit times. Neither this nor any other
# statement here may look like a write to sqlwrites (tests/feed checks it), or the
# worker's own hook would invalidate the whole database on every poll.
PEEK_SQL = f"""
WITH RECURSIVE target AS (SELECT pg_current_wal_flush_lsn() AS lsn),
changes AS (
    SELECT c.lsn,
           CASE WHEN starts_with(c.data, 'table ') THEN
               CASE WHEN strpos(split_part(c.data, ': ', 1), '"') = 0
                    THEN substr(split_part(c.data, ': ', 1), 7)
                    ELSE substring(c.data FROM '{_TABLE_LINE}') END
           END AS name,
           CASE WHEN starts_with(c.data, 'COMMIT ') THEN
               substring(c.data FROM '^COMMIT \\(at (.+)\\)$')::timestamptz
           END AS committed
    FROM target, pg_logical_slot_peek_changes(
        %s, target.lsn, %s, 'include-xids', '0', 'include-timestamp', '1',
        'skip-empty-xacts', '1') AS c
),
tables AS (SELECT DISTINCT name FROM changes WHERE name IS NOT NULL),
written(relid) AS (
    SELECT to_regclass(name)::oid FROM tables
    UNION
    SELECT i.inhparent FROM pg_inherits AS i JOIN written AS w ON i.inhrelid = w.relid
)
SELECT target.lsn::text,
       (SELECT max(lsn) FROM changes)::text,
       (SELECT count(*) FROM changes),
       ARRAY(SELECT name FROM tables
             UNION
             SELECT quote_ident(n.nspname) || '.' || quote_ident(r.relname)
             FROM written AS w JOIN pg_class AS r ON r.oid = w.relid
             JOIN pg_namespace AS n ON n.oid = r.relnamespace),
       ARRAY(SELECT extract(epoch FROM committed)::float8 FROM changes
             WHERE committed IS NOT NULL ORDER BY lsn)
FROM target
"""
SLOT_SQL = """
SELECT current_database(), s.database, s.plugin, s.wal_status,
       s.confirmed_flush_lsn::text
FROM (VALUES (1)) AS v LEFT JOIN pg_replication_slots AS s ON s.slot_name = %s
"""
CREATE_SQL = "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, %s)"
DROP_SQL = "SELECT pg_drop_replication_slot(%s)"
ADVANCE_SQL = "SELECT end_lsn::text FROM pg_replication_slot_advance(%s, %s::pg_lsn)"
LOCK_SQL = "SELECT pg_try_advisory_lock(%s)"
SETTINGS_SQL = ("SELECT current_setting('wal_level'), "
                "current_setting('max_slot_wal_keep_size')")
STATEMENTS = (PEEK_SQL, SLOT_SQL, CREATE_SQL, DROP_SQL, ADVANCE_SQL, LOCK_SQL, SETTINGS_SQL)
"""Every statement the feed sends (for the test that none looks like a write)."""


class FeedError(Exception):
    """The feed cannot run for this database; the message says why and what to do."""


class Undelivered(Exception):
    """Invalidations did not reach the cache: nothing was confirmed to PostgreSQL, the
    same changes are read and invalidated again on the next attempt."""


def lsn_value(text: str) -> int:
    """``'16/B374D848'`` -> an int that orders as the positions do."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def lsn_text(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def slot_name(using: str, prefix: str) -> str:
    """The replication slot of the feed of alias ``using``: slot names are shared by
    every database of a PostgreSQL server, and may hold ``[a-z0-9_]`` only."""
    return re.sub(r"[^a-z0-9_]", "_", f"{prefix}_{using}".lower())[:63]


def split_name(qualified: str) -> tuple[str, str]:
    """``'"My schema".book'`` (as ``quote_ident`` writes it) -> ``('My schema', 'book')``."""
    match = _QUALIFIED.fullmatch(qualified)
    if match is None:
        raise ValueError(f"not a schema-qualified table name: {qualified!r}")
    schema, table = (part[1:-1].replace('""', '"') if part.startswith('"') else part
                     for part in match.groups())
    return schema, table


def table_names(qualified: Iterable[str]) -> set[str]:
    """What to hand :func:`~.invalidation.invalidate_tables` for the tables decoded:
    their names as ``db_table`` spells them (unquoted), which that function turns into
    tags exactly as it does for Django's reads and writes."""
    return {table for _, table in map(split_name, qualified)}


def progress_key(backend: BaseCache, using: str) -> str:
    """Where the worker of ``using`` records its progress: beside the tag stamps, by
    invalidation namespace, so the aliases that share one read the same record."""
    return f"{backend.meta_prefix}feed:{namespace(using)}"


def read_progress(backend: BaseCache, aliases: list[str]) -> dict[str, dict[str, Any] | None]:
    """The progress each alias's worker last recorded (``None``: none, or unreadable),
    in one round trip. Raises the backend's ``errors`` if it cannot be reached."""
    raws = backend.fetch([progress_key(backend, alias) for alias in aliases]) if aliases else []
    found: dict[str, dict[str, Any] | None] = {}
    for alias, raw in zip(aliases, raws, strict=True):
        try:
            record = orjson.loads(raw) if raw is not None else None
        except orjson.JSONDecodeError:
            record = None
        found[alias] = record if isinstance(record, dict) else None
    return found


def feed_report(backend: BaseCache, aliases: list[str]) -> dict[str, dict[str, Any] | None]:
    """:func:`read_progress` with each record's current ``lag``: seconds since the
    moment before which every committed write has been invalidated (as the worker's
    clock and this process's agree)."""
    now = time.time()
    report = read_progress(backend, aliases)
    for record in report.values():
        if record is not None and isinstance(record.get("caught_up_at"), int | float):
            record["lag"] = round(max(0.0, now - record["caught_up_at"]), 3)
    return report


def feed_status(backend: BaseCache) -> dict[str, Any]:
    """The feed as ``relaycache stats`` shows it: whether ``FEED`` names databases, its
    ``MAX_LAG``, and :func:`feed_report` for those databases (for every alias when it
    names none, so that a worker run without the setting still shows)."""
    from ..settings import feed_settings, read_settings

    feed = feed_settings(read_settings())
    aliases = feed["DATABASES"] or list(connections)
    return {"configured": bool(feed["DATABASES"]), "max_lag": feed["MAX_LAG"],
            "databases": feed_report(backend, aliases)}


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass
class Batch:
    """What one poll found."""

    target: int
    """The flushed WAL position the poll read up to."""
    last: int | None
    """Position of the last change line returned."""
    lines: int
    tables: list[str]
    """Tables written (and their parents), schema-qualified and quoted."""
    commits: list[float]
    """Commit time (Unix seconds, database clock) of each transaction, in order."""

    @property
    def complete(self) -> bool:
        """Whether the poll reached :attr:`target` (else it stopped at the batch size)."""
        return self.lines < BATCH_CHANGES


@dataclass
class SlotState:
    database: str
    """The database the worker is connected to."""
    slot_database: str | None
    """The database the slot belongs to (``None``: there is no such slot)."""
    plugin: str | None
    wal_status: str | None
    confirmed: str | None

    @property
    def exists(self) -> bool:
        return self.slot_database is not None

    @property
    def lost(self) -> bool:
        """PostgreSQL removed WAL the slot still needed (``max_slot_wal_keep_size``):
        it can never be read again."""
        return self.wal_status == "lost" or (self.exists and self.confirmed is None)


class Feed:
    """The feed of one database alias: :meth:`setup` and :meth:`drop` its replication
    slot, :meth:`run` the worker, or make one :meth:`cycle`.

    :param using: the database alias (PostgreSQL only).
    :param slot: the replication slot's name (default: ``FEED["SLOT_PREFIX"]`` and the
        alias, see :func:`slot_name`).
    :param interval: seconds between polls once caught up.
    """

    def __init__(self, using: str = "default", *, slot: str | None = None,
                 interval: float = DEFAULT_INTERVAL) -> None:
        if using not in connections:
            raise FeedError(f"no database alias {using!r} in DATABASES")
        self.using = using
        self.connection = connections[using]
        vendor = self.connection.vendor
        if vendor != "postgresql":
            raise FeedError(
                f"database {using!r} is {self.connection.display_name}: the change feed "
                "reads PostgreSQL's logical decoding and is not supported on "
                f"{self.connection.display_name}, which has no change stream to read. "
                "Writes Django does not make there are not invalidated (docs/limits.md).")
        if slot is None:
            from ..settings import feed_settings, read_settings

            slot = slot_name(using, feed_settings(read_settings())["SLOT_PREFIX"])
        self.slot = slot
        self.interval = interval
        digest = hashlib.blake2b(f"relaycache.feed:{slot}".encode(), digest_size=8).digest()
        self.lock_key = int.from_bytes(digest, "big", signed=True)
        self.leading = False
        self.position: int | None = None
        """The slot's confirmed position; ``None`` until :meth:`resume` has run on the
        current connection."""
        self.lags: deque[float] = deque(maxlen=LAG_SAMPLES)
        self.transactions = 0
        self.caught_up_at: float | None = None
        self.last_commit_at: float | None = None
        self.started_at = time.time()
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __repr__(self) -> str:
        return f"<Feed {self.using!r} slot {self.slot!r}>"

    @property
    def backend(self) -> BaseCache:
        """Where progress is recorded (invalidations go to every ORM backend)."""
        return get_default_backend()

    # -- SQL ---------------------------------------------------------------------------

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self.connection.cursor() as cursor:
            cursor.execute(sql, list(params))
            return list(cursor.fetchall())

    def slot_state(self) -> SlotState:
        return SlotState(*self._rows(SLOT_SQL, [self.slot])[0])

    def _create(self) -> None:
        self._rows(CREATE_SQL, [self.slot, PLUGIN])

    def _check_owner(self, state: SlotState) -> None:
        if state.slot_database != state.database or state.plugin != PLUGIN:
            raise FeedError(
                f"replication slot {self.slot!r} exists for database "
                f"{state.slot_database!r} with plugin {state.plugin!r}, not for "
                f"{state.database!r} with {PLUGIN}: it belongs to something else. Give "
                "this feed its own name with RELAYCACHE['FEED']['SLOT_PREFIX'].")

    # -- set-up ------------------------------------------------------------------------

    def setup(self) -> dict[str, Any]:
        """Check ``wal_level`` and create the slot (idempotent; a slot PostgreSQL has
        invalidated is created again). The slot keeps every change from now on, until a
        worker confirms it."""
        wal_level, keep = self._rows(SETTINGS_SQL)[0]
        if wal_level != "logical":
            raise FeedError(
                f"wal_level is {wal_level!r} on database {self.using!r}; the feed needs "
                "'logical': ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL")
        state = self.slot_state()
        created = not state.exists
        if created:
            self._create()
        else:
            self._check_owner(state)
            if state.lost:
                self._recreate()
                created = True
        return {"database": self.using, "slot": self.slot, "created": created,
                "max_slot_wal_keep_size": keep}

    def drop(self) -> bool:
        """Drop the slot (PostgreSQL stops keeping WAL for it); ``False`` if absent."""
        state = self.slot_state()
        if not state.exists:
            return False
        self._check_owner(state)
        self._rows(DROP_SQL, [self.slot])
        return True

    def _recreate(self) -> None:
        logger.error("relaycache feed: replication slot %r was invalidated by PostgreSQL "
                     "(it fell further behind than max_slot_wal_keep_size allows: no worker "
                     "for too long, or one transaction wrote more WAL than that); creating "
                     "it again, and every cached query of database %r will be invalidated",
                     self.slot, self.using)
        self._rows(DROP_SQL, [self.slot])
        self._create()

    # -- the worker --------------------------------------------------------------------

    def resume(self) -> None:
        """Make sure the slot can be read, and that every change before its position
        was invalidated. That is so when the progress in the cache names this slot at
        that position or beyond (a worker records a position before confirming it, so
        one killed in between leaves the record ahead: the slot then replays a little
        again). Otherwise (first start, slot recreated, consumed by someone else, or the
        record lost) the whole database is invalidated once."""
        state = self.slot_state()
        if not state.exists:
            raise FeedError(f"there is no replication slot {self.slot!r}: run "
                            f"manage.py relaycache listen --setup --database {self.using}")
        self._check_owner(state)
        if state.lost:
            self._recreate()
            state = self.slot_state()
        assert state.confirmed is not None, state
        confirmed = lsn_value(state.confirmed)
        try:
            recorded = read_progress(self.backend, [self.using])[self.using]
        except self.backend.errors as exc:
            raise Undelivered(f"cannot read the recorded progress: {exc}") from exc
        if (recorded is None or recorded.get("slot") != self.slot
                or not isinstance(recorded.get("lsn"), str)
                or lsn_value(recorded["lsn"]) < confirmed):
            logger.warning("relaycache feed: no record that every change before %s of slot "
                           "%r was invalidated; invalidating every cached query of "
                           "database %r", state.confirmed, self.slot, self.using)
            self._deliver(ALL_TABLES)
        self.position = confirmed

    def _deliver(self, tables: Iterable[str]) -> None:
        invalidate_tables(tables, self.using)
        if any(backend.pending_invalidations for backend in orm_backends()):
            raise Undelivered("the cache did not take the invalidations")

    def _peek(self) -> Batch:
        target, last, lines, tables, commits = self._rows(PEEK_SQL, [self.slot,
                                                                     BATCH_CHANGES])[0]
        return Batch(lsn_value(target), lsn_value(last) if last else None, lines,
                     list(tables), [float(c) for c in commits])

    def cycle(self) -> bool:
        """One poll: read the changes committed up to the flushed end of the WAL,
        invalidate the tables they wrote and, only once that was delivered, record the
        progress in the cache and confirm the changes to the slot. Returns whether the
        poll reached the end (``False``: a backlog remains). Raises
        :class:`Undelivered`, having confirmed nothing, if the cache did not take the
        invalidations or the record."""
        if self.position is None:
            self.resume()
        assert self.position is not None
        began = time.time()
        batch = self._peek()
        if batch.tables:
            self._deliver(table_names(batch.tables))
        delivered = time.time()
        self.lags.extend(delivered - committed for committed in batch.commits)
        self.transactions += len(batch.commits)
        if batch.commits:
            self.last_commit_at = batch.commits[-1]
        if batch.complete:
            self.caught_up_at = began
        elif batch.commits:
            self.caught_up_at = max(self.caught_up_at or 0.0, batch.commits[-1])
        end = batch.target if batch.complete or batch.last is None else batch.last
        end = max(end, self.position)
        self._record(end)
        if end > self.position:
            self.position = lsn_value(self._rows(ADVANCE_SQL, [self.slot, lsn_text(end)])[0][0])
        return batch.complete

    def progress(self, lsn: int) -> dict[str, Any]:
        """What the check and ``relaycache stats`` read (see docs/feed.md): every change
        before ``lsn`` was invalidated, and so was every transaction committed before
        ``caught_up_at``."""
        ordered = sorted(self.lags)
        lag = ({"p50": round(_percentile(ordered, 0.50), 4),
                "p99": round(_percentile(ordered, 0.99), 4),
                "max": round(ordered[-1], 4), "samples": len(ordered)} if ordered else None)
        return {"database": self.using, "slot": self.slot,
                "lsn": lsn_text(lsn),
                "caught_up_at": self.caught_up_at, "last_commit_at": self.last_commit_at,
                "transactions": self.transactions, "commit_lag": lag,
                "worker": self.worker, "started_at": self.started_at,
                "updated_at": time.time()}

    def _record(self, lsn: int) -> None:
        backend = self.backend
        try:
            backend.store_if_current(progress_key(backend, self.using),
                                     orjson.dumps(self.progress(lsn)), [], [],
                                     PROGRESS_TTL * 1000)
        except backend.errors as exc:
            raise Undelivered(f"cannot record the progress: {exc}") from exc

    def _lead(self) -> bool:
        """Take the lead for this slot (a session advisory lock, released by
        PostgreSQL when the leader's connection ends), or say another worker has it."""
        if not self.leading and self._rows(LOCK_SQL, [self.lock_key])[0][0]:
            self.leading = True
            self.position = None  # resume on this connection before reading
            logger.info("relaycache feed: leading %r", self)
        return self.leading

    def _disconnect(self) -> None:
        self.leading = False
        self.position = None
        try:
            self.connection.close()
        except DatabaseError as exc:  # already broken: nothing to close cleanly
            logger.debug("relaycache feed: closing the connection: %s", exc)

    def run(self) -> None:
        """Lead or stand by, poll, until the process is stopped. Killing it at any
        moment loses nothing: unconfirmed changes are read again by the next leader."""
        if not self.backend.shared:
            raise FeedError(f"the default backend {self.backend!r} is private to this "
                            "process: the worker's invalidations would reach no one. Set "
                            "RELAYCACHE['BACKEND'] to the shared (Redis) cache.")
        failures = 0
        standby_logged = False
        while True:
            began = time.monotonic()
            try:
                if not self._lead():
                    if not standby_logged:
                        logger.info("relaycache feed: another worker leads %r; standing by",
                                    self)
                        standby_logged = True
                    time.sleep(STANDBY_RETRY)
                    continue
                caught_up = self.cycle()
            except Undelivered as exc:
                failures += 1
                logger.warning("relaycache feed: %s; retrying (attempt %d)", exc, failures)
            except (OperationalError, InterfaceError) as exc:
                failures += 1
                logger.warning("relaycache feed: database %r unreachable: %s", self.using,
                               exc)
                self._disconnect()
            except DatabaseError as exc:
                failures += 1
                self._on_database_error(exc)
            else:
                failures = 0
                standby_logged = False
                if caught_up:  # a poll costing more than the interval spaces them out
                    time.sleep(max(self.interval, time.monotonic() - began))
                continue
            time.sleep(min(MAX_BACKOFF, self.interval * 2 ** min(failures, 10)))

    def _on_database_error(self, exc: DatabaseError) -> None:
        """A statement failed on a working connection: the slot may be gone, lost or
        in use by another session (a retry is then enough); anything else is raised."""
        try:
            state = self.slot_state()
        except (OperationalError, InterfaceError) as lost_connection:
            logger.warning("relaycache feed: database %r unreachable: %s", self.using,
                           lost_connection)
            self._disconnect()
            return
        if not state.exists:
            raise FeedError(f"replication slot {self.slot!r} was dropped while the worker "
                            "ran: run manage.py relaycache listen --setup, after which "
                            "the worker invalidates everything once") from exc
        if state.lost:
            self.position = None  # resume() creates it again
            return
        driver_error = exc.__cause__
        code = getattr(driver_error, "sqlstate", None) or getattr(driver_error, "pgcode", None)
        if code == OBJECT_IN_USE:  # a session outside the feed is reading the slot
            logger.warning("relaycache feed: %s", exc)
            return
        raise exc
