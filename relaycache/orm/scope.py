"""What a read's unqualified table names mean on its connection: the session state a
cached read is keyed by.

On PostgreSQL, ``SELECT ... FROM "note"`` reads the first ``note`` on the connection's
``search_path``. With one database alias and ``SET search_path`` per request
(schema-per-tenant, django-tenants), one SQL text reads another table for every
tenant; with row-level security, ``SET ROLE`` or ``SET app.tenant = ...`` decides which
rows it returns. So the key of every cached read includes its connection's session
state, as far as this process knows it without asking the database (a hit runs no
query):

- django-tenants' ``connection.schema_name`` and ``include_public_schema``: its backend
  sets the search_path from them before every query;
- every session setting changed by a statement seen on the connection (the write hook
  sees every one): ``SET [SESSION] name ...`` (``search_path``, ``SCHEMA``, ``ROLE``,
  ``TIME ZONE``, custom ``app.tenant``...), ``set_config(...)``, ``RESET``,
  ``DISCARD ALL``. A new connection starts from its default, which follows from the
  database, user and options of ``DATABASES`` (part of the key too, see
  ``plan.database_identity``).

A change whose outcome cannot be known here makes the state unknown, and the
connection's cached reads bypass the cache until it is known again: a session-level
``SET`` inside a transaction (a rollback undoes it) until the same setting is set
outside one, ``SET LOCAL`` until its transaction ends, a ``SET`` that failed,
``SET SESSION AUTHORIZATION`` and temporary tables (they hide tables of the same name)
until the connection is closed or ``DISCARD ALL`` runs. Tags never depend on this
state (docs/consistency.md, "Schemas, tenants and databases").
"""

from __future__ import annotations

import functools
import re
import sys
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.conf import settings

from ..core.codec import to_json
from ..core.keys import digest

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

DEFAULT = ""
"""The state of a connection on which nothing changed."""

_IDLE = 0  # psycopg 3 TransactionStatus.IDLE, psycopg2 TRANSACTION_STATUS_IDLE

_MENTIONS = re.compile(r"\b(?:SET|RESET|DISCARD|set_config|TEMP|TEMPORARY)\b", re.I)
_NOISE = re.compile(r"^(?:\s+|--[^\n]*\n?|/\*.*?\*/)*", re.S)
_NAME = r'"[^"]+"|[\w.$]+'
_SET = re.compile(
    r"SET\s+(?:(?P<scope>LOCAL|SESSION)\s+(?!AUTHORIZATION\b))?"
    r"(?P<name>TIME\s+ZONE|SESSION\s+AUTHORIZATION|"
    rf"{_NAME})", re.I)
_RESET = re.compile(rf"RESET\s+(?P<name>TIME\s+ZONE|SESSION\s+AUTHORIZATION|{_NAME})", re.I)
_DISCARD_ALL = re.compile(r"DISCARD\s+ALL\b", re.I)
_SET_CONFIG = re.compile(r"\bset_config\s*\(", re.I)
_VALUE = r"'(?:[^']|'')*'|%s|%\(\w+\)s|\$\d+"
_SET_CONFIG_CALL = re.compile(
    rf"\bset_config\s*\(\s*(?P<name>'(?:[^']|'')*')\s*,\s*(?:{_VALUE}|NULL)\s*,\s*"
    rf"(?P<local>true|false|'t'|'f'|'true'|'false'|{_VALUE})\s*\)", re.I)
_TEMPORARY = re.compile(r"\bCREATE\s+(?:(?:GLOBAL|LOCAL)\s+)?TEMP(?:ORARY)?\s|"
                        r"\bINTO\s+TEMP(?:ORARY)?\b", re.I)
# SET forms that change no session setting a read depends on (transaction-level ones:
# isolation is followed by the invalidation module).
_NOT_SETTINGS = frozenset({"transaction", "constraints", "characteristics"})
_ALIASES = {"schema": "search_path", "time zone": "timezone"}
_LOCAL = {"true": True, "'t'": True, "'true'": True, "false": False, "'f'": False,
          "'false'": False}


@dataclass(frozen=True)
class _Change:
    """A statement's effect on the session. ``kind``: ``set`` (``name`` gets a value;
    ``local`` is ``None`` when it cannot be told from the text), ``reset`` (``name``
    back to its default), ``reset_all``, ``discard_all`` or ``opaque`` (what it does
    to the session cannot be followed)."""

    kind: str
    name: str = ""
    local: bool | None = False


_OPAQUE = _Change("opaque")


def _setting_name(text: str) -> str:
    name = " ".join(text.strip('"').lower().split())
    return _ALIASES.get(name, name)


def _classify_one(body: str) -> _Change | None:
    if _TEMPORARY.search(body):
        return _OPAQUE
    found = _SET.match(body)
    if found:
        name = _setting_name(found["name"])
        if name in _NOT_SETTINGS:
            return None
        if name == "session authorization":
            return _OPAQUE
        return _Change("set", name, (found["scope"] or "").upper() == "LOCAL")
    found = _RESET.match(body)
    if found:
        name = _setting_name(found["name"])
        if name == "session authorization":
            return _OPAQUE
        return _Change("reset_all") if name == "all" else _Change("reset", name)
    if _DISCARD_ALL.match(body):
        return _Change("discard_all")
    calls = _SET_CONFIG.findall(body)
    if not calls:
        return None
    found = _SET_CONFIG_CALL.search(body)
    if len(calls) > 1 or found is None:
        return _OPAQUE
    name = found["name"][1:-1].replace("''", "'")
    return _Change("set", _setting_name(name), _LOCAL.get(found["local"].lower()))


@functools.lru_cache(maxsize=4096)
def _classify(sql: str) -> _Change | None:
    """What ``sql`` does to the session, ``None`` for nothing (almost every statement)."""
    if _MENTIONS.search(sql) is None:
        return None
    body = _NOISE.sub("", sql, count=1)
    statements = [part for part in body.split(";") if part.strip()]
    if len(statements) > 1:
        changes = [_classify_one(_NOISE.sub("", part, count=1)) for part in statements]
        return _OPAQUE if any(changes) else None
    return _classify_one(body)


@dataclass
class _Session:
    """What this process saw change on one database connection (a DB-API connection:
    a reconnect starts a new one, a pooled one keeps its own)."""

    settled: dict[str, str] = field(default_factory=dict)
    """Settings set for the session: name -> token of the statement that set them."""
    doubtful: set[str] = field(default_factory=set)
    """Settings set inside a transaction: whether they stay depends on how it ends."""
    local: set[str] = field(default_factory=set)
    """Settings set with ``SET LOCAL`` in the transaction still open."""
    opaque: bool = False
    path_marker: object = None
    """django-tenants' ``search_path_set_schemas`` when this process last changed the
    search_path: while it is still the same object, that change is in force."""
    state: str = DEFAULT

    def apply(self, change: _Change, token: str, in_transaction: bool) -> None:
        kind, name = change.kind, change.name
        if kind == "opaque":
            self.opaque = True
        elif kind == "discard_all":
            self.settled.clear()
            self.doubtful.clear()
            self.local.clear()
            self.opaque = False
        elif in_transaction:
            if kind == "reset_all":
                self.opaque = True  # a rollback restores settings this process never saw
            elif change.local:
                self.local.add(name)
            else:
                self.doubtful.add(name)
        elif kind == "reset_all":
            # Whether RESET ALL also resets the role is not relied on.
            self.opaque = self.opaque or "role" in self.settled or "role" in self.doubtful
            self.settled.clear()
            self.doubtful.clear()
        elif change.local is None:
            self.doubtful.add(name)  # set for the session, or for no longer than itself
        elif not change.local:  # SET LOCAL outside a transaction changes nothing
            if kind == "reset":
                self.settled.pop(name, None)
            else:
                self.settled[name] = token
            self.doubtful.discard(name)
        if not in_transaction:
            self.local.clear()
        self.state = ";".join(f"{key}={value}" for key, value in sorted(self.settled.items()))


_sessions: weakref.WeakKeyDictionary[Any, _Session] = weakref.WeakKeyDictionary()
_changed_aliases: set[str] = set()


def _text(sql: object, connection: BaseDatabaseWrapper) -> str | None:
    """The statement's text: psycopg's ``sql.Composed`` rendered on its connection."""
    if isinstance(sql, str):
        return sql
    if isinstance(sql, bytes):
        return sql.decode(errors="replace")
    as_string = getattr(sql, "as_string", None)
    try:
        return str(as_string(connection.connection)) if as_string is not None else None
    except Exception:  # whatever a composable raises: the statement stays unknown
        return None


def track_statement(connection: BaseDatabaseWrapper, sql: object, params: Any,
                    many: bool) -> None:
    """Record what a statement that just ran (or failed) did to its session's settings.

    Called by the write hook after every statement, with the statement's exception, if
    any, still being handled: a statement that failed, or that ran while another
    exception was being handled (then it cannot be told whether it failed), makes the
    session's state unknown.
    """
    if connection.vendor != "postgresql":
        return
    text = _text(sql, connection)
    change = _OPAQUE if text is None else _classify(text)
    raw = connection.connection
    if change is None or raw is None:
        return
    token = DEFAULT
    if change.kind == "set":
        try:
            token = digest([" ".join(str(text).split()), to_json(params)])
        except TypeError:  # parameters the codec cannot encode: the value is unknown
            change = _Change("set", change.name, None)
    if many or sys.exc_info()[1] is not None:
        # Whether it took effect cannot be told: its setting is in doubt.
        change = _Change(change.kind, change.name, None) if change.name else _OPAQUE
    session = _sessions.get(raw)
    if session is None:
        session = _sessions[raw] = _Session()
    session.apply(change, token, raw.info.transaction_status != _IDLE)
    if change.kind == "opaque" or change.name == "search_path" or change.kind.endswith("_all"):
        session.path_marker = getattr(connection, "search_path_set_schemas", None)
    _changed_aliases.add(connection.alias)


def _tenant_state(connection: BaseDatabaseWrapper, session: _Session | None) -> str | None:
    """The search_path django-tenants sets before the next query, unless a change seen
    here may still be in force (``TENANT_LIMIT_SET_CALLS``: it then sets it only after
    ``set_tenant()``)."""
    # django-tenants' DatabaseWrapper attributes, which django-stubs does not know.
    marker = getattr(connection, "search_path_set_schemas", None)
    if (session is not None and marker is not None and session.path_marker is marker
            and getattr(settings, "TENANT_LIMIT_SET_CALLS", False)):
        return None
    schema = getattr(connection, "schema_name", None)
    public = getattr(connection, "include_public_schema", True)
    return f"tenant={schema},{int(bool(public))}"


def session_state(connection: BaseDatabaseWrapper) -> str | None:
    """The session state a read on ``connection`` runs under, as part of its key;
    ``None`` when it cannot be known (the read must bypass the cache)."""
    if connection.vendor != "postgresql":
        return DEFAULT
    raw = connection.connection
    if raw is None:
        # The next query opens a connection: a new one starts from its default, but a
        # pooled one keeps what earlier users of it set.
        if connection.alias in _changed_aliases and connection.settings_dict.get(
                "OPTIONS", {}).get("pool"):
            return None
        session = None
    else:
        session = _sessions.get(raw) if _sessions else None
    tenants = hasattr(connection, "search_path_set_schemas")
    if session is None:
        return _tenant_state(connection, None) if tenants else DEFAULT
    if session.local and raw.info.transaction_status == _IDLE:
        session.local.clear()  # SET LOCAL ended with its transaction
    unknown = session.doubtful | session.local
    if not tenants:
        return None if session.opaque or unknown else session.state
    path = _tenant_state(connection, session)
    unknown.discard("search_path")  # django-tenants sets its own
    if path is None or session.opaque or unknown:
        return None
    others = ";".join(f"{key}={value}" for key, value in sorted(session.settled.items())
                      if key != "search_path")
    return f"{path};{others}"
