"""Invariant 8 of DESIGN.md with real processes on a real redis-server.

Workers are started with the ``spawn`` context, so each one is a fresh interpreter
with its own hash seed, imports and connections: the key they compute must agree
without any help from the parent, and the only thing they share is Redis.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import time
import uuid
from typing import Any

import pytest
import redis

from relaycache import RedisCache, cache
from tests.servers import command_stats, reset_stats
from tests.support import concurrently, wait_until

pytest_plugins = ("tests.servers",)
pytestmark = pytest.mark.real_redis

_STATE: dict[str, Any] = {}


def expensive_lookup(item: str) -> dict[str, Any]:
    """The cached function: counts its runs in Redis, then takes its time."""
    runs = _STATE["client"].incr(_STATE["counter"])
    if _STATE["started"] is not None:
        _STATE["started"].set()
    time.sleep(_STATE["sleep"])
    return {"item": item, "computed_by": os.getpid(), "run": runs, "token": uuid.uuid4().hex}


def _worker(url: str, prefix: str, counter: str, lease_ttl: float, sleep: float,
            go: Any, results: Any, started: Any = None) -> None:
    """One process: build the cache, say ready, wait for ``go``, call once, report."""
    try:
        _STATE.update(client=redis.Redis.from_url(url, socket_timeout=10), counter=counter,
                      sleep=sleep, started=started)
        backend = RedisCache(redis.Redis.from_url(url), value_prefix=prefix,
                             meta_prefix=prefix + "meta:", lease_ttl=lease_ttl)
        lookup = cache(backend=backend, tags=["stampede", "item-1"],
                       distributed_singleflight=True)(expensive_lookup)
        backend.redis_client.ping()
        results.put(("ready", os.getpid(), None))
        if hasattr(go, "parties"):
            go.wait(30)
        else:
            assert go.wait(30), "never told to go"
        began = time.monotonic()
        value = lookup("item-1")
        results.put(("done", os.getpid(), {
            "value": value, "seconds": time.monotonic() - began,
            "stats": backend.stats.snapshot()}))
    except BaseException as exc:
        results.put(("error", os.getpid(), repr(exc)))


class _Workers:
    """Spawned :func:`_worker` processes on one redis-server, sharing a prefix, a run
    counter and a queue of reports."""

    def __init__(self, redis_server: Any) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.url = redis_server.url
        self.prefix = f"sf{uuid.uuid4().hex[:8]}:"
        self.counter = self.prefix + "runs"
        self.results = self.ctx.Queue()
        self.processes: list[Any] = []

    def spawn(self, count: int, lease_ttl: float, sleep: float, go: Any,
              started: Any = None) -> list[Any]:
        made = [self.ctx.Process(target=_worker, args=(
            self.url, self.prefix, self.counter, lease_ttl, sleep, go, self.results, started),
            daemon=True) for _ in range(count)]
        self.processes += made
        for process in made:
            process.start()
        return made

    def collect(self, kind: str, count: int, timeout: float) -> dict[int, Any]:
        """``count`` reports of ``kind`` (by pid) within ``timeout`` seconds."""
        got: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        while len(got) < count:
            try:
                what, pid, payload = self.results.get(
                    timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"only {len(got)}/{count} {kind!r} reports within "
                                     f"{timeout}s: {got}") from None
            assert what != "error", f"worker {pid} failed: {payload}"
            assert what == kind, (what, pid, payload)
            got[pid] = payload
        return got

    def stop(self) -> None:
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join(5)


def test_a_stampede_of_8_processes_computes_once(redis_server):
    workers = _Workers(redis_server)
    processes_count = 8
    barrier = workers.ctx.Barrier(processes_count + 1)  # the workers and this process
    admin = redis_server.client()
    try:
        workers.spawn(processes_count, 30.0, 0.5, barrier)
        workers.collect("ready", processes_count, 60)
        reset_stats(admin)
        barrier.wait(30)  # all 8 processes call at once
        done = workers.collect("done", processes_count, 20)
    finally:
        workers.stop()

    commands = {k: v for k, v in command_stats(admin).items()
                if k != "info" and not k.startswith("config")}
    # What each new connection sends (redis-py's HELLO, the restart check's SCRIPT
    # LOAD, the near cache's tracking connection and its heartbeat) grows with the
    # connections, not with the waiting: only the rest tells busy-spinning.
    waiting = {k: v for k, v in commands.items()
               if k not in ("hello", "ping", "select", "script|load")
               and not k.startswith("client|")}
    values = [report["value"] for report in done.values()]
    seconds = sorted(round(report["seconds"], 2) for report in done.values())
    print(f"\nstampede: runs={admin.get(workers.counter)} seconds={seconds} commands={commands}")

    assert int(admin.get(workers.counter)) == 1, "the function ran more than once"
    assert all(v == values[0] for v in values), "processes got different values"
    assert values[0]["computed_by"] in done
    stores = sorted(report["stats"]["stores"] for report in done.values())
    assert stores == [0] * (processes_count - 1) + [1]
    # Waiters are woken by the holder's release, not by the 30 s lease running out.
    assert max(seconds) < 5, seconds
    # ... and they wait without busy-spinning on Redis.
    assert sum(waiting.values()) < processes_count * 15, commands


def test_a_killed_holder_blocks_the_others_only_until_its_lease_expires(redis_server):
    workers = _Workers(redis_server)
    lease_ttl = 1.5
    go_holder, go_others, started = (workers.ctx.Event() for _ in range(3))
    admin = redis_server.client()
    try:
        [holder] = workers.spawn(1, lease_ttl, 60.0, go_holder, started)
        workers.spawn(3, lease_ttl, 0.5, go_others)
        workers.collect("ready", 4, 60)
        go_holder.set()
        assert started.wait(10), "the holder never started computing"
        leased_at = time.monotonic()
        lease_keys = [k for k in admin.scan_iter(match=f"{workers.prefix}meta:l:*")]
        assert len(lease_keys) == 1, "the holder should hold a lease while computing"
        go_others.set()
        time.sleep(0.3)  # B..D find the lease taken and wait on it
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(5)
        assert not holder.is_alive()
        done = workers.collect("done", 3, lease_ttl + 5)
        elapsed = time.monotonic() - leased_at
    finally:
        workers.stop()  # kills what is still alive

    values = [report["value"] for report in done.values()]
    print(f"\nkilled holder: runs={admin.get(workers.counter)} (1 by the holder), "
          f"recovered after {elapsed:.2f}s, lease_ttl={lease_ttl}")
    assert int(admin.get(workers.counter)) == 2, "B..D must compute exactly once between them"
    assert all(v == values[0] for v in values)
    assert values[0]["computed_by"] in done and values[0]["computed_by"] != holder.pid
    assert elapsed < lease_ttl + 3, f"others were blocked {elapsed:.2f}s by a dead holder"
    assert list(admin.scan_iter(match=f"{workers.prefix}meta:l:*")) == []


def test_only_the_owner_of_a_lease_releases_it(redis_server):
    admin = redis_server.client(decode_responses=True)
    owner = RedisCache(redis.Redis(host="127.0.0.1", port=redis_server.port))
    other = RedisCache(redis.Redis(host="127.0.0.1", port=redis_server.port))
    lkey = owner.lease_key(owner.value_key("k"))

    assert owner.acquire_lease(lkey, "token-a", 5000)
    assert not other.acquire_lease(lkey, "token-b", 5000)

    woken = threading.Event()

    def wait(_):
        other.wait_lease(lkey, 5)
        woken.set()

    with concurrently(wait, 1, timeout=5):
        time.sleep(0.2)
        other.release_lease(lkey, "token-b")
        assert admin.get(lkey) == "token-a", "a non-owner released the lease"
        assert not woken.wait(0.5), "a waiter was woken although the lease is still held"

        owner.release_lease(lkey, "token-a")
        assert woken.wait(1), "the owner's release did not wake the waiter"
    assert admin.get(lkey) is None

    # A holder whose lease expired must not release its successor's lease.
    assert owner.acquire_lease(lkey, "token-a", 100)
    wait_until(lambda: not admin.exists(lkey), 3)
    assert other.acquire_lease(lkey, "token-b", 5000)
    owner.release_lease(lkey, "token-a")
    assert admin.get(lkey) == "token-b"
    other.release_lease(lkey, "token-b")
    assert admin.get(lkey) is None
