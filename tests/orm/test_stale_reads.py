"""Invariant 1 of DESIGN.md, "fresh after write", with real processes on a real
PostgreSQL and a real Redis: no read in any process returns a row older than a write
whose call had returned before the read started.

2 writer and 4 reader processes share a few ``Book`` rows; the harness and the checker
are in :mod:`tests.orm.stale_worker` (also runnable by hand:
``python -m tests.orm.stale_worker --seconds 10``). The negative control runs the same
harness with readers behind a ``@cache`` whose tag no write invalidates, and must see
stale reads: a checker that cannot fail proves nothing.

Runs only with ``RELAYCACHE_TEST_DATABASE_URL`` (PostgreSQL) and
``RELAYCACHE_TEST_REDIS_URL`` set; under ``RELAYCACHE_STRICT=1`` their absence is a
failure, never a skip.
"""

from __future__ import annotations

import os

import pytest

from tests.orm.stale_worker import CheckResult, run_check

DATABASE_URL = os.environ.get("RELAYCACHE_TEST_DATABASE_URL", "")
REDIS_URL = os.environ.get("RELAYCACHE_TEST_REDIS_URL", "")
STRICT = os.environ.get("RELAYCACHE_STRICT") == "1"
MISSING = [name for name, value in (("RELAYCACHE_TEST_DATABASE_URL", DATABASE_URL),
                                    ("RELAYCACHE_TEST_REDIS_URL", REDIS_URL)) if not value]

pytestmark = [
    pytest.mark.real_redis,
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(bool(MISSING) and not STRICT,
                       reason=f"needs {' and '.join(MISSING)} (PostgreSQL and redis-server)"),
]

WRITERS, READERS = 2, 4
OPERATIONS = {"op_save", "op_update", "op_atomic", "op_bulk_update", "op_raw_sql",
              "op_atomic_update", "op_rolled_back_savepoint", "op_locked_shared_row",
              "op_manual_commit", "op_failing_callback"}


@pytest.fixture(autouse=True)
def _real_services():
    if MISSING:  # only reached under RELAYCACHE_STRICT=1
        pytest.fail(f"RELAYCACHE_STRICT=1 but {', '.join(MISSING)} not set", pytrace=False)


def _check(**options) -> CheckResult:
    result = run_check(redis_url=REDIS_URL, writers=WRITERS, readers=READERS, **options)
    print(f"\n{'broken' if options.get('broken') else 'cached'}: {result.line()}")
    return result


def test_no_process_reads_a_version_older_than_a_returned_write():
    result = _check(seconds=8.0)

    assert result.errors == 0, f"Redis errors in the workers: {result.line()}"
    assert result.stale == 0, (
        f"{result.stale} of {result.reads} reads returned a row older than a write that "
        f"had returned before the read started ({result.line()}):\n{result.details()}")
    assert result.reads > 1000, result.line()
    assert set(result.ops) == OPERATIONS, result.ops
    assert min(result.ops.values()) >= 10, f"some write kinds barely ran: {result.ops}"
    assert result.hits > 100, f"the cache barely served, nothing was tested: {result.line()}"
    assert result.stores > 0, result.line()


def test_negative_control_a_never_invalidated_cache_is_caught():
    result = _check(seconds=3.0, broken=True)

    assert result.writes > 0, result.line()
    assert result.hits > 0, result.line()
    assert result.stale > 0, f"the checker missed a cache nothing invalidates: {result.line()}"
