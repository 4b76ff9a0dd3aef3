"""The PostgreSQL warehouse: a schema per source, loaded through COPY into a staging table.

Several gateways may load into one database at once, so every load takes a transaction-scoped
advisory lock per table (and per schema it creates) before it reads the table's columns and
changes them; locks are taken in sorted order, so two loads never deadlock on them.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

from destinations.warehouse.backend import (
    LoadResult,
    Tables,
    WarehouseBackend,
    WarehouseDataError,
    column_type,
    quote,
)
from destinations.warehouse.plan import Conflict, TablePlan, plan_table
from destinations.warehouse.schema import ColumnType, Row

__all__ = ["PostgresWarehouse", "combined", "lock_key", "table_columns"]

_TYPE_NAMES = {
    ColumnType.BOOLEAN: "boolean",
    ColumnType.BIGINT: "bigint",
    ColumnType.DOUBLE: "double precision",
    ColumnType.TIMESTAMP: "timestamptz",
    ColumnType.TEXT: "text",
}
_CONNECT_TIMEOUT_S = 10.0
_COLUMNS_SQL = (
    "SELECT column_name, data_type FROM information_schema.columns "
    "WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position"
)
# Failures that say nothing about the data: the server is gone, restarting, out of connections
# or resources, or picked this transaction as a deadlock victim. Retrying the batch can succeed.
_TRANSIENT = (
    OSError,  # ConnectionRefusedError, socket errors, ...
    asyncio.TimeoutError,  # an OSError too since Python 3.11; named for readers
    asyncpg.exceptions.InterfaceError,  # connection closed, pool closing, ...
    asyncpg.exceptions.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, disk full
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutdown, cannot connect now
    asyncpg.exceptions.TransactionRollbackError,  # class 40: deadlock, serialization failure
    # 42501: a role without the grants it needs; fixing the grants lets the retries through.
    asyncpg.exceptions.InsufficientPrivilegeError,
)


class PostgresWarehouse(WarehouseBackend):
    """Loads into the PostgreSQL database at ``dsn`` through a pool of ``pool_size`` connections."""

    type_names = _TYPE_NAMES

    def __init__(self, dsn: str, *, max_columns: int, pool_size: int = 2) -> None:
        self.dsn = dsn
        self.max_columns = max_columns
        self.pool_size = pool_size
        self._pool: Any = None  # asyncpg.Pool once open

    async def open(self) -> None:
        """Create the pool; raises ``ConnectionError`` if the server cannot be reached."""
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.pool_size,
                timeout=_CONNECT_TIMEOUT_S,
                # Statements are prepared afresh each time: a cached one breaks inside a
                # transaction once a load has altered the table it reads.
                statement_cache_size=0,
                server_settings={"application_name": "eventgate-warehouse", "TimeZone": "UTC"},
            )
        except (*_TRANSIENT, asyncpg.PostgresError, ValueError) as exc:
            raise ConnectionError(
                f"cannot connect to PostgreSQL at {_where(self.dsn)}: {self._scrub(exc)}"
            ) from exc

    async def close(self) -> None:
        """Close the pool, waiting for connections in use to be released."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def load(self, tables: Tables) -> LoadResult:
        """Load ``tables`` in one transaction; see :class:`WarehouseBackend` for the errors."""
        loaded_at = datetime.now(UTC)
        results = []
        async with self._transaction("load") as conn:
            # Schema by schema, tables in sorted order: the advisory locks are always taken in
            # (schema, table) order, so two loads never deadlock on them.
            for schema in sorted(tables):
                await self._create_schema(conn, schema)
                results.append(await self._load_rows(conn, schema, tables[schema], loaded_at))
        return combined(results)

    async def _load_rows(
        self, conn: Any, schema: str, by_table: Mapping[str, Sequence[Row]], loaded_at: datetime
    ) -> LoadResult:
        """Plan and insert one schema's rows (the Python path), inside the caller's transaction."""
        rows = unmapped = 0
        changes: list[str] = []
        for table in sorted(by_table):
            await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(schema, table))
            existing = await table_columns(conn, schema, table)
            # Off the event loop: planning a 5,000-event batch takes ~0.1 s of CPU, which
            # would otherwise stall every other destination's deliveries in this process.
            plan = await asyncio.to_thread(
                plan_table,
                table,
                by_table[table],
                existing,
                loaded_at=loaded_at,
                max_columns=self.max_columns,
            )
            changes.extend(await self._apply_ddl(conn, schema, plan, existing or {}))
            await self._insert(conn, schema, plan)
            rows += len(plan.rows)
            unmapped += plan.unmapped_values
        return LoadResult(rows=rows, unmapped_values=unmapped, schema_changes=changes)

    async def delete_user(self, user_id: str) -> int:
        """Delete ``user_id``'s rows from every table of every schema; the number deleted."""
        deleted = 0
        async with self._transaction("deletion") as conn:
            found = await conn.fetch(
                "SELECT c.table_schema, c.table_name, c.column_name "
                "FROM information_schema.columns c JOIN information_schema.tables t "
                "USING (table_schema, table_name) "
                "WHERE t.table_type = 'BASE TABLE' AND c.column_name IN ('user_id', 'id') "
                "AND c.table_schema NOT IN ('pg_catalog', 'information_schema') "
                "AND c.table_schema NOT LIKE 'pg\\_%' "
                # The order loads lock tables in, so a deletion and a load cannot deadlock.
                "ORDER BY 1, 2"
            )
            for schema, table, column in found:
                if (column == "id") != (table == "users"):
                    continue
                status = await conn.execute(
                    f"DELETE FROM {quote(schema)}.{quote(table)} WHERE {quote(column)} = $1",
                    user_id,
                )
                deleted += int(status.rsplit(" ", 1)[-1])
        return deleted

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run a read-only query and return its rows."""
        async with self._transaction("query") as conn:
            return [tuple(record) for record in await conn.fetch(sql, *args)]

    async def columns(self, schema: str, table: str) -> dict[str, ColumnType] | None:
        """The columns of ``schema.table``, or ``None``."""
        async with self._transaction("query") as conn:
            return await table_columns(conn, schema, table)

    @asynccontextmanager
    async def _transaction(self, action: str) -> AsyncIterator[Any]:
        """A pooled connection in a transaction, asyncpg's errors sorted into ours."""
        if self._pool is None:
            raise ConnectionError("the PostgreSQL warehouse is not open")
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                yield conn
        except ValueError as exc:
            # asyncpg raises ValueError (its client-side DataError among them) for a value it
            # cannot encode, e.g. a string that is not valid Unicode.
            raise WarehouseDataError(f"PostgreSQL cannot take a value: {exc}") from exc
        except _TRANSIENT as exc:
            raise ConnectionError(f"PostgreSQL connection failed: {self._scrub(exc)}") from exc
        except asyncpg.PostgresError as exc:
            raise WarehouseDataError(f"PostgreSQL refused the {action}: {exc}") from exc

    async def _create_schema(self, conn: Any, schema: str) -> None:
        exists = await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema)
        if not exists:
            # CREATE SCHEMA IF NOT EXISTS alone fails when two transactions run it at once.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(schema, ""))
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")

    async def _apply_ddl(
        self, conn: Any, schema: str, plan: TablePlan, existing: Mapping[str, ColumnType]
    ) -> list[str]:
        target = f"{quote(schema)}.{quote(plan.table)}"
        if plan.create:
            columns = ", ".join(
                f"{quote(c)} {_TYPE_NAMES[t]}{' PRIMARY KEY' if c == 'id' else ''}"
                for c, t in plan.add.items()
            )
            await conn.execute(f"CREATE TABLE {target} ({columns})")
            return [f"{schema}.{plan.table} created"]
        changes = []
        actions = []
        for column, kind in plan.add.items():
            actions.append(f"ADD COLUMN {quote(column)} {_TYPE_NAMES[kind]}")
            changes.append(f"{schema}.{plan.table} +{column} {kind}")
        for column, kind in plan.widen.items():
            using = _cast(column, existing[column], kind)
            actions.append(f"ALTER COLUMN {quote(column)} TYPE {_TYPE_NAMES[kind]} USING {using}")
            changes.append(f"{schema}.{plan.table} {column} -> {kind}")
        if actions:
            # One statement, so PostgreSQL rewrites the table at most once.
            await conn.execute(f"ALTER TABLE {target} " + ", ".join(actions))
        return changes

    async def _insert(self, conn: Any, schema: str, plan: TablePlan) -> None:
        # COPY is the fast path but cannot skip existing ids, so rows go through a staging table
        # with the plan's own types; the merge then casts them to the target's. Timestamps are
        # staged as text and parsed by the server in the merge: parsing them in Python cost
        # more than the COPY itself.
        stage = "pg_temp.eventgate_stage"
        columns = plan.columns
        stamps = {c for c in columns if plan.types[c] is ColumnType.TIMESTAMP}
        names = ", ".join(quote(c) for c in columns)
        typed = ", ".join(
            f"{quote(c)} {'text' if c in stamps else _TYPE_NAMES[plan.types[c]]}" for c in columns
        )
        await conn.execute(f"CREATE TEMP TABLE {stage} ({typed}) ON COMMIT DROP")
        records = [tuple(map(row.get, columns)) for row in plan.rows]
        await conn.copy_records_to_table(
            "eventgate_stage", schema_name="pg_temp", records=records, columns=columns
        )
        selected = ", ".join(
            f"{quote(c)}::timestamptz" if c in stamps else quote(c) for c in columns
        )
        target = f"{quote(schema)}.{quote(plan.table)}"
        await conn.execute(
            f"INSERT INTO {target} AS t ({names}) SELECT {selected} FROM {stage} "
            + _on_conflict(plan)
        )
        # The next table of this load stages under the same name.
        await conn.execute(f"DROP TABLE {stage}")

    def _scrub(self, exc: BaseException) -> str:
        """``exc``'s message without the DSN's password, should a driver ever echo it."""
        text = str(exc) or type(exc).__name__
        password = urlsplit(self.dsn).password
        return text.replace(unquote(password), "***") if password else text


async def table_columns(conn: Any, schema: str, table: str) -> dict[str, ColumnType] | None:
    """The columns of ``schema.table`` and their types (``None``: no such table)."""
    found = await conn.fetch(_COLUMNS_SQL, schema, table)
    return {name: column_type(sql_type) for name, sql_type in found} or None


def lock_key(schema: str, table: str) -> int:
    """A stable signed 64-bit advisory lock key for ``schema.table`` (``table`` "": the schema)."""
    # Namespaced, so the key does not collide with other applications' advisory locks.
    name = f"eventgate.warehouse:{schema}.{table}".encode()
    return int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "big", signed=True)


def _cast(column: str, old: ColumnType, new: ColumnType) -> str:
    """The expression converting ``column`` from ``old`` to the wider ``new`` type."""
    name = quote(column)
    if old is ColumnType.BOOLEAN and new is not ColumnType.TEXT:
        return f"{name}::int::{_TYPE_NAMES[new]}"  # there is no direct boolean -> bigint cast
    if old is ColumnType.TIMESTAMP:
        # ISO 8601 in UTC (the session's time zone), like the strings that arrive later.
        return f"""to_char({name}, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
    return f"{name}::{_TYPE_NAMES[new]}"


def combined(results: Sequence[LoadResult]) -> LoadResult:
    """One :class:`LoadResult` adding up ``results``."""
    return LoadResult(
        rows=sum(r.rows for r in results),
        unmapped_values=sum(r.unmapped_values for r in results),
        schema_changes=[change for r in results for change in r.schema_changes],
    )


def _on_conflict(plan: TablePlan) -> str:
    if plan.conflict is Conflict.KEEP:
        return "ON CONFLICT (id) DO NOTHING"
    updates = ", ".join(
        f"{quote(c)} = COALESCE(EXCLUDED.{quote(c)}, t.{quote(c)})"
        for c in plan.columns
        if c != "id"
    )
    return (
        f"ON CONFLICT (id) DO UPDATE SET {updates} "
        "WHERE EXCLUDED.received_at >= t.received_at OR t.received_at IS NULL"
    )


def _where(dsn: str) -> str:
    """``host:port/database`` of ``dsn`` (or its socket directory), never its password."""
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or parse_qs(parts.query).get("host", ["localhost"])[0]
        port = parts.port or 5432
    except ValueError:
        return "the configured dsn"
    return f"{host}:{port}{parts.path}"
