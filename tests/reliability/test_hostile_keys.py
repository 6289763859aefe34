"""Hostile keys, tags and prefixes on a real server and on a real Cluster: stored and
read back exactly up to the documented length limits, digested beyond them (and still
invalidated, still apart); empty or unencodable names are a clear ``ValueError``;
``clear()`` with glob characters in its prefixes deletes only this cache's keys."""

from __future__ import annotations

import pytest
import redis
from redis.cluster import RedisCluster

from relaycache import RedisCache, cache, invalidate
from relaycache.core.keys import MAX_KEY_LENGTH, MAX_TAG_LENGTH, bounded_key
from tests.servers import HOST

pytest_plugins = ("tests.servers",)
pytestmark = pytest.mark.real_redis


HOSTILE = [
    "new\nline", "crlf\r\n*3\r\n$3\r\nDEL", "with space", " ", "\t", "*", "?", "[a-z]", "[", "]",
    "\\", "\\*", "{t}", "{}", "}{", "a*b?c[d]e{f}g", "%s%d%n", "'; DROP TABLE x; --",
    "ключ", "鍵🔑", "e\u0301", "\u200b", "\x00nul\x00", "\x7f", "meta:t:books",
]
LONG_KEY = "k" * (MAX_KEY_LENGTH - 4) + "ключ"  # non-ASCII at the end: 1024 characters
LONG_TAG = "t" * (MAX_TAG_LENGTH - 1) + "鍵"


@pytest.fixture(params=["server", "cluster"])
def client_factory(request):
    """``make()`` -> a new client of the same server or cluster."""
    if request.param == "server":
        server = request.getfixturevalue("redis_server")
        made = []

        def make():
            made.append(redis.Redis(host=HOST, port=server.port))
            return made[-1]

        yield make
    else:
        cluster = request.getfixturevalue("shared_redis_cluster")
        made = []

        def make():
            made.append(RedisCluster(host=HOST, port=cluster.ports[0]))
            return made[-1]

        yield make
    for client in made:
        client.close()


def _all_keys(client) -> set[bytes]:
    if isinstance(client, RedisCluster):
        return set(client.scan_iter(count=1000, target_nodes=RedisCluster.ALL_NODES))
    return set(client.scan_iter(count=1000))


def test_hostile_keys_and_tags_round_trip(client_factory):
    client = client_factory()
    backend = RedisCache(client, default_ttl=60, value_prefix="hk:", meta_prefix="hk-meta:")
    keys = [*HOSTILE, LONG_KEY]
    tags = [*HOSTILE, LONG_TAG]
    assert len(LONG_KEY) == MAX_KEY_LENGTH and len(LONG_TAG) == MAX_TAG_LENGTH
    for i, key in enumerate(keys):
        assert backend.set(key, {"key": key, "i": i}, tags=[tags[i % len(tags)], "all"]), key
    for i, key in enumerate(keys):
        got = backend.get(key, tags=[tags[i % len(tags)], "all"])
        assert got == (True, {"key": key, "i": i}), (key, got)
    # One Redis key per cache key, named exactly prefix + key.
    entries = {k for k in _all_keys(client) if k.startswith(b"hk:")}
    assert entries == {("hk:" + key).encode() for key in keys}

    # Invalidating the tag "*" (or "?", "[a-z]"...) drops only the entries under it.
    star = keys[HOSTILE.index("*")]
    invalidate(["*"], backend=backend)
    assert backend.get(star, tags=["*", "all"]) == (False, None)
    survivors = [k for k in keys if k != star]
    for key in survivors:
        i = keys.index(key)
        assert backend.get(key, tags=[tags[i % len(tags)], "all"]) == (True, {"key": key, "i": i})

    # The decorator, with hostile arguments in derived keys and in tags.
    calls = []

    @cache(backend=backend, tags=lambda name: [name, "all"])
    def lookup(name):
        calls.append(name)
        return name[::-1]

    for name in [*HOSTILE, LONG_TAG]:
        assert lookup(name) == name[::-1] and lookup(name) == name[::-1]
    assert len(calls) == len(HOSTILE) + 1
    # Another client (another process) reads the same entries.
    other = RedisCache(client_factory(), default_ttl=60, value_prefix="hk:",
                       meta_prefix="hk-meta:")
    for key in survivors:
        i = keys.index(key)
        assert other.get(key, tags=[tags[i % len(tags)], "all"]) == (True, {"key": key, "i": i})
    assert backend.stats.errors == 0 and other.stats.errors == 0
    backend.clear()


def test_empty_names_are_clear_errors_and_long_ones_are_not(client_factory):
    backend = RedisCache(client_factory(), default_ttl=60, value_prefix="lim:",
                         meta_prefix="lim-meta:")
    for call in [
        lambda: backend.set("", 1),
        lambda: backend.get(""),
        lambda: backend.get_or_set("", lambda: 1),
        lambda: backend.delete(""),
        lambda: backend.set("k", 1, tags=[""]),
        lambda: backend.get("k", tags=[""]),
        lambda: backend.invalidate(["ok", ""]),
        lambda: cache(backend=backend, key=lambda: "")(lambda: 1)(),
        lambda: cache(backend=backend, tags=[""])(lambda: 1)(),
    ]:
        with pytest.raises(ValueError, match="empty"):
            call()
    # A key that would land in the stamp namespace is refused, not written over a stamp.
    shared = RedisCache(client_factory(), value_prefix="sh:", meta_prefix="sh:meta:")
    with pytest.raises(ValueError, match="meta_prefix"):
        shared.set("meta:t:books", "forged")
    # Nothing was written or left pending by the refused calls.
    assert backend.pending_invalidations == [] and shared.pending_invalidations == []
    assert not [k for k in _all_keys(backend.redis_client) if k.startswith((b"lim", b"sh:"))]
    # One character over the limits is stored like any key (digested).
    for length in (MAX_KEY_LENGTH, MAX_KEY_LENGTH + 1):
        assert backend.set("k" * length, length, tags=["t" * (length // 2 + 1)])
        assert backend.get("k" * length, tags=["t" * (length // 2 + 1)]) == (True, length)
    backend.clear()


def test_long_keys_and_tags_from_request_input_are_digested_and_still_invalidated(
        client_factory):
    """The README's ``key=lambda slug: f"books_top:{slug}"`` with a slug from the
    request: a 600-character slug used to fail the page with ``ValueError``."""
    client = client_factory()
    backend = RedisCache(client, default_ttl=60, value_prefix="lk:", meta_prefix="lk-meta:")
    rows = {"n": 0}

    @cache(backend=backend, tags=lambda slug: [f"books_top:{slug}", "books"],
           key=lambda slug: f"books_top:{slug}")
    def get_books_top(slug):
        rows["n"] += 1
        return {"slug": slug[-8:], "n": rows["n"]}

    long_slug = "s" * 600
    twin_slug = "s" * 5000 + "-a"  # the same first characters as the next one
    other_slug = "s" * 5000 + "-b"
    first = get_books_top(long_slug)
    assert get_books_top(long_slug) == first and backend.stats.hits == 1
    twin, other = get_books_top(twin_slug), get_books_top(other_slug)
    assert twin["slug"] != other["slug"] and rows["n"] == 3, "long keys collided"
    assert get_books_top(other_slug) == other and backend.stats.hits == 2

    # What reaches Redis is bounded: readable first characters and a digest.
    stored = {k for k in _all_keys(client) if k.startswith(b"lk")}
    longest = max(len(k) for k in stored)
    assert longest <= len("lk-meta:t:") + MAX_KEY_LENGTH + 33, longest
    assert ("lk:books_top:" + "s" * 100).encode() in {k[:113] for k in stored}

    # invalidate() with the long tag addresses the stamp the entry was stored under,
    # from this process or from another one; the other long entries stay.
    invalidate([f"books_top:{twin_slug}"], backend=backend)
    assert get_books_top(twin_slug)["n"] == 4
    elsewhere = RedisCache(client_factory(), default_ttl=60, value_prefix="lk:",
                           meta_prefix="lk-meta:")
    assert elsewhere.get(f"books_top:{other_slug}",
                         tags=[f"books_top:{other_slug}", "books"]) == (True, other)
    elsewhere.invalidate([f"books_top:{other_slug}"])
    assert get_books_top(other_slug)["n"] == 5
    assert get_books_top(long_slug) == first

    # A key crafted to be a long key's stored name is not that key: it is longer than
    # the limit itself, so it is digested in turn.
    long_key = f"books_top:{long_slug}" * 3
    assert backend.set(long_key, "genuine")
    crafted = bounded_key(long_key)
    assert backend.set(crafted, "forged")
    assert backend.get(long_key) == (True, "genuine") and backend.get(crafted) == (True, "forged")
    assert backend.stats.errors == 0 and backend.pending_invalidations == []
    backend.clear()


def test_a_tag_redis_cannot_encode_is_refused_and_does_not_poison_the_cache(client_factory):
    """A lone surrogate (``"\\ud800"``, e.g. from ``surrogateescape``-decoded input) has
    no UTF-8 form. It must be a clear error at the call site, and later calls with
    ordinary tags must keep working."""
    backend = RedisCache(client_factory(), default_ttl=60, value_prefix="sur:",
                         meta_prefix="sur-meta:")
    assert backend.set("fine", 1, tags=["ok"])
    for call in [lambda: backend.set("k\ud800", 1), lambda: backend.get("k", tags=["\ud800"]),
                 lambda: backend.invalidate(["\ud800"])]:
        with pytest.raises(ValueError):
            call()
    outcomes = {}
    for name, call in [("get", lambda: backend.get("fine", tags=["ok"])),
                       ("set", lambda: backend.set("other", 2, tags=["ok"])),
                       ("invalidate", lambda: backend.invalidate(["ok"]))]:
        try:
            outcomes[name] = call()
        except Exception as exc:
            outcomes[name] = f"{type(exc).__name__}: {exc}"
    assert outcomes == {"get": (True, 1), "set": True, "invalidate": None}, (
        f"the refused tag poisoned the backend: {outcomes}; "
        f"pending {backend.pending_invalidations!r}")
    backend.clear()


GLOB_PREFIXES = ["c*?[ab]\\{x}:", "*", "?:", "[^z]:", "\\:", "p\\*:", "{x}*:"]


def _imitation(prefix: str) -> str:
    """A prefix the UNescaped glob ``prefix*`` matches, though it is not ``prefix``."""
    out, i = [], 0
    while i < len(prefix):
        c = prefix[i]
        if c == "*":
            out.append("ZZ")
        elif c == "?":
            out.append("Q")
        elif c == "[":
            out.append("a" if prefix[i + 1] != "^" else "b")
            i = prefix.index("]", i)
        elif c == "\\" and i + 1 < len(prefix):
            out.append(prefix[i + 1])
            i += 1
        else:
            out.append(c)
        i += 1
    return "".join(out) + "-"


@pytest.mark.parametrize("value_prefix", GLOB_PREFIXES)
def test_clear_with_glob_characters_in_prefixes_deletes_only_this_caches_keys(
        client_factory, value_prefix):
    client = client_factory()
    ours = RedisCache(client, default_ttl=60, value_prefix=value_prefix,
                      meta_prefix=value_prefix + "meta:")
    look_alike = _imitation(value_prefix)
    theirs = RedisCache(client_factory(), default_ttl=60, value_prefix=look_alike,
                        meta_prefix=look_alike + "meta:")
    foreign = [f"{look_alike}session:{i}" for i in range(5)] + [
        value_prefix[:-1] + "#not-ours", "unrelated:key"]
    for key in foreign:
        client.set(key, "keep", ex=120)
    for i in range(40):
        for backend in (ours, theirs):
            assert backend.set(f"e{i}", {"i": i}, tags=[f"t{i % 5}", "*", "?"])
    before = _all_keys(client)
    assert any(k.startswith(value_prefix.encode()) for k in before)

    ours.clear()

    after = _all_keys(client)
    assert not [k for k in after if k.startswith(value_prefix.encode())], "own keys left"
    assert {k for k in before if not k.startswith(value_prefix.encode())} == after, (
        "clear() deleted keys that are not this cache's")
    assert [client.get(k) for k in foreign] == [b"keep"] * len(foreign)
    assert theirs.get("e3", tags=["t3", "*", "?"]) == (True, {"i": 3})
    assert ours.get("e3", tags=["t3", "*", "?"]) == (False, None)
    assert ours.stats.errors == 0 and theirs.stats.errors == 0
    theirs.clear()
    for key in foreign:  # one by one: on a cluster they live in different slots
        client.delete(key)
