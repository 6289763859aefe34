"""Fixtures of the Django integration tests (command, checks, signals, views, plugin).

``default_backend`` runs a test once per backend of ``tests/conftest.py``'s ``backend``
fixture (InMemoryCache, RedisCache on a bytes client, RedisCache on a decoding client,
fakeredis unless ``RELAYCACHE_TEST_REDIS_URL`` names a real server; and the dict backend
of docs/backends.md) and makes it the default backend for the test.
"""

from __future__ import annotations

import pytest
import redis

from relaycache import RedisCache
from relaycache.testing import use_backend
from tests.django.views import CALLS
from tests.servers import free_port

LOCMEM_TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "OPTIONS": {"loaders": [("django.template.loaders.locmem.Loader",
                             {"page.html": "template calls={{ calls }}"})]},
}]


@pytest.fixture
def default_backend(backend):
    with use_backend(backend):
        yield backend


@pytest.fixture(autouse=True)
def _reset_view_calls():
    CALLS.clear()
    yield
    CALLS.clear()


@pytest.fixture
def templates(settings):
    settings.TEMPLATES = LOCMEM_TEMPLATES


@pytest.fixture
def unreachable_backend():
    """A RedisCache on a loopback port nobody listens on."""
    client = redis.Redis(host="127.0.0.1", port=free_port())
    backend = RedisCache(client, default_ttl=60, socket_timeout=0.2)
    yield backend
    backend.undelivered.forget(*backend.undelivered.snapshot())  # ends its retry thread
    client.close()
