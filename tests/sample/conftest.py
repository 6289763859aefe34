"""The sample project's tests.

``test_e2e_browser.py`` starts the sample's dev server and drives it in headless
Chromium. It is collected only when ``RELAYCACHE_TEST_E2E=1`` (CI's real-services leg
sets it and installs Chromium): on a fresh machine it is not collected at all, rather
than skipped, so that ``RELAYCACHE_STRICT=1`` runs stay meaningful.
"""

from __future__ import annotations

import os
from pathlib import Path

E2E = os.environ.get("RELAYCACHE_TEST_E2E") == "1"


def pytest_ignore_collect(collection_path: Path, config):
    if collection_path.name == "test_e2e_browser.py" and not E2E:
        return True
    return None
