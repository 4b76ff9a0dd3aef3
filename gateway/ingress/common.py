"""What both ingress APIs share: auth key rings, storing, counting and the JSON answers."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
import structlog
from aiohttp import web

from gateway.config import GatewayConfig
from gateway.control import ControlStore, ViolationKey
from gateway.errors import (
    EventRejectedError,
    RequestRejectedError,
    StorageFullError,
    StorageUnavailableError,
)
from gateway.events import NormalizedEvent, RequestContext
from gateway.ingress.auth import KeyRing
from gateway.ingress.quota import QuotaBook, SourceQuota
from gateway.log.base import IngressLog
from gateway.metrics import Metrics
from gateway.pipeline.source_stage import SourceStage

__all__ = [
    "CORS_HEADERS",
    "IngressObserver",
    "IngressState",
    "add_json_fallback",
    "json_errors",
    "json_response",
]

log = structlog.get_logger("eventgate.ingress")

_SUCCESS = b'{"success":true}'
# Browsers (analytics.js) post from the site's own origin: every ingress answer allows any
# origin, as Segment's API does. Write keys are public in a browser anyway; no cookies are used.
CORS_HEADERS = {"Access-Control-Allow-Origin": "*"}


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response (every ingress answer is JSON: Ruby's SDK parses them all), readable by
    scripts of any origin."""
    return web.Response(
        status=status,
        body=orjson.dumps(payload),
        content_type="application/json",
        headers=CORS_HEADERS if headers is None else {**CORS_HEADERS, **headers},
    )


class IngressObserver(Protocol):
    """Told what ingress stored and refused (the console's ingest statistics).

    Called on the request path: an implementation only keeps references and counts, and does
    its real work later, off the request.
    """

    def stored(self, source: str, events: list[NormalizedEvent], duplicates: int) -> None:
        """``events`` were appended for ``source``; ``duplicates`` of them were already."""

    def rejected(self, source: str | None, items: list[dict[str, Any]], status: int) -> None:
        """Events or a whole request were refused (``items``: ``code`` and ``message`` each)."""


class IngressState:
    """The configuration and services the ingress handlers use."""

    def __init__(self, config: GatewayConfig, event_log: IngressLog, metrics: Metrics) -> None:
        self.limits = config.server.limits
        self.trusted_proxy_header = config.server.trusted_proxy_header
        self.retry_after_s = config.storage.retry_after_s
        self.write_keys = KeyRing(
            (k.get_secret_value(), s.name) for s in config.sources for k in s.write_keys
        )
        self.api_keys = KeyRing(
            (k.get_secret_value(), s.name) for s in config.sources for k in s.api_keys
        )
        self.log = event_log
        self.metrics = metrics
        self.control = ControlStore(config.storage.data_dir)
        self.configured_suppressions = frozenset(config.privacy.suppressed_user_ids)
        self.suppressed = self.configured_suppressions
        """Suppressed user ids: the config's and the control store's (see :meth:`refresh`)."""
        self.stages: dict[str, SourceStage] = {}
        """Each source's stage, set by the app (it needs the plugin manager)."""
        self.quotas = QuotaBook(
            config.storage.data_dir / "quotas",
            {s.name: SourceQuota(*s.quota.resolved()) for s in config.sources if s.quota},
        )
        # Counted here and added to the shared-memory metrics by flush_counts(): one metric
        # write per request was 2% of single-event ingest CPU.
        self._received: Counter[str] = Counter()
        self._deduplicated: Counter[str] = Counter()
        self._filtered: Counter[tuple[str, str, str]] = Counter()
        self._violations: dict[ViolationKey, tuple[int, float, str]] = {}
        self.observer: IngressObserver | None = None
        """Told what was stored and refused, when set (the console sets it)."""

    def handler(self, handler: _Handler) -> _Handler:
        """``handler`` with refusals answered as JSON (see :func:`json_errors`)."""
        return json_errors(handler, self.metrics, self._request_rejected)

    def _request_rejected(self, exc: RequestRejectedError) -> None:
        if self.observer is not None:
            self.observer.rejected(None, [{"code": exc.code, "message": exc.message}], exc.status)

    def request_context(
        self,
        request: web.Request,
        source: str,
        *,
        sent_at: datetime | None = None,
        context: dict[str, Any] | None = None,
        integrations: dict[str, Any] | None = None,
    ) -> RequestContext:
        """What this request adds to each of its events (receive time, client IP, batch fields)."""
        client_ip = request.remote
        if self.trusted_proxy_header:
            forwarded = request.headers.get(self.trusted_proxy_header)
            if forwarded:
                client_ip = _address(forwarded.split(",", 1)[0].strip()) or client_ip
        stage = self.stages.get(source)
        return RequestContext(
            source=source,
            received_at=datetime.now(UTC),
            client_ip=client_ip,
            sent_at=sent_at,
            context=context,
            integrations=integrations,
            keep_messages=stage is not None and (stage.has_rules or bool(self.suppressed)),
        )

    async def store(
        self,
        source: str,
        events: list[NormalizedEvent],
        rejected: list[dict[str, Any]] | None = None,
    ) -> None:
        """Append ``events`` durably; storage trouble becomes a 503 with ``Retry-After``.

        ``rejected`` (the batch's refused events) is logged as one line per request. A source
        over its quota gets a 429 with ``Retry-After`` and nothing is stored.
        """
        if self.quotas.quotas:
            exceeded = self.quotas.charge(source, len(events), time.time())
            if exceeded is not None:
                self.metrics.requests_limited.labels(source, exceeded.limit).inc()
                code = "rate_limited" if exceeded.limit == "requests_per_minute" else "over_quota"
                raise RequestRejectedError(
                    429, code, exceeded.message, retry_after_s=exceeded.retry_after_s
                )
        if rejected:
            codes = Counter(r["code"] for r in rejected)
            log.info("ingress.events_rejected", source=source, count=len(rejected), codes=codes)
            if self.observer is not None:
                self.observer.rejected(source, rejected, 200)
        stage = self.stages.get(source)
        if stage is not None and events and (stage.has_rules or self.suppressed):
            staged = stage.apply(events)
            events = staged.events
            for (rule, action), count in staged.counts.items():
                self._filtered[source, rule, action] += count
            for key, (count, seen, description) in staged.violations.items():
                before = self._violations.get(key, (0, 0.0, ""))[0]
                self._violations[key] = (before + count, seen, description)
        if not events:
            return
        try:
            duplicates = await self.log.append(events)
        except StorageFullError:
            raise RequestRejectedError(
                503,
                "storage_full",
                "the gateway's storage is full; retry later",
                retry_after_s=self.retry_after_s,
            ) from None
        except StorageUnavailableError:
            raise RequestRejectedError(
                503,
                "storage_unavailable",
                "the gateway cannot store events right now; retry later",
                retry_after_s=self.retry_after_s,
            ) from None
        self._received[source] += len(events) - duplicates
        if self.observer is not None:
            self.observer.stored(source, events, duplicates)
        if duplicates:
            # Answered as accepted, as Segment does: the first copy is stored.
            self._deduplicated[source] += duplicates

    def flush_counts(self) -> None:
        """Add the events counted since the last flush to the metrics (every 0.25 s, and on
        every scrape of this process's ``/metrics``)."""
        for counts, metric in (
            (self._received, self.metrics.events_received),
            (self._deduplicated, self.metrics.deduplicated),
        ):
            for source, count in counts.items():
                metric.labels(source).inc(count)
            counts.clear()
        for (source, rule, action), count in self._filtered.items():
            self.metrics.filtered.labels(source, "", rule, action).inc(count)
        self._filtered.clear()

    async def refresh(self) -> None:
        """Re-read the suppression list and save the violations counted since the last call."""
        stored = await asyncio.to_thread(self.control.suppressed_ids)
        self.suppressed = self.configured_suppressions | stored
        if self._violations:
            violations, self._violations = self._violations, {}
            await asyncio.to_thread(self.control.add_violations, violations)

    def count_rejected(self, source: str, code: str) -> None:
        """Count one event refused at ingress."""
        self.metrics.events_rejected.labels(source, code).inc()

    def rejection(
        self, source: str, index: int, item: Any, exc: EventRejectedError
    ) -> dict[str, Any]:
        """Count one refused batch item and describe it for the response."""
        self.count_rejected(source, exc.code)
        message_id = item.get("messageId") if isinstance(item, dict) else None
        return {
            "index": index,
            "messageId": message_id if isinstance(message_id, str) else None,
            "code": exc.code,
            "message": exc.message,
        }

    @staticmethod
    def success(
        status: int = 200, rejected: list[dict[str, Any]] | None = None, **extra: Any
    ) -> web.Response:
        """``{"success": true}``, with the per-event rejections when there are any."""
        if not rejected and not extra:
            return web.Response(
                status=status, body=_SUCCESS, content_type="application/json", headers=CORS_HEADERS
            )
        payload: dict[str, Any] = {"success": True, **extra}
        if rejected:
            payload["rejected"] = rejected
        return json_response(status, payload)


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_errors(
    handler: _Handler,
    metrics: Metrics,
    on_rejected: Callable[[RequestRejectedError], None] | None = None,
) -> _Handler:
    """Wrap one route's handler so every refusal is ``{"success": false, "code", "message"}``.

    ``on_rejected`` is told of each refusal (ingress routes tell the console's statistics).

    Per route rather than a middleware: aiohttp rebuilds the middleware chain on every request,
    which cost about 3% of single-event ingest throughput in bench/.
    """

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except RequestRejectedError as exc:
            metrics.requests_rejected.labels(exc.code).inc()
            if on_rejected is not None:
                on_rejected(exc)
            log.info("ingress.rejected", path=request.path, status=exc.status, code=exc.code)
            headers = None
            if exc.retry_after_s is not None:
                headers = {"Retry-After": str(exc.retry_after_s)}
            payload = {"success": False, "code": exc.code, "message": exc.message}
            return json_response(exc.status, payload, headers)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _http_error(exc.status, exc.reason)

    return handle


def _http_error(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    code = reason.lower().replace(" ", "_")
    return json_response(status, {"success": False, "code": code, "message": reason}, headers)


def add_json_fallback(app: web.Application) -> None:
    """Register, last, a route answering JSON 404 (unknown path) or 405 (known path).

    Ruby's SDK parses every body as JSON, aiohttp's own 404/405 bodies are text.
    """

    async def fallback(request: web.Request) -> web.Response:
        allowed: set[str] = set()
        for resource in request.app.router.resources():
            if resource is not catch_all:
                _, methods = await resource.resolve(request)
                allowed |= methods
        if allowed:
            return _http_error(405, "Method Not Allowed", {"Allow": ",".join(sorted(allowed))})
        return _http_error(404, "Not Found")

    catch_all = app.router.add_resource("/{tail:.*}")
    catch_all.add_route("*", fallback)


def _address(text: str) -> str | None:
    """``text`` if it is an IP address (what a proxy header should hold), else ``None``.

    A header value that is not one (even bytes that are not UTF-8) must not become the event's
    ``context.ip``: it could not be stored, and the event would be refused for it.
    """
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None
