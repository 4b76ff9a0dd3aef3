"""The ``warehouse`` destination on DuckDB and PostgreSQL: contract, loads, failures, deletes."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from destinations.warehouse import WarehouseDestination, WarehouseSettings
from destinations.warehouse.backend import LoadResult, Tables, WarehouseDataError
from destinations.warehouse.duckdb_backend import DuckDBWarehouse
from gateway.destination import Destination, Event, deliver
from gateway.errors import PermanentDeliveryError, RetryableDeliveryError
from gateway.testing import DestinationContract, make_event

BACKENDS = [
    pytest.param("duckdb", id="duckdb"),
    pytest.param("duckdb-python", id="duckdb-python-loader"),
    pytest.param("postgres", id="postgres"),
    pytest.param("postgres-python", id="postgres-python-loader"),
]


def settings_for(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> WarehouseSettings:
    """Settings of a warehouse on ``backend``: a DuckDB file in tmp_path or a fresh database."""
    loader = "python" if backend.endswith("-python") else "sql"
    if backend.startswith("postgres"):
        dsn = request.getfixturevalue("postgres_dsn")
        return WarehouseSettings(backend="postgres", dsn=dsn, loader=loader)
    return WarehouseSettings(path=tmp_path / "warehouse.duckdb", loader=loader)


@pytest.fixture(name="warehouse", params=BACKENDS)
async def _warehouse(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[WarehouseDestination]:
    destination = WarehouseDestination("dw", settings_for(request.param, tmp_path, request))
    await destination.open()
    yield destination
    await destination.close()


async def ids_in(destination: WarehouseDestination, table: str, schema: str = "web") -> list[str]:
    """Every ``id`` in ``schema.table``, sorted (duplicates kept)."""
    rows = await destination.backend.fetch(f'SELECT id FROM "{schema}"."{table}" ORDER BY id')
    return [row[0] for row in rows]


class TestWarehouseContract(DestinationContract):
    """The warehouse passes the destination contract on both backends."""

    @pytest.fixture(name="destination", params=BACKENDS)
    async def _destination(
        self, request: pytest.FixtureRequest, tmp_path: Path
    ) -> WarehouseDestination:
        destination = WarehouseDestination("dw", settings_for(request.param, tmp_path, request))
        await destination.open()
        return destination

    async def delivered(self, destination: Destination[Any]) -> list[dict[str, Any]]:
        assert isinstance(destination, WarehouseDestination)
        found = []
        for schema in ("web", "ios"):
            rows = await destination.backend.fetch(f'SELECT id FROM "{schema}".tracks')
            found.extend({"messageId": row[0]} for row in rows)
        return found


async def test_every_call_lands_in_its_table(warehouse: WarehouseDestination) -> None:
    """A batch of all six calls fills tracks, the event table, identifies, users, pages, ..."""
    batch = [
        make_event(1),
        make_event(2, type="identify", event=None, traits={"email": "a@b.c"}),
        make_event(3, type="page", event=None, name="Home", properties={"path": "/"}),
        make_event(4, type="screen", event=None, name="Cart"),
        make_event(5, type="group", event=None, groupId="g-1", traits={"plan": "pro"}),
        make_event(6, type="alias", event=None, previousId="anon-1"),
    ]
    assert await deliver(warehouse, batch) == [None] * 6
    expected = {
        "tracks": ["web-00000001"],
        "order_completed": ["web-00000001"],
        "identifies": ["web-00000002"],
        "users": ["user-2"],
        "pages": ["web-00000003"],
        "screens": ["web-00000004"],
        "groups": ["web-00000005"],
        "aliases": ["web-00000006"],
    }
    for table, ids in expected.items():
        assert await ids_in(warehouse, table) == ids, table
    (row,) = await warehouse.backend.fetch(
        "SELECT event, event_text, revenue, currency, context_library_name FROM web.order_completed"
    )
    assert tuple(row) == ("order_completed", "Order Completed", 42.5, "EUR", "analytics-python")


async def test_replayed_batch_adds_nothing(warehouse: WarehouseDestination) -> None:
    """Loading the same events again (a retry or a replay) leaves one row per messageId."""
    batch = [make_event(seq) for seq in range(10)]
    await deliver(warehouse, batch)
    await deliver(warehouse, [*batch[3:], make_event(3)])
    assert await ids_in(warehouse, "tracks") == sorted(e.message_id for e in batch)
    assert await ids_in(warehouse, "order_completed") == sorted(e.message_id for e in batch)


async def test_types_widen_across_loads(warehouse: WarehouseDestination) -> None:
    """bool, then int, then float, then text in one property widen its column; old rows read."""
    values: list[Any] = [True, 7, 2.5, "many"]
    for seq, value in enumerate(values):
        assert await deliver(warehouse, [make_event(seq, properties={"qty": value})]) == [None]
    rows = await warehouse.backend.fetch("SELECT qty FROM web.order_completed ORDER BY id")
    stored = [row[0] for row in rows]
    assert [float(text) for text in stored[:3]] == [1.0, 7.0, 2.5]  # "1" or "1.0" per database
    assert stored[3] == "many"
    columns = await warehouse.backend.columns("web", "order_completed")
    assert columns is not None
    assert columns["qty"] == "text"


async def test_timestamp_column_widens_to_text(warehouse: WarehouseDestination) -> None:
    """A property first seen as a timestamp and later as plain text becomes a text column."""
    await deliver(warehouse, [make_event(1, properties={"due": "2026-11-23T10:00:00Z"})])
    columns = await warehouse.backend.columns("web", "order_completed")
    assert columns is not None
    assert columns["due"] == "timestamp"
    await deliver(warehouse, [make_event(2, properties={"due": "tomorrow"})])
    rows = await warehouse.backend.fetch("SELECT due FROM web.order_completed ORDER BY id")
    assert rows[1][0] == "tomorrow"
    assert rows[0][0].startswith("2026-11-23")


async def test_users_keep_latest_traits(warehouse: WarehouseDestination) -> None:
    """users holds each user's latest traits, even when an older identify arrives later."""

    def identify(seq: int, **traits: Any) -> Event:
        return make_event(seq, type="identify", event=None, userId="u-1", traits=traits)

    await deliver(warehouse, [identify(10, plan="pro", email="new@example.com")])
    await deliver(warehouse, [identify(5, plan="free", email="old@example.com", age=30)])
    await deliver(warehouse, [identify(20, company="ACME")])
    (row,) = await warehouse.backend.fetch("SELECT id, plan, email, company FROM web.users")
    assert tuple(row) == ("u-1", "pro", "new@example.com", "ACME")
    assert len(await ids_in(warehouse, "identifies")) == 3


async def test_unstorable_value_is_kept_in_unmapped(warehouse: WarehouseDestination) -> None:
    """A value no column can hold is kept in ``_unmapped`` and counted; the row still loads."""
    counted: list[tuple[str, int]] = []
    warehouse.bind_counter(lambda what, amount: counted.append((what, amount)))
    event = make_event(1, properties={"note": "nul\x00inside", "ok": 1})
    assert await deliver(warehouse, [event]) == [None]
    (row,) = await warehouse.backend.fetch("SELECT ok, _unmapped FROM web.order_completed")
    assert row[0] == 1
    assert orjson.loads(row[1]) == {"note": "nul\x00inside"}
    assert ("unmapped_values", 1) in counted  # the sql loader also counts its python_fallbacks


async def test_sources_get_their_own_schemas(warehouse: WarehouseDestination) -> None:
    """Events of each source land in the schema named after it."""
    await deliver(warehouse, [make_event(1, source="web"), make_event(2, source="Mobile App")])
    assert await ids_in(warehouse, "tracks", "web") == ["web-00000001"]
    assert await ids_in(warehouse, "tracks", "mobile_app") == ["Mobile App-00000002"]


async def test_delete_user_removes_their_rows(warehouse: WarehouseDestination) -> None:
    """delete_user removes the user's rows from every table and users, and counts them."""
    batch = [make_event(seq, userId="u-gone" if seq < 2 else "u-stays") for seq in range(4)]
    batch.append(make_event(9, type="identify", event=None, userId="u-gone", traits={"x": 1}))
    await deliver(warehouse, batch)
    assert await warehouse.delete_user("u-gone") == 2 + 2 + 1 + 1
    assert await ids_in(warehouse, "tracks") == ["web-00000002", "web-00000003"]
    assert await ids_in(warehouse, "users") == []
    assert await ids_in(warehouse, "identifies") == []


class _PickyWarehouse(DuckDBWarehouse):
    """A DuckDB warehouse that refuses any load containing the messageId ``web-00000666``."""

    async def load(self, tables: Tables) -> LoadResult:
        ids = {row.values.get("id") for t in tables.values() for rs in t.values() for row in rs}
        if "web-00000666" in ids:
            raise WarehouseDataError("value out of range in row web-00000666")
        return await super().load(tables)


async def test_data_error_dead_letters_only_the_bad_event(tmp_path: Path) -> None:
    """When the database refuses a batch for its data, only the event at fault fails."""
    destination = WarehouseDestination("dw", WarehouseSettings(path=tmp_path / "w.duckdb"))
    destination.backend = _PickyWarehouse(
        tmp_path / "w.duckdb", max_columns=1000, release_file_after_s=0
    )
    await destination.open()
    batch = [make_event(1), make_event(666), make_event(2)]
    outcomes: Sequence[Any] = await deliver(destination, batch)
    assert outcomes[0] is None
    assert outcomes[2] is None
    assert isinstance(outcomes[1], PermanentDeliveryError)
    assert "out of range" in outcomes[1].reason
    assert await ids_in(destination, "tracks") == ["web-00000001", "web-00000002"]
    await destination.close()


async def test_file_held_by_another_process_is_retried(tmp_path: Path) -> None:
    """A DuckDB file another process holds makes the load retryable, and it succeeds later."""
    path = tmp_path / "w.duckdb"
    destination = WarehouseDestination("dw", WarehouseSettings(path=path, release_file_after_s=0))
    await destination.open()
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
        "time.sleep(60)",
        str(path),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert await holder.stdout.readline() == b"held\n"
        (outcome,) = await deliver(destination, [make_event(1)])
        assert isinstance(outcome, RetryableDeliveryError)
        assert "another process" in outcome.reason
    finally:
        holder.kill()
        await holder.communicate()
    deadline = time.monotonic() + 10
    while (await deliver(destination, [make_event(1)]))[0] is not None:
        assert time.monotonic() < deadline
    assert await ids_in(destination, "tracks") == ["web-00000001"]
    await destination.close()


async def test_default_batch_applies_when_config_has_none(tmp_path: Path) -> None:
    """A warehouse without a ``batch`` key gets micro-batches of 5,000 events or 2 seconds."""
    from gateway.config import parse_config
    from gateway.plugins import make_plugin_manager
    from tests.conftest import config_data

    data = config_data(tmp_path)
    data["destinations"] = [
        {"name": "dw", "type": "warehouse", "settings": {"path": str(tmp_path / "w.duckdb")}},
        {"name": "dw2", "type": "warehouse", "batch": {"max_events": 10}},
    ]
    config = parse_config(data, env={}, plugin_manager=make_plugin_manager())
    assert (config.destinations[0].batch.max_events, config.destinations[0].batch.max_age_s) == (
        5000,
        2.0,
    )
    assert config.destinations[1].batch.max_events == 10


async def test_duckdb_file_is_released_when_loads_pause(tmp_path: Path) -> None:
    """The file stays open across loads and is closed after release_file_after_s of quiet."""
    path = tmp_path / "w.duckdb"
    destination = WarehouseDestination("dw", WarehouseSettings(path=path, release_file_after_s=0.2))
    await destination.open()
    backend = destination.backend
    assert isinstance(backend, DuckDBWarehouse)
    await deliver(destination, [make_event(1)])
    assert backend._conn is not None  # kept for the next load
    deadline = time.monotonic() + 5
    while backend._conn is not None:
        assert time.monotonic() < deadline, "the file was never released"
        await asyncio.sleep(0.05)
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c",
        "import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=True); "
        "print(c.execute('SELECT count(*) FROM web.tracks').fetchone()[0])",
        str(path), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await holder.communicate()
    assert out == b"1\n"
    await deliver(destination, [make_event(2)])
    assert await ids_in(destination, "tracks") == ["web-00000001", "web-00000002"]
    await destination.close()


async def test_a_file_held_by_another_process_does_not_stop_the_start(tmp_path: Path) -> None:
    """Opening on a DuckDB file another process holds succeeds (loads wait until it is free)."""
    from destinations.warehouse.duckdb_backend import DuckDBWarehouse

    path = tmp_path / "held.duckdb"
    holder_code = (
        "import duckdb, sys\n"
        f"c = duckdb.connect({str(path)!r})\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        holder_code,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert (await holder.stdout.readline()).strip() == b"held"
        warehouse = DuckDBWarehouse(path, max_columns=1000)
        await warehouse.open()  # raised ConnectionError before, so the gateway would not start
        await warehouse.close()
    finally:
        holder.kill()
        await holder.communicate()
