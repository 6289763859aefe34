"""``invalidate_tables()`` refuses input that would invalidate the wrong tags: a bare
string was one tag per character, leaving the table stale."""

from __future__ import annotations

import pytest

from relaycache import InMemoryCache, invalidate_tables
from relaycache.core.defaults import use_backend
from relaycache.orm.invalidation import table_tag
from tests.ormapp.models import Book


def test_one_string_is_refused_with_the_fix():
    with pytest.raises(TypeError, match=r"invalidate_tables\(\['ormapp_book'\]\)"):
        invalidate_tables("ormapp_book")


def test_a_model_class_is_refused_with_the_fix():
    with pytest.raises(TypeError, match=r"invalidate_model\(Book\)"):
        invalidate_tables([Book])


@pytest.mark.parametrize("bad", [[""], [None], [5]])
def test_names_must_be_strings(bad):
    with pytest.raises(TypeError, match="table names"):
        invalidate_tables(bad)


def test_an_unknown_alias_is_refused():
    with pytest.raises(ValueError, match="no such database alias"):
        invalidate_tables(["ormapp_book"], using="nope")


def test_a_list_invalidates_the_table():
    backend = InMemoryCache()
    with use_backend(backend):
        backend.set("k", 1, 60, tags=[table_tag("ormapp_book")])
        invalidate_tables(["ormapp_book"])
        assert backend.get("k")[0] is False
