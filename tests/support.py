"""Helpers of every test package.

The one thread harness of the suite runs calls on threads at once, collects what they
returned, re-raises what they raised, and fails (never hangs) when one of them hangs:

- :func:`run_concurrently` calls ``fn(0)`` ... ``fn(n - 1)`` together and returns
  their results;
- :func:`concurrently` does the same around a ``with`` block, for a test that acts
  while the threads run (a writer during reads, a server killed under load): leaving
  the block sets ``stop``, the event loops poll, then waits for the threads;
- :func:`timed_calls` times calls made on a thread, for a server that may hang them,
  such as those of :func:`warm_square`.

:func:`wait_until` polls a condition that something else makes true;
``IN_PROCESS_BACKENDS`` are the contract suite's backends that need no server.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import redis

from relaycache import InMemoryCache, cache
from tests.backends.dict_backend import DictCache

T = TypeVar("T")

__all__ = ["IN_PROCESS_BACKENDS", "concurrently", "run_concurrently", "timed_calls",
           "wait_until", "warm_square"]

IN_PROCESS_BACKENDS = {"memory": InMemoryCache, "dict": DictCache}
"""The backends of the contract suite that need no server, by fixture id."""


def run_concurrently(fn: Callable[[int], T], n: int, *, timeout: float = 10.0,
                     return_exceptions: bool = False) -> list[Any]:
    """Call ``fn(i)`` for ``i`` in ``range(n)``, each on its own thread, released at
    the same moment by a barrier; return the results in that order.

    The first exception (by ``i``) that a call raised is re-raised here; with
    ``return_exceptions`` it takes that call's place in the list instead. A call still
    running after ``timeout`` seconds fails the test with ``AssertionError`` (the
    threads are daemons, so a hung one cannot hang the run).
    """
    with concurrently(fn, n, timeout=timeout, return_exceptions=return_exceptions) as results:
        pass
    return results


@contextlib.contextmanager
def concurrently(fn: Callable[[int], Any], n: int, *, timeout: float = 10.0,
                 stop: threading.Event | None = None, return_exceptions: bool = False
                 ) -> Iterator[list[Any]]:
    """:func:`run_concurrently` while the ``with`` block runs.

    The threads start on entering the block. Leaving it sets ``stop`` (when given: the
    event ``fn`` loops on), then waits at most ``timeout`` seconds for the threads and
    fills the list the block got with their results, raising as
    :func:`run_concurrently` does. An exception of the block itself wins: the threads
    are then told to stop and left to end on their own.
    """
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    raised: dict[int, BaseException] = {}

    def run(i: int) -> None:
        try:
            barrier.wait(timeout)
            results[i] = fn(i)
        except BaseException as exc:  # reported by the test's thread, below
            exc.add_note(f"raised in thread {i} of {n} (tests/support.py)")
            raised[i] = exc

    threads = [threading.Thread(target=run, args=(i,), name=f"concurrently-{i}", daemon=True)
               for i in range(n)]
    for thread in threads:
        thread.start()
    collected: list[Any] = []
    try:
        yield collected
    finally:
        if stop is not None:
            stop.set()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    hung = sum(thread.is_alive() for thread in threads)
    assert not hung, f"{hung} of {n} threads still running after {timeout} s"
    if raised and not return_exceptions:
        raise raised[min(raised)]
    collected[:] = [raised.get(i, result) for i, result in enumerate(results)]


def timed_calls(calls: dict[str, Callable[[], Any]], *, timeout: float
                ) -> tuple[dict[str, Any], dict[str, float]]:
    """Make ``calls`` one after the other on another thread, so that a hung one fails
    the test (after ``timeout`` seconds for them all) instead of hanging it. Returns, by
    name, what each call returned or raised, and the seconds it took."""
    outcome: dict[str, Any] = {}
    timings: dict[str, float] = {}

    def run(_: int) -> None:
        for name, call in calls.items():
            began = time.monotonic()
            try:
                outcome[name] = call()
            except BaseException as exc:  # compared by the test
                outcome[name] = exc
            timings[name] = time.monotonic() - began

    try:
        run_concurrently(run, 1, timeout=timeout)
    except AssertionError as exc:
        exc.add_note(f"seconds of the calls that returned: {timings}")
        raise
    return outcome, timings


def warm_square(backend: Any) -> Callable[[int], int]:
    """``square(n)`` cached on ``backend`` (key and tag ``n:<n>``), after a miss and a
    hit of ``square(3)``."""
    computed: list[int] = []

    @cache(backend=backend, tags=lambda n: [f"n:{n}"], key=lambda n: f"n:{n}")
    def square(n: int) -> int:
        computed.append(n)
        return n * n

    assert square(3) == 9 and square(3) == 9 and computed == [3]
    return square


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.02
               ) -> bool:
    """Whether ``predicate()`` became true within ``timeout`` seconds (polled)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


_SUBCLASS_CHECK = threading.local()
_CONNECTION_DETAILS = {"host", "port", "db", "password", "username", "unix_socket_path"}


def redirected_redis(kind: str, server: Any, redis_url: str | None) -> type:
    """What ``redis.Redis`` (``kind="sync"``) or ``redis.asyncio.Redis`` (``"async"``)
    is while documented examples run: where they connect (host, port, db, TLS...) is
    replaced by the test server at ``redis_url`` or, without one, fakeredis ``server``.
    """
    from urllib.parse import urlsplit

    import fakeredis
    import redis
    import redis.asyncio

    real = {"sync": redis.Redis, "async": redis.asyncio.Redis}[kind]
    base = real if redis_url else {"sync": fakeredis.FakeRedis,
                                   "async": fakeredis.FakeAsyncRedis}[kind]
    parts = urlsplit(redis_url) if redis_url else None

    class Meta(type(base)):  # type: ignore[misc]
        # Clients built otherwise (``Sentinel(...).master_for(...)``, a cache's clone of
        # a given client's pool) are plain instances of the real class: isinstance
        # checks against the patched name must still accept them.
        def __instancecheck__(cls, obj: Any) -> bool:
            return isinstance(obj, real)

        def __subclasscheck__(cls, sub: type) -> bool:
            # issubclass(x, redis.Redis) asks redis.Redis's subclasses in turn, this
            # class included (it outlives its test until collected): answer that
            # inner question plainly, or it recurses for ever (a RedisCluster client
            # built after the docs tests did).
            if getattr(_SUBCLASS_CHECK, "running", False):
                return super().__subclasscheck__(sub)
            _SUBCLASS_CHECK.running = True
            try:
                return issubclass(sub, real)
            finally:
                _SUBCLASS_CHECK.running = False

    class RedirectedRedis(base, metaclass=Meta):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if args or "connection_pool" not in kwargs:
                for name in [*kwargs]:  # where to connect, and how: the test server's
                    if name in _CONNECTION_DETAILS or name.startswith("ssl"):
                        del kwargs[name]
                args = ()
                if parts is not None:
                    kwargs.update(host=parts.hostname or "127.0.0.1", port=parts.port or 6379,
                                  db=int(parts.path.lstrip("/") or 0),
                                  password=parts.password)
                else:
                    kwargs["server"] = server
            super().__init__(*args, **kwargs)

    return RedirectedRedis


class CountingConnection(redis.Connection):
    """Counts what a client sends: one ``send_packed_command`` per command or per
    pipeline, each answered before the next is sent, so one per round trip. Give it as
    a pool's ``connection_class``; reset ``sent`` before counting."""

    sent = 0

    def send_packed_command(self, command, check_health=True):
        type(self).sent += 1
        return super().send_packed_command(command, check_health)
