"""The PostgreSQL warehouse with PostgreSQL doing the per-row work (``loader: sql``, the default).

:class:`~destinations.warehouse.postgres_backend.PostgresWarehouse` flattens, types and coerces
every event in Python (``rows_of``, ``plan_table``) and ``COPY``s the flat rows.
:class:`PostgresSqlWarehouse` ``COPY``s the events' own JSON (``Event.raw``) into a ``jsonb``
staging table, once per event, and builds every table's rows from it with one
``INSERT ... SELECT`` per table. Python decodes each event only to take its shape; naming, types
and DDL are worked out per distinct shape (:mod:`destinations.warehouse.postgres_layout`). Per
schema (source), inside the load's one transaction:

1. **stage**: ``COPY`` (CSV) the events' JSON, in parts of 1,000 events: Python takes the shapes
   of a part (in a thread) while the server parses the part before it. Arrays (and objects past
   the depth limit) are stored as orjson writes them, so Python stages their text beside the JSON;
2. take the advisory lock of every table the share touches, in sorted order, and read their
   columns under it (as the Python path does);
3. plan each table: its columns, the JSON path (or paths, in ``rows_of``'s precedence) filling
   each, the kinds of value it gets; types widen by the rules of ``plan.plan_table``;
4. DDL (``CREATE TABLE``, one ``ALTER TABLE`` per table), then the inserts: plain ``INSERT``s in a
   savepoint while no id repeats (``ON CONFLICT`` costs the server some 2 us a row); a share that
   meets an id already loaded is rolled back to the savepoint and inserted again with
   ``ON CONFLICT (id) DO NOTHING``, as are the next shares for a while. ``users`` rows (identify)
   are merged and upserted by the Python path, in the same transaction.

What this path does not reproduce exactly sends the whole source's share of the batch through the
Python path, in the same transaction, so the result is the Python path's: a string holding NUL
(or raw JSON text with a line break), a messageId repeated in the batch or missing, a track
without an event name, -0.0, a key holding an object in some events and a value in others, keys
that snake_case alike set in varying order, a common column with a value of the wrong type, a
float ``str()`` writes with an exponent going into a text column, a table at ``max_columns``.
:attr:`PostgresSqlWarehouse.fallbacks` counts them by reason.
"""

# ruff: noqa: S608 -- SQL is built from identifiers passed through quote() and literals passed
# through _literal(); event data only reaches PostgreSQL through COPY.

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

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
    KIND_TYPES,
    ODD_FLOAT,
    SLUG,
    STAGED_STAMPS,
    STAMP,
    Share,
)
from destinations.warehouse.schema import RESERVED_COLUMNS, ColumnType, Row, rows_of, widen
from gateway.destination import Event
from gateway.events import format_timestamp

__all__ = ["PostgresSqlWarehouse"]

_STAGE = "eventgate_raw"
_CONFLICT_LOADS = 20  # shares inserted with ON CONFLICT after one met an id already loaded
_PART_EVENTS = 1000  # events staged per part: shapes of one part are taken while the last loads
_TYPE_NAMES = PostgresWarehouse.type_names
_FIXED_OK = {  # the kinds a common column's value may have (else: the Python path's _unmapped)
    ColumnType.TEXT: frozenset("stbin" + SLUG),
    ColumnType.TIMESTAMP: frozenset(STAMP),
}


class _Fallback(Exception):
    """This schema's share goes through the Python path; the message says why."""


@dataclass(slots=True)
class _Column:
    """One column of one table: the paths that fill it and the kinds of value it gets."""

    paths: list[tuple[str, ...]]
    """Usually one. Several (a page's ``name`` and ``properties.name``, keys that snake_case
    alike in different events): in the order of precedence, the first non-null one wins."""
    kinds: set[str] = field(default_factory=set)
    winners: dict[int, tuple[str, ...]] = field(default_factory=dict)
    """The path ``rows_of`` took, by layout."""


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
        self._conflict_loads = 0  # shares still to insert with ON CONFLICT after one met an id

    async def load_events(self, events: Sequence[Event]) -> LoadResult:
        """Load ``events`` (one schema per source) in one transaction; errors as :meth:`load`."""
        from destinations.warehouse import schema_name  # noqa: PLC0415 -- an import cycle

        loaded_at = datetime.now(UTC)
        by_schema: dict[str, list[Event]] = {}
        for event in events:
            by_schema.setdefault(schema_name(event.source), []).append(event)
        results = []
        async with self._transaction("load") as conn:
            for schema in sorted(by_schema):
                await self._create_schema(conn, schema)
                batch = by_schema[schema]
                results.append(await self._load_share(conn, schema, batch, loaded_at))
        return combined(results)

    async def _load_share(
        self, conn: Any, schema: str, events: Sequence[Event], loaded_at: datetime
    ) -> LoadResult:
        share = await self._stage(conn, events)
        reason = share.reason
        if reason is None:
            try:
                return await self._load_in_sql(conn, schema, share, loaded_at)
            except _Fallback as exc:
                reason = str(exc)
        await conn.execute(f"DROP TABLE pg_temp.{_STAGE}")
        self.fallbacks[reason] = self.fallbacks.get(reason, 0) + 1
        tables = await asyncio.to_thread(_python_tables, events)
        return await self._load_rows(conn, schema, tables, loaded_at)

    async def _stage(self, conn: Any, events: Sequence[Event]) -> Share:
        """COPY ``events`` into the staging table while Python takes their shapes, part by part.

        Each part's shapes are taken in a thread (off the event loop) while the server parses
        the part before it, so the two overlap. Stops at a part with a ``reason``.
        """
        share = Share()
        await conn.execute(
            f"CREATE TEMP TABLE {_STAGE} (g integer, slug text, raw jsonb, texts jsonb, "
            f"{', '.join(f's{n} timestamptz' for n in range(len(STAGED_STAMPS)))}) ON COMMIT DROP"
        )

        async def parts() -> AsyncIterator[bytes]:
            for start in range(0, len(events), _PART_EVENTS):
                part = events[start : start + _PART_EVENTS]
                lines = await asyncio.to_thread(_staged, share, part)
                if lines is None:
                    return
                yield lines

        await conn.copy_to_table(
            _STAGE,
            schema_name="pg_temp",
            source=parts(),
            format="csv",
            delimiter="\x1f",
            quote="\x1e",
        )
        return share

    async def _load_in_sql(
        self, conn: Any, schema: str, share: Share, loaded_at: datetime
    ) -> LoadResult:
        """One schema's staged share in SQL; :class:`_Fallback` (before any change) if it cannot."""
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
        stamp = _literal(format_timestamp(loaded_at))
        ordered = [plans[table] for table in sorted(plans)]
        await self._insert_all(conn, schema, ordered, share, stamp)
        rows = sum(1 for plan in plans.values() for group in share.groups if group in plan.groups)
        await conn.execute(f"DROP TABLE pg_temp.{_STAGE}")
        result = LoadResult(rows=rows, unmapped_values=0, schema_changes=changes)
        if not users:
            return result
        return combined([result, await self._load_users(conn, schema, share, loaded_at)])

    async def _insert_all(
        self, conn: Any, schema: str, plans: Sequence[_TablePlan], share: Share, stamp: str
    ) -> None:
        """Insert every table's rows; plain ``INSERT`` while no id repeats (see the module)."""
        if not self._conflict_loads:
            try:
                async with conn.transaction():  # a savepoint: a repeated id undoes only this
                    for plan in plans:
                        await conn.execute(_insert_sql(schema, plan, share, stamp, conflict=False))
            except asyncpg.UniqueViolationError:
                self._conflict_loads = _CONFLICT_LOADS
            else:
                return
        self._conflict_loads -= 1
        for plan in plans:
            await conn.execute(_insert_sql(schema, plan, share, stamp, conflict=True))

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
                column = plan.columns.get(name)
                if column is None:
                    column = plan.columns[name] = _Column([leaf.path])
                elif leaf.path not in column.paths:
                    column.paths.append(leaf.path)
                column.kinds.add(leaf.kind)
                column.winners[group] = leaf.path
    for plan in plans.values():
        for column in plan.columns.values():
            if len(column.paths) > 1:
                column.paths = _precedence(column, share)
        paths = {path for column in plan.columns.values() for path in column.paths}
        for group in plan.groups:
            if not paths.isdisjoint(share.layouts[group].objects):
                raise _Fallback("a key holding an object in some events and a value in others")
    return plans


def _precedence(column: _Column, share: Share) -> list[tuple[str, ...]]:
    """``column.paths`` ordered so that the first present one is ``rows_of``'s in every layout.

    Raises :class:`_Fallback` when no order does (``rows_of`` took ``a`` over ``b`` in one
    event and ``b`` over ``a`` in another: keys that snake_case alike, in varying key order).
    """
    beats: dict[tuple[str, ...], set[tuple[str, ...]]] = {path: set() for path in column.paths}
    for group, winner in column.winners.items():
        leaves = share.layouts[group].leaves
        beats[winner].update(p for p in column.paths if p != winner and p in leaves)
    order: list[tuple[str, ...]] = []
    left = set(column.paths)
    while left:
        # A path no remaining path beats goes next.
        free = [p for p in column.paths if p in left and not any(p in beats[q] for q in left)]
        if not free:
            raise _Fallback("keys that snake_case alike")
        order.append(free[0])
        left.discard(free[0])
    return order


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
        if plan.types[name] is ColumnType.TEXT and ODD_FLOAT in column.kinds:
            # Python writes str(float) (1e+16); PostgreSQL the JSON number's own digits.
            raise _Fallback("a float in exponent form going into a text column")
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


def _staged(share: Share, events: Sequence[Event]) -> bytes | None:
    """``events`` added to ``share``, as staging rows (CSV); ``None`` once it has a ``reason``.

    A row: the layout's number, the track's table name, the JSON, the texts of its arrays, its
    common timestamps. No
    quoting is needed: ``Share.add`` made sure no field holds \x1e, \x1f or a line break; an
    empty field is NULL.
    """
    start = len(share.events)
    if not share.add(events):
        return None
    slugs = [b"%d\x1f%b\x1f" % (group, (layout.slug or "").encode())
             for group, layout in enumerate(share.layouts)]  # fmt: skip
    rows = zip(share.events[start:], share.groups[start:], share.texts[start:],
               share.stamps[start:], strict=True)  # fmt: skip
    return b"".join([b"%b%b\x1f%b\x1f%b\n" % (slugs[group], event.raw, texts or b"", stamps)
                     for event, group, texts, stamps in rows])  # fmt: skip


def _insert_sql(schema: str, plan: _TablePlan, share: Share, stamp: str, *, conflict: bool) -> str:
    names = [*plan.columns, "uuid_ts"]
    values = [
        _first(column, plan.types[name], share.arrays) for name, column in plan.columns.items()
    ]
    values.append(f"{stamp}::timestamptz")
    where = ""
    if len(plan.groups) < len(share.layouts):
        where = f" WHERE g IN ({', '.join(map(str, plan.groups))})"
    return (
        f"INSERT INTO {quote(schema)}.{quote(plan.table)} ({', '.join(map(quote, names))}) "
        f"SELECT {', '.join(values)} FROM pg_temp.{_STAGE}{where}"
        + (" ON CONFLICT (id) DO NOTHING" if conflict else "")
    )


def _first(column: _Column, kind: ColumnType, arrays: Mapping[tuple[str, ...], int]) -> str:
    """The expression of ``column``'s value: its paths' values as ``kind``, the first non-null."""
    values = [_value(path, column.kinds, kind, arrays.get(path)) for path in column.paths]
    return values[0] if len(values) == 1 else f"COALESCE({', '.join(values)})"


def _value(path: tuple[str, ...], kinds: set[str], kind: ColumnType, array: int | None) -> str:
    """The expression reading ``path`` as ``kind``; ``array``: the staged JSON texts of it."""
    if not path:
        return "slug"
    # Operator by operator: measured twice as fast in PostgreSQL 18 as #>> with a text[] path.
    *parents, key = map(_literal, path)
    at = "raw" + "".join(f" -> {parent}" for parent in parents) + f" ->> {key}"
    if kind is ColumnType.TEXT:
        # An array's text is orjson's, staged; PostgreSQL would write its own.
        return at if array is None else f"COALESCE(texts ->> '{array}', {at})"
    # From the JSON text: text -> float8 keeps what numeric would lose (-0.0, 1e400 refused).
    sql_type = _TYPE_NAMES[kind]
    if kind is not ColumnType.BOOLEAN and BOOL in kinds:
        # There is no boolean -> bigint cast; Python's coerce makes true 1 (1.0).
        return (
            f"CASE {at} WHEN 'true' THEN 1::{sql_type} WHEN 'false' THEN 0::{sql_type} "
            f"ELSE ({at})::{sql_type} END"
        )
    return f"({at})::{sql_type}"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
