"""From Segment messages to warehouse rows: flattening, column types and how they widen.

A message becomes one row per table it lands in (a track: ``tracks`` and its event's table; an
identify: ``identifies`` and ``users``). Nested objects are flattened with ``_``; arrays are
stored as JSON text; ``null`` is left out. Every value has a :class:`ColumnType`; a column keeps
the first type it got, widened (never narrowed) when a value needs more room:
``boolean -> bigint -> double -> text`` and ``timestamp -> text``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from destinations.warehouse.naming import (
    MAX_IDENTIFIER_BYTES,
    column_name,
    identifier,
    table_name,
)

__all__ = [
    "RESERVED_COLUMNS",
    "UNMAPPED_COLUMN",
    "ColumnType",
    "Row",
    "coerce",
    "rows_of",
    "type_of",
    "widen",
]


class ColumnType(enum.StrEnum):
    """A warehouse column type; each backend maps it to its SQL type."""

    BOOLEAN = "boolean"
    BIGINT = "bigint"
    DOUBLE = "double"
    TIMESTAMP = "timestamp"
    TEXT = "text"


_NUMERIC_RANK = {ColumnType.BOOLEAN: 0, ColumnType.BIGINT: 1, ColumnType.DOUBLE: 2}
_INT64 = range(-(2**63), 2**63)
_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}(:?\d{2})?)?", re.ASCII
)

UNMAPPED_COLUMN = "_unmapped"
"""JSON text of the values a row could not store in their own column (see :func:`rows_of`)."""

RESERVED_COLUMNS: Mapping[str, ColumnType] = {
    "id": ColumnType.TEXT,
    "received_at": ColumnType.TIMESTAMP,
    "sent_at": ColumnType.TIMESTAMP,
    "timestamp": ColumnType.TIMESTAMP,
    "original_timestamp": ColumnType.TIMESTAMP,
    "uuid_ts": ColumnType.TIMESTAMP,
    "anonymous_id": ColumnType.TEXT,
    "user_id": ColumnType.TEXT,
    "event": ColumnType.TEXT,
    "event_text": ColumnType.TEXT,
    "group_id": ColumnType.TEXT,
    UNMAPPED_COLUMN: ColumnType.TEXT,
}
"""Columns eventgate fills itself, with fixed types. A property or trait whose name is one of
these is stored with a ``_`` prefix instead (``properties.id`` -> ``_id``)."""

_TOP_LEVEL = (
    ("messageId", "id"),
    ("receivedAt", "received_at"),
    ("sentAt", "sent_at"),
    ("timestamp", "timestamp"),
    ("originalTimestamp", "original_timestamp"),
    ("anonymousId", "anonymous_id"),
    ("userId", "user_id"),
    ("channel", "channel"),
)
_MAX_DEPTH = 8  # deeper objects are stored as JSON text in the column of their parent


def type_of(value: Any) -> ColumnType:
    """The narrowest column type that holds ``value`` (a JSON scalar or an array)."""
    if isinstance(value, bool):
        return ColumnType.BOOLEAN
    if isinstance(value, int):
        return ColumnType.BIGINT if value in _INT64 else ColumnType.TEXT
    if isinstance(value, float):
        return ColumnType.DOUBLE
    if isinstance(value, str) and _TIMESTAMP.fullmatch(value) and _parses(value):
        return ColumnType.TIMESTAMP
    return ColumnType.TEXT


def widen(a: ColumnType, b: ColumnType) -> ColumnType:
    """The narrowest type that holds every value of type ``a`` and of type ``b``."""
    if a is b:
        return a
    if a in _NUMERIC_RANK and b in _NUMERIC_RANK:
        return a if _NUMERIC_RANK[a] > _NUMERIC_RANK[b] else b
    return ColumnType.TEXT


def coerce(value: Any, column: ColumnType) -> Any:
    """``value`` as a Python value of ``column``'s type, which is ``type_of(value)`` or wider."""
    if column is ColumnType.TEXT:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return str(value)
        return orjson.dumps(value).decode()
    if column is ColumnType.DOUBLE:
        return float(value)
    if column is ColumnType.BIGINT:
        return int(value)
    if column is ColumnType.TIMESTAMP:
        return datetime.fromisoformat(value)
    return value


def _parses(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


@dataclass(slots=True)
class Row:
    """One row for one table: its values by column name, ``id`` included."""

    table: str
    values: dict[str, Any]
    unmapped: dict[str, Any] = field(default_factory=dict)


def rows_of(message: Mapping[str, Any], max_bytes: int = MAX_IDENTIFIER_BYTES) -> list[Row]:
    """The rows one normalized Segment message adds, Segment's warehouse layout.

    ``users`` rows (from identify) carry ``id`` = the user id and only traits; callers upsert
    them.
    """
    common: dict[str, Any] = {}
    unmapped: dict[str, Any] = {}
    for key, column in _TOP_LEVEL:
        value = message.get(key)
        if value is not None:
            common[column] = value
    context = message.get("context")
    if isinstance(context, Mapping):
        _flatten(context, ("context",), common, unmapped, max_bytes)
    kind = message.get("type")
    if kind == "track":
        name = str(message.get("event", ""))
        slug = table_name(name, max_bytes)
        common["event"] = slug
        common["event_text"] = name
        tracks = Row("tracks", common, dict(unmapped))
        own = dict(common)
        _flatten_properties(message.get("properties"), own, unmapped, max_bytes)
        return [tracks, Row(slug, own, unmapped)]
    if kind == "identify":
        row = dict(common)
        _flatten_properties(message.get("traits"), row, unmapped, max_bytes)
        rows = [Row("identifies", row, unmapped)]
        user_id = message.get("userId")
        if user_id is not None:
            user: dict[str, Any] = {"id": str(user_id), "received_at": common.get("received_at")}
            user_unmapped: dict[str, Any] = {}
            _flatten_properties(message.get("traits"), user, user_unmapped, max_bytes)
            rows.append(Row("users", user, user_unmapped))
        return rows
    row = dict(common)
    if kind in ("page", "screen"):
        _flatten_properties(message.get("properties"), row, unmapped, max_bytes)
        for key in ("name", "category"):
            if message.get(key) is not None:
                row[key] = message[key]
        return [Row("pages" if kind == "page" else "screens", row, unmapped)]
    if kind == "group":
        if message.get("groupId") is not None:
            row["group_id"] = message["groupId"]
        _flatten_properties(message.get("traits"), row, unmapped, max_bytes)
        return [Row("groups", row, unmapped)]
    if kind == "alias":
        if message.get("previousId") is not None:
            row["previous_id"] = message["previousId"]
        return [Row("aliases", row, unmapped)]
    return []


def _flatten_properties(
    values: Any, row: dict[str, Any], unmapped: dict[str, Any], max_bytes: int
) -> None:
    if isinstance(values, Mapping):
        _flatten(values, (), row, unmapped, max_bytes, guard_reserved=True)


def _flatten(
    values: Mapping[str, Any],
    prefix: tuple[str, ...],
    row: dict[str, Any],
    unmapped: dict[str, Any],
    max_bytes: int,
    *,
    guard_reserved: bool = False,
) -> None:
    for value, path in _leaves(values, prefix):
        if value is None:
            continue
        column = column_name(path, max_bytes)
        if guard_reserved and column in RESERVED_COLUMNS:
            column = identifier("_" + column, max_bytes)
        # Keys that snake_case alike ("sampleText", "sample_text") share a column; the later wins.
        row[column] = value


def _leaves(
    values: Mapping[str, Any], prefix: tuple[str, ...]
) -> Iterator[tuple[Any, tuple[str, ...]]]:
    for key, value in values.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping) and value and len(path) < _MAX_DEPTH:
            yield from _leaves(value, path)
        elif isinstance(value, Mapping):
            yield (orjson.dumps(value).decode() if value else None), path
        else:
            yield value, path
