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
    records: Sequence[tuple[Any, ...]]
    conflict: Conflict
    unmapped_values: int

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
    instead; nothing is dropped.
    """
    rows = list(rows)
    have = dict(existing or {})
    needed: dict[str, ColumnType] = {}
    for row in rows:
        for column, value in list(row.values.items()):
            if value is None:
                del row.values[column]
                continue
            if isinstance(value, str) and "\x00" in value:
                # PostgreSQL's text cannot hold NUL; keep the value rather than fail the load.
                # An id must stay (the row's key): NUL becomes U+FFFD, the same on every replay.
                if column == "id":
                    row.values["id"] = value.replace("\x00", "\ufffd")
                else:
                    row.unmapped[column] = row.values.pop(column)
                    continue
            kind = type_of(value)
            fixed = RESERVED_COLUMNS.get(column)
            if fixed is not None:
                if widen(fixed, kind) is not fixed:
                    row.unmapped[column] = row.values.pop(column)
                    continue
                kind = fixed
            needed[column] = widen(needed.get(column, kind), kind)
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
        elif widen(current, kind) is not current:
            widened[column] = widen(current, kind)
    if overflow:
        for row in rows:
            for column in overflow & row.values.keys():
                row.unmapped[column] = row.values.pop(column)
    unmapped_values = sum(len(row.unmapped) for row in rows)
    if unmapped_values and UNMAPPED_COLUMN not in have:
        add[UNMAPPED_COLUMN] = ColumnType.TEXT
    types = {**have, **add, **widened, "uuid_ts": ColumnType.TIMESTAMP}
    if "uuid_ts" not in have:
        add["uuid_ts"] = ColumnType.TIMESTAMP
    columns = sorted({c for row in rows for c in row.values} | {"uuid_ts"})
    if unmapped_values:
        columns.append(UNMAPPED_COLUMN)
    records = [_record(row, columns, types, loaded_at) for row in rows]
    return TablePlan(
        table=table,
        create=existing is None,
        add=add,
        widen=widened,
        columns=columns,
        types={c: types[c] for c in columns},
        records=records,
        conflict=Conflict.NEWER_WINS if table == "users" else Conflict.KEEP,
        unmapped_values=unmapped_values,
    )


def _record(
    row: Row, columns: Sequence[str], types: Mapping[str, ColumnType], loaded_at: datetime
) -> tuple[Any, ...]:
    values: list[Any] = []
    for column in columns:
        if column == "uuid_ts":
            values.append(loaded_at)
        elif column == UNMAPPED_COLUMN:
            values.append(orjson.dumps(row.unmapped).decode() if row.unmapped else None)
        else:
            value = row.values.get(column)
            values.append(None if value is None else coerce(value, types[column]))
    return tuple(values)


def merge_users(rows: Iterable[Row]) -> list[Row]:
    """One ``users`` row per ``id``: the traits of every row, later ``received_at`` winning."""
    merged: dict[str, Row] = {}
    for row in sorted(rows, key=lambda r: str(r.values.get("received_at") or "")):
        user = merged.setdefault(row.values["id"], Row("users", {}, {}))
        user.values.update(row.values)
        user.unmapped.update(row.unmapped)
    return list(merged.values())
