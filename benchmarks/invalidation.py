"""Invalidation cost versus the number of entries under the tag (invariant 5).

    python -m benchmarks.invalidation --url redis://127.0.0.1:6379/14 --sizes 1000 100000

Fills a spare Redis database with N valid entries under one tag, then times
``invalidate()`` of that tag (median of repeated runs) and reads the server's command
counts for one invalidation. The database is flushed before and after: never point it
at data you keep.
"""

from __future__ import annotations

import argparse
import statistics
import time

import redis

from relaycache import RedisCache

BATCH = 10_000


def fill(backend: RedisCache, client: redis.Redis, size: int) -> None:
    """One real entry through the public API, then ``size - 1`` byte-for-byte copies of
    it under other keys: whatever the entry layout (tags the backend adds itself
    included), every copy is valid exactly when the original is."""
    tags = ["books"]
    assert backend.set("book:0", {"title": "Dune", "pages": 412}, tags=tags)
    raw = client.get(backend.value_key("book:0"))
    pipe = client.pipeline(transaction=False)
    for i in range(1, size):
        pipe.set(backend.value_key(f"book:{i}"), raw, px=3_600_000)
        if i % BATCH == 0:
            pipe.execute()
    pipe.execute()


def measure(url: str, size: int, repeats: int) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    client.flushdb()
    backend = RedisCache(client, value_prefix="bench:", meta_prefix="bench:meta:")
    fill(backend, client, size)
    assert backend.get("book:0", tags=["books"])[0]
    assert backend.get(f"book:{size - 1}", tags=["books"])[0]
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        backend.invalidate(["books"])
        timings.append(time.perf_counter() - started)
    assert not backend.get("book:0", tags=["books"])[0]
    client.config_resetstat()
    backend.invalidate(["books"])
    stats = client.info("commandstats")
    commands = {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()
                if not k.startswith(("cmdstat_info", "cmdstat_config"))}
    keys = client.dbsize()
    client.flushdb()
    return {"entries": size, "keys": keys, "median_ms": statistics.median(timings) * 1000,
            "p90_ms": statistics.quantiles(timings, n=10)[-1] * 1000, "commands": commands}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    results = [measure(args.url, size, args.repeats) for size in args.sizes]
    print(f"{'entries':>10} {'keys':>10} {'median ms':>10} {'p90 ms':>8}  commands/invalidation")
    for r in results:
        print(f"{r['entries']:>10} {r['keys']:>10} {r['median_ms']:>10.3f} {r['p90_ms']:>8.3f}"
              f"  {r['commands']}")
    base = results[0]["median_ms"]
    for r in results[1:]:
        print(f"ratio {r['entries']}/{results[0]['entries']}: {r['median_ms'] / base:.2f}x")


if __name__ == "__main__":
    main()
