"""Profile one library's hit path or invalidation, in a worker process like the run's.

    .venv/bin/python -m benchmarks.profile --library relaycache --query get
    .venv/bin/python -m benchmarks.profile --library relaycache --query invalidate \\
        --entries 1000 1000000 1000

Creates (and drops) a scratch database seeded like the full run, prints the median of
``--n`` unprofiled calls, then cProfile's top functions for ``--n`` profiled ones. With
``--entries``, the query is profiled once per value, after filling the cache with that
many valid copies of a ``books_book`` entry (and deleting them again between values).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from benchmarks.keyspace import delete_prefix
from benchmarks.run import ALL_LIBS, QUERY_NAMES, Bench, Config, cpus_awake, start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--library", choices=ALL_LIBS, default="relaycache")
    parser.add_argument("--query", choices=[*QUERY_NAMES, "invalidate"], default="get")
    parser.add_argument("--miss", action="store_true",
                        help="profile misses: invalidate the query's tables before each call")
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--books", type=int, default=20_000)
    parser.add_argument("--entries", type=int, nargs="*", default=[])
    parser.add_argument("--order", choices=["cumulative", "tottime"], default="cumulative")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--cpu-idle", action="store_true",
                        help="let CPUs enter idle states, as benchmarks.run --cpu-idle")
    args = parser.parse_args(argv)
    ns = argparse.Namespace(smoke=False, db_name=None, database_url=args.database_url,
                            redis_url=args.redis_url, libs=[args.library], only=[])
    bench = Bench(Config(books=args.books), ns)
    bench.check_services()
    bench.admin_sql(f'CREATE DATABASE "{bench.db_name}"')
    with cpus_awake(not args.cpu_idle) as cpu_idle:
        print(f"CPU idle states: {cpu_idle}")
        procs = []
        try:
            plain = start([("plain", 0)], bench.env, bench.log_dir, 60)[0]
            procs.append(plain)
            plain.call("migrate_seed", 600, books=args.books, genres=50, publishers=200)
            params = plain.call("params", 60)
            worker = plain if args.library == "plain" else start(
                [(args.library, 0)], bench.env, bench.log_dir, 60)[0]
            if worker is not plain:
                procs.append(worker)
            worker.call("set_params", 60, params=params)
            for entries in args.entries or [None]:
                if entries is not None:
                    worker.call("reset", 120)
                    worker.call("fill_copies", 600, count=entries)
                res = worker.call("profile", 600, query=args.query, n=args.n, top=args.top,
                                  miss=args.miss)
                t = res["timing"]
                print(f"== {args.library} {args.query}{' miss' if args.miss else ''}"
                      + (f" with {entries:,} entries" if entries is not None else "")
                      + f": median {t['median_ns'] / 1e3:.1f} us, p90 {t['p90_ns'] / 1e3:.1f} us"
                      f" over {t['n']} calls; {res['keys']:,} keys in the Redis database")
                print(res["profile"][args.order])
        finally:
            for p in procs:
                p.stop()
            bench.admin_sql(f'DROP DATABASE IF EXISTS "{bench.db_name}" WITH (FORCE)')
            delete_prefix(bench.redis, bench.prefix)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
