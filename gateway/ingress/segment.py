"""Segment's HTTP Tracking API (``/v1/*``), exactly as the official SDKs use it."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from gateway.errors import EventRejectedError, RequestRejectedError
from gateway.events import NormalizedEvent, format_timestamp, normalize
from gateway.ingress.auth import basic_auth_key
from gateway.ingress.body import parse_json, read_body
from gateway.ingress.common import CORS_HEADERS, IngressState

__all__ = ["SINGLE_ROUTES", "add_segment_routes"]

# Route suffix -> the Spec type it implies; the one-letter forms are the browser's.
SINGLE_ROUTES: dict[str, str] = {
    "track": "track",
    "t": "track",
    "identify": "identify",
    "i": "identify",
    "page": "page",
    "p": "page",
    "screen": "screen",
    "s": "screen",
    "group": "group",
    "g": "group",
    "alias": "alias",
    "a": "alias",
}
BATCH_ROUTES = ("/v1/batch", "/v1/b", "/v1/import", "/v1/import/")


def _encoded_size(item: Any) -> int:
    """The size of ``item`` as compact JSON; 0 for one orjson cannot write (nested over 254
    levels), which :func:`~gateway.events.normalize` then refuses with its reason."""
    try:
        return len(orjson.dumps(item))
    except orjson.JSONEncodeError:
        return 0


def _in_utc_range(sent_at: datetime | None) -> datetime | None:
    """A batch's ``sentAt``, checked to be writable in UTC (``0001-01-01T00:00:00+14:00`` is not).

    Raises:
        RequestRejectedError: 400 ``invalid_request``, as for any other bad ``sentAt``.
    """
    if sent_at is not None:
        try:
            format_timestamp(sent_at)
        except OverflowError:
            raise RequestRejectedError(
                400, "invalid_request", "sentAt: out of range once converted to UTC"
            ) from None
    return sent_at


_PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


class _BatchEnvelope(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    batch: list[Any]
    sentAt: datetime | None = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None


_PREFLIGHT_HEADERS = {
    **CORS_HEADERS,
    "Access-Control-Allow-Methods": "POST, GET, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Content-Encoding, Authorization",
    "Access-Control-Max-Age": "86400",
}


def add_segment_routes(app: web.Application, state: IngressState) -> None:
    """Register every ``/v1`` route on ``app``, each answering CORS preflights too."""
    api = SegmentApi(state)
    posts = {f"/v1/{suffix}": api.single_handler(t) for suffix, t in SINGLE_ROUTES.items()}
    posts.update((path, api.batch) for path in BATCH_ROUTES)
    for path, handler in posts.items():
        # Every answer, refusals included, carries CORS_HEADERS (see json_response).
        app.router.add_post(path, state.handler(handler))
        app.router.add_route("OPTIONS", path, _preflight)
    app.router.add_get("/v1/pixel/{type}", api.pixel)
    app.router.add_get("/v1/projects/{write_key}/settings", state.handler(api.settings))


async def _preflight(request: web.Request) -> web.Response:
    """A browser's ``OPTIONS`` before a POST with JSON or an ``Authorization`` header."""
    return web.Response(status=204, headers=_PREFLIGHT_HEADERS)


class SegmentApi:
    """The ``/v1`` request handlers."""

    def __init__(self, state: IngressState) -> None:
        self.state = state

    def single_handler(self, event_type: str) -> Any:
        """A handler for the single-call route of ``event_type``."""

        async def handle(request: web.Request) -> web.Response:
            return await self.single(request, event_type)

        return handle

    async def single(self, request: web.Request, event_type: str) -> web.Response:
        """``POST /v1/track`` and friends: one message, its type from the route."""
        state = self.state
        header_source = self._header_source(request)
        data = parse_json(await read_body(request, state.limits.max_event_bytes))
        if not isinstance(data, dict):
            raise RequestRejectedError(400, "invalid_request", "the body must be a JSON object")
        source = self._source(header_source, data.get("writeKey"))
        context = state.request_context(request, source)
        try:
            event = normalize(data, context, route_type=event_type)
        except EventRejectedError as exc:
            state.count_rejected(source, exc.code)
            raise RequestRejectedError(400, exc.code, exc.message) from None
        await state.store(source, [event])
        return state.success()

    async def batch(self, request: web.Request) -> web.Response:
        """``POST /v1/batch`` (and ``/v1/b``, ``/v1/import``): many messages, valid ones kept."""
        state = self.state
        limits = state.limits
        header_source = self._header_source(request)
        body = await read_body(request, limits.max_batch_bytes)
        data = parse_json(body)
        if not isinstance(data, dict):
            raise RequestRejectedError(400, "invalid_request", "the body must be a JSON object")
        source = self._source(header_source, data.get("writeKey"))
        try:
            envelope = _BatchEnvelope.model_validate(data)
        except ValidationError as exc:
            error = exc.errors(include_input=False, include_url=False)[0]
            field = ".".join(str(p) for p in error["loc"])
            raise RequestRejectedError(400, "invalid_request", f"{field}: {error['msg']}") from None
        items = envelope.batch
        if len(items) > limits.max_batch_events:
            raise RequestRejectedError(
                413,
                "too_many_events",
                f"a batch holds at most {limits.max_batch_events} events; got {len(items)}",
            )
        context = state.request_context(
            request,
            source,
            sent_at=_in_utc_range(envelope.sentAt),
            context=envelope.context,
            integrations=envelope.integrations,
        )
        check_size = len(body) > limits.max_event_bytes
        accepted: list[NormalizedEvent] = []
        rejected: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            try:
                if check_size and _encoded_size(item) > limits.max_event_bytes:
                    raise EventRejectedError(
                        "event_too_large",
                        f"the event is over the limit of {limits.max_event_bytes} bytes",
                    )
                accepted.append(normalize(item, context))
            except EventRejectedError as exc:
                rejected.append(state.rejection(source, index, item, exc))
        await state.store(source, accepted, rejected)
        return state.success(rejected=rejected)

    async def settings(self, request: web.Request) -> web.Response:
        """``GET /v1/projects/{writeKey}/settings``: what analytics.js loads before it sends.

        Point analytics.js's ``cdnURL`` at the gateway and it sends to the gateway itself: the
        ``Segment.io`` entry names this host (as the browser reached it) as ``apiHost``. No
        device-mode destinations: eventgate delivers everything server-side.
        """
        self._lookup(request.match_info["write_key"])  # an unknown key is a 401
        forwarded = (
            request.headers.get("X-Forwarded-Proto", "") if self.state.trusted_proxy_header else ""
        )
        protocol = forwarded.split(",", 1)[0].strip() or request.scheme
        integration = {
            "apiKey": request.match_info["write_key"],
            "apiHost": f"{request.host}/v1",
            "protocol": protocol,
            "unbundledIntegrations": [],
            "addBundledMetadata": True,
        }
        body = {
            "integrations": {"Segment.io": integration},
            "plan": {"track": {"__default": {"enabled": True}}},
            "edgeFunction": {},
            "analyticsNextEnabled": True,
        }
        return web.Response(
            body=orjson.dumps(body),
            content_type="application/json",
            headers={**CORS_HEADERS, "Cache-Control": "public, max-age=300"},
        )

    async def pixel(self, request: web.Request) -> web.Response:
        """``GET /v1/pixel/{type}?data=<base64 JSON>``: always a 1x1 gif, events kept if valid."""
        gif = web.Response(body=_PIXEL_GIF, content_type="image/gif", headers=CORS_HEADERS)
        event_type = SINGLE_ROUTES.get(request.match_info["type"])
        raw = request.query.get("data", "")
        if event_type is None or len(raw) > self.state.limits.max_event_bytes * 2:
            return gif
        try:
            padded = raw + "=" * (-len(raw) % 4)
            data = orjson.loads(
                base64.urlsafe_b64decode(padded.replace("+", "-").replace("/", "_"))
            )
            if not isinstance(data, dict):
                return gif
            source = self._source(None, data.get("writeKey"))
            event = normalize(
                data, self.state.request_context(request, source), route_type=event_type
            )
            await self.state.store(source, [event])
        except (binascii.Error, ValueError, RequestRejectedError, EventRejectedError):
            return gif
        return gif

    def _header_source(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization")
        if header is None:
            return None
        key = basic_auth_key(header)
        if key is None:
            raise RequestRejectedError(
                401, "invalid_auth", 'Authorization must be Basic base64("<writeKey>:")'
            )
        return self._lookup(key)

    def _source(self, header_source: str | None, body_key: Any) -> str:
        if body_key is None:
            if header_source is None:
                raise RequestRejectedError(
                    401,
                    "missing_write_key",
                    "send the write key as Basic auth or as writeKey in the body",
                )
            return header_source
        if not isinstance(body_key, str):
            raise RequestRejectedError(401, "invalid_write_key", "writeKey must be a string")
        body_source = self._lookup(body_key)
        if header_source is not None and header_source != body_source:
            raise RequestRejectedError(
                401, "invalid_write_key", "the write keys in the header and the body differ"
            )
        return body_source

    def _lookup(self, key: str) -> str:
        if not key:
            raise RequestRejectedError(401, "missing_write_key", "the write key is empty")
        source = self.state.write_keys.source_for(key)
        if source is None:
            raise RequestRejectedError(401, "invalid_write_key", "unknown write key")
        return source
