"""The core and the backends work without Django: not configured, not even installed.

A fresh interpreter (``-I``, an environment without ``DJANGO_SETTINGS_MODULE``) makes
every ``import django...`` fail, then imports ``relaycache``, each module of
``relaycache.core`` and ``relaycache.backends``, and the pytest plugin
``relaycache.testing``, and uses ``@cache`` on an ``InMemoryCache``. Only the ORM
names need Django, and only when first used.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = '''
import importlib
import importlib.abc
import pkgutil
import sys


class NoDjango(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "django" or name.startswith("django."):
            raise ImportError(f"{name} blocked: Django is not installed here")
        return None


sys.meta_path.insert(0, NoDjango())
try:
    import django  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("the import blocker let django through")

import relaycache
import relaycache.backends
import relaycache.core

imported = ["relaycache"]
for package in (relaycache.core, relaycache.backends):
    for module in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)
        imported.append(module.name)
assert {"relaycache.backends.base", "relaycache.backends.flow", "relaycache.backends.memory",
        "relaycache.backends.redis", "relaycache.core.codec", "relaycache.core.keys",
        "relaycache.core.decorator"} <= set(imported), imported

from relaycache import InMemoryCache, cache, invalidate
from relaycache.testing import CacheCounter, cache_disabled

backend = InMemoryCache()
calls = []


@cache(backend=backend, tags=lambda n: [f"n:{n}"])
def square(n):
    calls.append(n)
    return n * n


with CacheCounter() as counter:
    assert square(3) == 9 and square(3) == 9 and calls == [3]
    invalidate(["n:3"], backend=backend)
    assert square(3) == 9 and calls == [3, 3]
assert counter.hits == 1 and counter.misses == 2


@cache
def on_the_default_backend():
    calls.append("default")
    return 1


with cache_disabled():
    on_the_default_backend(), on_the_default_backend()
assert calls.count("default") == 2

try:
    relaycache.CachedQuerySet
except ImportError:
    pass  # the ORM layer is Django's, loaded on first use
else:
    raise SystemExit("relaycache.CachedQuerySet imported without Django")

loaded = sorted(name for name in sys.modules if name.split(".")[0] == "django")
assert not loaded, loaded
print("imported without Django:", " ".join(imported))
'''


def test_the_core_and_the_backends_import_and_cache_without_django():
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONHASHSEED": "0"}
    done = subprocess.run([sys.executable, "-I", "-c", CHILD], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr or done.stdout
    assert "relaycache.backends.memory" in done.stdout
