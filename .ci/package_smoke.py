"""Smoke test of an installed django-relaycache (run from outside the source tree).

Checks that the installed package, not a checkout, is imported; that the public API
caches and invalidates; that the Django app loads with its templates and py.typed.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import sys

import django
from django.conf import settings

import relaycache

source = pathlib.Path(relaycache.__file__).resolve()
assert "site-packages" in source.parts, f"imported from a checkout: {source}"
assert importlib.metadata.version("django-relaycache") == relaycache.__version__
assert (source.parent / "py.typed").exists()
assert (source.parent / "templates" / "relaycache" / "debug_panel.html").exists()

settings.configure(INSTALLED_APPS=["relaycache"], DATABASES={})
django.setup()

from relaycache import InMemoryCache, cache, invalidate  # noqa: E402

backend = InMemoryCache()
calls: list[int] = []


@cache(backend=backend, tags=lambda n: [f"n:{n}"])
def square(n: int) -> int:
    calls.append(n)
    return n * n


assert square(3) == square(3) == 9 and calls == [3]
invalidate(tags=["n:3"], backend=backend)
assert square(3) == 9 and calls == [3, 3]
print(f"django-relaycache {relaycache.__version__} from {source.parent}: ok", file=sys.stderr)
