"""Django settings of the benchmark workers: the sample book shop, configured for one
library per process.

Every library patches Django globally (cacheops and cachalot replace ORM methods at
start-up), so each process runs exactly one of them, chosen by ``BENCH_LIBRARY``:

``relaycache``  the sample's own configuration, on Redis (``CachedManager.cached()``),
                with ``near_cache=False`` (every hit asks Redis)
``relaycache_near``  the same with ``near_cache=True`` (hits served from the process,
                kept fresh by Redis client tracking)
``relaycache01``  Django alone plus relaycache 0.1.1 (import name ``custom_cache``) from
                a directory of its own (``BENCH_RC01_DIR``): only its ``@cache``
                decorator, a floor for workload 1's decorator query
``cacheops``    django-cacheops, ``CACHEOPS = {"books.*": {"ops": "all", ...}}``
``cachalot``    django-cachalot on Django's built-in ``RedisCache``
``plain``       Django alone (no cache)
``floor``       Django alone; the harness reads rows with one raw Redis ``GET``
``dict``        Django alone; the harness reads rows from a dict in the process

``BENCH_DATABASE_URL`` (PostgreSQL), ``BENCH_REDIS_URL`` (a spare Redis database) and
``BENCH_PREFIX`` (every Redis key of the run starts with it) are set by
:mod:`benchmarks.run`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import redis

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample_books"
if str(SAMPLE_DIR) not in sys.path:
    sys.path.insert(0, str(SAMPLE_DIR))

LIBRARY = os.environ.get("BENCH_LIBRARY", "plain")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
PREFIX = os.environ.get("BENCH_PREFIX", "relaybench:")
LIBRARIES = ("relaycache", "relaycache_near", "cacheops", "cachalot", "plain", "floor",
             "dict", "relaycache01")
RELAYCACHE_LIBS = ("relaycache", "relaycache_near")  # this project, near cache off / on
if LIBRARY not in LIBRARIES:
    raise RuntimeError(f"BENCH_LIBRARY must be one of {LIBRARIES}, not {LIBRARY!r}")

# The sample's settings read these two at import: the database is ours, and its own
# Redis backend (prefix "books:") is replaced below.
os.environ["DATABASE_URL"] = os.environ.get(
    "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/relaycache_bench")
os.environ.pop("RELAYCACHE_URL", None)

from config.settings import *  # noqa: E402, F403
from config.settings import INSTALLED_APPS as _SAMPLE_APPS  # noqa: E402
from config.settings import _database  # noqa: E402

from relaycache import InMemoryCache, RedisCache  # noqa: E402

DEBUG = False  # DEBUG=True records every query in connection.queries
ROOT_URLCONF = "config.urls"
DATABASES = {"default": {**_database(os.environ["DATABASE_URL"]), "CONN_MAX_AGE": None}}
CACHE_TTL = 3600

PREFIXES = {
    "relaycache": PREFIX + "rc:",
    "cacheops": PREFIX + "co:",
    "cachalot": PREFIX + "ca",  # Django's cache adds ":<version>:"
    "relaycache_near": PREFIX + "rn:",
    "relaycache01": PREFIX + "r01:",
    "floor": PREFIX + "fl:",
}
HARNESS_PREFIX = PREFIX + "h:"

_APPS = [app for app in _SAMPLE_APPS if app != "relaycache"]

if LIBRARY in RELAYCACHE_LIBS:
    INSTALLED_APPS = list(_SAMPLE_APPS)
    # The integration guide's style, exactly as sample_books/config/settings.py builds
    # it, with a prefix of this run. socket_timeout is raised from 0.5 s: the machine
    # runs the database, Redis and up to 32 client threads on 2 cores. The near cache
    # is always given explicitly (its default is on): off for "relaycache", the
    # default NearCache for "relaycache_near".
    REDIS_CLIENT = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    CACHE_BACKEND = RedisCache(REDIS_CLIENT, default_ttl=CACHE_TTL,
                               value_prefix=PREFIXES[LIBRARY],
                               meta_prefix=PREFIXES[LIBRARY] + "meta:",
                               socket_timeout=5.0,
                               near_cache=LIBRARY == "relaycache_near")
    RELAYCACHE = {"BACKEND": CACHE_BACKEND}
else:
    INSTALLED_APPS = list(_APPS)
    CACHE_BACKEND = InMemoryCache(default_ttl=CACHE_TTL)  # unused: hooks are removed
    RELAYCACHE = {"BACKEND": CACHE_BACKEND}

if LIBRARY == "relaycache01":
    # The old library installs as "relaycache" too: it is never pip-installed, its
    # wheel is unpacked into a directory of its own (benchmarks.run does it), put last
    # on this process' path so that it shadows nothing.
    RC01_DIR = os.environ.get("BENCH_RC01_DIR", "")
    if not RC01_DIR:
        raise RuntimeError("BENCH_RC01_DIR is not set: relaycache 0.1 is unavailable")
    if RC01_DIR not in sys.path:
        sys.path.append(RC01_DIR)

if LIBRARY == "cacheops":
    INSTALLED_APPS.append("cacheops")
    CACHEOPS_REDIS = REDIS_URL
    CACHEOPS = {"books.*": {"ops": "all", "timeout": CACHE_TTL}}
    CACHEOPS_PREFIX = "benchmarks.settings.cacheops_prefix"

if LIBRARY == "cachalot":
    INSTALLED_APPS.append("cachalot")
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": PREFIXES["cachalot"],
            "TIMEOUT": CACHE_TTL,
        }
    }
    CACHALOT_TIMEOUT = CACHE_TTL  # default None: entries would never expire
    CACHALOT_ONLY_CACHABLE_APPS = {"books"}


def cacheops_prefix(query: object) -> str:
    """``CACHEOPS_PREFIX``: every cacheops key (queries, conj sets, schemes) under ours."""
    return PREFIXES["cacheops"]
