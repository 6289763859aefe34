"""Settings of the sample book shop.

SQLite and the embedded InMemoryCache by default; ``DATABASE_URL=postgres://...`` and
``RELAYCACHE_URL=redis://...`` switch to PostgreSQL and Redis.
"""

import os
from pathlib import Path
from urllib.parse import urlsplit

import redis

from relaycache import InMemoryCache, RedisCache

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "sample-books-not-for-production")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "config.urls"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "relaycache",
    "books",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
STATIC_URL = "static/"


def _database(url):
    if not url:
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"DATABASE_URL must be postgres://..., got {url!r}")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.path.lstrip("/"),
        "USER": parts.username or "postgres",
        "PASSWORD": parts.password or "",
        "HOST": parts.hostname or "127.0.0.1",
        "PORT": parts.port or 5432,
    }


DATABASES = {"default": _database(os.environ.get("DATABASE_URL"))}

# The integration guide's style: a backend object built by hand ...
_redis_url = os.environ.get("RELAYCACHE_URL")
if _redis_url:
    REDIS_CLIENT = redis.Redis.from_url(_redis_url, decode_responses=True)
    CACHE_BACKEND = RedisCache(REDIS_CLIENT, default_ttl=3600, value_prefix="books:",
                               meta_prefix="books:meta:")
else:
    CACHE_BACKEND = InMemoryCache(default_ttl=3600)

# ... which is also the backend of Book.objects.cached() querysets.
RELAYCACHE = {"BACKEND": CACHE_BACKEND}
