"""What the fuzz tests and the atheris harnesses (``fuzz/``) share: an in-process gateway driven
from synchronous code, and the oracles every answer and normalized event must satisfy."""

from __future__ import annotations

import asyncio
import base64
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import LOG_KEY, SERVER_OPTIONS, create_app
from gateway.config import parse_config
from gateway.events import NormalizedEvent
from gateway.plugins import make_plugin_manager
from tests.conftest import API_KEY, WRITE_KEY, config_data

__all__ = [
    "API_KEY",
    "WRITE_KEY",
    "Answer",
    "Gateway",
    "check_answer",
    "check_normalized",
]

SEGOPS_PATHS = ("/api/ingestion/track/", "/api/ingestion/track/batch/")


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer and what it stored."""

    status: int
    content_type: str
    body: bytes
    stored: list[dict[str, Any]] = field(default_factory=list)
    """The messages the request appended to the log, oldest first."""


class Gateway:
    """A real gateway app (ingress only, the file destination configured) on its own event
    loop, so synchronous hypothesis tests and atheris harnesses can send it requests.

    Deduplication is off, so every accepted event is appended and can be counted.
    """

    def __init__(self, data_dir: Path | None = None) -> None:
        # In memory where there is /dev/shm: each accepted request is an fsync'd commit.
        shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
        self._tmp = None if data_dir is not None else tempfile.TemporaryDirectory(dir=shm)
        root = data_dir or Path(self._tmp.name)  # type: ignore[union-attr]
        data = config_data(root)
        data["storage"]["dedup_window_s"] = 0
        data["server"]["trusted_proxy_header"] = "X-Forwarded-For"
        config = parse_config(data, env={}, plugin_manager=make_plugin_manager())
        self.loop = asyncio.new_event_loop()
        self.app = create_app(config, with_router=False)
        self.client: TestClient[Any, Any] = self.loop.run_until_complete(self._start())

    async def _start(self) -> TestClient[Any, Any]:
        server = TestServer(self.app)
        await server.start_server(**SERVER_OPTIONS)
        client: TestClient[Any, Any] = TestClient(server)
        await client.start_server()
        return client

    def request(
        self,
        method: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        chunked: bool = False,
    ) -> Answer:
        """Send one request and return the answer with the events it stored."""
        return self.loop.run_until_complete(self._request(method, path, body, headers, chunked))

    async def _request(
        self, method: str, path: str, body: bytes, headers: Mapping[str, str], chunked: bool
    ) -> Answer:
        log = self.app[LOG_KEY]
        before = log.last_seq()
        data: Any = body
        if chunked:

            async def pieces() -> Any:
                for start in range(0, len(body), 1000):
                    yield body[start : start + 1000]

            data = pieces()
        url = self.client.make_url(path)
        # Through the session, not the TestClient: it keeps every response until it closes.
        async with self.client.session.request(
            method, url, data=data, headers=dict(headers)
        ) as resp:
            answer_body = await resp.read()
            status, content_type = resp.status, resp.content_type
        stored: list[dict[str, Any]] = []
        if log.last_seq() > before:
            result = await log.read(before, 100_000, None)  # type: ignore[attr-defined]
            stored = [orjson.loads(event.raw) for event in result.events]
        return Answer(status, content_type, answer_body, stored)

    def raw_request(self, request: bytes) -> tuple[int, bytes, bytes]:
        """Send ``request`` as written (headers that are not UTF-8, too long...); return the
        status, the response's head and its body."""
        return self.loop.run_until_complete(self._raw_request(request))

    async def _raw_request(self, request: bytes) -> tuple[int, bytes, bytes]:
        server = self.client.server
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(request)
        await writer.drain()
        response = await reader.read()
        writer.close()
        await writer.wait_closed()
        head, _, body = response.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), head, body

    def close(self) -> None:
        """Stop the server and the loop; delete the data directory if it made one."""
        self.loop.run_until_complete(self.client.close())
        self.loop.close()
        if self._tmp is not None:
            self._tmp.cleanup()


def basic(key: str = WRITE_KEY) -> str:
    """A Basic ``Authorization`` value for ``key``."""
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def check_answer(path: str, answer: Answer) -> dict[str, Any]:
    """Every ingress answer: no 5xx, JSON, and ``{success: false, code, message}`` on a 4xx.

    Returns the decoded body.
    """
    assert answer.status < 500, (answer.status, answer.body[:300])
    assert answer.content_type == "application/json", answer.content_type
    payload = orjson.loads(answer.body)
    assert isinstance(payload, dict), payload
    if answer.status >= 400:
        assert payload["success"] is False, payload
        assert isinstance(payload["code"], str), payload
        assert payload["code"], payload
        assert isinstance(payload["message"], str), payload
        assert not answer.stored, "a refused request stored events"
        return payload
    assert payload["success"] is True, payload
    expected = 202 if path.startswith(SEGOPS_PATHS) else 200
    assert answer.status == expected, (answer.status, payload)
    rejected = payload.get("rejected", [])
    for item in rejected:
        assert isinstance(item["index"], int), item
        assert isinstance(item["code"], str), item
        assert isinstance(item["message"], str), item
    assert len({item["index"] for item in rejected}) == len(rejected), rejected
    for message in answer.stored:
        check_message(message)
    return payload


def check_normalized(event: NormalizedEvent) -> None:
    """A normalized event is compact JSON holding a well-formed Spec message."""
    message = orjson.loads(event.body)
    check_message(message)
    assert message["messageId"] == event.message_id


def check_message(message: dict[str, Any]) -> None:
    """A stored message has its type, an id within the limit, and UTC timestamps."""
    assert message["type"] in ("track", "identify", "page", "screen", "group", "alias")
    assert isinstance(message["messageId"], str)
    assert 0 < len(message["messageId"]) <= 100
    for key in ("timestamp", "receivedAt", "originalTimestamp", "sentAt"):
        if key in message:
            assert message[key].endswith("Z"), message[key]
    assert isinstance(message["context"], dict)
