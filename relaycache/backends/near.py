"""The near cache: entries and stamps kept in the process, kept fresh by Redis.

A :class:`NearCache` given to ``RedisCache(near_cache=...)`` holds the raw values of
entry and stamp keys that ``fetch`` brought from Redis, so that a hit whose entry and
stamps are all here makes no round trip. It stays correct by Redis server-assisted
invalidation: one connection per tracked node runs ``CLIENT TRACKING ON BCAST`` on the
value prefix and the stamp prefix, in RESP3, and Redis pushes a message on it for
every change of a key under them, by any client. Every lookup first drains, without
blocking, what is already on those sockets. The argument that this never serves what
a returned write replaced is in docs/consistency.md ("The near cache"); the comments
here point at its steps.

Nothing here blocks the hit path: the tracking sockets are non-blocking once set up,
and connecting (the only blocking step) happens on a miss, at most once per retry
interval. Django-free, like the rest of ``backends``.
"""

from __future__ import annotations

import logging
import os
import select
import ssl
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import SentinelConnectionPool

from ..core.stats import Stats

__all__ = ["NearCache", "RedisTracking", "Ticket", "TrackingSource", "can_track"]

logger = logging.getLogger("relaycache")

Ticket = tuple[int, int]
"""What a reader takes before asking Redis: the near cache's epoch and its count of
drained invalidations (see :meth:`NearCache.fill`)."""

_LOG_LENGTH = 4096
"""Invalidated keys remembered for the fill guard; a fill that spans more inserts
nothing."""
_BACKLOG_BYTES = 64 * 1024
"""Redis writes at most this much to one client per event-loop iteration: a drain that
reads this much may have more still queued in Redis, so it empties the near cache."""
_SLOT_OVERHEAD = 120
"""Bytes a local copy costs beyond its key and value (dict slot, tuple, headers):
an estimate that keeps ``max_bytes`` honest for small values."""
_READ_SIZE = _BACKLOG_BYTES  # a read that fills it may have left more behind
_RETRY_MIN, _RETRY_MAX = 0.5, 5.0
_PING = b"*1\r\n$4\r\nPING\r\n"
_FOREVER = float("inf")


# -- RESP3, as much as a tracking connection receives ------------------------------

class _Incomplete(Exception):
    """The buffer ends inside a frame: the rest has not arrived yet."""


class _Push(list[Any]):
    """A RESP3 push message (``>``), as opposed to a reply."""


class _ErrorReply:
    __slots__ = ("message",)

    def __init__(self, message: bytes) -> None:
        self.message = message.decode(errors="replace")


_AGGREGATES = frozenset(b"*~>%|")


def _frame(buf: bytes, pos: int) -> tuple[Any, int]:
    """The RESP3 frame at ``pos`` and the position after it; raises :class:`_Incomplete`
    if it has not fully arrived and ``ValueError`` on bytes that are not RESP3."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line, pos = buf[pos], buf[pos + 1:end], end + 2
    if kind in b"+,(":  # simple string, double, big number
        return line, pos
    if kind == ord("-"):
        return _ErrorReply(line), pos
    if kind == ord(":"):
        return int(line), pos
    if kind == ord("_"):
        return None, pos
    if kind == ord("#"):
        return line == b"t", pos
    if kind in b"$=!":  # blob string, verbatim string, blob error
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise _Incomplete
        data = buf[pos:pos + size]
        return (_ErrorReply(data) if kind == ord("!") else data), pos + size + 2
    if kind in _AGGREGATES:
        count = int(line)
        if count < 0:
            return None, pos
        items: list[Any] = []
        for _ in range(count * 2 if kind in b"%|" else count):
            item, pos = _frame(buf, pos)
            items.append(item)
        if kind == ord("|"):  # attributes precede the frame they describe
            return _frame(buf, pos)
        return (_Push(items) if kind == ord(">") else items), pos
    raise ValueError(f"not RESP3: type byte {kind!r}")


# -- the tracking connection ------------------------------------------------------

class _Link:
    """One tracking connection: a RESP3 connection with ``CLIENT TRACKING`` on, read
    without blocking once set up.

    redis-py opens it (TLS, AUTH, ``HELLO 3``, Sentinel's master lookup); from the
    ``CLIENT TRACKING`` command on, this class reads the socket itself, because a
    message may follow the command's reply in the same read and must not be left in
    redis-py's parser, where nothing would see it.
    """

    __slots__ = ("buffer", "confirmed", "connection", "fd", "ping_sent", "sock")

    def __init__(self, connection: Any, prefixes: tuple[str, ...]) -> None:
        self.connection = connection
        self.buffer = bytearray()
        self.ping_sent: float | None = None
        args = ["CLIENT", "TRACKING", "ON", "BCAST"]
        for prefix in prefixes:
            args += ["PREFIX", prefix]
        try:
            connection.connect()
            self.sock: Any = connection._sock  # redis-py keeps the socket there
            self.fd: int = self.sock.fileno()
            self.confirmed = time.monotonic()  # every write run after this is pushed
            self.sock.sendall(b"".join(connection.pack_command(*args)))
            reply = self._reply()  # blocking, within the connection's socket_timeout
            if reply != b"OK":
                message = reply.message if isinstance(reply, _ErrorReply) else repr(reply)
                raise redis.ResponseError(f"CLIENT TRACKING refused: {message}")
            self.sock.setblocking(False)
        except BaseException:
            connection.disconnect()
            raise

    def _reply(self) -> Any:
        while True:
            try:
                reply, used = _frame(bytes(self.buffer), 0)
            except _Incomplete:
                chunk = self.sock.recv(_READ_SIZE)
                if not chunk:
                    raise redis.ConnectionError("tracking connection closed") from None
                self.buffer += chunk
                continue
            del self.buffer[:used]  # what follows is already messages
            return reply

    def receive(self) -> int:
        """Read what the socket holds now, without blocking; the bytes read. A read
        that does not fill the buffer took all there was: no second read (what comes
        after it came after this drain began)."""
        received = 0
        while True:
            try:
                chunk = self.sock.recv(_READ_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError):
                return received
            if not chunk:
                raise redis.ConnectionError("tracking connection closed by the server")
            self.buffer += chunk
            received += len(chunk)
            if len(chunk) < _READ_SIZE and not self.pending_tls():
                return received

    def pending_tls(self) -> bool:
        """Decrypted bytes held by the TLS layer, which ``poll`` cannot see."""
        pending = getattr(self.sock, "pending", None)
        return bool(pending and pending())

    def frames(self) -> list[Any]:
        """The complete frames received; a partial one stays in :attr:`buffer`."""
        found: list[Any] = []
        data, pos = bytes(self.buffer), 0
        while pos < len(data):
            try:
                frame, pos_after = _frame(data, pos)
            except _Incomplete:
                break
            found.append(frame)
            pos = pos_after
        del self.buffer[:pos]
        return found

    def ping(self, now: float) -> None:
        if self.sock.send(_PING) != len(_PING):  # 14 bytes into an idle socket
            raise redis.ConnectionError("tracking connection cannot take a PING")
        self.ping_sent = now

    def close(self) -> None:
        # redis-py shuts the socket down only in the process that opened it, so a
        # forked child closing its copy leaves the parent's connection intact.
        self.connection.disconnect()


# -- where the tracking connections go --------------------------------------------

class TrackingSource(Protocol):
    """How a :class:`NearCache` reaches the nodes whose keys it holds."""

    prefixes: tuple[str, ...]
    """Key prefixes to track (BCAST ``PREFIX`` arguments), none a prefix of another."""
    stamp_prefix: str
    """The prefix of stamp keys: the only keys kept from after the first of a fetch."""
    errors: tuple[type[BaseException], ...]
    """Exceptions that mean "cannot connect now": retried later, never raised."""

    def connections(self) -> list[Any]:
        """New, unconnected RESP3 redis-py connections: one per node to track."""

    def identity(self) -> Hashable:
        """The nodes keys live on now (``None`` if it cannot change); compared with its
        value when tracking began, so a failover empties the near cache."""


def tracked_prefixes(*prefixes: str) -> tuple[str, ...]:
    """``prefixes`` without those another one covers: Redis refuses overlapping
    ``PREFIX`` arguments (``rc:`` covers ``rc:meta:t:``)."""
    return tuple(sorted(p for p in set(prefixes)
                        if not any(o != p and p.startswith(o) for o in prefixes)))


def _resp3(pool: Any) -> Any:
    """A new connection of ``pool``'s class and settings, in RESP3, connecting once,
    without the pool's ``redis_connect_func`` (the tracking connection reads and writes
    no keys) and without health checks (it answers only the PINGs this module sends)."""
    kwargs = dict(pool.connection_kwargs)
    kwargs.update(protocol=3, redis_connect_func=None, retry=Retry(NoBackoff(), 0),
                  health_check_interval=0)
    return pool.connection_class(**kwargs)


def can_track(client: redis.Redis | RedisCluster) -> bool:
    """Whether a near cache can track ``client``'s server: the platform can poll a
    socket without blocking, and the client connects through redis-py's own sockets
    (a test double such as fakeredis, or a connection class of one's own, is not
    assumed to reach a server that pushes invalidation messages)."""
    if not hasattr(select, "poll"):
        return False
    if isinstance(client, RedisCluster):
        node = client.get_default_node()
        if node is None or node.redis_connection is None:
            return False
        pool = node.redis_connection.connection_pool
    else:
        pool = client.connection_pool
    return bool(pool.connection_class._connect.__module__ == "redis.connection")


class RedisTracking:
    """The :class:`TrackingSource` of a ``RedisCache``: one connection to the server
    (to the current master on Sentinel), or one per primary on Cluster."""

    errors: tuple[type[BaseException], ...] = (redis.RedisError, RedisClusterException,
                                               OSError, ValueError)

    def __init__(self, client: redis.Redis | RedisCluster, value_prefix: str,
                 stamp_prefix: str) -> None:
        self.client = client
        self.stamp_prefix = stamp_prefix
        self.prefixes = tracked_prefixes(value_prefix, stamp_prefix)

    def connections(self) -> list[Any]:
        if isinstance(self.client, RedisCluster):
            return [_resp3(node.redis_connection.connection_pool)
                    for node in self.client.get_primaries()]
        return [_resp3(self.client.connection_pool)]

    def identity(self) -> Hashable:
        if isinstance(self.client, RedisCluster):
            return frozenset((node.host, node.port) for node in self.client.get_primaries())
        pool = self.client.connection_pool
        # The pool learns a new master when one of its connections asks Sentinel.
        return pool.master_address if isinstance(pool, SentinelConnectionPool) else None


# -- the near cache ---------------------------------------------------------------

_instances: weakref.WeakSet[NearCache] = weakref.WeakSet()


class NearCache:
    """Entries and stamps kept in the process, so that a hit makes no round trip.

    Give one to a ``RedisCache``: ``RedisCache(client, near_cache=NearCache())``. It
    is filled by the cache's reads, emptied of each key Redis reports changed, and
    never serves while it cannot be sure to hear of changes (docs/consistency.md, "The
    near cache"). Configure it in every process that writes to the cache: writes then
    wait until Redis has told every other process.

    :param max_entries: local copies kept at most (entries and stamps; least recently
        used go first).
    :param max_bytes: bytes they may take, counting keys, values and an estimate of
        the bookkeeping.
    :param heartbeat: seconds; the tracking connection is pinged every quarter of it
        while used, and the near cache serves only while a PING sent at most this long
        ago has been answered. It bounds how stale a read can be when the connection
        dies without the process noticing (a network partition).
    """

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 64 * 1024 * 1024, *,
                 heartbeat: float = 1.0) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be at least 1")
        if not heartbeat > 0:
            raise ValueError("heartbeat must be positive")
        if not hasattr(select, "poll"):  # Windows: no non-blocking check of the sockets
            raise RuntimeError("NearCache needs select.poll (Linux, macOS, BSD)")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.heartbeat = heartbeat
        self._source: TrackingSource | None = None
        self._stats = Stats()  # replaced by the cache's own when bound
        self._prefixes: tuple[str, ...] = ()
        self._stamp_prefix = ""
        self._reset_state()
        _instances.add(self)

    def _reset_state(self) -> None:
        """Empty, unconnected: at construction, and in a forked child (whose copy of a
        lock may be held by a thread that does not exist there)."""
        self._lock = threading.Lock()
        self._data: OrderedDict[str, tuple[Any, float, int]] = OrderedDict()
        self._bytes = 0
        self._epoch = 0
        self._seq = 0
        self._log: deque[tuple[int, str]] = deque(maxlen=_LOG_LENGTH)
        self._links: list[_Link] = []
        self._poll = select.poll()
        self._partial = False
        self._confirmed = -_FOREVER
        self._next_tick = 0.0
        self._identity: Hashable = None
        self._connecting = False
        self._connector: threading.Thread | None = None
        self._retry_at = 0.0
        self._retry_delay = _RETRY_MIN

    def __repr__(self) -> str:
        state = "tracking" if self._links else "not tracking"
        return (f"<NearCache {len(self._data)}/{self.max_entries} entries, "
                f"{self._bytes}/{self.max_bytes} bytes, {state}>")

    def __len__(self) -> int:
        return len(self._data)

    @property
    def nbytes(self) -> int:
        """Bytes the local copies take (see ``max_bytes``)."""
        return self._bytes

    @property
    def tracking(self) -> bool:
        """Whether tracking is established (otherwise nothing is served from here)."""
        return bool(self._links)

    def bind(self, source: TrackingSource, stats: Stats) -> None:
        """Attach to the cache whose keys ``source`` tracks; once: two caches cannot
        share one near cache (each invalidation would reach only one of them)."""
        if self._source is not None:
            raise ValueError("this NearCache already belongs to another cache: "
                             "give each RedisCache its own")
        self._source, self._stats = source, stats
        self._prefixes, self._stamp_prefix = source.prefixes, source.stamp_prefix

    # -- the read path ----------------------------------------------------------

    def lookup(self, keys: list[str]) -> list[Any] | None:
        """The local value of every key, or ``None`` unless all are here and may be
        served (a miss: ask Redis)."""
        with self._lock:
            if self._links:
                now = time.monotonic()
                ready = self._poll.poll(0)
                if ready or self._partial:
                    self._drain(ready)
                if now >= self._next_tick:
                    self._tick(now)
                # Serve only while tracking is up, no message is half-received and a
                # recent PING proves the connection still delivers.
                if self._links and not self._partial and (
                        now - self._confirmed <= self.heartbeat):
                    values = self._local(keys, now)
                    if values is not None:
                        self._stats.incr("near_hits")
                        return values
            self._stats.incr("near_misses")
            return None

    def _local(self, keys: list[str], now: float) -> list[Any] | None:
        data = self._data
        values = []
        for key in keys:
            slot = data.get(key)
            if slot is None:
                return None
            if slot[1] <= now:  # its TTL has passed: Redis no longer has it either
                self._drop(key)
                return None
            data.move_to_end(key)
            values.append(slot[0])
        return values

    def ticket(self) -> Ticket | None:
        """Take before sending the request whose reply :meth:`fill` inserts; ``None``
        while not tracking (nothing may be inserted then)."""
        with self._lock:
            return (self._epoch, self._seq) if self._links else None

    def fill(self, ticket: Ticket, keys: list[str], values: list[Any],
             first_expires: float) -> None:
        """Insert what Redis returned for ``keys`` after ``ticket`` was taken: the
        first key (an entry) if it is tracked, expiring at ``first_expires`` (a
        ``time.monotonic()`` time, from its ``PTTL``), and the stamp keys among the
        others (whose TTLs are not read: a stamp's expiry changes no data, and its
        deletion is pushed). Absent keys and keys invalidated since the ticket are left
        out; nothing is inserted if tracking was lost or re-established meanwhile."""
        with self._lock:
            if self._links:
                self._drain(self._poll.poll(0))  # messages here may concern these keys
            epoch, seq = ticket
            if epoch != self._epoch:
                return
            invalidated: set[str] = set()
            if seq != self._seq:
                if self._seq - seq > len(self._log):
                    return  # some keys invalidated since are forgotten: insert nothing
                for logged, key in reversed(self._log):
                    if logged <= seq:
                        break
                    invalidated.add(key)
            first, *stamps = zip(keys, values, strict=True)
            if first[1] is not None and first[0] not in invalidated and first[0].startswith(
                    self._prefixes):
                self._insert(first[0], first[1], first_expires)
            for key, value in stamps:
                if (value is not None and key not in invalidated
                        and key.startswith(self._stamp_prefix)):
                    self._insert(key, value, _FOREVER)

    def _insert(self, key: str, value: Any, expires: float) -> None:
        self._drop(key)
        size = len(key) + len(value) + _SLOT_OVERHEAD
        if size > self.max_bytes:
            return
        data = self._data
        data[key] = (value, expires, size)
        self._bytes += size
        while len(data) > self.max_entries or self._bytes > self.max_bytes:
            self._bytes -= data.popitem(last=False)[1][2]
            self._stats.incr("near_evictions")

    def _drop(self, key: str) -> None:
        slot = self._data.pop(key, None)
        if slot is not None:
            self._bytes -= slot[2]

    # -- invalidation -------------------------------------------------------------

    def evict(self, keys: list[str]) -> None:
        """This process wrote ``keys``: drop them now, not when Redis's message comes,
        and keep fills that read them before the write from inserting them."""
        with self._lock:
            self._invalidate(keys)

    def _invalidate(self, keys: list[str]) -> None:
        log = self._log
        for key in keys:
            self._seq += 1
            log.append((self._seq, key))
            self._drop(key)

    def clear(self) -> None:
        """Empty the near cache (tracking stays up)."""
        with self._lock:
            self._forget()

    def _forget(self) -> None:
        """Empty, and refuse every fill that began before (a new epoch)."""
        self._data.clear()
        self._bytes = 0
        self._epoch += 1
        self._log.clear()

    def _drain(self, ready: list[tuple[int, int]]) -> None:
        """Handle every message already received, without blocking (``ready``: what
        ``poll`` reported)."""
        readable = {fd for fd, _ in ready}
        try:
            for link in self._links:
                if ((link.fd in readable or link.pending_tls())
                        and link.receive() >= _BACKLOG_BYTES):
                    self._forget()  # Redis may hold more for us still: what, is unknown
                for frame in link.frames():
                    self._handle(link, frame)
            self._partial = any(link.buffer for link in self._links)
        except self._link_errors() as exc:
            self._lose(f"tracking connection lost: {exc}")

    def _handle(self, link: _Link, frame: Any) -> None:
        if isinstance(frame, _Push):
            if frame and frame[0] == b"invalidate":
                if frame[1] is None:  # FLUSHALL / FLUSHDB
                    self._forget()
                else:
                    self._invalidate([key.decode(errors="surrogateescape")
                                      for key in frame[1]])
            return  # other pushes are not ours
        if frame == b"PONG" and link.ping_sent is not None:
            # Every message Redis generated before it ran the PING came before this.
            link.confirmed, link.ping_sent = link.ping_sent, None
            self._confirmed = min(other.confirmed for other in self._links)
            return
        message = frame.message if isinstance(frame, _ErrorReply) else repr(frame)
        raise redis.ResponseError(f"unexpected reply on the tracking connection: {message}")

    def _tick(self, now: float) -> None:
        """Every quarter of ``heartbeat``: check that the tracked nodes are still the
        ones keys live on, and ping each connection (declaring dead one whose PING went
        unanswered for two heartbeats)."""
        self._next_tick = now + self.heartbeat / 4
        assert self._source is not None
        try:
            if self._identity is not None and self._source.identity() != self._identity:
                self._lose("the Redis nodes changed (failover)")
                return
            for link in self._links:
                if link.ping_sent is None:
                    link.ping(now)
                elif now - link.ping_sent > 2 * self.heartbeat:
                    self._lose("the tracking connection stopped answering")
                    return
        except self._link_errors() as exc:
            self._lose(f"tracking connection lost: {exc}")

    def _link_errors(self) -> tuple[type[BaseException], ...]:
        return self._source.errors if self._source is not None else (OSError,)

    def _lose(self, reason: str) -> None:
        """Messages may have been missed: drop everything, and serve nothing until a
        new connection is tracking."""
        logger.warning("relaycache: near cache emptied: %s", reason)
        self._stats.incr("near_resets")
        for link in self._links:
            self._poll.unregister(link.fd)
            link.close()
        self._links = []
        self._partial = False
        self._retry_at = 0.0
        self._forget()

    # -- connecting -----------------------------------------------------------------

    def wants_connection(self) -> bool:
        """Whether :meth:`connect` would try now (a hint, read without the lock)."""
        return not self._links and not self._connecting and (
            time.monotonic() >= self._retry_at)

    def connect_soon(self) -> None:
        """Start :meth:`connect` on a thread of its own if a try is due, and return at
        once: an event loop must neither wait for a connection nor lend its executor
        to one. Reads go to Redis until tracking is up."""
        if self.wants_connection():
            self._connector = threading.Thread(target=self.connect, daemon=True,
                                               name="relaycache-near-connect")
            self._connector.start()

    def connect(self) -> None:
        """Open the tracking connections if none are up and a try is due (blocking,
        within the cache's socket timeout: call it on a miss, or in a thread)."""
        source = self._source
        with self._lock:
            if source is None or self._links or self._connecting or (
                    time.monotonic() < self._retry_at):
                return
            self._connecting = True
        links: list[_Link] = []
        try:
            for connection in source.connections():
                links.append(_Link(connection, source.prefixes))
            identity = source.identity()
        except Exception as exc:  # without tracking the near cache serves nothing: safe
            for link in links:
                link.close()
            with self._lock:
                self._connecting = False
                first = self._retry_delay == _RETRY_MIN
                self._retry_at = time.monotonic() + self._retry_delay
                self._retry_delay = min(2 * self._retry_delay, _RETRY_MAX)
            # Once per outage (the cache's own calls report each failure already), with
            # the traceback if it is not the usual "cannot reach Redis".
            logger.log(logging.WARNING if first else logging.DEBUG,
                       "relaycache: near cache cannot track changes, serving nothing "
                       "from it: %s", exc, exc_info=not isinstance(exc, source.errors))
            return
        logger.info("relaycache: near cache tracking changes on %d connection(s)",
                    len(links))
        with self._lock:
            self._connecting = False
            self._links = links
            self._identity = identity
            self._retry_delay = _RETRY_MIN
            for link in links:
                self._poll.register(link.fd, select.POLLIN)
            self._confirmed = min(link.confirmed for link in links)
            self._next_tick = time.monotonic() + self.heartbeat / 4
            # A fill whose request went out before tracking began might insert what a
            # write changed unseen: only tickets from now on count.
            self._forget()
            self._drain(self._poll.poll(0))  # and what came with the TRACKING reply

    def _after_fork_in_child(self) -> None:
        for link in self._links:
            link.close()
        self._reset_state()


def _reset_in_child() -> None:
    for near in list(_instances):
        near._after_fork_in_child()


os.register_at_fork(after_in_child=_reset_in_child)
