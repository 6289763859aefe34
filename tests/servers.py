"""Throwaway redis-server processes for the real-server tests.

Each server is a ``redis-server`` child started with :class:`subprocess.Popen` on a free
loopback port, in its own temporary directory, without persistence unless asked for,
and always killed at teardown. Nothing here touches the machine's main Redis.

Test modules use the fixtures with ``pytest_plugins = ("tests.servers",)``:

- ``redis_server``: a fresh server for one test;
- ``redis_server_factory``: build more (``persist=True``, extra arguments...);
- ``redis_cluster``: a 3-master Redis Cluster shared by one test module.

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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


class RedisClusterProcesses:
    """Three cluster-enabled masters on loopback, joined by ``redis-cli --cluster create``."""

    def __init__(self, masters: int = 3, node_timeout_ms: int = 15000) -> None:
        self.servers = [
            RedisServer(cluster=True, extra_args=(
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms)))
            for _ in range(masters)
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
             "--cluster-replicas", "0", "--cluster-yes"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False)
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: "
                               f"{create.stdout.decode()} {create.stderr.decode()}")
        self.wait_ok(timeout)
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

    def cleanup(self) -> None:
        for server in self.servers:
            server.cleanup()


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


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisClusterProcesses]:
    """A 3-master Redis Cluster shared by the tests of one module."""
    _require_binaries(cli=True)
    cluster = RedisClusterProcesses()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()
