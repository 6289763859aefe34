"""Running the sample project (``sample_books/``) from the suite, in subprocesses.

The suite runs with ``DJANGO_SETTINGS_MODULE=tests.settings``; the sample is another
Django project (``config.settings``), so it always runs in a process of its own.
``RELAYCACHE_TEST_REDIS_URL`` and ``RELAYCACHE_TEST_DATABASE_URL`` become the sample's
``RELAYCACHE_URL`` and ``DATABASE_URL``: the real-services leg runs it on Redis and
PostgreSQL, the default leg on the embedded InMemoryCache and SQLite.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_books"
MANAGE = SAMPLE / "manage.py"
HERE = Path(__file__).resolve().parent

REDIS_URL = os.environ.get("RELAYCACHE_TEST_REDIS_URL", "")
DATABASE_URL = os.environ.get("RELAYCACHE_TEST_DATABASE_URL", "")

_DROPPED = ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "RELAYCACHE_URL", "PYTEST_ADDOPTS",
            "PYTEST_PLUGINS", "SAMPLE_SQLITE_PATH")


def sample_env(*, sqlite_path: Path | None = None) -> dict[str, str]:
    """The environment of a sample process.

    With ``sqlite_path`` the sample runs on that SQLite file (through
    ``tests.sample.sample_settings``) whatever the test database; without it, on
    PostgreSQL if ``RELAYCACHE_TEST_DATABASE_URL`` is set, else on its default SQLite
    (whose test database Django keeps in memory).
    """
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED}
    env["PYTHONPATH"] = os.pathsep.join([str(SAMPLE), str(ROOT)])
    env["PYTHONUNBUFFERED"] = "1"
    if REDIS_URL:
        env["RELAYCACHE_URL"] = REDIS_URL
    if sqlite_path is not None:
        env["DJANGO_SETTINGS_MODULE"] = "tests.sample.sample_settings"
        env["SAMPLE_SQLITE_PATH"] = str(sqlite_path)
    elif DATABASE_URL:
        env["DATABASE_URL"] = DATABASE_URL
    return env


def manage(*args: str, env: dict[str, str], check: bool = True,
           timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python sample_books/manage.py ARGS`` as a user runs it (output decoded but
    not newline-translated: a progress bar's ``\\r`` stays ``\\r``)."""
    raw = subprocess.run([sys.executable, str(MANAGE), *args], cwd=ROOT, env=env,
                         capture_output=True, timeout=timeout)
    result = subprocess.CompletedProcess(raw.args, raw.returncode, raw.stdout.decode(),
                                         raw.stderr.decode())
    if check and result.returncode != 0:
        raise AssertionError(f"manage.py {' '.join(args)} exited {result.returncode}\n"
                             f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
