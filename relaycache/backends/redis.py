"""Redis backend: plain, Sentinel-managed or Cluster clients from redis-py."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import hashlib
import inspect
import math
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterator, Mapping
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import OutOfMemoryError, RedisClusterException
from redis.retry import Retry
from redis.sentinel import SentinelConnectionPool

from .base import BaseCache, KeyDescription
from .flow import Stamps, new_token, stamp_text
from .near import NearCache, RedisTracking, can_track

# KEYS: entry, stamp...; ARGV: entry, ttl_ms or "", expected stamp...
_STORE_IF_CURRENT = """
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) ~= ARGV[i + 1] then return 0 end
end
if ARGV[2] == '' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
"""

# KEYS: lease; ARGV: token. Only the owner releases (1; 0 if it was not the owner's);
# waiters are woken on its channel.
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[1], '1')
  return 1
end
return 0
"""

# The two round trips of a distributed singleflight miss after its lookup (plain and
# Sentinel Redis; on Cluster the lease, the entry and the stamps live in different
# slots, which no script may touch together: see RedisCache.acquire_lease_and_fetch).
#
# KEYS: lease, entry, stamp...; ARGV: token, lease ttl_ms, stamp ttl_ms, a new token.
# Takes the lease (nil if another holds it); taken, the entry and the stamps as MGET
# returns them (in chunks: unpack has a stack limit), read after the lease was taken,
# each absent stamp created first as SET NX PX would, as "<new token>-<its index>"
# (unique: the token is new for each call). A stamp key of another type is left alone
# and comes back nil, for the flow to acquire (and fail on) as before.
_ACQUIRE_LEASE_AND_FETCH = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
local found = {}
for first = 2, #KEYS, 1000 do
  local chunk = redis.call('MGET', unpack(KEYS, first, math.min(first + 999, #KEYS)))
  for i = 1, #chunk do found[first - 2 + i] = chunk[i] end
end
for i = 2, #found do
  if not found[i] then
    local stamp = ARGV[4] .. '-' .. (i - 2)
    if redis.call('SET', KEYS[i + 1], stamp, 'NX', 'PX', ARGV[3]) then found[i] = stamp end
  end
end
return found
"""

# KEYS: lease, entry, stamp...; ARGV: token, entry, ttl_ms or "", expected stamp...
# _RELEASE_LEASE, then _STORE_IF_CURRENT, atomically: released first, so that a store
# that fails (a full server refuses the SET) has still released it. Waiters woken by
# the message look again after the script, so they find what it stored.
_STORE_AND_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[1], '1')
end
for i = 3, #KEYS do
  if redis.call('GET', KEYS[i]) ~= ARGV[i + 1] then return 0 end
end
if ARGV[3] == '' then
  redis.call('SET', KEYS[2], ARGV[2])
else
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
end
return 1
"""

T = TypeVar("T")

_GLOB_SPECIALS = str.maketrans({c: "\\" + c for c in "*?[]\\"})


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


REDELIVERY_TIMEOUT = 5.0
"""Seconds the redelivery thread waits for Redis at least (see
:meth:`RedisCache.redelivery_backend`)."""

SERVER_TAG = "__server__"
"""Carried by every entry of a plain or Sentinel ``RedisCache``; see :class:`_RestartGuard`."""


def _run_id(info: Any) -> bytes | None:
    for line in info.splitlines():
        if line.startswith(b"run_id:"):
            return bytes(line[len(b"run_id:"):].strip())
    return None


# Replaces the __server__ stamp and records the server, unless another connection
# recorded this server first: connections opened at once replace the stamp once (each
# replacement would refuse what a concurrent reader is about to store).
_RECORD_SERVER = """
if redis.pcall('GET', KEYS[1]) == ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""
_RECORD_SERVER_SHA = hashlib.sha1(_RECORD_SERVER.encode()).hexdigest()


class _RestartGuard:
    """Runs on every new connection (redis-py's ``redis_connect_func``).

    If the server is not the one whose ``run_id`` this cache recorded in it, the server
    restarted (perhaps from an RDB or AOF file holding old entries) or a replica took
    over (asynchronous replication may have lost recent stamp replacements). Either
    way, invalidations may have been lost: the stamp of :data:`SERVER_TAG`, which every
    entry carries, is replaced, so nothing stored before is served again. Without
    INFO (an ACL denies it), the check is skipped: docs/redis.md lists the commands.

    The check is one round trip (``INFO`` and ``GET`` pipelined), the replacement
    another, added to every connection's setup: over a slow link that setup is what
    times out first. Replies are compared as bytes, never decoded, so whatever another
    client wrote into the server key (bytes, or another type: ``GET`` then fails) only
    counts as a different server.
    """

    def __init__(self, server_key: str, stamp_key: str, stamp_ttl_ms: int) -> None:
        self.server_key = server_key
        self.stamp_key = stamp_key
        self.stamp_ttl_ms = stamp_ttl_ms
        self.last_run_id: bytes | None = None  # the server this process last talked to

    def _check(self) -> list[tuple[Any, ...]]:
        return [("INFO", "server"), ("GET", self.server_key)]

    def _replacement(self, info: Any, recorded: Any) -> tuple[bytes | None, list[Any]]:
        """The server's ``run_id`` (``None``: no check) and the commands to send: none
        if it is the server recorded and the one this process knew; else the
        replacement of the stamp and the new record. A process that wrote to a deposed
        master must distrust what processes connected to the new master stored
        meanwhile (its writes there are lost), so it replaces the stamp even if they
        recorded the new master already. The caller counts the server as known only
        once the commands were answered: a replacement that timed out is sent again
        by the next connection, not forgotten."""
        if isinstance(info, redis.ResponseError):  # INFO denied by an ACL, or missing
            return None, []
        run_id = _run_id(info)
        if run_id is None:
            return None, []
        known = self.last_run_id
        if known is None or known == run_id:
            if recorded == run_id:
                return run_id, []
            return run_id, [("SCRIPT", "LOAD", _RECORD_SERVER),
                            ("EVALSHA", _RECORD_SERVER_SHA, 2, self.server_key,
                             self.stamp_key, run_id, new_token(), self.stamp_ttl_ms)]
        return run_id, [("SET", self.stamp_key, new_token(), "PX", self.stamp_ttl_ms),
                        ("SET", self.server_key, run_id)]

    def _known(self, run_id: bytes | None) -> None:
        """Record the server this process now talks to, its stamp replaced if needed."""
        if run_id is not None:
            self.last_run_id = run_id

    def __call__(self, connection: Any) -> None:
        connection.on_connect()
        check = self._check()
        connection.send_packed_command(connection.pack_commands(check))
        run_id, commands = self._replacement(*[_reply(connection) for _ in check])
        if commands:
            connection.send_packed_command(connection.pack_commands(commands))
            for _ in commands:
                connection.read_response()
        self._known(run_id)

    async def on_async_connect(self, connection: Any) -> None:
        await connection.on_connect()
        check = self._check()
        await connection.send_packed_command(connection.pack_commands(check))
        run_id, commands = self._replacement(*[await _areply(connection) for _ in check])
        if commands:
            await connection.send_packed_command(connection.pack_commands(commands))
            for _ in commands:
                await connection.read_response()
        self._known(run_id)


def _reply(connection: Any) -> Any:
    """The next reply, an error reply returned rather than raised: every reply of a
    pipeline must be read, or the next command would read the rest."""
    try:
        return connection.read_response()
    except redis.ResponseError as exc:
        return exc


async def _areply(connection: Any) -> Any:
    """Async :func:`_reply`."""
    try:
        return await connection.read_response()
    except redis.ResponseError as exc:
        return exc


def _current_stamps(previous: list[Any], tokens: list[str]) -> Stamps:
    """Merge the replies of ``SET stamp token NX GET``: the old stamp, or ours if none;
    ``None`` for an old value that is not UTF-8 (not a stamp: the flow replaces it)."""
    return [stamp_text(old) if old is not None else new
            for old, new in zip(previous, tokens, strict=True)]


def _bounded_client(client: redis.Redis, socket_timeout: float,
                    guard: _RestartGuard) -> redis.Redis:
    """A client on the same server whose calls cannot hang: the cache must fail fast.

    It never decodes replies, so a non-UTF-8 garbage entry is a corrupt entry (a miss),
    not a ``UnicodeDecodeError``, and it checks every new connection with ``guard``.
    The caller's client is left untouched (it stays ``redis_client``): its pool is
    cloned, a Sentinel pool as a Sentinel pool of the same service.
    """
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    for name in ("socket_timeout", "socket_connect_timeout", "orig_socket_timeout",
                 "orig_socket_connect_timeout"):
        if name in kwargs or not name.startswith("orig_"):
            kwargs[name] = socket_timeout
    kwargs["retry"] = Retry(NoBackoff(), 1)
    kwargs["decode_responses"] = False
    kwargs["redis_connect_func"] = guard
    if isinstance(pool, SentinelConnectionPool):
        kwargs.pop("connection_pool", None)
        new_pool: redis.ConnectionPool = SentinelConnectionPool(
            pool.service_name, pool.sentinel_manager, is_master=pool.is_master,
            check_connection=pool.check_connection, connection_class=pool.connection_class,
            **kwargs)
    elif type(pool) is redis.ConnectionPool:
        new_pool = redis.ConnectionPool(connection_class=pool.connection_class,
                                        max_connections=pool.max_connections, **kwargs)
    else:
        raise TypeError(f"RedisCache does not know how to use a {type(pool).__name__}")
    return redis.Redis(connection_pool=new_pool)


def _bounded_cluster(client: RedisCluster, socket_timeout: float) -> RedisCluster:
    """:func:`_bounded_client` for a Cluster: a client on the same nodes, with bounded
    timeouts, no reply decoding and no retry (it would multiply the timeout)."""
    kwargs = {k: v for k, v in client.get_connection_kwargs().items()
              if k not in ("host", "port", "retry") and not k.startswith(("orig_", "maint_"))}
    kwargs.update(socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
                  decode_responses=False)
    nodes = [ClusterNode(node.host, node.port) for node in client.get_nodes()]
    return RedisCluster(startup_nodes=nodes, retry=Retry(NoBackoff(), 0), **kwargs)


def _init_parameters(cls: type) -> set[str]:
    """Keyword arguments ``cls`` accepts (the sync classes take some the asyncio ones
    do not, such as OCSP options)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            names.update(inspect.signature(init).parameters)
    return names - {"self", "args", "kwargs"}


def _async_client(client: redis.Redis, guard: _RestartGuard | None) -> Any:
    """An asyncio client for the same server, or ``None`` if it cannot be derived."""
    import redis.asyncio as aredis
    import redis.asyncio.connection as aconn

    pool = client.connection_pool
    classes = {
        redis.connection.Connection: aconn.Connection,
        redis.connection.UnixDomainSocketConnection: aconn.UnixDomainSocketConnection,
        redis.connection.SSLConnection: aconn.SSLConnection,
    }
    connection_class = classes.get(pool.connection_class)
    if type(pool) is not redis.ConnectionPool or connection_class is None:
        return None
    accepted = _init_parameters(connection_class)
    kwargs = {k: v for k, v in pool.connection_kwargs.items()
              if k in accepted and k != "retry"}
    kwargs["redis_connect_func"] = guard.on_async_connect if guard is not None else None
    return aredis.Redis(connection_pool=aredis.ConnectionPool(
        connection_class=connection_class, **kwargs))


def _bounded_async_client(client: Any, socket_timeout: float, guard: _RestartGuard) -> Any:
    """:func:`_bounded_client` for a ``redis.asyncio.Redis`` (``AioredisCache``): a
    client of the same connection class and server, with bounded timeouts, no reply
    decoding and the restart check; one per event loop, since asyncio connections
    belong to the loop that opened them."""
    import redis.asyncio as aredis

    pool = client.connection_pool
    kwargs = {k: v for k, v in pool.connection_kwargs.items()
              if k != "retry" and not k.startswith("maint_")}
    for name in ("socket_timeout", "socket_connect_timeout", "orig_socket_timeout",
                 "orig_socket_connect_timeout"):
        if name in kwargs or not name.startswith("orig_"):
            kwargs[name] = socket_timeout
    kwargs["decode_responses"] = False
    kwargs["redis_connect_func"] = guard.on_async_connect
    return aredis.Redis(connection_pool=aredis.ConnectionPool(
        connection_class=pool.connection_class, max_connections=pool.max_connections,
        **kwargs))


async def await_release(client: Any, key: str, timeout: float) -> None:
    """Return once the lease or lock ``key`` is released (its owner's release script
    publishes on a channel named after it) or expires, or ``timeout`` seconds pass:
    waiters sleep on the channel, they do not poll the key."""
    deadline = time.monotonic() + timeout
    async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
        await pubsub.subscribe(key)
        while True:
            left_ms = await client.pttl(key)
            remaining = deadline - time.monotonic()
            if left_ms < 0 or remaining <= 0:
                return
            if await pubsub.get_message(timeout=min(left_ms / 1000, remaining, 1.0)):
                return


RELEASE_SCRIPT = _RELEASE_LEASE
"""Lua: ``KEYS[1]`` deleted only if it holds ``ARGV[1]`` (the owner's token), then a
message on the channel ``KEYS[1]`` wakes its waiters."""


Command = tuple[tuple[Any, ...], dict[str, Any]]
"""A command's arguments and redis-py's options for its reply callback."""


def _command(*args: Any, **options: Any) -> Command:
    return args, options


class _LoopClient:
    """The asyncio client of one event loop, with its scripts (sent as ``EVALSHA``).

    Its connections hold the loop, so the loop's entry in ``RedisCache._loop_clients``
    (weak on the loop) never went away by itself: each loop that made a call kept a
    client and a connection open, one per call under asgiref's ``async_to_sync``. The
    client is closed with its loop instead. An async generator started here is
    registered by the running loop as every async generator is, and the loop's
    ``shutdown_asyncgens()``, which ``asyncio.run``, ``asyncio.Runner`` and
    ``async_to_sync`` await before closing it, resumes it to ``forget`` the entry and
    close the connections. A loop closed without that call keeps its client, as it
    keeps its other async generators unfinished.
    """

    __slots__ = ("acquire_and_fetch", "client", "closer", "release", "store",
                 "store_and_release")

    def __init__(self, client: Any, forget: Callable[[], object]) -> None:
        self.client = client
        self.store = client.register_script(_STORE_IF_CURRENT)
        self.release = client.register_script(_RELEASE_LEASE)
        self.acquire_and_fetch = client.register_script(_ACQUIRE_LEASE_AND_FETCH)
        self.store_and_release = client.register_script(_STORE_AND_RELEASE_LEASE)
        self.closer = self._close_at_shutdown(forget)
        with contextlib.suppress(StopIteration):  # it stopped at its yield, registered
            self.closer.asend(None).send(None)

    async def _close_at_shutdown(self, forget: Callable[[], object]
                                 ) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            forget()
            with contextlib.suppress(redis.RedisError, OSError):
                await self.client.aclose(close_connection_pool=True)


def _refused_for_memory(exc: redis.ResponseError) -> bool:
    """A write refused by a full server under ``noeviction``."""
    return isinstance(exc, OutOfMemoryError) or "maxmemory" in str(exc)


class _LeaseScripts:
    """The two singleflight scripts of one sync client (registered at first use: no
    round trip until called, and one set per client, a redelivery twin's included)."""

    __slots__ = ("acquire_and_fetch", "client", "store_and_release")

    def __init__(self, client: Any) -> None:
        self.client = client
        self.acquire_and_fetch = client.register_script(_ACQUIRE_LEASE_AND_FETCH)
        self.store_and_release = client.register_script(_STORE_AND_RELEASE_LEASE)


def _leased(reply: Any) -> list[Any] | None:
    """The reply of ``_ACQUIRE_LEASE_AND_FETCH``: ``None`` (not taken) or the values."""
    return None if reply is None else list(reply)


def _send_mget(connection: Any, keys: list[str]) -> list[Any]:
    connection.send_command("MGET", *keys)
    return list(connection.read_response())


def _expires_at(started: float, pttl: int) -> float:
    """When a key whose ``PTTL`` (asked at ``started``, ``time.monotonic()``) was
    ``pttl`` ms expires: counted from before the request, so never later than in Redis.
    No TTL (-1) is never; an absent key (-2) is not kept anyway."""
    return started + pttl / 1000 if pttl >= 0 else math.inf


def _near_cache(option: NearCache | Mapping[str, Any] | bool | None, client: Any
                ) -> NearCache | None:
    """The near cache ``RedisCache(near_cache=option)`` asks for."""
    if option is None or option is False:
        return None
    if option is True:
        return NearCache() if can_track(client) else None
    if isinstance(option, NearCache):
        return option
    if isinstance(option, Mapping):
        return NearCache(**option)
    raise TypeError("near_cache must be True, False, a NearCache or a dict of its "
                    f"options, got {option!r}")


class RedisCache(BaseCache):
    """Tag-stamped cache on Redis.

    :param client: a ``redis.Redis`` (``decode_responses`` either way, from a URL or a
        Sentinel ``master_for``) or a ``redis.cluster.RedisCluster``. It is kept as
        :attr:`redis_client`; cache calls run on a clone with bounded timeouts.
    :param socket_timeout: seconds a cache call may wait on Redis (connect or reply),
        whatever the client's own timeouts: a slow cache must cost little.
    :param near_cache: serve hits from the process without a round trip, kept fresh
        by Redis' invalidation messages: ``True`` (the default) for a
        :class:`~relaycache.NearCache` with default bounds, when the client connects
        through redis-py's own sockets (a test double such as fakeredis cannot be
        tracked); a ``NearCache`` of this cache's own, or a dict of its options (as a
        settings file gives them); ``False`` or ``None``: every hit asks Redis.
    Other options are :class:`~relaycache.backends.base.BaseCache`'s.
    """

    # RedisClusterException (no slot owner reachable) does not derive from RedisError.
    errors = (redis.RedisError, RedisClusterException, OSError)

    def __init__(self, client: redis.Redis | RedisCluster, default_ttl: float | None = 3600,
                 *, socket_timeout: float = 0.5,
                 near_cache: NearCache | Mapping[str, Any] | bool | None = True,
                 **options: Any) -> None:
        if not isinstance(client, (redis.Redis, RedisCluster)):
            raise TypeError(
                f"RedisCache needs a redis.Redis or RedisCluster client, got {type(client)!r}"
            )
        super().__init__(default_ttl=default_ttl, **options)
        self._setup(client, socket_timeout)
        self._client: Any
        if isinstance(client, RedisCluster):
            self._client = _bounded_cluster(client, socket_timeout)
        else:
            assert self._guard_restarts is not None
            self._client = _bounded_client(client, socket_timeout, self._guard_restarts)
        self._store_script = None if self.is_cluster else self._client.register_script(
            _STORE_IF_CURRENT)
        self._release_script = self._client.register_script(_RELEASE_LEASE)
        self._near = _near_cache(near_cache, client)
        self._barriers = self._near is not None
        if self._near is not None:
            self._near.bind(RedisTracking(self._client, self.value_prefix,
                                          self.stamp_keys([""])[0]), self.stats)

    def _setup(self, client: Any, socket_timeout: float) -> None:
        """What every Redis cache keeps, whichever client it was given."""
        self.redis_client = client
        self.is_cluster = isinstance(client, RedisCluster)
        self._socket_timeout = socket_timeout
        self._guard_restarts: _RestartGuard | None = None
        if not self.is_cluster:
            self.implicit_tags = (SERVER_TAG,)
            self._guard_restarts = _RestartGuard(
                f"{self.meta_prefix}server", self.stamp_keys([SERVER_TAG])[0],
                int(self.stamp_ttl * 1000))
        self._near = None
        self._barriers = False
        self._loop_clients: weakref.WeakKeyDictionary[Any, _LoopClient | None] = (
            weakref.WeakKeyDictionary())
        self._redelivery_timeout = max(REDELIVERY_TIMEOUT, 10 * socket_timeout)
        self._redelivery: RedisCache | None = None

    @classmethod
    def from_url(cls, url: str, default_ttl: float | None = 3600, **options: Any
                 ) -> RedisCache:
        """A cache on ``redis://``, ``rediss://`` or ``unix://`` ``url``."""
        return cls(redis.Redis.from_url(url), default_ttl, **options)

    def __repr__(self) -> str:
        kind = "cluster" if self.is_cluster else "redis"
        return f"<RedisCache {kind} value_prefix={self.value_prefix!r}>"

    def stamp_keys(self, tags: list[str]) -> list[str]:
        if not self.is_cluster:
            return super().stamp_keys(tags)
        # One hash slot for every stamp: a hit is then two MGETs (the entry's slot and
        # the stamps'), whatever the number of tags, and an invalidation one node's
        # pipeline. The price: every hit reads the stamps' node.
        return [f"{self.meta_prefix}{{t}}:{tag}" for tag in tags]

    # -- command bodies shared by the sync and async primitives ----------------------

    def _acquire_commands(self, skeys: list[str]) -> tuple[list[str], list[Command]]:
        tokens = [new_token() for _ in skeys]
        stamp_ms = int(self.stamp_ttl * 1000)
        # get=True tells redis-py's reply callback for SET that GET was asked for (as
        # its own set(get=True) does); without it the old stamp becomes a bool.
        return tokens, [_command("SET", skey, token, "NX", "PX", stamp_ms, "GET", get=True)
                        for skey, token in zip(skeys, tokens, strict=True)]

    def _replace_commands(self, skeys: list[str]) -> list[Command]:
        stamp_ms = int(self.stamp_ttl * 1000)
        return [_command("SET", skey, new_token(), "PX", stamp_ms) for skey in skeys]

    def _acquire_and_fetch_call(self, lkey: str, token: str, ttl_ms: int, vkey: str,
                                skeys: list[str]) -> dict[str, list[Any]]:
        return {"keys": [lkey, vkey, *skeys],
                "args": [token, ttl_ms, int(self.stamp_ttl * 1000), new_token()]}

    @staticmethod
    def _store_and_release_call(vkey: str, raw: bytes, skeys: list[str], stamps: list[str],
                                ttl_ms: int | None, lkey: str, token: str
                                ) -> dict[str, list[Any]]:
        return {"keys": [lkey, vkey, *skeys],
                "args": [token, raw, "" if ttl_ms is None else ttl_ms, *stamps]}

    _lease_scripts: _LeaseScripts | None = None

    def _scripts(self) -> _LeaseScripts:
        """The singleflight scripts of this cache's sync client."""
        scripts = self._lease_scripts
        if scripts is None or scripts.client is not self._client:
            scripts = self._lease_scripts = _LeaseScripts(self._client)
        return scripts

    def _pipeline(self, commands: list[Command], raise_on_error: bool = True
                  ) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command[0], **command[1])
        return list(pipe.execute(raise_on_error=raise_on_error))

    @staticmethod
    async def _apipeline(client: Any, commands: list[Command], raise_on_error: bool = True
                         ) -> list[Any]:
        async with client.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command[0], **command[1])
            return list(await pipe.execute(raise_on_error=raise_on_error))

    # -- the near cache (relaycache.backends.near) ---------------------------------

    @staticmethod
    def _near_commands(keys: list[str]) -> list[Command]:
        # The first key's (the entry's) TTL comes in the same round trip, so its local
        # copy never outlives the key in Redis.
        return [_command("MGET", *keys), _command("PTTL", keys[0])]

    def _near_miss(self, near: NearCache, keys: list[str]) -> list[Any]:
        """Fetch ``keys`` from Redis, and keep them in ``near``."""
        if near.wants_connection():
            near.connect()
        ticket = near.ticket()  # taken before the request goes out: NearCache.fill
        started = time.monotonic()
        if self.is_cluster:
            values, ttl = self._cluster_fetch_with_ttl(keys)
        else:
            values, ttl = self._pipeline(self._near_commands(keys))
        if ticket is not None:
            near.fill(ticket, keys, values, _expires_at(started, ttl))
        return list(values)

    async def _anear_miss(self, near: NearCache, keys: list[str]) -> list[Any]:
        """Async :meth:`_near_miss`."""
        near.connect_soon()
        loop_client = self._loop_client()
        if loop_client is None:
            return await asyncio.to_thread(self._near_miss, near, keys)
        ticket = near.ticket()
        started = time.monotonic()
        values, ttl = await self._apipeline(loop_client.client, self._near_commands(keys))
        if ticket is not None:
            near.fill(ticket, keys, values, _expires_at(started, ttl))
        return list(values)

    def _cluster_fetch_with_ttl(self, keys: list[str]) -> tuple[list[Any], int]:
        """One ``MGET`` per slot and the first key's ``PTTL``, in one pipeline."""
        by_slot: dict[int, list[int]] = {}
        for index, key in enumerate(keys):
            by_slot.setdefault(self._client.keyslot(key), []).append(index)
        pipe = self._client.pipeline()
        for indexes in by_slot.values():
            pipe.execute_command("MGET", *[keys[i] for i in indexes])
        pipe.execute_command("PTTL", keys[0])
        *replies, ttl = pipe.execute()
        values: list[Any] = [None] * len(keys)
        for indexes, reply in zip(by_slot.values(), replies, strict=True):
            for index, value in zip(indexes, reply, strict=True):
                values[index] = value
        return values, ttl

    def _barrier(self, keys: list[str]) -> None:
        """Return only once Redis has handed the invalidation messages of a write to
        ``keys`` to every tracking connection. Redis writes them in the same pass as
        the write's reply, in no set order, so a command sent after that reply came back
        is answered after they were written (docs/consistency.md, "The near cache").
        Sent in the same pipeline, it would run in the same pass: no barrier. It is a
        ``PTTL`` of a key just written (one per node on Cluster): any command would
        do, and this one needs no permission beyond the cache's own keys."""
        if not self.is_cluster:
            self._client.pttl(keys[0])
            return
        firsts = {self._client.get_node_from_key(key).name: key for key in keys}
        self._pipeline([_command("PTTL", key) for key in firsts.values()])

    # -- the storage contract, sync ------------------------------------------------

    def fetch(self, keys: list[str]) -> list[Any]:
        if self._near is not None:
            found = self._near.lookup(keys)
            return found if found is not None else self._near_miss(self._near, keys)
        if self.is_cluster:
            return list(self._client.mget_nonatomic(keys))
        return self._mget(keys)

    def _mget(self, keys: list[str]) -> list[Any]:
        """``MGET keys`` on a pooled connection, with the connection's own retry policy
        (one retry after a reconnect), as ``execute_command`` sends it, without its
        per-command layers (client-side caching options, observability hooks, event
        dispatch): about a fifth of the client CPU of a hit."""
        pool = self._client.connection_pool
        connection = pool.get_connection()
        try:
            return connection.retry.call_with_retry(  # type: ignore[no-any-return]
                lambda: _send_mget(connection, keys), lambda _error: connection.disconnect())
        except redis.ResponseError:
            raise  # the reply was read: the connection is in step
        except BaseException:
            connection.disconnect()  # a reply may be left unread: never reuse it
            raise
        finally:
            pool.release(connection)

    def acquire_stamps(self, skeys: list[str]) -> Stamps:
        tokens, commands = self._acquire_commands(skeys)
        return _current_stamps(self._pipeline(commands), tokens)

    def store_if_current(self, vkey: str, raw: bytes, skeys: list[str], stamps: list[str],
                         ttl_ms: int | None) -> bool:
        if self._near is not None:
            # No barrier: the entry this replaces is valid too (same stamps).
            self._near.evict([vkey])
        if self._store_script is not None:
            args = [raw, "" if ttl_ms is None else ttl_ms, *stamps]
            return bool(self._store_script(keys=[vkey, *skeys], args=args))
        # Cluster: stamps live in other slots, so the check cannot be atomic with the
        # write. That is still safe: readers compare the entry's stamps with the
        # current ones, so a result stored after an invalidation is never served.
        if skeys and [stamp_text(v) for v in self._client.mget_nonatomic(skeys)] != stamps:
            return False
        self._client.set(vkey, raw, px=ttl_ms)
        return True

    def replace_stamps(self, skeys: list[str]) -> bool:
        if self._near is not None:
            self._near.evict(skeys)
        try:
            self._pipeline(self._replace_commands(skeys))
        except redis.ResponseError as exc:
            if not _refused_for_memory(exc):
                raise
            return False
        if self._barriers:
            self._barrier(skeys)
        return True

    def delete_keys(self, keys: list[str]) -> None:
        if not keys:
            return
        if self._near is not None:
            self._near.evict(keys)
        if self.is_cluster:
            self._pipeline([_command("UNLINK", key) for key in keys])
        else:
            self._client.unlink(*keys)
        if self._barriers:
            self._barrier(keys)

    def clear(self) -> None:
        batch: list[Any] = []
        for key in self.scan_keys():
            batch.append(key)
            if len(batch) >= 500:
                self.delete_keys(batch)
                batch = []
        self.delete_keys(batch)
        if self._near is not None:
            self._near.clear()

    def acquire_lease(self, lkey: str, token: str, ttl_ms: int) -> bool:
        return bool(self._client.set(lkey, token, nx=True, px=ttl_ms))

    def release_lease(self, lkey: str, token: str) -> None:
        self._release_script(keys=[lkey], args=[token])

    def acquire_lease_and_fetch(self, lkey: str, token: str, ttl_ms: int, vkey: str,
                                skeys: list[str]) -> list[Any] | None:
        if self.is_cluster:
            # The lease, the entry and the stamps are in different slots: no script may
            # touch them all. The lease, then the fetch (as before): two round trips.
            return super().acquire_lease_and_fetch(lkey, token, ttl_ms, vkey, skeys)
        return _leased(self._scripts().acquire_and_fetch(
            **self._acquire_and_fetch_call(lkey, token, ttl_ms, vkey, skeys)))

    def store_and_release_lease(self, vkey: str, raw: bytes, skeys: list[str],
                                stamps: list[str], ttl_ms: int | None, lkey: str,
                                token: str) -> bool:
        if self.is_cluster:
            # Different slots again: the store, then the release (two round trips).
            return super().store_and_release_lease(vkey, raw, skeys, stamps, ttl_ms,
                                                   lkey, token)
        if self._near is not None:
            self._near.evict([vkey])  # as store_if_current
        return bool(self._scripts().store_and_release(
            **self._store_and_release_call(vkey, raw, skeys, stamps, ttl_ms, lkey, token)))

    def wait_lease(self, lkey: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(lkey)
            while True:
                left_ms = self._client.pttl(lkey)
                remaining = deadline - time.monotonic()
                if left_ms < 0 or remaining <= 0:
                    return
                if pubsub.get_message(timeout=min(left_ms / 1000, remaining, 1.0)):
                    return
        finally:
            pubsub.close()

    def _scan_patterns(self) -> list[str]:
        """``SCAN`` patterns of this cache's keys (both prefixes, once each)."""
        prefixes = [self.value_prefix]
        if not self.meta_prefix.startswith(self.value_prefix):
            prefixes.append(self.meta_prefix)
        return [prefix.translate(_GLOB_SPECIALS) + "*" for prefix in prefixes]

    def scan_keys(self) -> Iterator[str]:
        for pattern in self._scan_patterns():
            for key in self._client.scan_iter(match=pattern, count=1000):
                yield _text(key)

    def describe_keys(self, keys: list[str], head: int = 0) -> list[KeyDescription | None]:
        commands: list[Command] = []
        for key in keys:
            commands += [_command("MEMORY USAGE", key), _command("STRLEN", key),
                         _command("PTTL", key)]
            if head:
                commands.append(_command("GETRANGE", key, 0, head - 1))
        replies = iter(self._pipeline(commands, raise_on_error=False))
        described: list[KeyDescription | None] = []
        for _ in keys:
            usage, length, ttl = next(replies), next(replies), next(replies)
            start = next(replies) if head else None
            if isinstance(length, Exception):
                raise length
            if not length or ttl == -2:  # expired or deleted since it was listed
                described.append(None)
                continue
            described.append(KeyDescription(
                size=int(length), ttl_ms=None if ttl < 0 else int(ttl),
                head=start if isinstance(start, bytes) else None,
                memory=usage if isinstance(usage, int) else None))
        return described

    def ping(self) -> None:
        self._client.ping()

    def redelivery_backend(self) -> RedisCache:
        """This cache on a client that waits up to ``max(REDELIVERY_TIMEOUT,
        10 * socket_timeout)`` seconds for Redis, sharing all else (what is pending, the
        stats, the breaker, the restart guard); made at the first redelivery.

        Over a link whose replies take longer than ``socket_timeout``, every new
        connection's setup (redis-py's handshake, the restart check) times out before
        a command is sent, so a redelivery with the callers' timeout never sent the
        replacement at all, and other processes kept serving what it invalidates.
        Nobody waits on the redelivery thread, so it can wait for the link instead.
        A Cluster that cannot be reached to build that client leaves this pass to the
        callers' client."""
        if self._redelivery is None:
            twin = copy.copy(self)
            if isinstance(self.redis_client, RedisCluster):
                try:
                    twin._client = _bounded_cluster(self.redis_client,
                                                    self._redelivery_timeout)
                except self.errors:  # it connects, to learn the slots
                    return self
            else:
                assert self._guard_restarts is not None  # every plain or Sentinel cache's
                twin._client = _bounded_client(self.redis_client, self._redelivery_timeout,
                                               self._guard_restarts)
            self._redelivery = twin
        return self._redelivery

    # -- the storage contract, async -----------------------------------------------

    def _loop_client(self) -> _LoopClient | None:
        """This event loop's client; ``None``: run the sync primitive in a thread
        (Cluster and Sentinel, whose asyncio clients cannot be derived)."""
        loop = asyncio.get_running_loop()
        if loop not in self._loop_clients:
            client = self._new_async_client()
            self._loop_clients[loop] = None if client is None else _LoopClient(
                client, functools.partial(self._loop_clients.pop, loop, None))
        return self._loop_clients[loop]

    def _new_async_client(self) -> Any:
        """An asyncio client for the running loop, or ``None`` if none can be made."""
        return None if self.is_cluster else _async_client(self._client, self._guard_restarts)

    async def afetch(self, keys: list[str]) -> list[Any]:
        if self._near is not None:
            # The lookup never blocks: served here, it costs the event loop no wait.
            found = self._near.lookup(keys)
            return found if found is not None else await self._anear_miss(self._near, keys)
        loop_client = self._loop_client()
        if loop_client is None:
            return await asyncio.to_thread(self.fetch, keys)
        return list(await loop_client.client.execute_command("MGET", *keys))

    async def aacquire_stamps(self, skeys: list[str]) -> Stamps:
        loop_client = self._loop_client()
        if loop_client is None:
            return await asyncio.to_thread(self.acquire_stamps, skeys)
        tokens, commands = self._acquire_commands(skeys)
        return _current_stamps(await self._apipeline(loop_client.client, commands), tokens)

    async def astore_if_current(self, vkey: str, raw: bytes, skeys: list[str],
                                stamps: list[str], ttl_ms: int | None) -> bool:
        loop_client = self._loop_client()
        if loop_client is None:
            return await asyncio.to_thread(self.store_if_current, vkey, raw, skeys, stamps,
                                           ttl_ms)
        if self._near is not None:
            self._near.evict([vkey])
        args = [raw, "" if ttl_ms is None else ttl_ms, *stamps]
        return bool(await loop_client.store(keys=[vkey, *skeys], args=args))

    async def areplace_stamps(self, skeys: list[str]) -> bool:
        loop_client = self._loop_client()
        if loop_client is None:
            return await asyncio.to_thread(self.replace_stamps, skeys)
        if self._near is not None:
            self._near.evict(skeys)
        try:
            await self._apipeline(loop_client.client, self._replace_commands(skeys))
        except redis.ResponseError as exc:
            if not _refused_for_memory(exc):
                raise
            return False
        if self._barriers:
            await loop_client.client.pttl(skeys[0])  # the barrier: see _barrier
        return True

    async def adelete_keys(self, keys: list[str]) -> None:
        if not keys:
            return
        loop_client = self._loop_client()
        if loop_client is None:
            await asyncio.to_thread(self.delete_keys, keys)
            return
        if self._near is not None:
            self._near.evict(keys)
        await loop_client.client.unlink(*keys)
        if self._barriers:
            await loop_client.client.pttl(keys[0])  # the barrier: see _barrier

    async def aclear(self) -> None:
        loop_client = self._loop_client()
        if loop_client is None:
            await asyncio.to_thread(self.clear)
            return
        for pattern in self._scan_patterns():
            batch: list[Any] = []
            async for key in loop_client.client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    await self.adelete_keys(batch)
                    batch = []
            await self.adelete_keys(batch)
        if self._near is not None:
            self._near.clear()

    async def aacquire_lease(self, lkey: str, token: str, ttl_ms: int) -> bool:
        loop_client = self._loop_client()
        if loop_client is None:
            return await asyncio.to_thread(self.acquire_lease, lkey, token, ttl_ms)
        return bool(await loop_client.client.set(lkey, token, nx=True, px=ttl_ms))

    async def arelease_lease(self, lkey: str, token: str) -> None:
        loop_client = self._loop_client()
        if loop_client is None:
            await asyncio.to_thread(self.release_lease, lkey, token)
            return
        await loop_client.release(keys=[lkey], args=[token])

    async def aacquire_lease_and_fetch(self, lkey: str, token: str, ttl_ms: int,
                                       vkey: str, skeys: list[str]) -> list[Any] | None:
        loop_client = self._loop_client()
        if loop_client is None:
            return await asyncio.to_thread(self.acquire_lease_and_fetch, lkey, token,
                                           ttl_ms, vkey, skeys)
        return _leased(await loop_client.acquire_and_fetch(
            **self._acquire_and_fetch_call(lkey, token, ttl_ms, vkey, skeys)))

    async def astore_and_release_lease(self, vkey: str, raw: bytes, skeys: list[str],
                                       stamps: list[str], ttl_ms: int | None, lkey: str,
                                       token: str) -> bool:
        loop_client = self._loop_client()
        if loop_client is None:
            return await asyncio.to_thread(self.store_and_release_lease, vkey, raw, skeys,
                                           stamps, ttl_ms, lkey, token)
        if self._near is not None:
            self._near.evict([vkey])
        return bool(await loop_client.store_and_release(
            **self._store_and_release_call(vkey, raw, skeys, stamps, ttl_ms, lkey, token)))

    async def await_lease(self, lkey: str, timeout: float) -> None:
        loop_client = self._loop_client()
        if loop_client is None:
            await asyncio.to_thread(self.wait_lease, lkey, timeout)
            return
        await await_release(loop_client.client, lkey, timeout)


class _PrivateLoop:
    """One event loop on a daemon thread, where :class:`AioredisCache` carries out the
    calls of sync callers (its client is asyncio only)."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def run(cls, coro: Coroutine[Any, Any, T]) -> T:
        with cls._lock:
            if cls._loop is None:
                cls._loop = asyncio.new_event_loop()
                threading.Thread(target=cls._loop.run_forever, daemon=True,
                                 name="relaycache-aioredis").start()
            loop = cls._loop
        return asyncio.run_coroutine_threadsafe(coro, loop).result()


class AioredisCache(RedisCache):
    """:class:`RedisCache` for an application whose only client is a
    ``redis.asyncio.Redis`` (the relaycache 0.1 library's ``AioredisCache``).

    The same cache: the same keys, stamps, scripts and primitives (their async
    twins), on a clone of the given client's pool per event loop with bounded
    timeouts. Sync calls (``get``, ``backend[key] = value``, ``invalidate()`` from a
    Django signal handler, the redelivery of invalidations) are carried out by those
    async primitives on a private event loop thread, so every method works from sync
    code too. Plain (non-Sentinel, non-Cluster) asyncio clients only. It has no near
    cache of its own, but its invalidations make the writer's barrier, so that the
    near caches of other processes drop what they replaced before they return.

    :param client: a ``redis.asyncio.Redis``, kept as :attr:`redis_client`.
    Other options are :class:`RedisCache`'s.
    """

    def __init__(self, client: Any, default_ttl: float | None = 3600, *,
                 socket_timeout: float = 0.5, **options: Any) -> None:
        import redis.asyncio as aredis

        if not isinstance(client, aredis.Redis) or type(
                client.connection_pool) is not aredis.ConnectionPool:
            raise TypeError("AioredisCache needs a redis.asyncio.Redis client on a plain "
                            f"connection pool, got {client!r}; use RedisCache for a sync, "
                            "Sentinel or Cluster client")
        BaseCache.__init__(self, default_ttl=default_ttl, **options)
        self._setup(client, socket_timeout)
        self._client = None
        self._barriers = True

    @classmethod
    def from_url(cls, url: str, default_ttl: float | None = 3600, **options: Any
                 ) -> AioredisCache:
        """A cache on ``redis://``, ``rediss://`` or ``unix://`` ``url``."""
        import redis.asyncio as aredis

        return cls(aredis.Redis.from_url(url), default_ttl, **options)

    def __repr__(self) -> str:
        return f"<AioredisCache value_prefix={self.value_prefix!r}>"

    def _new_async_client(self) -> Any:
        assert self._guard_restarts is not None
        return _bounded_async_client(self.redis_client, self._socket_timeout,
                                     self._guard_restarts)

    def _here(self) -> _LoopClient:
        loop_client = self._loop_client()
        assert loop_client is not None  # always made for an asyncio client
        return loop_client

    # -- sync callers: the async primitives on the private loop ---------------------

    def fetch(self, keys: list[str]) -> list[Any]:
        return _PrivateLoop.run(self.afetch(keys))

    def acquire_stamps(self, skeys: list[str]) -> Stamps:
        return _PrivateLoop.run(self.aacquire_stamps(skeys))

    def store_if_current(self, vkey: str, raw: bytes, skeys: list[str], stamps: list[str],
                         ttl_ms: int | None) -> bool:
        return _PrivateLoop.run(self.astore_if_current(vkey, raw, skeys, stamps, ttl_ms))

    def replace_stamps(self, skeys: list[str]) -> bool:
        return _PrivateLoop.run(self.areplace_stamps(skeys))

    def delete_keys(self, keys: list[str]) -> None:
        _PrivateLoop.run(self.adelete_keys(keys))

    def clear(self) -> None:
        _PrivateLoop.run(self.aclear())

    def acquire_lease(self, lkey: str, token: str, ttl_ms: int) -> bool:
        return _PrivateLoop.run(self.aacquire_lease(lkey, token, ttl_ms))

    def release_lease(self, lkey: str, token: str) -> None:
        _PrivateLoop.run(self.arelease_lease(lkey, token))

    def acquire_lease_and_fetch(self, lkey: str, token: str, ttl_ms: int, vkey: str,
                                skeys: list[str]) -> list[Any] | None:
        return _PrivateLoop.run(self.aacquire_lease_and_fetch(lkey, token, ttl_ms, vkey,
                                                              skeys))

    def store_and_release_lease(self, vkey: str, raw: bytes, skeys: list[str],
                                stamps: list[str], ttl_ms: int | None, lkey: str,
                                token: str) -> bool:
        return _PrivateLoop.run(self.astore_and_release_lease(vkey, raw, skeys, stamps,
                                                              ttl_ms, lkey, token))

    def wait_lease(self, lkey: str, timeout: float) -> None:
        _PrivateLoop.run(self.await_lease(lkey, timeout))

    async def _aping(self) -> None:
        await self._here().client.ping()

    def ping(self) -> None:
        _PrivateLoop.run(self._aping())

    async def _ascan_page(self, pattern: str, cursor: int) -> tuple[int, list[Any]]:
        found = await self._here().client.scan(cursor, match=pattern, count=1000)
        return int(found[0]), list(found[1])

    def scan_keys(self) -> Iterator[str]:
        for pattern in self._scan_patterns():
            cursor = 0
            while True:
                cursor, keys = _PrivateLoop.run(self._ascan_page(pattern, cursor))
                yield from map(_text, keys)
                if not cursor:
                    break

    async def _apipeline_here(self, commands: list[Command], raise_on_error: bool
                              ) -> list[Any]:
        return await self._apipeline(self._here().client, commands, raise_on_error)

    def _pipeline(self, commands: list[Command], raise_on_error: bool = True) -> list[Any]:
        return _PrivateLoop.run(self._apipeline_here(commands, raise_on_error))

    def redelivery_backend(self) -> AioredisCache:
        """This cache on clients that wait ``max(REDELIVERY_TIMEOUT, 10 *
        socket_timeout)`` seconds for Redis (see :meth:`RedisCache.redelivery_backend`)."""
        if self._redelivery is None:
            twin = copy.copy(self)
            twin._socket_timeout = self._redelivery_timeout
            twin._loop_clients = weakref.WeakKeyDictionary()
            self._redelivery = twin
        return self._redelivery  # type: ignore[return-value]
