"""The SegOps-style REST API: ``POST /api/ingestion/track/`` and ``.../track/batch/``."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from gateway.errors import EventRejectedError, RequestRejectedError
from gateway.events import NormalizedEvent, RequestContext, normalize
from gateway.ingress.auth import bearer_key
from gateway.ingress.body import parse_json, read_body
from gateway.ingress.common import IngressState

__all__ = ["add_segops_routes", "to_spec"]

_SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
IDENTIFY_EVENT_TYPE = "context_identified"


def to_spec(item: Any) -> tuple[str, dict[str, Any]]:
    """Map one SegOps event onto a Spec message; return ``(type, message)``.

    ``event_type: context_identified`` becomes an identify with the payload as traits; any other
    ``event_type`` a track named by it, with the payload as properties.

    Raises:
        EventRejectedError: the event breaks a SegOps rule.
    """
    if not isinstance(item, dict):
        raise EventRejectedError("invalid_event", "each event must be a JSON object")
    user_id = item.get("user_id")
    if not isinstance(user_id, str) or not user_id:
        raise EventRejectedError("missing_user_id", "user_id is required and must be a string")
    event_type = item.get("event_type")
    if not isinstance(event_type, str) or not event_type:
        raise EventRejectedError("missing_event_type", "event_type is required (a string)")
    if len(event_type) > 255 or not _SNAKE_CASE.match(event_type):
        raise EventRejectedError(
            "invalid_event_type",
            "event_type must be snake_case (like order_placed), at most 255 characters",
        )
    payload = item.get("payload")
    if payload is not None and not isinstance(payload, dict):
        raise EventRejectedError("invalid_payload", "payload must be a JSON object")
    occurred_at = item.get("occurred_at")
    if occurred_at is not None and not isinstance(occurred_at, str):
        raise EventRejectedError("invalid_timestamp", "occurred_at must be an ISO-8601 string")
    message: dict[str, Any] = {"userId": user_id, "timestamp": occurred_at}
    if event_type == IDENTIFY_EVENT_TYPE:
        message["traits"] = payload or {}
        return "identify", message
    message["event"] = event_type
    message["properties"] = payload or {}
    return "track", message


def add_segops_routes(app: web.Application, state: IngressState) -> None:
    """Register the ``/api/ingestion`` routes (with and without the trailing slash)."""
    api = SegOpsApi(state)
    for path in ("/api/ingestion/track/", "/api/ingestion/track"):
        app.router.add_post(path, state.handler(api.track))
    for path in ("/api/ingestion/track/batch/", "/api/ingestion/track/batch"):
        app.router.add_post(path, state.handler(api.batch))


class SegOpsApi:
    """The ``/api/ingestion`` request handlers; 202 once the events are durable."""

    def __init__(self, state: IngressState) -> None:
        self.state = state

    async def track(self, request: web.Request) -> web.Response:
        """One event; an invalid one is a 400 with its reason."""
        source = self._authenticate(request)
        data = parse_json(await read_body(request, self.state.limits.max_event_bytes))
        context = self.state.request_context(request, source)
        try:
            event = _normalize(data, context)
        except EventRejectedError as exc:
            self.state.count_rejected(source, exc.code)
            raise RequestRejectedError(400, exc.code, exc.message) from None
        await self.state.store(source, [event])
        return self.state.success(202, accepted=1)

    async def batch(self, request: web.Request) -> web.Response:
        """``{"events": [...]}`` or a bare array; valid events kept, the rest reported."""
        state = self.state
        source = self._authenticate(request)
        data = parse_json(await read_body(request, state.limits.max_batch_bytes))
        items = data.get("events") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise RequestRejectedError(
                400, "invalid_request", 'the body must be {"events": [...]} or a JSON array'
            )
        limit = state.limits.max_segops_batch_events
        if len(items) > limit:
            raise RequestRejectedError(
                413, "too_many_events", f"a batch holds at most {limit} events; got {len(items)}"
            )
        context = state.request_context(request, source)
        accepted: list[NormalizedEvent] = []
        rejected: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            try:
                accepted.append(_normalize(item, context))
            except EventRejectedError as exc:
                rejected.append(state.rejection(source, index, item, exc))
        await state.store(source, accepted, rejected)
        return state.success(202, rejected=rejected, accepted=len(accepted))

    def _authenticate(self, request: web.Request) -> str:
        key = request.headers.get("X-API-Key")
        header = request.headers.get("Authorization")
        if key is None and header is not None:
            key = bearer_key(header)
        if not key:
            raise RequestRejectedError(
                401, "missing_api_key", "send the API key as Authorization: Bearer <key>"
            )
        source = self.state.api_keys.source_for(key)
        if source is None:
            raise RequestRejectedError(401, "invalid_api_key", "unknown API key")
        return source


def _normalize(item: Any, context: RequestContext) -> NormalizedEvent:
    event_type, message = to_spec(item)
    return normalize(message, context, route_type=event_type)
