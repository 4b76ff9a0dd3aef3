"""Storage fixtures: one real nats-server for the session, and JetStream logs on it."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from gateway.config import JetStreamConfig
from gateway.log.jetstream import JetStreamEventLog, JetStreamStorage
from tests.nats import NatsServer

_prefixes = itertools.count()

OpenJetStreamLog = Callable[..., Awaitable[JetStreamEventLog]]


def js_config(url: str, **options: Any) -> JetStreamConfig:
    """A JetStream config for the server at ``url`` (test-sized partitions and timeouts)."""
    options.setdefault("partitions", 4)
    return JetStreamConfig(servers=[url], **options)


def new_prefix(letter: str = "T") -> str:
    """Stream and bucket names no other test uses."""
    return f"{letter}{next(_prefixes)}_{time.time_ns()}"


@pytest.fixture(name="nats_server", scope="session")
def _nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    yield server
    server.stop()


@pytest.fixture(name="open_js_log")
async def _open_js_log(nats_server: NatsServer) -> AsyncIterator[OpenJetStreamLog]:
    prefix = new_prefix()
    logs: list[JetStreamEventLog] = []

    async def open_log(partition: int = 0, **options: Any) -> JetStreamEventLog:
        options.setdefault("stream_prefix", prefix)
        options.setdefault("duplicate_window_s", 3600)
        storage = JetStreamStorage(js_config(nats_server.url, **options))
        event_log = storage.partition(partition)
        await event_log.open()
        logs.append(event_log)
        return event_log

    yield open_log
    for event_log in logs:
        await event_log.close()
