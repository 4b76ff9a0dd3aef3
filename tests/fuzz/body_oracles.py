"""Request bodies through read_body, parse_json and normalize without HTTP, with the oracles
of each; for the body fuzz test and ``fuzz/ingress_body.py``."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from gateway.errors import EventRejectedError, RequestRejectedError
from gateway.events import RequestContext, normalize
from gateway.ingress.body import parse_json, read_body
from tests.fuzz.harness import check_normalized

__all__ = ["FakeRequest", "check_body", "read"]

_LOOP = asyncio.new_event_loop()


class _Content:
    """The ``request.content`` stream: ``data`` in pieces of at most ``chunk`` bytes."""

    def __init__(self, data: bytes, chunk: int) -> None:
        self.data, self.chunk, self.offset = data, chunk, 0

    async def read(self, n: int = -1) -> bytes:
        size = self.chunk if n < 0 else min(n, self.chunk)
        piece = self.data[self.offset : self.offset + size]
        self.offset += len(piece)
        return piece


class FakeRequest:
    """What read_body uses of an aiohttp request: headers, the length, the body stream."""

    def __init__(self, data: bytes, encoding: str, chunk: int, *, with_length: bool) -> None:
        self.headers = {"Content-Encoding": encoding} if encoding else {}
        self.content_length = len(data) if with_length else None
        self.content = _Content(data, chunk)
        self.protocol = SimpleNamespace(keepalive_timeout=75.0)
        self._data = data

    async def read(self) -> bytes:
        return self._data


def read(data: bytes, encoding: str, chunk: int, max_bytes: int) -> bytes | RequestRejectedError:
    """read_body's result for ``data`` sent with ``encoding``, or its refusal."""
    request: Any = FakeRequest(data, encoding, chunk, with_length=not encoding)
    try:
        return _LOOP.run_until_complete(read_body(request, max_bytes))
    except RequestRejectedError as exc:
        return exc


def check_body(
    data: bytes, encoding: str, compress: bool, chunk: int, max_bytes: int, route: str | None
) -> None:
    """``data`` (compressed first if ``compress``) read, parsed and normalized: each step
    answers or refuses as documented."""
    if compress and encoding in ("gzip", "x-gzip"):
        data = gzip.compress(data)
    elif compress and encoding == "deflate":
        data = zlib.compress(data)
    body = read(data, encoding, chunk, max_bytes)
    if isinstance(body, RequestRejectedError):
        assert body.status in (400, 408, 413, 415), body.status
        assert body.code
        return
    assert len(body) <= max_bytes
    try:
        item = parse_json(body)
    except RequestRejectedError as exc:
        status: int | None = exc.status
    else:
        status = None
    if status is not None:
        assert status == 400
        return
    request = RequestContext(source="web", received_at=datetime.now(UTC), client_ip="10.0.0.1")
    try:
        event = normalize(item, request, route_type=route)
    except EventRejectedError as exc:
        code = exc.code
    else:
        check_normalized(event)
        return
    assert code
