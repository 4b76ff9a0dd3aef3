"""The router: one :class:`~gateway.worker.DestinationWorker` per destination and log shard.

It opens every enabled destination (with its destination stage), starts the workers, and runs
what the workers share: compaction of the log, the delivery statistics, the suppression list
and the deletion requests. See :mod:`gateway.worker` for how one worker delivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pluggy
import structlog

from gateway.circuit import CircuitBreaker
from gateway.config import DestinationConfig, GatewayConfig
from gateway.control import ControlStore
from gateway.destination import Destination
from gateway.flow import FlowControl
from gateway.log.base import EventLog
from gateway.metrics import Metrics
from gateway.pipeline.build import destination_stage
from gateway.pipeline.destination_stage import DestinationStage
from gateway.plugins import destination_types, transforms
from gateway.privacy import DeletionWorker
from gateway.retry import RetryPolicy
from gateway.stats import DeliveryTally
from gateway.worker import DestinationWorker, ShardGauge

__all__ = ["DestinationWorker", "Router"]

log = structlog.get_logger("eventgate.router")

_COMPACT_EVERY_S = 10.0
_SUPPRESSIONS_EVERY_S = 0.5
_STATS_EVERY_S = 5.0
_FULL_COLLECTION_EVERY_TICKS = 6  # every minute


@dataclass(frozen=True, slots=True)
class _Shared:
    """What a destination's workers share, whichever shards they deliver."""

    stage: DestinationStage
    depth: ShardGauge
    age: ShardGauge
    circuit: CircuitBreaker | None
    flow: FlowControl


class Router:
    """Runs one :class:`DestinationWorker` per enabled destination and log shard."""

    def __init__(
        self,
        config: GatewayConfig,
        logs: Sequence[EventLog],
        metrics: Metrics,
        plugin_manager: pluggy.PluginManager,
        retry_policy: RetryPolicy | None = None,
        *,
        shard_count: int | None = None,
    ) -> None:
        self.config = config
        self.logs = list(logs)
        self.shard_count = shard_count
        """How many shards may be delivered at once (default: ``len(logs)``)."""
        self.delivering: dict[int, EventLog] = {}
        """The shards whose workers run, by number."""
        self._shared: dict[str, _Shared] = {}
        self.metrics = metrics
        self.plugin_manager = plugin_manager
        self.retry_policy = retry_policy
        """Overrides every destination's own ``retry`` settings (tests set zero delays here)."""
        self.destinations: dict[str, Destination[Any]] = {}
        self.workers: dict[str, list[DestinationWorker]] = {}
        self.tally = DeliveryTally()
        self._compactor: asyncio.Task[None] | None = None
        self._stats_writer: asyncio.Task[None] | None = None
        self.control = ControlStore(config.storage.data_dir)
        self._configured_suppressions = frozenset(config.privacy.suppressed_user_ids)
        self.suppressed = self._configured_suppressions
        """Suppressed user ids, re-read from the control store every ``_SUPPRESSIONS_EVERY_S``."""
        self._deleter: asyncio.Task[None] | None = None
        self._suppressions: asyncio.Task[None] | None = None

    async def start(self, *, deliver: bool = True) -> None:
        """Open every enabled destination and, with ``deliver``, start its workers on every log.

        New destinations' cursors are saved before this returns, so whoever starts ingress
        after it cannot have an acknowledged event skipped. Without ``deliver`` the caller adds
        the logs it delivers with :meth:`add_shard` (the partitions this node holds a lease on).
        """
        await asyncio.to_thread(self.control.open)
        await self._refresh_suppressions()
        types = destination_types(self.plugin_manager)
        named = transforms(self.plugin_manager)
        for dest in self.config.destinations:
            if not dest.enabled:
                continue
            cls = types[dest.type].cls
            destination = cls(dest.name, cls.settings_model.model_validate(dest.settings))
            destination.bind_counter(functools.partial(self._count, dest.name))
            await destination.open()
            self.destinations[dest.name] = destination
            self._shared[dest.name] = _Shared(
                stage=destination_stage(dest, cls, named, lambda: self.suppressed),
                depth=ShardGauge(self.metrics.queue_depth.labels(dest.name)),
                age=ShardGauge(self.metrics.oldest_pending_age.labels(dest.name), max),
                circuit=self._circuit_for(dest),
                flow=FlowControl(dest.flow, self.shard_count or len(self.logs)),
            )
            self.workers[dest.name] = []
        if deliver:
            for shard, event_log in enumerate(self.logs):
                await self.add_shard(shard, event_log)
        self._compactor = asyncio.create_task(self._compact_forever(), name="eventgate-compactor")
        self._stats_writer = asyncio.create_task(
            self._write_stats_forever(), name="eventgate-stats"
        )
        self._suppressions = asyncio.create_task(
            self._refresh_suppressions_forever(), name="eventgate-suppressions"
        )
        self._deleter = asyncio.create_task(
            DeletionWorker(self.control, self.destinations).run_forever(), name="eventgate-deleter"
        )

    async def add_shard(self, shard: int, event_log: EventLog) -> None:
        """Start delivering log shard (or partition) ``shard`` to every destination."""
        for dest in self.config.destinations:
            if dest.name not in self.destinations:
                continue
            shared = self._shared[dest.name]
            worker = DestinationWorker(
                config=dest,
                destination=self.destinations[dest.name],
                sources=self._sources_of(dest.name),
                event_log=event_log,
                metrics=self.metrics,
                plugin_manager=self.plugin_manager,
                retry_policy=self.retry_policy or RetryPolicy.from_config(dest.retry),
                depth=shared.depth,
                shard=shard,
                circuit=shared.circuit,
                flow=shared.flow,
                tally=self.tally,
                age=shared.age,
                stage=shared.stage,
            )
            await worker.start()
            self.workers[dest.name].append(worker)
        self.delivering[shard] = event_log

    async def remove_shard(self, shard: int, grace_s: float) -> None:
        """Stop delivering ``shard`` (in-flight batches get ``grace_s``); cursors stay saved."""
        self.delivering.pop(shard, None)
        stopping: list[DestinationWorker] = []
        for name, group in self.workers.items():
            stopping.extend(w for w in group if w.shard == shard)
            self.workers[name] = [w for w in group if w.shard != shard]
            shared = self._shared[name]
            shared.depth.set(shard, 0)
            shared.age.set(shard, 0)
        await asyncio.gather(*(w.stop(grace_s) for w in stopping))

    def _count(self, destination: str, what: str, amount: int) -> None:
        self.metrics.destination_counts.labels(destination, what).inc(amount)

    def _circuit_for(self, dest: DestinationConfig) -> CircuitBreaker | None:
        """The destination's circuit breaker, shared by its workers (``None`` if disabled)."""
        if not dest.circuit.enabled:
            return None
        gauge = self.metrics.circuit_open.labels(dest.name)
        gauge.set(0)
        return CircuitBreaker(
            dest.name,
            failure_threshold=dest.circuit.failure_threshold,
            open_s=dest.circuit.open_s,
            max_open_s=dest.circuit.max_open_s,
            on_change=lambda is_open: gauge.set(1 if is_open else 0),
        )

    def _sources_of(self, destination: str) -> frozenset[str] | None:
        """The sources feeding ``destination``, or ``None`` when every source does."""
        sources = self.config.sources
        if all(s.destinations is None for s in sources):
            return None
        return frozenset(
            s.name for s in sources if s.destinations is None or destination in s.destinations
        )

    async def stop(self, grace_s: float) -> None:
        """Stop every worker (in-flight batches get ``grace_s``), then close the destinations."""
        for task in (self._compactor, self._deleter, self._suppressions):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        workers = [w for group in self.workers.values() for w in group]
        await asyncio.gather(*(w.stop(grace_s) for w in workers))
        if self._stats_writer is not None:
            self._stats_writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stats_writer
        await self._write_stats()
        for name, destination in self.destinations.items():
            try:
                await destination.close()
            except Exception:  # one plugin's failure must not stop the others closing
                log.exception("router.close_failed", destination=name)
        self.control.close()

    async def _refresh_suppressions(self) -> None:
        stored = await asyncio.to_thread(self.control.suppressed_ids)
        self.suppressed = self._configured_suppressions | stored

    async def _refresh_suppressions_forever(self) -> None:
        while True:
            await asyncio.sleep(_SUPPRESSIONS_EVERY_S)
            try:
                await self._refresh_suppressions()
            except sqlite3.Error:  # busy or broken: keep the last list, try again
                log.exception("router.suppressions_failed")

    async def _write_stats_forever(self) -> None:
        while True:
            await asyncio.sleep(_STATS_EVERY_S)
            await self._write_stats()

    async def _write_stats(self) -> None:
        try:
            await asyncio.to_thread(self.tally.flush, self.config.storage.data_dir)
        except Exception:  # statistics must never stop delivery
            log.exception("router.stats_failed")

    async def _compact_forever(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(_COMPACT_EVERY_S)
            ticks += 1
            if ticks % _FULL_COLLECTION_EVERY_TICKS == 0:
                # The tuned collector (gateway/cli.py) rarely reaches the oldest generation;
                # cycles a library leaves (a failed request and its body) would wait for it.
                gc.collect()
            for event_log in list(self.delivering.values()):
                try:
                    deleted = await event_log.compact(list(self.workers))
                except Exception:  # compaction is retried on the next tick
                    log.exception("log.compaction_failed")
                    continue
                if deleted:
                    log.debug("log.compacted", deleted=deleted)
