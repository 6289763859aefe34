"""Database aliases that share data share invalidation tags (RELAYCACHE setting), and
keys name the database an alias points at."""

import multiprocessing

import pytest
from django.db import connections
from django.test import override_settings

from relaycache import InMemoryCache, invalidate_tables
from relaycache.orm.invalidation import database_tag, table_tag
from relaycache.orm.plan import database_identity


def test_aliases_are_their_own_namespace_by_default():
    assert table_tag("ormapp_book", "replica") != table_tag("ormapp_book", "default")
    assert database_tag("replica") != database_tag("default")


def test_a_replica_mapped_to_its_primary_shares_its_tags():
    with override_settings(RELAYCACHE={"DATABASE_NAMESPACES": {"replica": "default"}}):
        assert table_tag("ormapp_book", "replica") == table_tag("ormapp_book", "default")
        assert database_tag("replica") == database_tag("default")
    assert table_tag("ormapp_book", "replica") != table_tag("ormapp_book", "default")


def test_a_write_through_the_primary_invalidates_reads_tagged_for_the_replica():
    memory_backend = InMemoryCache()
    with override_settings(RELAYCACHE={"DATABASE_NAMESPACES": {"replica": "default"},
                                       "BACKEND": memory_backend}):
        tags = [table_tag("ormapp_book", "replica")]
        memory_backend.set("replica-read", ["row"], tags=tags)
        assert memory_backend.get("replica-read", tags=tags) == (True, ["row"])
        invalidate_tables(["ormapp_book"], using="default")
        assert memory_backend.get("replica-read", tags=tags) == (False, None)


@pytest.fixture
def second_alias():
    """A second alias, ``other``, set up like ``default``; the test changes its settings."""
    connections.settings["other"] = {**connections.settings["default"]}
    try:
        yield connections.settings["other"]
    finally:
        del connections.settings["other"]
        if hasattr(connections._connections, "other"):
            del connections["other"]


def test_keys_name_the_database_an_alias_points_at(second_alias, tmp_path, monkeypatch):
    """Two deployments sharing a Redis, whose ``other`` alias is another database, never
    share entries; one database named two ways (a relative path) is one database."""
    monkeypatch.chdir(tmp_path)
    second_alias.update(ENGINE="django.db.backends.sqlite3", NAME="a.sqlite3")
    relative = database_identity("other")
    second_alias["NAME"] = str(tmp_path / "a.sqlite3")
    assert database_identity("other") == relative
    second_alias["NAME"] = str(tmp_path / "b.sqlite3")
    assert database_identity("other") != relative
    second_alias.update(ENGINE="django.db.backends.postgresql", NAME="shop", HOST="db1",
                        PORT=5432, USER="web")
    production = database_identity("other")
    for changed in ({"HOST": "db2"}, {"PORT": 6432}, {"NAME": "shop_staging"},
                    {"USER": "tenant_role"}, {"OPTIONS": {"options": "-c search_path=t1"}}):
        second_alias.update({"HOST": "db1", "PORT": 5432, "NAME": "shop", "USER": "web",
                             "OPTIONS": {}, **changed})
        assert database_identity("other") != production, changed


def test_a_replica_mapped_to_its_primary_shares_its_entries(second_alias):
    second_alias["HOST"] = "replica.internal"
    assert database_identity("other") != database_identity("default")
    with override_settings(RELAYCACHE={"DATABASE_NAMESPACES": {"other": "default"}}):
        assert database_identity("other") == database_identity("default")


def test_a_namespace_that_names_no_alias_is_the_identity_you_chose(second_alias):
    with override_settings(RELAYCACHE={"DATABASE_NAMESPACES": {"default": "shop-production",
                                                               "other": "shop-production"}}):
        assert database_identity("default") == database_identity("other") == "shop-production"


def _identity_in_a_forked_child(pipe):
    pipe.send(database_identity("other"))


def test_an_in_memory_database_is_private_to_its_process(second_alias):
    """Two processes on ``:memory:`` (a forked child's is a copy from then on) have two
    databases."""
    second_alias.update(ENGINE="django.db.backends.sqlite3", NAME=":memory:")
    fork = multiprocessing.get_context("fork")
    receiver, sender = fork.Pipe(duplex=False)
    child = fork.Process(target=_identity_in_a_forked_child, args=(sender,))
    child.start()
    try:
        assert receiver.poll(30)
        assert receiver.recv() != database_identity("other")
    finally:
        child.join(30)
