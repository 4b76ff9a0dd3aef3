"""Tests for destinations/warehouse/postgres_backend.py against a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest

from destinations.warehouse.backend import WarehouseDataError
from destinations.warehouse.plan import TablePlan, merge_users
from destinations.warehouse.postgres_backend import PostgresWarehouse
from destinations.warehouse.schema import ColumnType, Row, rows_of
from gateway.testing import make_event

ORDER_COLUMNS = {
    "id": ColumnType.TEXT,
    "received_at": ColumnType.TIMESTAMP,
    "sent_at": ColumnType.TIMESTAMP,
    "timestamp": ColumnType.TIMESTAMP,
    "original_timestamp": ColumnType.TIMESTAMP,
    "uuid_ts": ColumnType.TIMESTAMP,
    "anonymous_id": ColumnType.TEXT,
    "user_id": ColumnType.TEXT,
    "event": ColumnType.TEXT,
    "event_text": ColumnType.TEXT,
    "context_ip": ColumnType.TEXT,
    "context_library_name": ColumnType.TEXT,
    "context_library_version": ColumnType.TEXT,
    "context_locale": ColumnType.TEXT,
    "order_id": ColumnType.TEXT,
    "revenue": ColumnType.DOUBLE,
    "currency": ColumnType.TEXT,
}


def message(seq: int, **fields: Any) -> dict[str, Any]:
    """The normalized message of ``make_event(seq, **fields)``."""
    return make_event(seq, **fields).message


def identify(seq: int, user_id: str, traits: Mapping[str, Any]) -> dict[str, Any]:
    """An identify message for ``user_id`` received ``seq`` seconds after make_event(0)."""
    return message(seq, type="identify", userId=user_id, traits=dict(traits))


def tables_of(*messages: Mapping[str, Any], schema: str = "web") -> dict[str, Any]:
    """The messages' rows grouped as the destination groups them (users merged)."""
    by_table: dict[str, list[Row]] = {}
    for msg in messages:
        for row in rows_of(msg):
            by_table.setdefault(row.table, []).append(row)
    if "users" in by_table:
        by_table["users"] = merge_users(by_table["users"])
    return {schema: by_table}


async def table_names(warehouse: PostgresWarehouse, schema: str = "web") -> set[str]:
    """The tables of ``schema``."""
    rows = await warehouse.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
    )
    return {name for (name,) in rows}


async def sql_types(warehouse: PostgresWarehouse, table: str) -> dict[str, str]:
    """The SQL types of ``web.<table>``'s columns as PostgreSQL reports them."""
    rows = await warehouse.fetch(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'web' AND table_name = $1",
        table,
    )
    return dict(rows)


async def count(warehouse: PostgresWarehouse, table: str, schema: str = "web") -> int:
    """The number of rows in ``schema.table``."""
    [(n,)] = await warehouse.fetch(f'SELECT count(*) FROM "{schema}"."{table}"')
    return int(n)


async def test_first_load_creates_the_standard_tables_with_their_types(
    postgres_warehouse: PostgresWarehouse,
) -> None:
    """A first load creates the schema, tracks, the event table, identifies and users, typed."""
    result = await postgres_warehouse.load(
        tables_of(message(1), identify(2, "user-1", {"email": "a@example.com", "age": 41}))
    )

    assert result.rows == 4
    assert result.unmapped_values == 0
    assert sorted(result.schema_changes) == [
        f"web.{t} created" for t in ("identifies", "order_completed", "tracks", "users")
    ]
    assert await table_names(postgres_warehouse) == {
        "tracks",
        "order_completed",
        "identifies",
        "users",
    }
    assert await postgres_warehouse.columns("web", "order_completed") == ORDER_COLUMNS
    tracks = await postgres_warehouse.columns("web", "tracks")
    assert tracks is not None
    assert "revenue" not in tracks
    assert tracks["event_text"] is ColumnType.TEXT
    assert await postgres_warehouse.columns("web", "users") == {
        "id": ColumnType.TEXT,
        "received_at": ColumnType.TIMESTAMP,
        "email": ColumnType.TEXT,
        "age": ColumnType.BIGINT,
        "uuid_ts": ColumnType.TIMESTAMP,
    }
    types = await sql_types(postgres_warehouse, "order_completed")
    assert types["revenue"] == "double precision"
    assert types["received_at"] == "timestamp with time zone"
    assert types["order_id"] == "text"
    assert (await sql_types(postgres_warehouse, "users"))["age"] == "bigint"
    assert await postgres_warehouse.fetch(
        "SELECT id, event, event_text, revenue, received_at FROM web.order_completed"
    ) == [
        (
            "web-00000001",
            "order_completed",
            "Order Completed",
            42.5,
            datetime(2026, 11, 23, 0, 29, 47, 123000, tzinfo=UTC),
        )
    ]
    assert await postgres_warehouse.columns("web", "missing") is None


async def test_loading_the_same_batch_twice_keeps_one_row_per_id(
    postgres_warehouse: PostgresWarehouse,
) -> None:
    """Loads are idempotent on id, also when one batch holds an id twice."""
    batch = [message(seq) for seq in (1, 2, 3, 3)]
    first = await postgres_warehouse.load(tables_of(*batch))
    second = await postgres_warehouse.load(tables_of(*batch))

    assert first.rows == second.rows == 8
    assert second.schema_changes == []
    assert await count(postgres_warehouse, "tracks") == 3
    assert await count(postgres_warehouse, "order_completed") == 3


async def test_columns_widen_and_old_rows_stay_readable(
    postgres_warehouse: PostgresWarehouse,
) -> None:
    """boolean -> bigint -> double -> text and timestamp -> text widen in place, values kept."""
    loads = [
        {"flag": True, "shipped_at": "2026-01-02T03:04:05.678Z"},
        {"flag": 5, "shipped_at": "2026-01-02T03:04:05Z"},
        {"flag": 2.5},
        {"flag": "many", "shipped_at": "soon"},
    ]
    expected_types = [
        ColumnType.BOOLEAN,
        ColumnType.BIGINT,
        ColumnType.DOUBLE,
        ColumnType.TEXT,
    ]
    for seq, (properties, kind) in enumerate(zip(loads, expected_types, strict=True), 1):
        result = await postgres_warehouse.load(tables_of(message(seq, properties=properties)))
        columns = await postgres_warehouse.columns("web", "order_completed")
        assert columns is not None
        assert columns["flag"] is kind
        if seq > 1:
            assert f"web.order_completed flag -> {kind}" in result.schema_changes

    assert (await sql_types(postgres_warehouse, "order_completed"))["shipped_at"] == "text"
    assert await postgres_warehouse.fetch(
        "SELECT flag, shipped_at FROM web.order_completed ORDER BY id"
    ) == [
        ("1", "2026-01-02T03:04:05.678000Z"),
        ("5", "2026-01-02T03:04:05.000000Z"),
        ("2.5", None),
        ("many", "soon"),
    ]


async def test_a_narrower_value_is_stored_in_a_wider_column(
    postgres_warehouse: PostgresWarehouse,
) -> None:
    """A boolean arriving for a double column is stored as a number, without a schema change."""
    await postgres_warehouse.load(tables_of(message(1, properties={"score": 1.5})))
    result = await postgres_warehouse.load(tables_of(message(2, properties={"score": True})))

    assert result.schema_changes == []
    assert await postgres_warehouse.fetch("SELECT score FROM web.order_completed ORDER BY id") == [
        (1.5,),
        (1.0,),
    ]


async def test_users_keep_the_newest_traits(postgres_warehouse: PostgresWarehouse) -> None:
    """An older identify loaded later changes nothing; a newer one keeps traits it omits."""
    await postgres_warehouse.load(tables_of(identify(5, "u1", {"plan": "pro", "email": "a@x"})))
    await postgres_warehouse.load(tables_of(identify(1, "u1", {"plan": "free", "seats": 3})))
    assert await postgres_warehouse.fetch("SELECT plan, email, seats FROM web.users") == [
        ("pro", "a@x", None)
    ]

    await postgres_warehouse.load(tables_of(identify(9, "u1", {"plan": "enterprise"})))

    assert await postgres_warehouse.fetch("SELECT id, plan, email, received_at FROM web.users") == [
        ("u1", "enterprise", "a@x", datetime(2026, 11, 23, 0, 29, 55, 123000, tzinfo=UTC))
    ]
    assert await count(postgres_warehouse, "identifies") == 3


async def test_a_string_with_nul_goes_to_unmapped(postgres_warehouse: PostgresWarehouse) -> None:
    """PostgreSQL cannot store NUL in text, so that value lands in _unmapped and the row loads."""
    result = await postgres_warehouse.load(
        tables_of(message(1, properties={"note": "a\x00b", "ok": 1}))
    )

    assert result.unmapped_values == 1
    [(ok, unmapped)] = await postgres_warehouse.fetch(
        "SELECT ok, _unmapped FROM web.order_completed"
    )
    assert ok == 1
    assert orjson.loads(unmapped) == {"note": "a\x00b"}


async def test_new_keys_of_a_full_table_go_to_unmapped(
    postgres_warehouse: PostgresWarehouse, postgres_dsn: str
) -> None:
    """A table at max_columns gets no new columns; new keys are kept in _unmapped."""
    await postgres_warehouse.load(tables_of(message(1)))
    full = PostgresWarehouse(postgres_dsn, max_columns=len(ORDER_COLUMNS))
    await full.open()
    try:
        result = await full.load(tables_of(message(2, properties={"coupon": "XMAS", "qty": 2})))
    finally:
        await full.close()

    assert result.unmapped_values == 2
    columns = await postgres_warehouse.columns("web", "order_completed")
    assert columns is not None
    assert {"coupon", "qty"}.isdisjoint(columns)
    [(unmapped,)] = await postgres_warehouse.fetch(
        "SELECT _unmapped FROM web.order_completed WHERE id = 'web-00000002'"
    )
    assert orjson.loads(unmapped) == {"coupon": "XMAS", "qty": 2}


async def test_delete_user_removes_the_users_rows_everywhere(
    postgres_warehouse: PostgresWarehouse, postgres_dsn: str
) -> None:
    """delete_user empties tracks, event tables, identifies and users of one user; the count."""
    # make_event(seq) belongs to user-<seq % 7>: seqs 1 and 8 are user-1's, 2 is user-2's.
    await postgres_warehouse.load(
        tables_of(
            message(1),
            message(2),
            message(8),
            identify(3, "user-1", {"plan": "pro"}),
            identify(4, "user-2", {"plan": "free"}),
        )
    )
    conn = await asyncpg.connect(postgres_dsn)
    try:  # a view has a user_id column too, but rows are not deleted through it
        await conn.execute("CREATE VIEW web.user_orders AS SELECT user_id FROM web.tracks")
    finally:
        await conn.close()

    deleted = await postgres_warehouse.delete_user("user-1")

    assert deleted == 2 + 2 + 1 + 1
    for table in ("tracks", "order_completed", "identifies"):
        assert await postgres_warehouse.fetch(f"SELECT DISTINCT user_id FROM web.{table}") == [
            ("user-2",)
        ]
    assert await postgres_warehouse.fetch("SELECT id FROM web.users") == [("user-2",)]
    assert await postgres_warehouse.delete_user("user-1") == 0


async def test_concurrent_loads_into_a_new_table_both_succeed(postgres_dsn: str) -> None:
    """Two pools loading new columns into the same brand-new table at once never race on DDL."""
    left = PostgresWarehouse(postgres_dsn, max_columns=1000)
    right = PostgresWarehouse(postgres_dsn, max_columns=1000)
    await left.open()
    await right.open()
    try:
        for round_ in range(6):
            event = f"Signup {round_}"
            await asyncio.gather(
                left.load(tables_of(message(2 * round_, event=event, properties={"a": True}))),
                right.load(tables_of(message(2 * round_ + 1, event=event, properties={"b": 1}))),
            )
            columns = await left.columns("web", f"signup_{round_}")
            assert columns is not None
            assert {"a", "b"} <= columns.keys()
            assert await count(left, f"signup_{round_}") == 2
        assert await count(left, "tracks") == 12
    finally:
        await left.close()
        await right.close()


class SlowWarehouse(PostgresWarehouse):
    """Once ``armed``, sleeps in the database after loading ``web.tracks`` (its last table)."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn, max_columns=1000)
        self.armed = False
        self.sleeping = asyncio.Event()

    async def _insert(self, conn: Any, schema: str, plan: TablePlan) -> None:
        await super()._insert(conn, schema, plan)
        if self.armed and (schema, plan.table) == ("web", "tracks"):
            self.sleeping.set()
            await conn.execute("SELECT pg_sleep(30)")


async def wait_for_sleeper(dsn: str) -> int:
    """The pid of the backend running pg_sleep, once it runs."""
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(500):
            pid = await conn.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' "
                "AND state = 'active'"
            )
            if pid is not None:
                return int(pid)
            await asyncio.sleep(0.01)
    finally:
        await conn.close()
    raise AssertionError("the load never reached pg_sleep")


async def assert_left_as_before(warehouse: PostgresWarehouse) -> None:
    """Only the first load's rows and columns exist: nothing of the interrupted one."""
    assert await table_names(warehouse) == {"tracks", "order_completed"}
    assert await table_names(warehouse, "other") == set()
    assert await warehouse.fetch("SELECT count(*) FROM pg_namespace WHERE nspname = 'other'") == [
        (0,)
    ]
    assert await count(warehouse, "tracks") == 1
    columns = await warehouse.columns("web", "tracks")
    assert columns is not None
    assert "context_campaign_name" not in columns


def interrupted_batch() -> dict[str, Any]:
    """A batch that adds a schema, a table, a column and rows, for the tests to interrupt."""
    campaign = {"campaign": {"name": "xmas"}}
    return {
        **tables_of(message(2, event="Signed Up", context=campaign)),
        **tables_of(message(3), schema="other"),
    }


async def test_a_data_error_mid_load_leaves_nothing_behind(
    postgres_warehouse: PostgresWarehouse,
) -> None:
    """When the last table is refused, the tables, columns and rows before it vanish."""
    await postgres_warehouse.load(tables_of(message(1)))
    batch = interrupted_batch()
    # A plan allowing more columns than PostgreSQL's 1,600: the server itself refuses the table.
    postgres_warehouse.max_columns = 2000
    wide = {f"c{i}": i for i in range(1700)}
    batch["web"]["zzz_refused"] = [Row("zzz_refused", {"id": "x", **wide})]

    with pytest.raises(WarehouseDataError, match="PostgreSQL refused the load") as info:
        await postgres_warehouse.load(batch)

    assert isinstance(info.value.__cause__, asyncpg.PostgresError)
    await assert_left_as_before(postgres_warehouse)


async def test_a_terminated_connection_mid_load_leaves_nothing_behind(postgres_dsn: str) -> None:
    """A backend killed mid-load raises ConnectionError, rolls back, and the next load works."""
    warehouse = SlowWarehouse(postgres_dsn)
    await warehouse.open()
    try:
        await warehouse.load(tables_of(message(1)))
        warehouse.armed = True
        load = asyncio.create_task(warehouse.load(interrupted_batch()))
        await warehouse.sleeping.wait()
        pid = await wait_for_sleeper(postgres_dsn)
        conn = await asyncpg.connect(postgres_dsn)
        try:
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await conn.close()

        with pytest.raises(ConnectionError, match="PostgreSQL connection failed"):
            await load

        await assert_left_as_before(warehouse)
        warehouse.armed = False
        result = await warehouse.load(tables_of(message(4, event="Signed Up")))
        assert result.rows == 2
    finally:
        await warehouse.close()


async def test_a_cancelled_load_leaves_nothing_behind(postgres_dsn: str) -> None:
    """Cancelling a load mid-transaction rolls it back and the warehouse still closes cleanly."""
    warehouse = SlowWarehouse(postgres_dsn)
    await warehouse.open()
    try:
        await warehouse.load(tables_of(message(1)))
        warehouse.armed = True
        load = asyncio.create_task(warehouse.load(interrupted_batch()))
        await warehouse.sleeping.wait()
        await wait_for_sleeper(postgres_dsn)

        load.cancel()
        with pytest.raises(asyncio.CancelledError):
            await load

        await assert_left_as_before(warehouse)
    finally:
        await asyncio.wait_for(warehouse.close(), timeout=10)


async def test_open_fails_with_connection_error_without_the_password() -> None:
    """open() on a port where nothing listens raises ConnectionError that hides the password."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    warehouse = PostgresWarehouse(
        f"postgresql://eventgate:s3cret-pw@127.0.0.1:{port}/warehouse", max_columns=1000
    )

    with pytest.raises(ConnectionError) as info:
        await warehouse.open()

    assert f"127.0.0.1:{port}/warehouse" in str(info.value)
    assert "s3cret-pw" not in str(info.value)
    assert "s3cret-pw" not in str(info.value.__cause__)


async def test_a_closed_warehouse_raises_connection_error(postgres_dsn: str) -> None:
    """Using a warehouse that is not open is a ConnectionError, which the caller retries."""
    warehouse = PostgresWarehouse(postgres_dsn, max_columns=1000)

    with pytest.raises(ConnectionError, match="not open"):
        await warehouse.load(tables_of(message(1)))
