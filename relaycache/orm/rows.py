"""Database rows in a column-typed form, so a hit decodes them without a full walk.

Rows are mostly scalars of one type per column. Each column gets a code from its
values; cells are written in plain JSON form (a date as its ISO text), and on a hit
only the columns that need it are converted back, one list comprehension per column.
A column whose values mix types, or hold anything else, falls back to the generic
codec cell by cell. The result is exact either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..core.codec import SCALAR_TYPES, JSONData, from_json, to_json

ROWS_FORMAT = 2
"""Part of every ORM entry's key: a new format never reads entries of an old one."""

_PLAIN = (str, int, bool)
_CODE_OF = {typ: tag for tag, (typ, _, _) in SCALAR_TYPES.items() if typ not in (int, float)}
_ENCODE: dict[str, Callable[[Any], Any]] = {tag: enc for tag, (_, enc, _) in SCALAR_TYPES.items()}
_DECODE: dict[str, Callable[[Any], Any]] = {tag: dec for tag, (_, _, dec) in SCALAR_TYPES.items()}
_ENCODE["j"], _DECODE["j"] = to_json, from_json


def _column_code(values: list[Any]) -> str | None:
    """``None``: cells are stored as they are (plain JSON scalars or ``None``)."""
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return None
    if len(kinds) == 1:
        (kind,) = kinds
        if kind in _PLAIN and (kind is not int or all(
                v is None or -(2**63) <= v < 2**63 for v in values)):
            return None
        if kind is float and all(v is None or v - v == 0 for v in values):
            return None
        code = _CODE_OF.get(kind)
        if code is not None:
            return code
    return "j"


def pack_rows(rows: list[list[Any]]) -> JSONData:
    """``[codes, rows]``, JSON data with exactly one code (or ``None``) per column, as
    :class:`~relaycache.core.codec.JSONData`: stored without another walk.

    Raises ``TypeError`` for a cell the codec cannot encode.
    """
    if not rows:
        return JSONData([[], []])
    codes = [_column_code([row[i] for row in rows]) for i in range(len(rows[0]))]
    for i, code in enumerate(codes):
        if code is None:
            continue
        encode = _ENCODE[code]
        for row in rows:
            if row[i] is not None:
                row[i] = encode(row[i])
    return JSONData([codes, rows])


def unpack_rows(packed: JSONData | list[Any]) -> list[tuple[Any, ...]]:
    """Rows as the database cursor gave them, from what :func:`pack_rows` returned
    (a miss) or its data as stored (a hit). ``codes`` may be ``None``: rows that were
    never packed (and so never stored)."""
    codes, rows = packed.data if isinstance(packed, JSONData) else packed
    for i, code in enumerate(codes or ()):
        if code is None:
            continue
        decode = _DECODE[code]
        for row in rows:
            if row[i] is not None:
                row[i] = decode(row[i])
    return [tuple(row) for row in rows]
