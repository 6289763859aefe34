"""``manage.py relaycache``: invalidate tags, models or databases; stats; inspect a key.

    manage.py relaycache invalidate --tag books --tag book:42
    manage.py relaycache invalidate --model shop.Book
    manage.py relaycache invalidate --all
    manage.py relaycache stats [--sample 1000] [--top 10]
    manage.py relaycache inspect KEY [--value]
    manage.py relaycache listen [--database default] [--setup | --drop] [--interval 0.1]

Every subcommand works on the default backend (``RELAYCACHE``); all but ``listen``
take ``--json``. ``listen`` is the change-feed worker of
:class:`~relaycache.orm.feed.Feed` (docs/feed.md): it runs until stopped.
The command only parses options and formats output: ``stats`` and ``inspect`` are
:func:`~relaycache.backends.introspect.storage_summary` and
:func:`~relaycache.backends.introspect.inspect_entry`, which read any backend through
its public storage contract (on Redis: ``SCAN``, never ``KEYS``, and ``MEMORY USAGE``
on a sample); they never write.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

from relaycache.backends.base import BaseCache
from relaycache.backends.introspect import STORE_MEMORY, inspect_entry, storage_summary
from relaycache.core.defaults import get_default_backend
from relaycache.core.keys import check_tags
from relaycache.orm.feed import DEFAULT_INTERVAL, Feed, FeedError, feed_status
from relaycache.orm.invalidation import database_tag
from relaycache.orm.pins import explain
from relaycache.orm.targets import model_write_tags, resolve_model

# -- helpers -----------------------------------------------------------------------

def _short(text: str, width: int = 100) -> str:
    """Tags may be 512 characters long: keep text output readable (JSON has them whole)."""
    return text if len(text) <= width else text[:width - 3] + "..."


def _human_bytes(size: float | None) -> str:
    if size is None:
        return "unknown"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


# -- the command -------------------------------------------------------------------

class Command(BaseCommand):
    help = ("RelayCache: invalidate tags, models or whole databases, show statistics, "
            "inspect one entry. Works on the default backend (the RELAYCACHE setting).")

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, title="subcommands",
                                    metavar="{invalidate,stats,inspect,listen}")
        inv = sub.add_parser(
            "invalidate", help="drop every entry under tags, models or databases",
            description="Invalidate tags (--tag), the tables of models (--model) or "
                        "every cached query of every database (--all).")
        inv.add_argument("--tag", action="append", dest="tags", default=[], metavar="TAG",
                         help="a tag to invalidate (repeatable)")
        inv.add_argument("--model", action="append", dest="models", default=[],
                         metavar="APP_LABEL.MODEL",
                         help="invalidate the model's tables in every database (repeatable)")
        inv.add_argument("--all", action="store_true", dest="all_databases",
                         help="invalidate every cached query of every database alias")
        inv.add_argument("--timeout", type=float, default=5.0,
                         help="seconds to wait for an unreachable backend before failing "
                              "(default 5)")
        stats = sub.add_parser(
            "stats", help="counters of this process and the size of the cache",
            description="Hits, misses and errors of this process's backend; keys and "
                        "approximate memory under this cache's prefixes and the most "
                        "common tags, from a scan of its keys (SCAN on Redis) and a "
                        "sample.")
        stats.add_argument("--sample", type=int, default=1000,
                           help="keys of each kind to size and read (default 1000)")
        stats.add_argument("--top", type=int, default=10,
                           help="how many of the most common tags to list (default 10)")
        inspect = sub.add_parser(
            "inspect", help="one entry: tags, stamps, validity, TTL, size",
            description="Show an entry's tags, its stored stamps against the current "
                        "ones, its TTL and size. KEY is the cache key (as cache_key() or "
                        "cache_info().key give it) or the full key with its prefix.")
        inspect.add_argument("key", metavar="KEY")
        inspect.add_argument("--value", action="store_true",
                             help="also print the stored value (its JSON form)")
        for subparser in (inv, stats, inspect):
            subparser.add_argument("--json", action="store_true",
                                   help="print JSON instead of text")
        listen = sub.add_parser(
            "listen", help="invalidate the writes Django never sees, fed by PostgreSQL",
            description="The change-feed worker (docs/feed.md): reads every committed "
                        "change of a PostgreSQL database from its logical replication slot "
                        "and invalidates the tables written. Runs until stopped; several "
                        "may run for one database (one leads, the others stand by). "
                        "--setup creates the slot once, --drop removes it.")
        listen.add_argument("--database", default=DEFAULT_DB_ALIAS, metavar="ALIAS",
                            help="the database alias to listen to (default 'default')")
        once = listen.add_mutually_exclusive_group()
        once.add_argument("--setup", action="store_true",
                          help="check wal_level, create the replication slot, and exit")
        once.add_argument("--drop", action="store_true",
                          help="drop the replication slot (PostgreSQL stops keeping WAL "
                               "for it), and exit")
        listen.add_argument("--interval", type=float, default=DEFAULT_INTERVAL,
                            help="seconds between polls once caught up "
                                 f"(default {DEFAULT_INTERVAL})")

    def handle(self, *args: Any, **options: Any) -> None:
        backend = get_default_backend()
        action = options["action"]
        if action == "listen":
            self.listen(options)
            return
        try:
            if action == "invalidate":
                data, lines = self.invalidate(backend, options)
            elif action == "stats":
                data, lines = self.stats(backend, options)
            else:
                data, lines = self.inspect(backend, options)
        except backend.errors as exc:
            raise CommandError(f"cannot reach {backend!r}: {exc}") from exc
        if options["json"]:
            self.stdout.write(json.dumps(data, indent=2, sort_keys=True))
        else:
            self.stdout.write("\n".join(lines))

    # -- invalidate -------------------------------------------------------------------

    def _model(self, label: str) -> Any:
        try:
            return resolve_model(label)
        except LookupError as exc:
            raise CommandError(f"unknown model {label!r}: give app_label.ModelName "
                               f"({exc})") from None

    def invalidate(self, backend: BaseCache, options: dict[str, Any]
                   ) -> tuple[dict[str, Any], list[str]]:
        tags: list[str] = list(options["tags"])
        models = [self._model(label) for label in options["models"]]
        if options["all_databases"]:
            if tags or models:
                raise CommandError("--all cannot be combined with --tag or --model")
            tags = [database_tag(alias) for alias in connections]
        for model in models:
            tags += [tag for alias in connections for tag in model_write_tags(model, alias)]
        if not tags:
            raise CommandError("nothing to invalidate: give --tag TAG, "
                               "--model app_label.Model or --all")
        try:
            tags = check_tags(tags)
        except (TypeError, ValueError) as exc:
            raise CommandError(f"bad tag: {exc}") from None
        backend.invalidate(tags)
        deadline = time.monotonic() + max(0.0, options["timeout"])
        while set(backend.pending_invalidations) & set(tags) and time.monotonic() < deadline:
            time.sleep(0.05)
        undelivered = sorted(set(backend.pending_invalidations) & set(tags))
        if undelivered:
            raise CommandError(
                f"{backend!r} did not answer: {len(undelivered)} tag(s) not invalidated "
                f"({', '.join(undelivered[:5])}{'...' if len(undelivered) > 5 else ''}); "
                "nothing retries them once this command exits: run it again")
        data: dict[str, Any] = {"backend": repr(backend), "invalidated": tags,
                                "this_process_only": not backend.shared}
        lines = [self.style.SUCCESS(f"Invalidated {len(tags)} tag(s) on {backend!r}:"),
                 *(f"  {tag}" for tag in tags)]
        if not backend.shared:
            # From manage.py this is a process of its own: say so rather than let a
            # success line suggest the server's cache was reached.
            self.stderr.write(self.style.WARNING(
                f"{backend!r} is private to this process: a running server's cache was not "
                "reached. Use a shared backend (RELAYCACHE['BACKEND'] = 'redis://...'), or "
                "call relaycache.invalidate() inside the server."))
        return data, lines

    # -- stats ------------------------------------------------------------------------

    def stats(self, backend: BaseCache, options: dict[str, Any]
              ) -> tuple[dict[str, Any], list[str]]:
        if options["sample"] < 1 or options["top"] < 0:
            raise CommandError("--sample must be at least 1 and --top at least 0")
        counters = backend.stats.snapshot()
        lookups = counters["hits"] + counters["misses"]
        process: dict[str, Any] = {
            "hits": counters["hits"],
            "misses": counters["misses"],
            "hit_ratio": round(counters["hits"] / lookups, 4) if lookups else None,
            "errors": counters["errors"],
            "pending_invalidations": backend.pending_invalidations,
            "counters": counters,
        }
        data: dict[str, Any] = {"backend": repr(backend), "process": process, "storage": None}
        try:
            data["storage"] = storage_summary(backend, options["sample"], options["top"])
        except NotImplementedError:  # a backend without scan_keys()/describe_keys()
            data["storage"] = None
        ratio = process["hit_ratio"]
        pending = process["pending_invalidations"]
        lines = [
            f"Backend: {backend!r}",
            "This process (counters since it started):",
            f"  hits                   {process['hits']:,}",
            f"  misses                 {process['misses']:,}",
            f"  hit ratio              {'n/a' if ratio is None else f'{ratio:.1%}'}",
            f"  errors                 {process['errors']:,}",
            f"  pending invalidations  {len(pending)}"
            + (f" ({_short(', '.join(pending[:5]))}{'...' if len(pending) > 5 else ''})"
               if pending else ""),
        ]
        storage = data["storage"]
        if storage is None:
            lines.append("Storage: not reported (the backend implements no "
                         "scan_keys()/describe_keys())")
        else:
            entries, meta, sample = storage["entries"], storage["meta"], storage["sample"]
            approx = "~" if storage["memory_source"] == STORE_MEMORY else "~ payload"
            lines += [
                f"Storage: {storage['storage']}, prefixes {storage['value_prefix']!r} and "
                f"{storage['meta_prefix']!r}",
                f"  entries                {entries['keys']:,} keys, {approx} "
                f"{_human_bytes(entries['approx_bytes'])} (sampled {entries['sampled']:,})",
                f"  tag stamps and leases  {meta['keys']:,} keys ({meta['stamps']:,} stamps, "
                f"{meta['leases']:,} leases"
                + (f", {meta['other']:,} other" if meta["other"] else "")
                + f"), {approx} {_human_bytes(meta['approx_bytes'])}",
                f"  sampled entries        {sample['entries']:,}: {sample['valid']:,} valid, "
                f"{sample['stale']:,} stale (awaiting TTL), {sample['corrupt']:,} unreadable",
            ]
            if storage["top_tags"]:
                lines.append("Top tags in the sample (entries):")
                lines += [f"  {count:>8,}  {_short(tag)}" for tag, count in storage["top_tags"]]
        data["feed"], feed_lines = self._feed(backend)
        return data, lines + feed_lines

    def _feed(self, backend: BaseCache) -> tuple[dict[str, Any], list[str]]:
        """The change feed's part of ``stats``: where each database's worker stands."""
        try:
            feed = feed_status(backend)
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None
        databases = feed["databases"]
        if not feed["configured"] and not any(databases.values()):
            return feed, ["Change feed: not configured (RELAYCACHE['FEED']), no worker has "
                          "recorded progress"]
        lines = [f"Change feed (relaycache listen; MAX_LAG {feed['max_lag']} s):"]
        for alias, record in databases.items():
            if record is None:
                lines.append(f"  {alias:<22} no worker has recorded progress")
                continue
            lag = record.get("lag")
            lines.append(
                f"  {alias:<22} "
                + ("not caught up yet" if lag is None else f"caught up {lag:.1f} s ago")
                + f", slot {record.get('slot')} at {record.get('lsn')}, "
                  f"worker {record.get('worker')}")
            commit_lag = record.get("commit_lag")
            if commit_lag:
                lines.append(
                    f"  {'':<22} commit to invalidation: p50 {commit_lag['p50'] * 1000:,.0f} ms,"
                    f" p99 {commit_lag['p99'] * 1000:,.0f} ms over the last "
                    f"{commit_lag['samples']:,} transactions "
                    f"({record.get('transactions', 0):,} since the worker started)")
        return feed, lines

    # -- listen -----------------------------------------------------------------------

    def listen(self, options: dict[str, Any]) -> None:
        alias: str = options["database"]
        if options["interval"] <= 0:
            raise CommandError("--interval must be positive")
        try:
            feed = Feed(alias, interval=options["interval"])
            if options["setup"]:
                self._setup(feed)
            elif options["drop"]:
                dropped = feed.drop()
                self.stdout.write(f"Dropped replication slot {feed.slot!r}." if dropped else
                                  f"No replication slot {feed.slot!r} to drop.")
            else:
                self.stdout.write(f"Listening to database {alias!r} through replication "
                                  f"slot {feed.slot!r} (stop with Ctrl-C).")
                with self._feed_log(options["verbosity"]):
                    feed.run()
        except (FeedError, ImproperlyConfigured) as exc:
            raise CommandError(str(exc)) from None
        except DatabaseError as exc:
            raise CommandError(f"database {alias!r}: {exc}".strip()) from exc
        except KeyboardInterrupt:  # Ctrl-C: nothing unconfirmed is lost by stopping here
            self.stdout.write("Stopped.")

    def _setup(self, feed: Feed) -> None:
        done = feed.setup()
        self.stdout.write(self.style.SUCCESS(
            f"{'Created' if done['created'] else 'Found'} replication slot {feed.slot!r} on "
            f"database {feed.using!r}. Now keep `manage.py relaycache listen --database "
            f"{feed.using}` running."))
        if done["max_slot_wal_keep_size"] == "-1":
            self.stderr.write(self.style.WARNING(
                "max_slot_wal_keep_size is -1: while no worker runs, PostgreSQL keeps every "
                "WAL segment for this slot, without limit. Bound it (ALTER SYSTEM SET "
                "max_slot_wal_keep_size = '10GB'; SELECT pg_reload_conf()); a worker away "
                "longer than that invalidates everything when it returns (docs/feed.md)."))

    @contextlib.contextmanager
    def _feed_log(self, verbosity: int) -> Iterator[None]:
        """Show the worker's log on stderr, unless the project's LOGGING handles it."""
        logger = logging.getLogger("relaycache.feed")
        if verbosity < 1 or logger.hasHandlers():
            yield
            return
        handler = logging.StreamHandler(self.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)

    # -- inspect ----------------------------------------------------------------------

    def inspect(self, backend: BaseCache, options: dict[str, Any]
                ) -> tuple[dict[str, Any], list[str]]:
        key: str = options["key"]
        found = inspect_entry(backend, key, with_value=options["value"])
        if found is None:
            raise CommandError(f"no entry under {key!r} in {backend!r}")
        data = {"backend": repr(backend), **found}
        for tag in data["tags"]:
            if not tag.get("implicit"):
                tag["replaced_by"] = explain(tag["tag"])
        return data, self._inspect_lines(data)

    def _inspect_lines(self, data: dict[str, Any]) -> list[str]:
        if data.get("corrupt"):
            status = self.style.ERROR(f"UNREADABLE ({data['corrupt']}): a read treats it as "
                                      "a miss and overwrites it")
        elif data["valid"]:
            status = self.style.SUCCESS("valid: every stored stamp is current")
        else:
            bad = sum(t["state"] != "ok" for t in data["tags"])
            status = self.style.WARNING(
                f"STALE: {bad} of {len(data['tags'])} stamp(s) changed or missing; never "
                "served, it expires with its TTL")
        ttl = data["ttl_ms"]
        lines = [
            f"Key:     {data['key']}",
            f"Backend: {data['backend']}",
            f"Status:  {status}",
            f"TTL:     {'no expiry' if not data['expires'] else f'{ttl / 1000:,.3f} s'}",
            f"Size:    {_human_bytes(data['size_bytes'])}"
            + (f" ({STORE_MEMORY} {_human_bytes(data['memory_usage_bytes'])})"
               if data.get("memory_usage_bytes") else ""),
        ]
        if data["tags"]:
            width = max(len(_short(t["tag"], 60)) for t in data["tags"])
            lines.append(f"Tags ({len(data['tags'])}):")
            lines += [f"  {t['state']:<8} {_short(t['tag'], 60):<{width}}  stored {t['stored']}  "
                      f"current {t['current'] or '(none)'}"
                      + ("  (the backend's own tag)" if t.get("implicit") else
                         f"\n  {'':<8} replaced by {t['replaced_by']}")
                      for t in data["tags"]]
        else:
            lines.append("Tags:    none")
        if "value" in data:
            text = json.dumps(data["value"], ensure_ascii=False)
            lines.append(f"Value:   {text[:2000]}{'...' if len(text) > 2000 else ''}")
        return lines
