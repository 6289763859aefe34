"""The near cache (``RedisCache(near_cache=NearCache())``) on real redis-server processes.

Each step of the argument in docs/consistency.md ("The near cache") has a test here:
hits make no round trip (server-side command counts); a write by another process is
seen by the very next read, with no sleep between the write returning and the read;
the fill race is forced deterministically, with a negative control; a lost, killed,
restarted, silent or flushed tracking connection empties the near cache and nothing is
served from it until tracking is back; TTLs hold without any message; Cluster and
Sentinel. Most tests run on a redis-server of their own, so that no other test's
writes or flushes reach their tracking connection.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster
from redis.sentinel import Sentinel

from relaycache import CircuitBreaker, NearCache, RedisCache, cache
from relaycache.backends.near import tracked_prefixes
from tests.servers import command_stats, reset_stats
from tests.support import wait_until

pytest_plugins = ("tests.servers",)
pytestmark = pytest.mark.real_redis

ROOT = Path(__file__).resolve().parents[2]


def _prefix() -> str:
    return f"near{uuid.uuid4().hex[:8]}:"


def _backend(url_or_client: str | redis.Redis | RedisCluster, prefix: str,
             near: NearCache | None = None, **options) -> RedisCache:
    client = (redis.Redis.from_url(url_or_client) if isinstance(url_or_client, str)
              else url_or_client)
    return RedisCache(client, value_prefix=prefix, meta_prefix=prefix + "meta:",
                      near_cache=near if near is not None else NearCache(), **options)


def _near(backend: RedisCache) -> NearCache:
    near = backend._near
    assert near is not None
    return near


def _warm(backend: RedisCache, key: str = "k", tags=("t",), value=None) -> None:
    """Store ``key`` and read it until it is served from the near cache."""
    value = {"v": 1} if value is None else value
    assert backend.set(key, value, tags=list(tags))
    before = backend.stats.near_hits
    assert backend.get(key, tags=list(tags)) == (True, value)  # a near miss fills it
    assert backend.get(key, tags=list(tags)) == (True, value)
    assert backend.stats.near_hits == before + 1, backend.stats


def _tracking_ids(admin: redis.Redis) -> list[str]:
    return [c["id"] for c in admin.client_list() if "t" in c["flags"]]


# -- hits ---------------------------------------------------------------------------

def test_hits_make_no_round_trip(redis_server):
    admin = redis_server.client()
    backend = _backend(redis_server.url, _prefix())
    calls: list[int] = []

    @cache(backend=backend, tags=lambda n: ["books", f"book:{n}"], key=lambda n: f"b{n}")
    def book(n):
        calls.append(n)
        return {"n": n}

    for n in range(5):
        assert book(n) == {"n": n}
        assert book(n) == {"n": n}  # the near miss that fills the near cache
    hits_before = backend.stats.near_hits
    reset_stats(admin)
    for _ in range(200):
        for n in range(5):
            assert book(n) == {"n": n}
    commands = {name: n for name, n in command_stats(admin).items()
                if name not in ("info", "ping") and not name.startswith("config")}

    assert calls == list(range(5))
    assert backend.stats.near_hits - hits_before == 1000
    assert commands == {}, f"1000 near hits sent {commands} to Redis"
    # Only the heartbeat reaches Redis: a PING every quarter of a second, at most.
    assert command_stats(admin).get("ping", 0) <= 20


def test_values_handed_out_are_never_shared(redis_server):
    backend = _backend(redis_server.url, _prefix())
    _warm(backend, value={"rows": [1, 2]})

    first = backend.get("k", tags=["t"])[1]
    first["rows"].append(3)
    assert backend.get("k", tags=["t"]) == (True, {"rows": [1, 2]})
    assert backend.get("k", tags=["t"])[1] is not backend.get("k", tags=["t"])[1]


def test_entries_and_bytes_are_bounded_least_recently_used_first(redis_server):
    near = NearCache(max_entries=5, max_bytes=100_000)
    backend = _backend(redis_server.url, _prefix(), near)
    for n in range(4):  # each entry also brings its two stamps (t, __server__)
        backend.set(f"k{n}", n, tags=["t"])
        assert backend.get(f"k{n}", tags=["t"]) == (True, n)
    assert len(near) == 5 and backend.stats.near_evictions == 1
    assert backend.get("k3", tags=["t"]) == (True, 3)
    hits = backend.stats.near_hits
    assert backend.get("k3", tags=["t"]) == (True, 3)
    assert backend.stats.near_hits == hits + 1  # the most recent one stayed

    small = NearCache(max_bytes=2_000)
    other = _backend(redis_server.url, _prefix(), small)
    other.set("big", "x" * 1_500, tags=["t"])
    other.set("small", "y", tags=["t"])
    assert other.get("big", tags=["t"]) == (True, "x" * 1_500)
    assert other.get("small", tags=["t"]) == (True, "y")
    assert small.nbytes <= 2_000
    assert other.get("big", tags=["t"]) == (True, "x" * 1_500)  # evicted for room: from Redis


def test_a_near_cache_belongs_to_one_cache(redis_server):
    near = NearCache()
    _backend(redis_server.url, _prefix(), near)
    with pytest.raises(ValueError, match="already belongs"):
        _backend(redis_server.url, _prefix(), near)


def test_overlapping_prefixes_are_tracked_once():
    assert tracked_prefixes("rc:", "rc:meta:t:") == ("rc:",)
    assert tracked_prefixes("v:", "m:t:") == ("m:t:", "v:")
    assert tracked_prefixes("rc:", "rc:") == ("rc:",)


@pytest.mark.parametrize("meta", ["m:", "v:meta:"], ids=["disjoint", "nested"])
def test_changes_by_any_client_under_either_prefix_are_seen(redis_server, meta):
    admin = redis_server.client()
    backend = RedisCache(redis.Redis.from_url(redis_server.url), value_prefix="v:",
                         meta_prefix=meta, near_cache=NearCache())
    _warm(backend)
    admin.set(f"{meta}t:t", "another stamp")  # any client, not only a cache
    assert backend.get("k", tags=["t"]) == (False, None)
    _warm(backend)
    admin.delete("v:k")
    assert backend.get("k", tags=["t"]) == (False, None)


# -- another process writes --------------------------------------------------------

_WRITER = """
import mmap, os, sys
import redis, redis.asyncio
from relaycache import AioredisCache, RedisCache
url, prefix, flag_path, kind = sys.argv[1:5]
if kind == "aioredis":  # no near cache of its own, but it makes the writer's barrier
    backend = AioredisCache(redis.asyncio.Redis.from_url(url), value_prefix=prefix,
                            meta_prefix=prefix + "meta:")
else:  # the default: a near cache, and the barrier
    backend = RedisCache(redis.Redis.from_url(url), value_prefix=prefix,
                         meta_prefix=prefix + "meta:")
    assert backend._near is not None
fd = os.open(flag_path, os.O_RDWR)
returned = mmap.mmap(fd, mmap.PAGESIZE)
print("ready", flush=True)
for line in sys.stdin:
    action, name = line.split()
    if action == "invalidate":
        backend.invalidate([name])
    elif action == "delete":
        backend.delete(name)
    else:
        backend.set(name, "from the writer", tags=["t"])
    returned[0] = 1  # the call has returned: the reader may see this at once
    print("done", flush=True)
"""


class _WriterProcess:
    """Another process that writes on request and, the moment its call returns, sets
    a flag in memory shared with the test (no clock, no pipe: nothing in between)."""

    def __init__(self, url: str, prefix: str, flag_path: str, kind: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, url, prefix, flag_path, kind], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        fd = os.open(flag_path, os.O_RDWR)
        self.returned = mmap.mmap(fd, mmap.PAGESIZE)
        os.close(fd)
        assert self.proc.stdout.readline().strip() == "ready"

    def start(self, action: str, name: str) -> None:
        self.returned[0] = 0
        self.proc.stdin.write(f"{action} {name}\n")
        self.proc.stdin.flush()

    def done(self) -> None:
        assert self.proc.stdout.readline().strip() == "done"

    def do(self, action: str, name: str) -> None:
        self.start(action, name)
        self.done()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


@pytest.fixture
def writer_process(request, redis_server, tmp_path):
    """A writer process with the default ``RedisCache`` (or ``request.param``:
    ``"aioredis"``)."""
    prefix = _prefix()
    flag = tmp_path / "returned"
    flag.write_bytes(bytes(mmap.PAGESIZE))
    writer = _WriterProcess(redis_server.url, prefix, str(flag),
                            getattr(request, "param", "default"))
    yield prefix, writer
    writer.close()


@pytest.mark.parametrize("writer_process", ["default", "aioredis"], indirect=True)
def test_another_process_write_is_seen_by_every_read_after_it_returned(
        redis_server, writer_process):
    prefix, writer = writer_process
    backend = _backend(redis_server.url, prefix)
    rounds = 300
    served_old = []
    for n in range(rounds):
        _warm(backend, value={"round": n})
        action = ("invalidate", "t") if n % 2 else ("delete", "k")
        writer.start(*action)
        # Read without pause while the other process writes: a read that starts after
        # its call returned (the flag is read first) must not serve the old value.
        while True:
            returned = writer.returned[0]
            if backend.get("k", tags=["t"]) == (False, None):
                break
            if returned:
                served_old.append((n, action))
        writer.done()

    print(f"\n{rounds} writes by another process, read without pause until they showed: "
          f"{len(served_old)} reads served the old value after the write had returned; "
          f"stats {backend.stats}")
    assert served_old == []
    assert backend.stats.near_resets == 0
    assert backend.stats.near_hits > rounds  # the reads did come from the near cache


def test_another_process_set_replaces_the_local_copy(redis_server, writer_process):
    prefix, writer = writer_process
    backend = _backend(redis_server.url, prefix)
    _warm(backend, value="local")
    writer.do("set", "k")
    # set() over a valid entry makes no barrier (both are valid): one delivery.
    assert wait_until(lambda: backend.get("k", tags=["t"]) == (True, "from the writer"), 2)


# -- the fill race ------------------------------------------------------------------

class _RacingCache(RedisCache):
    """Runs ``between`` after the reply of a near miss's MGET came back and before
    its values are inserted: the window of the fill race."""

    between = None

    def _pipeline(self, commands, raise_on_error=True):
        replies = super()._pipeline(commands, raise_on_error)
        if commands and commands[0][0][0] == "MGET" and self.between is not None:
            between, self.between = self.between, None
            between()
        return replies


class _UnguardedNearCache(NearCache):
    """The negative control: fills ignore what was invalidated since their ticket."""

    def fill(self, ticket, keys, values, first_expires):
        current = self.ticket()
        assert current is not None
        super().fill(current, keys, values, first_expires)


@pytest.mark.parametrize("write", ["invalidate", "delete"])
@pytest.mark.parametrize("guarded", [True, False], ids=["guarded", "negative-control"])
def test_the_fill_race(redis_server, write, guarded):
    prefix = _prefix()
    near = NearCache() if guarded else _UnguardedNearCache()
    backend = _RacingCache(redis.Redis.from_url(redis_server.url), value_prefix=prefix,
                           meta_prefix=prefix + "meta:", near_cache=near)
    other = _backend(redis_server.url, prefix)
    backend.set("k", "old", tags=["t"])
    assert backend.get("k", tags=["t"]) == (True, "old")
    near.clear()  # the next read fills again, through the racing window

    def write_and_drain():
        # Redis ran the MGET (old entry, old stamp); now another client writes, and
        # its message is drained before the insertion (any lookup drains).
        if write == "invalidate":
            other.invalidate(["t"])
        else:
            other.delete("k")
        near.lookup(["unrelated"])

    backend.between = write_and_drain
    assert backend.get("k", tags=["t"]) == (True, "old")  # read before the write: fine
    assert backend.between is None, "the race window was not reached"

    served = backend.get("k", tags=["t"])
    if guarded:
        assert served == (False, None)
    else:
        assert served == (True, "old"), "the negative control should have served the old entry"


def test_a_fill_that_spans_a_lost_connection_inserts_nothing(redis_server):
    prefix = _prefix()
    near = NearCache()
    backend = _RacingCache(redis.Redis.from_url(redis_server.url), value_prefix=prefix,
                           meta_prefix=prefix + "meta:", near_cache=near)
    admin = redis_server.client()
    backend.set("k", "v", tags=["t"])
    assert backend.get("k", tags=["t"]) == (True, "v")
    near.clear()

    def lose_tracking():
        admin.client_kill_filter(_id=_tracking_ids(admin)[0])
        assert wait_until(lambda: (near.lookup(["x"]), not near.tracking)[1], 2)
        near.connect()  # a new connection is tracking before the insertion
        assert near.tracking

    backend.between = lose_tracking
    assert backend.get("k", tags=["t"]) == (True, "v")
    assert len(near) == 0, "values read before tracking began must not be kept"


# -- connections lost, killed, restarted, silent, flushed ----------------------------

def test_a_killed_tracking_connection_empties_it_until_tracking_is_back(redis_server):
    admin = redis_server.client()
    prefix = _prefix()
    backend = _backend(redis_server.url, prefix)
    near = _near(backend)
    other = _backend(redis_server.url, prefix)
    _warm(backend)
    [tracking] = _tracking_ids(admin)

    admin.client_kill_filter(_id=tracking)
    other.invalidate(["t"])  # while this process has no tracking connection
    # Reconnecting is refused for now: nothing may be served from the near cache.
    source = near._source
    opened = source.connections
    source.connections = lambda: (_ for _ in ()).throw(redis.ConnectionError("refused"))
    try:
        assert backend.get("k", tags=["t"]) == (False, None)
        assert near.tracking is False and len(near) == 0
        assert backend.stats.near_resets == 1
        backend.set("k", {"v": 2}, tags=["t"])
        hits = backend.stats.near_hits
        for _ in range(20):
            assert backend.get("k", tags=["t"]) == (True, {"v": 2})
            near._retry_at = 0.0  # let each read try (and fail) to reconnect
        assert backend.stats.near_hits == hits, "served while not tracking"
    finally:
        source.connections = opened
    near._retry_at = 0.0
    assert backend.get("k", tags=["t"]) == (True, {"v": 2})  # reconnects, fills
    assert near.tracking and len(_tracking_ids(admin)) == 1
    assert backend.get("k", tags=["t"]) == (True, {"v": 2})
    assert backend.stats.near_hits == hits + 1


def test_a_server_restart_empties_it(redis_server):
    backend = _backend(redis_server.url, _prefix(),
                       breaker=CircuitBreaker(threshold=100, cooldown=0.1))
    near = _near(backend)
    _warm(backend)
    redis_server.restart()

    assert backend.get("k", tags=["t"]) == (False, None)  # the server is empty
    assert backend.stats.near_resets == 1
    assert wait_until(lambda: backend.set("k", "after", tags=["t"]), 5)
    assert backend.get("k", tags=["t"]) == (True, "after")
    assert near.tracking
    hits = backend.stats.near_hits
    assert backend.get("k", tags=["t"]) == (True, "after")
    assert backend.stats.near_hits == hits + 1


def test_a_silent_connection_stops_serving_after_the_heartbeat(redis_server):
    backend = _backend(redis_server.url, _prefix(), NearCache(heartbeat=0.2),
                       socket_timeout=0.1, breaker=CircuitBreaker(threshold=1000))
    near = _near(backend)
    _warm(backend)
    redis_server.pause()  # sockets stay open; nothing is answered: a partition
    try:
        started = time.monotonic()
        last_hit = started
        while time.monotonic() - started < 1.0:
            hits = backend.stats.near_hits
            backend.get("k", tags=["t"])
            if backend.stats.near_hits > hits:
                last_hit = time.monotonic()
        print(f"\nlast near hit {last_hit - started:.3f} s into the pause "
              f"(heartbeat 0.2 s); stats {backend.stats}")
        assert last_hit - started <= 0.2 + 0.05
        assert backend.stats.near_resets >= 1, "the unanswered PING must drop the connection"
    finally:
        redis_server.resume()
    assert wait_until(lambda: backend.get("k", tags=["t"]) == (True, {"v": 1}), 5)
    assert wait_until(lambda: (backend.get("k", tags=["t"]), near.tracking)[1], 5)


def test_a_flush_empties_it(redis_server):
    admin = redis_server.client()
    backend = _backend(redis_server.url, _prefix())
    near = _near(backend)
    _warm(backend)
    admin.flushdb()
    assert backend.get("k", tags=["t"]) == (False, None)
    assert near.tracking and backend.stats.near_resets == 0  # emptied, still tracking


def test_a_local_copy_expires_with_its_ttl_without_any_message(redis_server_factory):
    server = redis_server_factory(extra_args=("--enable-debug-command", "local"))
    admin = server.client()
    admin.execute_command("DEBUG", "SET-ACTIVE-EXPIRE", "0")  # Redis sends nothing
    backend = _backend(server.url, _prefix())
    backend.set("k", "short", ttl=0.3, tags=["t"])
    assert backend.get("k", tags=["t"]) == (True, "short")
    assert backend.get("k", tags=["t"]) == (True, "short")
    assert backend.stats.near_hits == 1
    time.sleep(0.35)
    # Still in Redis, expired (the entry, two stamps, the server key: DBSIZE does not
    # expire keys, as a read would), and no message came.
    assert admin.dbsize() == 4
    assert backend.get("k", tags=["t"]) == (False, None)


def test_a_forked_child_starts_empty_with_its_own_connection(redis_server):
    admin = redis_server.client()
    backend = _backend(redis_server.url, _prefix())
    near = _near(backend)
    _warm(backend)
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if every check holds
        ok = len(near) == 0 and not near.tracking
        ok = ok and backend.get("k", tags=["t"]) == (True, {"v": 1}) and near.tracking
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's connection survived the child's exit.
    hits = backend.stats.near_hits
    assert backend.get("k", tags=["t"]) == (True, {"v": 1})
    assert backend.stats.near_hits == hits + 1 and near.tracking
    assert wait_until(lambda: len(_tracking_ids(admin)) == 1, 2)


# -- ACL ---------------------------------------------------------------------------------

def test_an_acl_user_needs_the_documented_commands(redis_server):
    """The near cache's two commands are in the documented ACL line; without either
    ``ACL LOG`` shows the refusal while caching and invalidation still work."""
    from tests.reliability.test_acl import SERVER_RULE, acl_rule

    documented = re.search(r"near\s+cache\s+needs\s+`([^`]+)`",
                           (ROOT / "docs" / "redis.md").read_text())
    assert documented, "docs/redis.md no longer says what the near cache needs"
    extra = documented.group(1).split()
    assert extra == ["+client|tracking", "+ping"]
    assert all(word in SERVER_RULE.split() for word in extra), SERVER_RULE
    admin = redis_server.client()
    denied, served = {}, {}
    for missing in (None, *extra):
        admin.execute_command("ACL", "SETUSER", "relaycache", "reset",
                              *acl_rule(SERVER_RULE, without=missing and missing[1:]))
        admin.execute_command("ACL", "LOG", "RESET")
        user = redis.Redis(host="127.0.0.1", port=redis_server.port, db=3,
                           username="relaycache", password="s3cret")
        backend = RedisCache(user, value_prefix="rc:", meta_prefix="rc:meta:",
                             near_cache=NearCache(heartbeat=0.2))
        backend.set("k", 1, tags=["t"])
        deadline = time.monotonic() + 0.3  # long enough for heartbeats
        while time.monotonic() < deadline:
            assert backend.get("k", tags=["t"]) == (True, 1)
        _backend(redis.Redis(host="127.0.0.1", port=redis_server.port, db=3,
                             username="relaycache", password="s3cret"),
                 "rc:").invalidate(["t"])
        assert backend.get("k", tags=["t"]) == (False, None)
        assert backend.stats.errors == 0, (missing, backend.stats)
        served[missing] = backend.stats.near_hits > 10
        denied[missing] = {entry["object"] for entry in admin.acl_log()}
        backend._near.clear()
    assert denied == {None: set(), "+client|tracking": {"client|tracking"},
                      "+ping": {"ping"}}, denied
    assert served[None] and not served["+client|tracking"], served


# -- async -----------------------------------------------------------------------------

def test_async_hits_make_no_round_trip_and_see_other_writes(redis_server):
    admin = redis_server.client()
    prefix = _prefix()
    backend = _backend(redis_server.url, prefix)
    other = _backend(redis_server.url, prefix)

    async def scenario():
        assert await backend.aset("k", "v1", tags=["t"])
        assert await backend.aget("k", tags=["t"]) == (True, "v1")  # starts tracking
        # An event loop does not wait for the tracking connection: it is set up on a
        # thread of its own while reads go to Redis.
        deadline = time.monotonic() + 5
        while not _near(backend).tracking and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert _near(backend).tracking
        assert await backend.aget("k", tags=["t"]) == (True, "v1")  # fills
        reset_stats(admin)
        for _ in range(100):
            assert await backend.aget("k", tags=["t"]) == (True, "v1")
        sent = {name: n for name, n in command_stats(admin).items()
                if name not in ("info", "ping") and not name.startswith("config")}
        assert sent == {}
        other.invalidate(["t"])
        assert await backend.aget("k", tags=["t"]) == (False, None)
        assert await backend.aset("k", "v2", tags=["t"])
        assert await backend.aget("k", tags=["t"]) == (True, "v2")
        await backend.ainvalidate(["t"])  # this process: evicted at once
        assert await backend.aget("k", tags=["t"]) == (False, None)
        assert other.get("k", tags=["t"]) == (False, None)

    asyncio.run(scenario())
    assert backend.stats.near_hits >= 100


# -- Cluster and Sentinel -------------------------------------------------------------

@pytest.mark.cluster
def test_cluster_hits_make_no_round_trip_and_writes_on_every_node_are_seen(
        shared_redis_cluster):
    client = RedisCluster(host="127.0.0.1", port=shared_redis_cluster.ports[0])
    prefix = _prefix()
    backend = _backend(client, prefix)
    other = _backend(RedisCluster(host="127.0.0.1", port=shared_redis_cluster.ports[0]),
                     prefix)
    near = _near(backend)
    by_port: dict[int, str] = {}
    for i in range(1000):
        slot = client.keyslot(backend.value_key(f"e{i}"))
        by_port.setdefault(client.nodes_manager.get_node_from_slot(slot).port, f"e{i}")
    keys = sorted(by_port.values())
    assert len(keys) == 3
    for key in keys:
        backend.set(key, key, tags=["t", key])
        assert backend.get(key, tags=["t", key]) == (True, key)
    assert len(near._links) == 3

    nodes = shared_redis_cluster.node_clients()
    for node in nodes:
        reset_stats(node)
    for _ in range(50):
        for key in keys:
            assert backend.get(key, tags=["t", key]) == (True, key)
    sent = [{name: n for name, n in command_stats(node).items()
             if name not in ("info", "ping", "cluster") and not name.startswith("config")}
            for node in nodes]
    assert sent == [{}, {}, {}]
    assert backend.stats.near_hits >= 150

    other.delete(keys[0])  # an entry on one node
    other.invalidate([keys[1]])  # a stamp on the stamps' node
    assert backend.get(keys[0], tags=["t", keys[0]]) == (False, None)
    assert backend.get(keys[1], tags=["t", keys[1]]) == (False, None)
    assert backend.get(keys[2], tags=["t", keys[2]]) == (True, keys[2])
    other.invalidate(["t"])
    assert backend.get(keys[2], tags=["t", keys[2]]) == (False, None)
    backend.clear()


def test_sentinel_failover_empties_it(redis_sentinel):
    group = redis_sentinel
    sentinel = Sentinel(group.sentinel_addresses, socket_timeout=1,
                        sentinel_kwargs={"socket_timeout": 1})
    prefix = _prefix()
    backend = _backend(sentinel.master_for(group.name, socket_timeout=1), prefix,
                       NearCache(heartbeat=0.2),
                       breaker=CircuitBreaker(threshold=1000, cooldown=0.1))
    near = _near(backend)
    _warm(backend)
    group.request_failover()
    group.wait_promoted(group.replica)
    new_master = group.replica

    # The cache's pool meets the new master (a new connection asks Sentinel): from
    # then on the near cache is emptied and tracks the new master.
    def moved() -> bool:
        backend._client.connection_pool.disconnect()
        backend.get("k", tags=["t"])
        return near.tracking and near._identity == ("127.0.0.1", new_master.port)

    assert wait_until(moved, 20, interval=0.1)
    assert backend.stats.near_resets >= 1
    other = _backend(sentinel.master_for(group.name, socket_timeout=1), prefix)
    assert wait_until(lambda: other.set("k", "new", tags=["t"]), 10, interval=0.1)
    assert wait_until(lambda: backend.get("k", tags=["t"]) == (True, "new"), 5)
    other.invalidate(["t"])
    assert backend.get("k", tags=["t"]) == (False, None)
