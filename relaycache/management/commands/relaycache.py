"""``manage.py relaycache``: invalidate tags, models or databases; stats; inspect a key.

    manage.py relaycache invalidate --tag books --tag book:42
    manage.py relaycache invalidate --model shop.Book
    manage.py relaycache invalidate --all
    manage.py relaycache stats [--sample 1000] [--top 10]
    manage.py relaycache inspect KEY [--value]

Every subcommand works on the default backend (``RELAYCACHE``) and takes ``--json``.
On Redis, ``stats`` walks this cache's prefixes with ``SCAN`` (never ``KEYS``) and
sizes a sample of the keys with ``MEMORY USAGE``; it never writes.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
import redis
from django.apps import apps
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from relaycache.backends.base import BaseCache
from relaycache.backends.memory import InMemoryCache
from relaycache.backends.redis import RedisCache
from relaycache.config import get_default_backend
from relaycache.keys import check_tags
from relaycache.orm.invalidation import database_tag, table_tag

_HEAD_BYTES = 4096  # an entry's tags and stamps come first: read only its head
_BATCH = 200
_GLOB_SPECIALS = str.maketrans({c: "\\" + c for c in "*?[]\\"})


# -- helpers -----------------------------------------------------------------------

def model_tables(model: Any) -> list[str]:
    """The tables a model's rows live in: its own, its parents' (multi-table
    inheritance) and the auto-created through tables of its many-to-many fields."""
    meta = model._meta.concrete_model._meta
    tables = [meta.db_table]
    tables += [parent._meta.db_table for parent in meta.get_parent_list()]
    for field in meta.local_many_to_many:
        through = field.remote_field.through
        if through is not None and through._meta.auto_created:
            tables.append(through._meta.db_table)
    return tables


def _short(text: str, width: int = 100) -> str:
    """Tags may be 512 characters long: keep text output readable (JSON has them whole)."""
    return text if len(text) <= width else text[:width - 3] + "..."


def _text(key: Any) -> str:
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)


def _human_bytes(size: float | None) -> str:
    if size is None:
        return "unknown"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _parse_entry(raw: bytes | str, complete: bool) -> tuple[list[str], list[Any]]:
    """Tags and stamps of an entry, from the whole entry or only its head.

    Raises ``ValueError`` if they cannot be read (``EOFError`` if the head is too
    short to hold them: read the whole entry then).
    """
    if complete:
        try:
            tags, stamps, _ = orjson.loads(raw)
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            raise ValueError(f"not an entry: {exc}") from None
    else:
        text = _text(raw)
        decoder = json.JSONDecoder()
        try:
            if not text.startswith("["):
                raise ValueError("not a JSON array")
            tags, end = decoder.raw_decode(text, 1)
            if text[end] != ",":
                raise ValueError("not an entry")
            stamps, _ = decoder.raw_decode(text, end + 1)
        except (json.JSONDecodeError, IndexError):
            raise EOFError from None
    if (not isinstance(tags, list) or not isinstance(stamps, list)
            or len(tags) != len(stamps) or not all(isinstance(t, str) for t in tags)):
        raise ValueError("not an entry: [tags, stamps, value] expected")
    return tags, stamps


def _current_stamps(backend: BaseCache, tags: list[str]) -> dict[str, str | None]:
    """The current stamp of each tag (``None``: none, which matches no entry)."""
    result: dict[str, str | None] = {}
    for start in range(0, len(tags), 500):
        chunk = tags[start:start + 500]
        skeys = backend.stamp_keys(chunk)
        if isinstance(backend, RedisCache):
            client = backend._client
            values = (client.mget_nonatomic(skeys) if backend.is_cluster
                      else client.mget(skeys))
            stamps = [None if v is None else _text(v) for v in values]
        else:
            stamps = backend._fetch(skeys[0], skeys)[1]
        result.update(zip(chunk, stamps, strict=True))
    return result


class _Sample:
    """What a walk of the keyspace found: counts per kind, sizes and entry heads."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts = Counter({"entries": 0, "stamps": 0, "leases": 0, "other": 0})
        self.sizes: dict[str, list[int]] = {"entries": [], "meta": []}
        self.entries: list[tuple[list[str], list[Any]]] = []
        self.corrupt = 0
        self.exact_memory = True

    def summary(self, backend: BaseCache, top: int, storage: str) -> dict[str, Any]:
        meta_keys = self.counts["stamps"] + self.counts["leases"] + self.counts["other"]
        tags = Counter(tag for entry_tags, _ in self.entries for tag in entry_tags)
        current = _current_stamps(backend, sorted(tags)) if tags else {}
        for implicit in backend.implicit_tags:  # on every entry: not worth listing
            tags.pop(implicit, None)
        valid = sum(all(stamp is not None and current.get(tag) == stamp
                        for tag, stamp in zip(entry_tags, entry_stamps, strict=True))
                    for entry_tags, entry_stamps in self.entries)

        def part(name: str, keys: int) -> dict[str, Any]:
            sizes = self.sizes[name]
            approx = round(sum(sizes) / len(sizes) * keys) if sizes else 0
            return {"keys": keys, "sampled": len(sizes), "approx_bytes": approx}

        return {
            "storage": storage,
            "value_prefix": backend.value_prefix,
            "meta_prefix": backend.meta_prefix,
            "entries": part("entries", self.counts["entries"]),
            "meta": {**part("meta", meta_keys), "stamps": self.counts["stamps"],
                     "leases": self.counts["leases"], "other": self.counts["other"]},
            "memory_source": "MEMORY USAGE" if self.exact_memory else "payload size",
            "sample": {"entries": len(self.entries) + self.corrupt, "valid": valid,
                       "stale": len(self.entries) - valid, "corrupt": self.corrupt},
            "top_tags": [[tag, count] for tag, count in tags.most_common(top)],
        }


def _kind(backend: BaseCache, key: str) -> str:
    if not key.startswith(backend.meta_prefix):
        return "entries"
    rest = key[len(backend.meta_prefix):]
    if rest.startswith(("t:", "{t}:")):
        return "stamps"
    return "leases" if rest.startswith("l:") else "other"


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _redis_sample(backend: RedisCache, limit: int) -> _Sample:
    client = backend._client
    sample = _Sample(limit)
    prefixes = [backend.value_prefix]
    if not backend.meta_prefix.startswith(backend.value_prefix):
        prefixes.append(backend.meta_prefix)
    picked: list[tuple[Any, str]] = []
    taken = Counter()
    for prefix in prefixes:
        for key in client.scan_iter(match=prefix.translate(_GLOB_SPECIALS) + "*", count=1000):
            kind = _kind(backend, _text(key))
            sample.counts[kind] += 1
            group = "entries" if kind == "entries" else "meta"
            if taken[group] < limit:
                taken[group] += 1
                picked.append((key, group))
    for batch in _batches(picked, _BATCH):
        pipe = client.pipeline(transaction=False)
        for key, group in batch:
            pipe.execute_command("MEMORY USAGE", key)
            pipe.strlen(key)
            if group == "entries":
                pipe.getrange(key, 0, _HEAD_BYTES - 1)
        replies = iter(pipe.execute(raise_on_error=False))
        for key, group in batch:
            usage, length = next(replies), next(replies)
            head = next(replies) if group == "entries" else None
            if isinstance(length, Exception):
                raise length
            if not length:  # expired or deleted since the SCAN
                continue
            if isinstance(usage, int):
                sample.sizes[group].append(usage)
            else:
                sample.exact_memory = False
                sample.sizes[group].append(len(key) + length)
            if group == "entries":
                _add_entry(sample, head, length, lambda key=key: client.get(key))
    return sample


def _add_entry(sample: _Sample, head: Any, length: int, fetch: Any) -> None:
    try:
        try:
            sample.entries.append(_parse_entry(head, complete=len(head) >= length))
        except EOFError:
            raw = fetch()
            if raw is not None:
                sample.entries.append(_parse_entry(raw, complete=True))
    except ValueError:
        sample.corrupt += 1


def _memory_sample(backend: InMemoryCache, limit: int) -> _Sample:
    sample = _Sample(limit)
    for key in list(backend.keys()):
        kind = _kind(backend, key)
        sample.counts[kind] += 1
        group = "entries" if kind == "entries" else "meta"
        if len(sample.sizes[group]) >= limit:
            continue
        raw = backend._fetch(key, [])[0]
        if raw is None:
            continue
        size = len(raw) if isinstance(raw, (bytes, str)) else 0
        sample.sizes[group].append(len(key) + size)
        if group == "entries":
            _add_entry(sample, raw, size, lambda: None)
    return sample


def _ttl_ms(backend: BaseCache, vkey: str) -> int | None:
    """Milliseconds the key has left; ``-1`` without expiry, ``None`` if unknown."""
    if isinstance(backend, RedisCache):
        return int(backend._client.pttl(vkey))
    if isinstance(backend, InMemoryCache):
        with backend._lock:
            item = backend._data.get(vkey)
        if item is None:
            return -2
        return -1 if item[1] is None else max(0, int((item[1] - time.monotonic()) * 1000))
    return None


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
            description="Hits, misses and errors of this process's backend; on Redis, keys "
                        "and approximate memory under this cache's prefixes and the most "
                        "common tags, from a SCAN and a sample.")
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
            return apps.get_model(label)
        except (LookupError, ValueError) as exc:
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
            tags += [table_tag(table, alias) for alias in connections
                     for table in model_tables(model)]
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
        data = {"backend": repr(backend), "invalidated": tags}
        lines = [self.style.SUCCESS(f"Invalidated {len(tags)} tag(s) on {backend!r}:"),
                 *(f"  {tag}" for tag in tags)]
        return data, lines

    # -- stats ------------------------------------------------------------------------

    def stats(self, backend: BaseCache, options: dict[str, Any]
              ) -> tuple[dict[str, Any], list[str]]:
        if options["sample"] < 1 or options["top"] < 0:
            raise CommandError("--sample must be at least 1 and --top at least 0")
        counters = backend.stats.snapshot()
        lookups = counters["hits"] + counters["misses"]
        process = {
            "hits": counters["hits"],
            "misses": counters["misses"],
            "hit_ratio": round(counters["hits"] / lookups, 4) if lookups else None,
            "errors": counters["errors"],
            "pending_invalidations": backend.pending_invalidations,
            "counters": counters,
        }
        data: dict[str, Any] = {"backend": repr(backend), "process": process, "storage": None}
        if isinstance(backend, RedisCache):
            data["storage"] = _redis_sample(backend, options["sample"]).summary(
                backend, options["top"], "redis")
        elif isinstance(backend, InMemoryCache):
            data["storage"] = _memory_sample(backend, options["sample"]).summary(
                backend, options["top"], "memory (this process only)")
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
        if storage is not None:
            entries, meta, sample = storage["entries"], storage["meta"], storage["sample"]
            approx = "~" if storage["memory_source"] == "MEMORY USAGE" else "~ payload"
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
        candidates = []
        with contextlib.suppress(TypeError, ValueError):
            candidates.append(backend.value_key(key))
        if key.startswith(backend.value_prefix) and key not in candidates:
            candidates.append(key)
        vkey, raw = None, None
        for vkey in candidates:
            raw = backend._fetch(vkey, [])[0]
            if raw is not None:
                break
        if raw is None or vkey is None:
            raise CommandError(f"no entry under {key!r} in {backend!r}")
        size = len(raw) if isinstance(raw, (bytes, str)) else None
        ttl_ms = _ttl_ms(backend, vkey)
        data: dict[str, Any] = {
            "backend": repr(backend), "key": vkey, "size_bytes": size,
            "ttl_ms": None if ttl_ms is None or ttl_ms < 0 else ttl_ms,
            "expires": ttl_ms is not None and ttl_ms >= 0,
        }
        if isinstance(backend, RedisCache):
            try:
                data["memory_usage_bytes"] = backend._client.memory_usage(vkey)
            except redis.ResponseError:
                data["memory_usage_bytes"] = None  # MEMORY not supported (or disabled)
        try:
            tags, stamps, value = orjson.loads(raw)
            _parse_entry(raw, complete=True)
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            data.update(valid=False, corrupt=f"not an entry: {exc}", tags=[])
            return data, self._inspect_lines(data)
        current = backend._fetch(vkey, backend.stamp_keys(tags))[1] if tags else []
        data["tags"] = [
            {"tag": tag, "stored": stored, "current": now,
             "implicit": tag in backend.implicit_tags,
             "state": "ok" if now == stored and now is not None
             else ("missing" if now is None else "changed")}
            for tag, stored, now in zip(tags, stamps, current, strict=True)]
        data["valid"] = all(t["state"] == "ok" for t in data["tags"])
        data["corrupt"] = None
        if options["value"]:
            data["value"] = value
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
            + (f" (MEMORY USAGE {_human_bytes(data['memory_usage_bytes'])})"
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
