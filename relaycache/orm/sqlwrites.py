"""Which tables an SQL statement writes, from its text alone.

Every statement Django (or user code) sends through a connection passes here, so this
must be cheap and must err on the safe side: a statement that looks like a write but
whose tables cannot be named with certainty is reported as writing everything.
"""

from __future__ import annotations

import re

ALL_TABLES = frozenset({"*"})
"""Returned for a write whose tables cannot be named: invalidate the whole database."""

_IDENT = r'(?:"(?:[^"]|"")+"|`[^`]+`|\[[^\]]+\]|[A-Za-z_][\w$]*)'
_QUALIFIED = rf"{_IDENT}(?:\s*\.\s*{_IDENT})*"
_LEADING_NOISE = re.compile(r"^(?:\s+|--[^\n]*\n?|/\*.*?\*/)*", re.S)
_FIRST_WORD = re.compile(r"[A-Za-z]+")

_TARGET = {
    "INSERT": re.compile(rf"INSERT\s+(?:OR\s+\w+\s+|IGNORE\s+)?INTO\s+({_QUALIFIED})", re.I),
    "REPLACE": re.compile(rf"REPLACE\s+INTO\s+({_QUALIFIED})", re.I),
    "UPDATE": re.compile(rf"UPDATE\s+(?:OR\s+\w+\s+)?(?:ONLY\s+)?({_QUALIFIED})", re.I),
    "DELETE": re.compile(rf"DELETE\s+FROM\s+(?:ONLY\s+)?({_QUALIFIED})", re.I),
    "ALTER": re.compile(rf"ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?({_QUALIFIED})",
                        re.I),
    # A materialized view is a table of its own, rewritten by REFRESH.
    "REFRESH": re.compile(rf"REFRESH\s+MATERIALIZED\s+VIEW\s+(?:CONCURRENTLY\s+)?({_QUALIFIED})",
                          re.I),
}
_LIST_TARGET = {
    "TRUNCATE": re.compile(rf"TRUNCATE\s+(?:TABLE\s+)?(?:ONLY\s+)?((?:{_QUALIFIED}\s*,\s*)*"
                           rf"{_QUALIFIED})", re.I),
    "DROP": re.compile(rf"DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?((?:{_QUALIFIED}\s*,\s*)*"
                       rf"{_QUALIFIED})", re.I),
}
# Statements that never change the contents of an existing table.
_READS = frozenset({
    "SELECT", "VALUES", "SHOW", "PRAGMA", "SAVEPOINT", "RELEASE", "ROLLBACK",
    "COMMIT", "BEGIN", "START", "END", "SET", "RESET", "DECLARE", "FETCH", "CLOSE",
    "LISTEN", "NOTIFY", "UNLISTEN", "ANALYZE", "DESCRIBE", "DESC", "USE", "LOCK",
    "DEALLOCATE", "PREPARE", "CHECKPOINT", "DISCARD", "VACUUM", "CREATE", "GRANT",
    "REVOKE", "COMMENT",
})
# Statements that may write anything without saying what.
_OPAQUE = frozenset({"CALL", "DO", "EXEC", "EXECUTE"})
_WRITE_WORDS = re.compile(r"\b(?:INSERT|UPDATE|DELETE|MERGE|TRUNCATE|DROP|ALTER|REPLACE|COPY)\b",
                          re.I)
_CASCADE = re.compile(r"\bCASCADE\b", re.I)
_EXPLAIN = re.compile(r"EXPLAIN\s*(?:\((?P<options>[^)]*)\)|(?P<words>(?:\s*\b(?:ANALY[SZ]E|"
                      r"VERBOSE|QUERY\s+PLAN|FORMAT\s+\w+)\b)*))", re.I)
_SNAPSHOT_LEVEL = re.compile(r"ISOLATION\s+LEVEL\s+(?:REPEATABLE\s+READ|SERIALIZABLE)", re.I)
_SESSION_LEVEL = re.compile(r"SESSION\s+CHARACTERISTICS|SET\s+SESSION\s+TRANSACTION", re.I)
_VIEW_DDL = re.compile(r"(?:CREATE|ALTER|DROP)\b[^;]*?\b(?:VIEW|RULE|RENAME)\b", re.I)


_QUOTES = str.maketrans("", "", '"`[]')


def table_name(name: str) -> str:
    """The name a table's invalidation tag knows it by: its last dot-separated part,
    without quotes, lower-cased. ``'other"."note'`` (Django's ``db_table`` trick for
    another schema), ``"other"."note"`` (the SQL Django writes for it), ``other.note``
    and ``note`` are all ``note``.

    Reads and writes both name their tables through this function, so they always meet.
    Tables that differ only in schema, case or quoting share a tag, which can only merge
    their invalidations, never lose one (docs/consistency.md, "Schemas, tenants and
    databases").
    """
    return name.translate(_QUOTES).rpartition(".")[2].lower()


def _unquote(qualified: str) -> str:
    """The written table's :func:`table_name`, from its (quoted, qualified) SQL name."""
    last: str = re.findall(_IDENT, qualified)[-1]  # _IDENT has no groups: whole matches
    return table_name(last)


def _has_second_statement(sql: str) -> bool:
    _, sep, tail = sql.partition(";")
    return bool(sep) and bool(tail.strip())


def written_tables(sql: str) -> frozenset[str]:
    """Tables ``sql`` may write: empty for reads, :data:`ALL_TABLES` when unsure.

    Names are returned unquoted, lower-cased and without schema.
    """
    body = _LEADING_NOISE.sub("", sql, count=1)
    match = _FIRST_WORD.match(body)
    if match is None:
        return frozenset()
    word = match.group().upper()
    if _has_second_statement(body):
        return ALL_TABLES if word in _OPAQUE or _WRITE_WORDS.search(body) else frozenset()
    if word == "EXPLAIN":
        # EXPLAIN ANALYZE runs the statement it explains.
        found = _EXPLAIN.match(body)
        options = found.group("options") or found.group("words") or "" if found else ""
        if found and re.search(r"ANALY[SZ]E", options, re.I):
            return written_tables(body[found.end():])
        return frozenset()
    if word in _READS:
        return frozenset()
    if word in _OPAQUE:
        return ALL_TABLES
    pattern = _TARGET.get(word)
    if pattern is not None:
        found = pattern.match(body)
        return frozenset({_unquote(found.group(1))}) if found else ALL_TABLES
    pattern = _LIST_TARGET.get(word)
    if pattern is not None:
        found = pattern.match(body)
        if found is None or _CASCADE.search(body):
            return ALL_TABLES
        return frozenset(_unquote(part) for part in found.group(1).split(","))
    # WITH ... (a data-modifying CTE), MERGE, COPY and anything unknown.
    return ALL_TABLES if _WRITE_WORDS.search(body) else frozenset()


def snapshot_isolation(sql: str) -> str | None:
    """``"transaction"`` or ``"session"`` if ``sql`` asks for REPEATABLE READ or
    SERIALIZABLE (reads that are snapshots), else ``None``."""
    if _SNAPSHOT_LEVEL.search(sql) is None:
        return None
    return "session" if _SESSION_LEVEL.search(sql) else "transaction"


def changes_views(sql: str) -> bool:
    """Whether ``sql`` may change which tables a view reads: it creates, alters or drops
    a view or a rule, or renames something."""
    return _VIEW_DDL.match(_LEADING_NOISE.sub("", sql, count=1)) is not None
