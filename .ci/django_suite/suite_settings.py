"""Settings of Django's own test suite as run.py runs it: Django's ``test_sqlite.py``,
or PostgreSQL when ``DJANGO_SUITE_DATABASE_URL`` is set, and, when
``DJANGO_SUITE_CACHED=1``, every read of every model cached by RelayCache's settings
switch (``RELAYCACHE["MODELS"] = {"*": {}}``) on the verifying in-memory backend.

Django's ``runtests.py`` replaces ``INSTALLED_APPS`` with its own list; run.py adds
``"relaycache"`` to that list in the cached runs.
"""

import os
from urllib.parse import urlsplit

_url = os.environ.get("DJANGO_SUITE_DATABASE_URL", "")
if _url:
    _parts = urlsplit(_url)
    _server = {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": _parts.hostname or "127.0.0.1",
        "PORT": _parts.port or 5432,
        "USER": _parts.username or "postgres",
        "PASSWORD": _parts.password or "",
        # Test data need no durability: commits do not wait for the disk.
        "OPTIONS": {"options": "-c synchronous_commit=off"},
    }
    # The test databases are created and dropped by the run; the names keep them apart
    # from any other database on the server.
    DATABASES = {
        "default": {**_server, "NAME": "postgres",
                    "TEST": {"NAME": "relaycache_django_suite"}},
        "other": {**_server, "NAME": "postgres",
                  "TEST": {"NAME": "relaycache_django_suite_other"}},
    }
else:
    DATABASES = {
        "default": {"ENGINE": "django.db.backends.sqlite3"},
        "other": {"ENGINE": "django.db.backends.sqlite3"},
    }

SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False

if os.environ.get("DJANGO_SUITE_CACHED") == "1":
    RELAYCACHE = {
        "BACKEND": "suite_verify.VerifyingCache",
        "MODELS": {"*": {}},
        "OPTIONS": {"max_entries": 200_000},
    }
