"""What the real-process consistency tests (``test_stale_reads*.py``,
``test_commit_processes.py``) share: the services they need and the marks that say so.

They run only with ``RELAYCACHE_TEST_DATABASE_URL`` (PostgreSQL) and
``RELAYCACHE_TEST_REDIS_URL`` set. Without them they are skipped, and under
``RELAYCACHE_STRICT=1`` that skip is reported as a failure (``tests/conftest.py``), so
a real-service leg cannot pass by skipping them. A service that is configured but down
fails the test where it is first reached.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from django.db import connection

from tests.orm.stale_worker import CheckResult, MoveWriter, Writer, database_settings

DATABASE_URL = os.environ.get("RELAYCACHE_TEST_DATABASE_URL", "")
REDIS_URL = os.environ.get("RELAYCACHE_TEST_REDIS_URL", "")
MISSING = [name for name, value in (("RELAYCACHE_TEST_DATABASE_URL", DATABASE_URL),
                                    ("RELAYCACHE_TEST_REDIS_URL", REDIS_URL)) if not value]

REAL_SERVICES = [
    pytest.mark.real_redis,
    pytest.mark.postgres,
    pytest.mark.skipif(bool(MISSING), reason=f"needs {' and '.join(MISSING)} "
                                              "(PostgreSQL and redis-server)"),
]
"""Marks of every test here; add ``pytest.mark.django_db(transaction=True, ...)``:
workers in other processes only see committed rows."""


def worker_databases() -> dict[str, Any]:
    """``DATABASES`` for a worker process: the test database this process uses."""
    return {"default": database_settings(connection.settings_dict)}


def assert_fresh_run(result: CheckResult) -> None:
    """A check of both workloads ran every kind of write, made many reads, and none of
    them returned a row older than a write that had returned before it started."""
    assert result.errors == 0, f"Redis errors in the workers: {result.line()}"
    assert result.stale == 0, (
        f"{result.stale} of {result.reads} reads returned a row older than a write that "
        f"had returned before the read started ({result.line()}):\n{result.details()}")
    assert result.reads > 1000, result.line()
    assert set(result.ops) == {*Writer.OPERATIONS, *MoveWriter.OPERATIONS}, result.ops
