"""The web console (``/console``) and the admin JSON API it reads (``/api/...``).

The pages are static files shipped in this package (plain HTML, CSS and JavaScript: no build
step, nothing fetched from elsewhere); they ask for the admin token and call the API with it.
Modules: :mod:`~gateway.console.api` (handlers), :mod:`~gateway.console.feed` (the one place
that reads events from the log), :mod:`~gateway.console.ingest` (ingest statistics),
:mod:`~gateway.console.config_view` (redacted config), :mod:`~gateway.console.openapi`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources

import orjson
import pluggy
from aiohttp import web

from gateway.config import GatewayConfig
from gateway.console.api import ConsoleApi
from gateway.console.openapi import openapi_document
from gateway.dead_letters import DeadLetterStore
from gateway.ingress.common import IngressState, json_errors

__all__ = ["CONSOLE_KEY", "ConsoleApi", "add_console_routes"]

CONSOLE_KEY = web.AppKey("console", ConsoleApi)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_STATIC = resources.files(__name__) / "static"
_TYPES = {
    ".html": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".svg": "image/svg+xml",
}
# The pages load nothing from elsewhere and run no inline script.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def add_console_routes(
    app: web.Application,
    config: GatewayConfig,
    state: IngressState,
    plugin_manager: pluggy.PluginManager,
    guard: Callable[[_Handler], _Handler],
    *,
    letters: DeadLetterStore,
) -> None:
    """Register the console's pages and its ``/api/...`` routes (each behind ``guard``).

    Starts the ingest statistics with the app (a ``cleanup_ctx``) and ends the debugger's
    streams when the app shuts down.
    """
    api = ConsoleApi(config, state, plugin_manager, letters)
    app[CONSOLE_KEY] = api
    routes: list[tuple[str, str, _Handler]] = [
        ("GET", "/api/overview", api.overview),
        ("GET", "/api/sources", api.list_sources),
        ("GET", "/api/sources/{name}", api.show_source),
        ("GET", "/api/sources/{name}/events", api.source_events),
        ("GET", "/api/sources/{name}/stream", api.stream),
        ("GET", "/api/destinations", api.list_destinations),
        ("GET", "/api/destinations/{name}", api.show_destination),
        ("GET", "/api/destinations/{name}/delivery", api.delivery),
        ("GET", "/api/destinations/{name}/events/{ref}", api.delivery_state),
        ("POST", "/api/dead-letters/{key}/replay", api.replay_one),
        ("GET", "/api/health/live", api.live),
        ("GET", "/api/health/ready", api.ready),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, json_errors(guard(handler), state.metrics))
    document = orjson.dumps(openapi_document())
    has_token = config.server.admin_token is not None

    async def openapi(request: web.Request) -> web.Response:
        if not has_token:
            raise web.HTTPNotFound
        return web.Response(body=document, content_type="application/json")

    app.router.add_get("/api/openapi.json", json_errors(openapi, state.metrics))
    app.router.add_get("/console", _redirect)
    app.router.add_get("/console/", _page)
    app.router.add_get("/console/{file}", _page)
    app.cleanup_ctx.append(api.lifecycle)
    app.on_shutdown.append(api.on_shutdown)


async def _redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/console/")


async def _page(request: web.Request) -> web.Response:
    """A static file of the console; ``/console/`` is ``index.html``."""
    name = request.match_info.get("file", "index.html")
    suffix = name[name.rfind(".") :] if "." in name else ""
    resource = _STATIC / name
    if suffix not in _TYPES or "/" in name or name.startswith(".") or not resource.is_file():
        raise web.HTTPNotFound
    return web.Response(
        body=resource.read_bytes(), content_type=_TYPES[suffix], headers=_PAGE_HEADERS
    )
