"""The backend contract suite: what every backend must do alike (the ``backend`` fixture
runs each test on InMemoryCache, RedisCache and the dict backend of docs/backends.md),
then what only one of them promises (``redis_backend``, ``InMemoryCache``): stamps,
races, garbage, limits."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from typing import Any

import orjson
import pytest

from relaycache import InMemoryCache, RedisCache, cache
from tests.support import concurrently, run_concurrently, wait_until


def sibling(backend, **options):
    """Another cache of the same kind (same Redis client), with fresh prefixes."""
    prefix = f"s{uuid.uuid4().hex[:8]}:"
    opts = {"default_ttl": 60, "value_prefix": prefix, "meta_prefix": prefix + "meta:",
            **options}
    if isinstance(backend, RedisCache):
        return type(backend)(backend.redis_client, **opts)
    return type(backend)(**opts)


def same_namespace(backend: RedisCache) -> RedisCache:
    """A second RedisCache on the same keys: what another process would hold."""
    return type(backend)(backend.redis_client, default_ttl=60,
                         value_prefix=backend.value_prefix, meta_prefix=backend.meta_prefix)


def our_redis_keys(backend: RedisCache) -> list:
    client = getattr(backend, "test_admin", backend.redis_client)  # sync, for AioredisCache
    return [k for k in client.keys("*")
            if (k.decode() if isinstance(k, bytes) else k).startswith(
                (backend.value_prefix, backend.meta_prefix))]


class Compute:
    def __init__(self, value: Any = "v") -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        return self.value


def fail() -> Any:
    raise AssertionError("must be served from the cache")


# -- the storage primitives, called directly (docs/backends.md) ---------------------------

def _text(stamp: Any) -> Any:
    return stamp.decode() if isinstance(stamp, bytes) else stamp  # str or UTF-8 bytes


def test_fetch_reads_keys_in_order_and_misses_absent_and_expired_ones(backend):
    a, b, short = (backend.value_key(k) for k in ("a", "b", "short"))
    assert backend.store_if_current(a, b"A", [], [], None) is True
    assert backend.store_if_current(b, b"B", [], [], 60_000) is True
    assert backend.store_if_current(short, b"S", [], [], 50) is True
    time.sleep(0.2)
    assert backend.fetch([b, backend.value_key("never"), a, short]) == [b"B", None, b"A", None]


def test_acquire_stamps_creates_each_absent_stamp_once(backend):
    skeys = backend.stamp_keys(["x", "y"])
    stamps = run_concurrently(lambda _: backend.acquire_stamps(skeys), 8)
    assert all(got == stamps[0] for got in stamps), "concurrent callers got other stamps"
    assert all(isinstance(stamp, str) for stamp in stamps[0]) and len(set(stamps[0])) == 2
    assert [_text(stamp) for stamp in backend.fetch(skeys)] == stamps[0]
    assert backend.acquire_stamps(skeys) == stamps[0]  # existing stamps are kept
    for described in backend.describe_keys(skeys):
        assert 0 < described.ttl_ms <= backend.stamp_ttl * 1000


def test_replace_stamps_gives_every_stamp_a_new_token(backend):
    skeys = backend.stamp_keys(["x", "y"])
    before = backend.acquire_stamps(skeys)
    absent = backend.stamp_keys(["z"])
    assert backend.replace_stamps(skeys + absent) is True
    after = [_text(stamp) for stamp in backend.fetch(skeys + absent)]
    assert None not in after and not set(after) & set(before)
    for described in backend.describe_keys(skeys + absent):
        assert 0 < described.ttl_ms <= backend.stamp_ttl * 1000


def test_store_if_current_writes_only_under_the_current_stamps(backend):
    vkey, skeys = backend.value_key("k"), backend.stamp_keys(["x", "y"])
    stamps = backend.acquire_stamps(skeys)
    assert backend.store_if_current(vkey, b"1", skeys, stamps, None) is True
    assert backend.fetch([vkey]) == [b"1"]
    backend.replace_stamps(skeys[1:])
    assert backend.store_if_current(vkey, b"2", skeys, stamps, None) is False
    backend.delete_keys(skeys[:1])  # a missing stamp matches nothing either
    assert backend.store_if_current(vkey, b"3", skeys[:1], stamps[:1], None) is False
    assert backend.fetch([vkey]) == [b"1"]
    assert backend.store_if_current(vkey, b"4", [], [], 30_000) is True  # overwrites
    [described] = backend.describe_keys([vkey])
    assert 0 < described.ttl_ms <= 30_000


def test_delete_keys_removes_only_the_keys_given(backend):
    keys = [backend.value_key(k) for k in "abc"]
    for key in keys:
        backend.store_if_current(key, b"v", [], [], None)
    backend.delete_keys([keys[0], keys[2], backend.value_key("never-set")])
    backend.delete_keys([])
    assert backend.fetch(keys) == [None, b"v", None]


def test_a_lease_is_exclusive_and_only_its_holder_releases_it(backend):
    lkey = backend.lease_key(backend.value_key("k"))
    assert backend.acquire_lease(lkey, "a", 60_000) is True
    assert backend.acquire_lease(lkey, "b", 60_000) is False
    backend.release_lease(lkey, "b")  # not the holder: nothing happens
    assert backend.acquire_lease(lkey, "b", 60_000) is False
    backend.release_lease(lkey, "a")
    assert backend.acquire_lease(lkey, "b", 60_000) is True
    backend.release_lease(lkey, "b")


def test_an_expired_lease_is_free_and_its_old_holder_cannot_release_the_next(backend):
    lkey = backend.lease_key(backend.value_key("k"))
    assert backend.acquire_lease(lkey, "a", 100) is True
    assert wait_until(lambda: backend.acquire_lease(lkey, "b", 60_000), 3)
    backend.release_lease(lkey, "a")
    assert backend.acquire_lease(lkey, "c", 60_000) is False


def test_wait_lease_returns_at_the_release_not_at_its_timeout(backend):
    lkey = backend.lease_key(backend.value_key("k"))
    backend.acquire_lease(lkey, "a", 60_000)
    woken = threading.Event()

    def wait(_):
        began = time.monotonic()
        backend.wait_lease(lkey, 10)
        woken.set()
        return time.monotonic() - began

    with concurrently(wait, 1) as waited:
        assert not woken.wait(0.3), "wait_lease returned while the lease was held"
        backend.release_lease(lkey, "a")
        assert woken.wait(5), "the release did not wake the waiter"
    assert waited[0] < 5


def test_wait_lease_gives_up_at_its_timeout_or_when_the_lease_expires(backend):
    held, expiring = (backend.lease_key(backend.value_key(k)) for k in ("held", "expiring"))
    backend.acquire_lease(held, "a", 60_000)
    backend.acquire_lease(expiring, "a", 300)
    began = time.monotonic()
    backend.wait_lease(held, 0.3)
    assert 0.25 <= time.monotonic() - began < 2
    began = time.monotonic()
    backend.wait_lease(expiring, 10)
    assert time.monotonic() - began < 3
    began = time.monotonic()
    backend.wait_lease(backend.lease_key(backend.value_key("free")), 10)
    assert time.monotonic() - began < 1


def test_scan_keys_and_describe_keys_report_what_is_stored(backend):
    backend.set("k", "value", ttl=30, tags=["t"])
    vkey, [skey] = backend.value_key("k"), backend.stamp_keys(["t"])
    scanned = list(backend.scan_keys())
    assert {vkey, skey} <= set(scanned)
    assert all(key.startswith((backend.value_prefix, backend.meta_prefix)) for key in scanned)
    raw = backend.fetch([vkey])[0]
    entry, absent = backend.describe_keys([vkey, backend.value_key("never-set")], head=4)
    assert absent is None
    assert entry.size == len(raw) and entry.head == raw[:4]
    assert 0 < entry.ttl_ms <= 30_000
    backend.store_if_current(vkey, raw, [], [], None)
    [forever] = backend.describe_keys([vkey])
    assert forever.ttl_ms is None and forever.head is None


def test_the_async_twins_do_what_the_primitives_do(backend):
    vkey, skeys = backend.value_key("k"), backend.stamp_keys(["x", "y"])
    lkey = backend.lease_key(vkey)

    async def scenario():
        stamps = await backend.aacquire_stamps(skeys)
        assert await backend.aacquire_stamps(skeys) == stamps
        assert await backend.astore_if_current(vkey, b"1", skeys, stamps, None) is True
        fetched = await backend.afetch([vkey, *skeys])
        assert [fetched[0], *map(_text, fetched[1:])] == [b"1", *stamps]
        assert await backend.areplace_stamps(skeys) is True
        assert await backend.astore_if_current(vkey, b"2", skeys, stamps, None) is False
        await backend.adelete_keys([vkey])
        assert await backend.afetch([vkey]) == [None]
        assert await backend.aacquire_lease(lkey, "a", 60_000) is True
        assert await backend.aacquire_lease(lkey, "b", 60_000) is False
        waiter = asyncio.create_task(backend.await_lease(lkey, 10))
        await asyncio.sleep(0.2)
        assert not waiter.done(), "await_lease returned while the lease was held"
        began = time.monotonic()
        await backend.arelease_lease(lkey, "a")
        await asyncio.wait_for(waiter, 5)
        assert time.monotonic() - began < 2
        await backend.aclear()
        assert await backend.afetch([vkey, *skeys, lkey]) == [None] * 4

    asyncio.run(scenario())


# -- get / set / delete / invalidate / clear ----------------------------------------------

def test_set_then_get(backend):
    assert backend.set("k", {"a": [1, 2]}, tags=["t1", "t2"]) is True
    assert backend.get("k", tags=["t1", "t2"]) == (True, {"a": [1, 2]})
    assert backend.get("k", tags=["t2", "t1", "t2"]) == (True, {"a": [1, 2]})  # order/dupes ignored


def test_get_missing_is_a_miss(backend):
    assert backend.get("nope") == (False, None)
    assert backend.get("nope", tags=["t"]) == (False, None)


def test_get_with_other_tags_is_a_miss(backend):
    backend.set("k", 1, tags=["a"])
    assert backend.get("k", tags=["b"]) == (False, None)
    assert backend.get("k", tags=[]) == (False, None)
    assert backend.get("k", tags=["a"]) == (True, 1)
    assert backend.get("k") == (True, 1)  # without tags: the ones it was stored with


def test_none_is_a_stored_value(backend):
    backend.set("k", None, tags=["t"])
    assert backend.get("k", tags=["t"]) == (True, None)
    assert backend.get("k") == (True, None)
    compute = Compute(None)
    backend.get_or_set("n", compute, tags=["t"])
    backend.get_or_set("n", compute, tags=["t"])
    assert compute.calls == 1


def test_set_overwrites(backend):
    backend.set("k", 1)
    backend.set("k", 2)
    assert backend.get("k") == (True, 2)


def test_delete_drops_one_entry_only(backend):
    backend.set("a", 1, tags=["t"])
    backend.set("b", 2, tags=["t"])
    backend.delete("a")
    assert backend.get("a", tags=["t"]) == (False, None)
    assert backend.get("b", tags=["t"]) == (True, 2)
    backend.delete("never-set")


def test_invalidate_drops_every_entry_under_any_tag(backend):
    backend.set("a", 1, tags=["x"])
    backend.set("b", 2, tags=["x", "y"])
    backend.set("c", 3, tags=["y"])
    backend.set("d", 4, tags=["z"])
    backend.set("e", 5)
    backend.invalidate(["x"])
    assert backend.get("a", tags=["x"]) == (False, None)
    assert backend.get("b", tags=["x", "y"]) == (False, None)
    assert backend.get("c", tags=["y"]) == (True, 3)
    assert backend.get("d", tags=["z"]) == (True, 4)
    assert backend.get("e") == (True, 5)
    backend.invalidate(["y", "z"])
    assert backend.get("c", tags=["y"]) == (False, None)
    assert backend.get("d", tags=["z"]) == (False, None)
    assert backend.get("e") == (True, 5)


def test_invalidate_of_unknown_or_no_tags_is_harmless(backend):
    backend.set("k", 1, tags=["t"])
    backend.invalidate([])
    backend.invalidate(["never-used"])
    assert backend.get("k", tags=["t"]) == (True, 1)


def test_entries_stored_after_an_invalidation_are_served(backend):
    backend.invalidate(["t"])
    backend.set("k", 1, tags=["t"])
    assert backend.get("k", tags=["t"]) == (True, 1)
    compute = Compute("x")
    backend.get_or_set("g", compute, tags=["t"])
    backend.get_or_set("g", compute, tags=["t"])
    assert compute.calls == 1


def test_clear_removes_everything_of_this_cache(backend):
    backend.set("a", 1, tags=["t"])
    backend.get_or_set("b", Compute(2), tags=["u"])
    backend.clear()
    assert backend.get("a", tags=["t"]) == (False, None)
    assert backend.get("b", tags=["u"]) == (False, None)
    assert list(backend.scan_keys()) == []
    if isinstance(backend, RedisCache):
        assert our_redis_keys(backend) == []  # not only as scan_keys() sees them
    compute = Compute(3)
    assert backend.get_or_set("a", compute, tags=["t"]) == 3
    assert backend.get_or_set("a", compute, tags=["t"]) == 3
    assert compute.calls == 1


def test_clear_of_one_memory_cache_leaves_another_alone():
    first, second = InMemoryCache(), InMemoryCache()
    first.set("k", 1)
    second.set("k", 2)
    first.clear()
    assert first.get("k") == (False, None)
    assert second.get("k") == (True, 2)


def test_clear_removes_only_this_caches_redis_keys(redis_client, make_redis_backend):
    mine = make_redis_backend()
    other = make_redis_backend()
    guide = RedisCache(redis_client, value_prefix="myapp:", meta_prefix="myapp:meta:")
    unrelated = {
        "unrelated": "1",
        "session:abc": "2",
        mine.value_prefix.rstrip(":"): "3",           # the prefix without its separator
        "x" + mine.value_prefix: "4",                  # the prefix not at the start
        mine.value_prefix[:-2] + "Z:": "5",            # a sibling prefix
    }
    for k, v in unrelated.items():
        redis_client.set(k, v)
    redis_client.hset("a-hash", "f", "v")
    for cache_ in (mine, other, guide):
        cache_.set("k", "value", tags=["t"])
        cache_.get_or_set("g", Compute("computed"), tags=["t", "u"])
    assert our_redis_keys(mine)

    mine.clear()

    assert our_redis_keys(mine) == []
    assert mine.get("k", tags=["t"]) == (False, None)
    for cache_ in (other, guide):
        assert cache_.get("k", tags=["t"]) == (True, "value")
        assert cache_.get_or_set("g", fail, tags=["t", "u"]) == "computed"
    for k, v in unrelated.items():
        got = redis_client.get(k)
        assert (got.decode() if isinstance(got, bytes) else got) == v
    assert redis_client.hlen("a-hash") == 1


@pytest.mark.parametrize("prefix", ["a*[b]:", "a?:", "[ab]:", "a\\b:", "{x}*:", "ключ*:"])
def test_clear_is_not_confused_by_glob_characters_in_prefixes(redis_client, prefix):
    odd = RedisCache(redis_client, value_prefix=prefix, meta_prefix=prefix + "meta:")
    # keys that the prefix, read as a glob pattern, would match
    lookalikes = ["ab:1", "a-b:1", "aXYZb:meta:1", "a*b:1", "a:1", "aa:1", "b:1", "a:b:1",
                  "ab:meta:x", "{x}:1", "{x}yz:1", "ключ:1", "ключZ:1", "a\\\\b:1"]
    lookalikes = [k for k in lookalikes if not k.startswith(prefix)]
    for k in lookalikes:
        redis_client.set(k, "keep")
    odd.set("k", 1, tags=["t*", "t?"])
    odd.get_or_set("g", Compute(2), tags=["[t]"])
    assert odd.get("k", tags=["t*", "t?"]) == (True, 1)

    odd.clear()

    assert odd.get("k", tags=["t*", "t?"]) == (False, None)
    assert odd.get("g", tags=["[t]"]) == (False, None)
    assert our_redis_keys(odd) == []
    for k in lookalikes:
        assert redis_client.exists(k), f"clear() with prefix {prefix!r} deleted {k!r}"


# -- stamps ----------------------------------------------------------------------------

def test_missing_stamp_makes_the_entry_a_miss(backend):
    compute = Compute("v1")
    backend.get_or_set("k", compute, tags=["a", "b"])
    backend.get_or_set("k", compute, tags=["a", "b"])
    assert compute.calls == 1
    stamp_key = backend.stamp_keys(["a"])[0]
    assert backend.fetch([stamp_key]) != [None]
    backend.delete_keys([stamp_key])  # evicted / flushed

    stale_before = backend.stats.stale
    compute.value = "v2"
    assert backend.get_or_set("k", compute, tags=["a", "b"]) == "v2"
    assert compute.calls == 2
    assert backend.stats.stale == stale_before + 1
    # a new stamp was created, so the recomputed entry is served again
    assert backend.get_or_set("k", fail, tags=["a", "b"]) == "v2"
    assert backend.fetch([stamp_key]) != [None]


def test_missing_stamp_through_get_is_a_miss(backend):
    backend.set("k", 1, tags=["a"])
    backend.delete_keys(backend.stamp_keys(["a"]))
    assert backend.get("k", tags=["a"]) == (False, None)


def test_evicted_stamp_in_memory_makes_the_entry_a_miss():
    backend = InMemoryCache(max_entries=2)
    compute = Compute("v")
    backend.get_or_set("k", compute, tags=["a"])   # stamp, then entry
    backend.set("other", 1)                        # evicts the least recently used: the stamp
    assert backend.get("k", tags=["a"]) == (False, None)
    backend.get_or_set("k", compute, tags=["a"])
    assert compute.calls == 2


def test_stamps_have_a_ttl_longer_than_entries(backend):
    backend.get_or_set("k", Compute(), ttl=30, tags=["a"])
    stamp, entry = backend.describe_keys([*backend.stamp_keys(["a"]), backend.value_key("k")])
    assert 0 < entry.ttl_ms <= 30_000
    assert stamp.ttl_ms >= 2 * 60_000  # at least twice the default ttl (60 s here)


# -- no stale set ----------------------------------------------------------------------

@pytest.mark.parametrize("warm_stamp", [False, True], ids=["new-tag", "existing-tag"])
def test_invalidation_while_computing_is_not_hidden_by_the_store(backend, warm_stamp):
    if warm_stamp:
        backend.set("warm", 1, tags=["books"])
    calls = []

    def read_db():
        calls.append(len(calls))
        if len(calls) == 1:
            backend.invalidate(["books"])  # a writer commits while we compute
            return "old"
        return "new"

    assert backend.get_or_set("k", read_db, tags=["books", "x"]) == "old"
    assert backend.stats.stale + backend.stats.stores_rejected >= 1
    assert backend.get_or_set("k", read_db, tags=["books", "x"]) == "new"
    assert calls == [0, 1]
    assert backend.get_or_set("k", fail, tags=["books", "x"]) == "new"


def test_stale_set_race_through_the_decorator(backend):
    calls = []

    @cache(backend=backend, tags=lambda book_id: [f"book:{book_id}"])
    def details(book_id):
        calls.append(book_id)
        if len(calls) == 1:
            backend.invalidate([f"book:{book_id}"])
            return "before write"
        return "after write"

    assert details(1) == "before write"
    assert details(1) == "after write"
    assert details(1) == "after write"
    assert calls == [1, 1]


def test_slow_reader_never_overwrites_a_fresher_entry(redis_backend):
    other_process = same_namespace(redis_backend)

    def slow_reader():
        # while this reader is busy, a writer invalidates and a fast reader stores
        other_process.invalidate(["books"])
        assert other_process.get_or_set("k", lambda: "fresh", tags=["books"]) == "fresh"
        return "old"

    assert redis_backend.get_or_set("k", slow_reader, tags=["books"]) == "old"
    assert redis_backend.stats.stores_rejected == 1
    assert redis_backend.get_or_set("k", fail, tags=["books"]) == "fresh"
    assert other_process.get_or_set("k", fail, tags=["books"]) == "fresh"


def test_invalidation_from_another_process_is_seen(redis_backend):
    other_process = same_namespace(redis_backend)
    compute = Compute()
    redis_backend.get_or_set("k", compute, tags=["t"])
    other_process.invalidate(["t"])
    redis_backend.get_or_set("k", compute, tags=["t"])
    assert compute.calls == 2


# -- garbage in the store ------------------------------------------------------------------

def _write_raw(backend, key: str, raw: bytes) -> None:
    assert backend.store_if_current(backend.value_key(key), raw, [], [], None)


def _read_raw(backend, key: str) -> bytes:
    raw = backend.fetch([backend.value_key(key)])[0]
    return raw.encode() if isinstance(raw, str) else raw


def _entry_with_data(backend, key: str, data: Any) -> bytes:
    """A well-formed entry with the current tags and stamps but ``data`` as its value."""
    tags, stamps, _ = orjson.loads(_read_raw(backend, key))
    return orjson.dumps([tags, stamps, data])


def _assert_corrupt_is_a_miss(backend, key: str, tags: list[str]) -> None:
    corrupt_before = backend.stats.corrupt
    compute = Compute({"fresh": (1, 2)})
    assert backend.get_or_set(key, compute, tags=tags) == {"fresh": (1, 2)}
    assert compute.calls == 1
    assert backend.stats.corrupt == corrupt_before + 1
    # the recomputed value replaced the garbage
    assert backend.get_or_set(key, fail, tags=tags) == {"fresh": (1, 2)}
    assert orjson.loads(_read_raw(backend, key))[2] == {"fresh": {"~t": [1, 2]}}


@pytest.mark.parametrize("raw", [
    b"\xff\xfe\x00garbage",
    b"\x80\x81\x82",
    b"\x00",
    b"",
    b"not json at all",
    b"{",
    b'{"a": 1}',
    b"[1, 2]",
    b"[]",
    b"null",
    b"42",
    b'["t", ["s"]',
], ids=repr)
def test_garbage_at_the_value_key_is_a_counted_miss(backend, raw):
    backend.get_or_set("k", Compute("old"), tags=["t"])
    _write_raw(backend, "k", raw)
    _assert_corrupt_is_a_miss(backend, "k", ["t"])


def test_garbage_through_get_returns_the_default(backend):
    _write_raw(backend, "k", b"\xff\xfe garbage")
    assert backend.get("k") == (False, None)
    assert backend.stats.corrupt == 1


def test_truncated_entry_is_a_counted_miss(backend):
    backend.get_or_set("k", Compute({"long": ["x" * 50, 1.5, (1, 2)]}), tags=["t"])
    raw = _read_raw(backend, "k")
    for cut in (1, len(raw) // 2, len(raw) - 1):
        _write_raw(backend, "k", raw[:cut])
        _assert_corrupt_is_a_miss(backend, "k", ["t"])


@pytest.mark.parametrize("data", [
    {"~zz": 1},
    {"~t": 5},
    {"~dt": 5},
    {"~m": [1]},
    {"~d": "not a date"},
    {"~u": 5},
    {"~u": None},
    {"~dec": "abc"},
    {"~td": [1]},
    {"~x:not_registered": 1},
    [{"~s": [[1]]}],
], ids=lambda d: orjson.dumps(d).decode())
def test_entry_with_current_stamps_but_malformed_value_is_a_counted_miss(backend, data):
    """Garbage that keeps the entry's shape and stamps must still fall through."""
    backend.get_or_set("k", Compute("old"), tags=["t"])
    _write_raw(backend, "k", _entry_with_data(backend, "k", data))
    _assert_corrupt_is_a_miss(backend, "k", ["t"])


NOT_A_STAMP = b"\xff\xfe\x00not UTF-8"


def _write_at(backend, key: str, raw: bytes) -> None:
    """What another client may write at any of our keys (a raw write, on any backend)."""
    assert backend.store_if_current(key, raw, [], [], None)


def test_a_stamp_that_is_not_a_stamp_is_a_counted_miss_and_is_replaced(backend):
    """Bytes that are not UTF-8 in a tag's stamp, or in the stamp of the ``__server__``
    tag every RedisCache entry carries, used to raise ``UnicodeDecodeError`` from
    every read of the tag. They are a miss, counted as corrupt; the stamp is replaced
    (an invalidation, always safe), so the tag is cached again after one miss."""
    for tag in ["t", *backend.implicit_tags]:
        skey = backend.stamp_keys([tag])[0]
        for read in (lambda: backend.get("k", tags=["t"]),
                     lambda: asyncio.run(backend.aget("k", tags=["t"]))):
            assert backend.set("k", "old", tags=["t"])
            _write_at(backend, skey, NOT_A_STAMP)
            corrupt = backend.stats.corrupt
            assert read() == (False, None), tag
            assert backend.stats.corrupt == corrupt + 1, tag
            assert isinstance(_text(backend.fetch([skey])[0]), str), "garbage left in place"
        _write_at(backend, skey, NOT_A_STAMP)
        compute = Compute("new")
        assert backend.get_or_set("k", compute, tags=["t"]) == "new"
        assert backend.get_or_set("k", fail, tags=["t"]) == "new"
        assert compute.calls == 1, "the recomputed value was not stored"
    assert backend.stats.errors == 0 and backend.pending_invalidations == []


def test_nothing_is_stored_under_a_stamp_that_is_not_a_stamp(backend):
    """``set()`` reads the stamps it stores under without a lookup first: one holding
    garbage must neither raise nor let the value be stored under it."""
    skey, vkey = backend.stamp_keys(["t"])[0], backend.value_key("k")
    for store in (lambda: backend.set("k", "v", tags=["t"]),
                  lambda: asyncio.run(backend.aset("k", "v", tags=["t"]))):
        _write_at(backend, skey, NOT_A_STAMP)
        corrupt = backend.stats.corrupt
        assert store() is False
        assert backend.fetch([vkey]) == [None] and backend.stats.corrupt == corrupt + 1
        assert backend.fetch([skey])[0] != NOT_A_STAMP, "garbage left in place"
        assert store() is True  # the replaced stamp is a stamp again
        assert backend.get("k", tags=["t"]) == (True, "v")
        backend.delete("k")


def test_garbage_does_not_break_later_calls_on_the_same_client(backend):
    _write_raw(backend, "bad", b"\xff\xfe")
    backend.set("good", [1, 2], tags=["t"])
    for _ in range(3):
        with contextlib.suppress(Exception):  # reported by the tests above; here: no poisoning
            backend.get("bad", tags=["t"])
        assert backend.get("good", tags=["t"]) == (True, [1, 2])


# -- size limits ---------------------------------------------------------------------------

def test_oversize_value_is_returned_but_not_stored(backend):
    small = sibling(backend, max_entry_size=300)
    big = {"blob": "x" * 1000}
    compute = Compute(big)
    assert small.get_or_set("k", compute, tags=["t"]) == big
    assert small.stats.oversize == 1
    assert small.get_or_set("k", compute, tags=["t"]) == big
    assert compute.calls == 2
    assert small.stats.oversize == 2 and small.stats.stores == 0
    assert small.set("k2", big) is False
    assert small.get("k2") == (False, None)
    # values under the limit are stored as usual
    assert small.set("k3", "tiny") is True
    assert small.get("k3") == (True, "tiny")


def test_memory_cache_evicts_least_recently_used():
    lru = InMemoryCache(max_entries=3)
    lru.set("a", 1)
    lru.set("b", 2)
    lru.set("c", 3)
    assert lru.get("a") == (True, 1)  # a is now the most recently used
    lru.set("d", 4)
    assert lru.get("b") == (False, None)
    assert [lru.get(k) for k in "acd"] == [(True, 1), (True, 3), (True, 4)]
    lru.set("e", 5)
    assert lru.get("a") == (False, None)  # a was least recently used after the reads
    assert len(lru.keys()) <= 3


def test_memory_cache_stays_bounded_with_tags():
    lru = InMemoryCache(max_entries=50)
    for i in range(500):
        lru.get_or_set(f"k{i}", lambda i=i: i, tags=[f"t{i}", f"shared{i % 7}"])
    assert len(lru.keys()) <= 50
    assert len(lru._data) <= 50
    assert lru.get_or_set("k499", fail, tags=["t499", "shared2"]) == 499


def test_memory_cache_rejects_a_zero_bound():
    with pytest.raises(ValueError):
        InMemoryCache(max_entries=0)


# -- odd keys, tags and prefixes -----------------------------------------------------------

ODD = ["with space", "new\nline", "tab\there", "star*", "*", "?", "[ab]", "{hash}", "{}",
       "ключ", "键", "🎉", "back\\slash", "quote\"'", "colon:a:b", "t:x", "l:x", "percent%s"]


def test_odd_keys_and_tags_work_and_stay_distinct(backend):
    for i, text in enumerate(ODD):
        assert backend.set(text, i, tags=[text, "all"]) is True
    for i, text in enumerate(ODD):
        assert backend.get(text, tags=[text, "all"]) == (True, i)
    backend.invalidate(["*"])  # literally the tag "*", not a pattern
    assert backend.get("*", tags=["*", "all"]) == (False, None)
    assert backend.get("star*", tags=["star*", "all"]) == (True, ODD.index("star*"))
    backend.invalidate(["[ab]"])
    assert backend.get("[ab]", tags=["[ab]", "all"]) == (False, None)
    assert backend.get("?", tags=["?", "all"]) == (True, ODD.index("?"))
    backend.clear()
    for text in ODD:
        assert backend.get(text, tags=[text, "all"]) == (False, None)


def test_odd_keys_through_the_decorator(backend):
    calls = []

    @cache(backend=backend, key=lambda k: k, tags=lambda k: [f"tag {k}\n*"])
    def f(k):
        calls.append(k)
        return k

    for text in ODD:
        assert f(text) == text and f(text) == text
    assert len(calls) == len(ODD)
    backend.invalidate(["tag 🎉\n*"])
    f("🎉")
    assert len(calls) == len(ODD) + 1


def test_keys_starting_with_the_reserved_part_of_meta_prefix_are_refused(backend):
    reserved = backend.meta_prefix[len(backend.value_prefix):]
    assert reserved  # meta_prefix extends value_prefix in these fixtures
    backend.set("books", 1, tags=["books"])
    stamp_key_as_entry = reserved + "t:books"  # would overwrite the stamp of tag "books"
    with pytest.raises(ValueError):
        backend.set(stamp_key_as_entry, "boom")
    with pytest.raises(ValueError):
        backend.get(stamp_key_as_entry)
    with pytest.raises(ValueError):
        backend.get_or_set(stamp_key_as_entry, Compute())
    with pytest.raises(ValueError):
        backend.delete(stamp_key_as_entry)

    @cache(backend=backend, key=lambda: reserved + "l:x")
    def f():
        return 1

    with pytest.raises(ValueError):
        f()
    assert backend.get("books", tags=["books"]) == (True, 1)
    # merely containing it elsewhere is fine
    assert backend.set("x" + reserved, 2) is True


def test_reserved_prefix_only_applies_when_meta_prefix_extends_value_prefix(backend):
    separate = sibling(backend, value_prefix=f"v{uuid.uuid4().hex[:6]}:",
                       meta_prefix=f"m{uuid.uuid4().hex[:6]}:")
    assert separate.set("meta:t:books", 1) is True
    assert separate.get("meta:t:books") == (True, 1)


@pytest.mark.parametrize(("value_prefix", "meta_prefix"), [
    ("", "m:"), ("v:", ""), ("same:", "same:"), ("rc:meta:x:", "rc:meta:"),
])
def test_conflicting_prefixes_are_refused(value_prefix, meta_prefix):
    with pytest.raises(ValueError):
        InMemoryCache(value_prefix=value_prefix, meta_prefix=meta_prefix)


# -- stats -------------------------------------------------------------------------------

def test_stats_counters(backend):
    backend.stats.reset()
    compute = Compute("v")
    backend.get_or_set("k", compute, tags=["t"])   # miss, store
    backend.get_or_set("k", compute, tags=["t"])   # hit
    backend.get_or_set("k", compute, tags=["t"])   # hit
    backend.invalidate(["t"])                      # invalidation
    backend.get_or_set("k", compute, tags=["t"])   # stale miss, store
    backend.get("absent")                          # miss
    snapshot = backend.stats.snapshot()
    assert snapshot["hits"] == 2
    assert snapshot["misses"] == 3
    assert snapshot["stale"] == 1
    assert snapshot["stores"] == 2
    assert snapshot["invalidations"] == 1
    assert snapshot["stores_rejected"] == 0
    assert snapshot["errors"] == 0
    assert snapshot["corrupt"] == 0
    assert snapshot["bypassed"] == 0
    assert backend.stats.hits == 2
    backend.stats.reset()
    assert set(backend.stats.snapshot().values()) == {0}
