"""What one load does to one table: the DDL it needs and the records it inserts.

:func:`plan_table` is pure: given the rows bound for a table and the table's columns as they are
(``None`` if it does not exist yet), it returns the columns to add, the columns to widen and the
records, every value coerced to its column's final type. Backends run the plan inside their load
transaction, after taking their DDL lock and reading the current columns, so two loads never race
on a schema change.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from destinations.warehouse.schema import (
    RESERVED_COLUMNS,
    UNMAPPED_COLUMN,
    ColumnType,
    Row,
    coerce,
    type_of,
    widen,
)
from gateway.events import format_timestamp

__all__ = ["Conflict", "TablePlan", "merge_users", "plan_table"]


class Conflict(enum.Enum):
    """What a load does with a row whose ``id`` the table already has."""

    KEEP = "keep"
    """Keep the stored row: event tables, where ``id`` is the messageId (idempotent replays)."""
    NEWER_WINS = "newer_wins"
    """Replace the stored values if the new row's ``received_at`` is not older: ``users``."""


@dataclass(frozen=True, slots=True)
class TablePlan:
    """The DDL and the records of one table's share of a load."""

    table: str
    create: bool
    add: Mapping[str, ColumnType]
    widen: Mapping[str, ColumnType]
    columns: Sequence[str]
    types: Mapping[str, ColumnType]
    rows: Sequence[Mapping[str, Any]]
    """Each row's values by column, in its column's type; timestamps as ISO-8601 text."""
    conflict: Conflict
    unmapped_values: int

    @property
    def records(self) -> list[tuple[Any, ...]]:
        """The rows as tuples in :attr:`columns` order, timestamps as ``datetime`` (for COPY)."""
        stamps = {c for c in self.columns if self.types[c] is ColumnType.TIMESTAMP}
        return [
            tuple(_datetime(row.get(c)) if c in stamps else row.get(c) for c in self.columns)
            for row in self.rows
        ]

    @property
    def changes_schema(self) -> bool:
        """Whether the plan creates the table or alters it."""
        return self.create or bool(self.add) or bool(self.widen)


def plan_table(
    table: str,
    rows: Iterable[Row],
    existing: Mapping[str, ColumnType] | None,
    *,
    loaded_at: datetime,
    max_columns: int,
) -> TablePlan:
    """Plan loading ``rows`` into ``table``, whose columns are ``existing`` (``None``: no table).

    A value whose column cannot be added (the table has ``max_columns``), that does not fit a
    reserved column's fixed type, or a string holding NUL goes to the row's ``_unmapped`` JSON
    instead; nothing is dropped. The rows' value dicts are reused (and edited) for the plan.
    """
    rows = list(rows)
    have = dict(existing or {})
    needed, mixed = _column_types(rows)
    add: dict[str, ColumnType] = {}
    widened: dict[str, ColumnType] = {}
    overflow: set[str] = set()
    for column, kind in needed.items():
        current = have.get(column)
        if current is None:
            # Two columns stay free for uuid_ts and _unmapped.
            if len(have) + len(add) >= max_columns - 2 and column not in RESERVED_COLUMNS:
                overflow.add(column)
            else:
                add[column] = kind
        elif current is not kind:
            mixed.add(column)
            if widen(current, kind) is not current:
                widened[column] = widen(current, kind)
    if overflow:
        for row in rows:
            for column in overflow & row.values.keys():
                row.unmapped[column] = row.values.pop(column)
    types = {**have, **add, **widened, "uuid_ts": ColumnType.TIMESTAMP}
    if "uuid_ts" not in have:
        add["uuid_ts"] = ColumnType.TIMESTAMP
    coerced = [(c, types[c]) for c in mixed if c in types]
    unmapped_values = _finish(rows, coerced, format_timestamp(loaded_at))
    if unmapped_values and UNMAPPED_COLUMN not in have:
        add[UNMAPPED_COLUMN] = ColumnType.TEXT
        types[UNMAPPED_COLUMN] = ColumnType.TEXT
    columns = sorted({c for row in rows for c in row.values})
    return TablePlan(
        table=table,
        create=existing is None,
        add=add,
        widen=widened,
        columns=columns,
        types={c: types[c] for c in columns},
        rows=[row.values for row in rows],
        conflict=Conflict.NEWER_WINS if table == "users" else Conflict.KEEP,
        unmapped_values=unmapped_values,
    )


def _column_types(rows: Sequence[Row]) -> tuple[dict[str, ColumnType], set[str]]:
    """Each column's type over ``rows``, and the columns with a value not of that type.

    Values that cannot be stored (NUL in text, a wrong type for a reserved column) move to their
    row's ``unmapped`` here; ``None`` values are dropped.
    """
    needed: dict[str, ColumnType] = {}
    # Columns with a value whose Python form is not its column's (a bool in a bigint column, a
    # list in a text column): only these are coerced, value by value, later.
    mixed: set[str] = set()
    text, boolean, double = ColumnType.TEXT, ColumnType.BOOLEAN, ColumnType.DOUBLE
    for row in rows:
        values = row.values
        for column, value in list(values.items()):
            python_type = type(value)
            # type_of, inlined for the common cases: this loop runs for every value loaded.
            if python_type is str:
                if "\x00" in value:
                    # PostgreSQL's text cannot hold NUL; keep the value rather than fail the
                    # load. An id stays (the row's key): NUL becomes U+FFFD, on every replay too.
                    if column != "id":
                        row.unmapped[column] = values.pop(column)
                        continue
                    values["id"] = value.replace("\x00", "\ufffd")
                kind = type_of(value) if len(value) >= 16 and value[4] == "-" else text
            elif python_type is bool:
                kind = boolean
            elif python_type is float:
                kind = double
            elif value is None:
                del values[column]
                continue
            else:
                kind = type_of(value)
                if kind is text:
                    mixed.add(column)  # an array or a huge integer: stored as JSON text
            fixed = RESERVED_COLUMNS.get(column)
            if fixed is not None:
                if widen(fixed, kind) is not fixed:
                    row.unmapped[column] = values.pop(column)
                    continue
                if kind is not fixed:
                    mixed.add(column)
                kind = fixed
            seen = needed.get(column)
            if seen is None:
                needed[column] = kind
            elif seen is not kind:
                needed[column] = widen(seen, kind)
                mixed.add(column)
    return needed, mixed


def _finish(rows: Sequence[Row], coerced: Sequence[tuple[str, ColumnType]], loaded: str) -> int:
    """Coerce the mixed columns, stamp ``uuid_ts``, fold ``unmapped`` in; the unmapped count."""
    unmapped_values = 0
    for row in rows:
        values = row.values
        for column, kind in coerced:
            value = values.get(column)
            if value is not None:
                values[column] = coerce(value, kind)
        values["uuid_ts"] = loaded
        if row.unmapped:
            unmapped_values += len(row.unmapped)
            values[UNMAPPED_COLUMN] = orjson.dumps(row.unmapped).decode()
    return unmapped_values


def _datetime(value: Any) -> Any:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def merge_users(rows: Iterable[Row]) -> list[Row]:
    """One ``users`` row per ``id``: the traits of every row, later ``received_at`` winning."""
    merged: dict[str, Row] = {}
    for row in sorted(rows, key=lambda r: str(r.values.get("received_at") or "")):
        user = merged.setdefault(row.values["id"], Row("users", {}, {}))
        user.values.update(row.values)
        user.unmapped.update(row.unmapped)
    return list(merged.values())
