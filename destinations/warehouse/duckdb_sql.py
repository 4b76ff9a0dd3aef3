"""The embedded warehouse with DuckDB doing the per-row work: an experiment beside duckdb_backend.

:class:`~destinations.warehouse.duckdb_backend.DuckDBWarehouse` flattens, types and coerces every
event in Python (``rows_of``, ``plan_table``) and hands DuckDB flat JSON lines.
:class:`DuckDBSqlWarehouse` hands DuckDB the events' own JSON (``Event.raw``, one JSON-lines file
per schema) and builds every table's rows in SQL; Python only works per distinct key: naming
columns (``schema._column``, ``naming.table_name``), deciding types (``schema.widen``), DDL. Per
schema (source), inside the load's one transaction:

1. **keys**: one scan of ``json_keys`` over every object the schema is known to have gives the
   batch's distinct key sets; sets never seen before are described with ``json_group_structure``
   over the rows that have them, which extends the schema's known structure (kept between loads).
2. **staging**: ``read_json`` with an explicit struct of the keys present reads every leaf once
   into a temp table: as ``VARCHAR`` where its text is all its column needs (the column exists as
   text or timestamp), as ``JSON`` text where the kind of the value decides the column's type (new
   columns, numeric and boolean ones: the JSON text keeps ``"12"`` apart from ``12``). An object
   whose keys a struct cannot hold apart (``Price`` in one event, ``price`` in another) is read
   as JSON and its leaves taken with one ``json_extract``.
3. **statistics**: one aggregate grouped by (type, event) says which leaves each table gets and
   their kinds, from the first character of their JSON text; where that leaves a doubt (a new or a
   timestamp column, mixed kinds) a second one looks value by value: Python's timestamp rules
   (its regular expression and ``datetime.fromisoformat``) in SQL, integers beyond int64.
4. **plan** (Python, per table and column): the rules of ``plan.plan_table``.
5. **DDL**, then ``INSERT ... SELECT`` from the temp table. A plain ``INSERT`` while no id repeats
   (``ON CONFLICT`` costs DuckDB some 4 us a row): a load that meets an id already loaded is
   rolled back and done again with ``ON CONFLICT (id) DO NOTHING``, as are the loads after it for
   a while. ``users`` rows are merged in SQL (each trait from the latest identify) and upserted.

What this path does not reproduce sends that schema's share of the batch through the Python path
(``rows_of`` and ``plan_table`` with ``DuckDBWarehouse``'s DDL and insert) in the same transaction,
so the result is the Python path's: a string holding NUL, a messageId repeated in the batch or
missing, a common timestamp that is not one (or not in the form ``normalize`` writes and refused
by DuckDB), a track without an event name, a key holding an object in some events and a value in
others of the same batch, two keys of one object that snake_case alike both set in one event, a
table at ``max_columns``, an array (or an object past the depth limit) whose JSON text DuckDB
writes unlike ``orjson`` (floats in exponent form, ``\\u00XX`` escapes with letters).
:attr:`DuckDBSqlWarehouse.fallbacks` counts them by reason.

Known differences from the Python path: the top-level fields other than ``context``,
``properties`` and ``traits`` are taken to be strings, as ``gateway.events.normalize`` makes them
(a hand-built ``Event.raw`` with, say, a numeric ``channel`` gets a text column); a key that only
ever held strings and now holds an array, going into a text column, is stored as DuckDB writes
the array (``1e+16`` as ``10000000000000000.0``), not as ``orjson`` does; a table this path
creates lists its columns in the order of the schema's known structure rather than of first
appearance in the batch.
"""

# ruff: noqa: S608 -- SQL is built from identifiers passed through quote() and literals passed
# through _literal(); event data only reaches DuckDB as a file or as query parameters.

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson

from destinations.warehouse.backend import LoadResult, WarehouseDataError, quote
from destinations.warehouse.duckdb_backend import DuckDBWarehouse, _columns
from destinations.warehouse.naming import MAX_IDENTIFIER_BYTES, table_name
from destinations.warehouse.plan import merge_users, plan_table
from destinations.warehouse.schema import (
    _MAX_DEPTH,
    _TOP_LEVEL,
    RESERVED_COLUMNS,
    ColumnType,
    Row,
    _column,
    _joined,
    rows_of,
    widen,
)
from gateway.destination import Event
from gateway.events import format_timestamp

__all__ = ["DuckDBSqlWarehouse"]

_STAGE = "_eg_stage"
_USERS = "_eg_users"
_TYPE_NAMES = DuckDBWarehouse.type_names
_CONFLICT_LOADS = 20  # loads that keep ON CONFLICT after one met an id already loaded
_TIMESTAMP_RE = r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}(:?\d{2})?)?"
# orjson and DuckDB (yyjson) write JSON text alike but for floats in exponent form, beyond 1e16
# or below 1e-4, and the hex letters of \u00XX escapes: such arrays fall back.
_EXOTIC_JSON_RE = r"[0-9][eE]|[0-9]{17}|0\.0000|\\u00[0-9a-fA-F]{2}"

Group = tuple[str, str | None]
"""Rows of the staging table: (type, event name for tracks)."""

Structure = dict[str, Any]
"""What a schema's events are known to hold: per key, a dict (an object) or the set of
``json_structure`` type names seen (a leaf; ``MIXED``: an object in some events only)."""


# The top-level fields read: the common ones (by JSON key, their column), then the calls' own.
_COMMON_FIELDS = dict(_TOP_LEVEL)
_TOP_FIELDS = (*_COMMON_FIELDS, "type", "event", "name", "category", "groupId", "previousId")
_TIMESTAMP_FIELDS = frozenset(("receivedAt", "sentAt", "timestamp", "originalTimestamp"))
_ROOTS = ("context", "properties", "traits")
_CALL_TABLES = {
    "identify": "identifies",
    "page": "pages",
    "screen": "screens",
    "group": "groups",
    "alias": "aliases",
}
_USERS_GROUP: Group = ("identify", "\x00users")  # the merged users rows

# Kinds of values, as bits, and the column type each needs.
STRING, TIMESTAMP, BOOL, INT, BIG_INT, DOUBLE, ARRAY, DEEP, OBJECT, EXOTIC = (
    1 << i for i in range(10)
)
_KIND_TYPES = {
    STRING: ColumnType.TEXT,
    TIMESTAMP: ColumnType.TIMESTAMP,
    BOOL: ColumnType.BOOLEAN,
    INT: ColumnType.BIGINT,
    BIG_INT: ColumnType.TEXT,
    DOUBLE: ColumnType.DOUBLE,
    ARRAY: ColumnType.TEXT,
    DEEP: ColumnType.TEXT,
}

_KIND_NAMES = {  # as json_structure names them
    STRING | TIMESTAMP: "VARCHAR",
    BOOL: "BOOLEAN",
    INT: "BIGINT",
    BIG_INT: "UBIGINT",
    DOUBLE: "DOUBLE",
    ARRAY | DEEP: "ARRAY",
}


class _Fallback(Exception):
    """This schema's events go through the Python path; the message says why."""


class _Rediscover(Exception):
    """Keys known as leaves hold objects in this batch: describe them, then plan again."""

    def __init__(self, paths: Sequence[tuple[str, ...]]) -> None:
        super().__init__(paths)
        self.paths = paths


class _Retry(Exception):
    """Roll back and load again: ``schema`` through the Python path, or (None) with ON CONFLICT."""

    def __init__(self, schema: str | None, reason: str) -> None:
        super().__init__(reason)
        self.schema = schema
        self.reason = reason


@dataclass(eq=False)
class _Source:
    """A value per staging row: a leaf of the events, or a COALESCE of several."""

    sql: str  # the staging column, or an expression over staging columns
    json: bool  # JSON text (its kind can be told) rather than VARCHAR text
    trusted: bool = False  # a top-level field: a string whenever present
    timestamp: bool = False  # a common timestamp: must be one
    deep: bool = False  # an object at the depth limit, stored as JSON text
    arrays: bool = False  # may hold arrays (or objects): their JSON text is checked
    path: tuple[str, ...] = ()  # a leaf's root and keys
    combined: bool = False  # a COALESCE of several leaves


@dataclass(eq=False)
class _Column:
    """One column of one table."""

    name: str
    layers: list[list[_Source]] = field(default_factory=list)  # later layers win
    constant: bool = False  # ``event``: the table's (or the event's) slug
    source: _Source | None = None
    kinds: int = 0


@dataclass(eq=False)
class _Table:
    """One table's share of the load."""

    name: str
    call: str
    where: str = ""
    params: list[Any] = field(default_factory=list)
    columns: dict[str, _Column] = field(default_factory=dict)
    groups: list[Group] = field(default_factory=list)
    rows: int = 0
    types: dict[str, ColumnType] = field(default_factory=dict)  # after this load

    @property
    def users(self) -> bool:
        return self.name == "users" and self.call == "identify"

    def column(self, name: str) -> _Column:
        return self.columns.setdefault(name, _Column(name))


@dataclass(frozen=True)
class _Kinds:
    """What the aggregates say about one source in one group of rows."""

    count: int
    json: bool = False
    lo: str | None = None  # min and max of its text
    hi: str | None = None
    fraction: bool | None = None  # some number is not an integer (None: not looked at)
    integer_length: int | None = None  # the longest integer's text (None: not looked at)
    timestamps: bool | None = None  # a common timestamp: all values look like one
    exotic: bool | None = None  # JSON text DuckDB writes unlike orjson (None: not looked at)
    exact: int | None = None  # the kind bits, once looked at value by value

    @property
    def suspect(self) -> bool:
        """A VARCHAR leaf whose text starts with '{': an object (or {}) where a leaf was."""
        return not self.json and (self.hi or "") >= "{"

    def doubt(self, column: ColumnType | None, source: _Source) -> bool:
        """Whether the aggregates leave the kinds open for a column now typed ``column``."""
        if not self.count or self.exact is not None:
            return False
        if source.timestamp:
            return not self.timestamps
        if not self.json:
            return column is not ColumnType.TEXT  # a timestamp column, or a new one
        first, last = (self.lo or "")[:1], (self.hi or "")[:1]
        if last < "#":  # strings
            return column is not ColumnType.TEXT
        if first >= "-" and last <= "9":  # numbers
            if column is ColumnType.TEXT:
                return False  # text either way; each value is written as Python would
            if self.integer_length is None or self.integer_length >= 19:
                return True  # an integer beyond int64 would need a text column
            return column is not ColumnType.DOUBLE and self.fraction is None
        if first >= "f" and last <= "t":  # booleans
            return False
        return not (first == last == "[" and self.exotic is not None)  # arrays, checked

    def bits(self, source: _Source) -> int:
        """The kinds, from the aggregates where they sufficed (see :meth:`doubt`)."""
        if not self.count:
            return 0
        if self.exact is not None:
            return self.exact
        if source.timestamp:
            return TIMESTAMP
        first, last = (self.lo or "")[:1], (self.hi or "")[:1]
        if not self.json or last < "#":
            return STRING
        if first >= "-" and last <= "9":
            return INT if self.fraction is False else DOUBLE | INT
        if first >= "f" and last <= "t":
            return BOOL
        return ARRAY


@dataclass
class _SchemaState:
    """What a schema's earlier loads learnt: its structure, and the key sets already covered."""

    structure: Structure = field(default_factory=dict)
    objects: list[tuple[str, ...]] = field(default_factory=lambda: [()])  # for json_keys
    covered: set[int] = field(default_factory=set)  # hashes of key sets inside the structure


class DuckDBSqlWarehouse(DuckDBWarehouse):
    """A :class:`DuckDBWarehouse` whose :meth:`load_events` builds the rows in SQL.

    ``threads`` caps DuckDB's threads (``None``: DuckDB's default, one per core): one batch gains
    little from a second thread while the gateway's other processes want the cores.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_columns: int,
        release_file_after_s: float | None = 1.0,
        threads: int | None = 1,
    ) -> None:
        super().__init__(path, max_columns=max_columns, release_file_after_s=release_file_after_s)
        self.threads = threads
        self.fallbacks: dict[str, int] = {}
        """Schema loads that went through the Python path, by reason."""
        self._schemas: dict[str, _SchemaState] = {}
        self._conflict_loads = 0

    async def load_events(self, events: Sequence[Event]) -> LoadResult:
        """Load ``events`` (one schema per source) in one DuckDB transaction."""
        return await self._run(lambda conn: self._load_events(conn, events))

    def _connect(self) -> duckdb.DuckDBPyConnection:
        fresh = self._conn is None
        conn = super()._connect()
        if fresh:
            if self.threads:
                conn.execute(f"SET threads = {int(self.threads)}")
            self._schemas.clear()  # another process may have changed the file meanwhile
        return conn

    def _load_events(self, conn: duckdb.DuckDBPyConnection, events: Sequence[Event]) -> LoadResult:
        from destinations.warehouse import schema_name  # noqa: PLC0415 -- an import cycle

        by_schema: dict[str, list[Event]] = {}
        for event in events:
            by_schema.setdefault(schema_name(event.source), []).append(event)
        files = {schema: self._write(batch) for schema, batch in by_schema.items()}
        python: dict[str, str] = {}  # schema -> why it goes through the Python path
        try:
            while True:
                try:
                    return self._attempt(conn, by_schema, files, python)
                except _Retry as retry:
                    if retry.schema is None:
                        self._conflict_loads = _CONFLICT_LOADS
                    else:
                        python[retry.schema] = retry.reason
        finally:
            for name in files.values():
                os.unlink(name)
            for reason in python.values():
                self.fallbacks[reason] = self.fallbacks.get(reason, 0) + 1

    def _attempt(
        self,
        conn: duckdb.DuckDBPyConnection,
        by_schema: Mapping[str, Sequence[Event]],
        files: Mapping[str, str],
        python: Mapping[str, str],
    ) -> LoadResult:
        now = datetime.now(UTC)
        rows = unmapped = 0
        changes: list[str] = []
        conn.begin()
        try:
            for schema, batch in by_schema.items():
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
                existing = _columns(conn, schema)
                if schema in python:
                    result = self._load_in_python(conn, schema, batch, existing, now)
                else:
                    result = self._load_in_sql(conn, schema, files[schema], existing, now)
                rows += result.rows
                unmapped += result.unmapped_values
                changes.extend(result.schema_changes)
            conn.execute(f"DROP TABLE IF EXISTS {_STAGE}")
            conn.execute(f"DROP TABLE IF EXISTS {_USERS}")
            conn.commit()
        except _Retry:
            conn.rollback()
            raise
        except duckdb.ConstraintException as exc:
            conn.rollback()
            if self._conflict_loads:
                raise WarehouseDataError(f"DuckDB refused the load: {exc}") from exc
            raise _Retry(None, "an id already loaded") from exc
        except duckdb.Error as exc:
            conn.rollback()
            if isinstance(exc, duckdb.IOException):
                raise ConnectionError(f"DuckDB I/O error: {exc}") from exc
            raise WarehouseDataError(f"DuckDB refused the load: {exc}") from exc
        except BaseException:
            conn.rollback()
            raise
        if self._conflict_loads:
            self._conflict_loads -= 1
        return LoadResult(rows=rows, unmapped_values=unmapped, schema_changes=changes)

    def _load_in_sql(
        self,
        conn: duckdb.DuckDBPyConnection,
        schema: str,
        file: str,
        existing: Mapping[str, Mapping[str, ColumnType]],
        loaded_at: datetime,
    ) -> LoadResult:
        """One schema's events through the SQL path; :class:`_Retry` where it cannot do them."""
        load = _SchemaLoad(
            conn,
            schema=schema,
            file=file,
            existing=existing,
            state=self._schemas.setdefault(schema, _SchemaState()),
            max_columns=self.max_columns,
        )
        try:
            tables = load.plan()
        except _Fallback as exc:
            raise _Retry(schema, str(exc)) from exc
        except duckdb.Error as exc:  # a value the structure did not foresee, say
            if isinstance(exc, duckdb.IOException):
                raise
            raise _Retry(schema, f"DuckDB could not read the batch ({type(exc).__name__})") from exc
        try:
            return load.write(
                tables, format_timestamp(loaded_at), conflict=self._conflict_loads > 0
            )
        except duckdb.ConversionException as exc:  # a timestamp DuckDB refuses, say
            raise _Retry(schema, "a value DuckDB could not convert") from exc

    def _write(self, batch: Sequence[Event]) -> str:
        fd, name = tempfile.mkstemp(suffix=".jsonl", prefix=".load-", dir=self.path.parent)
        with os.fdopen(fd, "wb") as file:
            file.write(b"\n".join([event.raw for event in batch]))
        return name

    def _load_in_python(
        self,
        conn: duckdb.DuckDBPyConnection,
        schema: str,
        batch: Sequence[Event],
        existing: Mapping[str, Mapping[str, ColumnType]],
        loaded_at: datetime,
    ) -> LoadResult:
        """One schema's events through ``rows_of`` and ``plan_table``: the Python path."""
        tables: dict[str, list[Row]] = {}
        seen: set[tuple[str, Any]] = set()
        for event in batch:
            for row in rows_of(event.message):
                key = (row.table, row.values.get("id"))
                if row.table != "users" and key in seen:
                    continue
                seen.add(key)
                tables.setdefault(row.table, []).append(row)
        if "users" in tables:
            tables["users"] = merge_users(tables["users"])
        rows = unmapped = 0
        changes: list[str] = []
        for table, table_rows in tables.items():
            plan = plan_table(
                table, table_rows, existing.get(table), loaded_at=loaded_at,
                max_columns=self.max_columns,
            )  # fmt: skip
            changes.extend(self._apply_ddl(conn, schema, plan))
            self._insert(conn, schema, plan)
            rows += len(plan.rows)
            unmapped += plan.unmapped_values
        return LoadResult(rows=rows, unmapped_values=unmapped, schema_changes=changes)


class _SchemaLoad:
    """One schema's share of one load through the SQL path."""

    def __init__(
        self,
        conn: duckdb.DuckDBPyConnection,
        *,
        schema: str,
        file: str,
        existing: Mapping[str, Mapping[str, ColumnType]],
        state: _SchemaState,
        max_columns: int,
    ) -> None:
        self.conn = conn
        self.schema = schema
        self.file = file
        self.existing = existing
        self.state = state
        self.max_columns = max_columns
        self.present: Structure = {}  # the keys this batch holds
        self.json_paths: set[tuple[str, ...]] = set()  # leaves to read as JSON after all
        self.sources: dict[tuple[str, ...], _Source] = {}  # by path (root first)
        self.split: dict[tuple[str, ...], list[str]] = {}  # objects read as JSON: pointers
        self.stats: dict[Group, dict[str, _Kinds]] = {}

    # -- 1. keys --------------------------------------------------------------------------------

    def _keys(self) -> None:
        """Find the keys this batch holds; describe the key sets never seen before."""
        state = self.state
        objects = list(state.objects)
        pointers = [_pointer(path) for path in objects]
        found = self.conn.execute(
            "SELECT hash(k) AS h, any_value(k), "
            "bool_or(contains(json, '\\u0000') OR contains(json, chr(0))) "
            "FROM (SELECT json, json_keys(json, ?) AS k "
            "FROM read_json_objects(?, format = 'newline_delimited')) GROUP BY h",
            [pointers, self.file],
        ).fetchall()
        if any(nul for _, _, nul in found):
            raise _Fallback("a string holds NUL")
        new = [h for h, keys, _ in found if h not in state.covered and not self._known(keys)]
        if new:
            row = self.conn.execute(
                "SELECT json_group_structure(json) FROM read_json_objects(?, format = "
                "'newline_delimited') WHERE hash(json_keys(json, ?)) IN (SELECT unnest(?))",
                [self.file, pointers, new],
            ).fetchone()
            described = _structure(orjson.loads(row[0])) if row and row[0] else {}
            _merge(state.structure, described)
            _merge(self.present, described)
            state.objects = [(), *_objects(state.structure)]
            if state.objects != objects:
                state.covered.clear()
        state.covered.update(h for h, _, _ in found if h not in new)
        looked = set(state.objects)
        for _, keys, _ in found:
            for path, names in zip(objects, keys, strict=True):
                if names:
                    self._mark(path, names, looked)

    def _known(self, keys: Sequence[Sequence[str] | None]) -> bool:
        for path, names in zip(self.state.objects, keys, strict=True):
            node = _node(self.state.structure, path)
            if names and (node is None or any(name not in node for name in names)):
                return False
        return True

    def _mark(
        self, path: tuple[str, ...], names: Iterable[str], looked: set[tuple[str, ...]]
    ) -> None:
        """Mark ``names``, keys of the object at ``path``, present (with their known shape)."""
        known = _node(self.state.structure, path)
        if known is None:
            return
        present = _ensure(self.present, path)
        for name in names:
            shape = known.get(name)
            if isinstance(shape, dict):
                if (*path, name) in looked:  # its own keys are marked from its key list
                    present.setdefault(name, {})
                else:  # an object at the depth limit: one leaf, its JSON text
                    present[name] = _copy(shape)
            elif shape is not None and not isinstance(present.get(name), set):
                present[name] = set(shape)

    # -- 2. staging -----------------------------------------------------------------------------

    def _stage(self) -> None:
        """Read the batch into the staging table: a column per top-level field and leaf.

        An object whose keys a DuckDB struct cannot hold apart (equal but for ASCII case, as
        ``Price`` in one event and ``price`` in another, or empty) is read as JSON text and its
        leaves taken with one ``json_extract`` of them all, as JSON text.
        """
        columns, selects = self._read_spec()
        checks = self._split_objects()
        if checks:
            selects.append(f"({' OR '.join(checks)}) AS t_not_object")
        extracted = "".join(
            f", json_extract({_struct_access(path)}, {_literal_list(pointers)}) AS x{number}"
            for number, (path, pointers) in enumerate(self.split.items())
        )
        spec = ", ".join(f"{_literal(key)}: {_literal(kind)}" for key, kind in columns.items())
        self.conn.execute(
            f"CREATE OR REPLACE TEMP TABLE {_STAGE} AS SELECT {', '.join(selects)} "
            f"FROM (SELECT *{extracted} FROM read_json(?, format = 'newline_delimited', "
            f"columns = {{{spec}}}))",
            [self.file],
        )
        if checks:
            found = self.conn.execute(f"SELECT bool_or(t_not_object) FROM {_STAGE}").fetchone()
            if found and found[0]:
                raise _Fallback("a key holding an object in some events and not in others")

    def _read_spec(self) -> tuple[dict[str, str], list[str]]:
        """``read_json``'s columns (key: type) and the staging table's columns (SQL), by leaf."""
        columns: dict[str, str] = {}
        selects: list[str] = []
        self.sources = {}
        self.split = {}
        for key in _TOP_FIELDS:
            if isinstance(self.present.get(key), set):
                columns[key] = "VARCHAR"
                selects.append(f"{quote(key)} AS {quote('t_' + key)}")
                self.sources[(key,)] = _Source(
                    quote("t_" + key), json=False, trusted=True, timestamp=key in _TIMESTAMP_FIELDS
                )
        for root in _ROOTS:
            node = self.present.get(root)
            if isinstance(node, set) and node - {"NULL"}:
                raise _Fallback(f"{root} that is not an object")
            if not isinstance(node, dict):
                continue
            struct = self._struct(node, (root,), 1)
            if not struct:
                continue
            columns[root] = struct
            for path, shape in _leaves(node, (root,), 1):
                name = f"l{len(self.sources)}"
                access, split = self._access(path)
                deep = shape is None
                kinds = shape or set()
                if deep or kinds & {"JSON", "MIXED"}:
                    access = f"nullif({access}, '{{}}')"  # {} is skipped, as rows_of does
                selects.append(f"{access} AS {name}")
                self.sources[path] = _Source(
                    name,
                    json=split or self._as_json(path, shape),
                    deep=deep,
                    arrays=split or deep or bool(kinds & {"ARRAY", "JSON", "MIXED"}),
                    path=path,
                )
        return columns, selects

    def _access(self, path: tuple[str, ...]) -> tuple[str, bool]:
        """SQL for the leaf at ``path`` in the read row, and whether it is JSON text."""
        for cut in range(1, len(path)):
            pointers = self.split.get(path[:cut])
            if pointers is not None:
                number = list(self.split).index(path[:cut])
                pointers.append(_pointer(path[cut:]))
                return f"nullif(x{number}[{len(pointers)}], 'null')", True
        return _struct_access(path), False

    def _split_objects(self) -> list[str]:
        """SQL checks that keys known as objects inside objects read as JSON hold objects."""
        checks = []
        for number, (path, pointers) in enumerate(self.split.items()):
            node = _node(self.present, path) or {}
            for inner in _nested(node, (), len(path)):
                pointers.append(_pointer(inner))
                v = f"x{number}[{len(pointers)}]"
                checks.append(f"({v} IS NOT NULL AND {v} <> 'null' AND NOT starts_with({v}, '{{'))")
        return checks

    def _as_json(self, path: tuple[str, ...], shape: set[str] | None) -> bool:
        return shape is None or path in self.json_paths or not shape <= {"VARCHAR", "NULL"}

    def _struct(self, node: Structure, path: tuple[str, ...], depth: int) -> str:
        """The DuckDB type ``read_json`` reads the object ``node`` at ``path`` as."""
        folded = [key.encode().lower() for key in node]
        if "" in node or len(set(folded)) < len(folded):
            self.split.setdefault(path, [])
            return "JSON"
        fields = []
        for key, shape in node.items():
            if isinstance(shape, dict) and shape:
                if depth + 1 < _MAX_DEPTH:
                    inner = self._struct(shape, (*path, key), depth + 1)
                    if inner:
                        fields.append(f"{quote(key)} {inner}")
                    continue
                fields.append(f"{quote(key)} JSON")
            else:
                as_json = isinstance(shape, dict) or self._as_json((*path, key), shape)
                fields.append(f"{quote(key)} {'JSON' if as_json else 'VARCHAR'}")
        return f"STRUCT({', '.join(fields)})" if fields else ""

    # -- 3. layout and statistics ---------------------------------------------------------------

    def plan(self) -> list[_Table]:
        """Stage the batch, gather what its values are and plan every table (no DDL yet)."""
        self._keys()
        for _ in range(3):
            try:
                return self._plan()
            except _Rediscover as found:
                self._rediscover(found.paths)
        raise _Fallback("the structure never settled")

    def _plan(self) -> list[_Table]:
        for _ in range(4):
            self._stage()
            tables = self._layout()
            self._gather(tables)
            forced = self._needs_json(tables)
            if not forced:
                break
            self.json_paths |= forced
        else:
            raise _Fallback("the staging never settled")
        self._check_ids()
        for table in tables:
            self._settle(table)
        self._resolve(tables)
        tables = [table for table in tables if table.rows]
        for table in tables:
            table.types = self._types(table, self.existing.get(table.name))
        return tables

    def _layout(self) -> list[_Table]:
        """The tables of the batch's (type, event) groups, each column with its sources."""
        if ("type",) not in self.sources:
            return []
        if ("event",) not in self.sources:
            self.conn.execute(f"ALTER TABLE {_STAGE} ADD COLUMN t_event VARCHAR")
        tables: dict[str, _Table] = {}
        for call, event, count in self.conn.execute(
            f"SELECT t_type, CASE WHEN t_type = 'track' THEN t_event END, count(*) "
            f"FROM {_STAGE} GROUP BY ALL"
        ).fetchall():
            group = (call, event)
            if call == "track":
                if event is None:
                    raise _Fallback("a track without an event name")
                names = ["tracks", table_name(event)]
            elif call in _CALL_TABLES:
                names = [_CALL_TABLES[call]]
                if call == "identify" and ("userId",) in self.sources:
                    names.append("users")
            else:
                continue
            for name in names:
                table = tables.get(name)
                if table is None:
                    table = tables[name] = self._table(name, call)
                table.groups.append(group)
                if name != "users":
                    table.rows += count
                if call == "track" and name != "tracks":
                    table.params.append(event)
        for table in tables.values():
            if table.call == "track" and table.name != "tracks":
                marks = ", ".join("?" for _ in table.params)
                table.where = f"t_type = 'track' AND t_event IN ({marks})"
            elif table.users:
                table.where = "t_type = 'identify' AND t_userId IS NOT NULL"
            else:
                table.where = f"t_type = {_literal(table.call)}"
        return list(tables.values())

    def _table(self, name: str, call: str) -> _Table:
        """A table's columns in Segment's layout (``rows_of``): later layers win."""
        table = _Table(name, call)
        if table.users:
            table.column("id").layers.append(self._top("userId"))
            table.column("received_at").layers.append(self._top("receivedAt"))
            self._root(table, "traits")
            return table
        for key, column in _COMMON_FIELDS.items():
            table.column(column).layers.append(self._top(key))
        self._root(table, "context")
        if call == "track":
            table.column("event").constant = True
            table.column("event_text").layers.append(self._top("event"))
            if name != "tracks":
                self._root(table, "properties")
        elif call == "group":
            table.column("group_id").layers.append(self._top("groupId"))
            self._root(table, "traits")
        elif call == "alias":
            table.column("previous_id").layers.append(self._top("previousId"))
        elif call == "identify":
            self._root(table, "traits")
        else:  # page, screen
            self._root(table, "properties")
            for key in ("name", "category"):
                table.column(key).layers.append(self._top(key))
        return table

    def _top(self, key: str) -> list[_Source]:
        source = self.sources.get((key,))
        return [source] if source else []

    def _root(self, table: _Table, root: str) -> None:
        layer: dict[str, list[_Source]] = {}
        for path, source in self.sources.items():
            if path[0] == root:
                layer.setdefault(_column_of(path), []).append(source)
        for name, sources in layer.items():
            table.column(name).layers.append(sources)

    def _gather(self, tables: Sequence[_Table]) -> None:
        """Aggregate every source per (type, event): count, and kinds from its text."""
        sources: dict[int, _Source] = {}
        landing: dict[int, set[ColumnType | None]] = {}
        for table in tables:
            have = self.existing.get(table.name) or {}
            for column in table.columns.values():
                for layer in column.layers:
                    for source in layer:
                        sources[id(source)] = source
                        landing.setdefault(id(source), set()).add(have.get(column.name))
        self.stats = self._aggregate(
            list(sources.values()), _STAGE, landing=[landing[key] for key in sources]
        )

    def _aggregate(
        self,
        sources: Sequence[_Source],
        relation: str,
        group: Group | None = None,
        landing: Sequence[set[ColumnType | None]] | None = None,
    ) -> dict[Group, dict[str, _Kinds]]:
        """Per (type, event) (or for ``group``, all rows): each source's count and kinds.

        ``landing``: the types of the columns each source goes to (None: a new column), which
        say what must be known about numbers: nothing for text columns, whether an integer
        outgrows int64 for double ones, and also whether all are integers for the others.
        """
        selects: list[str] = []
        params: list[str] = []
        for i, source in enumerate(sources):
            v = source.sql
            selects.append(f"count({v}) AS c{i}")
            if source.json:
                selects += [f"min({v}) AS lo{i}", f"max({v}) AS hi{i}"]
                columns = {None} if landing is None else landing[i]
                shape = f"CASE WHEN {_fraction(v)} THEN -1 ELSE length({v}) END"
                if columns - {ColumnType.TEXT, ColumnType.BOOLEAN}:
                    selects.append(f"max({shape}) AS il{i}")
                if columns - {ColumnType.TEXT, ColumnType.BOOLEAN, ColumnType.DOUBLE}:
                    selects.append(f"min({shape}) AS fr{i}")
            elif not source.trusted:
                selects.append(f"max({v}) AS hi{i}")
            if source.timestamp:  # the form normalize writes; anything else is looked at later
                selects.append(
                    f"bool_and({v} IS NULL OR ({v} LIKE '____-__-__T__:__:__.___Z' "
                    f"AND substr({v}, 12, 2) < '24' AND substr({v}, 1, 4) <> '0000')) AS ts{i}"
                )
            if source.arrays:
                selects.append(
                    f"bool_or((starts_with({v}, '[') OR starts_with({v}, '{{')) "
                    f"AND regexp_matches({v}, ?)) AS ex{i}"
                )
                params.append(_EXOTIC_JSON_RE)
        keys = "t_type AS g0, CASE WHEN t_type = 'track' THEN t_event END AS g1, "
        cursor = self.conn.execute(
            f"SELECT {keys if group is None else ''}count(*) AS n, "
            f"{', '.join(selects) or 'NULL'} FROM {relation}"
            f"{' GROUP BY ALL' if group is None else ''}",
            params,
        )
        names = [d[0] for d in cursor.description or ()]
        stats: dict[Group, dict[str, _Kinds]] = {}
        for row in cursor.fetchall():
            values = dict(zip(names, row, strict=True))
            stats[(values["g0"], values["g1"]) if group is None else group] = {
                source.sql: _Kinds(
                    count=values[f"c{i}"],
                    json=source.json,
                    lo=values.get(f"lo{i}"),
                    hi=values.get(f"hi{i}"),
                    fraction=None if values.get(f"fr{i}") is None else values[f"fr{i}"] < 0,
                    integer_length=values.get(f"il{i}"),
                    timestamps=values.get(f"ts{i}"),
                    exotic=values.get(f"ex{i}"),
                )
                for i, source in enumerate(sources)
            }
        return stats

    def _kinds(self, table: _Table, source: _Source) -> Iterator[_Kinds]:
        for group in table.groups:
            found = self.stats.get(group, {}).get(source.sql)
            if found is not None:
                yield found

    def _present(self, table: _Table, source: _Source) -> bool:
        return any(kinds.count for kinds in self._kinds(table, source))

    def _needs_json(self, tables: Sequence[_Table]) -> set[tuple[str, ...]]:
        """VARCHAR leaves whose kinds matter after all (a new column, not a text one, '{')."""
        forced: set[tuple[str, ...]] = set()
        for table in tables:
            have = self.existing.get(table.name) or {}
            for column in table.columns.values():
                present = [s for layer in column.layers for s in layer if self._present(table, s)]
                for source in present:
                    if source.json or source.trusted:
                        continue
                    suspect = any(k.suspect for k in self._kinds(table, source))
                    text = have.get(column.name) in (ColumnType.TEXT, ColumnType.TIMESTAMP)
                    if suspect or not text:
                        forced.add(source.path)
        return forced

    def _check_ids(self) -> None:
        if ("messageId",) not in self.sources:
            raise _Fallback("a messageId missing")
        count, ids, distinct = self.conn.execute(
            f"SELECT count(*), count(t_messageId), count(DISTINCT t_messageId) FROM {_STAGE}"
        ).fetchone() or (0, 0, 0)
        if not count == ids == distinct:
            raise _Fallback("a messageId repeated within the batch, or missing")

    def _settle(self, table: _Table) -> None:
        """Give each column one source: its leaf, or a COALESCE where several are present."""
        for column in list(table.columns.values()):
            if column.constant:
                continue
            layers = [[s for s in layer if self._present(table, s)] for layer in column.layers]
            layers = [layer for layer in layers if layer]
            if not layers:
                del table.columns[column.name]
                continue
            for layer in layers:
                if len(layer) > 1:
                    self._one_per_row(table, layer)
            parts = [s for layer in reversed(layers) for s in layer]
            column.source = parts[0] if len(parts) == 1 else self._coalesce(table, parts)

    def _one_per_row(self, table: _Table, sources: Sequence[_Source]) -> None:
        """Keys of one object that name one column: fine unless one event sets two of them."""
        both = " + ".join(f"({s.sql} IS NOT NULL)::INT" for s in sources)
        found = self.conn.execute(
            f"SELECT count(*) FROM {_STAGE} WHERE {table.where} AND {both} > 1", table.params
        ).fetchone()
        if found and found[0]:
            raise _Fallback("keys of one object that snake_case alike")

    def _coalesce(self, table: _Table, parts: Sequence[_Source]) -> _Source:
        """One source from several, the first non-null winning; its kinds looked at per value."""
        as_json = any(part.json for part in parts)
        sql = ", ".join(
            part.sql if part.json or not as_json else f"to_json({part.sql})" for part in parts
        )
        source = _Source(
            f"coalesce({sql})",
            json=as_json,
            trusted=all(part.trusted for part in parts),
            arrays=any(part.arrays for part in parts),
            combined=True,
        )
        for group in table.groups:
            counts = self.stats[group]
            counts[source.sql] = _Kinds(
                count=sum(counts[p.sql].count for p in parts if p.sql in counts), json=as_json
            )
        return source

    def _resolve(self, tables: Sequence[_Table]) -> None:
        """Settle every column's kinds; look value by value where the aggregates cannot tell."""
        doubtful: dict[str, tuple[_Source, bool]] = {}  # sql -> (source, on the users table)
        for table in tables:
            if table.users:
                continue
            have = self.existing.get(table.name) or {}
            for column in table.columns.values():
                source = column.source
                if source is None:
                    continue
                for kinds in self._kinds(table, source):
                    if kinds.exotic:
                        raise _Fallback("JSON text DuckDB writes unlike orjson")
                    if kinds.doubt(have.get(column.name), source) or (
                        source.combined and source.json
                    ):
                        doubtful[source.sql] = (source, False)
        users = next((table for table in tables if table.users), None)
        if users is not None:
            self._merge_users(users, doubtful)
        on_stage = [s for s, on_users in doubtful.values() if not on_users]
        on_users = [s for s, on_users in doubtful.values() if on_users]
        for sources, relation in ((on_stage, _STAGE), (on_users, _USERS)):
            if not sources:
                continue
            masks = ", ".join(f"bit_or({_kind_code(s)})" for s in sources)
            if relation == _USERS:
                sql = f"SELECT NULL, NULL, {masks} FROM {_USERS}"
            else:
                sql = (
                    f"SELECT t_type, CASE WHEN t_type = 'track' THEN t_event END, {masks} "
                    f"FROM {_STAGE} GROUP BY ALL"
                )
            for row in self.conn.execute(sql).fetchall():
                group = _USERS_GROUP if relation == _USERS else (row[0], row[1])
                counts = self.stats.setdefault(group, {})
                for source, mask in zip(sources, row[2:], strict=True):
                    before = counts.get(source.sql) or _Kinds(count=int(bool(mask)))
                    counts[source.sql] = _Kinds(count=before.count, json=source.json, exact=mask)
        for table in tables:
            for column in list(table.columns.values()):
                if column.source is None:
                    continue
                for kinds in self._kinds(table, column.source):
                    column.kinds |= kinds.bits(column.source)
                if column.kinds & EXOTIC:
                    raise _Fallback("JSON text DuckDB writes unlike orjson")
                if column.kinds & OBJECT:
                    if not column.source.path:
                        raise _Fallback("a key holding an object in some events and not in others")
                    raise _Rediscover([column.source.path])
                self._learn(column.source, column.kinds)
                if not column.kinds:
                    del table.columns[column.name]

    def _rediscover(self, paths: Sequence[tuple[str, ...]]) -> None:
        """Describe keys known as leaves that hold objects now (they held only {} before)."""
        shapes = ", ".join(
            f"json_group_structure(json_extract(json, {_literal(_pointer(path))}))"
            for path in paths
        )
        row = self.conn.execute(
            f"SELECT {shapes} FROM read_json_objects(?, format = 'newline_delimited')",
            [self.file],
        ).fetchone()
        for path, described in zip(paths, row or (), strict=True):
            shape = _structure(orjson.loads(described)) if described else None
            if not isinstance(shape, dict):
                raise _Fallback("a key holding an object in some events and not in others")
            for structure in (self.state.structure, self.present):
                parent = _ensure(structure, path[:-1])
                parent[path[-1]] = _copy(shape)
        self.state.objects = [(), *_objects(self.state.structure)]
        self.state.covered.clear()

    def _learn(self, source: _Source, kinds: int) -> None:
        """Remember the kinds a leaf held, so later loads read it as JSON from the start."""
        node = _node(self.state.structure, source.path[:-1]) if source.path else None
        leaf = node.get(source.path[-1]) if node is not None else None
        if isinstance(leaf, set):
            leaf.update(name for bit, name in _KIND_NAMES.items() if kinds & bit)

    def _merge_users(self, users: _Table, doubtful: dict[str, tuple[_Source, bool]]) -> None:
        """The batch's users: one row per user id, each trait from its latest identify."""
        if "id" not in users.columns:  # no identify of this batch has a userId
            users.rows = 0
            return
        order = "{'r': coalesce(t_receivedAt, ''), 'n': rowid}"
        selects = ["t_userId AS id"]
        if ("receivedAt",) in self.sources:
            selects.append("max(t_receivedAt) AS received_at")
        merged: list[_Source] = []
        for column in users.columns.values():
            source = column.source
            if source is None or column.name in ("id", "received_at"):
                continue
            name = f"u{len(merged)}"
            selects.append(
                f"arg_max({source.sql}, {order}) FILTER (WHERE {source.sql} IS NOT NULL) AS {name}"
            )
            column.source = _Source(
                name, json=source.json, deep=source.deep, arrays=source.arrays, path=source.path
            )
            merged.append(column.source)
        self.conn.execute(
            f"CREATE OR REPLACE TEMP TABLE {_USERS} AS SELECT {', '.join(selects)} FROM {_STAGE} "
            f"WHERE {users.where} GROUP BY t_userId"
        )
        users.columns["id"].source = _Source("id", json=False, trusted=True)
        if "received_at" in users.columns:
            users.columns["received_at"].source = _Source(
                "received_at", json=False, trusted=True, timestamp=True
            )
        users.groups = [_USERS_GROUP]
        stats = self._aggregate(
            [c.source for c in users.columns.values() if c.source], _USERS, _USERS_GROUP
        )
        self.stats[_USERS_GROUP] = stats.get(_USERS_GROUP, {})
        (users.rows,) = self.conn.execute(f"SELECT count(*) FROM {_USERS}").fetchone() or (0,)
        have = self.existing.get("users") or {}
        for column in users.columns.values():
            source = column.source
            if source is None:
                continue
            kinds = self.stats[_USERS_GROUP].get(source.sql)
            if kinds is None:
                continue
            if kinds.exotic:
                raise _Fallback("JSON text DuckDB writes unlike orjson")
            if kinds.doubt(have.get(column.name), source):
                doubtful[source.sql] = (source, True)

    # -- 4. write -------------------------------------------------------------------------------

    def write(self, tables: Sequence[_Table], loaded_at: str, *, conflict: bool) -> LoadResult:
        """DDL, then one INSERT per table (users: an upsert)."""
        changes: list[str] = []
        rows = 0
        for table in tables:
            changes.extend(self._ddl(table, self.existing.get(table.name), table.types))
            self._insert(table, table.types, loaded_at, conflict=conflict)
            rows += table.rows
        return LoadResult(rows=rows, unmapped_values=0, schema_changes=changes)

    def _types(self, table: _Table, have: Mapping[str, ColumnType] | None) -> dict[str, ColumnType]:
        """Each column's type after this load, as ``plan_table`` decides it."""
        current = dict(have or {})
        types: dict[str, ColumnType] = {}
        added = 0
        for column in table.columns.values():
            fixed = RESERVED_COLUMNS.get(column.name)
            kind = ColumnType.TEXT if column.constant else None
            for bit, column_type in _KIND_TYPES.items():
                if column.kinds & bit:
                    kind = column_type if kind is None else widen(kind, column_type)
            assert kind is not None
            if fixed is not None:
                if widen(fixed, kind) is not fixed:
                    raise _Fallback(f"a {kind} value in the common column {column.name}")
                kind = fixed
            before = current.get(column.name)
            if before is None:
                if len(current) + added >= self.max_columns - 2 and fixed is None:
                    raise _Fallback("a table at max_columns")
                added += 1
                types[column.name] = kind
            else:
                types[column.name] = widen(before, kind)
        types["uuid_ts"] = ColumnType.TIMESTAMP
        return types

    def _ddl(
        self,
        table: _Table,
        have: Mapping[str, ColumnType] | None,
        types: Mapping[str, ColumnType],
    ) -> list[str]:
        target = f"{quote(self.schema)}.{quote(table.name)}"
        if have is None:
            columns = ", ".join(
                f"{quote(c)} {_TYPE_NAMES[t]}{' PRIMARY KEY' if c == 'id' else ''}"
                for c, t in types.items()
            )
            self.conn.execute(f"CREATE TABLE {target} ({columns})")
            return [f"{self.schema}.{table.name} created"]
        changes = []
        for column, kind in types.items():
            if column not in have:
                sql_type = _TYPE_NAMES[kind]
                self.conn.execute(f"ALTER TABLE {target} ADD COLUMN {quote(column)} {sql_type}")
                changes.append(f"{self.schema}.{table.name} +{column} {kind}")
        for column, kind in types.items():
            if column in have and have[column] is not kind:
                sql_type = _TYPE_NAMES[kind]
                self.conn.execute(f"ALTER TABLE {target} ALTER {quote(column)} TYPE {sql_type}")
                changes.append(f"{self.schema}.{table.name} {column} -> {kind}")
        return changes

    def _insert(
        self,
        table: _Table,
        types: Mapping[str, ColumnType],
        loaded_at: str,
        *,
        conflict: bool,
    ) -> None:
        target = f"{quote(self.schema)}.{quote(table.name)}"
        names: list[str] = []
        values: list[str] = []
        params: list[Any] = []
        for column in table.columns.values():
            names.append(quote(column.name))
            if column.constant:  # event: the slug of the event name
                if table.name == "tracks":
                    events = [event for _, event in table.groups]
                    values.append(f"CASE t_event {' '.join('WHEN ? THEN ?' for _ in events)} END")
                    params += [x for event in events for x in (event, table_name(str(event)))]
                else:
                    values.append("?")
                    params.append(table.name)
            else:
                assert column.source is not None
                values.append(_value(column.source, column.kinds, types[column.name]))
        names.append("uuid_ts")
        values.append("CAST(? AS TIMESTAMPTZ)")
        params.append(loaded_at)
        sql = f"INSERT INTO {target} ({', '.join(names)}) SELECT {', '.join(values)} FROM "
        if table.users:
            updates = ", ".join(
                f"{n} = COALESCE(excluded.{n}, {target}.{n})" for n in names if n != '"id"'
            )
            sql += (
                f"{_USERS} ON CONFLICT (id) DO UPDATE SET {updates} WHERE excluded.received_at "
                f">= {target}.received_at OR {target}.received_at IS NULL"
            )
        else:
            sql += f"{_STAGE} WHERE {table.where}"
            params += table.params
            if conflict:
                sql += " ON CONFLICT (id) DO NOTHING"
        self.conn.execute(sql, params)


# -- SQL for kinds and values ------------------------------------------------------------------


def _fraction(v: str) -> str:
    """SQL: the JSON number ``v`` is not an integer (DuckDB writes every float with . or e)."""
    return f"(contains({v}, '.') OR contains({v}, 'e'))"


def _is_timestamp(v: str) -> str:
    """SQL: ``v`` (text) is NULL or what ``schema.type_of`` calls a timestamp.

    Python's regular expression and DuckDB's parse, less what ``datetime.fromisoformat``
    refuses and DuckDB takes: hour 24, year 0, offsets of a day or more.
    """
    return (
        f"({v} IS NULL OR (regexp_full_match({v}, '{_TIMESTAMP_RE}') "
        f"AND TRY_CAST({v} AS TIMESTAMPTZ) IS NOT NULL AND substr({v}, 12, 2) < '24' "
        f"AND substr({v}, 1, 4) <> '0000' "
        f"AND coalesce(regexp_extract({v}, '[+-](\\d\\d)(:?\\d\\d)?$', 1), '') < '24'))"
    )


def _kind_code(source: _Source) -> str:
    """SQL: the kind bit of one value of ``source`` (0 for NULL)."""
    v = source.sql
    if not source.json:
        return (
            f"CASE WHEN {v} IS NULL THEN 0 WHEN {_is_timestamp(v)} THEN {TIMESTAMP} "
            f"ELSE {STRING} END"
        )
    text = f"CAST({v} AS VARCHAR)"
    return (
        f"CASE WHEN {v} IS NULL THEN 0 "
        f"WHEN starts_with({text}, '\"') THEN CASE WHEN {_is_timestamp(_string(v))} "
        f"THEN {TIMESTAMP} ELSE {STRING} END "
        f"WHEN {text} IN ('true', 'false') THEN {BOOL} "
        f"WHEN starts_with({text}, '[') OR starts_with({text}, '{{') THEN "
        f"CASE WHEN regexp_matches({text}, {_literal(_EXOTIC_JSON_RE)}) THEN {EXOTIC} "
        f"WHEN starts_with({text}, '[') THEN {ARRAY} ELSE {DEEP if source.deep else OBJECT} END "
        f"WHEN {_fraction(text)} THEN {DOUBLE} "
        f"WHEN TRY_CAST({text} AS BIGINT) IS NULL THEN {BIG_INT} "
        f"ELSE {INT} END"
    )


def _string(v: str) -> str:
    return f"json_extract_string({v}, '$')"


def _value(source: _Source, kinds: int, column: ColumnType) -> str:
    """SQL: ``source``'s value in ``column``'s type, as ``schema.coerce`` makes it."""
    v = source.sql
    if not source.json:
        return f"CAST({v} AS TIMESTAMPTZ)" if column is ColumnType.TIMESTAMP else v
    text = f"CAST({v} AS VARCHAR)"
    number = f"CAST({text} AS DOUBLE)"
    # (kinds, the test that picks them out, in this order, and the value for each column type)
    branches: list[tuple[int, str, dict[ColumnType, str]]] = [
        (
            STRING | TIMESTAMP,
            f"starts_with({text}, '\"')",
            {
                ColumnType.TEXT: _string(v),
                ColumnType.TIMESTAMP: f"CAST({_string(v)} AS TIMESTAMPTZ)",
            },
        ),
        (
            BOOL,
            f"{text} IN ('true', 'false')",
            {
                ColumnType.TEXT: text,
                ColumnType.BOOLEAN: f"{text} = 'true'",
                ColumnType.BIGINT: f"CASE {text} WHEN 'true' THEN 1 WHEN 'false' THEN 0 END",
                ColumnType.DOUBLE: f"CASE {text} WHEN 'true' THEN 1.0 WHEN 'false' THEN 0.0 END",
            },
        ),
        (
            ARRAY | DEEP,
            f"starts_with({text}, '[') OR starts_with({text}, '{{')",
            {
                ColumnType.TEXT: text,
            },
        ),
        (
            DOUBLE,
            f"contains({text}, '.') OR contains({text}, 'e') OR contains({text}, 'E')",
            {ColumnType.TEXT: f"CAST({number} AS VARCHAR)", ColumnType.DOUBLE: number},
        ),
        (
            INT | BIG_INT,
            "TRUE",
            {
                ColumnType.TEXT: text,
                ColumnType.DOUBLE: number,
                ColumnType.BIGINT: f"CAST({text} AS BIGINT)",
            },
        ),
    ]
    used = [(test, sqls[column]) for bits, test, sqls in branches if bits & kinds]
    if len(used) == 1:
        return used[0][1]
    cases = " ".join(f"WHEN {test} THEN {sql}" for test, sql in used[:-1])
    return f"CASE {cases} ELSE {used[-1][1]} END"


# -- structures --------------------------------------------------------------------------------


def _structure(described: Any) -> Any:
    """A ``json_group_structure`` answer as a :data:`Structure` (leaves: sets of type names)."""
    if isinstance(described, dict):
        return {key: _structure(value) for key, value in described.items()}
    if isinstance(described, list):
        return {"ARRAY"}
    return {str(described)}


_EMPTY_OBJECT = frozenset(("JSON", "NULL"))  # what json_group_structure says of {} (and null)


def _merge(into: Structure, more: Structure) -> None:
    for key, shape in more.items():
        current = into.get(key)
        if current is None:
            into[key] = _copy(shape)
        elif isinstance(current, dict) and isinstance(shape, dict):
            _merge(current, shape)
        elif isinstance(current, set) and isinstance(shape, set):
            current |= shape
        elif isinstance(current, dict) and shape <= _EMPTY_OBJECT:
            pass  # json_group_structure calls {} "JSON": an object, empty here
        elif isinstance(shape, dict) and current <= _EMPTY_OBJECT:
            into[key] = _copy(shape)
        else:
            into[key] = {"MIXED"}


def _copy(shape: Any) -> Any:
    if isinstance(shape, dict):
        return {key: _copy(value) for key, value in shape.items()}
    return set(shape)


def _objects(structure: Structure) -> Iterator[tuple[str, ...]]:
    """The objects ``json_keys`` looks into: the roots and the objects they nest (not too deep)."""
    for root in _ROOTS:
        node = structure.get(root)
        if isinstance(node, dict):
            yield (root,)
            yield from _nested(node, (root,), 1)


def _nested(node: Structure, path: tuple[str, ...], depth: int) -> Iterator[tuple[str, ...]]:
    for key, shape in node.items():
        if isinstance(shape, dict) and shape and depth + 1 < _MAX_DEPTH:
            yield (*path, key)
            yield from _nested(shape, (*path, key), depth + 1)


def _leaves(
    node: Structure, path: tuple[str, ...], depth: int
) -> Iterator[tuple[tuple[str, ...], set[str] | None]]:
    """Every leaf under ``node`` (None: an object at the depth limit, kept as JSON text)."""
    for key, shape in node.items():
        if isinstance(shape, dict) and not shape:
            # An object without keys in this batch: {} (skipped) or, in some events, a scalar.
            yield (*path, key), {"JSON"}
        elif isinstance(shape, dict):
            if depth + 1 < _MAX_DEPTH:
                yield from _leaves(shape, (*path, key), depth + 1)
            else:
                yield (*path, key), None
        else:
            yield (*path, key), shape


def _node(structure: Structure, path: Iterable[str]) -> Structure | None:
    node: Any = structure
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def _ensure(structure: Structure, path: Iterable[str]) -> Structure:
    node = structure
    for key in path:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    return node


def _pointer(path: Iterable[str]) -> str:
    """The JSON pointer of ``path`` ('' for the whole message)."""
    return "".join("/" + key.replace("~", "~0").replace("/", "~1") for key in path)


def _column_of(path: tuple[str, ...]) -> str:
    """The column ``rows_of`` gives the leaf at ``path`` (its root first)."""
    root, *keys = path
    prefix = "context" if root == "context" else ""
    for key in keys[:-1]:
        prefix = _joined(prefix, key)
    return _column(prefix, keys[-1], MAX_IDENTIFIER_BYTES, root != "context")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _literal_list(texts: Iterable[str]) -> str:
    return "[" + ", ".join(map(_literal, texts)) + "]"


def _struct_access(path: tuple[str, ...]) -> str:
    """SQL for the value at ``path`` (root first) in a row ``read_json`` read with structs."""
    access = quote(path[0])
    for key in path[1:]:
        access = f"struct_extract({access}, {_literal(key)})"
    return access
