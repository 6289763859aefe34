"""PostgreSQL-only scenarios (collected only when the tests run on PostgreSQL):
TRUNCATE, statements whose written tables cannot be named, stores inside transactions
by isolation level, PostgreSQL-only query features, and what decides which table an
unqualified name reads: schemas, search_path, tenants (django-tenants too), and which
database an alias names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from django.contrib.postgres.aggregates import ArrayAgg, StringAgg
from django.db import connection, transaction
from django.db.backends.postgresql.psycopg_any import IsolationLevel
from django.db.models import Count, Max

from relaycache import RedisCache, invalidate_model, invalidate_tables
from relaycache.core.defaults import use_backend
from relaycache.orm.plan import UNKNOWN_SESSION
from relaycache.orm.queryset import CacheInfo
from relaycache.orm.scope import session_state
from relaycache.orm.tables import SELECT_FOR_UPDATE
from tests.conftest import REDIS_URL, _make_client, _redis_cache
from tests.orm.support import ORM_SCENARIO, in_thread, read, snap
from tests.ormapp.models import AllTypes, Book, Genre, Label, Publisher, Review, SchemaNote

ROOT = Path(__file__).resolve().parents[2]

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


def test_select_for_update_aggregates_outside_a_transaction_behave_as_django(shop, orm_cache):
    """Django aggregates a ``select_for_update()`` queryset without the lock, also in
    autocommit; so do cached ones (uncached: locks must reach the database)."""
    queryset = Book.objects.cached().select_for_update()
    assert queryset.count() == Book.objects.select_for_update().count() == 5
    assert queryset.aggregate(n=Count("id"), top=Max("price")) == (
        Book.objects.select_for_update().aggregate(n=Count("id"), top=Max("price")))
    assert queryset.cache_info() == CacheInfo(cached=False, reason=SELECT_FOR_UPDATE)
    assert orm_cache.stats.bypassed == 2


# -- a table in another schema ----------------------------------------------------------

@pytest.fixture
def elsewhere(transactional_db):
    """The schema and table of ``SchemaNote`` (``db_table = 'ormapp_elsewhere"."note'``)."""
    raw("CREATE SCHEMA ormapp_elsewhere")
    raw("CREATE TABLE ormapp_elsewhere.note (id bigserial PRIMARY KEY, text varchar(50))")
    try:
        yield
    finally:
        raw("RESET search_path")
        raw("DROP SCHEMA ormapp_elsewhere CASCADE")


def test_a_model_in_another_schema_is_fresh_after_every_kind_of_write(scenario, elsewhere):
    """Reads name the table ``ormapp_elsewhere"."note``, writes ``"ormapp_elsewhere".
    "note"`` or, through the search_path, ``note``: all of them meet at the tag
    ``note``."""
    SchemaNote.objects.create(text="first")
    cached = SchemaNote.objects.cached().order_by("id").values_list("text", flat=True)
    assert list(cached) == ["first"]
    SchemaNote.objects.create(text="second")
    assert list(cached.all()) == ["first", "second"]
    SchemaNote.objects.filter(text="second").delete()
    notes = read(lambda: SchemaNote.objects.order_by("id").values_list("text", flat=True))

    def through_the_search_path():
        raw("SET search_path TO ormapp_elsewhere, public")
        raw("INSERT INTO note (text) VALUES ('unqualified')")
        raw("RESET search_path")

    writes = [
        lambda: SchemaNote.objects.create(text="second"),
        lambda: SchemaNote.objects.filter(text="first").update(text="changed"),
        lambda: raw('DELETE FROM "ormapp_elsewhere"."note" WHERE text = %s', ["second"]),
        through_the_search_path,
    ]
    for write in writes:
        scenario.check_write(write, notes)
    assert scenario.fresh(notes) == ["changed", "unqualified"]
    raw("UPDATE ormapp_elsewhere.note SET text = upper(text)")
    assert scenario.fresh(notes) == ["CHANGED", "UNQUALIFIED"]

    with connection.cursor() as cursor, cursor.copy(
            "COPY ormapp_elsewhere.note (text) FROM STDIN") as copy:
        copy.write_row(["copied"])  # unseen (docs/limits.md): invalidated by hand
    invalidate_model(SchemaNote)
    assert scenario.fresh(notes)[-1] == "copied"


# -- schema per tenant: SET search_path ---------------------------------------------------

TENANTS = ("tenant_a", "tenant_b")


@pytest.fixture
def tenant_schemas(transactional_db):
    """Schemas ``tenant_a`` and ``tenant_b``, each with its own ``ormapp_label`` and one
    label in it; every other table is shared, in ``public``."""
    for schema in TENANTS:
        raw(f"CREATE SCHEMA {schema}")
        raw(f"CREATE TABLE {schema}.ormapp_label (LIKE public.ormapp_label INCLUDING ALL)")
        raw(f"INSERT INTO {schema}.ormapp_label (name) VALUES (%s)", [f"{schema} label"])
    try:
        yield
    finally:
        connection.close()  # whatever the test left set on its session
        for schema in TENANTS:
            raw(f"DROP SCHEMA {schema} CASCADE")


def labels():
    return read(lambda: Label.objects.order_by("id").values_list("name", flat=True))


def label_info():
    return Label.objects.cached().order_by("id").values_list("name", flat=True).cache_info()


def test_each_search_path_is_served_its_own_rows(scenario, tenant_schemas):
    for schema in TENANTS:
        raw(f"SET search_path TO {schema}, public")
        assert scenario.warm(labels()) == [f"{schema} label"]
    raw("SELECT set_config('search_path', %s, false)", ["tenant_a, public"])
    assert scenario.warm(labels()) == ["tenant_a label"]
    raw("SET SESSION search_path = %s, public", ["tenant_b"])
    assert scenario.warm(labels()) == ["tenant_b label"]
    raw("SET search_path TO tenant_a, public")
    assert scenario.hit(labels()) == ["tenant_a label"]
    raw("RESET search_path")
    assert scenario.warm(labels()) == []  # public's


def test_a_new_connection_starts_from_the_default_search_path(scenario, tenant_schemas):
    raw("SET search_path TO tenant_b, public")
    assert scenario.warm(labels()) == ["tenant_b label"]
    connection.close()
    assert scenario.warm(labels()) == []


def test_writes_through_a_search_path_reach_every_reader_of_the_table(scenario, shop,
                                                                      tenant_schemas):
    """A tenant's write invalidates its own table for every tenant (tags do not depend
    on the search_path), and a write to a shared table reaches every tenant's readers."""
    publishers = read(lambda: Publisher.objects.order_by("id").values_list("name", flat=True))
    raw("SET search_path TO tenant_a, public")
    scenario.warm(labels())
    before = scenario.warm(publishers)
    raw("SET search_path TO tenant_b, public")
    scenario.warm(labels())
    Label.objects.create(name="tenant_b second")
    Publisher.objects.filter(name="Tor").update(name="Tor Books")
    assert scenario.fresh(labels()) == ["tenant_b label", "tenant_b second"]
    raw("SET search_path TO tenant_a, public")
    assert scenario.fresh(labels()) == ["tenant_a label"]
    after = scenario.fresh(publishers)
    assert "Tor" in before and "Tor Books" in after


def test_set_local_holds_until_its_transaction_ends(scenario, tenant_schemas):
    raw("SET search_path TO tenant_a, public")
    scenario.warm(labels())
    with transaction.atomic():
        raw("SET LOCAL search_path TO tenant_b, public")
        assert label_info().reason == UNKNOWN_SESSION
        assert scenario.cached(labels()) == ["tenant_b label"]
    assert scenario.hit(labels()) == ["tenant_a label"]
    raw("SELECT set_config('search_path', 'tenant_b, public', true)")  # no transaction: no effect
    assert scenario.hit(labels()) == ["tenant_a label"]


def test_a_session_setting_changed_inside_a_transaction_is_unknown_until_set_again(
        scenario, tenant_schemas):
    """PostgreSQL undoes a rolled-back ``SET``: after a transaction that set the
    search_path, which one is in force is not known here until it is set again."""
    for schema in ("tenant_b", "tenant_a"):
        raw(f"SET search_path TO {schema}, public")
        scenario.warm(labels())
    with pytest.raises(RuntimeError), transaction.atomic():
        raw("SET search_path TO tenant_b, public")
        raise RuntimeError("rolled back")
    assert label_info().reason == UNKNOWN_SESSION
    assert scenario.cached(labels()) == ["tenant_a label"]
    with transaction.atomic():
        raw("SET search_path TO tenant_b, public")
    assert label_info().reason == UNKNOWN_SESSION
    assert scenario.cached(labels()) == ["tenant_b label"]
    raw("SET search_path TO tenant_b, public")
    assert scenario.hit(labels()) == ["tenant_b label"]


def test_a_failed_set_leaves_its_setting_unknown(scenario, tenant_schemas):
    raw("SET search_path TO tenant_a, public")
    scenario.warm(labels())
    with pytest.raises(Exception, match="statement_timeout"):
        raw("SET statement_timeout TO 'not a duration'")
    assert label_info().reason == UNKNOWN_SESSION
    raw("RESET statement_timeout")
    assert scenario.hit(labels()) == ["tenant_a label"]


def test_a_temporary_table_hides_the_table_it_is_named_after(scenario, tenant_schemas):
    assert scenario.warm(labels()) == []
    raw("CREATE TEMP TABLE ormapp_label (LIKE public.ormapp_label INCLUDING ALL)")
    raw("INSERT INTO ormapp_label (name) VALUES ('temporary')")
    assert label_info().reason == UNKNOWN_SESSION
    assert scenario.cached(labels()) == ["temporary"]
    raw("DISCARD ALL")
    assert scenario.fresh(labels()) == []  # cached again, then served


def test_a_pooled_connection_may_carry_what_earlier_users_set(tenant_schemas):
    """Before a pool hands out a connection, which one (and what was set on it) is not
    known: once this process saw a setting change on the alias, such reads bypass."""
    assert session_state(connection) == ""
    raw("SET search_path TO tenant_a, public")
    connection.close()
    assert session_state(connection) == ""  # the next connection is a new one
    options = connection.settings_dict["OPTIONS"]
    connection.settings_dict["OPTIONS"] = {**options, "pool": True}
    try:
        assert session_state(connection) is None
    finally:
        connection.settings_dict["OPTIONS"] = options


@pytest.fixture
def row_level_security(transactional_db):
    """``ormapp_label`` rows visible by the session setting ``app.tenant``, to a role
    row-level security applies to (not a superuser)."""
    role = f"relaycache_tenant_{os.getpid()}"
    raw(f"CREATE ROLE {role}")
    raw(f"GRANT SELECT, INSERT ON ormapp_label TO {role}")
    raw("ALTER TABLE ormapp_label ENABLE ROW LEVEL SECURITY")
    raw("CREATE POLICY by_tenant ON ormapp_label USING "
        "(name LIKE current_setting('app.tenant') || '%')")
    Label.objects.bulk_create([Label(name="a: first"), Label(name="b: first")])
    try:
        yield role
    finally:
        connection.close()
        raw("DROP POLICY by_tenant ON ormapp_label")
        raw("ALTER TABLE ormapp_label DISABLE ROW LEVEL SECURITY")
        raw(f"REVOKE ALL ON ormapp_label FROM {role}")
        raw(f"DROP ROLE {role}")


def test_row_level_security_by_session_setting_and_role(scenario, row_level_security):
    """Shared tables, rows chosen by ``SET ROLE`` and ``SET app.tenant``: every setting
    a statement changes on the session is part of the key."""
    raw(f"SET ROLE {row_level_security}")
    for tenant in ("a", "b"):
        raw(f"SET app.tenant = '{tenant}'")
        assert scenario.warm(labels()) == [f"{tenant}: first"]
    raw("RESET ROLE")  # a superuser again: every row
    assert scenario.warm(labels()) == ["a: first", "b: first"]


# -- two databases behind one alias -----------------------------------------------------

def _database_url(name, host=None):
    settings = connection.settings_dict
    return (f"postgres://{settings['USER']}@{host or settings['HOST']}:{settings['PORT']}/"
            f"{name}")


@pytest.fixture
def spare_database(transactional_db):
    """An empty database on the test server, dropped afterwards."""
    settings = connection.settings_dict
    name = f"{settings['NAME']}_spare"
    server = {"host": settings["HOST"], "port": settings["PORT"], "user": settings["USER"],
              "dbname": "postgres", "autocommit": True}
    with psycopg.connect(**server) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(**server) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def shared_redis(real_redis_url):
    """A RedisCache on the real server, with a prefix other processes can be given."""
    client = _make_client(False)
    backend = _redis_cache(client)
    with use_backend(backend):
        yield backend
    backend.clear()
    client.close()


def other_deployment(database_url, backend, command, *args):
    """``tests.tenants.worker`` run with ``database_url`` as its ``default`` alias and
    ``backend``'s Redis keys; the label names it read through the cache."""
    child = subprocess.run(
        [sys.executable, "-m", "tests.tenants.worker", REDIS_URL, backend.value_prefix,
         command, *args],
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings",
             "RELAYCACHE_TEST_DATABASE_URL": database_url},
        cwd=ROOT, capture_output=True, timeout=120, check=False)
    assert child.returncode == 0, child.stderr.decode()[-3000:]
    return json.loads(child.stdout.splitlines()[-1])


@pytest.mark.real_redis
def test_two_databases_behind_one_alias_never_serve_each_others_rows(shared_redis,
                                                                      spare_database):
    """Staging and production (or two sites) on one Redis, each with its own
    ``default`` database: one process never reads the other database's rows."""
    other = _database_url(spare_database)
    assert other_deployment(other, shared_redis, "setup", "second database") == [
        "second database"]
    Label.objects.create(name="first database")
    # The query the other process runs: in one database, one key.
    cached = Label.objects.cached().order_by("id").values_list("name", flat=True)
    assert list(cached) == ["first database"]  # stored
    assert other_deployment(other, shared_redis, "read") == ["second database"]
    hits = shared_redis.stats.hits
    assert list(cached.all()) == ["first database"]
    assert shared_redis.stats.hits == hits + 1


@pytest.mark.real_redis
def test_one_database_reached_by_two_addresses_shares_its_invalidations(shared_redis,
                                                                        transactional_db):
    """Tags do not hold the database's address: a process that reaches the same
    database as ``localhost`` invalidates what this one (``127.0.0.1``) cached."""
    Label.objects.create(name="first")
    cached = Label.objects.cached().order_by("id").values_list("name", flat=True)
    assert list(cached) == ["first"]
    same = _database_url(connection.settings_dict["NAME"], host="localhost")
    assert other_deployment(same, shared_redis, "write", "second") == ["first", "second"]
    assert list(cached.all()) == ["first", "second"]


# -- django-tenants ------------------------------------------------------------------------

def test_django_tenants_serves_each_tenant_its_own_rows(spare_database, orm_cache):
    """A django-tenants project (tests/tenants/) in a process of its own, caching in
    memory or on the Redis server: two tenants on one alias, switched with
    ``tenant_context`` as its middleware switches them."""
    on_redis = isinstance(orm_cache, RedisCache) and REDIS_URL
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.tenants.settings",
           "RELAYCACHE_TENANTS_DATABASE_URL": _database_url(spare_database),
           "RELAYCACHE_TENANTS_REDIS_URL": REDIS_URL if on_redis else "",
           "RELAYCACHE_TENANTS_KEY_PREFIX": f"t{uuid.uuid4().hex[:8]}:"}
    child = subprocess.run([sys.executable, "-m", "tests.tenants.scenario"], env=env, cwd=ROOT,
                           capture_output=True, timeout=300, check=False)
    assert child.returncode == 0, child.stderr.decode()[-3000:]
    steps = json.loads(child.stdout.splitlines()[-1])
    for step, seen in steps.items():
        assert seen["cached"] == seen["database"], step
    for schema in TENANTS:
        assert steps[f"{schema} notes, round 1"]["cached"] == [f"{schema} note"]
        assert steps[f"{schema} notes, round 2"]["hit"]
        assert steps[f"{schema} notes, search_path set once"]["hit"]
    assert steps["tenant_a notes after tenant_b's write"]["cached"] == ["tenant_a note"]
    assert steps["plans read by tenant_a after tenant_b's write"]["cached"] == [
        "written by tenant_b"]
    assert steps["tenant_a notes after a raw SET"]["hit"]
    assert steps["tenant_a notes after a raw SET, search_path set once"] == {
        "cached": ["tenant_b note", "tenant_b second note"],
        "database": ["tenant_b note", "tenant_b second note"], "hit": False}


# -- a hit touches no database connection (issue 16) ------------------------------------

def test_a_hit_opens_no_connection_and_a_miss_does(scenario, shop):
    """After ``connection.close()`` (``CONN_MAX_AGE=0`` does it after each request), a
    request whose reads all hit must not reconnect: with the database down, hits are
    still served (docs/failure.md)."""
    query = read(lambda: Book.objects.filter(pk=shop.dune.pk))
    expected = snap(scenario.warm(query))
    connection.close()
    assert snap(scenario.cached(query)) == expected  # (counting queries would connect)
    assert connection.connection is None
    scenario.fresh(read(lambda: Book.objects.filter(pk=shop.foundation.pk)))
    assert connection.connection is not None
