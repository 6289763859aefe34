"""Django settings for the test suite.

SQLite by default; ``RELAYCACHE_TEST_DATABASE_URL=postgres://...`` switches every test
to PostgreSQL.
"""

import os
from urllib.parse import urlsplit

SECRET_KEY = "relaycache-tests"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# pytest-django's @pytest.mark.urls needs a ROOT_URLCONF to save and restore.
ROOT_URLCONF = "tests.django.urls"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "relaycache",
    "tests.ormapp",
]


def _database(url: str | None) -> dict:
    if not url:
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"RELAYCACHE_TEST_DATABASE_URL must be postgres://, got {url!r}")
    name = parts.path.lstrip("/") or "test"
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        # One test database per run, so that two runs on one server never drop each
        # other's database.
        "TEST": {"NAME": f"test_{name}_{os.getpid()}"},
        "USER": parts.username or "postgres",
        "PASSWORD": parts.password or "",
        "HOST": parts.hostname or "127.0.0.1",
        "PORT": parts.port or 5432,
    }


DATABASES = {"default": _database(os.environ.get("RELAYCACHE_TEST_DATABASE_URL"))}
