"""zstd compression of large entries (``compression=Zstd(...)``)."""

import datetime as dt

import pytest

from relaycache import InMemoryCache, Zstd
from relaycache.backends import flow
from relaycache.core.compression import ZSTD_MAGIC

BIG = {"rows": [[i, f"title {i}", dt.date(2000, 1, 1 + i % 28)] for i in range(2000)]}


@pytest.fixture(params=["memory", "redis"])
def compressing(request, make_redis_backend):
    if request.param == "memory":
        return InMemoryCache(compression=Zstd(min_size=1024))
    return make_redis_backend(compression=Zstd(min_size=1024))


def _stored(backend, key):
    return backend.fetch([backend.value_key(key)])[0]


def test_large_entries_are_stored_compressed_and_read_back_exactly(compressing):
    assert compressing.set("big", BIG, tags=["books"])
    raw = _stored(compressing, "big")
    assert raw.startswith(ZSTD_MAGIC)
    assert len(raw) < len(flow.pack(["books"], ["x"], BIG)) / 4
    assert compressing.get("big", tags=["books"]) == (True, BIG)
    compressing.invalidate(["books"])
    assert compressing.get("big", tags=["books"]) == (False, None)


def test_small_entries_stay_plain_json(compressing):
    compressing.set("small", {"a": 1})
    assert not _stored(compressing, "small").startswith(ZSTD_MAGIC)
    assert compressing.get("small") == (True, {"a": 1})


def test_plain_entries_written_before_compression_was_turned_on_are_read(make_redis_backend):
    plain = make_redis_backend()
    plain.set("big", BIG)
    compressing = make_redis_backend(value_prefix=plain.value_prefix,
                                     meta_prefix=plain.meta_prefix,
                                     compression=Zstd(min_size=1024))
    assert compressing.get("big") == (True, BIG)


def test_a_corrupt_frame_is_a_counted_miss(compressing):
    compressing.set("big", BIG)
    compressing.store_if_current(compressing.value_key("big"), ZSTD_MAGIC + b"garbage",
                                 [], [], None)
    assert compressing.get("big") == (False, None)
    assert compressing.stats.corrupt == 1


def test_max_entry_size_applies_to_the_compressed_entry():
    backend = InMemoryCache(compression=Zstd(min_size=1024), max_entry_size=64 * 1024)
    value = "x" * (1024 * 1024)  # 1 MiB of JSON, a few hundred bytes compressed
    assert backend.set("k", value)
    assert backend.get("k") == (True, value)
    assert InMemoryCache(max_entry_size=64 * 1024).set("k", value) is False
