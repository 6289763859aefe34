"""PostgreSQL-only scenarios (collected only when the tests run on PostgreSQL):
TRUNCATE, statements whose written tables cannot be named, stores inside transactions
by isolation level, and PostgreSQL-only query features."""

from __future__ import annotations

import pytest
from django.contrib.postgres.aggregates import ArrayAgg, StringAgg
from django.db import connection, transaction
from django.db.backends.postgresql.psycopg_any import IsolationLevel
from django.db.models import Count

from relaycache import invalidate_tables
from tests.orm.support import ORM_SCENARIO, in_thread, read
from tests.ormapp.models import AllTypes, Book, Genre, Label, Publisher, Review

pytestmark = ORM_SCENARIO


def raw(sql, params=None):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else None


def review_reads():
    return (read(lambda: Review.objects.all(), lambda qs: qs.count()),
            read(lambda: Book.objects.annotate(n=Count("reviews")).values_list("title", "n")))


def test_truncate(scenario, shop):
    scenario.check_write(lambda: raw("TRUNCATE ormapp_review"), *review_reads())


def test_truncate_several_tables_and_restart_identity(scenario, shop):
    scenario.check_write(
        lambda: raw('TRUNCATE TABLE ONLY "ormapp_review", ormapp_bookgenre RESTART IDENTITY'),
        *review_reads(),
        read(lambda: Book.objects.filter(genres__genre__slug="sf").order_by("id")),
    )


def test_truncate_cascade(scenario, shop):
    """CASCADE empties tables the statement does not name (the m2m through table)."""
    scenario.check_write(
        lambda: raw("TRUNCATE ormapp_label CASCADE"),
        read(lambda: Book.objects.filter(labels__isnull=False).distinct().order_by("id")),
        read(lambda: Book.objects.annotate(n=Count("labels")).values_list("n", flat=True)),
    )


def test_multi_statement_write(scenario, shop):
    scenario.check_write(
        lambda: raw("SELECT 1; UPDATE ormapp_publisher SET country = 'XX'; "
                    "DELETE FROM ormapp_review WHERE stars < 5"),
        read(lambda: Publisher.objects.values_list("country", flat=True).order_by("id")),
        *review_reads(),
    )


def test_data_modifying_cte(scenario, shop):
    def write():
        assert raw("WITH gone AS (DELETE FROM ormapp_review WHERE stars < %s RETURNING id) "
                   "SELECT count(*) FROM gone", [5]) == [(3,)]

    scenario.check_write(write, *review_reads())


def test_do_block(scenario, shop):
    scenario.check_write(
        lambda: raw("DO $$ BEGIN UPDATE ormapp_book SET price = 0; END $$"),
        read(lambda: Book.objects.values_list("price", flat=True).order_by("id")),
    )


def test_composed_sql_object(scenario, shop):
    from psycopg import sql

    scenario.check_write(
        lambda: raw(sql.SQL("UPDATE {} SET name = upper(name)").format(
            sql.Identifier("ormapp_label"))),
        read(lambda: Label.objects.order_by("id")),
    )


def test_explain_analyze_of_a_write(scenario, shop):
    """``EXPLAIN ANALYZE`` runs the statement it explains: this UPDATE is committed."""
    scenario.check_write(
        lambda: raw("EXPLAIN ANALYZE UPDATE ormapp_book SET title = upper(title)"),
        read(lambda: Book.objects.values_list("title", flat=True).order_by("id")),
    )


def test_copy_from_stdin(scenario, shop):
    """psycopg's ``cursor.copy()`` bypasses Django's execute wrappers, so it is not seen
    (docs/limits.md); ``invalidate_tables()`` after it is the documented remedy."""
    def write():
        with connection.cursor() as cursor, cursor.copy(
                "COPY ormapp_label (name) FROM STDIN") as copy:
            copy.write_row(["copied"])
        invalidate_tables(["ormapp_label"])

    scenario.check_write(write, read(lambda: Label.objects.order_by("id")))


def test_unparseable_write_inside_atomic(scenario, shop, orm_cache):
    """A write whose tables cannot be named makes every read of the transaction bypass,
    and invalidates every entry of the database at the commit."""
    labels = read(lambda: Label.objects.order_by("id").values_list("name", flat=True))
    publishers = read(lambda: Publisher.objects.order_by("id").values_list("name", flat=True))
    before = [scenario.warm(labels), scenario.warm(publishers)]
    with transaction.atomic():
        raw("UPDATE ormapp_label SET name = 'x'; UPDATE ormapp_publisher SET name = 'y'")
        for r in (labels, publishers, read(lambda: Genre.objects.order_by("id"))):
            assert r.build().cached().cache_info().reason == (
                "a table it reads was written in this transaction")
            scenario.fresh(r, rehit=False)
    after = [scenario.fresh(labels), scenario.fresh(publishers)]
    assert after[0][0] == "x" and after[1][0] == "y" and after != before


def test_isolation_level_set_by_raw_sql(scenario, shop, orm_cache):
    """``SET TRANSACTION ISOLATION LEVEL REPEATABLE READ`` as the transaction's first
    statement makes its reads a snapshot: one that predates a commit made meanwhile
    elsewhere must not be stored as current."""
    labels = read(lambda: Label.objects.order_by("id").values_list("name", flat=True))
    with transaction.atomic():
        raw("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        list(Book.objects.nocache()[:1])  # the snapshot starts here
        in_thread(lambda: Label.objects.create(name="committed elsewhere"))
        inside = scenario.cached(labels)
        assert "committed elsewhere" not in inside
    assert scenario.fresh(labels)[-1] == "committed elsewhere"


def test_read_committed_transaction_stores_clean_reads(scenario, shop, orm_cache,
                                                       django_assert_num_queries):
    """Under READ COMMITTED a miss inside ``atomic`` on a table the transaction did not
    write is stored; tables it wrote bypass."""
    assert connection.isolation_level == IsolationLevel.READ_COMMITTED
    genres = read(lambda: Label.objects.order_by("id"))
    with transaction.atomic():
        Review.objects.create(book=shop.dune, stars=1)
        info = Label.objects.cached().order_by("id").cache_info()
        assert info.cached and info.store
        scenario.warm(genres)
        assert Review.objects.cached().cache_info().cached is False
    scenario.hit(genres)


@pytest.fixture(params=[IsolationLevel.REPEATABLE_READ, IsolationLevel.SERIALIZABLE],
                ids=["repeatable-read", "serializable"])
def strict_isolation(request, transactional_db):
    connection.ensure_connection()
    previous = connection.isolation_level
    connection.connection.isolation_level = request.param
    connection.isolation_level = request.param
    try:
        yield request.param
    finally:
        connection.connection.isolation_level = previous
        connection.isolation_level = previous


def test_snapshot_transaction_stores_nothing(strict_isolation, scenario, shop, orm_cache,
                                             django_assert_num_queries):
    """Under a snapshot isolation level a read inside ``atomic`` may predate commits
    already invalidated: it is served from the cache when possible, never stored."""
    labels = read(lambda: Label.objects.order_by("id").values_list("name", flat=True))
    genres = read(lambda: Book.objects.filter(is_featured=True).order_by("id"))
    scenario.warm(genres)
    with transaction.atomic():
        list(Book.objects.nocache()[:1])  # the snapshot starts here
        in_thread(lambda: Label.objects.create(name="committed elsewhere"))
        info = Label.objects.cached().order_by("id").values_list("name", flat=True).cache_info()
        assert info.cached and not info.store
        stores = orm_cache.stats.stores
        for _ in range(2):
            with django_assert_num_queries(1):
                inside = scenario.cached(labels)
        assert "committed elsewhere" not in inside  # the snapshot
        assert orm_cache.stats.stores == stores
        scenario.hit(genres)  # stored before the transaction: served
    assert scenario.fresh(labels)[-1] == "committed elsewhere"


def test_select_for_update_options(shop, orm_cache, django_assert_num_queries):
    reason = "select_for_update() locks rows; it must reach the database"
    with transaction.atomic():
        for qs in (Book.objects.cached().select_for_update(skip_locked=True),
                   Book.objects.cached().select_for_update(nowait=True).filter(price__gt=1),
                   Book.objects.cached().select_related("main_publisher")
                   .select_for_update(of=("self",))):
            assert qs.cache_info().reason == reason
            for _ in range(2):
                with django_assert_num_queries(1):
                    list(qs.all())


def test_distinct_on_fields(scenario, shop):
    scenario.check_write(
        lambda: Book.objects.filter(pk=shop.foundation.pk).update(price=50),
        read(lambda: Book.objects.filter(main_publisher__isnull=False)
             .order_by("main_publisher", "-price").distinct("main_publisher")),
    )


def test_array_and_string_aggregates(scenario, shop):
    scenario.check_write(
        lambda: Book.objects.filter(pk=shop.spqr.pk).update(main_publisher=shop.penguin),
        read(lambda: Publisher.objects.annotate(
            titles=ArrayAgg("main_books__title", order_by="main_books__title"),
            isbns=StringAgg("main_books__isbn", delimiter=",", order_by="main_books__isbn"),
        ).order_by("id")),
    )


def test_jsonb_containment_parameters(scenario, all_types):
    """``__contains`` binds a ``Jsonb`` parameter: two values are two entries."""
    one = read(lambda: AllTypes.objects.filter(data__contains={"n": None}).order_by("id"))
    two = read(lambda: AllTypes.objects.filter(data__contains={"a": {"b": [1]}})
               .order_by("id"))
    assert scenario.warm(one) != [] and scenario.warm(two) != []
    scenario.check_write(
        lambda: AllTypes.objects.filter(pk=all_types.full.pk).update(data={"n": None}),
        two)


def test_binary_field_type_follows_the_driver(scenario, all_types):
    """``bytea`` comes back as the driver makes it (``bytes`` with psycopg 3,
    ``memoryview`` with psycopg2), hit or not."""
    truth = list(AllTypes.objects.order_by("id"))
    hit = scenario.warm(read(lambda: AllTypes.objects.order_by("id")))
    assert type(hit[0].blob) is type(truth[0].blob)
    assert bytes(hit[0].blob) == b"\x00\x01binary\xff"
    values = scenario.warm(read(lambda: AllTypes.objects.values_list("blob", flat=True)
                                .order_by("id")))
    assert type(values[0]) is type(truth[0].blob)
