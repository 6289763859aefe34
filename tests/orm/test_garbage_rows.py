"""A forged ORM entry whose cells do not decode is a counted miss, never an exception."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest

from tests.ormapp.models import Book

pytestmark = pytest.mark.django_db(transaction=True)


def _forge_cells(backend, key: str, column_value: object) -> None:
    """Rewrite the stored rows of ``key`` as another client could: every column coded
    as a Decimal (``dec``) and holding ``column_value``, the entry's tags and stamps
    kept (it stays current)."""
    vkey = backend.value_key(key)
    tags, stamps, stored = orjson.loads(backend.fetch([vkey])[0])
    codes, rows = stored["~j"]  # the rows as codec.JSONData, stored unwalked
    assert rows, "the query has rows to forge"
    codes = ["dec"] * len(codes)
    rows = [[column_value] * len(codes) for _ in rows]
    assert backend.store_if_current(vkey, orjson.dumps([tags, stamps, {"~j": [codes, rows]}]),
                                    backend.stamp_keys(tags), stamps, 60_000)


@pytest.mark.parametrize("garbage", ["not-a-number", ["nested"]])
def test_a_decimal_cell_that_does_not_decode_is_a_counted_miss(orm_cache, garbage):
    Book.objects.create(title="Dune", author="Herbert", isbn="1",
                        publication_date="1965-08-01", price=Decimal("9.99"))
    query = Book.objects.cached().filter(isbn="1").values_list("price", flat=True)
    assert list(query.all()) == [Decimal("9.99")]
    _forge_cells(orm_cache, query.cache_info().key, garbage)
    corrupt = orm_cache.stats.corrupt
    assert list(query.all()) == [Decimal("9.99")]  # read from the database instead
    assert orm_cache.stats.corrupt == corrupt + 1
