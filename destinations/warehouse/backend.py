"""The interface a warehouse database implements: load a batch in one transaction, delete a user."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from destinations.warehouse.schema import ColumnType, Row

__all__ = ["LoadResult", "Tables", "WarehouseBackend", "WarehouseDataError"]

Tables = Mapping[str, Mapping[str, Sequence[Row]]]
"""Rows to load: by schema (one per source), then by table."""


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one load did."""

    rows: int
    """Rows offered (rows whose ``id`` was already loaded count too; they were skipped)."""
    unmapped_values: int
    """Values kept in ``_unmapped`` because no column could hold them."""
    schema_changes: Sequence[str]
    """One line per table created, column added or column widened, e.g. ``web.tracks +price``."""


class WarehouseDataError(Exception):
    """The database refused the data itself (not the connection); retrying the batch won't help.

    The destination then loads the batch's events one at a time, so only the event the database
    refuses is dead-lettered.
    """


class WarehouseBackend(abc.ABC):
    """One warehouse database. Loads are serialized by the caller; each is one transaction.

    ``load`` creates schemas and tables, adds and widens columns (see
    :func:`destinations.warehouse.plan.plan_table`) and inserts the rows, all in one transaction
    that is rolled back on any error: a crash or a failure mid-load leaves the warehouse as it
    was. Rows whose ``id`` is already present are skipped (``users`` rows are upserted, newer
    ``received_at`` winning). ``load`` raises :class:`WarehouseDataError` when the data is at
    fault and ``ConnectionError`` / ``OSError`` (or the driver's connection errors, wrapped in
    ``ConnectionError``) when the database is unreachable.
    """

    type_names: Mapping[ColumnType, str]
    """The SQL type of each column type."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect (or check that the database can be reached)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and files."""

    @abc.abstractmethod
    async def load(self, tables: Tables) -> LoadResult:
        """Load ``tables`` in one transaction."""

    @abc.abstractmethod
    async def delete_user(self, user_id: str) -> int:
        """Delete every row of ``user_id`` (``user_id`` columns, and ``users.id``); the count."""

    @abc.abstractmethod
    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run a read-only query (``$1``-style parameters) and return its rows."""

    @abc.abstractmethod
    async def columns(self, schema: str, table: str) -> dict[str, ColumnType] | None:
        """The columns of ``schema.table`` and their types, or ``None`` if it does not exist."""


def column_type(sql_type: str) -> ColumnType:
    """The :class:`ColumnType` of a column an SQL database reports as ``sql_type``.

    Columns a user altered by hand map to the nearest type, so widening still works on them.
    """
    name = sql_type.lower()
    if name.startswith("bool"):
        return ColumnType.BOOLEAN
    if name in {"bigint", "integer", "smallint", "int8", "int4", "int2", "hugeint", "tinyint"}:
        return ColumnType.BIGINT
    if name.startswith(("double", "real", "float", "numeric", "decimal")):
        return ColumnType.DOUBLE
    if name.startswith("timestamp"):
        return ColumnType.TIMESTAMP
    return ColumnType.TEXT


def quote(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'
