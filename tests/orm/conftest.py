"""Every ORM scenario runs twice: on an InMemoryCache and on a RedisCache.

Scenario modules opt in with ``pytestmark = ORM_SCENARIO`` (the ``orm_cache`` fixture
plus ``django_db(transaction=True)``), so other tests in this folder are unaffected.

The RedisCache uses fakeredis, or the server at ``RELAYCACHE_TEST_REDIS_URL`` when it
is set (the helpers of ``tests/conftest.py`` decide). Vendor-specific scenarios live in
``test_postgresql_only.py`` and ``test_sqlite_only.py``; only the module of the database
under test is collected, so nothing is skipped.
"""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("tests.orm.support")  # readable failures in the helpers

from relaycache import InMemoryCache  # noqa: E402
from relaycache.core.defaults import use_backend  # noqa: E402
from tests.conftest import _make_client, _redis_cache  # noqa: E402
from tests.orm.support import (  # noqa: E402
    ON_POSTGRESQL,
    Scenario,
    make_all_types,
    make_shop,
)

collect_ignore = ["test_sqlite_only.py"] if ON_POSTGRESQL else ["test_postgresql_only.py"]


@pytest.fixture(params=["memory", "redis"])
def orm_cache(request):
    """The default backend for the test: an InMemoryCache, then a RedisCache."""
    client = None
    if request.param == "memory":
        backend = InMemoryCache(default_ttl=60)
    else:
        client = _make_client(False)
        backend = _redis_cache(client)
    try:
        with use_backend(backend):
            yield backend
    finally:
        if client is not None:
            backend.clear()
            client.close()


@pytest.fixture
def scenario(orm_cache, django_assert_num_queries):
    return Scenario(orm_cache, django_assert_num_queries)


@pytest.fixture
def shop(transactional_db):
    return make_shop()


@pytest.fixture
def all_types(transactional_db):
    return make_all_types()
