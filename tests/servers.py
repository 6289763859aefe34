"""Throwaway redis-server processes for the real-server tests.

Each server is a ``redis-server`` child started with :class:`subprocess.Popen` on a free
loopback port, in its own temporary directory, without persistence unless asked for,
and always killed at teardown. Nothing here touches the machine's main Redis.

Test modules use the fixtures with ``pytest_plugins = ("tests.servers",)``:

- ``redis_server``: a fresh server for one test;
- ``redis_server_factory``: build more (``persist=True``, extra arguments...);
- ``redis_cluster``: a 3-master Redis Cluster shared by one test module;
- ``shared_redis_cluster``: a 3-master Redis Cluster shared by every module of the
  session that uses it (for tests that leave its topology alone);
- ``redis_cluster_with_replicas``: 3 masters with one replica each, for one module;
- ``redis_sentinel``: a master, a replica and 3 Sentinels (``redis-server --sentinel``);
- ``tcp_proxy_factory``: a loopback TCP proxy to a server that can add latency or
  black-hole the traffic (:class:`TcpProxy`);
- ``logical_postgres``: a throwaway PostgreSQL cluster with ``wal_level=logical`` for
  the session (:class:`PostgresCluster`; the machine's main cluster is left alone);
- ``postgres_replica``: a throwaway primary cluster and a streaming replica of it,
  whose replay a test can pause (:class:`PostgresReplica`).

If ``redis-server`` (or ``redis-cli`` for the cluster) is not installed the fixtures
skip, which ``RELAYCACHE_STRICT=1`` turns into a failure.

PYTEST_DONT_REWRITE: test modules import helpers from here before ``pytest_plugins``
registers it, so pytest could not rewrite its asserts anyway (and would warn).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

HOST = "127.0.0.1"
# Below the kernel's ephemeral range (32768+), so a client's outgoing connection can
# never take the port of a server that is being restarted; +10000 is the cluster bus.
_PORT_RANGE = (20000, 29999)
_BUS_OFFSET = 10000

_live: set[RedisServer] = set()


def redis_server_binary() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None)


def redis_cli_binary() -> str | None:
    return shutil.which("redis-cli") or (
        "/usr/bin/redis-cli" if os.access("/usr/bin/redis-cli", os.X_OK) else None)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(cluster: bool = False) -> int:
    """A loopback port nobody listens on (and its cluster bus port, if asked)."""
    for _ in range(200):
        port = random.randint(*_PORT_RANGE)
        if _bindable(port) and (not cluster or _bindable(port + _BUS_OFFSET)):
            return port
    raise RuntimeError("no free loopback port found")


class RedisServer:
    """One ``redis-server`` process on ``127.0.0.1:port``, restartable on that port.

    :param persist: keep ``dump.rdb`` in the server's directory across restarts (the
        server loads it at start). Without it, each start begins empty.
    :param extra_args: more ``redis-server`` command-line arguments.
    """

    def __init__(self, *, port: int | None = None, persist: bool = False,
                 extra_args: tuple[str, ...] = (), cluster: bool = False) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise FileNotFoundError("redis-server is not installed")
        self.binary = binary
        self.cluster = cluster
        self.port = port or free_port(cluster)
        self.persist = persist
        self.extra_args = tuple(extra_args)
        self.dir = Path(tempfile.mkdtemp(prefix=f"relaycache-redis-{self.port}-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False

    # -- lifecycle ------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.process is not None, "server not running"
        return self.process.pid

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def rdb_path(self) -> Path:
        return self.dir / "dump.rdb"

    @property
    def log_path(self) -> Path:
        return self.dir / "redis.log"

    def command_line(self) -> list[str]:
        return [
            self.binary, "--port", str(self.port), "--bind", HOST,
            "--dir", str(self.dir), "--dbfilename", "dump.rdb",
            "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--logfile", str(self.log_path), "--protected-mode", "yes",
            *self.extra_args,
        ]

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the process and wait until it answers PING."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        if not self.persist and self.rdb_path.exists():
            self.rdb_path.unlink()
        self.process = subprocess.Popen(self.command_line(), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.paused = False
        _live.add(self)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                stderr = self.process.stderr.read().decode(errors="replace") if (
                    self.process.stderr) else ""
                raise RuntimeError(
                    f"redis-server on port {self.port} exited with {self.process.returncode}:"
                    f" {stderr}\n{self.log()}")
            try:
                with self.client() as probe:
                    # A server still loading its RDB is not ready: wait for the data.
                    if probe.ping() and probe.info("persistence").get("loading", 0) == 0:
                        return self
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING "
                                   f"within {timeout}s\n{self.log()}")
            time.sleep(0.02)

    def kill(self) -> None:
        """Stop the process at once (SIGKILL, like a crash): nothing is saved."""
        if self.process is None:
            return
        if self.paused:
            self.resume()
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(timeout=10)
        finally:
            if self.process.stderr:
                self.process.stderr.close()
            self.process = None
            _live.discard(self)

    stop = kill

    def restart(self, timeout: float = 10.0) -> RedisServer:
        """Kill and start again on the same port (with ``dump.rdb`` if ``persist``)."""
        self.kill()
        return self.start(timeout)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing."""
        os.kill(self.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.paused and self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
        self.paused = False

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers --------------------------------------------------------------------

    def client(self, **options: Any) -> redis.Redis:
        """A client with short timeouts, for the test's own bookkeeping."""
        options.setdefault("socket_timeout", 5)
        options.setdefault("socket_connect_timeout", 2)
        return redis.Redis(host=HOST, port=self.port, **options)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def __repr__(self) -> str:
        state = "running" if self.process is not None else "stopped"
        return f"<RedisServer {HOST}:{self.port} {state}>"


def command_stats(client: redis.Redis) -> dict[str, int]:
    """``INFO commandstats`` as ``{command: calls}`` (lower case, ``|`` for subcommands)."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(fields["calls"])
            for name, fields in stats.items()}


def reset_stats(client: redis.Redis) -> None:
    client.config_resetstat()


# A replica's first sync starts at once (Redis 7 waits 5 s by default before a
# diskless sync, in case more replicas come).
REPLICATION_ARGS = ("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0")


class RedisClusterProcesses:
    """Cluster-enabled masters on loopback (and ``replicas`` replicas of each), joined
    by ``redis-cli --cluster create``."""

    def __init__(self, masters: int = 3, node_timeout_ms: int = 15000,
                 replicas: int = 0) -> None:
        self.masters = masters
        self.replicas = replicas
        self.servers = [
            RedisServer(cluster=True, extra_args=(
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
                *(REPLICATION_ARGS if replicas else ())))
            for _ in range(masters * (1 + replicas))
        ]

    @property
    def ports(self) -> list[int]:
        return [server.port for server in self.servers]

    def start(self, timeout: float = 30.0) -> RedisClusterProcesses:
        cli = redis_cli_binary()
        if cli is None:
            raise FileNotFoundError("redis-cli is not installed")
        for server in self.servers:
            server.start()
        create = subprocess.run(
            [cli, "--cluster", "create", *(f"{HOST}:{p}" for p in self.ports),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False)
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: "
                               f"{create.stdout.decode()} {create.stderr.decode()}")
        self.wait_ok(timeout)
        if self.replicas:
            self.wait_replicas_synced(timeout)
        return self

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every node reports ``cluster_state:ok`` with all slots and nodes known."""
        deadline = time.monotonic() + timeout
        while True:
            states: list[Any] = []
            for server in self.servers:
                try:
                    with server.client() as node:
                        states.append(node.execute_command("CLUSTER INFO"))
                except redis.RedisError as exc:
                    states.append(repr(exc))
            if all(isinstance(s, dict) and s.get("cluster_state") == "ok"
                   and str(s.get("cluster_slots_ok")) == "16384"
                   and str(s.get("cluster_known_nodes")) == str(len(self.servers))
                   for s in states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not ok within {timeout}s: {states}")
            time.sleep(0.1)

    def node_clients(self) -> list[redis.Redis]:
        return [server.client() for server in self.servers]

    def roles(self) -> dict[int, dict[str, Any]]:
        """``INFO replication`` of every node, by port."""
        roles = {}
        for server in self.servers:
            with server.client() as node:
                roles[server.port] = node.info("replication")
        return roles

    def wait_replicas_synced(self, timeout: float = 30.0) -> None:
        """Until every master has its replicas, each with its link up."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                roles = self.roles()
            except redis.RedisError as exc:
                roles = {0: {"error": repr(exc)}}
            replicas = [r for r in roles.values() if r.get("role") == "slave"]
            masters = [r for r in roles.values() if r.get("role") == "master"]
            if (len(masters) == self.masters
                    and len(replicas) == self.masters * self.replicas
                    and all(r.get("master_link_status") == "up" for r in replicas)
                    and all(r.get("connected_slaves") == self.replicas for r in masters)
                    and self.views_agree()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"replicas not in sync within {timeout}s: {roles}")
            time.sleep(0.1)

    def views_agree(self) -> bool:
        """Every node's ``CLUSTER NODES`` names the same masters and replicas (a replica
        can only be promoted once the masters that vote know whose replica it is)."""
        views = []
        try:
            for server in self.servers:
                with server.client() as node:
                    nodes = node.execute_command("CLUSTER NODES")
                views.append(sorted(
                    (info["node_id"], "slave" in info["flags"], info["master_id"],
                     str(info["slots"]))
                    for info in nodes.values()
                    if not {"fail", "fail?", "handshake", "noaddr"} & set(
                        info["flags"].split(","))))
        except redis.RedisError:
            return False
        return len(views[0]) == len(self.servers) and all(v == views[0] for v in views)

    def server(self, port: int) -> RedisServer:
        return next(server for server in self.servers if server.port == port)

    def node_id(self, port: int) -> str:
        with self.server(port).client() as node:
            return _text(node.execute_command("CLUSTER MYID"))

    def master_ports(self) -> list[int]:
        return sorted(port for port, info in self.roles().items() if info.get("role") == "master")

    def replica_of(self, master_port: int) -> int:
        """The port of a replica of the master on ``master_port``."""
        for port, info in self.roles().items():
            if info.get("role") == "slave" and int(info.get("master_port", 0)) == master_port:
                return port
        raise LookupError(f"no replica of {master_port}")

    def cleanup(self) -> None:
        for server in self.servers:
            server.cleanup()


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


# -- Sentinel -----------------------------------------------------------------------


def _flags(state: dict[str, Any]) -> list[str]:
    flags = state["flags"]
    return sorted(flags.split(",") if isinstance(flags, str) else flags)


class SentinelServer(RedisServer):
    """``redis-server sentinel.conf --sentinel`` monitoring the master on ``master_port``
    as ``name``. The configuration file is its own (Sentinel rewrites it)."""

    def __init__(self, master_port: int, *, name: str = "mymaster", quorum: int = 2,
                 down_after_ms: int = 1000, failover_timeout_ms: int = 3000) -> None:
        super().__init__()
        self.conf_path = self.dir / "sentinel.conf"
        self.conf_path.write_text("\n".join([
            f"port {self.port}", f"bind {HOST}", "daemonize no", "protected-mode no",
            f'dir "{self.dir}"', f'logfile "{self.log_path}"',
            f"sentinel monitor {name} {HOST} {master_port} {quorum}",
            f"sentinel down-after-milliseconds {name} {down_after_ms}",
            f"sentinel failover-timeout {name} {failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1", ""]))

    def command_line(self) -> list[str]:
        return [self.binary, str(self.conf_path), "--sentinel"]


class RedisSentinelProcesses:
    """A master, one replica and ``sentinels`` Sentinels on loopback, all processes of
    their own. ``replica_args`` are more arguments of the replica's command line."""

    def __init__(self, name: str = "mymaster", sentinels: int = 3, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 3000, replica_args: tuple[str, ...] = ()) -> None:
        self.name = name
        self.master = RedisServer(extra_args=REPLICATION_ARGS)
        self.replica = RedisServer(extra_args=(*REPLICATION_ARGS, *replica_args))
        self.sentinel_count = sentinels
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.sentinels: list[SentinelServer] = []

    @property
    def servers(self) -> list[RedisServer]:
        return [self.master, self.replica]

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [(HOST, s.port) for s in self.sentinels]

    def start(self, timeout: float = 30.0) -> RedisSentinelProcesses:
        self.master.start()
        self.replica.extra_args = (*self.replica.extra_args,
                                   "--replicaof", HOST, str(self.master.port))
        self.replica.start()
        self.sentinels = [
            SentinelServer(self.master.port, name=self.name, quorum=2,
                           down_after_ms=self.down_after_ms,
                           failover_timeout_ms=self.failover_timeout_ms)
            for _ in range(self.sentinel_count)
        ]
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_ready(timeout)
        return self

    def role(self, server: RedisServer) -> dict[str, Any]:
        with server.client() as node:
            return node.info("replication")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the replica is in sync and every Sentinel knows it and the others."""
        deadline = time.monotonic() + timeout
        expected = ([(self.replica.port, ["slave"])], self.sentinel_count - 1)
        while True:
            state: dict[Any, Any] = {}
            try:
                state["replica"] = self.role(self.replica).get("master_link_status")
                for sentinel in self.sentinels:
                    with sentinel.client() as probe:
                        replicas = probe.sentinel_slaves(self.name)
                        others = probe.sentinel_sentinels(self.name)
                    state[sentinel.port] = (
                        [(r["port"], _flags(r)) for r in replicas], len(others))
            except redis.RedisError as exc:
                state["error"] = repr(exc)
            views = [v for k, v in state.items() if k not in ("replica", "error")]
            if (state.get("replica") == "up" and len(views) == self.sentinel_count
                    and all(view == expected for view in views)):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"sentinels not ready within {timeout}s: {state}")
            time.sleep(0.1)

    def master_port_seen_by_sentinels(self) -> set[int]:
        ports = set()
        for sentinel in self.sentinels:
            with sentinel.client() as probe:
                address = probe.sentinel_get_master_addr_by_name(self.name)
            ports.add(int(address[1]) if address else 0)
        return ports

    def request_failover(self, timeout: float = 10.0) -> None:
        """``SENTINEL FAILOVER`` (retried while the Sentinel finds no good replica)."""
        deadline = time.monotonic() + timeout
        with self.sentinels[0].client() as sentinel:
            while True:
                try:
                    sentinel.execute_command("SENTINEL FAILOVER", self.name)
                    return
                except redis.ResponseError as exc:  # NOGOODSLAVE until it is known
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"SENTINEL FAILOVER refused: {exc}") from exc
                    time.sleep(0.2)

    def _wait(self, what: str, done: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if done():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not done within {timeout}s")
            time.sleep(0.05)

    def wait_promoted(self, new: RedisServer, timeout: float = 15.0) -> None:
        """Until every Sentinel names ``new`` as the master and it says ``role:master``."""
        self._wait("promotion", lambda: self.master_port_seen_by_sentinels() == {new.port}
                   and self.role(new).get("role") == "master", timeout)

    def wait_converted(self, old: RedisServer, new: RedisServer, timeout: float = 20.0
                       ) -> None:
        """Until the old master replicates from the new one, in sync. Sentinel waits
        about 8 s after the promotion before it turns the old master into a replica
        (and kills its client connections)."""
        self._wait("conversion of the old master", lambda: (
            (role := self.role(old)).get("role") == "slave"
            and int(role.get("master_port", 0)) == new.port
            and role.get("master_link_status") == "up"), timeout)

    def failover(self, timeout: float = 30.0) -> RedisServer:
        """A complete Sentinel failover: ``SENTINEL FAILOVER``, the replica promoted,
        the old master turned into its replica. Returns the new master;
        :attr:`master` and :attr:`replica` are swapped."""
        old, new = self.master, self.replica
        self.request_failover()
        self.wait_promoted(new, timeout)
        self.wait_converted(old, new, timeout)
        self.master, self.replica = new, old
        return new

    def cleanup(self) -> None:
        for server in (*self.sentinels, self.master, self.replica):
            server.cleanup()


# -- a proxy that can slow down or black-hole a server ------------------------------------


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:upstream_port``, one pair of threads
    per connection.

    - ``delay``: seconds added before each chunk of the server's replies is forwarded;
    - :meth:`blackhole`: nothing is forwarded in either direction and new connections
      are accepted but never served, like a network path that silently drops packets
      (the bytes are held, not lost, so a connection that survives resumes intact);
    - :meth:`heal`: back to normal; :meth:`reset` closes every connection.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.delay = 0.0
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self.connections = 0
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, 0))
        self._listener.listen(128)
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self._acceptor.start()

    @property
    def blackholed(self) -> bool:
        return not self._flowing.is_set()

    def blackhole(self) -> None:
        self._flowing.clear()

    def heal(self) -> None:
        self.delay = 0.0
        self._flowing.set()

    def _wait_flowing(self) -> bool:
        while not self._flowing.wait(0.05):
            if self._closed.is_set():
                return False
        return not self._closed.is_set()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._track(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)
            self.connections += 1

    def _serve(self, client: socket.socket) -> None:
        if not self._wait_flowing():  # black-holed: the client waits for nothing
            self._close(client)
            return
        try:
            upstream = socket.create_connection((HOST, self.upstream_port), timeout=2)
        except OSError:
            self._close(client)
            return
        self._track(upstream)
        threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
        self._pump(upstream, client, True)

    def _pump(self, source: socket.socket, target: socket.socket, reply: bool) -> None:
        try:
            source.settimeout(0.1)  # the socket may be closed already (heal, teardown)
            while self._wait_flowing():
                try:
                    data = source.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                if reply and self.delay:
                    time.sleep(self.delay)
                if not self._wait_flowing():
                    break
                target.sendall(data)
        except OSError:
            pass
        finally:
            self._close(source)
            self._close(target)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()

    def reset(self) -> None:
        """Close every connection (clients see them drop)."""
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            self._close(sock)

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.reset()
        self._acceptor.join(5)

    def __repr__(self) -> str:
        return f"<TcpProxy {HOST}:{self.port} -> {self.upstream_port}>"


# -- a throwaway PostgreSQL cluster ----------------------------------------------------


def postgres_bindir() -> Path | None:
    """Where ``initdb``, ``pg_ctl`` and ``psql`` are: that of the ``initdb`` on
    ``PATH`` (symbolic links followed), or Debian's ``/usr/lib/postgresql/<version>/bin``
    (the newest version)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = [path.parent for path in Path("/usr/lib/postgresql").glob("*/bin/initdb")
                if path.parts[-3].isdigit()]
    return max(versions, key=lambda bindir: int(bindir.parts[-2]), default=None)


class PostgresCluster:
    """A PostgreSQL cluster of its own (``initdb``, ``pg_ctl``) on a free loopback port,
    its data and socket in a temporary directory, trust authentication for the
    ``postgres`` role, ``fsync`` off. ``settings`` are server settings (``-c``).

    PostgreSQL refuses to run as root: when the tests do, the cluster runs as the
    ``postgres`` system user.

    :param wal_segment_mb: WAL segment size; 1 lets a test make PostgreSQL drop a
        replication slot's WAL by writing a few megabytes.
    """

    def __init__(self, settings: dict[str, str], *, wal_segment_mb: int = 16) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise FileNotFoundError("PostgreSQL's initdb is not installed")
        self.bindir = bindir
        self.settings = dict(settings)
        self.wal_segment_mb = wal_segment_mb
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="relaycache-pg-"))
        self.owner: tuple[int, int] | None = None
        if os.geteuid() == 0:
            import pwd

            entry = pwd.getpwnam("postgres")
            self.owner = (entry.pw_uid, entry.pw_gid)
            os.chown(self.dir, *self.owner)
        self.running = False

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def log_path(self) -> Path:
        return self.dir / "postgres.log"

    def _run(self, program: str, *args: str, timeout: float = 60.0) -> None:
        as_owner: dict[str, Any] = {} if self.owner is None else {
            "user": self.owner[0], "group": self.owner[1], "extra_groups": []}
        done = subprocess.run([str(self.bindir / program), *args], cwd=self.dir,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False, **as_owner)
        if done.returncode != 0:
            raise RuntimeError(f"{program} exited with {done.returncode}: {done.stdout}"
                               f"{done.stderr}\n{self.log()}")

    def start(self) -> PostgresCluster:
        """``initdb`` (the first time) and start; returns once it accepts connections."""
        if not self.data_dir.exists():
            self._run("initdb", "-D", str(self.data_dir), "-A", "trust", "-U", "postgres",
                      "-E", "UTF8", "--no-sync", f"--wal-segsize={self.wal_segment_mb}")
            # In the file rather than on the command line, which would override what a
            # test sets with ALTER SYSTEM.
            settings = {"listen_addresses": f"'{HOST}'", "port": str(self.port),
                        "unix_socket_directories": f"'{self.dir}'", "fsync": "off",
                        "full_page_writes": "off", **self.settings}
            with (self.data_dir / "postgresql.conf").open("a") as conf:
                conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path), "-w",
                  "-t", "60", "start")
        self.running = True
        _live_postgres.add(self)
        return self

    def stop(self) -> None:
        """Stop at once (``-m immediate``: like a crash, nothing is flushed)."""
        if self.running:
            self.running = False
            _live_postgres.discard(self)
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={HOST} port={self.port} user=postgres dbname={dbname}"

    def psql(self, dbname: str = "postgres") -> list[str]:
        """The command line of ``psql`` on ``dbname`` (stopping at the first error)."""
        return [str(self.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", HOST,
                "-p", str(self.port), "-U", "postgres", "-d", dbname]

    def execute(self, sql: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        """Run ``sql`` in autocommit on a connection of its own; the rows, if any."""
        import psycopg

        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            cursor = conn.execute(sql)
            return cursor.fetchall() if cursor.description else []

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def __repr__(self) -> str:
        return f"<PostgresCluster {HOST}:{self.port} {'running' if self.running else 'stopped'}>"


_live_postgres: set[PostgresCluster] = set()


@atexit.register
def _stop_leftover_clusters() -> None:
    for cluster in list(_live_postgres):
        with contextlib.suppress(Exception):
            cluster.cleanup()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.kill()


def _require_binaries(*, cli: bool = False) -> None:
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed")
    if cli and redis_cli_binary() is None:
        pytest.skip("redis-cli is not installed")


Processes = TypeVar("Processes", "RedisClusterProcesses", "RedisSentinelProcesses")


def _running(processes: Processes) -> Iterator[Processes]:
    """A fixture's body: start ``processes`` (a cluster, a Sentinel group), hand them
    to the tests, clean up after them whatever happened."""
    try:
        processes.start()
        yield processes
    finally:
        processes.cleanup()


@pytest.fixture
def redis_server_factory() -> Iterator[Any]:
    """``make(persist=False, extra_args=())`` -> a started :class:`RedisServer`."""
    _require_binaries()
    made: list[RedisServer] = []

    def make(**options: Any) -> RedisServer:
        for attempt in range(3):
            server = RedisServer(**options)
            made.append(server)
            try:
                return server.start()
            except RuntimeError:
                # Someone took the port between our probe and the server's bind.
                if "port" in options or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    yield make
    for server in made:
        server.cleanup()


@pytest.fixture
def redis_server(redis_server_factory: Any) -> RedisServer:
    """A fresh, empty redis-server of this test's own."""
    return redis_server_factory()


@pytest.fixture(scope="session")
def shared_redis_cluster() -> Iterator[RedisClusterProcesses]:
    """A 3-master Redis Cluster for the whole session: only for tests that neither
    change its topology nor stop its nodes."""
    _require_binaries(cli=True)
    yield from _running(RedisClusterProcesses())


@pytest.fixture(scope="module")
def redis_cluster_with_replicas() -> Iterator[RedisClusterProcesses]:
    """3 masters with one replica each, shared by the tests of one module (a short
    node timeout, so that a failover settles quickly)."""
    _require_binaries(cli=True)
    yield from _running(RedisClusterProcesses(replicas=1, node_timeout_ms=2000))


@pytest.fixture
def redis_sentinel() -> Iterator[RedisSentinelProcesses]:
    """A master, a replica (writable, so a test can make it diverge) and 3 Sentinels
    (down-after 1 s, failover-timeout 3 s) for one test."""
    _require_binaries()
    yield from _running(RedisSentinelProcesses(replica_args=("--replica-read-only", "no")))


@pytest.fixture
def tcp_proxy_factory() -> Iterator[Any]:
    """``make(upstream_port)`` -> a running :class:`TcpProxy`, closed at teardown."""
    made: list[TcpProxy] = []

    def make(upstream_port: int) -> TcpProxy:
        proxy = TcpProxy(upstream_port)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisClusterProcesses]:
    """A 3-master Redis Cluster shared by the tests of one module."""
    _require_binaries(cli=True)
    yield from _running(RedisClusterProcesses())


@pytest.fixture(scope="session")
def logical_postgres() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster with ``wal_level=logical`` (which needs a restart to set) for
    the session, so that the change feed's tests never reconfigure the main cluster;
    1 MB WAL segments and ``max_slot_wal_keep_size`` 64 MB, which a test may lower."""
    if postgres_bindir() is None:
        pytest.skip("PostgreSQL's initdb is not installed")
    cluster = PostgresCluster({"wal_level": "logical", "max_replication_slots": "20",
                               "max_slot_wal_keep_size": "64MB"}, wal_segment_mb=1)
    try:
        yield cluster.start()
    finally:
        cluster.cleanup()


class PostgresReplica(PostgresCluster):
    """A hot standby of ``primary`` on a port of its own: ``pg_basebackup -R`` (so it
    streams from the primary from then on), readable. :meth:`pause_replay` makes it lag
    for as long as a test wants: it still receives WAL, but applies none."""

    def __init__(self, primary: PostgresCluster) -> None:
        super().__init__({})
        self.primary = primary

    def start(self) -> PostgresReplica:
        if not self.data_dir.exists():
            self._run("pg_basebackup", "-h", HOST, "-p", str(self.primary.port), "-U",
                      "postgres", "-D", str(self.data_dir), "-X", "stream", "-R",
                      "--no-sync")
            # The primary's own settings came with the copy; these come later, so win.
            settings = {"port": str(self.port), "unix_socket_directories": f"'{self.dir}'",
                        "hot_standby": "on"}
            with (self.data_dir / "postgresql.conf").open("a") as conf:
                conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        super().start()
        return self

    def pause_replay(self) -> None:
        self.execute("SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        self.execute("SELECT pg_wal_replay_resume()")

    def wait_replayed(self, timeout: float = 30.0) -> None:
        """Until the replica has applied everything the primary had written when asked."""
        target = self.primary.execute("SELECT pg_current_wal_lsn()")[0][0]
        deadline = time.monotonic() + timeout
        while not self.execute(
                f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn")[0][0]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica not at {target} within {timeout}s\n{self.log()}")
            time.sleep(0.02)


@pytest.fixture(scope="session")
def postgres_replica() -> Iterator[PostgresReplica]:
    """A throwaway primary cluster and a streaming replica of it for the session
    (``.primary`` is the primary); the machine's main cluster is left alone, its
    ``pg_hba.conf`` allowing no replication."""
    if postgres_bindir() is None:
        pytest.skip("PostgreSQL's initdb is not installed")
    primary = PostgresCluster({"wal_level": "replica", "max_wal_senders": "4"})
    replica = PostgresReplica(primary)
    try:
        primary.start()
        yield replica.start()
    finally:
        try:
            replica.cleanup()
        finally:
            primary.cleanup()
