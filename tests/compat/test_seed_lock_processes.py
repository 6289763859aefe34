"""``AsyncRedisKeyLock`` between real processes on a real redis-server.

Each worker is a fresh interpreter (the ``spawn`` context) that shares nothing with
the others but Redis. The controls run the same workers without the lock, or before
the dead holder's lock expired, and must show the failure the lock prevents.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import uuid
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

from relaycache import AsyncRedisKeyLock

pytestmark = pytest.mark.real_redis

WORKERS, ROUNDS = 4, 25


def _increment(url: str, prefix: str, use_lock: bool) -> None:
    """Read, pause, write the counter ``ROUNDS`` times, inside the lock or not."""

    async def main() -> None:
        client = aredis.Redis.from_url(url)
        await client.incr(prefix + "ready")
        while not await client.exists(prefix + "go"):
            await asyncio.sleep(0.005)
        for _ in range(ROUNDS):
            lock = AsyncRedisKeyLock(client, prefix + "lock", ttl_ms=10_000, timeout_sec=60)
            if use_lock:
                assert await lock.acquire()
            value = int(await client.get(prefix + "counter") or 0)
            await asyncio.sleep(0.002)  # the window a concurrent writer would fall into
            await client.set(prefix + "counter", value + 1)
            if use_lock:
                assert await lock.release()
        await client.aclose()

    asyncio.run(main())


def _hold_forever(url: str, key: str, ttl_ms: int) -> None:
    async def main() -> None:
        client = aredis.Redis.from_url(url)
        assert await AsyncRedisKeyLock(client, key, ttl_ms=ttl_ms, timeout_sec=0).acquire()
        await client.set(key + ":taken", 1)
        await asyncio.sleep(3600)

    asyncio.run(main())


def _counter_after_workers(url: str, use_lock: bool) -> int:
    admin = redis.Redis.from_url(url)
    prefix = f"lockproc{uuid.uuid4().hex[:8]}:"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_increment, args=(url, prefix, use_lock))
               for _ in range(WORKERS)]
    for worker in workers:
        worker.start()
    try:
        for _ in range(1200):
            if int(admin.get(prefix + "ready") or 0) == WORKERS:
                break
            time.sleep(0.05)
        assert int(admin.get(prefix + "ready") or 0) == WORKERS, "workers never got ready"
        admin.set(prefix + "go", 1)
        for worker in workers:
            worker.join(120)
            assert worker.exitcode == 0, f"worker exit code {worker.exitcode}"
        return int(admin.get(prefix + "counter") or 0)
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()


def test_the_lock_excludes_other_processes(real_redis_url):
    assert _counter_after_workers(real_redis_url, use_lock=True) == WORKERS * ROUNDS


def test_control_without_the_lock_loses_updates(real_redis_url):
    assert _counter_after_workers(real_redis_url, use_lock=False) < WORKERS * ROUNDS


def test_a_dead_holders_lock_expires(real_redis_url):
    admin = redis.Redis.from_url(real_redis_url)
    key = f"lockproc{uuid.uuid4().hex[:8]}:dead"
    holder = multiprocessing.get_context("spawn").Process(
        target=_hold_forever, args=(real_redis_url, key, 1500))
    holder.start()
    try:
        for _ in range(1200):
            if admin.exists(key + ":taken"):
                break
            time.sleep(0.05)
        assert admin.exists(key + ":taken"), "the holder never took the lock"
        holder.kill()
        holder.join(10)

        async def attempts() -> tuple[Any, Any]:
            client = aredis.Redis.from_url(real_redis_url)
            now = await AsyncRedisKeyLock(client, key, ttl_ms=1000, timeout_sec=0).acquire()
            later = AsyncRedisKeyLock(client, key, ttl_ms=1000, timeout_sec=30)
            return now, await later.acquire()

        # The control: the dead holder's lock still blocks; then it expires.
        assert asyncio.run(attempts()) == (False, True)
    finally:
        if holder.is_alive():
            holder.kill()
