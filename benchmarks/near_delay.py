"""How long after a write returns another process's near cache drops what it replaced.

    python -m benchmarks.near_delay --redis-url redis://127.0.0.1:6379/13 --rounds 3000

This process writes; a reader process holds the entry in its near cache and spins on
it (a lookup drains the tracking socket without blocking). Each round the writer
invalidates the entry's tag. Times are ``time.monotonic_ns()``, one clock for every
process of a host:

- ``sent``: the writer is about to send the stamp replacement;
- ``reply``: its reply came back (the writer is about to make the barrier);
- ``return``: ``invalidate()`` returned (after the barrier: one more round trip);
- ``drop``: the reader's first lookup that found the stamp gone returned (the message
  arrived after the previous lookup began: off by one lookup, a few µs, unless the
  reader was preempted).

CPUs are held out of idle states during the run, as ``benchmarks.run`` does
(``--cpu-idle`` allows them). It prints percentiles of ``drop - sent`` and ``drop -
reply`` (when the message reached the other process) and ``drop - return`` (negative:
dropped before the write returned, which the barrier is for). Stale reads are counted
without clocks: right after ``invalidate()`` returns the writer sets a flag in shared
memory, and the reader reads the flag before each lookup; a lookup that served the old
stamp although the flag was already set started after the write had returned: a stale
read (it must be 0). Across hosts, add one network delivery to the first figures. Keys
live under a prefix of their own and are deleted at the end.
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from benchmarks.run import cpus_awake
from relaycache import NearCache, RedisCache

ROOT = Path(__file__).resolve().parents[1]
TAG, KEY = "delay", "delay-entry"


def _backend(url: str, prefix: str) -> RedisCache:
    return RedisCache(redis.Redis.from_url(url), value_prefix=prefix,
                      meta_prefix=prefix + "meta:", near_cache=NearCache())


def _flag(path: str) -> mmap.mmap:
    """One byte of memory shared by the two processes: 1 once the write returned."""
    fd = os.open(path, os.O_RDWR)
    try:
        return mmap.mmap(fd, mmap.PAGESIZE)
    finally:
        os.close(fd)


def reader(url: str, prefix: str, flag_path: str) -> None:
    """Per round: on ``warm``, read the entry until the near cache serves it, say
    ``ready``, spin until its stamp is dropped, and print when the first lookup that
    did not serve it returned and how many lookups served it after the write had
    returned."""
    backend = _backend(url, prefix)
    near = backend._near
    assert near is not None
    stamp = backend.stamp_keys([TAG])
    returned = _flag(flag_path)
    for line in sys.stdin:
        if line.strip() != "warm":
            break
        while True:
            hits = backend.stats.near_hits
            backend.get(KEY, tags=[TAG])
            if backend.stats.near_hits > hits:
                break
        print("ready", flush=True)
        stale = 0
        while True:
            after_return = returned[0]  # read BEFORE the lookup starts
            if near.lookup(stamp) is None:
                break
            stale += after_return
            os.sched_yield()  # spinning, but leaving the CPU to Redis and the writer
        print(time.monotonic_ns(), stale, flush=True)


def _percentiles(values_us: list[float]) -> str:
    cuts = statistics.quantiles(values_us, n=100, method="inclusive")
    return (f"p50 {cuts[49]:8.1f} µs   p99 {cuts[98]:8.1f} µs   "
            f"min {min(values_us):8.1f}   max {max(values_us):8.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.near_delay",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--cpu-idle", action="store_true",
                        help="let CPUs enter idle states, as benchmarks.run --cpu-idle")
    parser.add_argument("--reader", nargs=2, metavar=("PREFIX", "FLAG"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reader:
        reader(args.redis_url, *args.reader)
        return 0
    with cpus_awake(not args.cpu_idle) as cpu_idle:
        print(f"CPU idle states: {cpu_idle}")
        return measure(args.redis_url, args.rounds)


def measure(url: str, rounds: int) -> int:
    """Run ``rounds`` invalidations against a reader process and print the figures."""
    prefix = f"neardelay{uuid.uuid4().hex[:8]}:"
    backend = _backend(url, prefix)
    sent: list[int] = []
    replied: list[int] = []
    pipeline, barrier = backend._pipeline, backend._barrier

    def timed_pipeline(commands: list[Any], raise_on_error: bool = True) -> list[Any]:
        sent.append(time.monotonic_ns())
        return pipeline(commands, raise_on_error)

    def timed_barrier(keys: list[str]) -> None:
        replied.append(time.monotonic_ns())  # the stamp replacement's reply is in
        barrier(keys)

    backend._pipeline = timed_pipeline  # type: ignore[method-assign]
    backend._barrier = timed_barrier  # type: ignore[method-assign]
    with tempfile.NamedTemporaryFile(prefix="near_delay", dir="/dev/shm"
                                     if os.path.isdir("/dev/shm") else None) as file:
        file.write(b"\0" * mmap.PAGESIZE)
        file.flush()
        returned_flag = _flag(file.name)
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.near_delay", "--redis-url", url,
             "--reader", prefix, file.name], cwd=ROOT, text=True, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.stdin is not None and proc.stdout is not None
        from_sent: list[float] = []
        from_reply: list[float] = []
        from_return: list[float] = []
        stale = 0
        try:
            for _ in range(rounds):
                returned_flag[0] = 0
                backend.set(KEY, {"v": 1}, tags=[TAG])
                proc.stdin.write("warm\n")
                proc.stdin.flush()
                assert proc.stdout.readline().strip() == "ready"
                time.sleep(random.uniform(0, 0.001))  # the reader is spinning by now
                backend.invalidate([TAG])
                returned_flag[0] = 1
                returned = time.monotonic_ns()
                dropped, served_after = map(int, proc.stdout.readline().split())
                stale += served_after > 0
                from_sent.append((dropped - sent[-1]) / 1000)
                from_reply.append((dropped - replied[-1]) / 1000)
                from_return.append((dropped - returned) / 1000)
        finally:
            proc.stdin.close()
            proc.wait(10)
            backend.clear()
    before = sum(d < 0 for d in from_return)
    print(f"{rounds} invalidations, reader spinning on its near cache "
          f"({url}):")
    print(f"  drop - sent   (write sent):         {_percentiles(from_sent)}")
    print(f"  drop - reply  (its reply received): {_percentiles(from_reply)}")
    print(f"  drop - return (after the barrier):  {_percentiles(from_return)}")
    print(f"  dropped before invalidate() returned: {before} of {rounds}")
    print(f"  rounds where a lookup started after invalidate() returned served the old "
          f"stamp (stale): {stale}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
