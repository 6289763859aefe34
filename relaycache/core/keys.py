"""Stable cache keys for decorated functions; key, tag and ttl validation.

A derived key must be the same in every process and on every run, so it is built from
the function's module and qualified name plus a digest of its canonically encoded
arguments: never ``hash()`` (salted per process) nor ``repr()`` of unordered
containers (set order follows the hash seed). :class:`KeyBuilder` is the one place
that derivation lives.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from .codec import to_json

MAX_KEY_LENGTH = 1024
"""Keys up to this many characters are stored as given; longer ones as
:func:`bounded_key` shortens them."""
MAX_TAG_LENGTH = 512
"""Tags up to this many characters are kept as given; longer ones as :func:`check_tags`
shortens them."""
_DIGEST_LENGTH = 33  # "~" and 32 hex digits

_UNORDERED = ("~s", "~fs", "~m")


def _sort_key(item: Any) -> bytes:
    return orjson.dumps(item, option=orjson.OPT_SORT_KEYS)


def _canonical(data: Any) -> Any:
    if type(data) is list:
        return [_canonical(v) for v in data]
    if type(data) is dict:
        if len(data) == 1:
            ((tag, inner),) = data.items()
            if tag in _UNORDERED:
                return {tag: sorted((_canonical(v) for v in inner), key=_sort_key)}
        return {k: _canonical(v) for k, v in data.items()}
    return data


def _key_data(value: Any) -> Any:
    meta = getattr(value, "_meta", None)
    if meta is not None and hasattr(meta, "label") and hasattr(value, "pk"):
        # A model instance stands for its row: same table and pk, same key.
        return {"~model": [meta.label, to_json(value.pk)]}
    if isinstance(value, type):
        return {"~cls": f"{value.__module__}.{value.__qualname__}"}
    try:
        return to_json(value)
    except TypeError:
        if isinstance(value, (list, tuple)):
            return [_key_data(v) for v in value]
        if isinstance(value, dict):
            return {"~m": [[_key_data(k), _key_data(v)] for k, v in value.items()]}
        raise


def digest(data: Any) -> str:
    """Hex digest of canonically encoded data (128 bits)."""
    encoded = orjson.dumps(_canonical(data), option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(encoded, digest_size=16).hexdigest()


@functools.lru_cache(maxsize=4096)
def _signature(func: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(func)


class KeyBuilder:
    """The keys of ``@cache`` functions called without ``key=``.

    A key is ``[prefix:][namespace:]module.qualname:digest``, the digest (128-bit
    BLAKE2b) taken over the call's arguments bound to the function's signature:
    defaults applied (``f(1)`` and ``f(a=1)`` share an entry), ``self`` left out, each
    value canonically encoded by the codec (model instances by table and primary key),
    so the key is the same in every process. The default builder (no prefix, no
    namespace) is what ``@cache`` uses; the relaycache 0.1 library's
    ``KeyBuilder(prefix=..., namespace=...)`` is this class (its default prefix was
    ``"rc"``; here the backend's ``value_prefix`` already sets keys apart).

    :param prefix: the first part of every key ("" for none).
    :param namespace: the part after the prefix, unless ``build`` is given one (a
        version, a tenant...).
    """

    def __init__(self, *, prefix: str = "", namespace: str | None = None) -> None:
        if not isinstance(prefix, str):
            raise TypeError(f"KeyBuilder(prefix=...) must be a str, got {prefix!r}")
        if namespace is not None and not isinstance(namespace, str):
            raise TypeError(f"KeyBuilder(namespace=...) must be a str or None, got {namespace!r}")
        self.prefix = prefix.rstrip(":")
        self.namespace = namespace

    def __repr__(self) -> str:
        return f"KeyBuilder(prefix={self.prefix!r}, namespace={self.namespace!r})"

    def build(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
              namespace: str | None = None) -> str:
        """The key of ``func(*args, **kwargs)``; ``namespace`` overrides the builder's."""
        bound = _signature(func).bind(*args, **kwargs)
        bound.apply_defaults()
        return self.bound_key(func, bound, namespace)

    def bound_key(self, func: Callable[..., Any], bound: inspect.BoundArguments,
                  namespace: str | None = None) -> str:
        """:meth:`build` for a call already bound (defaults applied): the decorator's
        path, which binds each call once for its key and tag callables alike."""
        arguments = call_arguments(bound)
        try:
            data = {name: _key_data(value) for name, value in arguments.items()}
        except TypeError as exc:
            raise TypeError(
                f"cannot derive a cache key for {func.__qualname__}(): {exc}; "
                "pass key=... to @cache"
            ) from None
        key = f"{func.__module__}.{func.__qualname__}:{digest(data)}"
        namespace = namespace or self.namespace
        if namespace:
            key = f"{namespace}:{key}"
        return f"{self.prefix}:{key}" if self.prefix else key


def call_arguments(bound: inspect.BoundArguments) -> dict[str, Any]:
    """A bound call's arguments by name (defaults applied), ``self`` left out."""
    arguments = dict(bound.arguments)
    for name, param in bound.signature.parameters.items():
        if param.kind is param.VAR_KEYWORD and name in arguments:
            arguments.update(arguments.pop(name))
    arguments.pop("self", None)
    return arguments


def _check_encodable(text: str, what: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{what} must be valid Unicode (no lone surrogates): "
                             f"{text[:40]!r}") from None


def _digest_of(text: str) -> str:
    return "~" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def check_key(key: object) -> str:
    """``key``, if it can be a cache key: a non-empty ``str`` with a UTF-8 form. Any
    length will do (see :func:`bounded_key`)."""
    if not isinstance(key, str):
        raise TypeError(f"cache keys must be str, got {type(key).__qualname__}")
    if not key:
        raise ValueError("cache keys must not be empty")
    _check_encodable(key, "cache keys")
    return key


def bounded_key(key: str) -> str:
    """The name ``key`` is stored under: itself up to :data:`MAX_KEY_LENGTH`
    characters; beyond (a key built from request input), its first
    :data:`MAX_KEY_LENGTH` characters, ``~`` and a 128-bit BLAKE2b digest of the whole,
    so a key costs bounded memory in the store and on every hit.

    That name is longer than any key stored as given, so it is no other key's name,
    whatever the input: a short key crafted to look like a long key's name cannot make
    the long key read its entry. The digest keeps long keys with the same beginning
    apart. Apply it once, to the key as given (``BaseCache.value_key`` does)."""
    if len(key) <= MAX_KEY_LENGTH:
        return key
    return key[:MAX_KEY_LENGTH] + _digest_of(key)


def tags_problem(tags: object) -> str | None:
    """Why ``tags`` is not a collection of tags, for an error message; ``None`` if it
    is one (its items are checked by :func:`check_tags`). A single string, a mapping
    (its keys would silently become the tags) and ``None`` are refused."""
    if tags is None:
        return "None"
    if isinstance(tags, (str, bytes)):
        return f"a single string {tags!r:.80} (put it in a list)"
    if isinstance(tags, Mapping):
        return (f"a {type(tags).__qualname__} {tags!r:.80} (pass list(...) of its keys if "
                "they are the tags)")
    if not isinstance(tags, Iterable):
        return f"{type(tags).__qualname__} {tags!r:.80}"
    return None


def check_tags(tags: Iterable[object]) -> list[str]:
    """Validated, de-duplicated and sorted tags (order never matters).

    ``tags`` is a list (or any iterable but a string or a mapping) of non-empty
    strings. A tag longer than :data:`MAX_TAG_LENGTH` characters becomes its first
    characters, ``~`` and a 128-bit BLAKE2b digest of the whole, :data:`MAX_TAG_LENGTH`
    in all. The form is within the limit, so checking checked tags changes nothing: a
    tag gets the same stamp whichever layers checked it (the decorator, then the
    backend; or ``invalidate()``). A tag given as is that equals another's shortened
    form shares its stamp: invalidating one invalidates both, which can cost misses,
    never serve a stale entry."""
    problem = tags_problem(tags)
    if problem is not None:
        raise TypeError(f"tags must be a list of tag strings, got {problem}")
    result: set[str] = set()
    for tag in tags:
        if not isinstance(tag, str):
            raise TypeError(f"tags must be str, got {type(tag).__qualname__}: {tag!r}")
        if not tag:
            raise ValueError("tags must not be empty")
        _check_encodable(tag, "tags")
        if len(tag) > MAX_TAG_LENGTH:
            tag = tag[:MAX_TAG_LENGTH - _DIGEST_LENGTH] + _digest_of(tag)
        result.add(tag)
    return sorted(result)


def check_ttl(ttl: object) -> float | None:
    """A ttl is positive, finite seconds, or ``None`` (the default)."""
    if ttl is None:
        return None
    if (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl)
            or ttl <= 0):
        raise ValueError(f"ttl must be positive, finite seconds or None, got {ttl!r}")
    return ttl
