"""The SQL-built DuckDB load (``DuckDBSqlWarehouse``) against the Python path it should equal.

The Python path (``rows_of``, ``plan_table``, ``DuckDBWarehouse``) defines the behaviour: the
scenarios of ``test_warehouse_destination.py`` and ``test_schema.py`` run against a destination
loading through ``load_events``, and a differential test loads the same varied batches both ways
and compares every table, column type and value.
"""

from __future__ import annotations

import asyncio
import random
import re
import sys
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from destinations.warehouse import WarehouseDestination, WarehouseSettings, _tables
from destinations.warehouse.backend import LoadResult, WarehouseBackend, WarehouseDataError
from destinations.warehouse.duckdb_backend import DuckDBWarehouse
from destinations.warehouse.duckdb_sql import DuckDBSqlWarehouse, _is_timestamp
from destinations.warehouse.schema import ColumnType, type_of
from gateway.destination import Destination, Event, deliver
from gateway.errors import PermanentDeliveryError, RetryableDeliveryError
from gateway.events import RequestContext, normalize
from gateway.testing import DestinationContract, make_event

# -- a destination loading through the SQL path --------------------------------------------------


class SqlWarehouseDestination(WarehouseDestination):
    """The ``warehouse`` destination on DuckDB with its default ``loader: sql``, plus ``sql``."""

    @property
    def sql(self) -> DuckDBSqlWarehouse:
        """The backend, which loads the raw events in SQL (its ``fallbacks`` are checked)."""
        assert isinstance(self.backend, DuckDBSqlWarehouse)
        return self.backend


@pytest.fixture(name="warehouse")
async def _warehouse(tmp_path: Path) -> AsyncIterator[SqlWarehouseDestination]:
    destination = SqlWarehouseDestination("dw", WarehouseSettings(path=tmp_path / "w.duckdb"))
    await destination.open()
    yield destination
    await destination.close()


async def ids_in(destination: WarehouseDestination, table: str, schema: str = "web") -> list[str]:
    rows = await destination.backend.fetch(f'SELECT id FROM "{schema}"."{table}" ORDER BY id')
    return [row[0] for row in rows]


async def dump(backend: WarehouseBackend) -> dict[str, Any]:
    """Every table: its column types, and its rows by id as text (uuid_ts left out)."""
    out: dict[str, Any] = {}
    tables = await backend.fetch(
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_catalog = current_database()"
    )
    for schema, table in tables:
        columns = await backend.fetch(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = "
            "$1 AND table_name = $2 AND table_catalog = current_database() ORDER BY column_name",
            schema,
            table,
        )
        names = [name for name, _ in columns]
        text = ", ".join(f'"{name}"::VARCHAR' for name in names)
        rows = await backend.fetch(f'SELECT {text} FROM "{schema}"."{table}"')
        by_id = {}
        for row in rows:
            values = dict(zip(names, row, strict=True))
            if "uuid_ts" in values:
                assert values.pop("uuid_ts") is not None
            by_id[values["id"]] = values
        out[f"{schema}.{table}"] = {"columns": dict(columns), "rows": by_id}
    return out


# -- the destination's scenarios ------------------------------------------------------------------


class TestSqlWarehouseContract(DestinationContract):
    """The SQL-path destination passes the destination contract."""

    @pytest.fixture(name="destination")
    async def _destination(self, tmp_path: Path) -> SqlWarehouseDestination:
        destination = SqlWarehouseDestination("dw", WarehouseSettings(path=tmp_path / "w.duckdb"))
        await destination.open()
        return destination

    async def delivered(self, destination: Destination[Any]) -> list[dict[str, Any]]:
        assert isinstance(destination, WarehouseDestination)
        found: list[dict[str, Any]] = []
        for schema in ("web", "ios"):
            rows = await destination.backend.fetch(f'SELECT id FROM "{schema}".tracks')
            found.extend({"messageId": row[0]} for row in rows)
        return found


async def test_every_call_lands_in_its_table(warehouse: SqlWarehouseDestination) -> None:
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
    assert warehouse.sql.fallbacks == {}


async def test_replayed_batch_adds_nothing(warehouse: SqlWarehouseDestination) -> None:
    batch = [make_event(seq) for seq in range(10)]
    await deliver(warehouse, batch)
    await deliver(warehouse, [*batch[3:], make_event(3)])
    assert await ids_in(warehouse, "tracks") == sorted(e.message_id for e in batch)
    assert await ids_in(warehouse, "order_completed") == sorted(e.message_id for e in batch)
    assert warehouse.sql.fallbacks == {"a messageId repeated within the batch, or missing": 1}
    await deliver(warehouse, batch[:4])  # a replay: a plain INSERT fails, ON CONFLICT skips
    assert await ids_in(warehouse, "tracks") == sorted(e.message_id for e in batch)
    assert warehouse.sql._conflict_loads > 0


async def test_types_widen_across_loads(warehouse: SqlWarehouseDestination) -> None:
    values: list[Any] = [True, 7, 2.5, "many"]
    for seq, value in enumerate(values):
        assert await deliver(warehouse, [make_event(seq, properties={"qty": value})]) == [None]
    rows = await warehouse.backend.fetch("SELECT qty FROM web.order_completed ORDER BY id")
    assert [row[0] for row in rows] == ["1.0", "7.0", "2.5", "many"]
    columns = await warehouse.backend.columns("web", "order_completed")
    assert columns is not None
    assert columns["qty"] == "text"
    assert warehouse.sql.fallbacks == {}


async def test_timestamp_column_widens_to_text(warehouse: SqlWarehouseDestination) -> None:
    await deliver(warehouse, [make_event(1, properties={"due": "2026-11-23T10:00:00Z"})])
    columns = await warehouse.backend.columns("web", "order_completed")
    assert columns is not None
    assert columns["due"] == "timestamp"
    await deliver(warehouse, [make_event(2, properties={"due": "tomorrow"})])
    rows = await warehouse.backend.fetch("SELECT due FROM web.order_completed ORDER BY id")
    assert rows[1][0] == "tomorrow"
    assert rows[0][0].startswith("2026-11-23")


async def test_users_keep_latest_traits(warehouse: SqlWarehouseDestination) -> None:
    def identify(seq: int, **traits: Any) -> Event:
        return make_event(seq, type="identify", event=None, userId="u-1", traits=traits)

    await deliver(warehouse, [identify(10, plan="pro", email="new@example.com")])
    await deliver(warehouse, [identify(5, plan="free", email="old@example.com", age=30)])
    await deliver(warehouse, [identify(20, company="ACME")])
    (row,) = await warehouse.backend.fetch("SELECT id, plan, email, company, age FROM web.users")
    assert tuple(row) == ("u-1", "pro", "new@example.com", "ACME", None)  # the older one: skipped
    assert len(await ids_in(warehouse, "identifies")) == 3
    await deliver(warehouse, [identify(31, plan="team"), identify(30, plan="old", age=31)])
    (row,) = await warehouse.backend.fetch("SELECT plan, age FROM web.users")
    assert tuple(row) == ("team", 31)
    assert warehouse.sql.fallbacks == {}


async def test_unstorable_value_is_kept_in_unmapped(warehouse: SqlWarehouseDestination) -> None:
    counted: list[tuple[str, int]] = []
    warehouse.bind_counter(lambda what, amount: counted.append((what, amount)))
    event = make_event(1, properties={"note": "nul\x00inside", "ok": 1})
    assert await deliver(warehouse, [event]) == [None]
    (row,) = await warehouse.backend.fetch("SELECT ok, _unmapped FROM web.order_completed")
    assert row[0] == 1
    assert orjson.loads(row[1]) == {"note": "nul\x00inside"}
    # The real send path also counts the share it handed to the Python path.
    assert counted == [("python_fallbacks", 1), ("unmapped_values", 1)]
    assert warehouse.sql.fallbacks == {"a string holds NUL": 1}


async def test_sources_get_their_own_schemas(warehouse: SqlWarehouseDestination) -> None:
    await deliver(warehouse, [make_event(1, source="web"), make_event(2, source="Mobile App")])
    assert await ids_in(warehouse, "tracks", "web") == ["web-00000001"]
    assert await ids_in(warehouse, "tracks", "mobile_app") == ["Mobile App-00000002"]


async def test_delete_user_removes_their_rows(warehouse: SqlWarehouseDestination) -> None:
    batch = [make_event(seq, userId="u-gone" if seq < 2 else "u-stays") for seq in range(4)]
    batch.append(make_event(9, type="identify", event=None, userId="u-gone", traits={"x": 1}))
    await deliver(warehouse, batch)
    assert await warehouse.delete_user("u-gone") == 2 + 2 + 1 + 1
    assert await ids_in(warehouse, "tracks") == ["web-00000002", "web-00000003"]
    assert await ids_in(warehouse, "users") == []
    assert await ids_in(warehouse, "identifies") == []


class _PickySqlWarehouse(DuckDBSqlWarehouse):
    """Refuses any load holding the messageId ``web-00000666``."""

    async def load_events(self, events: Sequence[Event]) -> LoadResult:
        if any(event.message_id == "web-00000666" for event in events):
            raise WarehouseDataError("value out of range in row web-00000666")
        return await super().load_events(events)


async def test_data_error_dead_letters_only_the_bad_event(tmp_path: Path) -> None:
    destination = SqlWarehouseDestination("dw", WarehouseSettings(path=tmp_path / "w.duckdb"))
    destination.backend = _PickySqlWarehouse(
        tmp_path / "w.duckdb", max_columns=1000, release_file_after_s=0
    )
    await destination.open()
    outcomes: Sequence[Any] = await deliver(
        destination, [make_event(1), make_event(666), make_event(2)]
    )
    assert outcomes[0] is None
    assert outcomes[2] is None
    assert isinstance(outcomes[1], PermanentDeliveryError)
    assert "out of range" in outcomes[1].reason
    assert await ids_in(destination, "tracks") == ["web-00000001", "web-00000002"]
    await destination.close()


async def test_file_held_by_another_process_is_retried(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    settings = WarehouseSettings(path=path, release_file_after_s=0)
    destination = SqlWarehouseDestination("dw", settings)
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


# -- the Python path's rules (test_schema.py), through the SQL path -----------------------------


@pytest.fixture(name="both")
async def _both(tmp_path: Path) -> AsyncIterator[Both]:
    both = Both(tmp_path)
    await both.open()
    yield both
    await both.close()


class Both:
    """A Python-path warehouse and a SQL-path one, loaded alike and compared."""

    def __init__(self, tmp_path: Path, max_columns: int = 1000) -> None:
        self.python = DuckDBWarehouse(
            tmp_path / "python.duckdb", max_columns=max_columns, release_file_after_s=None
        )
        self.sql = DuckDBSqlWarehouse(
            tmp_path / "sql.duckdb", max_columns=max_columns, release_file_after_s=None
        )

    async def open(self) -> None:
        await self.python.open()
        await self.sql.open()

    async def close(self) -> None:
        await self.python.close()
        await self.sql.close()

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


async def test_nested_objects_arrays_and_reserved_names(both: Both) -> None:
    properties = {
        "shipTo": {"zipCode": "10115", "geo": {"lat": 52.5, "lng": 13.4}},
        "skus": ["a", "b"],
        "lines": [{"sku": "a", "qty": 2}],
        "id": 7,
        "event": "x",
        "2FA Enabled": True,
        "select": "s",
        "empty": {},
        "nothing": None,
        "prénom": "Zoé",
        "名前": "花子",
    }
    tables = await both.load([make_event(1, properties=properties)])
    (row,) = tables["web.order_completed"]["rows"].values()
    assert row["ship_to_zip_code"] == "10115"
    assert row["skus"] == '["a","b"]'
    assert (row["_id"], row["_event"], row["_2fa_enabled"], row["_select"]) == (
        "7",
        "x",
        "true",
        "s",
    )
    assert row["id"] == "web-00000001"
    assert "empty" not in row
    assert "nothing" not in row
    assert both.sql.fallbacks == {}


async def test_each_call_has_its_table(both: Both) -> None:
    await both.load(
        [
            make_event(3, type="identify", event=None, traits={"email": "a@b.c"}),
            make_event(4, type="page", event=None, name="Home", properties={"path": "/"}),
            make_event(5, type="screen", event=None, name="Cart", properties={}),
            make_event(6, type="group", event=None, groupId="g1", traits={"plan": "pro"}),
            make_event(7, type="alias", event=None, previousId="anon-1"),
            make_event(8, type="page", event=None, name="Pricing", properties={"name": "P"}),
            make_event(9, type="page", event=None, properties={"name": "From properties"}),
        ]
    )
    assert both.sql.fallbacks == {}


async def test_existing_columns_widen_and_values_coerce(both: Both) -> None:
    """A float into a bigint column widens it; booleans become numbers; text stays text."""
    await both.load([make_event(1, properties={"n": 2, "flag": "yes", "when": "2026-11-23T10:00"})])
    await both.load(
        [
            make_event(2, properties={"n": 2.5, "flag": True, "when": "2026-11-24 08:00:00+02"}),
            make_event(3, properties={"n": True, "flag": 1.5, "when": "2026-11-23"}),
        ]
    )
    tables = await both.load([make_event(4, properties={"n": 10**19, "flag": ["a", 2.5]})])
    assert tables["web.order_completed"]["columns"]["n"] == "VARCHAR"
    assert both.sql.fallbacks == {}
    await both.load([make_event(5, properties={"n": [1e16]})])  # orjson: [1e+16]
    assert both.sql.fallbacks == {"JSON text DuckDB writes unlike orjson": 1}


async def test_known_difference_array_in_a_string_key(warehouse: SqlWarehouseDestination) -> None:
    """A key that only ever held strings, now an array in its text column: DuckDB's JSON text.

    The one value the SQL path stores unlike the Python path (documented in the module): the
    key is read as VARCHAR (its text is all a text column needs), so an array is not looked at,
    and DuckDB writes floats of 1e16 and more (or below 1e-4) and control characters (\\u001F)
    its own way.
    """
    await deliver(warehouse, [make_event(1, properties={"note": "text"})])
    await deliver(warehouse, [make_event(2, properties={"note": ["a", 2.5, 1e16]})])
    rows = await warehouse.backend.fetch("SELECT note FROM web.order_completed ORDER BY id")
    assert [row[0] for row in rows] == ["text", '["a",2.5,10000000000000000.0]']  # orjson: 1e+16


async def test_overflow_goes_to_unmapped(tmp_path: Path) -> None:
    both = Both(tmp_path, max_columns=32)
    await both.open()
    try:
        many = {f"c{i}": i for i in range(30)}
        await both.load([make_event(1, properties=many)])
        assert both.sql.fallbacks == {"a table at max_columns": 1}
    finally:
        await both.close()


async def test_reserved_column_with_a_wrong_type_goes_to_unmapped(both: Both) -> None:
    await both.load([make_event(1, sentAt="yesterday")])
    assert both.sql.fallbacks == {"a text value in the common column sent_at": 1}


async def test_nul_strings_and_ids(both: Both) -> None:
    await both.load([make_event(1, userId="u\x00x", properties={"bad": "a\x00b", "good": 1})])
    await both.load([make_event(2, messageId="m\x001")])
    assert both.sql.fallbacks == {"a string holds NUL": 2}


async def test_users_merge_later_received_wins(both: Both) -> None:
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


# -- differential: varied batches both ways -------------------------------------------------------

_WORDS = ["alpha", "Beta gamma", "δέλτα", "日本語", 'quote " and \\', "line\nbreak", "", "😀"]
_KEYS = ["price", "sampleText", "name", "plan", "prénom", "名前", "id", "user_id",
         "received_at", "event_text", "2fa Enabled", "select", "Mixed Case Key", "a.b", "x/y",
         "tags", "note"]  # fmt: skip
_STAMPS = [
    "2026-11-23T10:00:00.000Z",
    "2026-11-23 10:00:00+02:00",
    "2026-11-23T10:00",
    "2026-11-23T24:00:00Z",
    "2026-13-01T00:00:00Z",
    "2026-11-23",
]


def _scalar(rng: random.Random) -> Any:
    kind = rng.randrange(9)
    if kind == 0:
        return rng.choice(_WORDS)
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.randrange(-1000, 1000)
    if kind == 3:
        return rng.choice([2.5, 0.1 + 0.2, 1234.5678, 2.0, -0.5, 1e15])
    if kind == 4:
        return rng.choice(_STAMPS)
    if kind == 5:
        return None
    if kind == 6:
        return [rng.choice(_WORDS), rng.randrange(10), 2.5, {"k": "v"}][: rng.randrange(5)]
    if kind == 7:
        return rng.choice([[], ["x", None], [[1, 2], {}]])
    return rng.choice([2**63 + 5, -(2**62)])


def _properties(rng: random.Random, event: str) -> dict[str, Any]:
    keys = rng.sample(_KEYS, rng.randrange(len(_KEYS)))
    properties: dict[str, Any] = {}
    for key in keys:
        # The kind of a key's value depends on the event and the key: it varies between events,
        # but an object stays an object (a key both would go through the Python path).
        seeded = random.Random(f"{event}/{key}")
        kind = seeded.randrange(4)
        if kind == 0:
            properties[key] = _scalar(rng) if key != "tags" else [rng.choice(_WORDS)]
        elif kind == 1:
            properties[key] = rng.choice([rng.randrange(100), rng.random() * 100, True])
        elif kind == 2:
            properties[key] = rng.choice(_WORDS + _STAMPS)
        else:
            properties[key] = rng.choice([rng.randrange(9), rng.choice(_WORDS)])
    if rng.random() < 0.3:
        deep: dict[str, Any] = {"leaf": rng.randrange(3)}
        for level in range(9):
            deep = {f"l{level}": deep, "v": level}
        properties["deep"] = deep
    if rng.random() < 0.3:
        properties["shipTo"] = {"zipCode": rng.choice(["10115", 75001]), "empty": {}}
    if rng.random() < 0.3:
        properties["obj"] = rng.choice([{}, {"inner": rng.choice(_WORDS), "n": rng.randrange(5)}])
    return properties


def _context(rng: random.Random) -> dict[str, Any]:
    context: dict[str, Any] = {"library": {"name": "analytics.js", "version": "5.2.0"}}
    if rng.random() < 0.7:
        context["page"] = {"path": "/p", "url": "https://x.test/p", "title": rng.choice(_WORDS)}
    if rng.random() < 0.5:
        context["locale"] = rng.choice(["fr-FR", "ja-JP"])
    if rng.random() < 0.3:
        context["campaign"] = {"name": "spring", "source": rng.choice(["ads", 7])}
    if rng.random() < 0.2:
        context["traits"] = {"plan": rng.choice(["pro", "free"]), "seats": rng.randrange(9)}
    return context


def _message(rng: random.Random, number: int) -> dict[str, Any]:
    call = rng.choice(["track"] * 6 + ["identify", "identify", "page", "screen", "group", "alias"])
    message: dict[str, Any] = {
        "type": call,
        "messageId": f"m-{number:05d}",
        "anonymousId": f"anon-{rng.randrange(20)}",
        "context": _context(rng),
        "timestamp": (datetime(2026, 11, 23, tzinfo=UTC) + timedelta(seconds=number)).isoformat(),
    }
    if rng.random() < 0.7 or call == "alias":
        message["userId"] = f"user-{rng.randrange(6)}"
    if rng.random() < 0.2:
        message["channel"] = rng.choice(["server", "browser"])
    event = rng.choice(["Order Completed", "Product Viewed", "order completed", "Users", "2FA On"])
    if call == "track":
        message["event"] = event
        message["properties"] = _properties(rng, event)
        if rng.random() < 0.1:
            message["properties"]["context_ip"] = rng.choice(["10.0.0.1", 12])
            message["properties"]["channel"] = rng.choice(["web", 3])
    elif call in ("identify", "group"):
        message["traits"] = _properties(rng, call)
        if call == "group":
            message["groupId"] = f"g-{rng.randrange(3)}"
            message["traits"]["group_id"] = "own"
    elif call in ("page", "screen"):
        message["properties"] = _properties(rng, call)
        if rng.random() < 0.7:
            message["name"] = rng.choice(["Home", "Cart"])
        if rng.random() < 0.3:
            message["category"] = "Docs"
    else:
        message["previousId"] = f"anon-{rng.randrange(20)}"
    return message


def _batch(rng: random.Random, start: int, size: int) -> list[Event]:
    events = []
    base = datetime(2026, 11, 23, 12, tzinfo=UTC)
    for number in range(start, start + size):
        received = base + timedelta(seconds=rng.randrange(-50, 50))
        request = RequestContext(
            source=rng.choice(["web", "Mobile App"]), received_at=received, client_ip="10.1.1.1"
        )
        normalized = normalize(_message(rng, number), request)
        events.append(
            Event(
                seq=number,
                source=normalized.source,
                message_id=normalized.message_id,
                raw=normalized.body,
            )
        )
    return events


async def test_differential_varied_batches(both: Both) -> None:
    """Hundreds of varied events in batches, both ways, equal after every batch."""
    rng = random.Random(20261123)
    batches = [_batch(rng, start, 60) for start in range(0, 480, 60)]
    for number, batch in enumerate(batches):
        await both.load(batch)
        assert both.sql.fallbacks == {}, number
    # Types changing across batches: one key bool, then int, then float, then text.
    for number, value in enumerate([True, 3, 2.5, "many", 7]):
        event = make_event(1000 + number, properties={"qty": value, "when": _STAMPS[number]})
        await both.load([event])
    assert both.sql.fallbacks == {}
    await both.load(batches[2])  # replayed: nothing added (ON CONFLICT after a plain INSERT fails)
    await both.load([*batches[3][:5], *batches[4][:5]])
    assert both.sql.fallbacks == {}


async def test_differential_fallbacks(both: Both) -> None:
    """What the SQL path leaves to the Python path still loads exactly as the Python path."""
    rng = random.Random(7)
    first = _batch(rng, 0, 40)
    await both.load(first)
    cases: dict[str, list[Event]] = {
        "a messageId repeated within the batch, or missing": [*first[:3], first[0]],
        "keys of one object that snake_case alike": [
            make_event(1, properties={"sampleText": 1, "sample_text": 2})
        ],
        "DuckDB could not read the batch (InvalidInputException)": [
            make_event(4, properties={"shipTo": "Lyon"}),
            make_event(7, properties={"shipTo": {"zipCode": "69002"}}),
        ],
        "JSON text DuckDB writes unlike orjson": [make_event(5, properties={"tags": [1e-7]})],
        "a track without an event name": [make_event(6, event=None)],
    }
    for reason, batch in cases.items():
        await both.load(batch)
        assert both.sql.fallbacks.get(reason) == 1, (reason, both.sql.fallbacks)
    await both.load(_batch(rng, 100, 40))  # and the SQL path takes over again
    await both.load([make_event(8, properties={"shipTo": "Lyon"})])  # a scalar where {} was
    assert sum(both.sql.fallbacks.values()) == len(cases)


# -- timestamps: the SQL test equals type_of ------------------------------------------------------


def test_timestamp_rule_matches_python() -> None:
    """``_is_timestamp`` (SQL) says timestamp exactly where ``schema.type_of`` does."""
    rng = random.Random(3)
    samples = list(_STAMPS)
    for _ in range(3000):
        year = rng.choice(["0000", "0001", "1999", "2026", "9999"])
        month, day = f"{rng.randrange(0, 14):02d}", f"{rng.randrange(0, 33):02d}"
        hour, minute = f"{rng.randrange(0, 26):02d}", f"{rng.randrange(0, 62):02d}"
        second = rng.choice(["", f":{rng.randrange(0, 62):02d}"])
        if second and rng.random() < 0.5:
            second += "." + "7" * rng.randrange(1, 11)
        zone = rng.choice(
            ["", "Z", f"+{rng.randrange(0, 26):02d}", f"-{rng.randrange(0, 26):02d}:30", "+0530"]
        )
        samples.append(f"{year}-{month}-{day}{rng.choice('T ')}{hour}:{minute}{second}{zone}")
    conn = duckdb.connect()
    conn.execute("SET TimeZone = 'UTC'")
    got = conn.execute(
        f"SELECT v, {_is_timestamp('v')} FROM (SELECT unnest(?) AS v)", [samples]
    ).fetchall()
    wrong = [(v, sql) for v, sql in got if sql != (type_of(v) is ColumnType.TIMESTAMP)]
    assert wrong == []
    assert re.fullmatch(r"\d{4}.*", samples[0])
