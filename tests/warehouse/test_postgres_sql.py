"""The SQL-built PostgreSQL load (``PostgresSqlWarehouse``) against the Python path it should equal.

The Python path (``rows_of``, ``plan_table``, ``PostgresWarehouse.load``) defines the behaviour: a
differential test loads the same varied batches both ways, into two databases of one server, and
compares every table, column type and value; the cases the SQL path leaves to the Python path are
checked the same way, and counted.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import pytest

from destinations.warehouse import WarehouseDestination, WarehouseSettings, _tables
from destinations.warehouse.backend import LoadResult, WarehouseBackend, WarehouseDataError
from destinations.warehouse.postgres_backend import PostgresWarehouse
from destinations.warehouse.postgres_sql import PostgresSqlWarehouse
from gateway.destination import Event, deliver
from gateway.errors import PermanentDeliveryError
from gateway.testing import make_event
from tests.warehouse.test_duckdb_sql import _STAMPS, _batch


async def dump(backend: WarehouseBackend) -> dict[str, Any]:
    """Every table of every eventgate schema: column types, rows by id as text (no uuid_ts)."""
    out: dict[str, Any] = {}
    tables = await backend.fetch(
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') "
        "AND table_schema NOT LIKE 'pg\\_%'"
    )
    for schema, table in tables:
        columns = await backend.fetch(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = $1 AND table_name = $2 ORDER BY column_name",
            schema,
            table,
        )
        names = [name for name, _ in columns]
        text = ", ".join(f'"{name}"::text' for name in names)
        by_id = {}
        for row in await backend.fetch(f'SELECT {text} FROM "{schema}"."{table}"'):
            values = dict(zip(names, row, strict=True))
            if "uuid_ts" in values:
                assert values.pop("uuid_ts") is not None
            by_id[values["id"]] = values
        out[f"{schema}.{table}"] = {"columns": dict(columns), "rows": by_id}
    return out


class Both:
    """A Python-path warehouse and a SQL-path one, in two databases, loaded alike and compared."""

    def __init__(self, python_dsn: str, sql_dsn: str, max_columns: int = 1000) -> None:
        self.python = PostgresWarehouse(python_dsn, max_columns=max_columns)
        self.sql = PostgresSqlWarehouse(sql_dsn, max_columns=max_columns)

    async def load(self, batch: Sequence[Event]) -> dict[str, Any]:
        """Load ``batch`` both ways; both results and warehouses must be equal. The dump."""
        expected = await self.python.load(_tables(batch))
        got = await self.sql.load_events(batch)
        assert (got.rows, got.unmapped_values) == (expected.rows, expected.unmapped_values)
        assert sorted(got.schema_changes) == sorted(expected.schema_changes)
        python, sql = await dump(self.python), await dump(self.sql)
        assert sql.keys() == python.keys()
        for table in python:
            assert sql[table]["columns"] == python[table]["columns"], table
            for key, row in python[table]["rows"].items():
                assert sql[table]["rows"].get(key) == row, (table, key)
            assert sql[table]["rows"].keys() == python[table]["rows"].keys(), table
        return sql


_databases = itertools.count(1)


async def _open(dsn: str, postgres_server: Any, max_columns: int = 1000) -> Both:
    other = f"sql_path_{next(_databases)}"
    postgres_server.psql(f"CREATE DATABASE {other};")
    both = Both(dsn, str(postgres_server.get_uri(other)), max_columns)
    await both.python.open()
    await both.sql.open()
    return both


@pytest.fixture(name="both")
async def _both(postgres_dsn: str, postgres_server: Any) -> AsyncIterator[Both]:
    both = await _open(postgres_dsn, postgres_server)
    yield both
    await both.python.close()
    await both.sql.close()


async def test_nested_objects_arrays_and_reserved_names(both: Both) -> None:
    """Nested objects, arrays of anything, reserved and odd names load as the Python path's."""
    properties = {
        "shipTo": {"zipCode": "10115", "geo": {"lat": 52.5, "lng": 13.4}},
        "skus": ["a", "b"],
        "lines": [{"sku": "a", "qty": 2, "note": 'say "hi"\n'}],
        "id": 7,
        "event": "x",
        "2FA Enabled": True,
        "select": "s",
        "empty": {},
        "nothing": None,
        "prénom": "Zoé",
        "名前": "花子",
        "it's": "quoted",
        "tiny": [1e-7, 1e16, -0.0],
        "deep": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}, "n": 0.0},
    }
    tables = await both.load([make_event(1, properties=properties)])
    (row,) = tables["web.order_completed"]["rows"].values()
    assert row["ship_to_zip_code"] == "10115"
    assert row["skus"] == '["a","b"]'
    assert row["tiny"] == "[1e-7,1e+16,-0.0]"  # orjson's text, as the Python path stores it
    assert row["deep_a_b_c_d_e_f"] == '{"g":1}'
    assert row["lines"] == '[{"sku":"a","qty":2,"note":"say \\"hi\\"\\n"}]'
    assert (row["_id"], row["_event"], row["_2fa_enabled"], row["_select"]) == (
        "7",
        "x",
        "true",
        "s",
    )
    assert both.sql.fallbacks == {}


async def test_each_call_has_its_table(both: Both) -> None:
    """Identify (with users), page, screen, group and alias rows equal the Python path's."""
    await both.load(
        [
            make_event(3, type="identify", event=None, userId="u1", traits={"email": "a@b.c"}),
            make_event(4, type="page", event=None, name="Home", properties={"path": "/"}),
            make_event(5, type="screen", event=None, name="Cart", properties={}),
            make_event(6, type="group", event=None, groupId="g1", traits={"plan": "pro"}),
            make_event(7, type="alias", event=None, previousId="anon-1"),
            make_event(8, type="page", event=None, name="Pricing", properties={"name": "P"}),
            make_event(9, type="track", event="Users", properties={"n": 1}),
        ]
    )
    assert both.sql.fallbacks == {}


async def test_existing_columns_widen_and_values_coerce(both: Both) -> None:
    """Columns widen across loads and narrower values are stored in the wider column's type."""
    await both.load([make_event(1, properties={"n": 2, "flag": "yes", "when": "2026-11-23T10:00"})])
    await both.load(
        [
            make_event(2, properties={"n": 2.5, "flag": True, "when": "2026-11-24 08:00:00+02"}),
            make_event(3, properties={"n": True, "flag": 1, "when": "2026-11-23"}),
        ]
    )
    tables = await both.load([make_event(4, properties={"n": 10**19, "flag": ["a", 2.5]})])
    assert tables["web.order_completed"]["columns"]["n"] == "text"
    for number, value in enumerate([True, 3, 2.5, 10**19, 7]):
        event = make_event(10 + number, properties={"qty": value, "when": _STAMPS[number]})
        await both.load([event])
    assert both.sql.fallbacks == {}


async def test_users_merge_later_received_wins(both: Both) -> None:
    """Several identifies of one user in a batch and across batches: the newest traits win."""

    def identify(seq: int, received: str, **traits: Any) -> Event:
        return make_event(
            seq, type="identify", event=None, userId="u", receivedAt=received, traits=traits
        )

    await both.load(
        [
            identify(1, "2026-11-23T00:00:02.000Z", plan="pro"),
            identify(2, "2026-11-23T00:00:01.000Z", plan="free", email="a@b.c"),
            identify(3, "2026-11-23T00:00:02.000Z", email="later@b.c"),
        ]
    )
    await both.load([identify(4, "2026-11-22T00:00:00.000Z", plan="older", age=3)])
    assert both.sql.fallbacks == {}


async def test_differential_varied_batches(both: Both) -> None:
    """Hundreds of varied events in batches, both ways, equal after every batch and replay."""
    rng = random.Random(20261123)
    batches = [_batch(rng, start, 60) for start in range(0, 480, 60)]
    for batch in batches:
        await both.load(batch)
    await both.load(batches[2])  # replayed: nothing added
    await both.load([*batches[3][:5], *batches[4][:5]])
    assert both.sql.fallbacks == {}


def _pretty(event: Event) -> Event:
    """``event`` with its JSON indented (line breaks between tokens), as a client might send."""
    raw = orjson.dumps(event.message, option=orjson.OPT_INDENT_2)
    return Event(seq=event.seq, source=event.source, message_id=event.message_id, raw=raw)


async def test_differential_fallbacks(both: Both) -> None:
    """What the SQL path leaves to the Python path still loads exactly as the Python path."""
    rng = random.Random(7)
    await both.load([make_event(90, properties={"label": "text", "shipTo": {"zip": "1"}})])
    first = _batch(rng, 0, 40)
    cases: dict[str, list[Event]] = {
        "a messageId repeated in the batch or missing": [*first[:3], first[0]],
        "keys that snake_case alike": [  # the later key wins: one each way
            make_event(1, properties={"sampleText": 1, "sample_text": 2}),
            make_event(2, properties={"sample_text": 3, "sampleText": 4}),
        ],
        "a key holding an object in some events and a value in others": [
            make_event(4, properties={"shipTo": "Lyon"}),
            make_event(7, properties={"shipTo": {"zipCode": "69002"}}),
        ],
        "a float in exponent form going into a text column": [
            make_event(5, properties={"label": 1e16})
        ],
        "a track without an event name": [make_event(6, event=None)],
        "-0.0, or a value that is not JSON": [make_event(8, properties={"n": -0.0})],
        "a common column with a value of the wrong type": [make_event(9, sentAt="yesterday")],
        "a string holding NUL, or JSON text with line breaks": [
            make_event(10, userId="u\x00x", properties={"bad": "a\x00b"}),
            _pretty(make_event(12, properties={"x": 1})),
        ],
    }
    for reason, batch in cases.items():
        await both.load(batch)
        assert both.sql.fallbacks.get(reason) == 1, (reason, both.sql.fallbacks)
    await both.load(
        [
            make_event(11, properties={"sampleText": 1, "sample_text": 2}),
            make_event(12, properties={"sampleText": 3}),
            make_event(13, properties={"sample_text": 4}),
            make_event(14, type="page", event=None, name="Home", properties={"name": "P"}),
            make_event(15, type="page", event=None, properties={"name": "P"}),
        ]
    )
    assert sum(both.sql.fallbacks.values()) == len(cases)  # the same precedence everywhere


async def test_a_table_at_max_columns_falls_back(postgres_dsn: str, postgres_server: Any) -> None:
    """New keys beyond max_columns go to _unmapped through the Python path."""
    both = await _open(postgres_dsn, postgres_server, max_columns=32)
    try:
        await both.load([make_event(1, properties={f"c{i}": i for i in range(30)})])
        assert both.sql.fallbacks == {"a table at max_columns": 1}
    finally:
        await both.python.close()
        await both.sql.close()


async def test_concurrent_sql_loads_into_a_new_table_both_succeed(postgres_dsn: str) -> None:
    """Two SQL-path pools adding columns to one brand-new table at once never race on DDL."""
    left = PostgresSqlWarehouse(postgres_dsn, max_columns=1000)
    right = PostgresSqlWarehouse(postgres_dsn, max_columns=1000)
    await left.open()
    await right.open()
    try:
        for round_ in range(6):
            event = f"Signup {round_}"
            await asyncio.gather(
                left.load_events([make_event(2 * round_, event=event, properties={"a": True})]),
                right.load_events([make_event(2 * round_ + 1, event=event, properties={"b": 1})]),
            )
            columns = await left.columns("web", f"signup_{round_}")
            assert columns is not None
            assert {"a", "b"} <= columns.keys()
        assert await left.fetch("SELECT count(*) FROM web.tracks") == [(12,)]
    finally:
        await left.close()
        await right.close()


class _PickySqlWarehouse(PostgresSqlWarehouse):
    """Refuses any load holding the event ``web-00000666``, as a database refuses a bad value."""

    async def load_events(self, events: Sequence[Event]) -> LoadResult:
        if any(event.message_id == "web-00000666" for event in events):
            raise WarehouseDataError("value out of range in row web-00000666")
        return await super().load_events(events)


async def test_data_error_dead_letters_only_the_bad_event(postgres_dsn: str) -> None:
    """When PostgreSQL refuses a batch for its data, only the event at fault is dead-lettered."""
    settings = WarehouseSettings(backend="postgres", dsn=postgres_dsn)
    destination = WarehouseDestination("dw", settings)
    destination.backend = _PickySqlWarehouse(postgres_dsn, max_columns=1000)
    await destination.open()
    try:
        outcomes: Sequence[Any] = await deliver(
            destination, [make_event(1), make_event(666), make_event(2)]
        )
        assert outcomes[0] is None
        assert outcomes[2] is None
        assert isinstance(outcomes[1], PermanentDeliveryError)
        rows = await destination.backend.fetch("SELECT id FROM web.tracks ORDER BY id")
        assert rows == [("web-00000001",), ("web-00000002",)]
    finally:
        await destination.close()


async def test_a_timestamp_postgresql_refuses_fails_the_load_whole(
    postgres_dsn: str,
) -> None:
    """A value PostgreSQL refuses mid-load rolls back everything the load did, as a data error."""
    warehouse = PostgresSqlWarehouse(postgres_dsn, max_columns=1000)
    await warehouse.open()
    try:
        await warehouse.load_events([make_event(1)])
        bad = make_event(2, properties={"when": "2026-11-23T10:00:00+23:59"})
        with pytest.raises(WarehouseDataError):
            await warehouse.load_events([make_event(3, event="New Event"), bad])
        assert await warehouse.fetch("SELECT count(*) FROM web.tracks") == [(1,)]
        assert await warehouse.columns("web", "new_event") is None
    finally:
        await warehouse.close()


async def test_a_replayed_share_is_inserted_again_with_on_conflict(postgres_dsn: str) -> None:
    """A share meeting ids already loaded is redone with ON CONFLICT: only the new rows land."""
    warehouse = PostgresSqlWarehouse(postgres_dsn, max_columns=1000)
    await warehouse.open()
    try:
        await warehouse.load_events([make_event(1), make_event(2)])
        result = await warehouse.load_events([make_event(2), make_event(3)])
        assert result.rows == 4  # offered, as the Python path counts them
        rows = await warehouse.fetch("SELECT id FROM web.order_completed ORDER BY id")
        assert rows == [("web-00000001",), ("web-00000002",), ("web-00000003",)]
        assert await warehouse.fetch("SELECT count(*) FROM web.tracks") == [(3,)]
        await warehouse.load_events([make_event(4)])  # ON CONFLICT for a while: still loads
        assert await warehouse.fetch("SELECT count(*) FROM web.tracks") == [(4,)]
        assert warehouse.fallbacks == {}
    finally:
        await warehouse.close()
