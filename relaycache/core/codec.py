"""Exact, pickle-free value encoding on top of orjson.

orjson alone is lossy for a cache: tuples come back as lists, datetimes and UUIDs as
strings, big ints as floats and NaN as null. Values are therefore walked once and every
type JSON cannot carry exactly is written as a one-key object whose key starts with
``~`` (``{"~dt": [...]}``). A user dict that could be mistaken for such a marker, or
whose keys are not all strings, is itself wrapped (``{"~m": [[k, v], ...]}``), so
decoding is unambiguous. Nothing read back is ever evaluated: decoding only builds
the standard types listed below and the ones registered with :func:`register_type`.
"""

from __future__ import annotations

import base64
import datetime as dt
import importlib
import uuid
import zoneinfo
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson

__all__ = ["DECODE_ERRORS", "JSONData", "decode", "encode", "from_json", "may_hold_markers",
           "register_type", "to_json"]

_INT_MIN, _INT_MAX = -(2**63), 2**64  # what orjson reads back as an int
_MARK = "~"
_MARK_BYTES = b'"~'
_MARK_STR = '"~'


class JSONData:
    """A value already in the form :func:`to_json` gives (JSON scalars, lists, dicts
    with string keys, markers included), stored as it is and handed back by
    :func:`from_json` as that same data, neither walked nor decoded: the caller encoded
    it and decodes it itself. The ORM's rows are encoded column by column
    (``relaycache.orm.rows``), so a walk of every cell on store would only repeat it."""

    __slots__ = ("data",)

    def __init__(self, data: Any) -> None:
        self.data = data


def _tz_spec(tz: dt.tzinfo | None, value: dt.datetime | dt.time) -> str | float | None:
    if tz is None:
        return None
    if tz is dt.UTC:
        return "UTC"
    if isinstance(tz, zoneinfo.ZoneInfo) and tz.key:
        return "Z" + tz.key
    offset = value.utcoffset()
    if isinstance(tz, dt.timezone) and offset is not None:
        return offset.days * 86400 + offset.seconds + offset.microseconds / 1e6
    raise TypeError(f"cannot encode a datetime with tzinfo of type {type(tz).__qualname__}")


def _tz_from_spec(spec: Any) -> dt.tzinfo | None:
    if spec is None:
        return None
    if spec == "UTC":
        return dt.UTC
    if isinstance(spec, str) and spec.startswith("Z"):
        return zoneinfo.ZoneInfo(spec[1:])
    return dt.timezone(dt.timedelta(seconds=spec))


def _enc_datetime(v: dt.datetime) -> list[object]:
    return [v.replace(tzinfo=None).isoformat(), _tz_spec(v.tzinfo, v), v.fold]


def _dec_datetime(v: Any) -> dt.datetime:
    return dt.datetime.fromisoformat(v[0]).replace(tzinfo=_tz_from_spec(v[1]), fold=v[2])


def _enc_time(v: dt.time) -> list[object]:
    return [v.replace(tzinfo=None).isoformat(), _tz_spec(v.tzinfo, v), v.fold]


def _dec_time(v: Any) -> dt.time:
    return dt.time.fromisoformat(v[0]).replace(tzinfo=_tz_from_spec(v[1]), fold=v[2])


def _b64(v: bytes | memoryview) -> str:
    return base64.b64encode(v).decode("ascii")


def _unb64(v: str) -> bytes:
    return base64.b64decode(v, validate=True)


# tag -> (type, encoder to JSON-able data, decoder from it); the ORM's row format uses
# it too. Containers are handled by the walkers below: their items need walking.
_Codec = tuple[type, Callable[[Any], Any], Callable[[Any], Any]]
SCALAR_TYPES: dict[str, _Codec] = {
    "dt": (dt.datetime, _enc_datetime, _dec_datetime),
    "d": (dt.date, lambda v: v.isoformat(), dt.date.fromisoformat),
    "tm": (dt.time, _enc_time, _dec_time),
    "td": (
        dt.timedelta,
        lambda v: [v.days, v.seconds, v.microseconds],
        lambda v: dt.timedelta(v[0], v[1], v[2]),
    ),
    "dec": (Decimal, str, Decimal),
    "u": (uuid.UUID, lambda v: v.hex, lambda v: uuid.UUID(hex=v)),
    "b": (bytes, _b64, _unb64),
    "ba": (bytearray, _b64, lambda v: bytearray(_unb64(v))),
    "mv": (memoryview, _b64, lambda v: memoryview(_unb64(v))),
    "i": (int, str, int),
    "f": (float, repr, float),
}
_ENCODERS: dict[type, tuple[str, Callable[[Any], Any]]] = {
    typ: (tag, enc) for tag, (typ, enc, _) in SCALAR_TYPES.items() if typ not in (int, float)
}
DECODE_ERRORS: tuple[type[Exception], ...] = (
    ValueError, TypeError, LookupError, AttributeError, ArithmeticError)
"""What a decoder of :data:`SCALAR_TYPES` may raise on data it was not made from:
``Decimal("not-a-number")`` raises ``decimal.InvalidOperation`` (an
``ArithmeticError``), ``uuid.UUID(hex=5)`` an ``AttributeError``, an unknown zone a
``LookupError``. :func:`from_json` turns them into ``ValueError``; code that calls the
decoders itself, cell by cell (the ORM's rows), catches these once around the loop, so
that garbage read from the store is a miss and the cells pay no wrapper."""
_DECODERS: dict[str, Callable[[Any], Any]] = {
    _MARK + tag: dec for tag, (_, _, dec) in SCALAR_TYPES.items()
}
_USER_TYPES: dict[type, tuple[str, Callable[[Any], Any]]] = {}
_DEFERRED_TYPES: tuple[tuple[str, str, str], ...] = (
    ("django.http.response.HttpResponse", "django_http_response",
     "relaycache.http:register_response_type"),
)
"""Types registered by a relaycache module that needs a third-party package: (the
class's qualified name, its type name, ``module:function`` registering it). The codec
calls the function the first time it meets an instance or the type's marker, so the
core imports nothing of the package, and ``HttpResponse`` is known without the Django
app in ``INSTALLED_APPS`` (the integration guide's ``cache_view`` helper)."""


def register_type(
    cls: type, name: str, encode: Callable[[Any], Any], decode: Callable[[Any], Any]
) -> None:
    """Teach the codec a new type.

    ``encode(obj)`` must return data the codec already knows (it is walked again);
    ``decode(data)`` rebuilds the object. ``name`` is stored in every entry, so keep it
    stable across deployments. Instances of subclasses of ``cls`` use the same pair.
    """
    if not name or not name.isidentifier():
        raise ValueError(f"type name must be an identifier, got {name!r}")
    tag = "x:" + name
    existing = _DECODERS.get(_MARK + tag)
    if existing is not None and existing is not decode:
        raise ValueError(f"a type is already registered as {name!r}")
    _USER_TYPES[cls] = (tag, encode)
    _DECODERS[_MARK + tag] = decode


def _lookup_user_type(cls: type) -> tuple[str, Callable[[Any], Any]] | None:
    for base in cls.__mro__:
        if base in _USER_TYPES:
            return _USER_TYPES[base]
    return None


def _register_deferred(matches: Callable[[str, str], bool]) -> bool:
    """Run the registration of the :data:`_DEFERRED_TYPES` entry ``matches(class,
    name)`` accepts; ``False`` if there is none or its module cannot be imported."""
    for qualname, name, loader in _DEFERRED_TYPES:
        if matches(qualname, name):
            module, _, function = loader.partition(":")
            try:
                getattr(importlib.import_module(module), function)()
            except ImportError:
                return False
            return True
    return False


def to_json(value: Any) -> Any:
    """Return JSON-able data that :func:`from_json` turns back into ``value``."""
    cls = type(value)
    if cls is str or cls is bool or value is None:
        return value
    if cls is int:
        return value if _INT_MIN <= value < _INT_MAX else {"~i": str(value)}
    if cls is float:
        return value if value - value == 0 else {"~f": repr(value)}
    if cls is list:
        return [to_json(v) for v in value]
    if cls is dict:
        if all(type(k) is str for k in value) and not (
            len(value) == 1 and next(iter(value)).startswith(_MARK)
        ):
            return {k: to_json(v) for k, v in value.items()}
        return {"~m": [[to_json(k), to_json(v)] for k, v in value.items()]}
    if cls is tuple:
        return {"~t": [to_json(v) for v in value]}
    if cls is JSONData:
        return {"~j": value.data}
    if cls is set or cls is frozenset:
        return {"~s" if cls is set else "~fs": [to_json(v) for v in value]}
    known = _ENCODERS.get(cls)
    if known is not None:
        return {_MARK + known[0]: known[1](value)}
    user = _lookup_user_type(cls)
    if user is None:
        bases = {f"{base.__module__}.{base.__qualname__}" for base in cls.__mro__}
        if _register_deferred(lambda qualname, _: qualname in bases):
            user = _lookup_user_type(cls)
    if user is not None:
        return {_MARK + user[0]: to_json(user[1](value))}
    raise TypeError(
        f"relaycache cannot encode a value of type {cls.__module__}.{cls.__qualname__}; "
        "return plain data or register the type with relaycache.register_type()"
    )


def from_json(data: Any) -> Any:
    """Inverse of :func:`to_json`."""
    cls = type(data)
    if cls is list:
        return [from_json(v) for v in data]
    if cls is not dict:
        return data
    if len(data) == 1:
        (tag, inner), = data.items()
        if tag == "~j":  # JSONData: every ORM hit, so no detour
            return inner
        if tag[:1] == _MARK:
            return _decode_marker(tag, inner)
    return {k: from_json(v) for k, v in data.items()}


def _decode_marker(tag: str, inner: Any) -> Any:
    try:
        return _decode_known_marker(tag, inner)
    except ValueError:
        raise
    except DECODE_ERRORS as exc:
        raise ValueError(f"malformed {tag!r} value in cached data: {exc}") from None


def _decode_known_marker(tag: str, inner: Any) -> Any:
    if tag == "~t":
        return tuple(from_json(v) for v in inner)
    if tag == "~m":
        return {from_json(k): from_json(v) for k, v in inner}
    if tag == "~s":
        return {from_json(v) for v in inner}
    if tag == "~fs":
        return frozenset(from_json(v) for v in inner)
    decoder = _DECODERS.get(tag)
    if decoder is None and tag.startswith("~x:") and _register_deferred(
            lambda _, name: tag == f"~x:{name}"):
        decoder = _DECODERS.get(tag)
    if decoder is None:
        raise ValueError(f"unknown type marker {tag!r} in cached data")
    if tag.startswith("~x:"):
        return decoder(from_json(inner))
    return decoder(inner)


def encode(value: Any) -> bytes:
    """Encode ``value`` to UTF-8 JSON bytes; raises ``TypeError`` for unknown types."""
    return orjson.dumps(to_json(value))


def may_hold_markers(raw: bytes | str) -> bool:
    """Cheap test that lets plain JSON skip the :func:`from_json` walk on decode."""
    if isinstance(raw, bytes):
        return _MARK_BYTES in raw
    return _MARK_STR in raw


def decode(raw: bytes | str) -> Any:
    """Decode what :func:`encode` produced. Raises ``ValueError`` on corrupt input."""
    data = orjson.loads(raw)
    return from_json(data) if may_hold_markers(raw) else data
