"""The change feed's tests (docs/feed.md).

``test_feed_units.py`` runs everywhere, SQLite and fakeredis included.
``test_feed_postgresql.py`` needs PostgreSQL (it starts a cluster of its own with
``wal_level=logical``, ``logical_postgres`` of tests/servers.py, so the main one is never
reconfigured) and a real Redis: like ``tests/orm/test_postgresql_only.py`` it is
collected only when the suite runs on PostgreSQL, and its ``real_redis`` marker skips it
without ``RELAYCACHE_TEST_REDIS_URL`` (a failure under ``RELAYCACHE_STRICT=1``).
"""

from __future__ import annotations

import os

collect_ignore = ([] if os.environ.get("RELAYCACHE_TEST_DATABASE_URL")
                  else ["test_feed_postgresql.py"])
