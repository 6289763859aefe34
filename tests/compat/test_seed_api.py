"""The relaycache 0.1 library's README (PyPI ``relaycache`` 0.1.1, import name
``custom_cache``), run as written with ``custom_cache`` read as ``relaycache``.

The blocks below are the README's, verbatim (trailing spaces aside); ``run`` renames
the import and executes them in order in one namespace, as a reader pasting them
would. Names a block uses without defining them (``fetch_user_from_db``,
``Article``...) come from ``context``.
Each test then checks that the example did what the README says: computed once, served
from the cache, invalidated by its tags, stored in Redis.
"""

from __future__ import annotations

import datetime as dt
import textwrap
import types
from typing import Any

import pytest

from relaycache import AioredisCache, InMemoryCache, RedisCache, cache, default_backend

BASIC = """
from custom_cache import cache, InMemoryCache

# Use with default in-memory backend
@cache(ttl=300)  # Cache for 5 minutes
def expensive_function(x, y):
    # Some expensive computation
    return x * y + 42

result = expensive_function(10, 20)  # Computed
result = expensive_function(10, 20)  # From cache
"""

REDIS_BACKEND = """
import redis
from custom_cache import cache, RedisCache

# Setup Redis backend
redis_client = redis.Redis(host='localhost', port=6379, db=0)
redis_backend = RedisCache(redis_client, default_ttl=3600)

@cache(ttl=1800, backend=redis_backend, tags=["users"])
def get_user_profile(user_id):
    # Fetch from database
    return {"id": user_id, "name": "John", "email": "john@example.com"}

# Usage
profile = get_user_profile(123)
"""

ASYNC = """
import asyncio
from redis.asyncio import Redis
from custom_cache import cache, AioredisCache

# Setup async Redis backend
async def main():
    redis_client = Redis(host='localhost', port=6379, db=0)
    async_backend = AioredisCache(redis_client, default_ttl=3600)

    @cache(ttl=1800, backend=async_backend, tags=["posts"])
    async def get_post(post_id):
        # Async database call
        await asyncio.sleep(0.1)
        return {"id": post_id, "title": "Sample Post"}

    post = await get_post(456)  # Computed
    post = await get_post(456)  # From cache

asyncio.run(main())
"""

TAGGING = """
from custom_cache import cache, invalidate

@cache(ttl=3600, tags=lambda user_id: [f"user:{user_id}", "users"])
def get_user_data(user_id):
    return fetch_user_from_db(user_id)

# Invalidate specific user
invalidate(tags=[f"user:{user_id}"])

# Invalidate all users
invalidate(tags=["users"])
"""

SINGLEFLIGHT = """
@cache(
    ttl=1800,
    backend=redis_backend,
    distributed_singleflight=True,  # Enable distributed coordination
    dist_lock_ttl=5.0,             # Lock TTL in seconds
    dist_lock_timeout=2.0          # Lock acquisition timeout
)
def expensive_computation(key):
    # Only one process will execute this at a time per key
    time.sleep(10)  # Simulate expensive work
    return f"result_for_{key}"
"""

KEY_BUILDING = """
from custom_cache import cache, KeyBuilder

# Custom key builder
kb = KeyBuilder(prefix="myapp", namespace="v1")

@cache(ttl=3600, key_builder=kb)
def my_function(arg1, arg2):
    return arg1 + arg2

# Or custom key function
@cache(ttl=3600, key=lambda x, y: f"sum:{x}:{y}")
def sum_function(x, y):
    return x + y
"""

MANUAL = """
from custom_cache import InMemoryCache

cache_backend = InMemoryCache(default_ttl=3600)

# Manual operations
cache_backend.set("key1", "value1", ttl=1800, tags=["group1"])
hit, value = cache_backend.get("key1")

if hit:
    print(f"Found: {value}")

# Delete specific key
cache_backend.delete("key1")

# Clear all cache
cache_backend.clear()

# Invalidate by tags
cache_backend.invalidate_tags(["group1"])
"""

IN_MEMORY = """
from custom_cache import InMemoryCache

backend = InMemoryCache(default_ttl=3600)
"""

REDIS_CACHE = """
import redis
from custom_cache import RedisCache

redis_client = redis.Redis(host='localhost', port=6379, db=0)
backend = RedisCache(
    redis_client,
    default_ttl=3600,
    value_prefix="myapp:",
    meta_prefix="myapp:meta"
)
"""

AIOREDIS_CACHE = """
from redis.asyncio import Redis
from custom_cache import AioredisCache

redis_client = Redis(host='localhost', port=6379, db=0)
backend = AioredisCache(
    redis_client,
    default_ttl=3600,
    value_prefix="myapp:",
    meta_prefix="myapp:meta"
)
"""

ERROR_HANDLING = """
from custom_cache import cache
from redis.exceptions import RedisError

@cache(ttl=1800, backend=redis_backend)
def robust_function(x):
    # Cache failures won't break your app
    return expensive_computation(x)

try:
    result = robust_function(42)
except RedisError:
    # Redis is down, function still works
    result = expensive_computation(42)
"""

DJANGO_SETTINGS = """
# settings.py
import redis
from custom_cache import RedisCache

REDIS_CLIENT = redis.Redis(host='localhost', port=6379, db=0)
CACHE_BACKEND = RedisCache(REDIS_CLIENT, default_ttl=3600)
"""

DJANGO_VIEWS = """
# views.py
from django.conf import settings
from custom_cache import cache

@cache(backend=settings.CACHE_BACKEND, ttl=1800, tags=["articles"])
def get_article_list():
    return list(Article.objects.all().values())

# Invalidate on model changes
from django.db.models.signals import post_save
from custom_cache.utils import invalidate

@receiver(post_save, sender=Article)
def invalidate_articles(sender, **kwargs):
    invalidate(tags=["articles"], backend=settings.CACHE_BACKEND)
"""


def run(*blocks: str, **context: Any) -> dict[str, Any]:
    """Execute README blocks in order in one namespace, ``custom_cache`` renamed."""
    namespace: dict[str, Any] = {"__name__": "readme_example", **context}
    for block in blocks:
        source = textwrap.dedent(block).replace("custom_cache", "relaycache")
        exec(compile(source, "<relaycache 0.1 README>", "exec"), namespace)
    return namespace


class Calls:
    """A stand-in for the database a README function reads: counts its calls."""

    def __init__(self) -> None:
        self.args: list[Any] = []

    def __call__(self, *args: Any) -> dict[str, Any]:
        self.args.append(args)
        return {"id": args[0], "version": len(self.args)}


NO_SLEEP = types.SimpleNamespace(sleep=lambda seconds: None)


def test_basic_usage_caches_on_the_default_backend():
    hits = default_backend.stats.hits
    ns = run(BASIC)
    assert ns["result"] == 242
    assert default_backend.stats.hits == hits + 1  # the second call came from the cache
    assert default_backend.stats.stores >= 1


def test_redis_backend_stores_in_redis(seed_redis):
    ns = run(REDIS_BACKEND)
    assert ns["profile"] == {"id": 123, "name": "John", "email": "john@example.com"}
    backend = ns["redis_backend"]
    assert isinstance(backend, RedisCache) and backend.redis_client is ns["redis_client"]
    assert any(key.startswith(b"rc:") for key in seed_redis.keys("*"))
    assert ns["get_user_profile"](123) == ns["profile"]
    assert backend.stats.hits == 1
    ns["invalidate"] = __import__("relaycache").invalidate
    ns["invalidate"](tags=["users"], backend=backend)
    assert ns["get_user_profile"](123) == ns["profile"]
    assert backend.stats.hits == 1 and backend.stats.stale == 1


def test_async_support_with_an_asyncio_client_only(seed_redis, monkeypatch):
    built: list[AioredisCache] = []
    original = AioredisCache.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(AioredisCache, "__init__", spy)
    run(ASYNC)
    (backend,) = built
    assert backend.stats.hits == 1 and backend.stats.stores == 1  # computed once
    assert any(key.startswith(b"rc:") for key in seed_redis.keys("*"))


def test_tagging_and_invalidation():
    fetch_user_from_db = Calls()
    ns = run(TAGGING, fetch_user_from_db=fetch_user_from_db, user_id=7)
    get_user_data, invalidate = ns["get_user_data"], ns["invalidate"]
    assert get_user_data(7) == get_user_data(7) == {"id": 7, "version": 1}
    assert get_user_data(8) == {"id": 8, "version": 2}
    invalidate(tags=["user:7"])  # the README's "specific user"
    assert get_user_data(7) == {"id": 7, "version": 3}
    assert get_user_data(8) == {"id": 8, "version": 2}  # another user's entry stays
    invalidate(tags=["users"])  # "all users"
    assert get_user_data(8) == {"id": 8, "version": 4}
    assert len(fetch_user_from_db.args) == 4


def test_distributed_singleflight_options(seed_redis):
    ns = run(REDIS_BACKEND, SINGLEFLIGHT, time=NO_SLEEP)
    expensive_computation, backend = ns["expensive_computation"], ns["redis_backend"]
    assert expensive_computation.singleflight
    assert (expensive_computation.lease_ttl, expensive_computation.lease_wait) == (5.0, 2.0)
    assert expensive_computation("a") == expensive_computation("a") == "result_for_a"
    assert backend.stats.hits == 1 and backend.stats.stores == 2  # the profile, and "a"


def test_custom_key_building():
    ns = run(KEY_BUILDING)
    my_function, sum_function, kb = ns["my_function"], ns["sum_function"], ns["kb"]
    assert my_function(1, 2) == my_function(1, 2) == 3
    key = my_function.cache_key(1, 2)
    assert key.startswith("myapp:v1:readme_example.my_function:")
    assert key == kb.build(my_function.__wrapped__, (1, 2), {})
    assert key == kb.build(my_function.__wrapped__, (1,), {"arg2": 2})  # the same call
    assert key != my_function.cache_key(2, 1)
    assert sum_function(2, 3) == 5 and sum_function.cache_key(2, 3) == "sum:2:3"
    assert default_backend.get("sum:2:3") == (True, 5)


def test_manual_cache_management(capsys):
    ns = run(MANUAL)
    assert capsys.readouterr().out == "Found: value1\n"
    assert (ns["hit"], ns["value"]) == (True, "value1")
    backend = ns["cache_backend"]
    assert backend.get("key1") == (False, None)  # deleted, then cleared
    backend.set("key1", "again", ttl=1800, tags=["group1"])
    backend.invalidate_tags(["group1"])
    assert backend.get("key1") == (False, None)


def test_backend_constructors(seed_redis):
    assert isinstance(run(IN_MEMORY)["backend"], InMemoryCache)
    for block, kind in ((REDIS_CACHE, RedisCache), (AIOREDIS_CACHE, AioredisCache)):
        backend = run(block)["backend"]
        assert type(backend) is kind
        assert (backend.default_ttl, backend.value_prefix, backend.meta_prefix) == (
            3600, "myapp:", "myapp:meta")
        backend["k"] = {"kind": kind.__name__}
        assert backend.get("k") == (True, {"kind": kind.__name__})
        assert seed_redis.exists("myapp:k")
        backend.clear()


def test_error_handling_example(seed_redis):
    ns = run(REDIS_BACKEND, SINGLEFLIGHT, ERROR_HANDLING, time=NO_SLEEP)
    assert ns["result"] == "result_for_42"
    assert ns["robust_function"](42) == "result_for_42"


def test_error_handling_when_redis_is_down():
    """The README's promise: a cache failure never reaches the function's caller."""
    import redis

    from tests.servers import free_port

    down = RedisCache(redis.Redis(port=free_port()), default_ttl=60)
    ns = run(SINGLEFLIGHT, ERROR_HANDLING, time=NO_SLEEP, redis_backend=down, cache=cache)
    assert ns["result"] == "result_for_42"
    assert down.stats.errors >= 1


@pytest.mark.django_db
def test_django_integration(seed_redis, settings):
    from django.db.models.signals import post_save
    from django.dispatch import receiver

    from tests.ormapp.models import Book

    ns = run(DJANGO_SETTINGS)
    settings.CACHE_BACKEND = ns["CACHE_BACKEND"]  # what Django does with settings.py
    ns = run(DJANGO_VIEWS, receiver=receiver, Article=Book)
    try:
        book = Book.objects.create(title="Dune", author="Herbert", isbn="1",
                                   publication_date=dt.date(1965, 8, 1))
        first = ns["get_article_list"]()
        assert [row["title"] for row in first] == ["Dune"]
        assert ns["get_article_list"]() == first
        assert settings.CACHE_BACKEND.stats.hits == 1
        book.title = "Dune Messiah"
        book.save()  # the README's post_save receiver invalidates "articles"
        assert [row["title"] for row in ns["get_article_list"]()] == ["Dune Messiah"]
    finally:
        post_save.disconnect(ns["invalidate_articles"], sender=Book)
