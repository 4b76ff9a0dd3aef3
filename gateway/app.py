"""The application factory: ``create_app(config)`` builds everything; nothing is global.

Resources open in this order and close in the reverse: the durable log, then the router (its
workers open their destinations). aiohttp stops accepting connections and finishes in-flight
requests before any of them is closed, so an acknowledged event is always in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator

import pluggy
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.admin import add_admin_routes
from gateway.cluster import LeasedDelivery, jetstream_storage
from gateway.config import GatewayConfig
from gateway.ingress import (
    IngressState,
    add_json_fallback,
    add_segment_routes,
    add_segops_routes,
    json_response,
)
from gateway.log.base import IngressLog
from gateway.log.partitioned import PartitionedLog
from gateway.log.sqlite import SqliteEventLog
from gateway.metrics import Metrics
from gateway.pipeline.build import source_stages
from gateway.plugins import make_plugin_manager
from gateway.retry import RetryPolicy
from gateway.router import Router

__all__ = [
    "CONFIG_KEY",
    "DELIVERY_KEY",
    "INGRESS_KEY",
    "LOG_KEY",
    "METRICS_KEY",
    "PLUGINS_KEY",
    "ROUTER_KEY",
    "SERVER_OPTIONS",
    "create_app",
]

CONFIG_KEY = web.AppKey("config", GatewayConfig)
LOG_KEY = web.AppKey("log", IngressLog)
METRICS_KEY = web.AppKey("metrics", Metrics)
PLUGINS_KEY = web.AppKey("plugins", pluggy.PluginManager)
ROUTER_KEY = web.AppKey("router", Router)
DELIVERY_KEY = web.AppKey("delivery", LeasedDelivery)
INGRESS_KEY = web.AppKey("ingress", IngressState)
_FLUSH_COUNTS_EVERY_S = 0.25
log = structlog.get_logger("eventgate.app")

# How the app must be served: ingress inflates gzip itself, bounded while streaming, so aiohttp's
# own decompression is off (with it on, a body claiming gzip that is not would get a text 400).
# Header lines up to 64 KiB: aiohttp refuses longer ones before any handler runs, with a
# text/plain 400 an SDK cannot read (8 KiB by default; a fuzzing finding). A write key that long
# still gets the JSON 401 from the handler.
SERVER_OPTIONS: dict[str, object] = {
    "auto_decompress": False,
    "max_line_size": 65536,
    "max_field_size": 65536,
}


def create_app(
    config: GatewayConfig,
    *,
    plugin_manager: pluggy.PluginManager | None = None,
    retry_policy: RetryPolicy | None = None,
    with_router: bool = True,
    metrics: Metrics | None = None,
    shard: int = 0,
) -> web.Application:
    """Build the gateway's application for ``config``; serve it with ``**SERVER_OPTIONS``.

    The caller validates ``config`` first (``load_config`` with the same plugin manager). With
    ``with_router=False`` the app only ingests, into log shard ``shard``: ``eventgate serve``
    runs the router in its own process (see :mod:`gateway.supervisor`).
    """
    limits = config.server.limits
    metrics = metrics or Metrics()
    pm = plugin_manager or make_plugin_manager()
    app = web.Application(client_max_size=max(limits.max_batch_bytes, limits.max_event_bytes) + 1)
    app[CONFIG_KEY] = config
    app[METRICS_KEY] = metrics
    app[PLUGINS_KEY] = pm
    event_log: IngressLog
    if config.storage.backend == "jetstream":
        event_log = PartitionedLog(jetstream_storage(config))
        if with_router:
            partitions = config.storage.jetstream.partitions
            router = Router(config, [], metrics, pm, retry_policy, shard_count=partitions)
            app[ROUTER_KEY] = router
            app[DELIVERY_KEY] = LeasedDelivery(router, jetstream_storage(config))
    else:
        sqlite_log = SqliteEventLog(
            config.storage.data_dir,
            disk_quota_bytes=int(config.storage.disk_quota_mb * 1024 * 1024),
            shard=shard,
            dedup_window_s=config.storage.dedup_window_s,
        )
        event_log = sqlite_log
        if with_router:
            app[ROUTER_KEY] = Router(config, [sqlite_log], metrics, pm, retry_policy)
    app[LOG_KEY] = event_log

    state = IngressState(config, event_log, metrics)
    state.stages = source_stages(config, pm, lambda: state.suppressed)
    app[INGRESS_KEY] = state
    add_segment_routes(app, state)
    add_segops_routes(app, state)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/health", _health)
    add_admin_routes(app, config, state)
    add_json_fallback(app)
    app.cleanup_ctx.append(_event_log)
    app.cleanup_ctx.append(_flush_counts)
    if with_router:
        app.cleanup_ctx.append(_router)
    return app


async def _event_log(app: web.Application) -> AsyncIterator[None]:
    await app[LOG_KEY].open()
    control = app[INGRESS_KEY].control
    await asyncio.to_thread(control.open)
    yield
    await app[LOG_KEY].close()
    control.close()


async def _router(app: web.Application) -> AsyncIterator[None]:
    router = app[ROUTER_KEY]
    delivery = app.get(DELIVERY_KEY)
    await router.start(deliver=delivery is None)
    if delivery is not None:
        await delivery.start()
    yield
    if delivery is not None:
        await delivery.stop()
    await router.stop(app[CONFIG_KEY].server.shutdown_grace_s)


async def _flush_counts(app: web.Application) -> AsyncIterator[None]:
    state = app[INGRESS_KEY]

    async def flush_forever() -> None:
        while True:
            await asyncio.sleep(_FLUSH_COUNTS_EVERY_S)
            state.flush_counts()
            try:
                await state.refresh()
            except sqlite3.Error:  # the control file is busy or broken: try again next tick
                log.exception("ingress.refresh_failed")

    await state.refresh()  # suppressions in force before the first request
    task = asyncio.create_task(flush_forever(), name="eventgate-flush-counts")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    state.flush_counts()
    await state.refresh()
    state.quotas.close()


async def _metrics(request: web.Request) -> web.Response:
    request.app[INGRESS_KEY].flush_counts()
    metrics = request.app[METRICS_KEY]
    metrics.log_bytes.set(request.app[LOG_KEY].used_bytes())
    return web.Response(
        body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def _health(request: web.Request) -> web.Response:
    event_log = request.app[LOG_KEY]
    return json_response(200, {"status": "ok", "last_seq": event_log.last_seq()})
