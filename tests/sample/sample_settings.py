"""The sample's own settings, with its SQLite database at ``$SAMPLE_SQLITE_PATH``.

``config.settings`` keeps SQLite at ``sample_books/db.sqlite3`` (the developer's
database); tests that run ``manage.py`` for real use a temporary file instead.
Everything else, the cache backend from ``RELAYCACHE_URL`` included, is the sample's.
"""

import os

from config.settings import *  # noqa: F403

DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                         "NAME": os.environ["SAMPLE_SQLITE_PATH"]}}
