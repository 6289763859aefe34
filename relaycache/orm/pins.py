"""Tags finer than a table: rows pinned by key values, and columns.

A cached read depends on the stamps of its tables' *pins* when its query fixes a key
column to constants, else on its tables' rows and the columns it names; a write replaces
the stamps of the key values and columns its own statement names. Both sides compute
their tags from their statement alone, never from data they read, which is what keeps
the stamp protocol sound (docs/consistency.md, "Granular invalidation").
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.core.exceptions import EmptyResultSet, FullResultSet
from django.db.models import Field, ForeignKey
from django.db.models.expressions import Col
from django.db.models.lookups import Exact, In
from django.db.models.sql.query import Query
from django.db.models.sql.where import AND, WhereNode

from .sqlwrites import RowWrite, table_name

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

MAX_PINNED_VALUES = 20
"""A read fixing a key to more values than this depends on the whole table instead."""

MAX_WRITTEN_VALUES = 1000
"""A write naming more values of one key column replaces that column's stamp instead."""

_INTEGER_TYPES = frozenset({
    "AutoField", "BigAutoField", "SmallAutoField", "IntegerField", "BigIntegerField",
    "SmallIntegerField", "PositiveIntegerField", "PositiveBigIntegerField",
    "PositiveSmallIntegerField",
})


@dataclass(frozen=True)
class TableShape:
    """What the models say of one table: its key columns (primary key and foreign
    keys, of integer or UUID type) with their kind, all its columns, and its generated
    ones (an UPDATE changes them without naming them)."""

    keys: Mapping[str, str]
    columns: frozenset[str]
    generated: frozenset[str]
    primary_key: str | None = None
    managed: bool = False


_shapes: dict[str, TableShape] | None = None


def forget() -> None:
    """Forget the models' tables (a new model class, migrations, new settings)."""
    global _shapes
    _shapes = None


def _key_kind(field: Field[Any, Any]) -> str | None:
    while isinstance(field, ForeignKey):
        field = field.target_field
    kind = field.get_internal_type()
    if kind in _INTEGER_TYPES:
        return "int"
    return "uuid" if kind == "UUIDField" else None


def shapes() -> dict[str, TableShape]:
    """Every model table's shape; models sharing a table keep the key columns they
    agree on."""
    global _shapes
    if _shapes is None:
        keys: dict[str, dict[str, str | None]] = {}
        columns: dict[str, set[str]] = {}
        generated: dict[str, set[str]] = {}
        primary: dict[str, str] = {}
        managed: set[str] = set()
        for model in apps.get_models(include_auto_created=True):
            if model._meta.proxy:
                continue
            table = table_name(model._meta.db_table)
            if model._meta.managed:
                managed.add(table)
            table_keys = keys.setdefault(table, {})
            for field in model._meta.local_concrete_fields:
                column = str(field.column).lower()
                columns.setdefault(table, set()).add(column)
                if getattr(field, "generated", False):
                    generated.setdefault(table, set()).add(column)
                if field.primary_key:
                    primary.setdefault(table, column)
                if field.primary_key or isinstance(field, ForeignKey):
                    kind = _key_kind(field)
                    if table_keys.get(column, kind) != kind:
                        kind = None
                    table_keys[column] = kind
                elif column in table_keys:
                    table_keys[column] = None
        _shapes = {table: TableShape(
            keys={c: k for c, k in keys[table].items() if k is not None},
            columns=frozenset(columns.get(table, ())),
            generated=frozenset(generated.get(table, ())),
            primary_key=primary.get(table),
            managed=table in managed,
        ) for table in keys}
    return _shapes


class _Unknown(Exception):
    pass


def pin_value(kind: str, value: object) -> str | None:
    """A key value as its tag spells it (``None`` for SQL NULL, which no pin matches).
    Raises :class:`_Unknown` for a value of another type: the database may compare it
    in ways a string cannot follow."""
    if value is None:
        return None
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if kind == "uuid":
        if isinstance(value, uuid.UUID):
            return value.hex
        if isinstance(value, str):
            try:
                return uuid.UUID(value).hex
            except ValueError:
                pass
    raise _Unknown


# -- tag names -------------------------------------------------------------------------

def table_tag(ns: str, table: str) -> str:
    """Replaced by every write to ``table``: what a tag you give names the table by."""
    return f"table:{ns}:{table}"


def all_tag(ns: str, table: str) -> str:
    """Replaced by a write whose rows are not known, and by ``invalidate_tables()``:
    what every cached read of ``table`` depends on."""
    return f"all:{ns}:{table}"


def rows_tag(ns: str, table: str) -> str:
    return f"rows:{ns}:{table}"


def updates_tag(ns: str, table: str) -> str:
    return f"upd:{ns}:{table}"


def column_tag(ns: str, table: str, column: str) -> str:
    return f"col:{ns}:{table}:{column}"


def pinned_tag(ns: str, table: str, column: str) -> str:
    return f"pinned:{ns}:{table}:{column}"


def pin_tag(ns: str, table: str, column: str, value: str) -> str:
    return f"pin:{ns}:{table}:{column}:{value}"


def unpinned_tags(ns: str, table: str, names: frozenset[str] | None) -> list[str]:
    """A read of every row of ``table``; ``names``: the names its SQL spells (``None``
    when raw SQL may name any column)."""
    tags = [all_tag(ns, table), rows_tag(ns, table)]
    shape = shapes().get(table)
    if shape is None or names is None or shape.columns <= names:
        tags.append(updates_tag(ns, table))  # any UPDATE: one stamp, not one per column
    else:
        tags.extend(column_tag(ns, table, c) for c in sorted(shape.columns & names))
    return tags


# -- reads -----------------------------------------------------------------------------

Pin = tuple[str, tuple[str, ...]]


def _conjuncts(node: WhereNode) -> Iterable[Any]:
    if node.negated or node.connector != AND:
        return
    for child in node.children:
        if isinstance(child, WhereNode):
            yield from _conjuncts(child)
        else:
            yield child


def _flat(params: Sequence[object]) -> list[object]:
    values: list[object] = []
    for param in params:
        values.extend(param if isinstance(param, (list, tuple)) else [param])
    return values


def top_level_pins(query: Query, connection: BaseDatabaseWrapper) -> dict[str, Pin]:
    """Alias -> (key column, values) for the aliases of the outermost query that a
    top-level conjunct ``column = constant`` or ``column IN (constants)`` pins."""
    if query.combinator:
        return {}
    compiler = query.get_compiler(connection=connection)
    found: dict[str, Pin] = {}
    for lookup in _conjuncts(query.where):
        if not isinstance(lookup, (Exact, In)) or type(lookup.lhs) is not Col:
            continue
        alias = lookup.lhs.alias
        entry = query.alias_map.get(alias)
        if entry is None or not lookup.rhs_is_direct_value():
            continue
        table = table_name(entry.table_name)
        column = str(lookup.lhs.target.column).lower()
        shape = shapes().get(table)
        kind = shape.keys.get(column) if shape else None
        if shape is None or kind is None or (alias in found and column != shape.primary_key):
            continue
        try:
            _, params = lookup.process_rhs(compiler, connection)
            values = [pin_value(kind, v) for v in _flat(params)]
        except (EmptyResultSet, FullResultSet, _Unknown):
            continue
        if 0 < len(values) <= MAX_PINNED_VALUES:
            found[alias] = (column, tuple(sorted({v for v in values if v is not None})))
    return found


def read_tags(query: Query, connection: BaseDatabaseWrapper, occurrences: Mapping[str, int],
              names: frozenset[str], ns: str, raw: bool) -> list[str]:
    """The tags of a read of the tables ``occurrences`` counts (every alias, in
    subqueries too), whose SQL spells ``names``; ``raw``: raw SQL fragments may read
    any row and name any column, so nothing is pinned."""
    pins = {} if raw else top_level_pins(query, connection)
    by_table: dict[str, list[Pin]] = {}
    for alias, pin in pins.items():
        by_table.setdefault(table_name(query.alias_map[alias].table_name), []).append(pin)
    tags: list[str] = []
    for table in sorted(occurrences):
        pinned = by_table.get(table, [])
        if pinned and len(pinned) == occurrences[table]:
            tags.append(all_tag(ns, table))
            for column, values in sorted(set(pinned)):
                tags.append(pinned_tag(ns, table, column))
                tags.extend(pin_tag(ns, table, column, v) for v in values)
        else:
            tags.extend(unpinned_tags(ns, table, None if raw else names))
    return tags


# -- writes ----------------------------------------------------------------------------

def _where(write: RowWrite, column: str, params: Sequence[object]) -> list[object] | None:
    for name, positions in write.where:
        if name == column:
            return [params[p] for p in positions]
    return None


def _written_values(write: RowWrite, column: str, params: Sequence[object]
                    ) -> list[object] | None:
    """The values ``column`` had or has in every row ``write`` touches, if its own
    statement says them."""
    if write.kind == "insert":
        positions = dict(write.inserted).get(column)
        if positions is None:
            return None  # not listed (a default, an automatic key) or an expression
        values = [params[p] for p in positions]
        if write.arrays:
            if not all(isinstance(v, (list, tuple)) for v in values):
                return None
            return _flat(values)
        return values
    before = _where(write, column, params)
    if write.kind == "delete" or before is None:
        return before
    assigned = dict(write.assigned)
    if column not in assigned:
        return before
    position = assigned[column]
    return None if position is None else [*before, params[position]]


def unstated_keys(write: RowWrite) -> list[str]:
    """The key columns of an UPDATE or DELETE whose values in the rows it touches its
    statement does not say, and that a ``RETURNING`` clause would tell exactly: for an
    UPDATE, only those it does not assign (their new value is the old one). Empty when
    the statement is not of the plain shape a ``RETURNING`` clause can be added to, or
    does not name its rows by primary key (it could return any number of them)."""
    shape = shapes().get(write.table)
    if (shape is None or not shape.managed or write.kind == "insert" or write.returning
            or not write.plain_where):
        return []  # (an unmanaged model may be a view, whose rules may refuse RETURNING)
    stated = {c for c, _ in write.where} | {c for c, _ in write.assigned}
    if shape.primary_key not in {c for c, _ in write.where}:
        return []  # its rows are not named: returning them could be returning millions
    return [c for c in sorted(shape.keys) if c not in stated]


def write_tags(write: RowWrite, params: object, rowcount: int, ns: str,
               returned: Mapping[str, Sequence[object]] | None = None) -> list[str] | None:
    """The tags ``write`` (run with ``params``, changing ``rowcount`` rows, -1 when
    unknown) replaces; ``None`` when its parameters cannot be matched to it.
    ``returned``: the values of key columns in the rows it touched, as its
    ``RETURNING`` clause gave them (:func:`unstated_keys`)."""
    if params is None:
        params = ()
    if not isinstance(params, (list, tuple)) or len(params) != write.placeholders:
        return None
    if write.kind != "insert" and rowcount == 0 and not write.returning:
        return []
    table = write.table
    shape = shapes().get(table)
    tags = [table_tag(ns, table)]
    if write.kind == "update":
        changed = {c for c, _ in write.assigned} | (shape.generated if shape else set())
        tags += [updates_tag(ns, table), *(column_tag(ns, table, c) for c in sorted(changed))]
    else:
        tags.append(rows_tag(ns, table))
    for column, kind in sorted(shape.keys.items()) if shape else ():
        values = (list(returned[column]) if returned and column in returned
                  else _written_values(write, column, params))
        try:
            if values is None or len(values) > MAX_WRITTEN_VALUES:
                raise _Unknown
            pinned = {pin for v in values if (pin := pin_value(kind, v)) is not None}
        except _Unknown:
            tags.append(pinned_tag(ns, table, column))
            continue
        tags.extend(pin_tag(ns, table, column, v) for v in sorted(pinned))
    return tags


_WHY = {
    "db": "any write whose tables are unknown (raw SQL, procedures) in database {0}",
    "table": "any write to table {1}",
    "all": "a write to rows of {1} that cannot be named (arbitrary filters, raw SQL, "
           "TRUNCATE), invalidate_tables()",
    "rows": "a row of {1} inserted or deleted (the read is not pinned to key values)",
    "upd": "any UPDATE of {1} (the read may name any of its columns)",
    "col": "an UPDATE of {1} assigning column {2}",
    "pinned": "a write to {1} whose values of {2} are not known",
    "pin": "a write to a row of {1} whose {2} is {3} (before or after)",
}


def explain(tag: str) -> str:
    """Which writes replace ``tag``, in words (``cache_info()``, ``relaycache inspect``);
    a tag RelayCache did not make is "your own tag"."""
    kind, _, rest = tag.partition(":")
    parts = rest.split(":", 3) if rest else []
    template = _WHY.get(kind)
    try:
        return template.format(*parts) if template else _OWN
    except IndexError:
        return _OWN


_OWN = "your own tag: replaced by invalidate(tags=[...])"
