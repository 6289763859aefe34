"""Derived keys are the same in every process, and differ whenever the call differs."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from relaycache import InMemoryCache, KeyBuilder, cache, invalidate
from relaycache.core.keys import MAX_KEY_LENGTH, MAX_TAG_LENGTH, check_key, check_tags

ROOT = Path(__file__).resolve().parents[2]
_backend = InMemoryCache()


@cache(backend=_backend)
def target(a, b=2, *args, c=None, **kwargs):
    return a


def other_target(a, b=2, *args, c=None, **kwargs):
    return a


class Holder:
    @cache(backend=_backend)
    def method(self, a, b=2):
        return a

    @staticmethod
    @cache(backend=_backend)
    def static(a):
        return a


# Values whose naive repr()/hash() depends on PYTHONHASHSEED (set and dict-key order).
WORDS = [f"word{i}" for i in range(40)]


def hash_sensitive_calls():
    """(args, kwargs) pairs, rebuilt identically in any process."""
    return [
        ((set(WORDS),), {}),
        ((frozenset(WORDS),), {}),
        (({w: i for i, w in enumerate(WORDS)},), {}),
        (({w: WORDS.index(w) for w in reversed(WORDS)},), {}),
        (((set(WORDS[:5]), frozenset(WORDS[5:10])),), {}),
        (({frozenset(WORDS[:3]), frozenset(WORDS[3:6])},), {}),
        (({(w, i) for i, w in enumerate(WORDS[:10])},), {}),
        (({"nested": {"inner": set(WORDS[:8])}},), {}),
        (({1: set(WORDS[:4]), "x": frozenset()},), {}),
        (({1, "1", 2.5, None, (1, 2), b"x"},), {}),
        ((1,), {"c": set(WORDS), **{w: w for w in WORDS[:6]}}),
        ((dt.date(2024, 1, 1),), {"c": {uuid.UUID(int=5), Decimal("1.10")}}),
        ((int,), {"c": [str, Holder]}),
    ]


def keys_in_this_process() -> dict:
    calls = hash_sensitive_calls()
    return {
        "target": [target.cache_key(*args, **kwargs) for args, kwargs in calls],
        "key_builder": [KeyBuilder(prefix="p", namespace="n").build(other_target, args, kwargs)
                        for args, kwargs in calls],
        "method": Holder.method.cache_key(Holder(), set(WORDS)),
        "static": Holder.static.cache_key(frozenset(WORDS)),
        "set_order": repr(set(WORDS)),
    }


_CHILD = (
    "import json\n"
    "from tests.core.test_keys import keys_in_this_process\n"
    "print(json.dumps(keys_in_this_process()))\n"
)


def _keys_in_subprocess(hash_seed: str) -> dict:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    out = subprocess.run([sys.executable, "-c", _CHILD], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout)


def test_derived_keys_are_identical_across_processes_and_hash_seeds():
    here = keys_in_this_process()
    children = {seed: _keys_in_subprocess(seed) for seed in ("0", "1", "12345")}
    # The hazard is real: these processes really iterate the same set differently.
    assert len({child["set_order"] for child in children.values()}) > 1
    for seed, child in children.items():
        for name in ("target", "key_builder", "method", "static"):
            assert child[name] == here[name], f"PYTHONHASHSEED={seed}: {name} keys differ"


def test_hash_sensitive_calls_get_distinct_keys():
    keys = keys_in_this_process()["target"]
    # calls 2 and 3 are the same dict built in another order: equal dicts, same key
    assert keys[2] == keys[3]
    assert len(set(keys)) == len(keys) - 1


def test_equal_sets_built_differently_share_a_key():
    assert target.cache_key(set(WORDS)) == target.cache_key(set(reversed(WORDS)))
    assert target.cache_key({"a": 1, "b": 2}) == target.cache_key({"b": 2, "a": 1})


def test_derived_key_names_module_and_qualified_name_never_hash():
    key = target.cache_key(1)
    assert key.startswith(f"{__name__}.target:")
    assert Holder.method.cache_key(Holder(), 1).startswith(f"{__name__}.Holder.method:")
    digest = key.rsplit(":", 1)[1]
    assert len(digest) >= 32 and all(c in "0123456789abcdef" for c in digest)


# -- same call, same key ---------------------------------------------------------------

def test_positional_keyword_and_defaults_give_the_same_key():
    key = target.cache_key(1)
    assert target.cache_key(1, 2) == key
    assert target.cache_key(a=1) == key
    assert target.cache_key(b=2, a=1) == key
    assert target.cache_key(1, c=None) == key
    assert target.cache_key(1, b=2, c=None) == key


def test_extra_keyword_order_does_not_matter():
    assert target.cache_key(1, x=1, y=2) == target.cache_key(1, y=2, x=1)


def test_same_call_through_the_decorated_function_hits(backend):
    calls = []

    @cache(backend=backend)
    def f(a, b=2, *, c="x"):
        calls.append((a, b, c))
        return [a, b, c]

    assert f(1) == [1, 2, "x"]
    assert f(1, 2) == [1, 2, "x"]
    assert f(a=1, c="x") == [1, 2, "x"]
    assert f(b=2, a=1) == [1, 2, "x"]
    assert calls == [(1, 2, "x")]


# -- different call, different key -------------------------------------------------------

@pytest.mark.parametrize(("first", "second"), [
    ((1,), (2,)),
    ((1,), ("1",)),
    ((1,), (1.0,)),
    ((1,), (True,)),
    ((0,), (False,)),
    ((0,), (None,)),
    ((None,), ("None",)),
    (("",), (None,)),
    (((1, 2),), ([1, 2],)),
    (({1},), (frozenset({1}),)),
    (({1},), ([1],)),
    (({"a": 1},), ({"a": "1"},)),
    (({"1": 1},), ({1: 1},)),
    ((b"a",), ("a",)),
    ((bytearray(b"a"),), (b"a",)),
    ((dt.date(2024, 1, 1),), ("2024-01-01",)),
    ((dt.date(2024, 1, 1),), (dt.datetime(2024, 1, 1),)),
    ((dt.datetime(2024, 1, 1, tzinfo=dt.UTC),), (dt.datetime(2024, 1, 1),)),
    ((Decimal("1.0"),), (Decimal("1.00"),)),
    ((Decimal("1"),), (1,)),
    ((uuid.UUID(int=1),), (uuid.UUID(int=1).hex,)),
    (([1, [2]],), ([[1], 2],)),
    ((("a", "b"),), (("ab", ""),)),
    (({"~t": [1]},), ((1,),)),
    ((int,), (str,)),
    ((int,), ("builtins.int",)),
    ((1, 3), (1, 2)),
    ((1, 2, 3), (1, 2)),
    ((2**64,), (2**64 + 1,)),
    ((float("nan"),), (None,)),
])
def test_different_arguments_give_different_keys(first, second):
    assert target.cache_key(*first) != target.cache_key(*second)


def test_keyword_values_are_not_swapped():
    assert target.cache_key(1, 2) != target.cache_key(2, 1)
    assert target.cache_key(1, x=1, y=2) != target.cache_key(1, x=2, y=1)
    assert target.cache_key(1, c=5) != target.cache_key(1, 5)


def test_different_functions_with_the_same_arguments_get_different_keys():
    assert KeyBuilder().build(other_target, (1,), {}) != target.cache_key(1)
    assert Holder.method.cache_key(Holder(), 1) != target.cache_key(1)
    assert Holder.static.cache_key(1) != target.cache_key(1)


def test_unencodable_argument_asks_for_an_explicit_key():
    with pytest.raises(TypeError, match="key="):
        target.cache_key(object())


# -- check_key / check_tags --------------------------------------------------------------

@pytest.mark.parametrize("bad", [1, None, b"key", ["k"], 1.5])
def test_check_key_rejects_non_str(bad):
    with pytest.raises(TypeError):
        check_key(bad)


@pytest.mark.parametrize("bad", [""])
def test_check_key_rejects_empty_or_too_long(bad):
    with pytest.raises(ValueError):
        check_key(bad)


def test_check_key_accepts_limits_and_odd_characters():
    for key in ["k", "k" * MAX_KEY_LENGTH, "with space", "new\nline", "*?[]{}", "ключ ✓"]:
        assert check_key(key) == key


def test_check_tags_sorts_and_deduplicates():
    assert check_tags(["b", "a", "b"]) == ["a", "b"]
    assert check_tags(("x",)) == ["x"]
    assert check_tags(t for t in ["z", "y"]) == ["y", "z"]
    assert check_tags([]) == []
    assert check_tags(["t" * MAX_TAG_LENGTH]) == ["t" * MAX_TAG_LENGTH]


@pytest.mark.parametrize("bad", ["books", b"books"])
def test_check_tags_rejects_a_single_string(bad):
    with pytest.raises(TypeError, match="single string"):
        check_tags(bad)


@pytest.mark.parametrize("bad", [[1], ["ok", None], [b"bytes"], [("a",)]])
def test_check_tags_rejects_non_str_tags(bad):
    with pytest.raises(TypeError):
        check_tags(bad)


@pytest.mark.parametrize("bad", [[""], ["ok", ""]])
def test_check_tags_rejects_empty_or_too_long(bad):
    with pytest.raises(ValueError):
        check_tags(bad)


def test_single_string_tags_are_refused_everywhere_a_user_passes_tags(backend):
    with pytest.raises(TypeError):
        cache(backend=backend, tags="books")(lambda: 1)
    with pytest.raises(TypeError):
        invalidate(tags="books", backend=backend)
    with pytest.raises(TypeError):
        backend.set("k", 1, tags="books")

    @cache(backend=backend, tags=lambda: "books")
    def f():
        return 1

    with pytest.raises(TypeError):
        f()


def test_bad_keys_are_refused_by_backend_and_decorator(backend):
    with pytest.raises(ValueError):
        backend.get("")
    with pytest.raises(TypeError):
        backend.set(5, "v")
    assert backend.set("k" * (MAX_KEY_LENGTH + 1), "v")  # long keys are digested

    @cache(backend=backend, key=lambda n: n)
    def f(n):
        return n

    with pytest.raises(TypeError):
        f(5)
    with pytest.raises(ValueError):
        f("")


@pytest.mark.parametrize("bad, error", [
    ("books", TypeError), ([1], TypeError), ([["unhashable"]], TypeError), ([""], ValueError),
])
def test_a_tags_callable_returning_bad_tags_fails_before_computing(backend, bad, error):
    computed = []

    @cache(backend=backend, tags=lambda n: bad)
    def square(n):
        computed.append(n)
        return n * n

    with pytest.raises(error):
        square(3)
    assert computed == []


def test_a_tags_callable_may_return_any_iterable(backend):
    @cache(backend=backend, tags=lambda n: (t for t in [f"n:{n}", "all", "all"]))
    def square(n):
        return n * n

    assert square(3) == 9 and square(3) == 9
    assert backend.stats.hits == 1
    invalidate(["all"], backend=backend)
    assert square(3) == 9 and backend.stats.misses == 2
