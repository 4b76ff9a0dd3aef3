"""From Segment messages to warehouse rows: flattening, column types and how they widen.

A message becomes one row per table it lands in (a track: ``tracks`` and its event's table; an
identify: ``identifies`` and ``users``). Nested objects are flattened with ``_``; arrays are
stored as JSON text; ``null`` is left out. Every value has a :class:`ColumnType`; a column keeps
the first type it got, widened (never narrowed) when a value needs more room:
``boolean -> bigint -> double -> text`` and ``timestamp -> text``.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from destinations.warehouse.naming import (
    MAX_IDENTIFIER_BYTES,
    identifier,
    snake_case,
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
these, ``channel`` or ``context_*`` is stored with a ``_`` prefix instead (``properties.id`` ->
``_id``, ``properties.context_ip`` -> ``_context_ip``)."""

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
    kind = type(value)
    if kind is str:
        # Cheap checks first: most strings are not timestamps.
        if len(value) >= 16 and value[4] == "-" and _TIMESTAMP.fullmatch(value):
            return ColumnType.TIMESTAMP if _parses(value) else ColumnType.TEXT
        return ColumnType.TEXT
    if kind is bool:
        return ColumnType.BOOLEAN
    if kind is float:
        return ColumnType.DOUBLE
    if isinstance(value, int) and not isinstance(value, bool):
        return ColumnType.BIGINT if value in _INT64 else ColumnType.TEXT
    if isinstance(value, float):
        return ColumnType.DOUBLE
    return ColumnType.TEXT


def widen(a: ColumnType, b: ColumnType) -> ColumnType:
    """The narrowest type that holds every value of type ``a`` and of type ``b``."""
    if a is b:
        return a
    if a in _NUMERIC_RANK and b in _NUMERIC_RANK:
        return a if _NUMERIC_RANK[a] > _NUMERIC_RANK[b] else b
    return ColumnType.TEXT


def coerce(value: Any, column: ColumnType) -> Any:
    """``value`` as a Python value of ``column``'s type, which is ``type_of(value)`` or wider.

    Timestamps stay text: DuckDB parses them, the PostgreSQL backend converts them for COPY.
    """
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
    return value  # booleans stay booleans; timestamps stay ISO-8601 text (parsed by the backend)


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
    if isinstance(context, dict):
        _flatten(context, "context", 1, common, max_bytes)
    kind = message.get("type")
    if kind == "track":
        name = str(message.get("event", ""))
        slug = table_name(name, max_bytes)
        common["event"] = slug
        common["event_text"] = name
        tracks = Row("tracks", common, dict(unmapped))
        own = dict(common)
        _flatten_properties(message.get("properties"), own, max_bytes)
        return [tracks, Row(slug, own, unmapped)]
    if kind == "identify":
        row = dict(common)
        _flatten_properties(message.get("traits"), row, max_bytes)
        rows = [Row("identifies", row, unmapped)]
        user_id = message.get("userId")
        if user_id is not None:
            user: dict[str, Any] = {"id": str(user_id), "received_at": common.get("received_at")}
            _flatten_properties(message.get("traits"), user, max_bytes)
            rows.append(Row("users", user, {}))
        return rows
    row = dict(common)
    if kind in ("page", "screen"):
        _flatten_properties(message.get("properties"), row, max_bytes)
        for key in ("name", "category"):
            if message.get(key) is not None:
                row[key] = message[key]
        return [Row("pages" if kind == "page" else "screens", row, unmapped)]
    if kind == "group":
        if message.get("groupId") is not None:
            row["group_id"] = message["groupId"]
        _flatten_properties(message.get("traits"), row, max_bytes)
        return [Row("groups", row, unmapped)]
    if kind == "alias":
        if message.get("previousId") is not None:
            row["previous_id"] = message["previousId"]
        return [Row("aliases", row, unmapped)]
    return []


def _flatten_properties(values: Any, row: dict[str, Any], max_bytes: int) -> None:
    if isinstance(values, dict):
        _flatten(values, "", 1, row, max_bytes, guard_reserved=True)


def _flatten(
    values: dict[str, Any],
    prefix: str,
    depth: int,
    row: dict[str, Any],
    max_bytes: int,
    *,
    guard_reserved: bool = False,
) -> None:
    """Add ``values``'s leaves to ``row``; ``prefix`` is the snake_cased path so far."""
    for key, value in values.items():
        if value is None:
            continue
        leaf = value
        if isinstance(value, dict):
            if not value:
                continue
            if depth + 1 < _MAX_DEPTH:
                _flatten(value, _joined(prefix, key), depth + 1, row, max_bytes,
                         guard_reserved=guard_reserved)  # fmt: skip
                continue
            leaf = orjson.dumps(value).decode()
        # Keys that snake_case alike ("sampleText", "sample_text") share a column; the later wins.
        row[_column(prefix, key, max_bytes, guard_reserved)] = leaf


# Names repeat across events (the same few hundred keys), so each is worked out once: naming
# was most of the warehouse's CPU per event before. Bounded, so odd keys cannot grow memory.
@functools.lru_cache(maxsize=16384)
def _joined(prefix: str, key: str) -> str:
    """The snake_case path of ``key`` under ``prefix`` (before reserved-word prefixing)."""
    part = snake_case(str(key))
    if not part:
        return prefix
    return f"{prefix}_{part}" if prefix else part


@functools.lru_cache(maxsize=16384)
def _column(prefix: str, key: str, max_bytes: int, guard_reserved: bool) -> str:
    column = identifier(_joined(prefix, key), max_bytes)
    if guard_reserved and _taken(column):
        column = identifier("_" + column, max_bytes)
    return column


def _taken(column: str) -> bool:
    """Whether a property or trait named ``column`` would overwrite a column of the message
    itself: the reserved ones, ``channel``, and the flattened ``context_*`` (a fuzzing finding:
    a property ``context_ip`` replaced the event's IP)."""
    return (
        column in RESERVED_COLUMNS
        or column in ("channel", "context")
        or column.startswith("context_")
    )
