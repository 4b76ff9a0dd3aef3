"""The PostgreSQL warehouse with PostgreSQL doing the per-row work (``loader: sql``, the default).

:class:`~destinations.warehouse.postgres_backend.PostgresWarehouse` flattens, types and coerces
every event in Python (``rows_of``, ``plan_table``) and ``COPY``s the flat rows.
:class:`PostgresSqlWarehouse` ``COPY``s the events' own JSON (``Event.raw``) into a ``jsonb``
staging table, once per event, and builds every table's rows from it with one
``INSERT ... SELECT ... ON CONFLICT (id) DO NOTHING`` per table. Python decodes each event only to
take its shape; naming, types and DDL are worked out per distinct shape
(:mod:`destinations.warehouse.postgres_layout`). Per schema (source), inside the load's one
transaction:

1. take the advisory lock of every table the share touches, in sorted order, and read their
   columns under it (as the Python path does);
2. plan each table: its columns, each column's JSON path and the kinds of value it gets; types
   widen by the rules of ``plan.plan_table``;
3. DDL (``CREATE TABLE``, one ``ALTER TABLE`` per table), the staging ``COPY``, the inserts.
   ``users`` rows (identify) are merged and upserted by the Python path, in the same transaction.

What this path does not reproduce exactly sends the whole source's share of the batch through the
Python path, in the same transaction, so the result is the Python path's: a string holding NUL, a
messageId repeated in the batch or missing, a track without an event name, an array, an object
past the depth limit, a key holding an object in some events and a value in others, keys that
snake_case alike in different events, a common column with a value of the wrong type, a float
going into a text column, a table at ``max_columns``. :attr:`PostgresSqlWarehouse.fallbacks`
counts them by reason.
"""

# ruff: noqa: S608 -- SQL is built from identifiers passed through quote() and literals passed
# through _literal(); event data only reaches PostgreSQL through COPY.

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from destinations.warehouse.backend import LoadResult, quote
from destinations.warehouse.plan import Conflict, TablePlan, merge_users, plan_table
from destinations.warehouse.postgres_backend import (
    PostgresWarehouse,
    combined,
    lock_key,
    table_columns,
)
from destinations.warehouse.postgres_layout import (
    BOOL,
    FLOAT,
    KIND_TYPES,
    SLUG,
    STAMP,
    Leaf,
    Share,
    share_of,
)
from destinations.warehouse.schema import RESERVED_COLUMNS, ColumnType, Row, rows_of, widen
from gateway.destination import Event
from gateway.events import format_timestamp

__all__ = ["PostgresSqlWarehouse"]

_STAGE = "eventgate_raw"
_TYPE_NAMES = PostgresWarehouse.type_names
_FIXED_OK = {  # the kinds a common column's value may have (else: the Python path's _unmapped)
    ColumnType.TEXT: frozenset("stbin" + SLUG),
    ColumnType.TIMESTAMP: frozenset(STAMP),
}


class _Fallback(Exception):
    """This schema's share goes through the Python path; the message says why."""


@dataclass(slots=True)
class _Column:
    """One column of one table: the path that fills it and the kinds of value it gets."""

    path: tuple[str, ...]
    kinds: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _TablePlan:
    """One table's share of the load through the SQL path."""

    table: str
    groups: list[int]
    columns: dict[str, _Column]
    ddl: TablePlan | None = None
    types: dict[str, ColumnType] = field(default_factory=dict)


class PostgresSqlWarehouse(PostgresWarehouse):
    """Loads the events' own JSON into PostgreSQL, which flattens and types it (see the module)."""

    def __init__(self, dsn: str, *, max_columns: int, pool_size: int = 2) -> None:
        super().__init__(dsn, max_columns=max_columns, pool_size=pool_size)
        self.fallbacks: dict[str, int] = {}
        """Shares of a batch loaded by the Python path, by reason."""

    async def load_events(self, events: Sequence[Event]) -> LoadResult:
        """Load ``events`` (one schema per source) in one transaction; errors as :meth:`load`."""
        loaded_at = datetime.now(UTC)
        # Off the event loop: decoding a 5,000-event batch takes some 50 ms of CPU.
        shares = await asyncio.to_thread(_shares, events)
        results = []
        async with self._transaction("load") as conn:
            for schema in sorted(shares):
                await self._create_schema(conn, schema)
                results.append(await self._load_share(conn, schema, shares[schema], loaded_at))
        return combined(results)

    async def _load_share(
        self, conn: Any, schema: str, share: Share, loaded_at: datetime
    ) -> LoadResult:
        reason = share.reason
        if reason is None:
            try:
                return await self._load_in_sql(conn, schema, share, loaded_at)
            except _Fallback as exc:
                reason = str(exc)
        self.fallbacks[reason] = self.fallbacks.get(reason, 0) + 1
        tables = await asyncio.to_thread(_python_tables, share.events)
        return await self._load_rows(conn, schema, tables, loaded_at)

    async def _load_in_sql(
        self, conn: Any, schema: str, share: Share, loaded_at: datetime
    ) -> LoadResult:
        """One schema's share in SQL; :class:`_Fallback` (before any change) where it cannot."""
        plans = _layout(share)
        users = any(layout.users for layout in share.layouts)
        existing = {}
        for table in sorted([*plans, *(["users"] if users else [])]):
            await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(schema, table))
            existing[table] = await table_columns(conn, schema, table)
        for table, plan in plans.items():
            _plan_types(plan, existing[table], self.max_columns)
        changes: list[str] = []
        for table, plan in sorted(plans.items()):
            assert plan.ddl is not None
            changes.extend(await self._apply_ddl(conn, schema, plan.ddl, existing[table] or {}))
        await conn.execute(
            f"CREATE TEMP TABLE {_STAGE} (g integer, slug text, raw jsonb) ON COMMIT DROP"
        )
        records = [
            (group, share.layouts[group].slug, event.raw.decode())
            for event, group in zip(share.events, share.groups, strict=True)
        ]
        await conn.copy_records_to_table(_STAGE, schema_name="pg_temp", records=records)
        stamp = _literal(format_timestamp(loaded_at))
        rows = 0
        for _, plan in sorted(plans.items()):
            await conn.execute(_insert_sql(schema, plan, len(share.layouts), stamp))
            rows += sum(1 for group in share.groups if group in plan.groups)
        await conn.execute(f"DROP TABLE pg_temp.{_STAGE}")
        result = LoadResult(rows=rows, unmapped_values=0, schema_changes=changes)
        if not users:
            return result
        return combined([result, await self._load_users(conn, schema, share, loaded_at)])

    async def _load_users(
        self, conn: Any, schema: str, share: Share, loaded_at: datetime
    ) -> LoadResult:
        """The share's ``users`` rows, merged and upserted by the Python path."""
        existing = await table_columns(conn, schema, "users")
        plan = await asyncio.to_thread(_plan_users, share, existing, loaded_at, self.max_columns)
        changes = await self._apply_ddl(conn, schema, plan, existing or {})
        await self._insert(conn, schema, plan)
        return LoadResult(
            rows=len(plan.rows), unmapped_values=plan.unmapped_values, schema_changes=changes
        )


def _shares(events: Sequence[Event]) -> dict[str, Share]:
    """The batch's events by schema, each share with its layouts."""
    from destinations.warehouse import schema_name  # noqa: PLC0415 -- an import cycle

    by_schema: dict[str, list[Event]] = {}
    for event in events:
        by_schema.setdefault(schema_name(event.source), []).append(event)
    return {schema: share_of(batch) for schema, batch in by_schema.items()}


def _python_tables(events: Sequence[Event]) -> dict[str, list[Row]]:
    """One schema's rows as the Python path makes them: one per ``id`` per table, users merged."""
    tables: dict[str, list[Row]] = {}
    seen: set[tuple[str, Any]] = set()
    for event in events:
        for row in rows_of(event.message):
            key = (row.table, row.values.get("id"))
            if row.table != "users" and key in seen:
                continue  # the same messageId twice in one batch: load it once
            seen.add(key)
            tables.setdefault(row.table, []).append(row)
    if "users" in tables:
        tables["users"] = merge_users(tables["users"])
    return tables


def _plan_users(
    share: Share, existing: Mapping[str, ColumnType] | None, loaded_at: datetime, max_columns: int
) -> TablePlan:
    rows = [
        row
        for event, group in zip(share.events, share.groups, strict=True)
        if share.layouts[group].users
        for row in rows_of(event.message)
        if row.table == "users"
    ]
    return plan_table(
        "users", merge_users(rows), existing, loaded_at=loaded_at, max_columns=max_columns
    )


def _layout(share: Share) -> dict[str, _TablePlan]:
    """Each table's groups and columns over the share's layouts; :class:`_Fallback` on a clash."""
    plans: dict[str, _TablePlan] = {}
    for group, layout in enumerate(share.layouts):
        for table, leaves in layout.tables.items():
            plan = plans.get(table)
            if plan is None:
                plan = plans[table] = _TablePlan(table, [], {})
            plan.groups.append(group)
            for name, leaf in leaves.items():
                _add(plan, name, leaf)
    for plan in plans.values():
        paths = {column.path for column in plan.columns.values()}
        for group in plan.groups:
            if not paths.isdisjoint(share.layouts[group].objects):
                raise _Fallback("a key holding an object in some events and a value in others")
    return plans


def _add(plan: _TablePlan, name: str, leaf: Leaf) -> None:
    column = plan.columns.get(name)
    if column is None:
        column = plan.columns[name] = _Column(leaf.path)
    elif column.path != leaf.path:
        raise _Fallback("keys that snake_case alike")
    column.kinds.add(leaf.kind)


def _plan_types(
    plan: _TablePlan, existing: Mapping[str, ColumnType] | None, max_columns: int
) -> None:
    """Set ``plan.types`` and ``plan.ddl`` by ``plan_table``'s rules; :class:`_Fallback`."""
    have = dict(existing or {})
    add: dict[str, ColumnType] = {}
    widened: dict[str, ColumnType] = {}
    needed: dict[str, ColumnType] = {}
    for name, column in plan.columns.items():
        fixed = RESERVED_COLUMNS.get(name)
        if fixed is not None:
            if not column.kinds <= _FIXED_OK.get(fixed, frozenset()):
                raise _Fallback("a common column with a value of the wrong type")
            needed[name] = fixed
            continue
        kinds = iter(column.kinds)
        kind = KIND_TYPES[next(kinds)]
        for other in kinds:
            kind = widen(kind, KIND_TYPES[other])
        needed[name] = kind
    for name, kind in needed.items():
        current = have.get(name)
        if current is None:
            # Two columns stay free for uuid_ts and _unmapped, as in plan_table.
            if len(have) + len(add) >= max_columns - 2 and name not in RESERVED_COLUMNS:
                raise _Fallback("a table at max_columns")
            add[name] = kind
        elif widen(current, kind) is not current:
            widened[name] = widen(current, kind)
    if "uuid_ts" not in have:
        add["uuid_ts"] = ColumnType.TIMESTAMP
    plan.types = {**have, **add, **widened}
    for name, column in plan.columns.items():
        if plan.types[name] is ColumnType.TEXT and FLOAT in column.kinds:
            # Python writes str(float); PostgreSQL would write the JSON number's own text.
            raise _Fallback("a float going into a text column")
    plan.ddl = TablePlan(
        table=plan.table,
        create=existing is None,
        add=add,
        widen=widened,
        columns=[],
        types=plan.types,
        rows=[],
        conflict=Conflict.KEEP,
        unmapped_values=0,
    )


def _insert_sql(schema: str, plan: _TablePlan, layouts: int, stamp: str) -> str:
    names = [*plan.columns, "uuid_ts"]
    values = [_value(column, plan.types[name]) for name, column in plan.columns.items()]
    values.append(f"{stamp}::timestamptz")
    where = ""
    if len(plan.groups) < layouts:
        where = f" WHERE g IN ({', '.join(map(str, plan.groups))})"
    return (
        f"INSERT INTO {quote(schema)}.{quote(plan.table)} ({', '.join(map(quote, names))}) "
        f"SELECT {', '.join(values)} FROM pg_temp.{_STAGE}{where} ON CONFLICT (id) DO NOTHING"
    )


def _value(column: _Column, kind: ColumnType) -> str:
    """The expression reading ``column``'s value from ``raw`` as ``kind``."""
    if not column.path:
        return "slug"
    path = "ARRAY[" + ", ".join(map(_literal, column.path)) + "]"
    if kind is ColumnType.TEXT:
        return f"raw #>> {path}"
    if kind is ColumnType.TIMESTAMP:
        return f"(raw #>> {path})::timestamptz"
    sql_type = _TYPE_NAMES[kind]
    if kind is not ColumnType.BOOLEAN and BOOL in column.kinds:
        # There is no boolean -> bigint cast; Python's coerce makes true 1 (1.0).
        return (
            f"CASE jsonb_typeof(raw #> {path}) WHEN 'boolean' THEN "
            f"(raw #> {path})::boolean::int::{sql_type} ELSE (raw #> {path})::{sql_type} END"
        )
    return f"(raw #> {path})::{sql_type}"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
