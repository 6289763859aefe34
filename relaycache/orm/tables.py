"""The tables a compiled query reads, or why it cannot be cached safely.

The walk runs on the query after compilation, when Django has added every join (for
``select_related``, ordering across relations and inherited parents). It follows the
FROM clause and every expression: filters, annotations, ordering, ``Subquery`` and
``Exists``, ``__in`` querysets and combined queries (``union`` and friends).
"""

from __future__ import annotations

from collections import Counter

from django.db.models import Func
from django.db.models.expressions import RawSQL
from django.db.models.functions import Now, Random
from django.db.models.sql.datastructures import BaseTable, Join
from django.db.models.sql.query import Query
from django.db.models.sql.where import ExtraWhere, WhereNode

from .sqlwrites import table_name

# SQL functions whose value changes between two runs of the same statement.
VOLATILE_FUNCTIONS = frozenset({
    "NOW", "RANDOM", "RAND", "CURRENT_TIMESTAMP", "CURRENT_DATE", "CURRENT_TIME",
    "LOCALTIME", "LOCALTIMESTAMP", "CLOCK_TIMESTAMP", "STATEMENT_TIMESTAMP",
    "TRANSACTION_TIMESTAMP", "TIMEOFDAY", "UUID", "GEN_RANDOM_UUID", "UUID_GENERATE_V4",
    "NEXTVAL", "SYSDATE", "SYSTIMESTAMP", "UTC_TIMESTAMP", "TXID_CURRENT",
})


SELECT_FOR_UPDATE = "select_for_update() locks rows; it must reach the database"


class Uncacheable(Exception):
    """The query must run uncached; the message is the observable reason."""


def query_tables(query: Query, *, allow_raw: bool = False) -> Counter[str]:
    """Every table ``query`` reads, by its :func:`~.sqlwrites.table_name` (the name its
    tag knows, as writes name it too: ``db_table = 'other"."note'`` reads ``note``),
    with the number of times it occurs (aliases, in subqueries too).

    Raises :class:`Uncacheable` for row locks (in subqueries too), random ordering,
    volatile functions and, unless ``allow_raw`` (the caller named its own tags), raw
    SQL fragments.
    """
    tables: Counter[str] = Counter()
    _walk_query(query, tables, allow_raw)
    return tables


def _walk_query(query: Query, tables: Counter[str], allow_raw: bool) -> None:
    if query.select_for_update:
        raise Uncacheable(SELECT_FOR_UPDATE)
    if query.extra or query.extra_tables:
        if not allow_raw:
            raise Uncacheable("extra() adds raw SQL; pass tags= to cache it")
        tables.update(table_name(t) for t in query.extra_tables)
    for entry in query.alias_map.values():
        if isinstance(entry, (BaseTable, Join)):
            tables[table_name(entry.table_name)] += 1
            if isinstance(entry, Join) and entry.filtered_relation is not None:
                _walk(entry.filtered_relation.condition, tables, allow_raw)
        else:
            raise Uncacheable(f"unsupported FROM entry {type(entry).__name__}")
    _walk(query.where, tables, allow_raw)
    for annotation in query.annotations.values():
        _walk(annotation, tables, allow_raw)
    for order in query.order_by:
        if order == "?":
            raise Uncacheable("order_by('?') is random")
        _walk(order, tables, allow_raw)
    for combined in query.combined_queries:
        _walk_query(combined, tables, allow_raw)


def _walk(node: object, tables: Counter[str], allow_raw: bool) -> None:
    if node is None or isinstance(node, (str, int, float, bool)):
        return
    if isinstance(node, Query):
        _walk_query(node, tables, allow_raw)
        return
    if isinstance(node, (RawSQL, ExtraWhere)):
        if not allow_raw:
            raise Uncacheable(f"{type(node).__name__} is raw SQL; pass tags= to cache it")
        return
    if isinstance(node, (Now, Random)):
        raise Uncacheable(f"{type(node).__name__}() changes between runs")
    if isinstance(node, Func) and str(getattr(node, "function", "")).upper() in (
        VOLATILE_FUNCTIONS
    ):
        raise Uncacheable(f"{node.function}() changes between runs")
    if isinstance(node, WhereNode):
        for child in node.children:
            _walk(child, tables, allow_raw)
        return
    inner = getattr(node, "query", None)
    if isinstance(inner, Query):
        _walk_query(inner, tables, allow_raw)
    rhs = getattr(node, "rhs", None)
    if isinstance(rhs, Query) or hasattr(rhs, "resolve_expression"):
        _walk(rhs, tables, allow_raw)
    sources = getattr(node, "get_source_expressions", None)
    if sources is not None:
        for source in sources():
            _walk(source, tables, allow_raw)
