"""What a cache holds, read through the public storage contract only.

The ``relaycache stats`` and ``inspect`` management commands are thin layers over the
two functions here, which work on any :class:`~relaycache.backends.base.BaseCache`
subclass that implements the contract: the keyspace is walked with
:meth:`~relaycache.backends.base.BaseCache.scan_keys` (``SCAN`` on Redis, never
``KEYS``), a sample of it is sized and read with
:meth:`~relaycache.backends.base.BaseCache.describe_keys` (``MEMORY USAGE``,
``STRLEN``, ``PTTL`` and ``GETRANGE`` on Redis), and whole entries and stamps are read
with :meth:`~relaycache.backends.base.BaseCache.fetch`. Nothing here writes, and
nothing here knows about Django.

An entry is ``orjson([tags, stamps, value])`` (see :mod:`relaycache.backends.flow`):
its tags and stamps come first, so only its head is read unless they are longer.
Errors of the store (the backend's ``errors``) propagate to the caller.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from .base import BaseCache, KeyDescription

__all__ = ["inspect_entry", "storage_name", "storage_summary"]

HEAD_BYTES = 4096
"""Bytes of an entry read to find its tags and stamps (the whole entry if not enough)."""
BATCH = 200
"""Keys described per :meth:`~relaycache.backends.base.BaseCache.describe_keys` call."""
STORE_MEMORY = "MEMORY USAGE"
"""``memory_source`` when every sampled key's size came from the store's own account
(``KeyDescription.memory``); ``"payload size"`` (key and value lengths) otherwise."""
PAYLOAD_SIZE = "payload size"

Entry = tuple[list[str], list[Any]]
"""An entry's tags and stored stamps."""


# -- naming ----------------------------------------------------------------------------

def storage_name(cache: BaseCache) -> str:
    """A short name of where ``cache`` keeps its keys: ``"memory (this process only)"``
    for a cache private to the process, otherwise the backend's class name without its
    ``Cache`` suffix, lowercased (``RedisCache``: ``"redis"``)."""
    if not cache.shared:
        return "memory (this process only)"
    name = type(cache).__name__
    stem = name[:-len("Cache")] if name.endswith("Cache") else name
    return (stem or name).lower()


def _prefix_of(key: str, probe: str) -> str | None:
    """The part of ``key`` (a name built from ``probe``) before ``probe``."""
    return key[:-len(probe)] if key.endswith(probe) else None


class _Kinds:
    """Tells entries, tag stamps, leases and other meta keys apart, from the names the
    cache gives them (:meth:`~relaycache.backends.base.BaseCache.stamp_keys`,
    :meth:`~relaycache.backends.base.BaseCache.lease_key`)."""

    _PROBE = "relaycache-probe"

    def __init__(self, cache: BaseCache) -> None:
        self.value_prefix = cache.value_prefix
        self.meta_prefix = cache.meta_prefix
        named = [(_prefix_of(cache.stamp_keys([self._PROBE])[0], self._PROBE), "stamps"),
                 (_prefix_of(cache.lease_key(self._PROBE), self._PROBE), "leases")]
        # The longest first: one prefix may extend the other.
        self.meta_kinds = sorted(((prefix, kind) for prefix, kind in named if prefix),
                                 key=lambda item: -len(item[0]))

    def __call__(self, key: str) -> str:
        """``"entries"``, ``"stamps"``, ``"leases"`` or ``"other"`` (a meta key of the
        backend's own, such as the Redis server's ``run_id``)."""
        if key.startswith(self.meta_prefix):
            for prefix, kind in self.meta_kinds:
                if key.startswith(prefix):
                    return kind
            return "other"
        return "entries" if key.startswith(self.value_prefix) else "other"


# -- reading entries --------------------------------------------------------------------

def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _checked(tags: Any, stamps: Any) -> Entry:
    if (not isinstance(tags, list) or not isinstance(stamps, list)
            or len(tags) != len(stamps) or not all(isinstance(t, str) for t in tags)):
        raise ValueError("not an entry: [tags, stamps, value] expected")
    return tags, stamps


def _decoded(cache: BaseCache, raw: Any) -> tuple[list[str], list[Any], Any]:
    """Tags, stamps and value of a whole stored entry; ``ValueError`` if unreadable."""
    try:
        if cache.compression is not None:
            raw = cache.compression.decompress(raw)
        tags, stamps, value = orjson.loads(raw)
    except (TypeError, ValueError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise ValueError(f"not an entry: {exc}") from None
    return (*_checked(tags, stamps), value)


def _from_head(head: bytes | str) -> Entry:
    """Tags and stamps from the first bytes of an entry: ``ValueError`` if it is not
    one, ``EOFError`` if they cannot be read from the head alone (read it whole)."""
    text = _text(head)
    if not text.startswith("["):
        raise ValueError("not an entry: not a JSON array")
    decoder = json.JSONDecoder()
    try:
        tags, end = decoder.raw_decode(text, 1)
        if text[end] != ",":
            raise ValueError("not an entry: [tags, stamps, value] expected")
        stamps, _ = decoder.raw_decode(text, end + 1)
    except (json.JSONDecodeError, IndexError):
        raise EOFError from None
    return _checked(tags, stamps)


def _read_entry(cache: BaseCache, key: str, found: KeyDescription) -> Entry | None:
    """Tags and stamps of the entry ``key`` described as ``found``, from its head when
    that holds them; ``None`` if it vanished meanwhile; ``ValueError`` if unreadable."""
    head = found.head
    if head is not None and len(head) >= found.size:
        tags, stamps, _ = _decoded(cache, head)
        return tags, stamps
    if head is not None and (cache.compression is None or _text(head[:1]) == "["):
        with contextlib.suppress(EOFError):
            return _from_head(head)
    raw = cache.fetch([key])[0]  # no head, a compressed one, or tags longer than it
    if raw is None:
        return None
    tags, stamps, _ = _decoded(cache, raw)
    return tags, stamps


def _batches(items: Iterable[str], size: int) -> Iterable[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# -- stats ------------------------------------------------------------------------------

class _Walk:
    """What a walk of the keyspace found: counts per kind, sizes and entries."""

    def __init__(self, cache: BaseCache, limit: int) -> None:
        self.cache = cache
        self.limit = limit
        self.kind = _Kinds(cache)
        self.counts = Counter({"entries": 0, "stamps": 0, "leases": 0, "other": 0})
        self.picked: dict[str, list[str]] = {"entries": [], "meta": []}
        self.sizes: dict[str, list[int]] = {"entries": [], "meta": []}
        self.entries: list[Entry] = []
        self.corrupt = 0
        self.store_memory = True

    def run(self) -> None:
        for key in self.cache.scan_keys():
            kind = self.kind(key)
            self.counts[kind] += 1
            group = "entries" if kind == "entries" else "meta"
            if len(self.picked[group]) < self.limit:
                self.picked[group].append(key)
        for group in ("entries", "meta"):
            for batch in _batches(self.picked[group], BATCH):
                self._describe(group, batch)

    def _describe(self, group: str, keys: list[str]) -> None:
        head = HEAD_BYTES if group == "entries" else 0
        for key, found in zip(keys, self.cache.describe_keys(keys, head=head), strict=True):
            if found is None:  # expired or deleted since the scan
                continue
            if found.memory is None:
                self.store_memory = False
                self.sizes[group].append(len(key) + found.size)
            else:
                self.sizes[group].append(found.memory)
            if group == "entries":
                try:
                    entry = _read_entry(self.cache, key, found)
                except ValueError:
                    self.corrupt += 1
                else:
                    if entry is not None:
                        self.entries.append(entry)

    def summary(self, top: int) -> dict[str, Any]:
        cache = self.cache
        counts = self.counts
        meta_keys = counts["stamps"] + counts["leases"] + counts["other"]
        tags = Counter(tag for entry_tags, _ in self.entries for tag in entry_tags)
        current = cache.current_stamps(sorted(tags)) if tags else {}
        for implicit in cache.implicit_tags:  # on every entry: not worth listing
            tags.pop(implicit, None)
        valid = sum(all(stamp is not None and current.get(tag) == stamp
                        for tag, stamp in zip(entry_tags, entry_stamps, strict=True))
                    for entry_tags, entry_stamps in self.entries)
        sampled = self.sizes["entries"] or self.sizes["meta"]

        def part(group: str, keys: int) -> dict[str, Any]:
            sizes = self.sizes[group]
            approx = round(sum(sizes) / len(sizes) * keys) if sizes else 0
            return {"keys": keys, "sampled": len(sizes), "approx_bytes": approx}

        return {
            "storage": storage_name(cache),
            "value_prefix": cache.value_prefix,
            "meta_prefix": cache.meta_prefix,
            "entries": part("entries", counts["entries"]),
            "meta": {**part("meta", meta_keys), "stamps": counts["stamps"],
                     "leases": counts["leases"], "other": counts["other"]},
            "memory_source": (STORE_MEMORY if sampled and self.store_memory
                              else PAYLOAD_SIZE),
            "sample": {"entries": len(self.entries) + self.corrupt, "valid": valid,
                       "stale": len(self.entries) - valid, "corrupt": self.corrupt},
            "top_tags": [[tag, count] for tag, count in tags.most_common(top)],
        }


def storage_summary(cache: BaseCache, sample: int = 1000, top: int = 10) -> dict[str, Any]:
    """Keys and approximate bytes under ``cache``'s prefixes, by kind, and what a sample
    of the entries says: how many are valid, stale or unreadable, and their ``top``
    most common tags (the backend's implicit tags left out).

    Every key is counted; up to ``sample`` keys of each group (entries, meta keys) are
    described, and the approximate bytes are their mean size times the count. A size is
    the store's own (``KeyDescription.memory``) where the backend gives it, otherwise
    the key's and value's lengths: ``memory_source`` says which.
    """
    if sample < 1 or top < 0:
        raise ValueError("sample must be at least 1 and top at least 0")
    walk = _Walk(cache, sample)
    walk.run()
    return walk.summary(top)


# -- inspect ----------------------------------------------------------------------------

def _state(stored: Any, current: str | None) -> str:
    if current is None:
        return "missing"
    return "ok" if current == stored else "changed"


def inspect_entry(cache: BaseCache, key: str, with_value: bool = False
                  ) -> dict[str, Any] | None:
    """One entry: its stored key, size, TTL, store memory, and each tag's stored stamp
    against the current one (``state`` ``ok``, ``changed`` or ``missing``; ``valid``
    when all are ``ok``); ``corrupt`` says why an entry is unreadable. ``key`` is the
    cache key or the stored key (with the value prefix). ``None`` if there is no entry.
    """
    candidates: list[str] = []
    with contextlib.suppress(TypeError, ValueError):
        candidates.append(cache.value_key(key))
    if key.startswith(cache.value_prefix) and key not in candidates:
        candidates.append(key)
    for vkey in candidates:
        raw = cache.fetch([vkey])[0]
        if raw is not None:
            break
    else:
        return None
    try:
        found = cache.describe_keys([vkey])[0]
    except NotImplementedError:  # a backend without tooling: no TTL to report
        found = None
    ttl_ms = None if found is None else found.ttl_ms
    data: dict[str, Any] = {
        "key": vkey,
        "size_bytes": len(raw) if isinstance(raw, (bytes, str)) else (
            None if found is None else found.size),
        "ttl_ms": ttl_ms,
        "expires": ttl_ms is not None,
        "memory_usage_bytes": None if found is None else found.memory,
    }
    try:
        tags, stamps, value = _decoded(cache, raw)
    except ValueError as exc:
        data.update(valid=False, corrupt=str(exc), tags=[])
        return data
    current = cache.current_stamps(tags) if tags else {}
    data["tags"] = [
        {"tag": tag, "stored": stored, "current": current.get(tag),
         "implicit": tag in cache.implicit_tags, "state": _state(stored, current.get(tag))}
        for tag, stored in zip(tags, stamps, strict=True)]
    data["valid"] = all(t["state"] == "ok" for t in data["tags"])
    data["corrupt"] = None
    if with_value:
        data["value"] = value
    return data
