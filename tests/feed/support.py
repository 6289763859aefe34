"""Running ``manage.py`` as its own process with the settings a feed test chooses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
SQLITE = {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}


def _command(settings: dict[str, Any], *args: str) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.feed.worker_settings",
           "RELAYCACHE_FEED_TEST_SETTINGS": json.dumps(settings),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    return [sys.executable, "-m", "django", *args], env


def manage(settings: dict[str, Any], *args: str, timeout: float = 60.0
           ) -> subprocess.CompletedProcess[str]:
    """``manage.py <args>`` with ``settings`` (``DATABASES``, ``RELAYCACHE``), to its end."""
    command, env = _command(settings, *args)
    return subprocess.run(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout, check=False)


def start(settings: dict[str, Any], log: IO[bytes], *args: str) -> subprocess.Popen[bytes]:
    """``manage.py <args>`` started in the background, its output going to ``log``."""
    command, env = _command(settings, *args)
    return subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT)
