"""Reading a request body within limits: any Content-Type, chunked, gzip inflated in bounds."""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import RequestRejectedError

__all__ = ["malformed_json", "parse_json", "read_body"]

_CHUNK = 64 * 1024


def _too_large(max_bytes: int) -> RequestRejectedError:
    return RequestRejectedError(
        413, "payload_too_large", f"the request body is over the limit of {max_bytes} bytes"
    )


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The request body, inflated if gzip/deflate-encoded, refused once it passes ``max_bytes``.

    ``max_bytes`` bounds the uncompressed body; inflation stops as soon as the output would pass
    it, so a gzip bomb costs at most ``max_bytes`` of memory. The whole body must arrive within
    the server's keep-alive timeout (``server.keepalive_timeout_s``): aiohttp bounds the time to
    send headers but not a body, so a client trickling one byte at a time (slowloris) would
    otherwise hold its connection and handler forever.

    Raises:
        RequestRejectedError: 413 over the limit, 400 for a body that is not the encoding it
            claims, 415 for an unsupported ``Content-Encoding``, 408 for a body too slow.
    """
    timeout_s = request.protocol.keepalive_timeout
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_body(request, max_bytes)
    except TimeoutError:
        raise RequestRejectedError(
            408, "request_timeout", f"the request body did not arrive within {timeout_s:g} s"
        ) from None


async def _read_body(request: web.Request, max_bytes: int) -> bytes:
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity"):
        length = request.content_length
        if length is not None:
            if length > max_bytes:
                raise _too_large(max_bytes)
            return await request.read()  # aiohttp stops at Content-Length
        return await _read_plain(request, max_bytes)
    if encoding in ("gzip", "x-gzip"):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        inflater = zlib.decompressobj()
    else:
        raise RequestRejectedError(
            415, "unsupported_encoding", "Content-Encoding must be gzip, deflate or identity"
        )
    return await _read_inflated(request, inflater, encoding, max_bytes)


async def _read_plain(request: web.Request, max_bytes: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while chunk := await request.content.read(_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        parts.append(chunk)
    return b"".join(parts)


async def _read_inflated(
    request: web.Request, inflater: Any, encoding: str, max_bytes: int
) -> bytes:
    parts: list[bytes] = []
    size = 0
    compressed = 0
    try:
        while chunk := await request.content.read(_CHUNK):
            compressed += len(chunk)
            if compressed > max_bytes:
                raise _too_large(max_bytes)
            out = inflater.decompress(chunk, max_bytes + 1 - size)
            size += len(out)
            if size > max_bytes or inflater.unconsumed_tail:
                raise _too_large(max_bytes)
            parts.append(out)
        out = inflater.flush(max_bytes + 1 - size)
        size += len(out)
        parts.append(out)
    except zlib.error:
        raise RequestRejectedError(
            400, "invalid_encoding", f"the body is not valid {encoding} data"
        ) from None
    if size > max_bytes:
        raise _too_large(max_bytes)
    if not inflater.eof:
        raise RequestRejectedError(400, "invalid_encoding", f"the {encoding} body is truncated")
    return b"".join(parts)


def malformed_json() -> RequestRejectedError:
    """The error Segment's SDKs expect for a body that is not JSON."""
    return RequestRejectedError(400, "invalid_request", "malformed JSON")


def parse_json(body: bytes) -> Any:
    """Decode ``body`` as JSON (UTF-8; nesting bounded by orjson's depth limit).

    Raises:
        RequestRejectedError: 400 ``invalid_request`` "malformed JSON".
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise malformed_json() from None
