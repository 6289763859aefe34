"""System checks: the RELAYCACHE setting, Redis reachability, routing, deployment."""

from __future__ import annotations

import pytest
from django.conf import settings as django_settings
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from relaycache import checks as relaycache_checks
from relaycache.orm import invalidation
from relaycache.testing import use_backend


def messages(deploy: bool = False) -> list[checks.CheckMessage]:
    return checks.run_checks(tags=["relaycache"], include_deployment_checks=deploy)


def ids(deploy: bool = False) -> list[str]:
    return sorted(message.id for message in messages(deploy))


@pytest.fixture
def relaycache_setting(monkeypatch):
    """Set ``RELAYCACHE`` the way a settings module would, without ``setting_changed``
    (which would apply it at once and raise)."""
    return lambda value: monkeypatch.setattr(django_settings, "RELAYCACHE", value,
                                             raising=False)


class ReplicaRouter:
    """Reads of the test app go to ``replica``, writes to ``default``."""

    def db_for_read(self, model, **hints):
        return "replica" if model._meta.app_label == "ormapp" else None

    def db_for_write(self, model, **hints):
        return "default"


class HintRouter:
    """A router that cannot decide without hints."""

    def db_for_read(self, model, **hints):
        return hints["instance"]._state.db

    def db_for_write(self, model, **hints):
        return hints["instance"]._state.db


def test_checks_are_registered_by_the_app():
    registered = checks.registry.registry.get_checks(include_deployment_checks=True)
    for check in (relaycache_checks.check_settings, relaycache_checks.check_routing,
                  relaycache_checks.check_backends_reachable,
                  relaycache_checks.check_deploy):
        assert check in registered
    assert relaycache_checks.check_deploy not in checks.registry.registry.get_checks()


def test_default_configuration_is_clean(relaycache_backend):
    assert messages() == []
    call_command("check", "--tag", "relaycache")


@pytest.mark.parametrize(("value", "text"), [
    (["not", "a", "dict"], "RELAYCACHE must be a dict"),
    ({"DEFAULT_TIMEOUT": 60}, "unknown keys ['DEFAULT_TIMEOUT']"),
])
def test_e001_malformed_setting(relaycache_setting, value, text):
    relaycache_setting(value)
    (message,) = messages()
    assert message.id == "relaycache.E001"
    assert isinstance(message, checks.Error)
    assert text in message.msg


@pytest.mark.parametrize(("value", "text"), [
    ({"BACKEND": "ftp://host/0"}, "URL scheme"),
    ({"BACKEND": "no.such.module.Backend"}, "'no.such.module.Backend'"),
    ({"BACKEND": "django.conf.settings"}, "is not a relaycache backend"),
    ({"BACKEND": 42}, "must be a URL"),
    ({"DEFAULT_TTL": -5}, "DEFAULT_TTL"),
    ({"KEY_PREFIX": ""}, "KEY_PREFIX"),
    ({"OPTIONS": "socket_timeout=1"}, "OPTIONS"),
    ({"OPTIONS": {"no_such_option": 1}}, "no_such_option"),
    ({"BACKEND": "relaycache.InMemoryCache", "OPTIONS": {"no_such_option": 1}},
     "no_such_option"),
])
def test_e002_backend_that_cannot_be_built(relaycache_setting, value, text):
    relaycache_setting(value)
    (message,) = messages()
    assert message.id == "relaycache.E002"
    assert text in message.msg


def test_e003_bad_namespaces(relaycache_setting):
    relaycache_setting({"DATABASE_NAMESPACES": {"default": 1}})
    assert ids() == ["relaycache.E003"]
    relaycache_setting({"DATABASE_NAMESPACES": ["default"]})
    assert ids() == ["relaycache.E003"]


def test_w002_namespace_for_an_unknown_alias(relaycache_setting):
    relaycache_setting({"DATABASE_NAMESPACES": {"replcia": "default", "default": "main"}})
    (message,) = messages()
    assert message.id == "relaycache.W002"
    assert "'replcia'" in message.msg


def test_manage_py_check_reports_errors(relaycache_setting, db):
    # ``db``: Django 6 runs its database checks in ``check`` too.
    relaycache_setting({"BACKEND": "ftp://nowhere"})
    with pytest.raises(SystemCheckError, match=r"relaycache\.E002"):
        call_command("check")


def test_w001_unreachable_redis(unreachable_backend):
    with use_backend(unreachable_backend):
        (message,) = messages()
    assert message.id == "relaycache.W001"
    assert isinstance(message, checks.Warning)
    assert "does not answer PING" in message.msg


def test_w001_silent_when_redis_answers(redis_backend):
    with use_backend(redis_backend):
        assert messages() == []


def test_w001_covers_backends_registered_by_cached_querysets(redis_backend,
                                                             unreachable_backend):
    invalidation.register_backend(unreachable_backend)
    try:
        with use_backend(redis_backend):
            assert ids() == ["relaycache.W001"]
    finally:
        invalidation._extra_backends.discard(unreachable_backend)


def test_e004_reads_and_writes_in_different_namespaces(settings, monkeypatch):
    settings.DATABASE_ROUTERS = [ReplicaRouter()]
    found = [m for m in messages() if m.id == "relaycache.E004"]
    labels = sorted(m.obj._meta.label for m in found)
    assert "ormapp.Book" in labels and "ormapp.Genre" in labels
    assert "ormapp.Plain" not in labels  # Django's own manager: nothing cached
    assert "auth.User" not in labels
    book = next(m for m in found if m.obj._meta.label == "ormapp.Book")
    assert "'replica'" in book.msg and "'default'" in book.msg
    assert "'replica': 'default'" in book.hint

    monkeypatch.setitem(invalidation.DATABASE_NAMESPACES, "replica", "default")
    assert [m for m in messages() if m.id == "relaycache.E004"] == []


def test_e004_skips_routers_that_need_hints(settings):
    settings.DATABASE_ROUTERS = [HintRouter()]
    assert messages() == []


def test_w003_in_memory_default_backend_on_deploy(relaycache_backend):
    assert ids(deploy=True) == ["relaycache.W003"]
    assert ids(deploy=False) == []


def test_w003_silent_with_redis(redis_backend):
    with use_backend(redis_backend):
        assert ids(deploy=True) == []
