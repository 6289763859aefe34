"""RelayCache versus django-cacheops, django-cachalot, plain Django and floors (raw Redis,
an in-process dict, relaycache 0.1's decorator).

    .venv/bin/python -m benchmarks.run            # full run: writes benchmarks/RESULTS.md
    .venv/bin/python -m benchmarks.run --smoke    # tiny, < 60 s, writes to a temp dir

Needs PostgreSQL (``--database-url``, a server where it may create and drop a database
``relaycache_bench_<run>``) and Redis (``--redis-url``, a spare database: only keys under
``relaybench:<run>:`` are written and deleted; db 0 and 15 are refused). Each library runs
in processes of its own, since cacheops and cachalot patch Django globally; libraries are
interleaved in every round, and every ratio compares numbers of the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import selectors
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata, util
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "benchmarks"
ALL_LIBS = ["relaycache", "relaycache_near", "cacheops", "cachalot", "plain", "floor",
            "dict", "relaycache01"]
CACHING = ["relaycache", "cacheops", "cachalot"]  # workloads 3 and 7
FLOORS = ["floor", "dict", "relaycache01"]  # workload 1 only
WORKLOADS = ["hits", "misses", "invalidation", "mixed", "stampede", "stale", "memory"]
QUERY_NAMES = ["top", "list20", "get", "select_related", "count", "decorator",
               "decorator_nosf"]
MISS_QUERIES = QUERY_NAMES[:6]
DECORATOR_QUERIES = ("decorator", "decorator_nosf")
# who runs decorator_nosf (the decorator without distributed singleflight); plain too,
# as the reference its results must equal
NOSF_LIBS = ("relaycache", "relaycache_near", "relaycache01", "plain")
PAGE_CPU_LIBS = ("relaycache", "relaycache_near", "plain")
RC01 = "relaycache==0.1.1"  # relaycache 0.1 on PyPI (import name custom_cache)


def hit_libs(libs: list[str], query: str) -> list[str]:
    """The libraries that run ``query`` in workload 1."""
    if query == "decorator_nosf":
        return [lib for lib in libs if lib in NOSF_LIBS]
    if query not in DECORATOR_QUERIES:
        return [lib for lib in libs if lib != "relaycache01"]
    return libs


def rc01_dir(log: Any) -> Path | None:
    """relaycache 0.1.1's wheel, downloaded once (``pip download --no-deps``, never
    installed: it is a distribution named relaycache too) and unpacked into a cache
    directory under the temp dir; None when it cannot be had."""
    import zipfile

    cache = Path(tempfile.gettempdir()) / "relaycache-bench-cache" / "relaycache-0.1.1"
    site = cache / "site"
    if (site / "custom_cache" / "__init__.py").exists():
        return site
    cache.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", RC01, "--no-deps",
                        "--only-binary=:all:", "--timeout", "10", "--retries", "1",
                        "--disable-pip-version-check", "-q", "-d", str(cache)],
                       check=True, capture_output=True, timeout=60)
        wheel = next(cache.glob("relaycache-0.1.1-*.whl"))
        tmp = cache / "site.tmp"
        with zipfile.ZipFile(wheel) as z:
            z.extractall(tmp)
        tmp.rename(site)
    except (OSError, subprocess.SubprocessError, StopIteration, zipfile.BadZipFile) as exc:
        detail = str(exc)
        if isinstance(exc, subprocess.CalledProcessError):
            lines = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
            detail = f"pip download exited {exc.returncode}" + (f": {lines[-1]}" if lines
                                                                 else "")
        log(f"relaycache 0.1.1 unavailable ({type(exc).__name__}: {detail[:200]})")
        return None
    return site


@dataclass
class Config:
    books: int = 20_000
    genres: int = 50
    publishers: int = 200
    rounds: int = 11  # workload 1
    hit_n: int = 400
    hit_budget_s: float = 0.4
    hit_warmup: int = 30
    miss_rounds: int = 3
    miss_n: int = 40
    miss_budget_s: float = 0.5
    page_cpu_rounds: int = 5
    page_cpu_budget_s: float = 1.0
    page_cpu_books: int = 50
    inval_sizes: list[int] = field(default_factory=lambda: [1_000, 10_000, 100_000, 1_000_000])
    inval_api_limit: int = 10_000  # sizes up to this: every entry made through the API
    inval_api_seed: int = 1_000  # larger sizes: this many through the API, the rest copied
    inval_repeats: int = 25
    refill_budget: int = 1_000_000  # cacheops deletes its entries: cap the rewrites
    pool: int = 4
    mixed_rounds: int = 2
    mixed_seconds: float = 6.0
    mixed_warmup: float = 1.5
    mixed_prefill: int = 5_000  # the most popular books' pages are read before each run
    write_ratios: list[float] = field(default_factory=lambda: [0.01, 0.10])
    stampede_procs: int = 4
    stampede_threads: int = 8
    stampede_rounds: int = 3
    stampede_hold_s: float = 0.5
    stale_seconds: float = 6.0
    stale_rows: int = 6
    stale_pause_s: float = 0.005
    memory_entries: int = 2_000
    growth_writes: int = 100_000
    growth_checkpoints: int = 4
    reads_per_write: float = 0.1
    timeout_s: float = 900.0


SMOKE = Config(
    books=300, genres=10, publishers=20, rounds=1, hit_n=40, hit_budget_s=0.05, hit_warmup=3,
    miss_rounds=1, miss_n=5, miss_budget_s=0.05, page_cpu_rounds=1, page_cpu_budget_s=0.05,
    page_cpu_books=5, inval_sizes=[100, 1_000],
    inval_api_limit=200, inval_api_seed=100, inval_repeats=3, refill_budget=20_000, pool=2,
    mixed_rounds=1, mixed_seconds=0.5, mixed_warmup=0.2, mixed_prefill=100, stampede_procs=2,
    stampede_threads=4, stampede_rounds=1, stampede_hold_s=0.3, stale_seconds=1.0, stale_rows=4,
    memory_entries=100, growth_writes=400, growth_checkpoints=2, timeout_s=40.0)


# -- worker processes --------------------------------------------------------------------

class WorkerError(RuntimeError):
    pass


class Proc:
    """A worker process of one library, driven by JSON lines."""

    def __init__(self, lib: str, env: dict[str, str], log_dir: Path, index: int) -> None:
        self.lib = lib
        self.index = index
        self.log_path = log_dir / f"{lib}-{index}.log"
        self.log = open(self.log_path, "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.worker"], cwd=ROOT,
            env={**env, "BENCH_LIBRARY": lib}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.log, text=True, bufsize=1)
        self.ready = False

    def __repr__(self) -> str:
        return f"<{self.lib} worker #{self.index} pid {self.proc.pid}>"

    def send(self, cmd: str, **kwargs: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.proc.stdin.flush()

    def recv(self, timeout: float) -> Any:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise WorkerError(f"{self}: no reply within {timeout:.0f}s\n{self.tail()}")
        line = self.proc.stdout.readline()
        if not line:
            raise WorkerError(f"{self} exited ({self.proc.poll()})\n{self.tail()}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise WorkerError(f"{self} failed:\n{reply['error']}")
        return reply["result"]

    def call(self, cmd: str, timeout: float, **kwargs: Any) -> Any:
        self.send(cmd, **kwargs)
        return self.recv(timeout)

    def tail(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.send("exit")
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def start(libs_indices: list[tuple[str, int]], env: dict[str, str], log_dir: Path,
          timeout: float) -> list[Proc]:
    procs = [Proc(lib, env, log_dir, i) for lib, i in libs_indices]
    for p in procs:
        p.recv(timeout)
        p.ready = True
    return procs


# -- the run -----------------------------------------------------------------------------

class Bench:
    def __init__(self, cfg: Config, args: argparse.Namespace) -> None:
        self.cfg = cfg
        self.args = args
        self.run_id = os.urandom(3).hex()
        self.cpu_idle = "not recorded"
        self.prefix = f"relaybench:{self.run_id}:"
        self.harness = self.prefix + "h:"
        self.db_name = args.db_name or f"relaycache_bench_{self.run_id}"
        self.redis = redis.Redis.from_url(args.redis_url, socket_timeout=30)
        self.server = urlsplit(args.database_url)
        self.log_dir = Path(tempfile.mkdtemp(prefix="relaycache-bench-logs-"))
        self.env = {**os.environ, "DJANGO_SETTINGS_MODULE": "benchmarks.settings",
                    "BENCH_REDIS_URL": args.redis_url, "BENCH_PREFIX": self.prefix,
                    "BENCH_DATABASE_URL": self._db_url(self.db_name),
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                os.environ.get("PYTHONPATH")])),
                    "PYTHONHASHSEED": "0"}
        self.main: dict[str, Proc] = {}
        self.pools: dict[str, list[Proc]] = {}
        self.all_procs: list[Proc] = []
        self.results: dict[str, Any] = {"smoke": args.smoke, "config": dataclasses.asdict(cfg),
                                        "notes": []}
        wanted = {*args.libs, "plain"}  # plain Django: the baseline, and the seeder
        self.libs = [lib for lib in ALL_LIBS if lib in wanted and self._available(lib)]
        self.started = time.monotonic()

    def _available(self, lib: str) -> bool:
        if lib == "relaycache01":
            site = rc01_dir(lambda m: self.results["notes"].append(m + ": not benchmarked"))
            if site is None:
                return False
            self.env["BENCH_RC01_DIR"] = str(site)
            return True
        module = {"cacheops": "cacheops", "cachalot": "cachalot"}.get(lib)
        if module and util.find_spec(module) is None:
            self.results["notes"].append(
                f"{lib} is not installed (pip install -e '.[bench]'): not benchmarked")
            return False
        return True

    def _db_url(self, name: str) -> str:
        s = self.server
        auth = s.username or "postgres"
        if s.password:
            auth += f":{s.password}"
        return f"postgresql://{auth}@{s.hostname or '127.0.0.1'}:{s.port or 5432}/{name}"

    def admin_sql(self, sql: str, dbname: str = "postgres") -> Any:
        import psycopg

        s = self.server
        with psycopg.connect(dbname=dbname, user=s.username or "postgres",
                             password=s.password or None, host=s.hostname or "127.0.0.1",
                             port=s.port or 5432, autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else None

    def log(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", flush=True)

    @property
    def caching(self) -> list[str]:
        return [lib for lib in CACHING if lib in self.libs]

    @property
    def served(self) -> list[str]:
        """The libraries that serve reads and writes (not the floors)."""
        return [lib for lib in self.libs if lib not in FLOORS]

    def rotated(self, libs: list[str], r: int) -> list[str]:
        r %= len(libs)
        return libs[r:] + libs[:r]

    # -- lifecycle --------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.check_services()
        self.admin_sql(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        self.admin_sql(f'CREATE DATABASE "{self.db_name}"')
        try:
            self.log(f"database {self.db_name}, Redis {self.args.redis_url} "
                     f"prefix {self.prefix}, libraries {', '.join(self.libs)}")
            plain = start([("plain", 0)], self.env, self.log_dir, 60)[0]
            self.all_procs.append(plain)
            self.main["plain"] = plain
            self.results["data"] = plain.call(
                "migrate_seed", cfg.timeout_s, books=cfg.books, genres=cfg.genres,
                publishers=cfg.publishers)
            self.log(f"seeded {self.results['data']}")
            params = plain.call("params", 60)
            self.results["params"] = params
            others = [(lib, 0) for lib in self.libs if lib != "plain"]
            for p in start(others, self.env, self.log_dir, 120):
                self.main[p.lib] = p
                self.all_procs.append(p)
            for p in self.main.values():
                p.call("set_params", 120, params=params)
            self.results["machine"] = self.machine()
            only = set(self.args.only or WORKLOADS)
            for name, step in [("hits", self.hits), ("misses", self.misses),
                               ("invalidation", self.invalidation),
                               ("memory", self.entry_memory)]:
                if name in only:
                    step()
            if only & {"mixed", "stampede", "stale", "memory"}:
                self.start_pools()
            for name, step in [("mixed", self.mixed), ("stampede", self.stampede),
                               ("stale", self.stale), ("memory", self.growth)]:
                if name in only:
                    step()
            self.results["machine"]["loadavg_end"] = os.getloadavg()
            self.results["seconds"] = time.monotonic() - self.started
        finally:
            for p in self.all_procs:
                p.stop()
            with contextlib.suppress(Exception):
                self.admin_sql(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            from benchmarks.keyspace import delete_prefix

            with contextlib.suppress(Exception):
                delete_prefix(self.redis, self.prefix)
        return self.results

    def check_services(self) -> None:
        db = int(urlsplit(self.args.redis_url).path.lstrip("/") or 0)
        if db in (0, 15):
            raise SystemExit(f"refusing Redis db {db}: use a spare database such as 13")
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            raise SystemExit(f"Redis at {self.args.redis_url} unreachable: {exc}") from None
        try:
            self.admin_sql("SELECT 1")
        except Exception as exc:
            raise SystemExit(f"PostgreSQL at {self.args.database_url} unreachable: {exc}"
                             ) from None

    def machine(self) -> dict[str, Any]:
        cpu = "unknown"
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        packages = {}
        for name in ("relaycache", "Django", "django-cacheops", "django-cachalot", "redis",
                     "hiredis", "psycopg", "orjson", "matplotlib"):
            try:
                packages[name] = metadata.version(
                    "django-relaycache" if name == "relaycache" else name)
            except metadata.PackageNotFoundError:
                packages[name] = "not installed"
        return {
            "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "packages": packages,
            "redis_server": self.redis.info("server").get("redis_version"),
            "postgresql": self.admin_sql("SHOW server_version")[0][0],
            "loadavg_start": os.getloadavg(), "cpu_idle": self.cpu_idle,
        }

    # -- workload 1 -----------------------------------------------------------------

    def hits(self) -> None:
        cfg = self.cfg
        out: dict[str, dict[str, Any]] = {q: {lib: {"rounds": []}
                                              for lib in hit_libs(self.libs, q)}
                                          for q in QUERY_NAMES}
        for r in range(cfg.rounds):
            for q in QUERY_NAMES:
                for lib in self.rotated(hit_libs(self.libs, q), r):
                    res = self.main[lib].call("hit", 120, query=q, n=cfg.hit_n,
                                              budget_s=cfg.hit_budget_s,
                                              warmup=cfg.hit_warmup)
                    out[q][lib]["rounds"].append(res)
            self.log(f"workload 1 (hits): round {r + 1}/{cfg.rounds} done")
        for q in QUERY_NAMES:
            for lib in hit_libs(self.libs, q):
                rounds = out[q][lib]["rounds"]
                entry = out[q][lib]
                calls = sum(x["n"] for x in rounds)
                entry["cpu_ns"] = sum(x["cpu_ns"] for x in rounds) / calls
                pg = [x["pg_cpu_ns"] for x in rounds]
                entry["pg_cpu_ns"] = None if None in pg else sum(pg) / calls
                entry["median_ns"] = statistics.median(x["median_ns"] for x in rounds)
                entry["min_round_ns"] = min(x["median_ns"] for x in rounds)
                entry["max_round_ns"] = max(x["median_ns"] for x in rounds)
                entry["samples"] = sum(x["n"] for x in rounds)
                entry["db_selects"] = sum(x["db_selects"] for x in rounds)
                entry["fingerprint"] = rounds[-1]["fingerprint"]
                entry["backend"] = rounds[-1]["backend"]
                entry["rounds"] = [x["median_ns"] for x in rounds]
        self.results["hits"] = out
        self.page_cpu()

    def page_cpu(self) -> None:
        """CPU per fully cached book page (workload 4's three page queries, all hits),
        worker and PostgreSQL backend, interleaved rounds."""
        cfg = self.cfg
        libs = [lib for lib in PAGE_CPU_LIBS if lib in self.libs]
        ids = [row[0] for row in self.admin_sql(
            f"SELECT id FROM books_book ORDER BY id LIMIT {int(cfg.page_cpu_books)}",
            dbname=self.db_name)]
        raw: dict[str, list[Any]] = {lib: [] for lib in libs}
        for r in range(cfg.page_cpu_rounds):
            for lib in self.rotated(libs, r):
                raw[lib].append(self.main[lib].call("page_cpu", 120, books=ids,
                                                    budget_s=cfg.page_cpu_budget_s))
        out = {}
        for lib, rounds in raw.items():
            pages = sum(x["pages"] for x in rounds)
            pg = [x["pg_cpu_ns"] for x in rounds]
            out[lib] = {"pages": pages,
                        "wall_ns": sum(x["wall_ns"] for x in rounds) / pages,
                        "cpu_ns": sum(x["cpu_ns"] for x in rounds) / pages,
                        "pg_cpu_ns": None if None in pg else sum(pg) / pages,
                        "db_selects": sum(x["db_selects"] for x in rounds),
                        "rounds": [x["cpu_ns"] / x["pages"] for x in rounds]}
        self.results["page_cpu"] = out
        self.log("CPU per cached book page done")

    # -- workload 2 -----------------------------------------------------------------

    def misses(self) -> None:
        cfg = self.cfg
        libs = self.served
        out: dict[str, dict[str, Any]] = {q: {lib: {"rounds": []} for lib in libs}
                                          for q in MISS_QUERIES}
        for r in range(cfg.miss_rounds):
            for q in MISS_QUERIES:
                for lib in self.rotated(libs, r):
                    out[q][lib]["rounds"].append(self.main[lib].call(
                        "miss", 120, query=q, n=cfg.miss_n, budget_s=cfg.miss_budget_s))
            self.log(f"workload 2 (misses): round {r + 1}/{cfg.miss_rounds} done")
        for q in MISS_QUERIES:
            for lib in libs:
                rounds = out[q][lib]["rounds"]
                calls = sum(x["n"] for x in rounds)
                pg = [x["pg_cpu_ns"] for x in rounds]
                out[q][lib] = {
                    "median_ns": statistics.median(x["median_ns"] for x in rounds),
                    "cpu_ns": sum(x["cpu_ns"] for x in rounds) / calls,
                    "pg_cpu_ns": None if None in pg else sum(pg) / calls,
                    "samples": sum(x["n"] for x in rounds),
                    "db_selects_per_call": statistics.mean(x["db_selects_per_call"]
                                                           for x in rounds)}
        self.results["misses"] = out

    # -- workload 3 -----------------------------------------------------------------

    def invalidation(self) -> None:
        cfg = self.cfg
        out: dict[str, list[Any]] = {lib: [] for lib in self.caching}
        for i, size in enumerate(cfg.inval_sizes):
            for lib in self.rotated(self.caching, i):
                res = self.main[lib].call("inval", cfg.timeout_s, size=size,
                                          api_entries=(size - 1 if size <= cfg.inval_api_limit
                                                       else cfg.inval_api_seed),
                                          repeats=cfg.inval_repeats,
                                          refill_budget=cfg.refill_budget)
                out[lib].append(res)
                self.log(f"workload 3 (invalidation): {lib} {size:,} entries: "
                         f"{res['invalidate']['median_ns'] / 1e3:.1f} us invalidate, "
                         f"{res['save']['median_ns'] / 1e3:.1f} us save()")
        self.results["invalidation"] = out

    # -- workload 7a ----------------------------------------------------------------

    def entry_memory(self) -> None:
        out = {}
        for lib in [*self.caching, *(["floor"] if "floor" in self.libs else [])]:
            out[lib] = self.main[lib].call("entry_memory", self.cfg.timeout_s,
                                           count=self.cfg.memory_entries)
        self.results["entry_memory"] = out
        self.log("workload 7 (bytes per entry) done")

    # -- pools ------------------------------------------------------------------------

    def start_pools(self) -> None:
        libs = self.served
        extra = [(lib, i) for lib in libs for i in range(1, self.cfg.pool)]
        started = start(extra, self.env, self.log_dir, 180)
        self.all_procs.extend(started)
        for lib in libs:
            self.pools[lib] = [self.main[lib], *[p for p in started if p.lib == lib]]
        self.log(f"pools of {self.cfg.pool} processes per library started")

    def group(self, procs: list[Proc], name: str, commands: list[dict[str, Any]],
              between: Any = None, timeout: float | None = None) -> list[Any]:
        """Send one command to each process; release them together at barrier ``name``."""
        ready_key, go_key = f"{self.harness}b:{name}:ready", f"{self.harness}b:{name}:go"
        for proc, command in zip(procs, commands, strict=True):
            proc.send(barrier=name, **command)
        deadline = time.monotonic() + 120
        while int(self.redis.get(ready_key) or 0) < len(procs):
            for proc in procs:
                if proc.proc.poll() is not None:
                    raise WorkerError(f"{proc} exited\n{proc.tail()}")
            if time.monotonic() > deadline:
                raise WorkerError(f"barrier {name}: processes not ready")
            time.sleep(0.01)
        if between is not None:
            with between():
                self.redis.rpush(go_key, *["go"] * len(procs))
        else:
            self.redis.rpush(go_key, *["go"] * len(procs))
        results = [proc.recv(timeout or self.cfg.timeout_s) for proc in procs]
        self.redis.delete(ready_key, go_key)
        return results

    # -- workload 4 -----------------------------------------------------------------

    def mixed(self) -> None:
        cfg = self.cfg
        libs = self.served
        raw: dict[str, dict[str, list[Any]]] = {str(w): {lib: [] for lib in libs}
                                               for w in cfg.write_ratios}
        n = 0
        for r in range(cfg.mixed_rounds):
            for ratio in cfg.write_ratios:
                for lib in self.rotated(libs, r + n):
                    self.main[lib].call("reset", 120)
                    procs = self.pools[lib]
                    n += 1
                    res = self.group(procs, f"mixed{n}", [
                        {"cmd": "mixed", "seconds": cfg.mixed_seconds,
                         "warmup": cfg.mixed_warmup, "write_ratio": ratio,
                         "seed": 1000 * n + i, "index": i, "procs": len(procs),
                         "prefill": cfg.mixed_prefill} for i in range(len(procs))])
                    raw[str(ratio)][lib].append(res)
            self.log(f"workload 4 (page load): round {r + 1}/{cfg.mixed_rounds} done")
        out: dict[str, dict[str, Any]] = {}
        for ratio, per_lib in raw.items():
            out[ratio] = {lib: mixed_summary(runs, len(self.pools[lib]))
                          for lib, runs in per_lib.items()}
            plain = out[ratio].get("plain")
            for entry in out[ratio].values():
                entry["ops_vs_plain"] = (entry["ops_per_s"] / plain["ops_per_s"]
                                         if plain and plain["ops_per_s"] else None)
                entry["save_vs_plain"] = (entry["write_p50_ns"]["save"]
                                          / plain["write_p50_ns"]["save"]
                                          if plain and plain["write_p50_ns"]["save"]
                                          and entry["write_p50_ns"]["save"] else None)
        self.results["mixed"] = out

    # -- workload 5 -----------------------------------------------------------------

    def stampede(self) -> None:
        cfg = self.cfg
        libs = self.served
        out: dict[str, list[Any]] = {lib: [] for lib in libs}
        for r in range(cfg.stampede_rounds):
            for lib in self.rotated(libs, r):
                procs = self.pools[lib][: cfg.stampede_procs]
                threads = cfg.stampede_threads
                started = time.monotonic()
                res = self.group(procs, f"stampede{r}{lib}", [
                    {"cmd": "stampede", "threads": threads, "round_no": r}
                    for _ in procs], between=lambda: self.table_lock(cfg.stampede_hold_s))
                wall = time.monotonic() - started
                fps = sorted({fp for x in res for fp in x["fingerprints"]})
                errors = [e for x in res for e in x["errors"]]
                lat = sorted(v for x in res for v in x["latencies_ns"])
                out[lib].append({"db_queries": sum(x["db_selects"] for x in res),
                                 "clients": len(lat), "processes": len(procs),
                                 "distinct_results": len(fps), "errors": errors[:1],
                                 "backend": [x["backend"] for x in res],
                                 "max_latency_ns": lat[-1] if lat else None,
                                 "median_latency_ns": pct(lat, 50), "wall_s": wall})
            self.log(f"workload 5 (stampede): round {r + 1}/{cfg.stampede_rounds} done")
        self.results["stampede"] = out

    @contextlib.contextmanager
    def table_lock(self, hold: float):
        """Hold ACCESS EXCLUSIVE on books_book for ``hold`` seconds: every read of the
        table waits, so the stampede's query takes ``hold`` seconds in every library."""
        import psycopg

        s = self.server
        with psycopg.connect(dbname=self.db_name, user=s.username or "postgres",
                             password=s.password or None, host=s.hostname or "127.0.0.1",
                             port=s.port or 5432, connect_timeout=10) as conn:
            conn.execute("LOCK TABLE books_book IN ACCESS EXCLUSIVE MODE")
            yield
            time.sleep(hold)
            conn.rollback()

    # -- workload 6 -----------------------------------------------------------------

    def stale(self) -> None:
        cfg = self.cfg
        libs = self.served
        out = {}
        for i, lib in enumerate(self.rotated(libs, 1)):
            rows = self.main["plain"].call("make_stale_rows", 60, count=cfg.stale_rows)
            self.main[lib].call("reset", 120)
            procs = self.pools[lib]
            zset = f"{self.harness}stale:{lib}"
            res = self.group(procs, f"stale{i}", [
                {"cmd": "stale", "role": "writer" if j == 0 else "reader",
                 "seconds": cfg.stale_seconds, "rows": rows, "seed": 77 + j, "zset": zset,
                 "pause": cfg.stale_pause_s} for j in range(len(procs))])
            writers = [x for x in res if x["role"] == "writer"]
            readers = [x for x in res if x["role"] == "reader"]
            shapes: dict[str, int] = {}
            stale_shapes: dict[str, int] = {}
            for x in readers:
                for k, v in x["shapes"].items():
                    shapes[k] = shapes.get(k, 0) + v
                for k, v in x["stale_shapes"].items():
                    stale_shapes[k] = stale_shapes.get(k, 0) + v
            reads = sum(x["reads"] for x in readers)
            out[lib] = {"writes": sum(x["writes"] for x in writers),
                        "ops": writers[0]["ops"] if writers else {},
                        "reads": reads, "stale": sum(x["stale"] for x in readers),
                        "hit_ratio": sum(x["hits"] for x in readers) / reads if reads else 0,
                        "shapes": shapes, "stale_shapes": stale_shapes,
                        "examples": [e for x in readers for e in x["examples"]][:3],
                        "writers": len(writers), "readers": len(readers)}
            self.log(f"workload 6 (stale reads): {lib}: {out[lib]['stale']} stale of "
                     f"{reads} reads, {out[lib]['writes']} writes")
        self.results["stale"] = out

    # -- workload 7b ----------------------------------------------------------------

    def growth(self) -> None:
        from benchmarks.keyspace import prefix_usage

        cfg = self.cfg
        out = {}
        chunk = cfg.growth_writes // cfg.growth_checkpoints
        for lib in self.caching:
            self.main[lib].call("reset", 120)
            prefix = self.main_prefix(lib)
            procs = self.pools[lib]
            points = [{"writes": 0, **prefix_usage(self.redis, prefix), "seconds": 0.0}]
            done = 0
            for c in range(cfg.growth_checkpoints):
                per = chunk // len(procs)
                t0 = time.monotonic()
                for j, proc in enumerate(procs):
                    proc.send("growth", writes=per, reads_per_write=cfg.reads_per_write,
                              seed=c * 100 + j + 1)
                for proc in procs:
                    proc.recv(cfg.timeout_s)
                done += per * len(procs)
                points.append({"writes": done, **prefix_usage(self.redis, prefix),
                               "seconds": time.monotonic() - t0})
            out[lib] = points
            self.log(f"workload 7 (growth): {lib}: {points[0]['keys']} -> "
                     f"{points[-1]['keys']} keys, {points[-1]['bytes']:,} bytes after "
                     f"{done:,} writes")
            self.main[lib].call("reset", 120)
        self.results["growth"] = out

    def main_prefix(self, lib: str) -> str:
        """The library's key prefix, as benchmarks/settings.py sets it."""
        return self.prefix + {"relaycache": "rc:", "relaycache_near": "rn:",
                              "cacheops": "co:", "cachalot": "ca", "floor": "fl:"}[lib]


@contextlib.contextmanager
def cpus_awake(wanted: bool) -> Iterator[str]:
    """Ask the kernel to keep every CPU out of idle states for the run (a PM QoS
    request of 0 µs wake-up latency on ``/dev/cpu_dma_latency``, held while the file
    is open: what tuned's latency-performance profile does on latency-sensitive
    servers). On the VM these runs were made on, a vCPU woken from idle added up to
    80 µs to a loopback round trip, depending on what else ran, so per-round medians
    of a 70 µs hit varied 2x; held awake, they vary by a few percent. Yields what the
    report says about it."""
    if not wanted:
        yield "allowed (--cpu-idle)"
        return
    try:
        fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
    except OSError as exc:
        yield f"allowed (/dev/cpu_dma_latency: {exc.strerror})"
        return
    try:
        os.write(fd, struct.pack("i", 0))
        yield "held off (/dev/cpu_dma_latency = 0 during the run)"
    finally:
        os.close(fd)


def mixed_summary(runs: list[list[dict[str, Any]]], processes: int) -> dict[str, Any]:
    """One library at one write share: every process of every round pooled.
    Throughput is each process' operations over its window less the harness'
    bookkeeping (version records, locks, stale checks), summed over processes, then
    averaged over rounds."""
    members = [m for run in runs for m in run]
    reads = sorted(x for m in members for x in m["reads"])
    kinds = list(members[0]["writes"]) if members else []
    writes = {k: sorted(x for m in members for x in m["writes"][k]) for k in kinds}

    def total(field: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for m in members:
            for k, v in m[field].items():
                out[k] = out.get(k, 0) + v
        return out

    queries, hits, cold, stale = total("queries"), total("hits"), total("cold_misses"), \
        total("stale")
    n_queries = sum(queries.values())
    n_hits = sum(hits.values())
    rates = [sum((len(m["reads"]) + sum(len(w) for w in m["writes"].values()))
                 / max(m["seconds"] - m["harness_s"], 1e-9) for m in run) for run in runs]
    all_writes = sorted(x for w in writes.values() for x in w)
    return {
        "ops_per_s": statistics.mean(rates) if rates else 0.0,
        "ops_per_s_rounds": rates,
        "reads": len(reads), "writes": {k: len(v) for k, v in writes.items()},
        "read_p50_ns": pct(reads, 50), "read_p99_ns": pct(reads, 99),
        "write_p50_ns": {"all": pct(all_writes, 50), **{k: pct(v, 50) for k, v in writes.items()}},
        "write_p99_ns": {"all": pct(all_writes, 99), **{k: pct(v, 99) for k, v in writes.items()}},
        "queries": n_queries, "hit_ratio": n_hits / n_queries if n_queries else 0.0,
        "per_query": {k: {"queries": q, "hits": hits.get(k, 0), "cold_misses": cold.get(k, 0)}
                      for k, q in queries.items()},
        "cold_misses": sum(cold.values()),
        "stale": sum(stale.values()), "stale_by_query": stale,
        "stale_checked": sum(m["stale_checked"] for m in members),
        "stale_examples": [e for m in members for e in m["stale_examples"]][:3],
        "harness_share": (sum(m["harness_s"] for m in members)
                          / sum(m["seconds"] for m in members) if members else 0.0),
        "prefill_s": max((m["prefill_s"] for m in members), default=0.0),
        "errors": sum(m["errors"] for m in members),
        "error": next((m["error"] for m in members if m["error"]), ""),
        "backend": [m["backend"] for m in members if m.get("backend")][:1],
        "processes": processes,
    }


def pct(ordered: list[int], p: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny data, 1 round, small sizes; finishes in well under 60 s")
    parser.add_argument("--database-url", default=os.environ.get(
        "BENCH_DATABASE_SERVER", "postgres://postgres@127.0.0.1:5432/postgres"),
        help="PostgreSQL server on which to create (and drop) the bench database")
    parser.add_argument("--db-name", help="name of the scratch database "
                                          "(default relaycache_bench_<run id>)")
    parser.add_argument("--redis-url", default=os.environ.get(
        "BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"),
        help="a spare Redis database (not 0 or 15); only this run's keys are touched")
    parser.add_argument("--out", type=Path, help="directory for RESULTS.md, plots and "
                        "results.json (default: benchmarks/, or a temp dir with --smoke)")
    parser.add_argument("--rounds", type=int, help="override the rounds of workload 1")
    parser.add_argument("--only", nargs="+", choices=WORKLOADS,
                        help="run only these workloads (for development)")
    parser.add_argument("--inval-sizes", nargs="+", type=int,
                        help="override the entry counts of workload 3")
    parser.add_argument("--libs", nargs="+", choices=ALL_LIBS, default=ALL_LIBS,
                        help="libraries to run (default: all; plain is always run)")
    parser.add_argument("--cpu-idle", action="store_true",
                        help="let CPUs enter idle states (by default the run holds them "
                             "off through /dev/cpu_dma_latency when it may)")
    parser.add_argument("--report-only", type=Path, metavar="RESULTS_JSON",
                        help="re-render RESULTS.md and plots from a saved results.json")
    args = parser.parse_args(argv)
    out_dir = args.out or (Path(tempfile.gettempdir()) / "relaycache-bench-smoke"
                           if args.smoke else BENCH_DIR)
    from benchmarks import report

    if args.report_only:
        results = json.loads(args.report_only.read_text())
        report.write(results, out_dir)
        print(f"wrote {out_dir / 'RESULTS.md'}")
        return 0
    cfg = dataclasses.replace(SMOKE if args.smoke else Config())
    if args.rounds:
        cfg.rounds = args.rounds
    if args.inval_sizes:
        cfg.inval_sizes = args.inval_sizes
    bench = Bench(cfg, args)
    try:
        with cpus_awake(not args.cpu_idle) as bench.cpu_idle:
            results = bench.run()
    except WorkerError as exc:
        print(f"benchmark failed: {exc}\nworker logs: {bench.log_dir}", file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        print(f"worker logs: {bench.log_dir}", file=sys.stderr)
        return 1
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    text = report.write(results, out_dir)
    print(text)
    print(f"\nwrote {out_dir / 'RESULTS.md'} in {results['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
