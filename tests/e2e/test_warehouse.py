"""The warehouse destination through the real process: SDK events queried with SQL, kill -9."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import duckdb
import pytest
from segment.analytics import Client

from tests.conftest import WRITE_KEY
from tests.e2e.conftest import Gateway
from tests.e2e.test_crash import send_until

FUNNEL = [
    ("Product Viewed", 20),
    ("Product Added", 12),
    ("Checkout Started", 8),
    ("Order Completed", 5),
]


def duckdb_gateway(
    root: Path, batch: dict[str, float] | None = None, dsn: str | None = None
) -> Gateway:
    """A gateway whose only destination is a warehouse: DuckDB in ``root``, or ``dsn``'s."""
    settings = {"path": str(root / "warehouse.duckdb")}
    if dsn is not None:
        settings = {"backend": "postgres", "dsn": dsn}
    destination: dict[str, Any] = {
        "name": "dw",
        "type": "warehouse",
        "settings": settings,
        # The test's own queries hold the file for a moment; retry soon after.
        "retry": {"base_delay_s": 0.05, "max_delay_s": 0.2},
        "circuit": {"enabled": False},
    }
    if batch is not None:
        destination["batch"] = batch
    return Gateway(root, destinations=[destination])


def query(path: Path, sql: str, timeout_s: float = 30) -> list[tuple[Any, ...]]:
    """Run ``sql`` on the DuckDB file, waiting while the gateway holds it for a load."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with duckdb.connect(str(path), read_only=True) as conn:
                return conn.execute(sql).fetchall()
        except (duckdb.IOException, duckdb.CatalogException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def query_postgres(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    """Run ``sql`` on the PostgreSQL database at ``dsn``."""

    async def fetch() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(dsn)
        try:
            return [tuple(row) for row in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def wait_for_rows(
    path: Path, table: str, count: int, timeout_s: float = 60, dsn: str | None = None
) -> None:
    """Wait until ``web.<table>`` has ``count`` rows (in DuckDB at ``path``, or at ``dsn``)."""
    deadline = time.monotonic() + timeout_s
    sql = f"SELECT count(*) FROM web.{table}"
    while True:
        try:
            rows = query(path, sql, timeout_s=1) if dsn is None else query_postgres(dsn, sql)
            if rows[0][0] >= count:
                return
        except (duckdb.Error, asyncpg.PostgresError):
            pass
        assert time.monotonic() < deadline, f"web.{table} never reached {count} rows"
        time.sleep(0.2)


@pytest.mark.parametrize("backend", ["duckdb", "postgres"])
def test_sdk_funnel_and_users(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """Ecommerce events and identifies from Segment's SDK are queryable: a funnel, users rows."""
    dsn = request.getfixturevalue("postgres_dsn") if backend == "postgres" else None
    gateway = duckdb_gateway(tmp_path, {"max_events": 500, "max_age_s": 0.2}, dsn)
    gateway.start()
    try:
        errors: list[Any] = []
        client = Client(WRITE_KEY, host=gateway.url, on_error=lambda e, _b: errors.append(e))
        run = uuid.uuid4().hex[:6]
        for event, users in FUNNEL:
            for n in range(users):
                client.track(
                    f"{run}-u{n}",
                    event,
                    {"product_id": "p-1", "price": 19.99, "currency": "EUR", "isGift": n % 2 == 0},
                )
        for n in range(3):
            client.identify(f"{run}-u{n}", {"email": f"u{n}@example.com", "plan": "free"})
        client.flush()
        for n in range(2):
            client.identify(f"{run}-u{n}", {"plan": "pro"})
        client.flush()
        client.shutdown()
        assert errors == []
        path = tmp_path / "warehouse.duckdb"
        wait_for_rows(path, "tracks", sum(users for _, users in FUNNEL), dsn=dsn)
        wait_for_rows(path, "identifies", 5, dsn=dsn)
    finally:
        assert gateway.terminate() == 0

    def sql(text: str) -> list[tuple[Any, ...]]:
        return query(path, text) if dsn is None else query_postgres(dsn, text)

    funnel = sql(
        """
        SELECT 'viewed', count(DISTINCT user_id) FROM web.product_viewed
        UNION ALL SELECT 'added', count(DISTINCT user_id) FROM web.product_added
        UNION ALL SELECT 'checkout', count(DISTINCT user_id) FROM web.checkout_started
        UNION ALL SELECT 'ordered', count(DISTINCT user_id) FROM web.order_completed
    """,
    )
    assert funnel == [("viewed", 20), ("added", 12), ("checkout", 8), ("ordered", 5)]
    ((name, price, gift, library),) = sql(
        """
        SELECT event_text, price, is_gift, context_library_name
        FROM web.order_completed WHERE user_id LIKE '%-u0'
    """,
    )
    assert (name, price, gift, library) == ("Order Completed", 19.99, True, "analytics-python")
    users = sql("SELECT id, email, plan FROM web.users ORDER BY id")
    assert [(u[1], u[2]) for u in users] == [
        ("u0@example.com", "pro"),
        ("u1@example.com", "pro"),
        ("u2@example.com", "free"),
    ]
    counts = sql("SELECT count(*), count(DISTINCT id) FROM web.tracks")
    assert counts == [(45, 45)]


async def test_kill_9_during_loads_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """kill -9 while loads run; after restarts every acknowledged event is loaded exactly once."""
    gateway = duckdb_gateway(tmp_path, {"max_events": 200, "max_age_s": 0.02})
    gateway.start()
    path = tmp_path / "warehouse.duckdb"
    acknowledged: set[str] = set()
    stop = asyncio.Event()
    senders = [asyncio.create_task(send_until(gateway, n, stop, acknowledged)) for n in range(4)]
    rng = random.Random(4)
    try:
        for _ in range(2):
            await asyncio.sleep(rng.uniform(0.8, 1.5))
            await asyncio.to_thread(gateway.kill)
            await asyncio.to_thread(gateway.start)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*senders)
    try:
        deadline = time.monotonic() + 60
        while missing := acknowledged - {
            row[0] for row in query(path, "SELECT id FROM web.tracks")
        }:
            assert time.monotonic() < deadline, f"{len(missing)} acknowledged events never loaded"
            await asyncio.sleep(0.2)
    finally:
        assert gateway.terminate() == 0
    loaded = query(path, "SELECT id FROM web.tracks")
    assert len(loaded) == len({row[0] for row in loaded})  # loads are idempotent on id
    assert len(query(path, "SELECT id FROM web.load")) == len(loaded)
