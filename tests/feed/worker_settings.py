"""Django settings of the ``manage.py`` processes the feed's tests start.

``tests.settings`` with the ``DATABASES`` and ``RELAYCACHE`` the test passes, as JSON,
in ``RELAYCACHE_FEED_TEST_SETTINGS`` (see :func:`tests.feed.support.manage`).
"""

import json
import os

from tests.settings import *  # noqa: F403

_given = json.loads(os.environ["RELAYCACHE_FEED_TEST_SETTINGS"])
DATABASES = _given["DATABASES"]
RELAYCACHE = _given["RELAYCACHE"]
