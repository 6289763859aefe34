"""System checks (``manage.py check``), registered by the app.

- ``relaycache.E001``: ``RELAYCACHE`` is not a dict or has unknown keys;
- ``relaycache.E002``: its ``BACKEND``, ``DEFAULT_TTL``, ``KEY_PREFIX`` or ``OPTIONS``
  cannot build a backend;
- ``relaycache.E003``: ``DATABASE_NAMESPACES`` does not map str to str;
- ``relaycache.E004``: a model with a caching manager is read through one database
  alias and written through another, in different invalidation namespaces (its cached
  reads would never be invalidated by its writes);
- ``relaycache.W001``: a Redis backend does not answer ``PING``;
- ``relaycache.W002``: ``DATABASE_NAMESPACES`` names an alias that is not in
  ``DATABASES``;
- ``relaycache.W003`` (``--deploy``): the default backend is an ``InMemoryCache``,
  private to each process.

Not detectable, hence not checked: writes that bypass Django's connections (database
triggers, other applications, ``psql``), routers that decide by hints rather than
by model, and backends passed explicitly to ``@cache`` that are not registered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from django.apps import AppConfig
    from django.db.models import Manager, Model

    from .backends.base import BaseCache

TAG = "relaycache"


def check_settings(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
                   ) -> list[checks.CheckMessage]:
    """E001, E002, E003, W002: the ``RELAYCACHE`` setting, as the app reads it."""
    from . import settings as relaycache_settings

    try:
        config = relaycache_settings.read_settings()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), hint="See docs/configuration.md for the keys.",
                             obj="RELAYCACHE", id="relaycache.E001")]
    messages: list[checks.CheckMessage] = []
    try:
        relaycache_settings.build_backend(config)
    except (ImproperlyConfigured, TypeError, ValueError) as exc:
        messages.append(checks.Error(
            str(exc), hint="BACKEND is 'memory', a redis:// URL, a dotted path or a backend "
                           "instance; OPTIONS are the backend's keyword arguments.",
            obj="RELAYCACHE", id="relaycache.E002"))
    try:
        namespaces = relaycache_settings.database_namespaces(config)
    except ImproperlyConfigured as exc:
        messages.append(checks.Error(str(exc), obj="RELAYCACHE", id="relaycache.E003"))
        return messages
    for alias in sorted(set(namespaces) - set(settings.DATABASES)):
        messages.append(checks.Warning(
            f"RELAYCACHE['DATABASE_NAMESPACES'] names {alias!r}, which is not in DATABASES",
            hint="A misspelt alias keeps its own namespace: its writes and reads are not "
                 "shared with the namespace you meant.", obj="RELAYCACHE",
            id="relaycache.W002"))
    return messages


def _backends() -> list[BaseCache]:
    from .orm.invalidation import orm_backends

    return orm_backends()


def check_backends_reachable(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
                             ) -> list[checks.CheckMessage]:
    """W001: every shared backend the app uses can be reached."""
    messages: list[checks.CheckMessage] = []
    for backend in _backends():
        if not backend.shared:
            continue
        try:
            backend.ping()
        except backend.errors as exc:
            messages.append(checks.Warning(
                f"{backend!r} does not answer PING: {exc}",
                hint="The app runs without the cache meanwhile (reads go to the database, "
                     "invalidations are retried); check the Redis URL and the server.",
                obj="RELAYCACHE", id="relaycache.W001"))
    return messages


def _caches(manager: Manager[Any]) -> bool:
    """Whether ``manager`` makes cached querysets (``from_queryset()`` of ours)."""
    from .orm.queryset import CachedQuerySetMixin

    # A private attribute of from_queryset() managers, not declared by django-stubs.
    queryset_class = getattr(manager, "_queryset_class", None)
    return isinstance(queryset_class, type) and issubclass(queryset_class, CachedQuerySetMixin)


def _caching_models() -> list[type[Model]]:
    from django.apps import apps

    return [model for model in apps.get_models()
            if any(_caches(manager) for manager in model._meta.managers)]


def check_routing(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
                  ) -> list[checks.CheckMessage]:
    """E004: cached models whose reads and writes are routed to different namespaces."""
    from django.db import router

    from .orm.invalidation import namespace

    messages: list[checks.CheckMessage] = []
    for model in _caching_models():
        if app_configs is not None and model._meta.app_config not in app_configs:
            continue
        try:
            read, write = router.db_for_read(model), router.db_for_write(model)
        except Exception:  # a router that needs hints: nothing to say from the model alone
            continue
        if namespace(read) != namespace(write):
            messages.append(checks.Error(
                f"{model._meta.label} is cached, read through {read!r} (namespace "
                f"{namespace(read)!r}) and written through {write!r} (namespace "
                f"{namespace(write)!r}): its writes never invalidate its cached reads",
                hint=f"Map the read alias to the write alias's namespace: "
                     f"RELAYCACHE['DATABASE_NAMESPACES'] = {{{read!r}: {namespace(write)!r}}}.",
                obj=model, id="relaycache.E004"))
    return messages


def check_deploy(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
                 ) -> list[checks.CheckMessage]:
    """W003 (``check --deploy``): an in-process default backend."""
    from .backends.memory import InMemoryCache
    from .core.defaults import get_default_backend

    if isinstance(get_default_backend(), InMemoryCache):
        return [checks.Warning(
            "The default RelayCache backend is an InMemoryCache: each process has its own "
            "copy, and a write in one process does not invalidate the others'.",
            hint="Set RELAYCACHE['BACKEND'] to a redis:// URL when running several "
                 "processes (workers, servers, Celery).", obj="RELAYCACHE",
            id="relaycache.W003")]
    return []


def register() -> None:
    """Register every check (idempotent: the registry is a set)."""
    checks.register(check_settings, TAG)
    checks.register(check_routing, TAG, checks.Tags.models)
    checks.register(check_backends_reachable, TAG, checks.Tags.caches)
    checks.register(check_deploy, TAG, deploy=True)
