"""Stable cache keys for decorated functions.

A derived key must be the same in every process and on every run, so it is built from
the function's module and qualified name plus a digest of its canonically encoded
arguments: never ``hash()`` (salted per process) nor ``repr()`` of unordered
containers (set order follows the hash seed).
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from .codec import to_json

MAX_KEY_LENGTH = 1024
MAX_TAG_LENGTH = 512

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


def function_key(func: Callable[..., Any], arguments: dict[str, Any]) -> str:
    """Key for ``func`` called with ``arguments`` (bound, defaults applied)."""
    try:
        data = {name: _key_data(value) for name, value in arguments.items()}
    except TypeError as exc:
        raise TypeError(
            f"cannot derive a cache key for {func.__qualname__}(): {exc}; "
            "pass key=... to @cache"
        ) from None
    return f"{func.__module__}.{func.__qualname__}:{digest(data)}"


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


def check_key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"cache keys must be str, got {type(key).__qualname__}")
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"cache keys must have 1 to {MAX_KEY_LENGTH} characters, got {len(key)}")
    _check_encodable(key, "cache keys")
    return key


def check_tags(tags: Iterable[object]) -> list[str]:
    """Validated, de-duplicated and sorted tags (order never matters)."""
    if isinstance(tags, (str, bytes)):
        raise TypeError("tags must be a list of strings, not a single string")
    result: set[str] = set()
    for tag in tags:
        if not isinstance(tag, str):
            raise TypeError(f"tags must be str, got {type(tag).__qualname__}: {tag!r}")
        if not tag or len(tag) > MAX_TAG_LENGTH:
            raise ValueError(f"tags must have 1 to {MAX_TAG_LENGTH} characters: {tag[:40]!r}")
        _check_encodable(tag, "tags")
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
