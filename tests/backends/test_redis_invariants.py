"""Invariants 2, 4 and 5 of DESIGN.md measured on real redis-server processes.

Round trips and invalidation cost are read from the server's own ``INFO commandstats``
on a dedicated server, so nothing else can add to the counts; the race and
``decode_responses`` tests run against ``RELAYCACHE_TEST_REDIS_URL`` with a prefix of
their own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import threading
import time
import uuid
from decimal import Decimal

import pytest
import redis

from relaycache import RedisCache, cache, invalidate
from tests.servers import command_stats, reset_stats
from tests.support import CountingConnection, concurrently, run_concurrently, wait_until

pytest_plugins = ("tests.servers",)
pytestmark = pytest.mark.real_redis



def _prefix() -> str:
    return f"inv{uuid.uuid4().hex[:10]}:"


def _backend(client: redis.Redis, prefix: str, **options) -> RedisCache:
    # Every hit asks Redis: these tests count that path's commands (the near cache, on
    # by default, is tested in test_near_cache.py).
    options.setdefault("near_cache", False)
    return RedisCache(client, value_prefix=prefix, meta_prefix=prefix + "meta:", **options)


def _data_commands(stats: dict[str, int]) -> dict[str, int]:
    """Commands the cache issued: everything but the INFO/CONFIG the test sent."""
    return {name: calls for name, calls in stats.items()
            if name != "info" and not name.startswith("config")}


def _own_keys(client: redis.Redis, prefix: str) -> list[str]:
    keys = (k.decode() if isinstance(k, bytes) else k for k in client.scan_iter(count=1000))
    return sorted(k for k in keys if k.startswith(prefix))


# -- invariant 4: one round trip per hit -----------------------------------------------


def _tagged_lookup(backend: RedisCache, tag_count: int, calls: list[int]):
    @cache(backend=backend, tags=lambda n: [f"tag{i}:{n}" for i in range(tag_count)],
           key=lambda n: f"lookup{tag_count}:{n}")
    def lookup(n):
        calls.append(n)
        return {"n": n, "tags": tag_count}

    return lookup


def test_a_hit_is_exactly_one_mget_whatever_the_number_of_tags(redis_server):
    admin = redis_server.client()
    backend = _backend(redis.Redis(host="127.0.0.1", port=redis_server.port), _prefix())
    hits = 40
    per_hit: dict[int, dict[str, float]] = {}
    for tag_count in (1, 5, 20):
        calls: list[int] = []
        lookup = _tagged_lookup(backend, tag_count, calls)
        assert lookup(7) == {"n": 7, "tags": tag_count}  # miss: computed and stored
        assert lookup(7) == {"n": 7, "tags": tag_count}  # first hit: connection is warm
        assert calls == [7]

        reset_stats(admin)
        for _ in range(hits):
            assert lookup(7) == {"n": 7, "tags": tag_count}
        commands = _data_commands(command_stats(admin))
        keyspace = admin.info("stats")

        assert calls == [7], "a hit must not run the function"
        assert commands == {"mget": hits}, (
            f"{hits} hits with {tag_count} tags issued {commands}, expected only "
            f"{hits} MGET")
        # The one MGET read the entry AND every tag stamp (the caller's tags and the
        # backend's own restart tag): all of those keys found.
        read = 1 + tag_count + len(backend.implicit_tags)
        assert keyspace["keyspace_hits"] == hits * read
        assert keyspace["keyspace_misses"] == 0
        per_hit[tag_count] = {name: n / hits for name, n in commands.items()}

    print(f"\ncommands per hit by tag count: {per_hit}")
    assert per_hit == {1: {"mget": 1.0}, 5: {"mget": 1.0}, 20: {"mget": 1.0}}


# -- a miss: one round trip before the computation, one after -------------------------


def test_a_miss_is_one_round_trip_before_computing_and_one_after(redis_server):
    """The lookup's MGET brings the entry and every stamp; the miss stores under those
    stamps (one script call) without fetching them again, and creates only the stamps
    that were absent, in one pipeline before computing (they must exist before the
    database is read: docs/consistency.md). Counted on the client (round trips) and on
    a server of the test's own (commands: a script's own GET/SET count there too)."""
    admin = redis_server.client()
    pool = redis.ConnectionPool(host="127.0.0.1", port=redis_server.port,
                                connection_class=CountingConnection)
    backend = _backend(redis.Redis(connection_pool=pool), _prefix())
    tags = ["a", "b", "c", "d"]
    stamps = len(tags) + len(backend.implicit_tags)
    assert backend.get_or_set("warm", lambda: 0, tags=tags) == 0  # connection, script
    rounds: dict[str, tuple[int, dict[str, int]]] = {}
    trips_when_computed: list[int] = []

    def compute(value):
        def run():
            trips_when_computed.append(CountingConnection.sent)
            return value
        return run

    def miss(label, key, value, tags_):
        reset_stats(admin)
        CountingConnection.sent = 0
        assert backend.get_or_set(key, compute(value), tags=tags_) == value
        rounds[label] = (CountingConnection.sent, _data_commands(command_stats(admin)))

    miss("stamps present", "k", 1, tags)
    assert backend.get_or_set("k", compute(-1), tags=tags) == 1  # stored
    backend.invalidate(["a"])
    miss("stale entry", "k", 2, tags)
    miss("2 stamps absent", "k2", 3, [*tags, "new1", "new2"])
    assert backend.get_or_set("k2", compute(-1), tags=[*tags, "new1", "new2"]) == 3
    # The async driver, on the asyncio client (a plain pool: a connection class of
    # its own would make the cache run the sync primitives in a thread instead).
    async_backend = _backend(redis.Redis(host="127.0.0.1", port=redis_server.port),
                             backend.value_prefix)

    async def async_miss():
        assert await async_backend.aget_or_set("async warm", _async_value(0), tags=tags) == 0
        reset_stats(admin)  # the loop's connection is open and checked
        assert await async_backend.aget_or_set("k3", _async_value(4),
                                               tags=[*tags, "new3"]) == 4
        return _data_commands(command_stats(admin))

    async_commands = asyncio.run(async_miss())

    print(f"\nmiss round trips and commands: {rounds}; async: {async_commands}")
    store = {"evalsha": 1, "get": stamps, "set": 1}  # the store script, stamps checked
    assert rounds["stamps present"] == (2, {"mget": 1, **store})
    assert rounds["stale entry"] == (2, {"mget": 1, **store})
    assert rounds["2 stamps absent"] == (3, {"mget": 1, **store, "get": stamps + 2,
                                             "set": 2 + 1})
    assert trips_when_computed == [1, 1, 2], "stamps must be taken before computing"
    assert async_commands == {"mget": 1, **store, "get": stamps + 1, "set": 1 + 1}
    assert backend.stats.errors == async_backend.stats.errors == 0
    assert async_backend.stats.stores == 2


def _async_value(value):
    async def run():
        return value
    return run


# -- invariant 5: invalidation is O(tags) ----------------------------------------------


def _invalidation_cost(server, entries: int) -> dict[str, int]:
    admin = server.client()
    admin.flushdb()
    prefix = _prefix()
    backend = _backend(redis.Redis(host="127.0.0.1", port=server.port), prefix)
    for i in range(entries):
        assert backend.set(f"e{i}", {"i": i}, tags=["bulk"]), f"entry {i} not stored"
    # The entries, the tag's stamp, the restart tag's stamp and the recorded run_id.
    assert admin.dbsize() == entries + 3, "expected the entries and 3 meta keys, no index"
    sample = random.Random(entries).sample(range(entries), 200)
    assert all(backend.get(f"e{i}", tags=["bulk"]) == (True, {"i": i}) for i in sample)

    reset_stats(admin)
    invalidate(tags=["bulk"], backend=backend)
    cost = _data_commands(command_stats(admin))

    assert backend.pending_invalidations == []
    # Every entry misses now, in this process and in any other one.
    other = _backend(redis.Redis(host="127.0.0.1", port=server.port), prefix)
    for cache_ in (backend, other):
        assert [i for i in sample if cache_.get(f"e{i}", tags=["bulk"]) != (False, None)] == []
    recomputed = []

    @cache(backend=other, tags=["bulk"], key=lambda i: f"e{i}")
    def entry(i):
        recomputed.append(i)
        return {"i": i, "fresh": True}

    for i in sample[:20]:
        assert entry(i) == {"i": i, "fresh": True}
    assert recomputed == sample[:20]
    return cost


def test_invalidating_a_tag_costs_the_same_with_1k_or_20k_entries_under_it(redis_server):
    cost_1k = _invalidation_cost(redis_server, 1_000)
    cost_20k = _invalidation_cost(redis_server, 20_000)
    print(f"\ninvalidation commands: 1k entries {cost_1k}, 20k entries {cost_20k}")
    assert cost_1k == {"set": 1}, f"one tag must cost one SET, got {cost_1k}"
    assert cost_20k == cost_1k


def test_invalidating_several_tags_is_one_set_per_tag(redis_server):
    admin = redis_server.client()
    backend = _backend(redis.Redis(host="127.0.0.1", port=redis_server.port), _prefix())
    for i in range(300):
        backend.set(f"k{i}", i, tags=["a", "b", f"own:{i}"])
    reset_stats(admin)
    backend.invalidate(["a", "b", "c", "d", "e"])
    assert _data_commands(command_stats(admin)) == {"set": 5}
    assert backend.get("k1", tags=["a", "b", "own:1"]) == (False, None)


# -- invariant 2: no stale set, with the writer on another client ----------------------


@pytest.mark.parametrize("stamp_exists", [True, False], ids=["known-tag", "new-tag"])
def test_result_computed_across_an_invalidation_is_never_served(real_redis_url, stamp_exists):
    prefix = _prefix()
    reader = _backend(redis.Redis.from_url(real_redis_url), prefix)
    writer = _backend(redis.Redis.from_url(real_redis_url), prefix)  # "another process"
    third = _backend(redis.Redis.from_url(real_redis_url), prefix)
    database = {"title": "old"}
    computing, written = threading.Event(), threading.Event()
    calls = []

    @cache(backend=reader, tags=["book:1"], key=lambda: "book:1")
    def get_title():
        title = database["title"]  # the reader reads the database...
        calls.append(title)
        if len(calls) == 1:
            computing.set()
            assert written.wait(10), "writer did not run"
        return title  # ...and returns after the writer committed and invalidated

    def write():
        assert computing.wait(10)
        database["title"] = "new"
        writer.invalidate(["book:1"])
        written.set()

    try:
        if stamp_exists:
            writer.invalidate(["book:1"])  # the tag's stamp exists before the miss
        with concurrently(lambda _: write(), 1):
            assert get_title() == "old"  # the caller itself gets what it read

        assert reader.stats.stores_rejected == 1 and reader.stats.stores == 0
        assert third.get("book:1", tags=["book:1"]) == (False, None)
        assert get_title() == "new"
        assert get_title() == "new"
        assert calls == ["old", "new"]
        assert third.get("book:1", tags=["book:1"]) == (True, "new")
    finally:
        reader.clear()


def test_no_read_returns_data_older_than_a_finished_invalidation(real_redis_url):
    """Writers bump a version and invalidate; readers in other "processes" (own client,
    own backend) must never see a version older than one whose invalidation returned."""
    prefix = _prefix()
    database = {"version": 0}
    committed = [0]
    stop = threading.Event()
    violations: list[tuple[int, int]] = []
    backends = [_backend(redis.Redis.from_url(real_redis_url), prefix) for _ in range(4)]
    writer = _backend(redis.Redis.from_url(real_redis_url), prefix)

    def reader(i):
        @cache(backend=backends[i], tags=["row"], key=lambda: "row")
        def read():
            version = database["version"]
            time.sleep(0.001)
            return version

        while not stop.is_set():
            floor = committed[0]
            got = read()
            if got < floor:
                violations.append((floor, got))

    try:
        with concurrently(reader, len(backends), stop=stop):
            for version in range(1, 151):
                database["version"] = version
                writer.invalidate(["row"])
                committed[0] = version
                time.sleep(0.004)
        assert violations == [], f"stale reads (committed, served): {violations[:10]}"
        assert sum(b.stats.hits for b in backends) > 0, "the cache was never used"
        rejected = sum(b.stats.stores_rejected for b in backends)
        print(f"\nrace: hits={sum(b.stats.hits for b in backends)} "
              f"stores={sum(b.stats.stores for b in backends)} rejected={rejected}")
    finally:
        writer.clear()


# -- decode_responses --------------------------------------------------------------------


@pytest.mark.parametrize("decode", [True, False], ids=["decode_responses", "bytes"])
def test_client_with_or_without_decode_responses(real_redis_url, decode):
    uid = uuid.uuid4().hex[:10]
    prefix = f"dr{uid}[x]*:"  # glob specials: clear() must match them literally
    client = redis.Redis.from_url(real_redis_url, decode_responses=decode)
    admin = redis.Redis.from_url(real_redis_url, decode_responses=True)
    backend = _backend(client, prefix)
    assert backend.redis_client is client
    foreign = [f"dr{uid}xyz:foreign", f"dr{uid}x:meta:t:books", f"other{uid}:k"]
    for key in foreign:
        admin.set(key, "keep", ex=120)

    value = {"price": Decimal("12.10"), "when": dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC),
             "raw": b"\x00\xff\xfe", "id": uuid.UUID(int=5), "nothing": None,
             "pair": (1, "a"), "ratio": 0.1}
    calls = []

    @cache(backend=backend, tags=lambda n: [f"book:{n}", "books"])
    def details(n):
        calls.append(n)
        return dict(value, n=n) if n else None

    try:
        # hits, with exact types, and None cached as a value
        for _ in range(3):
            got = details(1)
            assert got == dict(value, n=1)
            assert type(got["price"]) is Decimal and type(got["raw"]) is bytes
            assert type(got["pair"]) is tuple and got["when"].tzinfo is dt.UTC
            assert details(0) is None
        assert calls == [1, 0]
        assert backend.stats.hits == 4 and backend.stats.errors == 0

        # invalidation of one tag drops exactly its entries
        invalidate(tags=["book:1"], backend=backend)
        assert details(1) == dict(value, n=1)
        assert details(0) is None
        assert calls == [1, 0, 1]
        invalidate(tags=["books"], backend=backend)
        details(1)
        details(0)
        assert calls == [1, 0, 1, 1, 0]

        # clear() removes every key of ours and nothing else
        assert _own_keys(admin, prefix)
        backend.clear()
        assert _own_keys(admin, prefix) == []
        assert [admin.get(k) for k in foreign] == ["keep"] * len(foreign)
        details(1)
        assert calls == [1, 0, 1, 1, 0, 1]

        # distributed singleflight between backends on their own decoded clients
        computed = []

        def slow(n):
            computed.append(n)
            time.sleep(0.3)
            return {"n": n, "by": threading.get_ident()}

        def run(_):
            own = _backend(redis.Redis.from_url(real_redis_url, decode_responses=decode),
                           prefix)
            fn = cache(backend=own, tags=["sf"], key=lambda n: f"sf:{n}",
                       distributed_singleflight=True)(slow)
            return fn(3)

        started = time.monotonic()
        results = run_concurrently(run, 6)
        assert computed == [3], f"computed {len(computed)} times"
        assert all(r == results[0] for r in results)
        assert time.monotonic() - started < 5, "waiters were not woken by the release"
        assert backend.stats.errors == 0
    finally:
        backend.clear()
        admin.delete(*foreign)


# -- the restart check (_RestartGuard) ----------------------------------------------------


def _drop_connections(admin: redis.Redis) -> None:
    """Close every other client's connections: the next call of each reconnects."""
    admin.client_kill_filter(_type="normal", skipme=True)


def test_garbage_in_the_server_record_is_another_server_not_an_error(redis_server):
    """Bytes that are not UTF-8, written by another client into ``{meta}server``
    (where each connection's restart check reads the recorded ``run_id``), used to
    raise ``UnicodeDecodeError`` from every call that connected. They are a server
    other than the one recorded: the ``__server__`` stamp is replaced (entries from
    before miss) and the record rewritten, on the sync and the async path alike."""
    admin = redis_server.client()
    prefix = _prefix()
    backend = _backend(redis.Redis(host="127.0.0.1", port=redis_server.port), prefix)
    server_key = prefix + "meta:server"
    run_id = admin.info("server")["run_id"].encode()
    reads = {"sync": lambda: backend.get("k", tags=["t"])[1],
             "async": lambda: asyncio.run(backend.aget("k", tags=["t"]))[1]}
    for path, read in reads.items():
        assert backend.set("k", "old", tags=["t"]) and read() == "old"
        admin.set(server_key, b"\xff\xfe\x00garbage")
        _drop_connections(admin)
        assert read() is None, f"{path}: an entry from before was served"
        assert admin.get(server_key) == run_id, path
        assert backend.set("k", "new", tags=["t"]) and read() == "new", path
    assert backend.stats.errors == 0 and backend.stats.hits == 4


def test_a_restart_check_whose_replacement_timed_out_is_done_again(
        redis_server_factory, tcp_proxy_factory):
    """A process moved to another server (a failover) whose ``run_id`` other processes
    recorded already must still replace the ``__server__`` stamp: its invalidations
    may be lost with the old server. If that replacement times out, the next
    connection must send it again; it used to count the new server as known before
    the replacement was answered, and then never sent it."""
    old_server, new_server = redis_server_factory(), redis_server_factory()
    proxy = tcp_proxy_factory(old_server.port)
    prefix = _prefix()
    moved = _backend(redis.Redis(host="127.0.0.1", port=proxy.port), prefix,
                     socket_timeout=0.2)
    assert moved.set("warm", 1)  # it knows the old server
    stayed = _backend(redis.Redis(host="127.0.0.1", port=new_server.port), prefix)
    assert stayed.set("k", "stored on the new server", tags=["t"])  # records it
    admin = new_server.client()

    proxy.upstream_port = new_server.port  # the failover, as the moved process sees it
    proxy.reset()
    connected = admin.info("clients")["connected_clients"]
    admin.execute_command("CLIENT", "PAUSE", 5000, "WRITE")  # reads pass, writes wait
    try:
        assert moved.get("k", tags=["t"]) == (False, None)  # its replacement timed out
        # Redis drops a paused command when its client goes: wait for that, or the
        # unpause could let the replacement through after all.
        assert wait_until(lambda: admin.info("clients")["connected_clients"] <= connected,
                          5)
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    assert moved.stats.errors >= 1
    assert stayed.get("k", tags=["t"]) == (True, "stored on the new server"), (
        "the timed-out replacement was not expected to land")
    assert wait_until(lambda: not moved.breaker.is_open, 10, 0.1)
    assert moved.get("k", tags=["t"]) == (False, None), (
        "the entry stored without the moved process's lost invalidations was served")
    assert stayed.get("k", tags=["t"]) == (False, None)
