"""``manage.py relaycache``: invalidate, stats, inspect, on every backend."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
from collections.abc import Callable
from io import StringIO
from typing import Any

import pytest
import redis
from django.core.management import CommandError, call_command

from relaycache import InMemoryCache, RedisCache, Zstd
from relaycache.backends.base import BaseCache, KeyDescription
from relaycache.core.compression import ZSTD_MAGIC
from relaycache.orm import invalidation
from relaycache.testing import CacheCounter, use_backend
from tests.backends.dict_backend import DictCache
from tests.ormapp.models import Book, Ebook

ORM = pytest.mark.django_db(transaction=True)


def entry_tags(backend: BaseCache, *tags: str) -> list[str]:
    """The tags an entry carries: its own and the backend's implicit ones (a RedisCache
    tags every entry with its server tag, replaced when Redis restarts)."""
    return sorted({*tags, *backend.implicit_tags})


def run(*args: str) -> str:
    out = StringIO()
    call_command("relaycache", *args, stdout=out)
    return out.getvalue()


def run_json(*args: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(run(*args, "--json"))
    return data


def make_book(n: int = 1) -> Book:
    return Book.objects.create(title=f"Title {n}", author="A", isbn=f"isbn{n}",
                               publication_date="2024-01-01")


def spy_commands(client: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of every command ``client`` sends, its pipelines' included."""
    sent: list[str] = []
    execute, make_pipeline = client.execute_command, client.pipeline

    def spy_execute(*args: Any, **options: Any) -> Any:
        sent.append(str(args[0]).upper())
        return execute(*args, **options)

    def spy_pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = make_pipeline(*args, **kwargs)
        buffer = pipe.pipeline_execute_command

        def spy_buffer(*args: Any, **options: Any) -> Any:
            sent.append(str(args[0]).upper())
            return buffer(*args, **options)

        pipe.pipeline_execute_command = spy_buffer
        return pipe

    monkeypatch.setattr(client, "execute_command", spy_execute)
    monkeypatch.setattr(client, "pipeline", spy_pipeline)
    return sent


# -- invalidate --------------------------------------------------------------------

def test_invalidate_tags(default_backend: BaseCache) -> None:
    default_backend.set("one", 1, tags=["a"])
    default_backend.set("two", 2, tags=["b"])
    default_backend.set("three", 3, tags=["c"])
    output = run("invalidate", "--tag", "a", "--tag", "c")
    assert "Invalidated 2 tag(s)" in output
    assert "  a" in output and "  c" in output
    assert default_backend.get("one", tags=["a"]) == (False, None)
    assert default_backend.get("three", tags=["c"]) == (False, None)
    assert default_backend.get("two", tags=["b"]) == (True, 2)


def test_invalidate_json_output(default_backend: BaseCache) -> None:
    data = run_json("invalidate", "--tag", "z", "--tag", "y", "--tag", "z")
    assert data == {"backend": repr(default_backend), "invalidated": ["y", "z"],
                    "this_process_only": not default_backend.shared}


def test_invalidate_warns_that_a_private_backend_is_this_process_only() -> None:
    for backend, warned in ((InMemoryCache(), True), (MinimalCache(), False)):
        err = StringIO()
        with use_backend(backend):
            call_command("relaycache", "invalidate", "--tag", "a", stdout=StringIO(),
                         stderr=err)
        assert ("private to this process: a running server's cache was not reached"
                in err.getvalue()) is warned


def test_invalidate_model_tags_cover_tables_and_every_alias(
        default_backend: BaseCache, monkeypatch: pytest.MonkeyPatch) -> None:
    # table: (what tags given to functions and fragments name) and all: (what cached
    # ORM reads of the table depend on) of each table
    assert run_json("invalidate", "--model", "ormapp.Book")["invalidated"] == [
        "all:default:ormapp_book", "all:default:ormapp_book_labels",
        "table:default:ormapp_book", "table:default:ormapp_book_labels"]
    # Multi-table inheritance: the parent's table holds part of an Ebook's row.
    assert run_json("invalidate", "--model", "ormapp.ebook")["invalidated"] == [
        "all:default:ormapp_book", "all:default:ormapp_ebook",
        "table:default:ormapp_book", "table:default:ormapp_ebook"]
    monkeypatch.setitem(invalidation.DATABASE_NAMESPACES, "default", "primary")
    assert run_json("invalidate", "--model", "ormapp.Genre")["invalidated"] == [
        "all:primary:ormapp_genre", "table:primary:ormapp_genre"]


def test_invalidate_all_uses_every_database_tag(default_backend: BaseCache,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_json("invalidate", "--all")["invalidated"] == ["db:default"]
    monkeypatch.setitem(invalidation.DATABASE_NAMESPACES, "default", "primary")
    assert run_json("invalidate", "--all")["invalidated"] == ["db:primary"]


@ORM
def test_invalidate_model_drops_cached_queries(default_backend: BaseCache,
                                               relaycache_counter: CacheCounter) -> None:
    make_book(1)
    Ebook.objects.create(title="E", author="A", isbn="e1", publication_date="2024-01-01")
    books = Book.objects.cached()
    ebooks = Ebook.objects.cached()
    assert len(list(books)) == 2 and len(list(ebooks)) == 1
    list(books.all()), list(ebooks.all())
    relaycache_counter.assert_hits(2)

    run("invalidate", "--model", "ormapp.Ebook")
    relaycache_counter.reset()
    list(books.all()), list(ebooks.all())
    relaycache_counter.assert_misses(2)  # both read the book table
    relaycache_counter.assert_hits(0)


@ORM
def test_invalidate_all_drops_every_cached_query(default_backend: BaseCache,
                                                 relaycache_counter: CacheCounter) -> None:
    make_book(1)
    list(Book.objects.cached()), list(Book.objects.cached().values("title"))
    list(Book.objects.cached()), list(Book.objects.cached().values("title"))
    relaycache_counter.assert_hits(2)
    run("invalidate", "--all")
    relaycache_counter.reset()
    list(Book.objects.cached()), list(Book.objects.cached().values("title"))
    relaycache_counter.assert_misses(2)


@pytest.mark.parametrize(("args", "message"), [
    ((), "nothing to invalidate"),
    (("--model", "ormapp.Nope"), "unknown model 'ormapp.Nope'"),
    (("--model", "nodot"), "unknown model 'nodot'"),
    (("--all", "--tag", "a"), "--all cannot be combined"),
    (("--all", "--model", "ormapp.Book"), "--all cannot be combined"),
    (("--tag", ""), "bad tag"),
])
def test_invalidate_bad_input(default_backend: BaseCache, args: tuple[str, ...],
                              message: str) -> None:
    default_backend.set("k", 1, tags=["a"])
    with pytest.raises(CommandError, match=message):
        run("invalidate", *args)
    assert default_backend.get("k", tags=["a"]) == (True, 1)


def test_subcommand_is_required_and_checked(default_backend: BaseCache) -> None:
    with pytest.raises(CommandError, match="required"):
        call_command("relaycache")
    with pytest.raises(CommandError, match="invalid choice"):
        call_command("relaycache", "flush")


class FlakyCache(InMemoryCache):
    """Its first stamp replacement fails, as a Redis blip would."""

    errors = (ConnectionError,)

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    def replace_stamps(self, skeys: list[str]) -> bool:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("blip")
        return super().replace_stamps(skeys)


def test_invalidate_waits_for_a_retried_delivery() -> None:
    backend = FlakyCache()
    backend.set("k", 1, tags=["a"])
    with use_backend(backend):
        output = run("invalidate", "--tag", "a", "--timeout", "5")
    assert "Invalidated 1 tag(s)" in output
    assert backend.failures == 0 and backend.pending_invalidations == []
    assert backend.get("k", tags=["a"]) == (False, None)


def test_invalidate_unreachable_backend_fails_loudly(unreachable_backend: RedisCache) -> None:
    with use_backend(unreachable_backend), pytest.raises(CommandError, match="did not answer"):
        run("invalidate", "--tag", "a", "--timeout", "0")
    assert unreachable_backend.pending_invalidations == ["a"]


# -- stats ---------------------------------------------------------------------------

def fill(backend: BaseCache, entries: int = 6) -> None:
    for i in range(entries):
        backend.get_or_set(f"item:{i}", functools.partial(dict, i=i),
                           tags=["all", f"item:{i % 2}"])
    backend.get_or_set("item:0", lambda: None, tags=["all", "item:0"])  # a hit
    backend.get("nothing-here")  # a miss


def test_stats_counts_this_process_and_the_storage(default_backend: BaseCache) -> None:
    fill(default_backend)
    default_backend.invalidate(["item:1"])  # 3 entries become stale
    data = run_json("stats", "--top", "2")
    process = data["process"]
    assert process["hits"] == 1
    assert process["misses"] == 7
    assert process["hit_ratio"] == round(1 / 8, 4)
    assert process["errors"] == 0
    assert process["pending_invalidations"] == []
    assert process["counters"]["stores"] == 6
    storage = data["storage"]
    assert storage["value_prefix"] == default_backend.value_prefix
    assert storage["entries"]["keys"] == 6
    assert storage["entries"]["approx_bytes"] > 0
    # all, item:0, item:1 and the backend's own
    assert storage["meta"]["stamps"] == 3 + len(default_backend.implicit_tags)
    assert storage["meta"]["leases"] == 0
    assert storage["sample"] == {"entries": 6, "valid": 3, "stale": 3, "corrupt": 0}
    assert storage["top_tags"] == [["all", 6], ["item:0", 3]] or storage["top_tags"] == [
        ["all", 6], ["item:1", 3]]


def test_stats_text_output(default_backend: BaseCache) -> None:
    fill(default_backend)
    output = run("stats")
    assert f"Backend: {default_backend!r}" in output
    assert "hit ratio              12.5%" in output
    assert "entries                6 keys" in output
    assert f"{3 + len(default_backend.implicit_tags)} stamps" in output
    assert "Top tags in the sample" in output
    assert "       6  all" in output


def test_stats_without_lookups_has_no_ratio(default_backend: BaseCache) -> None:
    data = run_json("stats")
    assert data["process"]["hit_ratio"] is None
    assert data["storage"]["entries"]["keys"] == 0
    assert "hit ratio              n/a" in run("stats")


def test_stats_samples_and_scales(default_backend: BaseCache) -> None:
    fill(default_backend, entries=20)
    data = run_json("stats", "--sample", "5")
    entries = data["storage"]["entries"]
    assert entries["keys"] == 20
    assert entries["sampled"] == 5
    assert data["storage"]["sample"]["entries"] == 5
    assert entries["approx_bytes"] > 0


def test_stats_reads_tags_of_entries_longer_than_their_head(default_backend: BaseCache) -> None:
    many = [f"tag-{i:03d}-" + "x" * 200 for i in range(40)]  # tags alone: over 8 KiB
    default_backend.set("wide", "value", tags=many)
    data = run_json("stats", "--top", "50")
    assert sorted(tag for tag, _ in data["storage"]["top_tags"]) == many
    assert data["storage"]["sample"]["valid"] == 1


def test_stats_counts_unreadable_entries(default_backend: BaseCache) -> None:
    default_backend.set("good", 1, tags=["t"])
    default_backend.store_if_current(default_backend.value_key("garbage"), b"\xffnot json",
                                     [], [], None)
    sample = run_json("stats")["storage"]["sample"]
    assert sample == {"entries": 2, "valid": 1, "stale": 0, "corrupt": 1}


def test_stats_on_redis_only_reads_its_own_prefixes(
        redis_backend: RedisCache, redis_client: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    fill(redis_backend)
    redis_client.set("foreign:key", "x")
    other = RedisCache(redis_client, value_prefix="other:", meta_prefix="other:meta:")
    other.set("k", 1, tags=["t"])
    redis_commands = spy_commands(redis_backend._client, monkeypatch)
    with use_backend(redis_backend):
        data = run_json("stats")
        text = run("stats")
    assert data["storage"]["entries"]["keys"] == 6
    meta = data["storage"]["meta"]
    assert meta["stamps"] == 3 + len(redis_backend.implicit_tags)
    assert meta["keys"] == meta["stamps"] + meta["leases"] + meta["other"]
    assert meta["other"] <= 1  # the server's run_id, when the server reports one
    assert f"{meta['keys']} keys ({meta['stamps']} stamps, 0 leases" in text
    assert (", 1 other)" in text) == (meta["other"] == 1)
    assert data["storage"]["memory_source"] in ("MEMORY USAGE", "payload size")
    assert set(redis_commands) <= {"SCAN", "MEMORY USAGE", "STRLEN", "PTTL", "GETRANGE",
                                   "GET", "MGET"}
    assert "SCAN" in redis_commands  # (its MGETs go straight to a pooled connection)
    assert redis_client.get("foreign:key") in (b"x", "x")
    assert other.get("k", tags=["t"]) == (True, 1)
    assert redis_backend.get("item:0", tags=["all", "item:0"]) == (True, {"i": 0})


def test_stats_with_separate_meta_prefix(redis_client: redis.Redis) -> None:
    backend = RedisCache(redis_client, value_prefix="vals:", meta_prefix="stamps:")
    backend.set("a", 1, tags=["t1", "t2"])
    with use_backend(backend):
        storage = run_json("stats")["storage"]
    assert storage["entries"]["keys"] == 1
    assert storage["meta"]["stamps"] == 2 + len(backend.implicit_tags)
    assert storage["sample"]["valid"] == 1


def test_stats_counts_leases(default_backend: BaseCache) -> None:
    default_backend.acquire_lease(default_backend.lease_key("rc-busy"), "token", 60_000)
    meta = run_json("stats")["storage"]["meta"]
    assert meta["leases"] == 1
    # A real server also holds the restart guard's server stamp and run_id key.
    assert meta["keys"] == 1 + meta["stamps"] + meta["other"]


def test_stats_lists_pending_invalidations() -> None:
    backend = FlakyCache()
    backend.failures = 3  # then the breaker opens: the retry waits for its cooldown
    with use_backend(backend):
        backend.invalidate(["books"])
        data = run_json("stats")
        output = run("stats")
    assert data["process"]["pending_invalidations"] == ["books"]
    assert data["process"]["errors"] >= 1
    assert "pending invalidations  1 (books)" in output


def test_stats_rejects_bad_numbers(default_backend: BaseCache) -> None:
    with pytest.raises(CommandError, match="--sample"):
        run("stats", "--sample", "0")


def test_stats_unreachable_backend(unreachable_backend: RedisCache) -> None:
    with use_backend(unreachable_backend), pytest.raises(CommandError, match="cannot reach"):
        run("stats")


# -- inspect -------------------------------------------------------------------------

def test_inspect_valid_entry(default_backend: BaseCache) -> None:
    default_backend.set("book:1", {"title": "Dune"}, tags=["books", "book:1"])
    raw = default_backend.fetch([default_backend.value_key("book:1")])[0]
    data = run_json("inspect", "book:1")
    assert data["key"] == default_backend.value_key("book:1")
    assert data["valid"] is True
    assert data["corrupt"] is None
    assert [t["tag"] for t in data["tags"]] == entry_tags(default_backend, "book:1", "books")
    assert [t["tag"] for t in data["tags"] if t["implicit"]] == list(
        default_backend.implicit_tags)
    assert all(t["state"] == "ok" and t["stored"] == t["current"] for t in data["tags"])
    assert data["size_bytes"] == len(raw)
    assert data["expires"] is True and 0 < data["ttl_ms"] <= 60_000
    assert "value" not in data
    if isinstance(default_backend, RedisCache):
        assert "memory_usage_bytes" in data


def test_inspect_stale_entry_names_the_changed_and_missing_stamps(
        default_backend: BaseCache) -> None:
    default_backend.set("book:1", 1, tags=["a", "b", "c"])
    default_backend.invalidate(["b"])
    default_backend.delete_keys(default_backend.stamp_keys(["c"]))
    data = run_json("inspect", "book:1")
    assert data["valid"] is False
    assert {t["tag"]: t["state"] for t in data["tags"]} == {
        "a": "ok", "b": "changed", "c": "missing",
        **{tag: "ok" for tag in default_backend.implicit_tags}}
    output = run("inspect", "book:1")
    assert f"STALE: 2 of {3 + len(default_backend.implicit_tags)} stamp(s)" in output
    assert "changed  b" in output and "missing  c" in output
    assert output.count("(the backend's own tag)") == len(default_backend.implicit_tags)


def test_inspect_full_key_value_and_no_expiry(default_backend: BaseCache) -> None:
    default_backend.default_ttl = None
    default_backend.set("k", {"n": [1, 2]}, tags=[])
    data = run_json("inspect", default_backend.value_key("k"), "--value")
    assert data["key"] == default_backend.value_key("k")
    assert data["value"] == {"n": [1, 2]}
    assert data["expires"] is False and data["ttl_ms"] is None
    assert data["valid"] is True
    assert [t["tag"] for t in data["tags"]] == entry_tags(default_backend)
    output = run("inspect", "k", "--value")
    assert "TTL:     no expiry" in output
    assert 'Value:   {"n": [1, 2]}' in output


def test_inspect_corrupt_entry(default_backend: BaseCache) -> None:
    default_backend.store_if_current(default_backend.value_key("junk"), b"[1,2", [], [], None)
    data = run_json("inspect", "junk")
    assert data["valid"] is False and data["corrupt"].startswith("not an entry")
    assert "UNREADABLE" in run("inspect", "junk")


def test_inspect_missing_key(default_backend: BaseCache) -> None:
    with pytest.raises(CommandError, match="no entry under 'absent'"):
        run("inspect", "absent")


def test_inspect_unreachable_backend(unreachable_backend: RedisCache) -> None:
    with use_backend(unreachable_backend), pytest.raises(CommandError, match="cannot reach"):
        run("inspect", "k")


@ORM
def test_inspect_a_cached_queryset(default_backend: BaseCache) -> None:
    book = make_book(1)
    qs = Book.objects.cached().filter(title="Title 1")
    assert len(qs) == 1
    key = qs.cache_info().key
    assert key is not None
    data = run_json("inspect", key)
    assert data["valid"] is True
    assert [t["tag"] for t in data["tags"]] == entry_tags(
        default_backend, *qs.cache_info().tags)
    Book.objects.filter(pk=book.pk).update(title="x")  # a write through the ORM invalidates it
    data = run_json("inspect", key)
    assert data["valid"] is False
    tags = {t["tag"]: t for t in data["tags"]}
    # every column is read: one stamp for "any UPDATE of the table", and why
    assert tags["upd:default:ormapp_book"]["state"] == "changed"
    assert tags["upd:default:ormapp_book"]["replaced_by"] == (
        "any UPDATE of ormapp_book (the read may name any of its columns)")
    assert tags["db:default"]["state"] == "ok"


# -- a third-party backend -------------------------------------------------------------

class MinimalCache(DictCache):
    """The docs' third-party backend (``tests/backends/dict_backend.py``, written only
    against the public storage contract), claiming to be shared and reporting a store
    memory of its own (``overhead`` bytes a key on top of the key and value)."""

    shared = True
    overhead = 48

    def describe_keys(self, keys: list[str], head: int = 0) -> list[KeyDescription | None]:
        return [None if found is None else dataclasses.replace(
                    found, memory=len(key) + found.size + self.overhead)
                for key, found in zip(keys, super().describe_keys(keys, head), strict=True)]


class BareMinimalCache(MinimalCache):
    """A backend without the tooling primitives (``scan_keys``, ``describe_keys``)."""

    scan_keys = BaseCache.scan_keys
    describe_keys = BaseCache.describe_keys


def test_a_third_party_backend_gets_stats() -> None:
    backend = MinimalCache(default_ttl=60)
    fill(backend)
    backend.invalidate(["item:1"])  # 3 entries become stale
    backend.acquire_lease(backend.lease_key("busy"), "token", 60_000)
    with use_backend(backend):
        data = run_json("stats", "--top", "1")
        text = run("stats")
    assert data["backend"] == repr(backend)
    assert data["process"]["hits"] == 1 and data["process"]["misses"] == 7
    entries = [key for key in backend.scan_keys() if not key.startswith(backend.meta_prefix)]
    entry_bytes = sum(len(key) + len(value) + MinimalCache.overhead
                      for key, value in zip(entries, backend.fetch(entries), strict=True))
    assert data["storage"] == {
        "storage": "minimal",
        "value_prefix": "rc:",
        "meta_prefix": "rc:meta:",
        "entries": {"keys": 6, "sampled": 6, "approx_bytes": entry_bytes},
        "meta": {"keys": 4, "sampled": 4, "approx_bytes": data["storage"]["meta"]["approx_bytes"],
                 "stamps": 3, "leases": 1, "other": 0},
        "memory_source": "MEMORY USAGE",
        "sample": {"entries": 6, "valid": 3, "stale": 3, "corrupt": 0},
        "top_tags": [["all", 6]],
    }
    assert data["storage"]["meta"]["approx_bytes"] > 0
    assert "Storage: minimal, prefixes 'rc:' and 'rc:meta:'" in text
    assert "entries                6 keys, ~ " in text and "~ payload" not in text
    assert "4 keys (3 stamps, 1 leases)" in text
    assert "6: 3 valid, 3 stale (awaiting TTL), 0 unreadable" in text


def test_a_third_party_backend_gets_inspect() -> None:
    backend = MinimalCache(default_ttl=60)
    backend.set("book:1", {"title": "Dune"}, tags=["books", "book:1"])
    backend.set("book:2", {"title": "Emma"}, tags=["books", "book:2"])
    backend.invalidate(["book:2"])
    vkey = backend.value_key("book:1")
    raw = backend.fetch([vkey])[0]
    with use_backend(backend):
        data = run_json("inspect", "book:1", "--value")
        stale = run_json("inspect", vkey.replace("book:1", "book:2"))
        text = run("inspect", "book:1")
    assert data["key"] == vkey
    assert data["valid"] is True and data["corrupt"] is None
    assert data["size_bytes"] == len(raw)
    assert data["memory_usage_bytes"] == len(vkey) + len(raw) + MinimalCache.overhead
    assert data["expires"] is True and 0 < data["ttl_ms"] <= 60_000
    assert data["value"] == {"title": "Dune"}
    assert [(t["tag"], t["state"], t["implicit"]) for t in data["tags"]] == [
        ("book:1", "ok", False), ("books", "ok", False)]
    assert {t["tag"]: t["state"] for t in stale["tags"]} == {"book:2": "changed", "books": "ok"}
    assert stale["valid"] is False
    assert "valid: every stored stamp is current" in text
    assert f"(MEMORY USAGE {len(vkey) + len(raw) + MinimalCache.overhead} bytes)" in text


def test_a_backend_without_tooling_primitives_still_reports() -> None:
    backend = BareMinimalCache(default_ttl=None)
    backend.set("k", [1, 2], tags=["t"])
    backend.get("k", tags=["t"])
    with use_backend(backend):
        data = run_json("stats")
        text = run("stats")
        inspected = run_json("inspect", "k")
    assert data["process"]["hits"] == 1
    assert data["storage"] is None
    assert "Storage: not reported" in text
    assert inspected["valid"] is True
    assert inspected["expires"] is False and inspected["ttl_ms"] is None
    assert inspected["memory_usage_bytes"] is None


# -- compressed entries ----------------------------------------------------------------

BIG = {"rows": [[i, f"title {i}", dt.date(2000, 1, 1 + i % 28)] for i in range(500)]}


@pytest.fixture(params=["memory", "redis"])
def compressing(request: pytest.FixtureRequest,
                make_redis_backend: Callable[..., RedisCache]) -> BaseCache:
    if request.param == "memory":
        return InMemoryCache(compression=Zstd(min_size=1024))
    return make_redis_backend(compression=Zstd(min_size=1024))


def test_stats_and_inspect_read_compressed_entries(compressing: BaseCache) -> None:
    compressing.set("big", BIG, tags=["books", "big"])
    compressing.set("small", 1, tags=["books"])
    assert compressing.fetch([compressing.value_key("big")])[0].startswith(ZSTD_MAGIC)
    with use_backend(compressing):
        storage = run_json("stats")["storage"]
        data = run_json("inspect", "big", "--value")
    assert storage["sample"] == {"entries": 2, "valid": 2, "stale": 0, "corrupt": 0}
    assert storage["top_tags"][0] == ["books", 2]
    assert data["valid"] is True and data["corrupt"] is None
    assert len(data["value"]["rows"]) == 500
