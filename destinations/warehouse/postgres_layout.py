"""What the PostgreSQL SQL loader needs to know of each event: its layout, once per shape.

The SQL loader (:mod:`destinations.warehouse.postgres_sql`) hands PostgreSQL the events' own JSON
and lets it extract every column. Python still decodes each event, but only to take its
**shape**: the keys it has and the kind of each value (string, timestamp, boolean, integer, ...),
as one hashable tuple. Everything else is worked out once per distinct shape and cached: the
shape's :class:`Layout`, which table each row goes to and which JSON path fills each column. The
layout is found by running the Python path's own :func:`~destinations.warehouse.schema.rows_of`
on a skeleton of the event whose leaves are :class:`Leaf` markers, so naming, flattening and the
reserved-column rules cannot drift apart between the two paths.

A shape the SQL loader cannot reproduce exactly carries a ``reason``; :meth:`Share.add` then
sends the whole source's share of the batch through the Python path, whose result is the
reference (see ``docs/warehouse.md`` for the list).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from destinations.warehouse.schema import _MAX_DEPTH, _TOP_LEVEL, ColumnType, rows_of, type_of
from gateway.destination import Event

__all__ = ["KIND_TYPES", "SLUG", "STAGED_STAMPS", "Layout", "Leaf", "Share", "layout_of"]

# Kinds of values, as shapes spell them.
STRING, STAMP, BOOL, INT, BIG_INT, FLOAT, ODD_FLOAT, ARRAY, DEEP, NULL, OTHER = "stbinfgad0?"
SLUG = "#"  # a track's ``event``: its table's name, staged beside the JSON (path ``()``)
KIND_TYPES: Mapping[str, ColumnType] = {
    STRING: ColumnType.TEXT,
    STAMP: ColumnType.TIMESTAMP,
    BOOL: ColumnType.BOOLEAN,
    INT: ColumnType.BIGINT,
    BIG_INT: ColumnType.TEXT,
    FLOAT: ColumnType.DOUBLE,
    ODD_FLOAT: ColumnType.DOUBLE,
    ARRAY: ColumnType.TEXT,
    DEEP: ColumnType.TEXT,
    SLUG: ColumnType.TEXT,
}
"""The column type each kind of value needs (``type_of``'s answer for it)."""

_INT64 = range(-(2**63), 2**63)
STAGED_STAMPS = ("receivedAt", "sentAt", "timestamp", "originalTimestamp")
"""The common timestamps, staged as ``timestamptz`` so PostgreSQL parses each once per event,
not once per row (a track makes two): parsing is a fifth of the server's work per row."""
_TOP_FIELDS = (*(key for key, _ in _TOP_LEVEL), "name", "category", "groupId", "previousId")
_ROOTS = ("context", "properties", "traits")
_MAX_LAYOUTS = 4096  # distinct shapes kept; beyond, the cache starts afresh


@dataclass(frozen=True, slots=True)
class Leaf:
    """A skeleton's stand-in for one value: its JSON path from the message and its kind."""

    path: tuple[str, ...]
    kind: str


@dataclass(frozen=True, slots=True)
class Layout:
    """The rows one shape of event makes: per table, each column's :class:`Leaf`.

    A track's ``event_text`` is the leaf ``event``; its ``event`` (the table's name) is the
    :data:`SLUG` leaf, whose value the loader stages beside the event's JSON.
    """

    tables: Mapping[str, Mapping[str, Leaf]]
    objects: frozenset[tuple[str, ...]]
    """Paths holding an object in this shape: a column read from one of them would get JSON."""
    leaves: frozenset[tuple[str, ...]] = frozenset()
    """Paths holding a value (not null, not an object) in this shape."""
    slug: str | None = None
    """A track's table (``event``)."""
    arrays: tuple[tuple[str, ...], ...] = ()
    """Paths of the arrays (and objects past the depth limit) this shape stores as JSON text:
    the text is orjson's, taken in Python (PostgreSQL writes JSON its own way)."""
    users: bool = False
    """An identify with a ``userId``: it also makes a ``users`` row (upserted in Python)."""
    reason: str | None = None
    """Why the SQL loader cannot reproduce this shape's rows exactly, if it cannot."""


@dataclass(slots=True)
class Share:
    """One source's events of a batch, grouped by layout for the SQL loader; see :meth:`add`."""

    events: list[Event] = field(default_factory=list)
    layouts: list[Layout] = field(default_factory=list)
    """The distinct layouts, in order of first appearance; ``groups[i]`` is ``layouts[i]``'s."""
    groups: list[int] = field(default_factory=list)
    """Per event, the index of its layout."""
    arrays: dict[tuple[str, ...], int] = field(default_factory=dict)
    """Paths of the arrays the share stores, each with its number (its key in ``texts``)."""
    texts: list[bytes | None] = field(default_factory=list)
    """Per event, a JSON object of the JSON text of each of its arrays, by number, or ``None``."""
    stamps: list[bytes] = field(default_factory=list)
    """Per event, its :data:`STAGED_STAMPS` (the timestamps, or empty), separated by \\x1f."""
    reason: str | None = None
    """Why this share goes through the Python path, if it does."""
    _index: dict[int, int] = field(default_factory=dict)  # id(layout) -> its index in layouts
    _ids: set[Any] = field(default_factory=set)

    def add(self, events: Sequence[Event]) -> bool:
        """Add ``events`` (a part of the share, in order); ``False`` once ``reason`` is set.

        Decodes every event but works per event only to take its shape.
        """
        for event in events:
            raw = event.raw
            # PostgreSQL text cannot hold NUL (the Python path keeps such values in _unmapped);
            # the staging COPY (CSV, \x1f between fields, \x1e as quote) needs one line each,
            # and JSON holds neither \x1e nor \x1f unescaped (orjson.loads refuses them).
            # Gated by the backslash: each test scans the event, a few hundred ns apiece.
            if (b"\\" in raw and b"\\u0000" in raw) or b"\n" in raw or b"\r" in raw:
                self.reason = "a string holding NUL, or JSON text with line breaks"
                return False
            # Not event.message: that would keep every decoded event alive (and for the garbage
            # collector to walk) until the batch is done; only its shape is needed.
            message = orjson.loads(raw)
            self._ids.add(message.get("messageId"))
            layout = layout_of(message)
            if layout.reason is not None:
                self.reason = layout.reason
                return False
            at = self._index.get(id(layout))
            if at is None:
                at = self._index[id(layout)] = len(self.layouts)
                self.layouts.append(layout)
            self.events.append(event)
            self.groups.append(at)
            self.texts.append(self._texts(message, layout.arrays) if layout.arrays else None)
            stamps = [message.get(key) for key in STAGED_STAMPS]
            self.stamps.append(
                b"\x1f".join([v.encode() if type(v) is str and _stamp(v) else b"" for v in stamps])
            )
        if len(self._ids) != len(self.events) or None in self._ids:
            self.reason = "a messageId repeated in the batch or missing"
            return False
        return True

    def _texts(self, message: Mapping[str, Any], paths: Sequence[tuple[str, ...]]) -> bytes:
        """orjson's text of each array of ``message`` at ``paths``, as one JSON object."""
        texts: dict[str, str] = {}
        for path in paths:
            value: Any = message
            for key in path:
                value = value[key]
            number = self.arrays.setdefault(path, len(self.arrays))
            texts[str(number)] = orjson.dumps(value).decode()
        return orjson.dumps(texts)


_cache: dict[Any, Layout] = {}


def layout_of(message: Mapping[str, Any]) -> Layout:
    """The layout of ``message``'s shape, from the cache or worked out now."""
    kind = message.get("type")
    # The whole message's shape (keys rows_of ignores too: one walk is cheaper than a filter).
    shape = (kind, message.get("event") if kind == "track" else None, _shape(message))
    layout = _cache.get(shape)
    if layout is None:
        if len(_cache) >= _MAX_LAYOUTS:
            _cache.clear()
        layout = _cache[shape] = _work_out(message)
    return layout


_FIELDS = (*_TOP_FIELDS, *_ROOTS)


def _shape(value: Mapping[str, Any]) -> tuple[Any, ...]:
    """The keys of the object ``value``, each followed by its value's kind or shape."""
    out: list[Any] = []
    append = out.append
    # Leaves inline, the common kinds first: this loop runs for every value of every event.
    for key, item in value.items():
        append(key)
        kind = type(item)
        if kind is str:
            append(STAMP if len(item) >= 16 and item[4] == "-" and _stamp(item) else STRING)
        elif kind is dict:
            append(_shape(item))
        elif kind is bool:
            append(BOOL)
        elif kind is float and 1e-4 <= abs(item) < 1e16:
            append(FLOAT)
        else:
            append(_leaf_kind(item))
    return tuple(out)


def _kind(value: Any) -> str:
    """The kind of ``value``, not an object."""
    if isinstance(value, str):
        return STAMP if len(value) >= 16 and value[4] == "-" and _stamp(value) else STRING
    return _leaf_kind(value)


def _leaf_kind(value: Any) -> str:
    """The kind of ``value``, neither a string nor an object."""
    kind = type(value)
    if kind is bool:
        return BOOL
    if kind is int:
        return INT if value in _INT64 else BIG_INT
    if kind is float:
        # In this range str(), orjson and PostgreSQL's numeric write a float alike; outside it
        # str() uses an exponent (1e+16) that numeric does not.
        if 1e-4 <= abs(value) < 1e16:
            return FLOAT
        # jsonb keeps no sign of zero: -0.0 goes through the Python path.
        return OTHER if value == 0 and str(value)[0] == "-" else ODD_FLOAT
    if value is None:
        return NULL
    if kind is list:
        return ARRAY
    return OTHER


def _stamp(text: str) -> bool:
    # Remembered: the four common timestamps repeat (a request's receivedAt and sentAt, ...),
    # and this check is a third of the time a shape takes.
    known = _stamps.get(text)
    if known is None:
        if len(_stamps) >= _MAX_STAMPS:
            _stamps.clear()
        known = _stamps[text] = type_of(text) is ColumnType.TIMESTAMP
    return known


_stamps: dict[str, bool] = {}
_MAX_STAMPS = 65536


def _work_out(message: Mapping[str, Any]) -> Layout:
    """Run ``rows_of`` on a skeleton of ``message``: which leaf lands in which column."""
    kind = message.get("type")
    skeleton: dict[str, Any] = {"type": kind}
    objects: set[tuple[str, ...]] = set()
    leaves: set[tuple[str, ...]] = set()
    for key in _FIELDS:
        if key in message:
            skeleton[key] = _skeleton(message[key], (key,), objects, leaves)
    name = message.get("event")
    if kind == "track":
        if not isinstance(name, str) or not name:
            return Layout({}, frozenset(), reason="a track without an event name")
        skeleton["event"] = name
    try:
        rows = rows_of(skeleton)
    except TypeError:  # orjson met a Leaf: an object past the depth limit, stored as JSON text
        return Layout({}, frozenset(), reason="an object past the depth limit")
    tables: dict[str, dict[str, Leaf]] = {}
    slug = None
    users = False
    arrays: dict[tuple[str, ...], None] = {}
    for row in rows:
        if row.table == "users":
            users = True
            continue
        columns: dict[str, Leaf] = {}
        for column, value in row.values.items():
            if column == "event" and kind == "track":
                slug = value
                columns[column] = Leaf((), SLUG)
            elif column == "event_text" and kind == "track":
                columns[column] = Leaf(("event",), STRING)
            elif not isinstance(value, Leaf):
                return Layout({}, frozenset(), reason="a value rows_of makes itself")
            elif value.kind == OTHER:
                return Layout({}, frozenset(), reason="-0.0, or a value that is not JSON")
            else:
                columns[column] = value
                if value.kind in (ARRAY, DEEP):
                    arrays[value.path] = None
        tables[row.table] = columns
    return Layout(
        tables,
        frozenset(objects),
        leaves=frozenset(leaves),
        slug=slug,
        users=users,
        arrays=tuple(arrays),
    )


def _skeleton(
    value: Any, path: tuple[str, ...], objects: set[tuple[str, ...]], leaves: set[tuple[str, ...]]
) -> Any:
    if isinstance(value, dict):
        if value and len(path) >= _MAX_DEPTH and path[0] in _ROOTS:
            leaves.add(path)
            return Leaf(path, DEEP)  # rows_of stores it as JSON text
        objects.add(path)
        return {key: _skeleton(item, (*path, key), objects, leaves) for key, item in value.items()}
    if value is None:
        return None
    leaves.add(path)
    if isinstance(value, str):
        return Leaf(
            path, STAMP if len(value) >= 16 and value[4] == "-" and _stamp(value) else STRING
        )
    return Leaf(path, _leaf_kind(value))
