"""What a write statement says about the rows it writes (relaycache.orm.sqlwrites and
pins): the SQL Django's compilers send, and the forms that must fall back to the table.

The scenario tests (test_granular.py) show the behaviour end to end; these pin down the
parser on statements that Django does not send on every backend under test (UNNEST,
ON CONFLICT) and on the fall-backs whose failure would serve stale data.
"""

from __future__ import annotations

import uuid

import pytest

from relaycache.orm import pins
from relaycache.orm.sqlwrites import identifiers, row_write

BOOK = "ormapp_book"


def tags(sql: str, params: tuple[object, ...] = (), rowcount: int = 1) -> list[str] | None:
    write = row_write(sql)
    return None if write is None else pins.write_tags(write, params, rowcount, "default")


def test_save_with_update_fields_names_its_row_and_columns():
    assert tags(f'UPDATE "{BOOK}" SET "title" = %s WHERE "{BOOK}"."id" = %s', ("x", 5)) == [
        f"table:default:{BOOK}", f"upd:default:{BOOK}", f"col:default:{BOOK}:title",
        f"pin:default:{BOOK}:id:5",
        f"pinned:default:{BOOK}:main_publisher_id"]


def test_moving_a_row_names_the_new_value_and_gives_up_on_the_unknown_old_one():
    found = tags(f'UPDATE "{BOOK}" SET "main_publisher_id" = %s WHERE "{BOOK}"."id" = %s',
                 (7, 5))
    assert f"pinned:default:{BOOK}:main_publisher_id" in found
    found = tags(f'UPDATE "{BOOK}" SET "main_publisher_id" = %s WHERE '
                 f'("{BOOK}"."id" IN (%s, %s) AND "{BOOK}"."main_publisher_id" = %s)',
                 (7, 5, 6, 3))
    assert f"pin:default:{BOOK}:main_publisher_id:3" in found
    assert f"pin:default:{BOOK}:main_publisher_id:7" in found
    assert f"pinned:default:{BOOK}:main_publisher_id" not in found
    assert {f"pin:default:{BOOK}:id:5", f"pin:default:{BOOK}:id:6"} <= set(found)


def test_insert_names_listed_keys_and_gives_up_on_the_automatic_one():
    found = tags('INSERT INTO "ormapp_bookgenre" ("book_id", "genre_id") VALUES (%s, %s), '
                 '(%s, %s) ON CONFLICT DO NOTHING RETURNING "ormapp_bookgenre"."id"',
                 (1, 2, 3, 2))
    assert found == ["table:default:ormapp_bookgenre", "rows:default:ormapp_bookgenre",
                     "pin:default:ormapp_bookgenre:book_id:1",
                     "pin:default:ormapp_bookgenre:book_id:3",
                     "pin:default:ormapp_bookgenre:genre_id:2",
                     "pinned:default:ormapp_bookgenre:id"]


def test_postgresql_unnest_bulk_insert():
    found = tags('INSERT INTO "ormapp_bookgenre" ("book_id", "genre_id") SELECT * FROM '
                 'UNNEST((%s)::integer[], (%s)::integer[]) RETURNING "ormapp_bookgenre"."id"',
                 ([1, 2], [9, 9]))
    assert "pin:default:ormapp_bookgenre:book_id:2" in found
    assert "pin:default:ormapp_bookgenre:genre_id:9" in found


def test_a_write_that_changed_no_row_replaces_nothing():
    assert tags(f'DELETE FROM "{BOOK}" WHERE "{BOOK}"."id" IN (%s)', (5,), rowcount=0) == []
    assert tags(f'UPDATE "{BOOK}" SET "title" = %s WHERE "{BOOK}"."id" = %s', ("x", 5),
                rowcount=0) == []


@pytest.mark.parametrize("sql, params", [
    # a subquery: the rows are not named
    (f'DELETE FROM "{BOOK}" WHERE "{BOOK}"."id" IN (SELECT U0."id" FROM "{BOOK}" U0 '
     'WHERE U0."title" = %s)', ("x",)),
    # an OR: neither side fixes the rows
    (f'UPDATE "{BOOK}" SET "title" = %s WHERE "{BOOK}"."id" = %s OR "{BOOK}"."id" = %s',
     ("x", 1, 2)),
    # literals instead of parameters
    (f"UPDATE {BOOK} SET title = 'x' WHERE id = 5", ()),
    # NOT
    (f'DELETE FROM "{BOOK}" WHERE NOT ("{BOOK}"."id" = %s)', (5,)),
])
def test_rows_not_named_by_parameters_give_up_on_every_key(sql, params):
    found = tags(sql, params)
    assert f"pinned:default:{BOOK}:id" in found
    assert not any(tag.startswith("pin:") for tag in found)


@pytest.mark.parametrize("sql, params", [
    ('INSERT INTO "t" ("a") VALUES (%s) ON CONFLICT ("a") DO UPDATE SET "a" = EXCLUDED."a"',
     (1,)),
    ('INSERT OR REPLACE INTO "t" ("a") VALUES (%s)', (1,)),
    ('INSERT INTO "t" ("a") SELECT "b" FROM "u"', ()),
    ('UPDATE "t" SET "a" = %(a)s WHERE "t"."id" = %(id)s', {"a": 1, "id": 2}),
    ('UPDATE "t" SET "a" = %s WHERE "t"."id" = %s; DELETE FROM "u"', (1, 2)),
])
def test_other_forms_fall_back_to_the_table(sql, params):
    assert tags(sql, params) is None


def test_parameters_that_do_not_match_the_placeholders_fall_back():
    # psycopg also fills a %s inside a string literal: the count then differs
    assert tags(f"UPDATE \"{BOOK}\" SET \"title\" = 'a%s' WHERE \"{BOOK}\".\"id\" = %s",
                ("x", 5)) is None


def test_a_value_of_another_type_gives_up_on_the_column():
    found = tags(f'UPDATE "{BOOK}" SET "title" = %s WHERE "{BOOK}"."id" = %s', ("x", "5"))
    assert f"pinned:default:{BOOK}:id" in found


def test_uuid_values_are_one_spelling():
    value = uuid.UUID(int=7)
    assert pins.pin_value("uuid", value) == pins.pin_value("uuid", str(value)) == value.hex


def test_booleans_are_not_integers():
    with pytest.raises(pins._Unknown):
        pins.pin_value("int", True)


def test_identifiers_exclude_string_literals():
    assert identifiers("SELECT \"a\".\"b\", c FROM a WHERE d = 'e f'") == {
        "select", "a", "b", "c", "from", "where", "d"}


def test_a_row_count_is_not_trusted_before_returned_rows_are_fetched():
    assert tags(f'DELETE FROM "{BOOK}" WHERE "{BOOK}"."id" = %s RETURNING "{BOOK}"."id"', (5,),
                rowcount=0) != []


def test_returning_is_asked_of_rows_named_by_primary_key_in_managed_tables():
    """Only a statement naming its rows by primary key returns them (others could
    return millions), and only on a managed model's table (an unmanaged one may be a
    view whose rules refuse RETURNING)."""
    from tests.orm.test_indirect_writes import BookListing

    delete = f'DELETE FROM "{BOOK}" WHERE "{BOOK}"."id" IN (%s)'
    assert pins.unstated_keys(row_write(delete)) == ["main_publisher_id"]
    by_title = f'DELETE FROM "{BOOK}" WHERE "{BOOK}"."title" = %s'
    assert pins.unstated_keys(row_write(by_title)) == []
    assert pins.shapes()[BookListing._meta.db_table].managed is False
    assert pins.shapes()[BOOK].managed is True
