"""Invariant 1, "fresh after write", with the near cache on in every process.

The harness of :mod:`tests.orm.stale_worker` (2 writer and 4 reader processes, real
PostgreSQL and Redis, 8 kinds of write, many read shapes) runs unchanged, except that
every worker's ``RedisCache`` gets a :class:`~relaycache.NearCache`: readers serve
hits from the process, and writers make the barrier that lets a read on this host,
started after their write returned, see the invalidation message first
(docs/consistency.md, "The near cache"). The check must find 0 stale reads while the
near cache served most hits. The negative control runs readers whose near cache
ignores invalidation messages (the drain disabled) and must find stale reads.

The workers are stale_worker's own entry point, reached through this module (run as
``python -m tests.orm.test_stale_reads_near --worker``), which adds the near cache to
the ``RELAYCACHE`` options they configure; the test points ``run_check``'s process
launch here and adds up the near-cache counters the workers report.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from typing import Any

import pytest

from relaycache import NearCache
from tests.orm import stale_worker
from tests.orm.stale_worker import CheckResult, run_check

DATABASE_URL = os.environ.get("RELAYCACHE_TEST_DATABASE_URL", "")
REDIS_URL = os.environ.get("RELAYCACHE_TEST_REDIS_URL", "")
STRICT = os.environ.get("RELAYCACHE_STRICT") == "1"
MISSING = [name for name, value in (("RELAYCACHE_TEST_DATABASE_URL", DATABASE_URL),
                                    ("RELAYCACHE_TEST_REDIS_URL", REDIS_URL)) if not value]
MODE_ENV = "RELAYCACHE_STALE_NEAR_MODE"  # "on", or "deaf" for the negative control

pytestmark = [
    pytest.mark.real_redis,
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(bool(MISSING) and not STRICT,
                       reason=f"needs {' and '.join(MISSING)} (PostgreSQL and redis-server)"),
]

WRITERS, READERS = 2, 4
# A writer sleeps up to this long between writes (stale_worker's default: 0.03). Every
# write changes the stamp of the book table, which nearly every read carries, so at the
# default an entry stays valid for ~15 ms and is seldom read twice: too few hits for the
# near cache to be tested. At 0.2 s each kind of write still runs about 10 times in 10 s.
PAUSE = 0.2
NEAR_COUNTERS = ("near_hits", "near_misses", "near_resets")


class _DeafNearCache(NearCache):
    """The negative control: invalidation messages are received and ignored."""

    def _handle(self, link: Any, frame: Any) -> None:
        if not (isinstance(frame, list) and frame and frame[0] == b"invalidate"):
            super()._handle(link, frame)


def _worker() -> None:
    """A worker process: stale_worker's, with a near cache in its RELAYCACHE options."""
    configure = stale_worker.configure_django
    near_class = _DeafNearCache if os.environ[MODE_ENV] == "deaf" else NearCache

    def with_near_cache(databases: dict[str, Any], relaycache: dict[str, Any] | None) -> None:
        assert relaycache is not None
        relaycache["OPTIONS"] = {**relaycache["OPTIONS"], "near_cache": near_class()}
        configure(databases, relaycache)

    stale_worker.configure_django = with_near_cache
    stale_worker.worker_main(json.loads(os.environ[stale_worker.CONFIG_ENV]))


@pytest.fixture(autouse=True)
def _real_services():
    if MISSING:  # only reached under RELAYCACHE_STRICT=1
        pytest.fail(f"RELAYCACHE_STRICT=1 but {', '.join(MISSING)} not set", pytrace=False)


@pytest.fixture
def near_check(monkeypatch):
    """``check(mode, seconds)`` -> (CheckResult, near-cache counters of every worker)."""
    launch = subprocess.Popen
    near: Counter[str] = Counter()
    add = CheckResult.add

    def popen(args: list[str], *rest: Any, **options: Any) -> Any:
        args = [__name__ if arg == stale_worker.__name__ else arg for arg in args]
        return launch(args, *rest, **options)

    def add_counting(self: CheckResult, report: dict[str, Any]) -> None:
        for name in NEAR_COUNTERS:
            near[name] += report["stats"][name]
        add(self, report)

    monkeypatch.setattr(stale_worker.subprocess, "Popen", popen)
    monkeypatch.setattr(CheckResult, "add", add_counting)

    def check(mode: str, seconds: float) -> tuple[CheckResult, Counter[str]]:
        monkeypatch.setenv(MODE_ENV, mode)
        result = run_check(redis_url=REDIS_URL, writers=WRITERS, readers=READERS,
                           seconds=seconds, pause=PAUSE)
        print(f"\nnear cache {mode}: {result.line()} {dict(near)}")
        return result, near

    return check


def test_no_process_reads_a_version_older_than_a_returned_write(near_check):
    result, near = near_check("on", 10.0)

    assert result.errors == 0, f"Redis errors in the workers: {result.line()}"
    assert result.stale == 0, (
        f"{result.stale} of {result.reads} reads returned a row older than a write that "
        f"had returned before the read started ({result.line()}):\n{result.details()}")
    assert result.reads > 1000, result.line()
    assert min(result.ops.values()) >= 5, f"some write kinds barely ran: {result.ops}"
    assert near["near_resets"] == 0, near
    # The near cache served many of the hits (the others came from Redis, after a
    # store by this or another reader replaced the entry): this tested it.
    assert near["near_hits"] > 100, (near, result.line())


def test_negative_control_a_near_cache_deaf_to_invalidations_is_caught(near_check):
    result, near = near_check("deaf", 5.0)

    assert result.writes > 0, result.line()
    assert near["near_hits"] > 0, near
    assert result.stale > 0, f"the checker missed a near cache nothing invalidates: {near}"


if __name__ == "__main__":
    _worker()
