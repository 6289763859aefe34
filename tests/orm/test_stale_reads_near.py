"""Invariant 1, "fresh after write", with the near cache on in every process.

The harness of :mod:`tests.orm.stale_worker` (2 writer and 4 reader processes, real
PostgreSQL and Redis, both workloads: versions of ``Book`` rows and rows moved between
pinned sets) runs with a :class:`~relaycache.NearCache` in every worker's
``RedisCache`` (``run_check``'s ``backend_options``): readers serve hits from the
process, and writers make the barrier that lets a read on this host, started after
their write returned, see the invalidation message first (docs/consistency.md, "The
near cache"). The check must find 0 stale reads while the near cache served many hits.
The negative control runs readers whose near cache ignores invalidation messages and
must find stale reads.
"""

from __future__ import annotations

from typing import Any

import pytest

from relaycache import NearCache
from tests.orm.stale_support import REAL_SERVICES, REDIS_URL, assert_fresh_run
from tests.orm.stale_worker import Build, CheckResult, run_check

pytestmark = [*REAL_SERVICES, pytest.mark.django_db(transaction=True)]

WRITERS, READERS = 2, 4
CONTROL_READERS = 2  # a negative control sees stale reads by the hundred: fewer starts
# A writer sleeps up to this long between writes (stale_worker's default: 0.03). Most
# writes replace a stamp that many reads of the versions workload carry, so at the
# default an entry stays valid for a few milliseconds and is seldom read twice: too few
# near hits for the near cache to be tested.
PAUSE = 0.05


class DeafNearCache(NearCache):
    """The negative control: invalidation messages are received and ignored."""

    def _handle(self, link: Any, frame: Any) -> None:
        if not (isinstance(frame, list) and frame and frame[0] == b"invalidate"):
            super()._handle(link, frame)


def _check(near_cache: str, seconds: float, readers: int) -> CheckResult:
    result = run_check(redis_url=REDIS_URL, writers=WRITERS, readers=readers,
                       seconds=seconds, pause=PAUSE, workloads=("versions", "moves"),
                       backend_options={"near_cache": Build(near_cache)})
    near = {name: n for name, n in result.stats.items() if name.startswith("near_")}
    print(f"\n{near_cache}: {result.line()} {near}")
    return result


def test_no_process_reads_a_version_older_than_a_returned_write():
    result = _check("relaycache:NearCache", 6.0, READERS)

    assert_fresh_run(result)
    assert result.stats["near_resets"] == 0, result.stats
    # The near cache served many of the hits (the others came from Redis, after a
    # store by this or another reader replaced the entry): this tested it.
    assert result.stats["near_hits"] > 100, result.stats


def test_negative_control_a_near_cache_deaf_to_invalidations_is_caught():
    result = _check(f"{__name__}:DeafNearCache", 2.5, CONTROL_READERS)

    assert result.writes > 0, result.line()
    assert result.stats["near_hits"] > 0, result.stats
    assert result.stale > 0, f"the checker missed a near cache nothing invalidates: {result.line()}"
