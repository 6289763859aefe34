"""The ``RELAYCACHE`` Django setting, turned into the default backend.

    RELAYCACHE = {
        "BACKEND": "redis://127.0.0.1:6379/0",   # or "memory", a dotted path, an instance
        "DEFAULT_TTL": 3600,
        "KEY_PREFIX": "rc:",
        "OPTIONS": {"socket_timeout": 0.5},       # passed to the backend's constructor
        "DATABASE_NAMESPACES": {"replica": "default"},
        "FEED": {"DATABASES": ["default"], "MAX_LAG": 5.0},  # docs/feed.md
        "MODELS": {"auth.User": {"TTL": 900}, "contenttypes": {}},  # cached automatically
        "ENABLED": True,                          # False: no ORM read served or stored
    }

Read when the app is ready and again whenever a test changes the setting.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from .backends.base import BaseCache
from .backends.memory import InMemoryCache
from .backends.redis import RedisCache
from .core.defaults import set_default_backend
from .core.keys import check_ttl

if TYPE_CHECKING:
    from .orm.automatic import ModelRule

DEFAULTS: dict[str, Any] = {
    "BACKEND": "memory",
    "DEFAULT_TTL": 3600,
    "KEY_PREFIX": "rc:",
    "OPTIONS": {},
    "DATABASE_NAMESPACES": {},
    "FEED": {},
    "MODELS": {},
    "ENABLED": True,
}
FEED_DEFAULTS: dict[str, Any] = {"DATABASES": [], "MAX_LAG": 5.0, "SLOT_PREFIX": "relaycache"}
"""The change feed (docs/feed.md): the aliases whose ``relaycache listen`` worker the
system check expects, the lag (seconds) it tolerates, the start of slot names."""
_URL_SCHEMES = ("redis://", "rediss://", "unix://")
_DOTTED_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def _misspelt_url(spec: str) -> str | None:
    """The URL ``spec`` meant when its ``://`` lost a character (``redis//host``,
    ``redis:/host``); ``None`` otherwise. Without this, the import of a dotted path
    reports ``No module named 'redis//127'``."""
    for scheme in ("rediss", "redis", "unix"):
        for typo in (scheme + "//", scheme + ":/"):
            if spec.startswith(typo):
                rest = spec[len(typo):].lstrip("/")
                return f"{scheme}:///{rest}" if scheme == "unix" else f"{scheme}://{rest}"
    return None


def read_settings() -> dict[str, Any]:
    """``RELAYCACHE`` merged with :data:`DEFAULTS`; ``ImproperlyConfigured`` if it is
    not a dict or has unknown keys."""
    from django.conf import settings

    value = getattr(settings, "RELAYCACHE", {})
    if not isinstance(value, dict):
        raise ImproperlyConfigured("RELAYCACHE must be a dict")
    unknown = set(value) - set(DEFAULTS)
    if unknown:
        raise ImproperlyConfigured(
            f"RELAYCACHE has unknown keys {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    return {**DEFAULTS, **value}


def build_backend(config: dict[str, Any]) -> BaseCache:
    """The backend ``config`` (``RELAYCACHE`` merged with defaults) describes."""
    spec, ttl, prefix = config["BACKEND"], config["DEFAULT_TTL"], config["KEY_PREFIX"]
    options = config["OPTIONS"]
    if not isinstance(options, dict):
        raise ImproperlyConfigured("RELAYCACHE['OPTIONS'] must be a dict")
    try:
        check_ttl(ttl)
    except ValueError as exc:
        raise ImproperlyConfigured(f"RELAYCACHE['DEFAULT_TTL']: {exc}") from None
    if not isinstance(prefix, str) or not prefix:
        raise ImproperlyConfigured("RELAYCACHE['KEY_PREFIX'] must be a non-empty string")
    common = {"default_ttl": ttl, "value_prefix": prefix, "meta_prefix": prefix + "meta:",
              **options}
    try:
        if isinstance(spec, BaseCache):
            return spec
        if not isinstance(spec, str):
            raise ImproperlyConfigured(
                f"RELAYCACHE['BACKEND'] must be a URL, 'memory', a dotted path or a backend "
                f"instance, got {type(spec).__qualname__}")
        if spec == "memory":
            return InMemoryCache(**common)
        if spec.startswith(_URL_SCHEMES):
            return RedisCache.from_url(spec, **common)
        if "://" in spec:
            raise ImproperlyConfigured(
                f"RELAYCACHE['BACKEND'] URL scheme must be one of {_URL_SCHEMES}: {spec!r}")
        meant = _misspelt_url(spec)
        if meant is not None:
            raise ImproperlyConfigured(
                f"RELAYCACHE['BACKEND'] {spec!r} is not a URL: did you mean {meant}?")
        if not _DOTTED_PATH.fullmatch(spec):
            raise ImproperlyConfigured(
                f"RELAYCACHE['BACKEND'] {spec!r} is not a URL (redis://, rediss://, "
                "unix://), 'memory' or a dotted path to a backend")
        target = import_string(spec)
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"RELAYCACHE: {exc}") from exc
    except ImportError as exc:
        raise ImproperlyConfigured(f"RELAYCACHE['BACKEND'] {spec!r}: {exc}") from exc
    if isinstance(target, BaseCache):
        return target
    if isinstance(target, type) and issubclass(target, BaseCache):
        try:
            return target(**common)
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(f"RELAYCACHE['OPTIONS'] for {spec!r}: {exc}") from exc
    raise ImproperlyConfigured(f"RELAYCACHE['BACKEND'] {spec!r} is not a relaycache backend")


def database_namespaces(config: dict[str, Any]) -> dict[str, str]:
    """``DATABASE_NAMESPACES``, checked: it must map aliases (str) to names (str)."""
    namespaces = config["DATABASE_NAMESPACES"]
    if not isinstance(namespaces, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in namespaces.items()):
        raise ImproperlyConfigured(
            "RELAYCACHE['DATABASE_NAMESPACES'] must map database aliases (str) to "
            f"namespaces (str), got {namespaces!r}")
    return namespaces


def feed_settings(config: dict[str, Any]) -> dict[str, Any]:
    """``FEED`` merged with :data:`FEED_DEFAULTS`, checked; ``ImproperlyConfigured``
    if it is malformed (reported by the system check ``relaycache.E005``)."""
    feed = config["FEED"]
    if not isinstance(feed, dict):
        raise ImproperlyConfigured("RELAYCACHE['FEED'] must be a dict")
    unknown = set(feed) - set(FEED_DEFAULTS)
    if unknown:
        raise ImproperlyConfigured(f"RELAYCACHE['FEED'] has unknown keys {sorted(unknown)}; "
                                   f"known: {sorted(FEED_DEFAULTS)}")
    merged = {**FEED_DEFAULTS, **feed}
    databases, max_lag, prefix = merged["DATABASES"], merged["MAX_LAG"], merged["SLOT_PREFIX"]
    if not isinstance(databases, list | tuple) or not all(isinstance(a, str) for a in databases):
        raise ImproperlyConfigured("RELAYCACHE['FEED']['DATABASES'] must be a list of database "
                                   f"aliases, got {databases!r}")
    if isinstance(max_lag, bool) or not isinstance(max_lag, int | float) or max_lag <= 0:
        raise ImproperlyConfigured("RELAYCACHE['FEED']['MAX_LAG'] must be a positive number "
                                   f"of seconds, got {max_lag!r}")
    if not isinstance(prefix, str) or not re.fullmatch(r"[a-z_][a-z0-9_]{0,39}", prefix):
        raise ImproperlyConfigured("RELAYCACHE['FEED']['SLOT_PREFIX'] must be 1 to 40 of "
                                   f"[a-z0-9_] (a replication slot name), got {prefix!r}")
    return {**merged, "DATABASES": list(databases)}


def enabled_setting(config: dict[str, Any]) -> bool:
    """``ENABLED``, checked: ``True`` or ``False``."""
    enabled = config["ENABLED"]
    if not isinstance(enabled, bool):
        raise ImproperlyConfigured(f"RELAYCACHE['ENABLED'] must be True or False, got {enabled!r}")
    return enabled


def models_setting(config: dict[str, Any]) -> dict[str, ModelRule]:
    """``MODELS``, checked against the installed apps (needs the app registry); raises
    ``ImproperlyConfigured`` (reported by the system check ``relaycache.E006``)."""
    from .orm.automatic import parse_models

    return parse_models(config["MODELS"])


def apply_settings() -> None:
    """Configure the default backend, database namespaces, the models cached
    automatically and the global switch from Django settings."""
    from .orm import automatic, memo
    from .orm.invalidation import DATABASE_NAMESPACES
    from .orm.options import set_enabled

    config = read_settings()
    namespaces = database_namespaces(config)
    enabled = enabled_setting(config)
    rules = models_setting(config)
    set_default_backend(build_backend(config))
    DATABASE_NAMESPACES.clear()
    DATABASE_NAMESPACES.update(namespaces)
    set_enabled(enabled)
    automatic.configure(rules)
    memo.forget()  # remembered reads carry the namespaces in their keys


def reload(setting: str, **kwargs: Any) -> None:
    """``setting_changed`` receiver: tests that override ``RELAYCACHE`` get it applied."""
    if setting == "RELAYCACHE":
        apply_settings()
