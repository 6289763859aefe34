"""Django signals for cache events: cache_hit, cache_miss, cache_invalidated,
query_uncacheable."""

from __future__ import annotations

import asyncio
import logging

import pytest

from relaycache import InMemoryCache
from relaycache.core import events
from relaycache.signals import (
    cache_hit,
    cache_invalidated,
    cache_miss,
    query_uncacheable,
    relay,
)
from tests.ormapp.models import Book


@pytest.fixture
def received():
    """Every signal sent during the test, as ``(name, sender, kwargs)``."""
    log: list[tuple[str, object, dict]] = []
    receivers = {}
    for name, signal in (("hit", cache_hit), ("miss", cache_miss),
                         ("invalidated", cache_invalidated),
                         ("uncacheable", query_uncacheable)):
        def receiver(sender, signal, name=name, **kwargs):
            log.append((name, sender, kwargs))
        receivers[name] = receiver
        signal.connect(receiver)
    yield log
    for name, signal in (("hit", cache_hit), ("miss", cache_miss),
                         ("invalidated", cache_invalidated),
                         ("uncacheable", query_uncacheable)):
        signal.disconnect(receivers[name])


def test_the_app_installs_the_relay():
    assert relay in events.listeners


def test_hit_miss_invalidated(default_backend, received):
    vkey = default_backend.value_key("k")
    default_backend.get_or_set("k", lambda: 1, tags=["t"])
    default_backend.get_or_set("k", lambda: 1, tags=["t"])
    default_backend.invalidate(["t", "u"])
    default_backend.get("k", tags=["t"])
    assert received == [
        ("miss", default_backend, {"key": vkey, "reason": "absent"}),
        ("hit", default_backend, {"key": vkey}),
        ("invalidated", default_backend, {"tags": ["t", "u"]}),
        ("miss", default_backend, {"key": vkey, "reason": "stale"}),
    ]


def test_corrupt_miss(default_backend, received):
    default_backend.store_if_current(default_backend.value_key("bad"), b"{oops", [], [], None)
    assert default_backend.get("bad") == (False, None)
    assert received == [("miss", default_backend,
                         {"key": default_backend.value_key("bad"), "reason": "corrupt"})]


def test_async_path_sends_signals(default_backend, received):
    async def compute():
        return "v"

    async def twice():
        await default_backend.aget_or_set("a", compute, tags=["t"])
        await default_backend.aget_or_set("a", compute, tags=["t"])
        await default_backend.ainvalidate(["t"])

    asyncio.run(twice())
    assert [name for name, _, _ in received] == ["miss", "hit", "invalidated"]


def test_receivers_for_one_sender_only(received):
    watched, other = InMemoryCache(), InMemoryCache()
    only = []

    def receiver(sender, **kwargs):
        only.append(sender)

    cache_hit.connect(receiver, sender=watched)
    try:
        for backend in (watched, other):
            backend.set("k", 1)
            backend.get("k")
    finally:
        cache_hit.disconnect(receiver, sender=watched)
    assert only == [watched]
    assert [sender for name, sender, _ in received if name == "hit"] == [watched, other]


def test_failing_receiver_is_logged_and_never_reaches_the_caller(received, caplog):
    backend = InMemoryCache()

    def broken(sender, **kwargs):
        raise RuntimeError("receiver bug")

    cache_miss.connect(broken)
    try:
        with caplog.at_level(logging.ERROR, logger="relaycache"):
            assert backend.get_or_set("k", lambda: "computed") == "computed"
    finally:
        cache_miss.disconnect(broken)
    assert [name for name, _, _ in received] == ["miss"]  # the other receiver still ran
    assert "miss receiver" in caplog.text and "receiver bug" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_query_uncacheable(default_backend, received):
    Book.objects.create(title="T", author="A", isbn="1", publication_date="2024-01-01")
    assert len(list(Book.objects.cached().order_by("?"))) == 1
    (_, sender, kwargs), = [r for r in received if r[0] == "uncacheable"]
    assert sender is default_backend
    assert "ormapp_book" in kwargs["sql"]
    assert kwargs["reason"] == "order_by('?') is random"
