"""Compiled reads remembered by the state of their query, so a hit skips the compile.

Compiling a query is most of what an ORM cache hit costs, yet a process runs the same
few queries over and over. Each cached read is compiled once per distinct query state:
the state is fingerprinted by ``pickle.dumps`` of the ``Query``'s attributes (fast and
exact; the bytes are only compared, never loaded, and never leave the process), plus
what compiling reads besides the query: the compiler class and connection, the active
time zone (``Trunc``/``Extract`` embed it) and language. Equal fingerprints mean equal
compiled SQL, so the key, tags and column layout found for one query serve the next.

A query whose state cannot be pickled (a lambda, a local class), or holds what pickling
would evaluate (a queryset inside an expression's arguments, a lazy value), is simply
compiled each time. The memo is per process, bounded, and forgotten when settings
change, a model class is created (a new class may reuse an old one's name) or
migrations ran (content type ids, which generic relations compile in, may change).
"""

from __future__ import annotations

import io
import pickle
import threading
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from django.core.signals import setting_changed
from django.db.models import Field, QuerySet
from django.db.models.signals import class_prepared, post_migrate
from django.utils import timezone, translation
from django.utils.functional import LazyObject, Promise

if TYPE_CHECKING:
    from django.db.models.sql.query import Query

T = TypeVar("T")

MAX_ENTRIES = 2048
_entries: dict[Hashable, object] = {}
_lock = threading.Lock()


class _Unfingerprintable(Exception):
    pass


class _StatePickler(pickle.Pickler):
    """Refuses what pickling would evaluate: a ``QuerySet`` (its ``__getstate__`` runs
    the query; expressions keep their raw arguments, so ``When(x__in=qs)`` holds one),
    a lazy value or object (its value may follow the request, the URLconf...).
    Model fields are pickled by name (Django's own reducer)."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (QuerySet, Promise, LazyObject)):
            raise _Unfingerprintable
        if isinstance(obj, Field) and not hasattr(obj, "model"):
            # An ``output_field=CharField()``: every instance gets a new
            # creation_counter, which only orders a model's fields; kept, it would
            # make each such query look new.
            state = obj.__dict__.copy()
            del state["creation_counter"]
            return type(obj), (), state
        return NotImplemented


def pickled(value: object) -> bytes | None:
    """``value`` as bytes, ``None`` if some part of it cannot or must not be pickled."""
    buffer = io.BytesIO()
    try:
        _StatePickler(buffer, pickle.HIGHEST_PROTOCOL).dump(value)
    except Exception:  # anything unpicklable: compiled each time
        return None
    return buffer.getvalue()


def fingerprint(query: Query, *context: Hashable) -> Hashable | None:
    """What determines the SQL ``query`` compiles to, with ``context`` (the compiler,
    connection, result shape...), or ``None`` when it cannot be captured."""
    state = query.__dict__.copy()
    state.pop("relaycache_options", None)
    data = pickled(state)
    if data is None:
        return None
    # Annotated ``type``: mypy does not see ``type[Query]`` as Hashable (mypy#17730).
    query_class: type = type(query)
    return (query_class, timezone.get_current_timezone(), translation.get_language(), *context,
            data)


def remembered(key: Hashable | None, make: Callable[[], T]) -> T:
    """``make()``, or what it returned for an equal ``key`` before (``None``: always
    make). Exceptions are not remembered."""
    if key is None:
        return make()
    found = _entries.get(key)
    if found is not None:
        # What make() returned for this key: every caller's key names what it makes
        # (its compiler class, or "aggregate"), so the types of equal keys agree.
        return cast(T, found)
    value = make()
    with _lock:
        if len(_entries) >= MAX_ENTRIES:
            _entries.clear()
        _entries[key] = value
    return value


def forget(**kwargs: Any) -> None:
    with _lock:
        _entries.clear()


def install() -> None:
    """Forget remembered compiles whenever they may go stale (the app's ``ready()``)."""
    setting_changed.connect(forget, dispatch_uid="relaycache.orm.memo.settings")
    class_prepared.connect(forget, dispatch_uid="relaycache.orm.memo.models")
    post_migrate.connect(forget, dispatch_uid="relaycache.orm.memo.migrate")
