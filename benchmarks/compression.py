"""What zstd compression does to a large entry: bytes in Redis and hit/store latency.

    python -m benchmarks.compression --url redis://127.0.0.1:6379/14

Median of repeated runs, both settings interleaved in one run. Only keys under the
``benchcmp:`` prefix are written, and they are deleted at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
from decimal import Decimal

import redis

from relaycache import RedisCache, Zstd


def rows(count: int) -> list[list[object]]:
    return [[i, f"The book number {i}", f"Author {i % 97}", dt.date(1990, 1, 1 + i % 28),
             Decimal(f"{i % 50}.99"), i % 3 == 0] for i in range(count)]


def timed(call, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - started)
    return statistics.median(samples) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--rows", type=int, nargs="+", default=[20, 500, 5000])
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    client = redis.Redis.from_url(args.url)
    backends = {
        "plain": RedisCache(client, value_prefix="benchcmp:p:", meta_prefix="benchcmp:pm:"),
        "zstd": RedisCache(client, value_prefix="benchcmp:z:", meta_prefix="benchcmp:zm:",
                           compression=Zstd(min_size=4096)),
    }
    print(f"{'rows':>6} {'setting':>7} {'bytes':>9} {'hit µs':>8} {'store µs':>9}")
    try:
        for count in args.rows:
            value = rows(count)
            results = {name: {"hit": [], "store": []} for name in backends}
            for _ in range(3):  # interleaved rounds
                for name, backend in backends.items():
                    def store(b: RedisCache = backend, v: list = value) -> None:
                        b.set("v", v, tags=["books"])

                    results[name]["store"].append(timed(store, args.repeats // 3))
                    results[name]["hit"].append(timed(
                        lambda b=backend: b.get("v", tags=["books"]), args.repeats))
            for name, backend in backends.items():
                size = client.strlen(backend.value_key("v"))
                print(f"{count:>6} {name:>7} {size:>9} "
                      f"{statistics.median(results[name]['hit']):>8.1f} "
                      f"{statistics.median(results[name]['store']):>9.1f}")
    finally:
        for backend in backends.values():
            backend.clear()


if __name__ == "__main__":
    main()
