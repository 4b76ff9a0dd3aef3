"""The built-in ``warehouse`` destination: Segment's warehouse schema in DuckDB or PostgreSQL.

Each batch the router hands over becomes one load: one transaction that adds the tables and
columns it needs, widens columns whose values outgrew them, and inserts the rows, skipping ids
already loaded. See ``docs/warehouse.md`` for the layout and the rules.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from destinations.warehouse.backend import LoadResult, WarehouseBackend, WarehouseDataError
from destinations.warehouse.duckdb_backend import DuckDBWarehouse
from destinations.warehouse.duckdb_sql import DuckDBSqlWarehouse
from destinations.warehouse.naming import identifier, snake_case
from destinations.warehouse.plan import merge_users
from destinations.warehouse.postgres_backend import PostgresWarehouse
from destinations.warehouse.postgres_sql import PostgresSqlWarehouse
from destinations.warehouse.schema import Row, rows_of
from gateway.destination import BatchDestination, Destination, Event
from gateway.errors import DeliveryError, PermanentDeliveryError, RetryableDeliveryError
from gateway.pipeline.integrations import IntegrationKind
from gateway.plugins import hookimpl

__all__ = ["WarehouseDestination", "WarehouseSettings", "register_destination_types"]

log = structlog.get_logger("eventgate.destinations.warehouse")

RawEventLoader = DuckDBSqlWarehouse | PostgresSqlWarehouse
"""The sql loaders: backends with ``load_events`` and ``fallbacks``, handed the raw events."""
RawEventLoaders = (DuckDBSqlWarehouse, PostgresSqlWarehouse)


class WarehouseSettings(BaseModel):
    """Settings of the ``warehouse`` destination."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["duckdb", "postgres"] = Field(
        "duckdb", description="duckdb: an embedded file; postgres: a PostgreSQL server."
    )
    path: Path = Field(
        Path("data/warehouse.duckdb"), description="The DuckDB file (backend: duckdb)."
    )
    dsn: SecretStr | None = Field(
        None,
        description="postgresql://user:password@host:port/database (backend: postgres); "
        "put the password in ${ENV}.",
    )
    max_columns: int = Field(
        1000,
        ge=32,
        le=1600,
        description="Columns a table may grow to; later new keys go to its _unmapped column.",
    )
    release_file_after_s: float | None = Field(
        1.0,
        ge=0,
        description="duckdb: close the file once no load has used it for this long, so other "
        "processes can open it (0: after every load; null: keep it open).",
    )
    pool_size: int = Field(2, ge=1, le=64, description="postgres: connections to keep open.")
    loader: Literal["sql", "python"] = Field(
        "sql",
        description="sql lets the database flatten and type the events (DuckDB: about 3x "
        "faster; PostgreSQL: about 2x); python flattens them in Python first (the reference the "
        "sql loader is tested against).",
    )
    threads: int | None = Field(
        1, ge=1, description="duckdb: threads DuckDB may use (null: one per core)."
    )

    @model_validator(mode="after")
    def _dsn_for_postgres(self) -> WarehouseSettings:
        if self.backend == "postgres" and self.dsn is None:
            raise ValueError("backend postgres needs a dsn, e.g. postgresql://user@host/db")
        return self


class WarehouseDestination(BatchDestination[WarehouseSettings]):
    """Loads events into Segment-style warehouse tables, one schema per source.

    Loads are one at a time per destination (the router's shard workers share it), so schema
    changes never race inside one gateway; the PostgreSQL backend also takes an advisory lock per
    table for several gateways. A load the database refuses for its data is split into one load
    per event, so only the event at fault is dead-lettered.
    """

    type_name: ClassVar[str] = "warehouse"
    display_name: ClassVar[str] = "Warehouse"
    settings_model: ClassVar[type[BaseModel]] = WarehouseSettings
    default_batch: ClassVar[Mapping[str, float] | None] = {"max_events": 5000, "max_age_s": 2.0}
    supports_user_deletion: ClassVar[bool] = True
    integration_kind: ClassVar[IntegrationKind] = "warehouse"

    def __init__(self, name: str, settings: WarehouseSettings) -> None:
        super().__init__(name, settings)
        self.backend = _backend_for(settings)
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        """Connect to the warehouse (a clear error at startup if it is unreachable)."""
        await self.backend.open()

    async def close(self) -> None:
        """Wait for a load in progress, then disconnect."""
        async with self._lock:
            await self.backend.close()

    async def send_batch(self, events: Sequence[Event]) -> Sequence[DeliveryError | None] | None:
        """Load ``events`` in one transaction; on a data error, one transaction per event."""
        # Flattened before taking the lock, so one shard's batch is flattened while another's
        # load runs in the database; in a thread, so the router's event loop (every other
        # destination's deliveries) is not stalled for the ~65 ms a 5,000-event batch takes.
        if isinstance(self.backend, RawEventLoaders):
            return await self._send_raw(self.backend, events)
        tables = await asyncio.to_thread(_tables, events)
        async with self._lock:
            try:
                self._report(await self._load(tables))
            except WarehouseDataError as exc:
                if len(events) == 1:
                    return [_refused(exc)]
                log.warning("warehouse.batch_split", destination=self.name, error=str(exc))
                return [await self._load_alone(event) for event in events]
        return None

    async def _send_raw(
        self, backend: RawEventLoader, events: Sequence[Event]
    ) -> Sequence[DeliveryError | None] | None:
        """The sql loader's :meth:`send_batch`: the database reads the events' own JSON."""
        async with self._lock:
            try:
                await self._load_raw(backend, events)
            except WarehouseDataError as exc:
                if len(events) == 1:
                    return [_refused(exc)]
                log.warning("warehouse.batch_split", destination=self.name, error=str(exc))
            else:
                return None
            outcomes: list[DeliveryError | None] = []
            for event in events:
                try:
                    await self._load_raw(backend, [event])
                except WarehouseDataError as exc:
                    outcomes.append(_refused(exc))
                else:
                    outcomes.append(None)
            return outcomes

    async def _load_raw(self, backend: RawEventLoader, events: Sequence[Event]) -> None:
        before = sum(backend.fallbacks.values())
        try:
            result = await backend.load_events(events)
        except (ConnectionError, OSError, TimeoutError) as exc:
            raise RetryableDeliveryError(f"warehouse unreachable: {exc}") from exc
        finally:
            # Shares of a batch the sql loader handed to the Python path (rare cases, listed
            # in docs/warehouse.md): same result, slower; counted so a trend shows.
            fell_back = sum(backend.fallbacks.values()) - before
            if fell_back:
                self.count("python_fallbacks", fell_back)
        self._report(result)

    async def delete_user(self, user_id: str) -> int:
        """Delete ``user_id``'s rows from every table; the number of rows deleted."""
        async with self._lock:
            try:
                return await self.backend.delete_user(user_id)
            except (ConnectionError, OSError, TimeoutError) as exc:
                raise RetryableDeliveryError(f"warehouse unreachable: {exc}") from exc

    async def _load(self, tables: dict[str, dict[str, list[Row]]]) -> LoadResult:
        try:
            return await self.backend.load(tables)
        except (ConnectionError, OSError, TimeoutError) as exc:
            raise RetryableDeliveryError(f"warehouse unreachable: {exc}") from exc

    async def _load_alone(self, event: Event) -> DeliveryError | None:
        try:
            self._report(await self._load(_tables([event])))
        except WarehouseDataError as exc:
            return _refused(exc)
        except DeliveryError as exc:
            return exc
        return None

    def _report(self, result: LoadResult) -> None:
        for change in result.schema_changes:
            log.info("warehouse.schema_changed", destination=self.name, change=change)
        if result.unmapped_values:
            self.count("unmapped_values", result.unmapped_values)
            log.warning(
                "warehouse.values_unmapped", destination=self.name, count=result.unmapped_values
            )


def _backend_for(settings: WarehouseSettings) -> WarehouseBackend:
    if settings.backend == "postgres":
        assert settings.dsn is not None  # checked by the settings model
        postgres = PostgresSqlWarehouse if settings.loader == "sql" else PostgresWarehouse
        return postgres(
            settings.dsn.get_secret_value(),
            max_columns=settings.max_columns,
            pool_size=settings.pool_size,
        )
    if settings.loader == "sql":
        return DuckDBSqlWarehouse(
            settings.path,
            max_columns=settings.max_columns,
            release_file_after_s=settings.release_file_after_s,
            threads=settings.threads,
        )
    return DuckDBWarehouse(
        settings.path,
        max_columns=settings.max_columns,
        release_file_after_s=settings.release_file_after_s,
    )


@functools.lru_cache(maxsize=1024)
def schema_name(source: str) -> str:
    """The warehouse schema of the source named ``source``."""
    return identifier(snake_case(source))


def _tables(events: Sequence[Event]) -> dict[str, dict[str, list[Row]]]:
    """The batch's rows by schema and table; one row per ``id`` per table, users merged."""
    tables: dict[str, dict[str, list[Row]]] = {}
    seen: set[tuple[str, str, Any]] = set()
    for event in events:
        schema = schema_name(event.source)
        by_table = tables.setdefault(schema, {})
        for row in rows_of(event.message):
            key = (schema, row.table, row.values.get("id"))
            if row.table != "users" and key in seen:
                continue  # the same messageId twice in one batch: load it once
            seen.add(key)
            by_table.setdefault(row.table, []).append(row)
    for by_table in tables.values():
        if "users" in by_table:
            by_table["users"] = merge_users(by_table["users"])
    return tables


def _refused(exc: WarehouseDataError) -> PermanentDeliveryError:
    return PermanentDeliveryError(f"the warehouse refused the event: {exc}", response=str(exc))


@hookimpl(trylast=True)
def register_destination_types() -> list[type[Destination[Any]]]:
    """Register the built-in ``warehouse`` destination type."""
    return [WarehouseDestination]
