"""pytest fixtures for projects using RelayCache (a pytest plugin, loaded by entry point).

- ``relaycache_backend``: a fresh :class:`~relaycache.InMemoryCache` set as the default
  backend for the test, the previous default restored after it;
- ``relaycache_disabled``: for the test, a default backend on which every read
  misses and nothing is stored (cached querysets and ``@cache`` calls without an
  explicit ``backend=`` run their code every time); :func:`cache_disabled` is the same
  as a context manager;
- ``relaycache_counter``: a :class:`CacheCounter` recording hits, misses,
  invalidations and uncacheable queries, with ``assert_hits(n)`` and friends;
- ``relaycache_committed``: under pytest-django's ``django_db`` (each test in a
  transaction rolled back after it), that transaction counts as committed for the
  cache, so cached querysets hit in the test as they would in production.

Needs neither Django settings nor pytest-django (but ``relaycache_committed``, which
is about pytest-django's transactions). Functions decorated with an explicit
``backend=...`` keep that backend: swap it yourself (``override_settings`` for a
``settings.CACHE_BACKEND``) if a test needs it isolated.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from .backends.base import BaseCache, KeyDescription
from .backends.flow import new_token
from .backends.memory import InMemoryCache
from .core import events
from .core.defaults import use_backend

__all__ = ["CacheCounter", "DisabledCache", "cache_disabled", "use_backend"]


class DisabledCache(BaseCache):
    """A backend that never serves and never stores: every read is a miss.

    Misses and invalidations are still counted and sent to listeners, and values the
    codec cannot encode still raise ``TypeError``, as with a real backend.
    """

    keeps_entries = False

    def __repr__(self) -> str:
        return "<DisabledCache>"

    def fetch(self, keys: list[str]) -> list[Any]:
        return [None] * len(keys)

    def acquire_stamps(self, skeys: list[str]) -> list[str]:
        return [new_token() for _ in skeys]

    def store_if_current(self, vkey: str, raw: bytes, skeys: list[str], stamps: list[str],
                         ttl_ms: int | None) -> bool:
        return False

    def replace_stamps(self, skeys: list[str]) -> bool:
        return True

    def delete_keys(self, keys: list[str]) -> None:
        pass

    def clear(self) -> None:
        pass

    def acquire_lease(self, lkey: str, token: str, ttl_ms: int) -> bool:
        return True

    def release_lease(self, lkey: str, token: str) -> None:
        pass

    def wait_lease(self, lkey: str, timeout: float) -> None:
        pass

    def scan_keys(self) -> Iterator[str]:
        return iter(())

    def describe_keys(self, keys: list[str], head: int = 0) -> list[KeyDescription | None]:
        return [None] * len(keys)


def cache_disabled() -> contextlib.AbstractContextManager[BaseCache]:
    """``with cache_disabled():`` reads inside the block never hit and store nothing."""
    return use_backend(DisabledCache())


@dataclass(frozen=True)
class CacheEvent:
    event: str
    backend: BaseCache
    data: dict[str, Any] = field(default_factory=dict)


class CacheCounter:
    """Records every cache event while it listens (optionally of one backend only)."""

    def __init__(self, backend: BaseCache | None = None) -> None:
        self.backend = backend
        self.events: list[CacheEvent] = []
        self._lock = threading.Lock()

    def __call__(self, event: str, backend: BaseCache, **data: Any) -> None:
        if self.backend is None or backend is self.backend:
            with self._lock:
                self.events.append(CacheEvent(event, backend, data))

    def start(self) -> CacheCounter:
        events.add_listener(self)
        return self

    def stop(self) -> None:
        events.remove_listener(self)

    def __enter__(self) -> CacheCounter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        with self._lock:
            self.events.clear()

    def _of(self, kind: str) -> list[CacheEvent]:
        with self._lock:
            return [e for e in self.events if e.event == kind]

    @property
    def hits(self) -> int:
        return len(self._of("hit"))

    @property
    def misses(self) -> int:
        return len(self._of("miss"))

    @property
    def stale(self) -> int:
        return sum(e.data.get("reason") == "stale" for e in self._of("miss"))

    @property
    def invalidations(self) -> int:
        return len(self._of("invalidated"))

    @property
    def invalidated_tags(self) -> set[str]:
        return {tag for e in self._of("invalidated") for tag in e.data.get("tags", ())}

    @property
    def uncacheable(self) -> list[str]:
        """The reasons of the queries that ran uncached."""
        return [e.data.get("reason", "") for e in self._of("uncacheable")]

    def _check(self, what: str, actual: object, expected: object) -> None:
        if actual != expected:
            recorded = "\n".join(f"  {e.event} {e.data}" for e in list(self.events)[-20:])
            raise AssertionError(f"expected {expected!r} {what}, got {actual!r}; last "
                                 f"events:\n{recorded or '  (none)'}")

    def assert_hits(self, n: int) -> None:
        self._check("cache hits", self.hits, n)

    def assert_misses(self, n: int) -> None:
        self._check("cache misses", self.misses, n)

    def assert_invalidations(self, n: int) -> None:
        self._check("invalidations", self.invalidations, n)

    def assert_invalidated(self, *tags: str) -> None:
        """Each of ``tags`` was invalidated (others may have been too)."""
        missing = sorted(set(tags) - self.invalidated_tags)
        self._check("tags missing from the invalidated ones", missing, [])

    def assert_uncacheable(self, n: int) -> None:
        self._check("uncacheable queries", len(self.uncacheable), n)

    def __repr__(self) -> str:
        return (f"<CacheCounter hits={self.hits} misses={self.misses} "
                f"invalidations={self.invalidations}>")


@pytest.fixture
def relaycache_backend() -> Iterator[InMemoryCache]:
    """A fresh InMemoryCache, the default backend for this test only."""
    backend = InMemoryCache()
    with use_backend(backend):
        yield backend


@pytest.fixture
def relaycache_disabled() -> Iterator[BaseCache]:
    """For this test, cached reads run their code every time and store nothing."""
    with cache_disabled() as backend:
        yield backend


@pytest.fixture
def relaycache_counter() -> Iterator[CacheCounter]:
    """Hits, misses, invalidations and uncacheable queries of every backend."""
    with CacheCounter() as counter:
        yield counter


# -- relaycache_committed ------------------------------------------------------------

_baseline_aliases = pytest.StashKey[list[str]]()


@pytest.fixture
def relaycache_committed(request: pytest.FixtureRequest, db: None) -> Iterator[None]:
    """For this ``django_db`` test, its transaction counts as committed for the cache.

    Without it, every table the test's transaction wrote (in fixtures too) bypasses
    the cache until a COMMIT that never comes, and on SQLite nothing read in a
    transaction is stored, so cached querysets never hit. With it, once every fixture
    is set up and before the test body runs, what the fixtures wrote counts as
    committed; each write made in the test body is invalidated when it runs, as in
    autocommit; misses are stored. Writes inside an ``atomic`` block of the test body
    bypass the cache until the test ends, as they would until that block's COMMIT.

    Sound because a test's transaction is seen by its own connection only and is
    rolled back: when this fixture is torn down, everything the transaction wrote is
    invalidated again on the backends in use then (the rollback rewrites those rows)
    and reads of those tables bypass the cache until the rollback, so nothing read
    from the rolled-back data is served later. With ``django_db(transaction=True)``
    every write commits already and this changes nothing.
    """
    yield
    aliases = request.node.stash.get(_baseline_aliases, [])
    if aliases:
        from django.db import connections

        from .orm.invalidation import end_baseline

        for alias in aliases:
            end_baseline(connections[alias])


@pytest.hookimpl(hookwrapper=True)  # the old-style wrapper: any pytest this runs under
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Sets ``relaycache_committed``'s baseline once every fixture ran."""
    if "relaycache_committed" in getattr(item, "fixturenames", ()):
        from django.db import connections

        from .orm.invalidation import set_baseline

        aliases = []
        for connection in connections.all(initialized_only=True):
            if connection.in_atomic_block:
                set_baseline(connection)
                aliases.append(connection.alias)
        item.stash[_baseline_aliases] = aliases
    yield
