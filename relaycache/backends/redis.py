"""Redis backend: plain, Sentinel-managed or Cluster clients from redis-py."""

from __future__ import annotations

import asyncio
import inspect
import time
import weakref
from collections.abc import Iterator
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import OutOfMemoryError, RedisClusterException
from redis.retry import Retry
from redis.sentinel import SentinelConnectionPool

from .base import BaseCache, KeyDescription
from .flow import new_token

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

# KEYS: lease; ARGV: token. Only the owner releases; waiters are woken on its channel.
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[1], '1')
end
return 1
"""

_GLOB_SPECIALS = str.maketrans({c: "\\" + c for c in "*?[]\\"})


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


SERVER_TAG = "__server__"
"""Carried by every entry of a plain or Sentinel ``RedisCache``; see :class:`_RestartGuard`."""


def _run_id(info: Any) -> str | None:
    text: str = _text(info)
    for line in text.splitlines():
        if line.startswith("run_id:"):
            return line[len("run_id:"):].strip()
    return None


class _RestartGuard:
    """Runs on every new connection (redis-py's ``redis_connect_func``).

    If the server is not the one whose ``run_id`` this cache recorded in it, the server
    restarted (perhaps from an RDB or AOF file holding old entries) or a replica took
    over (asynchronous replication may have lost recent stamp replacements). Either
    way, invalidations may have been lost: the stamp of :data:`SERVER_TAG`, which every
    entry carries, is replaced, so nothing stored before is served again. Without
    INFO (an ACL denies it), the check is skipped: docs/redis.md lists the commands.
    """

    def __init__(self, server_key: str, stamp_key: str, stamp_ttl_ms: int) -> None:
        self.server_key = server_key
        self.stamp_key = stamp_key
        self.stamp_ttl_ms = stamp_ttl_ms
        self.last_run_id: str | None = None  # the server this process last talked to

    def _changed(self, run_id: str, recorded: Any) -> bool:
        """A server other than the recorded one, or than the one this process knew:
        a process that wrote to a deposed master must distrust entries that processes
        connected to the new master stored meanwhile (its writes there are lost)."""
        known, self.last_run_id = self.last_run_id, run_id
        return _text(recorded) != run_id or (known is not None and known != run_id)

    def _commands(self, run_id: str) -> list[tuple[Any, ...]]:
        return [("SET", self.stamp_key, new_token(), "PX", self.stamp_ttl_ms),
                ("SET", self.server_key, run_id)]

    def __call__(self, connection: Any) -> None:
        connection.on_connect()
        connection.send_command("INFO", "server")
        try:
            run_id = _run_id(connection.read_response())
        except redis.ResponseError:  # INFO denied by an ACL, or not implemented
            return
        connection.send_command("GET", self.server_key)
        if run_id is None or not self._changed(run_id, connection.read_response()):
            return
        for command in self._commands(run_id):
            connection.send_command(*command)
            connection.read_response()

    async def on_async_connect(self, connection: Any) -> None:
        await connection.on_connect()
        await connection.send_command("INFO", "server")
        try:
            run_id = _run_id(await connection.read_response())
        except redis.ResponseError:
            return
        await connection.send_command("GET", self.server_key)
        if run_id is None or not self._changed(run_id, await connection.read_response()):
            return
        for command in self._commands(run_id):
            await connection.send_command(*command)
            await connection.read_response()


def _current_stamps(previous: list[Any], tokens: list[str]) -> list[str]:
    """Merge the replies of ``SET stamp token NX GET``: the old stamp, or ours if none."""
    return [_text(old) if old is not None else new
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


Command = tuple[tuple[Any, ...], dict[str, Any]]
"""A command's arguments and redis-py's options for its reply callback."""


def _command(*args: Any, **options: Any) -> Command:
    return args, options


class _LoopClient:
    """The asyncio client of one event loop, with its scripts (sent as ``EVALSHA``)."""

    __slots__ = ("client", "release", "store")

    def __init__(self, client: Any) -> None:
        self.client = client
        self.store = client.register_script(_STORE_IF_CURRENT)
        self.release = client.register_script(_RELEASE_LEASE)


def _refused_for_memory(exc: redis.ResponseError) -> bool:
    """A write refused by a full server under ``noeviction``."""
    return isinstance(exc, OutOfMemoryError) or "maxmemory" in str(exc)


class RedisCache(BaseCache):
    """Tag-stamped cache on Redis.

    :param client: a ``redis.Redis`` (``decode_responses`` either way, from a URL or a
        Sentinel ``master_for``) or a ``redis.cluster.RedisCluster``. It is kept as
        :attr:`redis_client`; cache calls run on a clone with bounded timeouts.
    :param socket_timeout: seconds a cache call may wait on Redis (connect or reply),
        whatever the client's own timeouts: a slow cache must cost little.
    Other options are :class:`~relaycache.backends.base.BaseCache`'s.
    """

    # RedisClusterException (no slot owner reachable) does not derive from RedisError.
    errors = (redis.RedisError, RedisClusterException, OSError)

    def __init__(self, client: redis.Redis | RedisCluster, default_ttl: float | None = 3600,
                 *, socket_timeout: float = 0.5, **options: Any) -> None:
        if not isinstance(client, (redis.Redis, RedisCluster)):
            raise TypeError(
                f"RedisCache needs a redis.Redis or RedisCluster client, got {type(client)!r}"
            )
        super().__init__(default_ttl=default_ttl, **options)
        self.redis_client = client
        self.is_cluster = isinstance(client, RedisCluster)
        self._guard_restarts: _RestartGuard | None = None
        self._client: Any
        if isinstance(client, RedisCluster):
            self._client = _bounded_cluster(client, socket_timeout)
        else:
            self.implicit_tags = (SERVER_TAG,)
            self._guard_restarts = _RestartGuard(
                f"{self.meta_prefix}server", self.stamp_keys([SERVER_TAG])[0],
                int(self.stamp_ttl * 1000))
            self._client = _bounded_client(client, socket_timeout, self._guard_restarts)
        self._store_script = None if self.is_cluster else self._client.register_script(
            _STORE_IF_CURRENT)
        self._release_script = self._client.register_script(_RELEASE_LEASE)
        self._loop_clients: weakref.WeakKeyDictionary[Any, _LoopClient | None] = (
            weakref.WeakKeyDictionary())

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

    def _pipeline(self, commands: list[Command], raise_on_error: bool = True
                  ) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command[0], **command[1])
        return list(pipe.execute(raise_on_error=raise_on_error))

    @staticmethod
    async def _apipeline(client: Any, commands: list[Command]) -> list[Any]:
        async with client.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command[0], **command[1])
            return list(await pipe.execute())

    # -- the storage contract, sync ------------------------------------------------

    def fetch(self, keys: list[str]) -> list[Any]:
        # execute_command() rather than mget(): the same MGET, without the option
        # plumbing for client-side caching (off on our clients), about 3 µs a hit.
        if self.is_cluster:
            return list(self._client.mget_nonatomic(keys))
        return list(self._client.execute_command("MGET", *keys))

    def acquire_stamps(self, skeys: list[str]) -> list[str]:
        tokens, commands = self._acquire_commands(skeys)
        return _current_stamps(self._pipeline(commands), tokens)

    def store_if_current(self, vkey: str, raw: bytes, skeys: list[str], stamps: list[str],
                         ttl_ms: int | None) -> bool:
        if self._store_script is not None:
            args = [raw, "" if ttl_ms is None else ttl_ms, *stamps]
            return bool(self._store_script(keys=[vkey, *skeys], args=args))
        # Cluster: stamps live in other slots, so the check cannot be atomic with the
        # write. That is still safe: readers compare the entry's stamps with the
        # current ones, so a result stored after an invalidation is never served.
        if skeys and [_text(v) for v in self._client.mget_nonatomic(skeys)] != stamps:
            return False
        self._client.set(vkey, raw, px=ttl_ms)
        return True

    def replace_stamps(self, skeys: list[str]) -> bool:
        try:
            self._pipeline(self._replace_commands(skeys))
        except redis.ResponseError as exc:
            if not _refused_for_memory(exc):
                raise
            return False
        return True

    def delete_keys(self, keys: list[str]) -> None:
        if not keys:
            return
        if self.is_cluster:
            self._pipeline([_command("UNLINK", key) for key in keys])
        else:
            self._client.unlink(*keys)

    def clear(self) -> None:
        batch: list[Any] = []
        for key in self.scan_keys():
            batch.append(key)
            if len(batch) >= 500:
                self.delete_keys(batch)
                batch = []
        self.delete_keys(batch)

    def acquire_lease(self, lkey: str, token: str, ttl_ms: int) -> bool:
        return bool(self._client.set(lkey, token, nx=True, px=ttl_ms))

    def release_lease(self, lkey: str, token: str) -> None:
        self._release_script(keys=[lkey], args=[token])

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

    def scan_keys(self) -> Iterator[str]:
        prefixes = [self.value_prefix]
        if not self.meta_prefix.startswith(self.value_prefix):
            prefixes.append(self.meta_prefix)
        for prefix in prefixes:
            for key in self._client.scan_iter(match=prefix.translate(_GLOB_SPECIALS) + "*",
                                              count=1000):
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

    # -- the storage contract, async -----------------------------------------------

    def _loop_client(self) -> _LoopClient | None:
        """This event loop's client; ``None``: run the sync primitive in a thread
        (Cluster and Sentinel, whose asyncio clients cannot be derived)."""
        loop = asyncio.get_running_loop()
        if loop not in self._loop_clients:
            client = None if self.is_cluster else _async_client(self._client,
                                                                self._guard_restarts)
            self._loop_clients[loop] = None if client is None else _LoopClient(client)
        return self._loop_clients[loop]

    async def afetch(self, keys: list[str]) -> list[Any]:
        loop_client = self._loop_client()
        if loop_client is None:
            return await asyncio.to_thread(self.fetch, keys)
        return list(await loop_client.client.execute_command("MGET", *keys))

    async def aacquire_stamps(self, skeys: list[str]) -> list[str]:
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
        args = [raw, "" if ttl_ms is None else ttl_ms, *stamps]
        return bool(await loop_client.store(keys=[vkey, *skeys], args=args))

    async def areplace_stamps(self, skeys: list[str]) -> bool:
        loop_client = self._loop_client()
        if loop_client is None:
            return await asyncio.to_thread(self.replace_stamps, skeys)
        try:
            await self._apipeline(loop_client.client, self._replace_commands(skeys))
        except redis.ResponseError as exc:
            if not _refused_for_memory(exc):
                raise
            return False
        return True

    async def adelete_keys(self, keys: list[str]) -> None:
        loop_client = self._loop_client()
        if loop_client is None or not keys:
            await asyncio.to_thread(self.delete_keys, keys)
            return
        await loop_client.client.unlink(*keys)

    async def aclear(self) -> None:
        await asyncio.to_thread(self.clear)

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

    async def await_lease(self, lkey: str, timeout: float) -> None:
        loop_client = self._loop_client()
        if loop_client is None:
            await asyncio.to_thread(self.wait_lease, lkey, timeout)
            return
        client = loop_client.client
        deadline = time.monotonic() + timeout
        async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
            await pubsub.subscribe(lkey)
            while True:
                left_ms = await client.pttl(lkey)
                remaining = deadline - time.monotonic()
                if left_ms < 0 or remaining <= 0:
                    return
                if await pubsub.get_message(timeout=min(left_ms / 1000, remaining, 1.0)):
                    return
