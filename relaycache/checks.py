"""System checks (``manage.py check``), registered by the app.

- ``relaycache.E001``: ``RELAYCACHE`` is not a dict or has unknown keys;
- ``relaycache.E002``: its ``BACKEND``, ``DEFAULT_TTL``, ``KEY_PREFIX`` or ``OPTIONS``
  cannot build a backend;
- ``relaycache.E003``: ``DATABASE_NAMESPACES`` does not map str to str;
- ``relaycache.E004``: a cached model (a caching manager, or ``MODELS``) is read
  through one database alias and written through another, in different invalidation
  namespaces (its cached reads would never be invalidated by its writes);
- ``relaycache.W001``: a Redis backend does not answer ``PING``;
- ``relaycache.W002``: ``DATABASE_NAMESPACES`` names an alias that is not in
  ``DATABASES``;
- ``relaycache.W003`` (``--deploy``): the default backend is an ``InMemoryCache``,
  private to each process.
- ``relaycache.W005``: a cached model is read through a replica alias
  (``DATABASE_NAMESPACES`` maps it to another alias), whose reads are never stored;
- ``relaycache.E005``: ``RELAYCACHE["FEED"]`` is malformed;
- ``relaycache.E006``: ``RELAYCACHE["MODELS"]`` names an app or model that is not
  installed or gives an unknown option, or ``ENABLED`` is not a bool;
- ``relaycache.W004``: a database ``FEED`` names has no change-feed worker
  (``relaycache listen``) recording progress, or its worker is behind by more than
  ``MAX_LAG`` seconds, or is not PostgreSQL. Read from the cache (one round trip), never
  from a database, and only when ``FEED`` names databases.

Not detectable, hence not checked: writes that bypass Django's connections (database
triggers, other applications, ``psql``; the change feed invalidates them, W004 watches
the feed), routers that decide by hints rather than
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
    """E001, E002, E003, E006, W002: the ``RELAYCACHE`` setting, as the app reads it."""
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
    for check in (relaycache_settings.models_setting, relaycache_settings.enabled_setting):
        try:
            check(config)
        except ImproperlyConfigured as exc:
            messages.append(checks.Error(
                str(exc), hint="MODELS maps 'app_label.Model', 'app_label' or '*' to options "
                               "TTL, OPERATIONS (get, fetch, count, aggregate, exists) and "
                               "SINGLEFLIGHT; see docs/configuration.md.",
                obj="RELAYCACHE", id="relaycache.E006"))
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
    """Models whose reads may be cached: by a caching manager or by ``MODELS``."""
    from django.apps import apps

    from .orm.automatic import cached_models

    automatic = set(cached_models())
    return [model for model in apps.get_models()
            if model in automatic or any(_caches(manager) for manager in model._meta.managers)]


def check_routing(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
                  ) -> list[checks.CheckMessage]:
    """E004: cached models whose reads and writes are routed to different namespaces;
    W005: cached models read through a replica alias, whose reads are never stored."""
    from django.db import router

    from .orm.invalidation import is_replica, namespace

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
        elif is_replica(read):
            messages.append(checks.Warning(
                f"{model._meta.label} is cached and read through {read!r}, a replica of "
                f"{namespace(read)!r}: reads through a replica are never stored (it may lag "
                f"behind writes already invalidated), only served from entries that reads "
                f"through {namespace(read)!r} stored",
                hint=f"Send cached reads to {namespace(read)!r} (.using() or the router) "
                     f"to fill the cache; see docs/consistency.md, \"Replicas\".",
                obj=model, id="relaycache.W005"))
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


def check_feed(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
               ) -> list[checks.CheckMessage]:
    """E005, W004: the change feed of docs/feed.md. Writes Django does not make are
    invalidated only while a worker runs, and nothing else notices when it stops; its
    progress record in the cache says since when everything committed is invalidated.
    """
    from django.db import connections

    from . import settings as relaycache_settings
    from .core.defaults import get_default_backend
    from .orm.feed import feed_report

    try:
        config = relaycache_settings.read_settings()
    except ImproperlyConfigured:  # relaycache.E001 says so
        return []
    try:
        feed = relaycache_settings.feed_settings(config)
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), hint="See docs/feed.md.", obj="RELAYCACHE",
                             id="relaycache.E005")]
    messages: list[checks.CheckMessage] = []
    aliases: list[str] = []
    for alias in feed["DATABASES"]:
        if alias not in connections:
            messages.append(checks.Warning(
                f"RELAYCACHE['FEED'] names {alias!r}, which is not in DATABASES",
                obj="RELAYCACHE", id="relaycache.W004"))
        elif connections[alias].vendor != "postgresql":
            messages.append(checks.Warning(
                f"RELAYCACHE['FEED'] names {alias!r}, a {connections[alias].display_name} "
                "database: the change feed supports PostgreSQL only",
                hint="Remove it from FEED['DATABASES']; writes Django does not make there "
                     "are not invalidated (docs/limits.md).", obj="RELAYCACHE",
                id="relaycache.W004"))
        else:
            aliases.append(alias)
    backend = get_default_backend()
    try:
        report = feed_report(backend, aliases)
    except backend.errors:  # relaycache.W001 says the cache is unreachable
        return messages
    for alias, record in report.items():
        command = f"manage.py relaycache listen --database {alias}"
        if record is None or "lag" not in record:
            messages.append(checks.Warning(
                f"No change-feed worker has recorded progress for database {alias!r}: "
                "writes Django does not make there (other programs, psql, triggers, COPY) "
                "stay cached until their TTL.",
                hint=f"Run `{command} --setup` once, then keep `{command}` running.",
                obj="RELAYCACHE", id="relaycache.W004"))
        elif record["lag"] > feed["MAX_LAG"]:
            messages.append(checks.Warning(
                f"The change feed of database {alias!r} is {record['lag']:.1f} s behind "
                f"(MAX_LAG {feed['MAX_LAG']} s; worker {record.get('worker')}, slot "
                f"{record.get('slot')}, at {record.get('lsn')}): writes Django does not "
                "make may be served stale meanwhile.",
                hint=f"Check that `{command}` runs and can reach PostgreSQL and the cache.",
                obj="RELAYCACHE", id="relaycache.W004"))
    return messages


def register() -> None:
    """Register every check (idempotent: the registry is a set)."""
    checks.register(check_settings, TAG)
    checks.register(check_routing, TAG, checks.Tags.models)
    checks.register(check_backends_reachable, TAG, checks.Tags.caches)
    checks.register(check_deploy, TAG, deploy=True)
    checks.register(check_feed, TAG, checks.Tags.caches)
