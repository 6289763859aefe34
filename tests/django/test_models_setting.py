"""``RELAYCACHE["MODELS"]`` and ``RELAYCACHE["ENABLED"]``: caching chosen in settings,
for models whose managers the project cannot change (``auth.User``,
``contenttypes.ContentType``) as well as its own."""

from __future__ import annotations

import datetime as dt
import pickle

import pytest
from django.apps import apps
from django.contrib.auth.models import Group, User
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connection
from django.db.models import Max, Prefetch
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from relaycache import InMemoryCache
from relaycache.checks import check_settings
from relaycache.settings import models_setting, read_settings
from tests.conftest import _make_client, _redis_cache
from tests.ormapp.models import Book, Plain

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["memory", "redis"])
def backend(request):
    """The backend the setting names: an InMemoryCache, then a RedisCache (fakeredis,
    or the server at RELAYCACHE_TEST_REDIS_URL)."""
    if request.param == "memory":
        yield InMemoryCache(default_ttl=60)
        return
    client = _make_client(False)
    cache = _redis_cache(client)
    yield cache
    cache.clear()
    client.close()


@pytest.fixture
def configure(backend):
    """``configure(MODELS=..., ENABLED=...)``: RELAYCACHE for the rest of the test."""
    overrides = []

    def apply(**setting):
        override = override_settings(RELAYCACHE={"BACKEND": backend, **setting})
        override.enable()
        overrides.append(override)

    yield apply
    for override in reversed(overrides):
        override.disable()


@pytest.fixture
def alice():
    return User.objects.create_user("alice", first_name="Alice", password="x")


def test_related_managers_and_prefetches_follow_the_related_models_setting(
        configure, alice, django_assert_num_queries):
    # First in this module, so that User's managers are swapped here, after Django
    # derived the class of staff.user_set from them: it must be derived again.
    staff = Group.objects.create(name="staff")
    alice.groups.add(staff)
    assert [u.username for u in staff.user_set.all()] == ["alice"]
    configure(MODELS={"auth.User": {}})
    # Related managers that return users (User's setting): cached.
    with django_assert_num_queries(1):
        assert [u.username for u in staff.user_set.all()] == ["alice"]
    with django_assert_num_queries(0):
        assert [u.username for u in staff.user_set.all()] == ["alice"]
    # ... that return groups (Group is not listed): not cached.
    for _ in range(2):
        with django_assert_num_queries(1):
            assert [g.name for g in alice.groups.all()] == ["staff"]

    def groups_with_users():
        return [(g.name, [u.username for u in g.user_set.all()])
                for g in Group.objects.prefetch_related("user_set")]

    with django_assert_num_queries(2):
        assert groups_with_users() == [("staff", ["alice"])]
    with django_assert_num_queries(1):  # the groups; their users come from the cache
        assert groups_with_users() == [("staff", ["alice"])]

    def with_prefetch_object():
        users = Prefetch("user_set", queryset=User.objects.order_by("-username"))
        return [[u.username for u in g.user_set.all()]
                for g in Group.objects.prefetch_related(users)]

    with django_assert_num_queries(2):
        assert with_prefetch_object() == [["alice"]]
    with django_assert_num_queries(1):
        assert with_prefetch_object() == [["alice"]]

    bob = User.objects.create_user("bob", password="x")
    staff.user_set.add(bob)  # an m2m write invalidates the cached related reads
    with django_assert_num_queries(1):
        assert sorted(u.username for u in staff.user_set.all()) == ["alice", "bob"]
    with django_assert_num_queries(2):
        assert groups_with_users() == [("staff", ["alice", "bob"])]
    with django_assert_num_queries(2):
        assert with_prefetch_object() == [["bob", "alice"]]


def test_an_explicit_cached_queryset_lends_its_options_to_its_prefetches(
        configure, alice, django_assert_num_queries):
    alice.groups.add(Group.objects.create(name="staff"))
    configure(MODELS={"auth": {"OPERATIONS": []}})  # nothing of auth cached by itself

    def groups_with_users():
        return [(g.name, [u.username for u in g.user_set.all()])
                for g in Group.objects.cached().prefetch_related("user_set")]

    with django_assert_num_queries(2):
        assert groups_with_users() == [("staff", ["alice"])]
    with django_assert_num_queries(0):
        assert groups_with_users() == [("staff", ["alice"])]
    for _ in range(2):  # without cached(): the group and its users, every time
        with django_assert_num_queries(2):
            list(Group.objects.get(name="staff").user_set.all())


def test_auth_user_reads_hit_after_the_first_and_a_write_invalidates(
        configure, alice, django_assert_num_queries):
    configure(MODELS={"auth.User": {}})
    reads = [
        lambda: User.objects.get(pk=alice.pk).first_name,
        lambda: [u.first_name for u in User.objects.filter(is_active=True)],
        lambda: User.objects.filter(first_name="Alice").count(),
        lambda: User.objects.filter(first_name="Alice").exists(),
        lambda: User.objects.aggregate(Max("first_name")),
    ]
    first = []
    for read in reads:
        with django_assert_num_queries(1):
            first.append(read())
        with django_assert_num_queries(0):
            assert read() == first[-1]
    assert first == ["Alice", ["Alice"], 1, True, {"first_name__max": "Alice"}]

    alice.first_name = "Alicia"
    alice.save()
    expected = ["Alicia", ["Alicia"], 0, False, {"first_name__max": "Alicia"}]
    for read, value in zip(reads, expected, strict=True):
        with django_assert_num_queries(1):
            assert read() == value
        with django_assert_num_queries(0):
            assert read() == value


def test_unlisted_models_stay_uncached(configure, alice, django_assert_num_queries):
    configure(MODELS={"auth.User": {}})
    Group.objects.create(name="staff")
    for _ in range(2):
        with django_assert_num_queries(1):
            assert [g.name for g in Group.objects.all()] == ["staff"]


def test_operations_and_ttl_per_entry(configure, backend, alice, django_assert_num_queries):
    configure(MODELS={"auth.User": {"OPERATIONS": ["get", "count"], "TTL": 1234}})
    for _ in range(2):  # not listed: every evaluation queries
        with django_assert_num_queries(1):
            assert [u.username for u in User.objects.all()] == ["alice"]
        with django_assert_num_queries(1):
            assert User.objects.filter(username="alice").exists()
        with django_assert_num_queries(1):
            assert User.objects.aggregate(Max("id")) == {"id__max": alice.pk}
    for read in (lambda: User.objects.get(username="alice"), User.objects.count):
        with django_assert_num_queries(1):
            read()
        with django_assert_num_queries(0):
            read()

    configure(MODELS={"auth.User": {"TTL": 1234, "SINGLEFLIGHT": True}})
    queryset = User.objects.filter(username="alice")
    list(queryset)
    info = queryset.cache_info()
    assert info.cached
    assert queryset.cache_options.ttl == 1234 and queryset.cache_options.singleflight
    [description] = backend.describe_keys([backend.value_key(info.key)])
    assert 1_200_000 < description.ttl_ms <= 1_234_000


def test_star_apps_and_the_most_specific_entry(configure, alice):
    Group.objects.create(name="staff")
    Plain.objects.create(name="plain")

    def hits(read):
        """Whether the second of two reads ran no SQL."""
        read()
        with CaptureQueriesContext(connection) as captured:
            read()
        return not captured.captured_queries

    group_names = lambda: [g.name for g in Group.objects.all()]  # noqa: E731
    auth_types = lambda: ContentType.objects.filter(app_label="auth").count()  # noqa: E731
    plain = lambda: [p.name for p in Plain.objects.all()]  # noqa: E731
    usernames = lambda: [u.username for u in User.objects.all()]  # noqa: E731

    configure(MODELS=["*"])
    assert [hits(r) for r in (group_names, auth_types, plain, usernames)] == [True] * 4
    configure(MODELS={"*": {}, "auth": {"OPERATIONS": ["get"]}, "auth.Group": {}})
    assert [hits(r) for r in (group_names, auth_types, plain, usernames)] == [
        True, True, True, False]
    configure(MODELS={"contenttypes": {}})
    assert [hits(r) for r in (group_names, auth_types, plain, usernames)] == [
        False, True, False, False]


def test_nocache_opts_out_and_cached_still_chooses(configure, alice, django_assert_num_queries):
    configure(MODELS={"auth.User": {"OPERATIONS": ["get", "fetch"]}})
    for _ in range(2):
        with django_assert_num_queries(1):
            User.objects.nocache().get(pk=alice.pk)
        with django_assert_num_queries(1):
            list(User.objects.filter(is_active=True).nocache())
        with django_assert_num_queries(1):
            list(User.objects.nocache().filter(is_active=True))
    assert User.objects.nocache().cache_info().cached is False
    # An explicit cached() applies to every operation, also those MODELS leaves out.
    with django_assert_num_queries(1):
        assert User.objects.cached().count() == 1
    with django_assert_num_queries(0):
        assert User.objects.cached().count() == 1


def test_a_model_no_longer_named_behaves_as_djangos_again(configure,
                                                          django_assert_num_queries):
    configure(MODELS=["*"])  # every manager is swapped, and stays so
    configure(MODELS={})
    book = Book.objects.create(title="Dune", author="Herbert", isbn="1",
                               publication_date=dt.date(1965, 8, 1))
    Plain.objects.create(name="a", book=book)

    def plains(*lookups):
        return [[p.name for p in b.plains.all()]
                for b in Book.objects.cached().prefetch_related(*lookups)]

    by_name = "plains"
    by_queryset = Prefetch("plains", queryset=Plain.objects.order_by("id"))
    for lookup in (by_name, by_queryset):
        assert plains(lookup) == [["a"]]
        # Plain has Django's manager: its prefetch is never cached, under cached() too.
        with django_assert_num_queries(1):
            assert plains(lookup) == [["a"]]
    for _ in range(2):
        with django_assert_num_queries(1):
            assert [p.name for p in Plain.objects.all()] == ["a"]


def test_caching_survives_djangos_model_cache_expiry(configure, alice,
                                                     django_assert_num_queries):
    configure(MODELS={"auth.User": {}})
    apps.clear_cache()  # what available_apps and INSTALLED_APPS overrides do
    User.objects.get(pk=alice.pk)
    with django_assert_num_queries(0):
        User.objects.get(pk=alice.pk)
    staff = Group.objects.create(name="staff")
    list(staff.user_set.all())
    with django_assert_num_queries(0):
        list(staff.user_set.all())


def test_disabled_serves_and_stores_nothing_and_invalidation_continues(
        configure, backend, alice, django_assert_num_queries):
    def reads():
        return (User.objects.get(pk=alice.pk).first_name,
                [b.title for b in Book.objects.cached()], Book.objects.cached().count())

    configure(MODELS={"auth.User": {}})
    with django_assert_num_queries(3):
        assert reads() == ("Alice", [], 0)
    with django_assert_num_queries(0):
        reads()

    configure(MODELS={"auth.User": {}}, ENABLED=False)
    stores = backend.stats.snapshot()["stores"]
    for _ in range(2):
        with django_assert_num_queries(3):
            assert reads() == ("Alice", [], 0)
    assert backend.stats.snapshot()["stores"] == stores
    info = Book.objects.cached().cache_info()
    assert (info.cached, info.reason) == (False, "RELAYCACHE['ENABLED'] is False")
    alice.first_name = "Alicia"
    alice.save()  # while disabled: the entries cached before are invalidated all the same

    configure(MODELS={"auth.User": {}}, ENABLED=True)
    with django_assert_num_queries(1):
        assert reads() == ("Alicia", [], 0)
    with django_assert_num_queries(0):
        reads()


def test_querysets_pickle_and_migrations_see_no_change(configure, alice):
    configure(MODELS=["*"])
    queryset = User.objects.filter(username="alice")
    loaded = pickle.loads(pickle.dumps(queryset))
    assert [u.pk for u in loaded] == [alice.pk]
    assert type(User.objects).__name__ == "UserManager"
    # The swapped managers deconstruct and compare as Django's own.
    call_command("makemigrations", "auth", "contenttypes", check=True, dry_run=True,
                 verbosity=0)


@pytest.mark.parametrize(("models", "message"), [
    ("auth.User", "must be a dict"),
    ({"auth.Usr": {}}, "not a model of 'auth' (its models: Group, Permission, User)"),
    ({"nope": {}}, "no installed app has the label 'nope'"),
    ({"auth.User": {"TIMEOUT": 5}}, "unknown keys ['TIMEOUT']"),
    ({"auth.User": {"OPERATIONS": "get"}}, "write ['get']"),
    ({"auth.User": {"OPERATIONS": ["list"]}}, "unknown operations ['list']"),
    ({"auth.User": {"TTL": -1}}, "['TTL']"),
    ({"auth.User": {}, "auth.user": {}}, "names 'auth.user' a second time"),
])
def test_malformed_models_setting_is_a_clear_error(models, message):
    with pytest.raises(ImproperlyConfigured) as raised, override_settings(
            RELAYCACHE={"MODELS": models}):
        pass
    assert message in str(raised.value)
    with pytest.raises(ImproperlyConfigured):
        models_setting({**read_settings(), "MODELS": models})


def test_system_check_e006(settings):
    settings.RELAYCACHE = {}
    from django.conf import settings as django_settings

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(django_settings, "RELAYCACHE", {"MODELS": {"auth.Usr": {}},
                                                      "ENABLED": "no"}, raising=False)
        messages = check_settings()
    assert [m.id for m in messages] == ["relaycache.E006", "relaycache.E006"]
    assert "auth.Usr" in messages[0].msg and "ENABLED" in messages[1].msg
