"""Database aliases that share data share invalidation tags (RELAYCACHE setting)."""

from django.test import override_settings

from relaycache import InMemoryCache, invalidate_tables
from relaycache.orm.invalidation import database_tag, table_tag


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
        assert memory_backend.get("replica-read", tags=tags) == ["row"]
        invalidate_tables(["ormapp_book"], using="default")
        assert memory_backend.get("replica-read", tags=tags) is None
