"""The admin API: token-protected JSON endpoints for operators.

Dead letters, delivery reports, suppressed users, deletion requests and tracking-plan violations
live here, under ``/api/...`` (the console's API, see :mod:`gateway.console`, which adds the
rest) and under the older ``/admin/...`` paths. ``/api/openapi.json`` describes them all.

Every route needs ``Authorization: Bearer <server.admin_token>``, compared in constant time;
with no token configured the routes answer 404, as if they did not exist.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import pluggy
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from gateway import dlq
from gateway.config import GatewayConfig
from gateway.console import add_console_routes
from gateway.control import ControlStore
from gateway.dead_letters import DeadLetterStore
from gateway.dlq import DeadLetterFilter
from gateway.errors import RequestRejectedError
from gateway.ingress.body import parse_json, read_body
from gateway.ingress.common import IngressState, json_errors, json_response
from gateway.plugins import make_plugin_manager
from gateway.stats import delivery_report

__all__ = ["add_admin_routes"]

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_MAX_BODY = 1024 * 1024
_Body = TypeVar("_Body", bound=BaseModel)


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


def _parse(model: type[_Body], data: Any) -> _Body:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in error["loc"]) or "body"
        raise RequestRejectedError(400, "invalid_request", f"{where}: {error['msg']}") from None


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def add_admin_routes(
    app: web.Application,
    config: GatewayConfig,
    state: IngressState,
    plugin_manager: pluggy.PluginManager | None = None,
) -> None:
    """Register the admin API (``/api/...`` and ``/admin/...``) and the console's pages."""
    letters = DeadLetterStore.of(config)
    api = _AdminApi(config, config.storage.data_dir, state.control, letters)
    routes: list[tuple[str, str, _Handler]] = [
        ("GET", "/dead-letters", api.list_letters),
        ("GET", "/dead-letters/{key}", api.show),
        ("POST", "/dead-letters/replay", api.replay),
        ("POST", "/dead-letters/purge", api.purge),
        ("GET", "/suppressions", api.suppressions),
        ("POST", "/suppressions", api.suppress),
        ("DELETE", "/suppressions/{user_id}", api.unsuppress),
        ("GET", "/deletions", api.deletions),
        ("POST", "/deletions", api.request_deletion),
        ("GET", "/deletions/{id}", api.deletion),
        ("GET", "/violations", api.violations),
    ]
    # Not state.handler: a refused admin request is no ingestion error for the console.
    for method, path, handler in routes:
        for prefix in ("/admin", "/api"):
            app.router.add_route(
                method, prefix + path, json_errors(api.guard(handler), state.metrics)
            )
    app.router.add_get(
        "/admin/destinations/{name}/delivery", json_errors(api.guard(api.delivery), state.metrics)
    )
    if plugin_manager is None:
        from gateway.app import PLUGINS_KEY  # noqa: PLC0415 - gateway.app imports this module

        plugin_manager = app.get(PLUGINS_KEY) or make_plugin_manager()
    add_console_routes(app, config, state, plugin_manager, api.guard, letters=letters)

    async def close_letters(app: web.Application) -> AsyncIterator[None]:
        yield
        await letters.close()

    app.cleanup_ctx.append(close_letters)


class _Suppress(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    userIds: list[Annotated[str, StringConstraints(min_length=1, max_length=1024)]] = Field(
        min_length=1, max_length=10_000
    )
    reason: str = Field("suppressed by an operator", max_length=1024)


class _Deletion(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    userId: str = Field(min_length=1, max_length=1024)


class _AdminApi:
    def __init__(
        self,
        config: GatewayConfig,
        data_dir: Path,
        control: ControlStore,
        letters: DeadLetterStore,
    ) -> None:
        self._letters = letters
        self._destinations = {d.name for d in config.destinations}
        self._enabled = [d.name for d in config.destinations if d.enabled]
        self._configured_suppressions = sorted(config.privacy.suppressed_user_ids)
        self._control = control
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
        rows = await self._letters.list_letters(match, limit)
        return json_response(
            200, {"deadLetters": [dlq.letter_json(r, with_body=False) for r in rows]}
        )

    async def show(self, request: web.Request) -> web.Response:
        """``GET /admin/dead-letters/{key}``: the letter with its request, response and event."""
        row = await self._letters.show(request.match_info["key"])
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
        count = await self._letters.replay(match)
        return json_response(200, {"replayed": count})

    async def purge(self, request: web.Request) -> web.Response:
        """``POST /admin/dead-letters/purge`` with a JSON filter: delete the matches."""
        match = await self._body_filter(request)
        count = await self._letters.purge(match)
        return json_response(200, {"purged": count})

    async def suppressions(self, request: web.Request) -> web.Response:
        """``GET /admin/suppressions``: users whose events ingress drops."""
        rows = await asyncio.to_thread(self._control.suppressions)
        return json_response(
            200, {"suppressions": rows, "configured": self._configured_suppressions}
        )

    async def suppress(self, request: web.Request) -> web.Response:
        """``POST /admin/suppressions`` ``{"userIds": [...], "reason": "..."}``."""
        body = _parse(_Suppress, await self._body(request))
        added = await asyncio.to_thread(self._control.suppress, body.userIds, body.reason)
        return json_response(200, {"suppressed": added})

    async def unsuppress(self, request: web.Request) -> web.Response:
        """``DELETE /admin/suppressions/{user_id}``: let the user's events in again."""
        if not await asyncio.to_thread(self._control.unsuppress, request.match_info["user_id"]):
            raise RequestRejectedError(404, "not_found", "that user is not suppressed here")
        return json_response(200, {"removed": True})

    async def request_deletion(self, request: web.Request) -> web.Response:
        """``POST /admin/deletions`` ``{"userId": "..."}``: suppress the user and delete their
        data in every destination that can; 202 with the request to follow."""
        body = _parse(_Deletion, await self._body(request))
        created = await asyncio.to_thread(
            self._control.request_deletion, body.userId, self._enabled
        )
        return json_response(202, created.as_json())

    async def deletions(self, request: web.Request) -> web.Response:
        """``GET /admin/deletions``: the newest deletion requests and their status."""
        rows = await asyncio.to_thread(self._control.deletions)
        return json_response(200, {"deletions": [r.as_json() for r in rows]})

    async def deletion(self, request: web.Request) -> web.Response:
        """``GET /admin/deletions/{id}``: one deletion request, per destination."""
        try:
            request_id = int(request.match_info["id"])
        except ValueError:
            raise RequestRejectedError(404, "not_found", "no such deletion request") from None
        found = await asyncio.to_thread(self._control.deletion, request_id)
        if found is None:
            raise RequestRejectedError(404, "not_found", "no such deletion request")
        return json_response(200, found.as_json())

    async def violations(self, request: web.Request) -> web.Response:
        """``GET /admin/violations?source=``: tracking-plan violation counts."""
        rows = await asyncio.to_thread(self._control.violations, request.query.get("source"))
        return json_response(200, {"violations": rows})

    @staticmethod
    async def _body(request: web.Request) -> Any:
        return parse_json(await read_body(request, _MAX_BODY) or b"{}")

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
        return _parse(_Filter, data)
