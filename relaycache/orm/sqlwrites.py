"""Which tables an SQL statement writes, from its text alone.

Every statement Django (or user code) sends through a connection passes here, so this
must be cheap and must err on the safe side: a statement that looks like a write but
whose tables cannot be named with certainty is reported as writing everything.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass

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


# -- the rows a statement writes --------------------------------------------------------

_TOKEN = re.compile(r"""
    "(?:[^"]|"")*" | `[^`]*` | '(?:[^']|'')*'     # quoted names, string literals
  | %s | %\( | %%                                  # placeholders
  | [A-Za-z_][\w$]* | \d+(?:\.\d+)? | :: | [<>!=]+ | \S
""", re.X)
_BARE_IDENT = re.compile(r"[A-Za-z_][\w$]*")


def _ident(token: str) -> str | None:
    """The lower-cased name a token spells, if it is a (quoted or bare) identifier."""
    if token[:1] in '"`' and len(token) > 1:
        return token[1:-1].replace('""', '"').lower()
    return token.lower() if _BARE_IDENT.fullmatch(token) else None


def identifiers(sql: str) -> frozenset[str]:
    """Every name ``sql`` spells, quoted or not, lower-cased: a superset of the tables
    and columns it refers to (string literals excluded)."""
    return frozenset(name for token in _TOKEN.findall(sql)
                     if token[:1] != "'" and (name := _ident(token)) is not None)


def identifiers_past_select(sql: str) -> frozenset[str]:
    """:func:`identifiers` of ``sql`` from its top-level FROM to its top-level ORDER BY:
    what a ``SELECT`` whose select list and ordering are replaced (Django's
    ``count()``, ``aggregate()``) still reads."""
    tokens = [t for t in _TOKEN.findall(sql) if t[:1] != "'"]
    depth = 0
    start = end = None
    for index, token in enumerate(tokens):
        depth += (token == "(") - (token == ")")
        if depth == 0 and start is None and token.upper() == "FROM":
            start = index
        elif (depth == 0 and start is not None and token.upper() == "ORDER"
              and index + 1 < len(tokens) and tokens[index + 1].upper() == "BY"):
            end = index
            break
    if start is None:
        return identifiers(sql)
    return frozenset(name for t in tokens[start:end] if (name := _ident(t)) is not None)


Conjunct = tuple[str, tuple[int, ...]]
"""A top-level ``column = %s`` or ``column IN (%s, ...)`` condition: the column and the
positions of its parameters."""


@dataclass(frozen=True)
class RowWrite:
    """What one INSERT, UPDATE or DELETE statement says about the rows it writes, with
    parameters named by their position in the statement's parameter list.

    ``assigned`` (UPDATE) maps each assigned column to the position of its value, or
    ``None`` for an expression; ``where`` holds the top-level conjuncts that fix a column
    to parameters; ``inserted`` (INSERT) maps each listed column to the positions of its
    values (``None``: one is not a plain parameter) and ``arrays`` says each position is
    an array of values (PostgreSQL's ``UNNEST`` form of ``bulk_create``). With
    ``returning``, a driver may count the rows only once they are fetched.
    ``plain_where``: the WHERE clause is nothing but such conjuncts (so a RETURNING
    clause may follow it).
    """

    kind: str
    table: str
    placeholders: int
    assigned: tuple[tuple[str, int | None], ...] = ()
    where: tuple[Conjunct, ...] = ()
    inserted: tuple[tuple[str, tuple[int, ...] | None], ...] = ()
    arrays: bool = False
    returning: bool = False
    plain_where: bool = False


class _Unreadable(Exception):
    pass


class _Tokens:
    """A cursor over a statement's tokens that counts the placeholders it passes."""

    def __init__(self, sql: str) -> None:
        self.tokens = _TOKEN.findall(sql)
        if "%(" in self.tokens or "%%" in self.tokens or ";" in self.tokens:
            raise _Unreadable
        self.i = 0

    def peek(self, offset: int = 0) -> str:
        at = self.i + offset
        return self.tokens[at].upper() if at < len(self.tokens) else ""

    def take(self, *words: str) -> bool:
        if self.peek() in words:
            self.i += 1
            return True
        return False

    def expect(self, *words: str) -> None:
        if not self.take(*words):
            raise _Unreadable

    def name(self) -> str:
        """A possibly qualified name: its last part."""
        last = _ident(self.tokens[self.i]) if self.i < len(self.tokens) else None
        if last is None:
            raise _Unreadable
        self.i += 1
        while self.peek() == ".":
            self.i += 1
            last = _ident(self.tokens[self.i]) if self.i < len(self.tokens) else None
            if last is None:
                raise _Unreadable
            self.i += 1
        return last

    def until(self, stops: frozenset[str]) -> list[str]:
        """The tokens up to a top-level stop word or comma, or the end."""
        depth = 0
        start = self.i
        while self.i < len(self.tokens):
            token = self.tokens[self.i]
            if token == "(":
                depth += 1
            elif token == ")":
                if depth == 0:
                    break
                depth -= 1
            elif depth == 0 and (token == "," or token.upper() in stops):
                break
            self.i += 1
        return self.tokens[start:self.i]


def _strip_parens(tokens: list[str]) -> list[str]:
    while len(tokens) >= 2 and tokens[0] == "(" and tokens[-1] == ")":
        depth = 0
        for index, token in enumerate(tokens):
            depth += token == "("
            depth -= token == ")"
            if depth == 0 and index < len(tokens) - 1:
                return tokens  # "(a) AND (b)": not one parenthesized whole
        tokens = tokens[1:-1]
    return tokens


def _split_top(tokens: list[str], word: str) -> list[list[str]] | None:
    """``tokens`` split at top-level ``word`` (AND); ``None`` if a top-level OR is there."""
    parts: list[list[str]] = [[]]
    depth = 0
    for token in tokens:
        upper = token.upper()
        if token == "(":
            depth += 1
        elif token == ")":
            depth -= 1
        elif depth == 0 and upper == "OR":
            return None
        elif depth == 0 and upper == word:
            parts.append([])
            continue
        parts[-1].append(token)
    return parts


def _conjuncts(tokens: list[str], table: str, before: int) -> tuple[Conjunct, ...]:
    """The conjuncts of a WHERE clause that fix a column of ``table`` to parameters."""
    parts = _split_top(_strip_parens(tokens), "AND")
    if parts is None:
        return ()
    found: list[Conjunct] = []
    offset = before
    for part in parts:
        count = part.count("%s")
        conjunct = _strip_parens(part)
        column = _column_of(conjunct, table)
        if column is not None:
            rest = conjunct[column[1]:]
            if rest == ["=", "%s"]:
                found.append((column[0], (offset,)))
            elif (len(rest) >= 4 and rest[0].upper() == "IN" and rest[1] == "("
                  and rest[-1] == ")" and rest[2:-1:2] == ["%s"] * (len(rest) // 2 - 1)
                  and all(t == "," for t in rest[3:-1:2])):
                found.append((column[0], tuple(range(offset, offset + count))))
        offset += count
    return tuple(found)


def _is_plain(condition: list[str], where: tuple[Conjunct, ...]) -> bool:
    parts = _split_top(_strip_parens(condition), "AND")
    return bool(where) and parts is not None and len(parts) == len(where)


def _column_of(tokens: list[str], table: str) -> tuple[str, int] | None:
    """A leading ``column`` or ``table.column`` reference: the column and its length."""
    if not tokens:
        return None
    first = _ident(tokens[0])
    if first is None:
        return None
    if len(tokens) >= 3 and tokens[1] == ".":
        second = _ident(tokens[2])
        if second is None or first != table:
            return None
        return second, 3
    return first, 1


def _parse_update(cursor: _Tokens, table: str) -> RowWrite:
    cursor.expect("SET")
    assigned: list[tuple[str, int | None]] = []
    count = 0
    while True:
        column = cursor.name()
        cursor.expect("=")
        value = cursor.until(frozenset({"WHERE", "RETURNING"}))
        assigned.append((column, count if value == ["%s"] else None))
        count += value.count("%s")
        if not cursor.take(","):
            break
    where: tuple[Conjunct, ...] = ()
    plain = False
    if cursor.take("WHERE"):
        condition = cursor.until(frozenset({"RETURNING"}))
        if cursor.peek() == ",":
            raise _Unreadable
        where = _conjuncts(condition, table, count)
        plain = _is_plain(condition, where)
        count += condition.count("%s")
    return RowWrite("update", table, count + _rest(cursor), assigned=tuple(assigned),
                    where=where, plain_where=plain)


def _parse_delete(cursor: _Tokens, table: str) -> RowWrite:
    if not cursor.take("WHERE"):
        return RowWrite("delete", table, _rest(cursor))
    condition = cursor.until(frozenset({"RETURNING"}))
    if cursor.peek() == ",":
        raise _Unreadable
    count = condition.count("%s")
    where = _conjuncts(condition, table, 0)
    return RowWrite("delete", table, count + _rest(cursor), where=where,
                    plain_where=_is_plain(condition, where))


def _parse_insert(cursor: _Tokens, table: str) -> RowWrite:
    cursor.expect("(")
    columns = [cursor.name()]
    while cursor.take(","):
        columns.append(cursor.name())
    cursor.expect(")")
    values: list[list[int | None]] = [[] for _ in columns]
    count = 0
    arrays = False
    if cursor.take("VALUES"):
        while True:
            cursor.expect("(")
            for index in range(len(columns)):
                if index:
                    cursor.expect(",")
                item = cursor.until(frozenset())
                values[index].append(count if item == ["%s"] else None)
                count += item.count("%s")
            cursor.expect(")")
            if not cursor.take(","):
                break
    elif cursor.take("SELECT") and cursor.take("*") and cursor.take("FROM"):
        # bulk_create on PostgreSQL: SELECT * FROM UNNEST((%s)::type[], ...)
        cursor.expect("UNNEST")
        cursor.expect("(")
        arrays = True
        for index in range(len(columns)):
            if index:
                cursor.expect(",")
            item = cursor.until(frozenset())
            if item.count("%s") != 1:
                raise _Unreadable
            values[index].append(count)
            count += 1
        cursor.expect(")")
    else:
        raise _Unreadable
    if cursor.take("ON"):
        # ON CONFLICT [(...)] DO NOTHING inserts a subset; DO UPDATE changes other rows.
        cursor.expect("CONFLICT")
        if cursor.peek() == "(":
            cursor.i += 1
            cursor.until(frozenset())
            cursor.expect(")")
        cursor.expect("DO")
        cursor.expect("NOTHING")
    inserted = tuple((column, None if None in positions else tuple(
        p for p in positions if p is not None)) for column, positions in zip(
        columns, values, strict=True))
    return RowWrite("insert", table, count + _rest(cursor), inserted=inserted, arrays=arrays)


def _rest(cursor: _Tokens) -> int:
    """Placeholders after the parsed part, which may only be a RETURNING clause."""
    if cursor.i < len(cursor.tokens):
        cursor.expect("RETURNING")
        return cursor.tokens[cursor.i:].count("%s")
    return 0


@functools.lru_cache(maxsize=4096)
def row_write(sql: str) -> RowWrite | None:
    """The rows ``sql`` writes as Django's compilers spell INSERT, UPDATE and DELETE, or
    ``None`` when it is another form (then only its tables are known)."""
    try:
        cursor = _Tokens(_LEADING_NOISE.sub("", sql, count=1))
        if cursor.take("UPDATE"):
            cursor.take("ONLY")
            write = _parse_update(cursor, cursor.name())
        elif cursor.take("DELETE"):
            cursor.expect("FROM")
            cursor.take("ONLY")
            write = _parse_delete(cursor, cursor.name())
        elif cursor.take("INSERT"):
            if cursor.take("OR"):
                cursor.expect("IGNORE")  # OR REPLACE deletes rows it does not name
            cursor.expect("INTO")
            write = _parse_insert(cursor, cursor.name())
        else:
            return None
    except (_Unreadable, IndexError):
        return None
    return dataclasses.replace(write, returning="RETURNING" in map(str.upper, cursor.tokens))
