"""A django-tenants project: schema-per-tenant on one database alias.

``RELAYCACHE_TENANTS_DATABASE_URL`` names the database (``postgres://user@host:port/name``),
``RELAYCACHE_TENANTS_REDIS_URL`` the Redis server (``memory`` without it) and
``RELAYCACHE_TENANTS_KEY_PREFIX`` the prefix of the cache's keys.
"""

import os
from urllib.parse import urlsplit

SECRET_KEY = "relaycache-tenants"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_url = urlsplit(os.environ["RELAYCACHE_TENANTS_DATABASE_URL"])
DATABASES = {
    "default": {
        "ENGINE": "django_tenants.postgresql_backend",
        "NAME": _url.path.lstrip("/"),
        "USER": _url.username or "postgres",
        "PASSWORD": _url.password or "",
        "HOST": _url.hostname or "127.0.0.1",
        "PORT": _url.port or 5432,
    }
}
DATABASE_ROUTERS = ["django_tenants.routers.TenantSyncRouter"]

SHARED_APPS = ["django_tenants", "tests.tenants.customers", "django.contrib.contenttypes",
               "relaycache"]
TENANT_APPS = ["django.contrib.contenttypes", "tests.tenants.notes"]
INSTALLED_APPS = SHARED_APPS + [app for app in TENANT_APPS if app not in SHARED_APPS]
TENANT_MODEL = "customers.Client"
TENANT_DOMAIN_MODEL = "customers.Domain"

RELAYCACHE = {"BACKEND": os.environ.get("RELAYCACHE_TENANTS_REDIS_URL") or "memory",
              "KEY_PREFIX": os.environ.get("RELAYCACHE_TENANTS_KEY_PREFIX", "rc:")}
