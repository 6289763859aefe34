"""Reads through a replica alias are never stored: a replica may lag behind writes
that were committed and invalidated (docs/consistency.md, "Replicas").

The first tests check which aliases are replicas. The last one runs a real streaming
replica of a throwaway primary (``tests.servers.postgres_replica``), pauses its
replay to make it lag, and drives two real processes through a write and reads on
both aliases; it needs ``RELAYCACHE_TEST_REDIS_URL`` and PostgreSQL's binaries.
"""

from __future__ import annotations

import os

import pytest

from relaycache.orm import invalidation
from relaycache.orm.invalidation import is_replica
from tests.orm.step_worker import Workers
from tests.servers import HOST, PostgresCluster

pytest_plugins = ("tests.servers",)

REDIS_URL = os.environ.get("RELAYCACHE_TEST_REDIS_URL", "")
STRICT = os.environ.get("RELAYCACHE_STRICT") == "1"


@pytest.mark.parametrize(("namespaces", "alias", "replica"), [
    ({"replica": "default"}, "replica", True),
    ({"replica": "default"}, "default", False),
    ({}, "replica", False),
    ({"default": "main"}, "default", False),  # a name of its own, not a copy of an alias
    ({"default": "default"}, "default", False),
])
def test_a_replica_is_an_alias_mapped_to_another_alias(monkeypatch, namespaces, alias,
                                                       replica):
    monkeypatch.setattr(invalidation, "DATABASE_NAMESPACES", namespaces)
    assert is_replica(alias) is replica


def _database(cluster: PostgresCluster) -> dict[str, object]:
    return {"ENGINE": "django.db.backends.postgresql", "NAME": "postgres",
            "USER": "postgres", "PASSWORD": "", "HOST": HOST, "PORT": str(cluster.port)}


@pytest.fixture
def workers():
    if not REDIS_URL:
        if STRICT:
            pytest.fail("RELAYCACHE_STRICT=1 but RELAYCACHE_TEST_REDIS_URL not set",
                        pytrace=False)
        pytest.skip("needs RELAYCACHE_TEST_REDIS_URL (a real redis-server)")
    started = Workers(REDIS_URL)
    yield started
    started.close()


@pytest.mark.real_redis
@pytest.mark.postgres
def test_a_replica_read_during_the_lag_is_not_served_after_it(workers, postgres_replica):
    """The issue's case: with ``DATABASE_NAMESPACES={"replica": "default"}``, a cached
    read on the replica while it has not replayed a write reads the old row; after the
    replica caught up, neither alias may serve that row."""
    replica, primary = postgres_replica, postgres_replica.primary
    primary.execute("DROP TABLE IF EXISTS ormapp_label")
    databases = {"default": _database(primary), "replica": _database(replica)}
    writer = workers.start(databases, DATABASE_NAMESPACES={"replica": "default"})
    reader = workers.start(databases, DATABASE_NAMESPACES={"replica": "default"})
    writer.create_tables()
    pk = writer.create(name="v1")
    replica.wait_replayed()
    assert reader.cached_name(pk=pk, using="replica") == "v1"

    replica.pause_replay()
    try:
        writer.update(pk=pk, name="v2")  # committed on the primary, invalidated
        stores = reader.stats()["stores"]
        assert reader.cached_name(pk=pk, using="replica") == "v1"  # the replica lags
        stored_in_the_lag = reader.stats()["stores"] - stores
    finally:
        replica.resume_replay()
    replica.wait_replayed()
    assert reader.cached_name(pk=pk, using="replica") == "v2"
    assert reader.cached_name(pk=pk, using="default") == "v2"
    assert stored_in_the_lag == 0

    # The primary's reads are stored, and the replica's reads are served from them.
    hits = reader.stats()["hits"]
    assert reader.cached_name(pk=pk, using="replica") == "v2"
    assert reader.stats()["hits"] == hits + 1


class _ReadsFromTheReplica:
    def db_for_read(self, model, **hints):
        return "replica"

    def db_for_write(self, model, **hints):
        return "default"


def test_a_cached_model_read_through_a_replica_is_reported(settings, monkeypatch):
    """W005: nothing read through the replica is stored, which the check says."""
    from relaycache.checks import check_routing

    settings.DATABASE_ROUTERS = [_ReadsFromTheReplica()]
    monkeypatch.setattr(invalidation, "DATABASE_NAMESPACES", {"replica": "default"})
    found = {message.obj._meta.label: message for message in check_routing()}
    assert found["ormapp.Book"].id == "relaycache.W005"
    assert "never stored" in found["ormapp.Book"].msg
    monkeypatch.setattr(invalidation, "DATABASE_NAMESPACES", {})
    assert {message.id for message in check_routing()} == {"relaycache.E004"}
