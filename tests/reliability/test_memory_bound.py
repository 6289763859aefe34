"""A long write-heavy run: 100,000 tag invalidations over a rotating pool of tags, and
a new entry every other step (12,500 entries with a 1 s TTL). Stamps are O(tags),
never O(invalidations); entries go away with their TTL: Redis ``used_memory`` and
``dbsize`` stay bounded."""

from __future__ import annotations

import time

import pytest
import redis

from relaycache import RedisCache
from tests.reliability.support import prefix
from tests.servers import HOST
from tests.support import wait_until

pytestmark = pytest.mark.real_redis
pytest_plugins = ("tests.servers",)

TAG_POOL = 2000
STEPS = 25_000  # four tags invalidated per step: 100,000 invalidations
TTL = 1.0


def test_stamps_are_o_tags_and_entries_expire(redis_server):
    admin = redis_server.client()
    value_prefix = prefix("mem")
    backend = RedisCache(redis.Redis(host=HOST, port=redis_server.port), default_ttl=TTL,
                         value_prefix=value_prefix, meta_prefix=value_prefix + "meta:")
    baseline = admin.info("memory")["used_memory"]
    payload = {"title": "x" * 200, "authors": list(range(20))}
    samples: list[tuple[int, float, int, int]] = []  # (step, seconds, dbsize, used_memory)
    began = time.monotonic()
    stores = 0
    for step in range(STEPS):
        a, b = step % TAG_POOL, (step * 7 + 1) % TAG_POOL
        backend.invalidate([f"tag:{a}", f"tag:{b}", f"tag:{(a + 500) % TAG_POOL}",
                            f"tag:{(b + 1000) % TAG_POOL}"])
        if step % 2 == 0:
            assert backend.set(f"entry:{step}", payload,
                               tags=[f"tag:{b}", f"tag:{(a + 1) % TAG_POOL}", "all"])
            stores += 1
        if step % 2500 == 0 or step == STEPS - 1:
            samples.append((step, time.monotonic() - began, admin.dbsize(),
                            admin.info("memory")["used_memory"]))
    elapsed = time.monotonic() - began
    assert backend.stats.invalidations == STEPS and backend.stats.stores == stores
    assert backend.stats.errors == 0 and backend.pending_invalidations == []

    # Entries expire with their TTL; what remains is one stamp per tag ever used.
    # Keys left: a stamp per tag, "all" and "__server__", and the server's run_id, plus
    # expired entries Redis has not reclaimed yet (its active expiry stops sampling
    # once few of the keys with a TTL are expired; the rest go when touched).
    settled = wait_until(lambda: admin.dbsize() <= TAG_POOL + 3 + 500, 15, 0.2)
    final_keys = admin.dbsize()
    final_memory = admin.info("memory")["used_memory"]
    stamps = sum(1 for _ in admin.scan_iter(match=value_prefix + "meta:t:*", count=1000))
    peak_keys = max(s[2] for s in samples)
    peak_memory = max(s[3] for s in samples)
    rate = stores / elapsed
    print(f"\n{4 * STEPS} tag invalidations over {TAG_POOL} tags and {stores} stores "
          f"(TTL {TTL} s) in {elapsed:.1f} s:")
    for step, at, keys, memory in samples:
        print(f"  step {step:>6} at {at:5.1f} s: dbsize {keys:>6}, used_memory "
              f"{memory / 1e6:6.2f} MB (+{(memory - baseline) / 1e6:.2f})")
    print(f"  after expiry: dbsize {final_keys} ({stamps} stamps), used_memory "
          f"{final_memory / 1e6:.2f} MB (+{(final_memory - baseline) / 1e6:.2f} MB over the "
          f"empty server); peak dbsize {peak_keys}, peak used_memory "
          f"+{(peak_memory - baseline) / 1e6:.2f} MB")

    # Sizing figures for docs/redis.md: one entry (a 300-byte value, 3 tags) and a stamp.
    backend.set("sizing", payload, tags=["tag:1", "tag:2", "all"])
    entry_bytes = admin.memory_usage(backend.value_key("sizing"), samples=0)
    stamp_bytes = admin.memory_usage(backend.stamp_keys(["tag:1"])[0], samples=0)
    raw = len(admin.get(backend.value_key("sizing")))
    print(f"  MEMORY USAGE: an entry of {raw} encoded bytes (3 tags + the server tag) "
          f"takes {entry_bytes} bytes; a stamp {stamp_bytes} bytes")

    assert settled, f"entries did not expire: dbsize {final_keys} after the run"
    assert stamps <= TAG_POOL + 2, f"{stamps} stamps for {TAG_POOL + 2} tags"
    # While running: the stamps plus the entries of the last few seconds, not every
    # entry ever stored (stores) nor a key per invalidation (4 * STEPS).
    live_bound = TAG_POOL + 3 + rate * (TTL + 3)
    assert peak_keys <= min(live_bound, TAG_POOL + 0.6 * stores), (peak_keys, live_bound)
    assert peak_memory - baseline < 20e6, f"peak {peak_memory - baseline:,} bytes"
    assert final_memory - baseline < 2e6, f"{final_memory - baseline:,} bytes left"
    backend.clear()
