"""Shared fixtures: configs in temp dirs and a real gateway app on a free port."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
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
