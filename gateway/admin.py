"""The admin API: token-protected JSON endpoints for operators (dead letters for now).

Every route needs ``Authorization: Bearer <server.admin_token>``, compared in constant time;
with no token configured the routes answer 404, as if they did not exist.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from gateway import dlq
from gateway.config import GatewayConfig
from gateway.dlq import DeadLetterFilter
from gateway.errors import RequestRejectedError
from gateway.ingress.body import parse_json, read_body
from gateway.ingress.common import IngressState, json_response
from gateway.stats import delivery_report

__all__ = ["add_admin_routes"]

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_MAX_BODY = 64 * 1024


class _Filter(BaseModel):
    """The filter of a replay or purge, as JSON; an empty filter needs ``all: true``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    destination: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    reason: str | None = None
    all: bool = False

    def to_filter(self) -> DeadLetterFilter:
        return DeadLetterFilter(
            self.destination,
            None if self.since is None else _aware(self.since).timestamp(),
            None if self.until is None else _aware(self.until).timestamp(),
            self.reason,
        )

    def is_empty(self) -> bool:
        return not (self.destination or self.since or self.until or self.reason)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def add_admin_routes(app: web.Application, config: GatewayConfig, state: IngressState) -> None:
    """Register ``/admin/dead-letters`` (list, show, replay, purge) and the delivery view."""
    api = _AdminApi(config, config.storage.data_dir)
    routes: list[tuple[str, str, _Handler]] = [
        ("GET", "/admin/dead-letters", api.list_letters),
        ("GET", "/admin/dead-letters/{key}", api.show),
        ("POST", "/admin/dead-letters/replay", api.replay),
        ("POST", "/admin/dead-letters/purge", api.purge),
        ("GET", "/admin/destinations/{name}/delivery", api.delivery),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, state.handler(api.guard(handler)))


class _AdminApi:
    def __init__(self, config: GatewayConfig, data_dir: Path) -> None:
        self._destinations = {d.name for d in config.destinations}
        token = config.server.admin_token
        self._token = None if token is None else token.get_secret_value().encode()
        self._data_dir = data_dir

    def guard(self, handler: _Handler) -> _Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if self._token is None:
                raise web.HTTPNotFound
            scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                presented.strip().encode(), self._token
            ):
                raise RequestRejectedError(401, "unauthorized", "a valid admin token is required")
            return await handler(request)

        return guarded

    async def list_letters(self, request: web.Request) -> web.Response:
        """``GET /admin/dead-letters?destination=&since=&until=&reason=&limit=``."""
        query = {k: v for k, v in request.query.items() if k != "limit"}
        match = self._parse_filter(query).to_filter()
        try:
            limit = min(int(request.query.get("limit", "100")), 1000)
        except ValueError:
            raise RequestRejectedError(400, "invalid_request", "limit must be a number") from None
        rows = await asyncio.to_thread(dlq.list_letters, self._data_dir, match, limit)
        return json_response(
            200, {"deadLetters": [dlq.letter_json(r, with_body=False) for r in rows]}
        )

    async def show(self, request: web.Request) -> web.Response:
        """``GET /admin/dead-letters/{key}``: the letter with its request, response and event."""
        row = await asyncio.to_thread(dlq.show, self._data_dir, request.match_info["key"])
        if row is None:
            raise RequestRejectedError(404, "not_found", "no such dead letter")
        return json_response(200, dlq.letter_json(row, with_body=True))

    async def delivery(self, request: web.Request) -> web.Response:
        """``GET /admin/destinations/{name}/delivery``: Segment's Event Delivery view."""
        name = request.match_info["name"]
        if name not in self._destinations:
            raise RequestRejectedError(404, "not_found", "no such destination")
        report = await asyncio.to_thread(delivery_report, self._data_dir, name)
        return json_response(200, report)

    async def replay(self, request: web.Request) -> web.Response:
        """``POST /admin/dead-letters/replay`` with a JSON filter: re-enqueue the matches."""
        match = await self._body_filter(request)
        count = await asyncio.to_thread(dlq.replay, self._data_dir, match)
        return json_response(200, {"replayed": count})

    async def purge(self, request: web.Request) -> web.Response:
        """``POST /admin/dead-letters/purge`` with a JSON filter: delete the matches."""
        match = await self._body_filter(request)
        count = await asyncio.to_thread(dlq.purge, self._data_dir, match)
        return json_response(200, {"purged": count})

    async def _body_filter(self, request: web.Request) -> DeadLetterFilter:
        data = parse_json(await read_body(request, _MAX_BODY) or b"{}")
        parsed = self._parse_filter(data)
        if parsed.is_empty() and not parsed.all:
            raise RequestRejectedError(
                400, "filter_required", 'give a filter, or {"all": true} for every dead letter'
            )
        return parsed.to_filter()

    @staticmethod
    def _parse_filter(data: Any) -> _Filter:
        try:
            return _Filter.model_validate(data)
        except ValidationError as exc:
            error = exc.errors(include_input=False, include_url=False)[0]
            where = ".".join(str(p) for p in error["loc"]) or "body"
            raise RequestRejectedError(400, "invalid_request", f"{where}: {error['msg']}") from None
