"""The console's JSON API under ``/api/``: what the pages show, for scripts too.

Every answer is built from what all gateway processes share (the log shards, ``console.db``,
``control.db``, the delivery statistics and the Prometheus multiprocess files), never from one
process's memory: any ingress process may answer any request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pluggy
import structlog
from aiohttp import web

from gateway.config import GatewayConfig
from gateway.console.config_view import destination_view, source_view
from gateway.console.feed import (
    MAX_EVENTS,
    EventFeed,
    FeedEvent,
    Position,
    decode_position,
    encode_position,
)
from gateway.console.ingest import IngestRecorder, ingest_overview
from gateway.dead_letters import DeadLetterStore
from gateway.errors import RequestRejectedError
from gateway.ingress.common import IngressState, json_response
from gateway.log.partitioned import PartitionedLog
from gateway.stats import delivery_report, delivery_trends

__all__ = ["ConsoleApi"]

log = structlog.get_logger("eventgate.console")

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_POLL_S = 0.25
_KEEPALIVE_S = 15.0
_MAX_STREAMS = 16
_DIGEST_EVERY_S = 0.25
_FLUSH_EVERY_S = 2.0
_GAUGES = {
    "eventgate_circuit_open": "circuitOpen",
    "eventgate_queue_depth": "queueDepth",
    "eventgate_oldest_pending_age_seconds": "oldestPendingAgeS",
    "eventgate_in_flight": "inFlight",
}


class ConsoleApi:
    """The handlers of ``/api/...`` (see :mod:`gateway.console.openapi` for the contract)."""

    def __init__(
        self,
        config: GatewayConfig,
        state: IngressState,
        plugin_manager: pluggy.PluginManager,
        letters: DeadLetterStore,
    ) -> None:
        self.config = config
        self.letters = letters
        self.state = state
        self.plugin_manager = plugin_manager
        self.data_dir: Path = config.storage.data_dir
        self.sources = {s.name: s for s in config.sources}
        self.destinations = {d.name: d for d in config.destinations}
        jetstream = config.storage.jetstream if config.storage.backend == "jetstream" else None
        self.feed = EventFeed(self.data_dir, jetstream)
        self.recorder = IngestRecorder(self.data_dir)
        self.stopping = asyncio.Event()
        self._streams = 0

    # -- lifecycle ----------------------------------------------------------------------------

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """A ``cleanup_ctx``: count ingest for the overview while the app runs."""
        self.state.observer = self.recorder
        task = asyncio.create_task(self._record_forever(), name="eventgate-console-stats")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.state.observer = None
        self.recorder.digest()
        await asyncio.to_thread(self.recorder.write, self.recorder.take())
        await self.feed.close()

    async def on_shutdown(self, app: web.Application) -> None:
        """End the debugger streams, so a graceful shutdown does not wait for them."""
        self.stopping.set()

    async def _record_forever(self) -> None:
        flushed_at = time.monotonic()
        while True:
            await asyncio.sleep(_DIGEST_EVERY_S)
            self.recorder.digest()
            if time.monotonic() - flushed_at >= _FLUSH_EVERY_S:
                flushed_at = time.monotonic()
                try:
                    await asyncio.to_thread(self.recorder.write, self.recorder.take())
                except (OSError, sqlite3.Error):  # busy or broken: the tallies are lost, not ingest
                    log.exception("console.stats_flush_failed")

    # -- sources and the debugger ---------------------------------------------------------------

    def _source(self, request: web.Request) -> str:
        name = request.match_info["name"]
        if name not in self.sources:
            raise RequestRejectedError(404, "not_found", "no such source")
        return name

    def _destination(self, request: web.Request) -> str:
        name = request.match_info["name"]
        if name not in self.destinations:
            raise RequestRejectedError(404, "not_found", "no such destination")
        return name

    async def list_sources(self, request: web.Request) -> web.Response:
        """``GET /api/sources``."""
        return json_response(
            200, {"sources": [source_view(self.config, s) for s in self.sources.values()]}
        )

    async def show_source(self, request: web.Request) -> web.Response:
        """``GET /api/sources/{name}``."""
        return json_response(200, source_view(self.config, self.sources[self._source(request)]))

    async def source_events(self, request: web.Request) -> web.Response:
        """``GET /api/sources/{name}/events?after=&limit=``: the debugger's events, newest last."""
        name = self._source(request)
        limit = _int_query(request, "limit", MAX_EVENTS, 1, MAX_EVENTS)
        after = request.query.get("after")
        if after is None:
            events, position = await self.feed.newest(name, limit)
        else:
            parsed = decode_position(after)
            if parsed is None:
                raise RequestRejectedError(400, "invalid_request", "after: not a position")
            events, position = await self.feed.after(parsed, name, limit)
        return json_response(
            200, {"events": [e.as_json() for e in events], "position": encode_position(position)}
        )

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/sources/{name}/stream``: the live debugger as server-sent events.

        First a ``snapshot`` (the newest events), then ``events`` as they arrive; each carries
        an ``id`` a reconnecting client sends back as ``Last-Event-ID`` to resume.
        """
        name = self._source(request)
        if self._streams >= _MAX_STREAMS:
            raise RequestRejectedError(
                429, "too_many_streams", "too many debugger streams are open", retry_after_s=5
            )
        resumed = decode_position(request.headers.get("Last-Event-ID", "")) or None
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        self._streams += 1
        try:
            await response.prepare(request)
            with contextlib.suppress(ConnectionError):
                await self._stream_to(response, name, resumed)
        finally:
            self._streams -= 1
        return response

    async def _stream_to(
        self, response: web.StreamResponse, source: str, position: Position | None
    ) -> None:
        if position is None:
            events, position = await self.feed.newest(source)
            await response.write(_sse("snapshot", events, position))
        sent_at = time.monotonic()
        while not self.stopping.is_set():
            events, position = await self.feed.after(position, source)
            if events:
                await response.write(_sse("events", events, position))
                sent_at = time.monotonic()
            elif time.monotonic() - sent_at > _KEEPALIVE_S:
                await response.write(b": keep-alive\n\n")
                sent_at = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), _POLL_S)

    # -- overview and destinations ---------------------------------------------------------------

    async def overview(self, request: web.Request) -> web.Response:
        """``GET /api/overview?source=``: ingest over 24 h and 7 d, and the pipeline's health."""
        source = request.query.get("source") or None
        if source is not None and source not in self.sources:
            raise RequestRejectedError(404, "not_found", "no such source")
        ingest = await asyncio.to_thread(ingest_overview, self.data_dir, source)
        destinations = await self._destination_rows()
        return json_response(200, {"source": source, **ingest, "destinations": destinations})

    async def _destination_rows(self) -> list[dict[str, Any]]:
        gauges = self._gauges()
        letters = await self.letters.count_by_destination()
        rows = []
        for name, dest in self.destinations.items():
            report = await asyncio.to_thread(delivery_report, self.data_dir, name)
            rows.append(
                {
                    "name": name,
                    "type": dest.type,
                    "enabled": dest.enabled,
                    "circuitOpen": bool(gauges.get(name, {}).get("circuitOpen", 0)),
                    "queueDepth": int(gauges.get(name, {}).get("queueDepth", 0)),
                    "oldestPendingAgeS": gauges.get(name, {}).get("oldestPendingAgeS", 0.0),
                    "inFlight": int(gauges.get(name, {}).get("inFlight", 0)),
                    "deadLetters": letters.get(name, 0),
                    "windows": report["windows"],
                }
            )
        return rows

    def _gauges(self) -> dict[str, dict[str, float]]:
        """Per destination, the router's gauges (summed over processes by prometheus-client)."""
        found: dict[str, dict[str, float]] = {}
        try:
            families = list(self.state.metrics.registry.collect())
        except (OSError, ValueError):
            return found
        for family in families:
            for sample in family.samples:
                key = _GAUGES.get(sample.name)
                destination = sample.labels.get("destination")
                if key is not None and destination is not None:
                    per = found.setdefault(destination, {})
                    per[key] = max(per.get(key, 0.0), float(sample.value))
        return found

    async def list_destinations(self, request: web.Request) -> web.Response:
        """``GET /api/destinations``: each destination's health at a glance."""
        return json_response(200, {"destinations": await self._destination_rows()})

    async def show_destination(self, request: web.Request) -> web.Response:
        """``GET /api/destinations/{name}``: its effective config, secrets redacted."""
        name = self._destination(request)
        view = destination_view(self.config, self.destinations[name], self.plugin_manager)
        return json_response(200, view)

    async def delivery(self, request: web.Request) -> web.Response:
        """``GET /api/destinations/{name}/delivery``: Event Delivery, with charts' series."""
        name = self._destination(request)
        report = await asyncio.to_thread(delivery_report, self.data_dir, name)
        report["trends"] = await asyncio.to_thread(delivery_trends, self.data_dir, name)
        health = next(r for r in await self._destination_rows() if r["name"] == name)
        report["health"] = {k: v for k, v in health.items() if k != "windows"}
        return json_response(200, report)

    async def delivery_state(self, request: web.Request) -> web.Response:
        """``GET /api/destinations/{name}/events/{ref}``: where one event stands for it."""
        name = self._destination(request)
        ref = request.match_info["ref"]
        state = await self.letters.delivery_state(name, ref)
        if state is None:
            raise RequestRejectedError(404, "not_found", "no such event reference")
        return json_response(200, {"destination": name, "event": ref, "state": state})

    async def replay_one(self, request: web.Request) -> web.Response:
        """``POST /api/dead-letters/{key}/replay``: re-enqueue one dead letter."""
        found = await self.letters.replay_one(request.match_info["key"])
        if found is None:
            raise RequestRejectedError(404, "not_found", "no such dead letter")
        destination, ref = found
        return json_response(200, {"replayed": 1, "destination": destination, "event": ref})

    # -- health -------------------------------------------------------------------------------

    async def live(self, request: web.Request) -> web.Response:
        """``GET /api/health/live``: the process answers."""
        return json_response(200, {"status": "ok", "pid": os.getpid()})

    async def ready(self, request: web.Request) -> web.Response:
        """``GET /api/health/ready``: storage writable and under quota; circuits per destination.

        503 when events cannot be stored; 200 ``degraded`` when a destination's circuit is open
        (events are still accepted and wait in the log).
        """
        if isinstance(self.state.log, PartitionedLog):
            storage = self._jetstream_check(self.state.log)
        else:
            storage = await asyncio.to_thread(self._storage_check)
        gauges = self._gauges()
        circuits = {
            name: "open" if gauges.get(name, {}).get("circuitOpen") else "closed"
            for name, dest in self.destinations.items()
            if dest.enabled
        }
        if not storage["writable"] or storage["full"]:
            status, code = "not_ready", 503
        elif "open" in circuits.values():
            status, code = "degraded", 200
        else:
            status, code = "ready", 200
        return json_response(code, {"status": status, "storage": storage, "circuits": circuits})

    def _jetstream_check(self, event_log: PartitionedLog) -> dict[str, Any]:
        """JetStream: connected, and the events stream under its ``max_bytes_mb``."""
        limit_mb = self.config.storage.jetstream.max_bytes_mb
        quota = None if limit_mb is None else int(limit_mb * 1024 * 1024)
        used = event_log.used_bytes()
        connected = event_log.storage.is_connected
        return {
            "writable": connected,
            "error": None if connected else "JetStream is not connected",
            "usedBytes": used,
            "quotaBytes": quota,
            "full": quota is not None and used >= quota,
        }

    def _storage_check(self) -> dict[str, Any]:
        probe = self.data_dir / f".ready-{os.getpid()}"
        error = None
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"ok")
                os.fsync(fd)
            finally:
                os.close(fd)
            probe.unlink()
        except OSError as exc:
            error = exc.strerror or type(exc).__name__
        used = 0
        for path in self.data_dir.glob("events-*.db*"):
            with contextlib.suppress(FileNotFoundError):
                used += path.stat().st_size
        quota = int(self.config.storage.disk_quota_mb * 1024 * 1024)
        return {
            "writable": error is None,
            "error": error,
            "usedBytes": used,
            "quotaBytes": quota,
            "full": used >= quota,
        }


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    try:
        value = int(request.query.get(name, str(default)))
    except ValueError:
        raise RequestRejectedError(400, "invalid_request", f"{name} must be a number") from None
    return min(max(value, low), high)


def _sse(kind: str, events: list[FeedEvent], position: Position) -> bytes:
    data = orjson.dumps([e.as_json() for e in events])
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (
        encode_position(position).encode(),
        kind.encode(),
        data,
    )
