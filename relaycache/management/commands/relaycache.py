"""``manage.py relaycache``: invalidate tags, models or databases; stats; inspect a key.

    manage.py relaycache invalidate --tag books --tag book:42
    manage.py relaycache invalidate --model shop.Book
    manage.py relaycache invalidate --all
    manage.py relaycache stats [--sample 1000] [--top 10]
    manage.py relaycache inspect KEY [--value]

Every subcommand works on the default backend (``RELAYCACHE``) and takes ``--json``.
The command only parses options and formats output: ``stats`` and ``inspect`` are
:func:`~relaycache.backends.introspect.storage_summary` and
:func:`~relaycache.backends.introspect.inspect_entry`, which read any backend through
its public storage contract (on Redis: ``SCAN``, never ``KEYS``, and ``MEMORY USAGE``
on a sample); they never write.
"""

from __future__ import annotations

import json
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from relaycache.backends.base import BaseCache
from relaycache.backends.introspect import STORE_MEMORY, inspect_entry, storage_summary
from relaycache.core.defaults import get_default_backend
from relaycache.core.keys import check_tags
from relaycache.orm.invalidation import database_tag
from relaycache.orm.targets import model_tags, resolve_model

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
                                    metavar="{invalidate,stats,inspect}")
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

    def handle(self, *args: Any, **options: Any) -> None:
        backend = get_default_backend()
        action = options["action"]
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
            tags += [tag for alias in connections for tag in model_tags(model, alias)]
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
        return data, lines

    # -- inspect ----------------------------------------------------------------------

    def inspect(self, backend: BaseCache, options: dict[str, Any]
                ) -> tuple[dict[str, Any], list[str]]:
        key: str = options["key"]
        found = inspect_entry(backend, key, with_value=options["value"])
        if found is None:
            raise CommandError(f"no entry under {key!r} in {backend!r}")
        data = {"backend": repr(backend), **found}
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
                      + ("  (the backend's own tag)" if t.get("implicit") else "")
                      for t in data["tags"]]
        else:
            lines.append("Tags:    none")
        if "value" in data:
            text = json.dumps(data["value"], ensure_ascii=False)
            lines.append(f"Value:   {text[:2000]}{'...' if len(text) > 2000 else ''}")
        return lines
