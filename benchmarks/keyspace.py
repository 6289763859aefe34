"""The run's Redis keys: deleting them, and measuring them (no Django here)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import redis


def _pattern(prefix: str) -> str:
    for special in "\\*?[]":
        prefix = prefix.replace(special, "\\" + special)
    return prefix + "*"


def delete_prefix(client: redis.Redis, prefix: str, keep: tuple[bytes, ...] = ()) -> int:
    """UNLINK every key under ``prefix`` except those starting with one of ``keep``."""
    pattern = _pattern(prefix)
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=10_000):
        if keep and key.startswith(keep):
            continue
        batch.append(key)
        if len(batch) >= 5_000:
            deleted += client.unlink(*batch)
            batch = []
    if batch:
        deleted += client.unlink(*batch)
    return deleted


def prefix_usage(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """Keys and bytes (``MEMORY USAGE``, exact) under ``prefix``, by kind of key."""
    pattern = _pattern(prefix)
    keys = total = 0
    kinds: Counter[str] = Counter()
    kind_bytes: Counter[str] = Counter()
    batch: list[bytes] = []

    def flush() -> None:
        nonlocal keys, total
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.memory_usage(key, samples=0)
        for key, used in zip(batch, pipe.execute(), strict=True):
            if used is None:
                continue
            kind = key_kind(key.decode(errors="replace")[len(prefix):])
            keys += 1
            total += used
            kinds[kind] += 1
            kind_bytes[kind] += used
        batch.clear()

    for key in client.scan_iter(match=pattern, count=10_000):
        batch.append(key)
        if len(batch) >= 2_000:
            flush()
    if batch:
        flush()
    return {"keys": keys, "bytes": total,
            "kinds": {k: {"keys": kinds[k], "bytes": kind_bytes[k]} for k in sorted(kinds)}}


def key_kind(rest: str) -> str:
    """A readable class of a key, from its name after the library's prefix."""
    for marker in ("meta:t:", "meta:l:", "orm:fill", "orm:", "conj:", "schemes:", "q:", "as:",
                   "get:", "list20:", "tpl:"):
        if rest.startswith(marker):
            return marker.rstrip(":")
    if rest.startswith(":1:"):
        return "entry or table stamp"
    return rest.split(":", 1)[0] or "other"


