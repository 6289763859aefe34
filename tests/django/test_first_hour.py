"""Issue 14's first hour: the guide's ``cache_view`` without the app in
``INSTALLED_APPS``, and the error messages of a too long ``cached(key=...)`` and of a
``BACKEND`` URL missing its colon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse

from relaycache.core.codec import encode
from relaycache.settings import DEFAULTS, build_backend
from tests.ormapp.models import Book

ROOT = Path(__file__).parents[2]

# A project whose settings leave "relaycache" out of INSTALLED_APPS, as the
# integration guide's do: the guide's cache_view helper caches a view's HttpResponse
# with @cache, then an entry stored by another process is decoded.
WITHOUT_THE_APP = '''
import json
import sys

import django
from django.conf import settings

from relaycache import InMemoryCache

settings.configure(INSTALLED_APPS=["django.contrib.contenttypes"],
                   CACHE_BACKEND=InMemoryCache(), ALLOWED_HOSTS=["testserver"])
django.setup()

from django.http import HttpResponse
from django.test import RequestFactory

from relaycache.core.codec import decode
from tests.django.guide_cache_utils import cache_view

calls = []


@cache_view(ttl=60, tags=["books"], key_func=lambda request, slug: f"book_list:{slug}")
def book_list_view(request, slug):
    calls.append(slug)
    return HttpResponse(f"books of {slug}", headers={"X-Slug": slug})


responses = [book_list_view(RequestFactory().get("/books/"), "fantasy") for _ in range(2)]
other = decode(bytes.fromhex(sys.stdin.read()))
print(json.dumps({
    "calls": calls,
    "responses": [[type(r).__name__, r.status_code, r.content.decode(), r["X-Slug"]]
                  for r in responses],
    "other": [type(other).__name__, other.status_code, other.content.decode(),
              other["X-Other"]],
}))
'''


def test_guide_cache_view_without_the_app_in_installed_apps():
    stored_elsewhere = encode(HttpResponse("from another process", status=201,
                                           headers={"X-Other": "1"}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run([sys.executable, "-c", WITHOUT_THE_APP], cwd=ROOT, env=env,
                          input=stored_elsewhere.hex(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["calls"] == ["fantasy"]  # the second call was served from the cache
    assert result["responses"] == [["HttpResponse", 200, "books of fantasy", "fantasy"]] * 2
    assert result["other"] == ["HttpResponse", 201, "from another process", "1"]


def test_a_long_orm_key_is_refused_without_echoing_it():
    with pytest.raises(ValueError) as refused:
        Book.objects.cached(key="x" * 100_000)
    message = str(refused.value)
    assert "at most 200 characters" in message
    assert "100000 characters" in message
    assert len(message) < 300


@pytest.mark.django_db
def test_the_orm_key_limit_is_200_characters():
    assert Book.objects.cached(key="k" * 200).cache_info().key.startswith("k" * 200 + ":")
    with pytest.raises(ValueError, match="at most 200 characters"):
        Book.objects.cached(key="k" * 201)


@pytest.mark.parametrize(("spec", "meant"), [
    ("redis//127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis:/127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("rediss//cache.example:6380/1", "rediss://cache.example:6380/1"),
    ("unix//run/redis.sock", "unix:///run/redis.sock"),
])
def test_a_backend_url_missing_its_colon(spec, meant):
    with pytest.raises(ImproperlyConfigured) as refused:
        build_backend({**DEFAULTS, "BACKEND": spec})
    message = str(refused.value)
    assert f"did you mean {meant}?" in message
    assert "No module named" not in message


def test_a_backend_that_is_neither_url_nor_dotted_path():
    with pytest.raises(ImproperlyConfigured) as refused:
        build_backend({**DEFAULTS, "BACKEND": "localhost:6379"})
    message = str(refused.value)
    assert "is not a URL (redis://, rediss://, unix://), 'memory' or a dotted path" in message
    assert "did you mean" not in message


def test_a_dotted_path_that_does_not_import_still_says_why():
    with pytest.raises(ImproperlyConfigured, match="No module named 'nowhere'"):
        build_backend({**DEFAULTS, "BACKEND": "nowhere.Backend"})
