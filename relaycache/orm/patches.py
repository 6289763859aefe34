"""Everything RelayCache does to Django's internals, in one place.

Django runs ``on_commit`` callbacks in the order they were registered and stops at the
first one that raises; it offers no hook at all while autocommit is off
(``set_autocommit(False)``, then ``commit()``); and ``cursor.callproc()`` bypasses the
execute wrappers. RelayCache needs a transaction's invalidations to run right after
its COMMIT, before the application's callbacks and whatever they do, and to hear of
every call that may write. So:

- its callbacks (:class:`AfterCommit`) sit in ``connection.run_on_commit`` with the
  application's, as Django's entries ``(savepoint ids, callback, robust)``. Django drops
  those of a savepoint that rolls back and empties the list at a rollback: exactly the
  lifetime of the writes they record, with no state of RelayCache's own to outlive a
  transaction;
- ``BaseDatabaseWrapper.commit()`` is wrapped: once the COMMIT succeeded, it takes
  RelayCache's callbacks out of the list and runs them, then returns.
  ``Atomic.__exit__`` runs the application's callbacks only after ``commit()`` returned
  (``set_autocommit(True)`` calls ``run_and_clear_commit_hooks()``), so they can
  neither come first nor prevent ours. A backend whose ``commit()`` does not reach
  this one leaves the callbacks to Django, which then runs them in its own order;
- ``set_autocommit()`` is wrapped the same way: SQLite commits an open transaction
  when autocommit is turned back on, without a ``commit()`` call;
- ``CursorWrapper.callproc()`` is wrapped to report each call after it ran.

These methods are the same in Django 5.2 and 6.x; ``tests/orm/test_commit_hooks.py``
checks every assumption made here on both.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper

logger = logging.getLogger("relaycache.orm")

_WRAPPED = "_relaycache_wrapped"


class AfterCommit:
    """A RelayCache callback in ``run_on_commit``: run right after the COMMIT, ahead
    of the application's callbacks."""

    __slots__ = ()

    def __call__(self) -> None:
        raise NotImplementedError


def pending(connection: BaseDatabaseWrapper) -> Iterator[tuple[set[str], AfterCommit]]:
    """RelayCache's callbacks waiting for this connection's COMMIT, each with the
    savepoint ids that were active when it was registered."""
    for entry in connection.run_on_commit:
        if isinstance(entry[1], AfterCommit):
            yield entry[0], entry[1]


def schedule(connection: BaseDatabaseWrapper, callback: AfterCommit) -> None:
    """Run ``callback`` right after this connection's next COMMIT (it is inside
    ``atomic`` or has autocommit off)."""
    if connection.in_atomic_block:
        connection.on_commit(callback, robust=True)
        return
    # Autocommit off outside atomic: on_commit() refuses, so add what it would add.
    entries: list[Any] = connection.run_on_commit
    entries.append((set(connection.savepoint_ids), callback, True))


def manual_transaction(connection: BaseDatabaseWrapper) -> bool:
    """Whether ``connection`` runs in a transaction the application manages by hand
    (``set_autocommit(False)``), inside ``atomic`` or not; ``atomic`` entered in
    autocommit turns autocommit off too, and marks its block to commit on exit.

    Asks nothing of the database: a connection Django has not opened yet will open with
    the ``AUTOCOMMIT`` setting, and an open one knows its mode (``get_autocommit()``
    would connect, so that a hit after ``connection.close()`` reconnected)."""
    if connection.in_atomic_block:
        return not connection.commit_on_exit
    if connection.connection is None:
        return not connection.settings_dict.get("AUTOCOMMIT", True)
    return not connection.autocommit


def run_after_commit(connection: BaseDatabaseWrapper) -> None:
    """Take RelayCache's callbacks out of the list and run them, each on its own: one
    that fails is logged and the others still run."""
    entries: list[Any] = connection.run_on_commit
    ours = [entry[1] for entry in entries if isinstance(entry[1], AfterCommit)]
    if not ours:
        return
    connection.run_on_commit = [entry for entry in entries
                                if not isinstance(entry[1], AfterCommit)]
    for callback in ours:
        try:
            callback()
        except Exception:
            logger.exception("relaycache: %r failed after a COMMIT", callback)


def _wrap_commit(commit: Callable[[BaseDatabaseWrapper], None]
                 ) -> Callable[[BaseDatabaseWrapper], None]:
    @functools.wraps(commit)
    def wrapper(self: BaseDatabaseWrapper) -> None:
        commit(self)
        run_after_commit(self)

    return wrapper


def _wrap_set_autocommit(set_autocommit: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(set_autocommit)
    def wrapper(self: BaseDatabaseWrapper, autocommit: bool, *args: Any, **kwargs: Any
                ) -> None:
        set_autocommit(self, autocommit, *args, **kwargs)
        if autocommit:
            run_after_commit(self)

    return wrapper


def _wrap_callproc(callproc: Callable[..., Any],
                   on_callproc: Callable[[BaseDatabaseWrapper], None]) -> Callable[..., Any]:
    @functools.wraps(callproc)
    def wrapper(self: CursorWrapper, *args: Any, **kwargs: Any) -> Any:
        try:
            return callproc(self, *args, **kwargs)
        finally:
            on_callproc(self.db)

    return wrapper


def install(on_callproc: Callable[[BaseDatabaseWrapper], None]) -> None:
    """Wrap Django's methods, once per process; ``on_callproc(connection)`` is told of
    every ``cursor.callproc()`` after it ran (or failed)."""
    wraps: list[tuple[type, str, Callable[[Any], Any]]] = [
        (BaseDatabaseWrapper, "commit", _wrap_commit),
        (BaseDatabaseWrapper, "set_autocommit", _wrap_set_autocommit),
        (CursorWrapper, "callproc", lambda method: _wrap_callproc(method, on_callproc)),
    ]
    for owner, name, wrap in wraps:
        method = getattr(owner, name)
        if getattr(method, _WRAPPED, False):
            continue
        wrapped = wrap(method)
        setattr(wrapped, _WRAPPED, True)
        setattr(owner, name, wrapped)
