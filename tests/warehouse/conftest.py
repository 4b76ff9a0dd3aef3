"""Warehouse fixtures; the PostgreSQL server and ``postgres_dsn`` live in ``tests/conftest.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from destinations.warehouse.postgres_backend import PostgresWarehouse


@pytest.fixture(name="postgres_warehouse")
async def _postgres_warehouse(postgres_dsn: str) -> AsyncIterator[PostgresWarehouse]:
    """An opened :class:`PostgresWarehouse` on the test's own database, closed afterwards."""
    warehouse = PostgresWarehouse(postgres_dsn, max_columns=1000)
    await warehouse.open()
    yield warehouse
    await warehouse.close()
