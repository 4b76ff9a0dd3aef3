"""The embedded warehouse: one DuckDB file, a schema per source.

DuckDB lets one process at a time open a file for writing. The file stays open while loads keep
coming and is closed once none has used it for ``release_file_after_s`` seconds, so another
process (``duckdb -readonly``, a notebook) can query it whenever loads pause; a load that finds
the file taken is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import orjson
import structlog

from destinations.warehouse.backend import (
    LoadResult,
    Tables,
    WarehouseBackend,
    WarehouseDataError,
    column_type,
    quote,
)
from destinations.warehouse.plan import Conflict, TablePlan, plan_table
from destinations.warehouse.schema import ColumnType

__all__ = ["DuckDBWarehouse"]

log = structlog.get_logger("eventgate.warehouse")

T = TypeVar("T")

_TYPE_NAMES = {
    ColumnType.BOOLEAN: "BOOLEAN",
    ColumnType.BIGINT: "BIGINT",
    ColumnType.DOUBLE: "DOUBLE",
    ColumnType.TIMESTAMP: "TIMESTAMPTZ",
    ColumnType.TEXT: "VARCHAR",
}


class DuckDBWarehouse(WarehouseBackend):
    """Loads into the DuckDB file at ``path`` from one worker thread."""

    type_names = _TYPE_NAMES

    def __init__(
        self, path: Path, *, max_columns: int, release_file_after_s: float | None = 1.0
    ) -> None:
        self.path = path
        self.max_columns = max_columns
        self.release_file_after_s = release_file_after_s
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._last_used = 0.0
        self._releaser: asyncio.Task[None] | None = None
        # DuckDB connections are not to be shared across threads: every call runs on this one.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eventgate-duckdb")

    async def open(self) -> None:
        """Create the file's directory and check that the file can be opened.

        A file another process holds (someone querying it, or an old gateway not yet gone) is
        no reason to refuse to start: loads wait for it like any load does.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            await self._run(lambda conn: None)
        except ConnectionError as exc:
            if not isinstance(exc.__cause__, duckdb.IOException) or "lock" not in str(exc):
                raise
            log.warning("warehouse.file_busy", path=str(self.path), error=str(exc.__cause__))
        if self.release_file_after_s:
            self._releaser = asyncio.create_task(self._release_when_idle(self.release_file_after_s))

    async def close(self) -> None:
        """Close the file and stop the worker thread."""
        if self._releaser is not None:
            self._releaser.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._releaser
        await self._call(self._disconnect)
        self._thread.shutdown(wait=True)

    async def load(self, tables: Tables) -> LoadResult:
        """Load ``tables`` in one DuckDB transaction."""
        return await self._run(lambda conn: self._load(conn, tables))

    async def delete_user(self, user_id: str) -> int:
        """Delete ``user_id``'s rows from every table of every schema; the number deleted."""
        return await self._run(lambda conn: self._delete_user(conn, user_id))

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run a read-only query and return its rows."""
        return await self._run(lambda conn: conn.execute(sql, list(args)).fetchall())

    async def columns(self, schema: str, table: str) -> dict[str, ColumnType] | None:
        """The columns of ``schema.table``, or ``None``."""
        return await self._run(lambda conn: _columns(conn, schema).get(table))

    async def _run(self, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        def call() -> T:
            conn = self._connect()
            try:
                return work(conn)
            finally:
                self._last_used = time.monotonic()
                if self.release_file_after_s == 0:
                    self._disconnect()

        return await self._call(call)

    async def _release_when_idle(self, idle_s: float) -> None:
        """Close the file whenever no call has used it for ``idle_s`` seconds."""

        def release_if_idle() -> None:
            if time.monotonic() - self._last_used >= idle_s:
                self._disconnect()

        while True:
            await asyncio.sleep(min(idle_s / 2, 0.5))
            if self._conn is not None and time.monotonic() - self._last_used >= idle_s:
                await self._call(release_if_idle)

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    def _connect(self) -> duckdb.DuckDBPyConnection:
        if self._conn is None:
            try:
                self._conn = duckdb.connect(str(self.path))
            except duckdb.IOException as exc:
                raise ConnectionError(
                    f"cannot open {self.path}: {exc} (another process holds it; loads resume "
                    "when it is released)"
                ) from exc
        return self._conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def _load(self, conn: duckdb.DuckDBPyConnection, tables: Tables) -> LoadResult:
        loaded_at = datetime.now(UTC)
        rows = unmapped = 0
        changes: list[str] = []
        conn.begin()
        try:
            for schema, by_table in tables.items():
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
                existing = _columns(conn, schema)
                for table, table_rows in by_table.items():
                    plan = plan_table(
                        table,
                        table_rows,
                        existing.get(table),
                        loaded_at=loaded_at,
                        max_columns=self.max_columns,
                    )
                    changes.extend(self._apply_ddl(conn, schema, plan))
                    self._insert(conn, schema, plan)
                    rows += len(plan.rows)
                    unmapped += plan.unmapped_values
            conn.commit()
        except duckdb.Error as exc:
            conn.rollback()
            if isinstance(exc, duckdb.IOException):
                raise ConnectionError(f"DuckDB I/O error: {exc}") from exc
            raise WarehouseDataError(f"DuckDB refused the load: {exc}") from exc
        except BaseException:
            conn.rollback()
            raise
        return LoadResult(rows=rows, unmapped_values=unmapped, schema_changes=changes)

    def _apply_ddl(
        self, conn: duckdb.DuckDBPyConnection, schema: str, plan: TablePlan
    ) -> list[str]:
        target = f"{quote(schema)}.{quote(plan.table)}"
        if plan.create:
            columns = ", ".join(
                f"{quote(c)} {_TYPE_NAMES[t]}{' PRIMARY KEY' if c == 'id' else ''}"
                for c, t in plan.add.items()
            )
            conn.execute(f"CREATE TABLE {target} ({columns})")
            return [f"{schema}.{plan.table} created"]
        changes = []
        for column, kind in plan.add.items():
            conn.execute(f"ALTER TABLE {target} ADD COLUMN {quote(column)} {_TYPE_NAMES[kind]}")
            changes.append(f"{schema}.{plan.table} +{column} {kind}")
        for column, kind in plan.widen.items():
            conn.execute(f"ALTER TABLE {target} ALTER {quote(column)} TYPE {_TYPE_NAMES[kind]}")
            changes.append(f"{schema}.{plan.table} {column} -> {kind}")
        return changes

    def _insert(self, conn: duckdb.DuckDBPyConnection, schema: str, plan: TablePlan) -> None:
        # DuckDB's fastest path from Python without pyarrow: a JSON-lines file it reads itself.
        fd, name = tempfile.mkstemp(suffix=".jsonl", prefix=".load-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as file:
                columns = plan.columns
                file.write(b"\n".join(map(orjson.dumps, plan.rows)))
            names = ", ".join(quote(c) for c in columns)
            types = {c: _TYPE_NAMES[plan.types[c]] for c in columns}
            target = f"{quote(schema)}.{quote(plan.table)}"
            conn.execute(
                f"INSERT INTO {target} ({names}) SELECT {names} FROM read_json(?, "
                f"format = 'newline_delimited', columns = {_struct(types)}) "
                + _on_conflict(plan, target),
                [name],
            )
        finally:
            os.unlink(name)

    def _delete_user(self, conn: duckdb.DuckDBPyConnection, user_id: str) -> int:
        deleted = 0
        conn.begin()
        try:
            found = conn.execute(
                "SELECT table_schema, table_name, column_name FROM information_schema.columns "
                "WHERE column_name IN ('user_id', 'id') AND table_catalog = current_database()"
            ).fetchall()
            for schema, table, column in found:
                if (column == "id") != (table == "users"):
                    continue
                target = f"{quote(schema)}.{quote(table)}"
                row = conn.execute(
                    f"DELETE FROM {target} WHERE {quote(column)} = ? RETURNING 1", [user_id]
                ).fetchall()
                deleted += len(row)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        return deleted


def _columns(conn: duckdb.DuckDBPyConnection, schema: str) -> dict[str, dict[str, ColumnType]]:
    found: dict[str, dict[str, ColumnType]] = {}
    for table, column, sql_type in conn.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = ? AND table_catalog = current_database() "
        "ORDER BY table_name, ordinal_position",
        [schema],
    ).fetchall():
        found.setdefault(table, {})[column] = column_type(sql_type)
    return found


def _struct(types: Mapping[str, str]) -> str:
    fields = ", ".join(f"'{c.replace(chr(39), chr(39) * 2)}': '{t}'" for c, t in types.items())
    return "{" + fields + "}"


def _on_conflict(plan: TablePlan, target: str) -> str:
    if plan.conflict is Conflict.KEEP:
        return "ON CONFLICT (id) DO NOTHING"
    updates = ", ".join(
        f"{quote(c)} = COALESCE(excluded.{quote(c)}, {target}.{quote(c)})"
        for c in plan.columns
        if c != "id"
    )
    return (
        f"ON CONFLICT (id) DO UPDATE SET {updates} "
        f"WHERE excluded.received_at >= {target}.received_at OR {target}.received_at IS NULL"
    )
