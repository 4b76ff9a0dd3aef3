"""A destination worker: delivers one destination's events from one log shard.

A worker reads the next events for its destination, waits (up to ``batch.max_age_s``) for a
batch to fill, runs the destination stage (integrations, filters, transformations), delivers the
batch through the plugin once, and then durably advances its cursor: the delivered events are
done, a retryable failure is written to the log's retry table with its next attempt time
(``RetryPolicy``), a permanent failure or one past the give-up limits becomes a dead letter.
Between batches the worker delivers the retries that are due, so a failing event never holds up
the events behind it, and nothing pending a retry is held in memory. A crash at any point
repeats at most the batch in hand (at-least-once), and loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pluggy
import structlog

from gateway import failpoints
from gateway.circuit import CircuitBreaker
from gateway.config import DestinationConfig
from gateway.destination import Destination, Event, deliver
from gateway.errors import DeliveryError, RetryableDeliveryError, StorageUnavailableError
from gateway.flow import FlowControl
from gateway.log.base import DeadLetter, EventLog, PendingRetry, ReadResult
from gateway.metrics import Metrics, observe_many
from gateway.pipeline.destination_stage import DestinationStage
from gateway.retry import RetryPolicy
from gateway.stats import DeliveryTally

__all__ = ["DestinationWorker", "ShardGauge"]

log = structlog.get_logger("eventgate.router")

_IDLE_WAIT_S = 1.0
_MIN_PAUSE_S = 0.05
# How long a worker waits before trying again when the log is unreachable.
_STORAGE_RETRY_S = 0.5
_REPLAYED = "replayed"  # the reason `eventgate dlq replay` gives a re-enqueued dead letter
_HELD = "waiting behind an earlier event of this user"


class ShardGauge:
    """A per-destination gauge combined over its workers (one per shard): the sum of their
    queue depths, or the max of their oldest-pending ages."""

    def __init__(self, gauge: Any, combine: Callable[[Iterable[float]], float] = sum) -> None:
        self.gauge = gauge
        self.combine = combine
        self.by_shard: dict[int, float] = {}

    def set(self, shard: int, value: float) -> None:
        self.by_shard[shard] = value
        self.gauge.set(self.combine(self.by_shard.values()))


class DestinationWorker:
    """Delivers one destination's events from one log shard in order, batch by batch.

    The destination's plugin instance is shared by its workers (one per shard), so ``deliver``
    may run concurrently for different shards.
    """

    def __init__(
        self,
        *,
        config: DestinationConfig,
        destination: Destination[Any],
        sources: frozenset[str] | None,
        event_log: EventLog,
        metrics: Metrics,
        plugin_manager: pluggy.PluginManager,
        retry_policy: RetryPolicy,
        depth: ShardGauge,
        shard: int = 0,
        circuit: CircuitBreaker | None = None,
        flow: FlowControl | None = None,
        tally: DeliveryTally | None = None,
        age: ShardGauge | None = None,
        stage: DestinationStage | None = None,
    ) -> None:
        self.name = config.name
        self.stage = stage or DestinationStage(config.name)
        self._per_user = config.ordering == "per_user"
        self.tally = tally or DeliveryTally()
        self.circuit = circuit
        self.flow = flow
        self.shard = shard
        self.config = config
        self.destination = destination
        self.sources = sources
        self.log = event_log
        self.metrics = metrics
        self.retry_policy = retry_policy
        self.cursor = 0
        self._hook = plugin_manager.hook.delivery_finished
        self._observed = bool(self._hook.get_hookimpls())
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self._deadline = float("inf")
        self._task: asyncio.Task[None] | None = None
        self._next_retry_at: float | None = None
        self._retries_checked_at = 0.0
        self._saver: asyncio.Task[None] | None = None
        self._delivered = metrics.delivered.labels(self.name)
        self._latency = metrics.end_to_end_latency.labels(self.name)
        self._depth = depth
        self._age = age or ShardGauge(metrics.oldest_pending_age.labels(self.name), max)
        self._in_flight = metrics.in_flight.labels(self.name)
        # The log skips other sources' events without reading them, so their source is unknown.
        self._not_routed = metrics.filtered.labels("*", self.name, "source_not_routed", "skipped")
        self._attempt_duration = metrics.attempt_duration.labels(self.name)

    async def start(self) -> None:
        """Start delivering from the saved cursor (the router opens the destination)."""
        saved = await self.log.get_cursor(self.name)
        if saved is None:
            # A new destination starts at the end of the log; the cursor is saved before ingress
            # opens, so a crash later cannot make it skip events that were acknowledged.
            saved = self.log.last_seq()
            await self.log.set_cursor(self.name, saved)
        self.cursor = saved
        self._task = asyncio.create_task(
            self._run(), name=f"eventgate-worker-{self.name}-{self.shard}"
        )

    async def stop(self, grace_s: float) -> None:
        """Deliver what the log holds for up to ``grace_s`` and save the cursor."""
        self._stopping = True
        self._deadline = time.monotonic() + grace_s
        self._stop_requested.set()
        if self._task is not None:
            done, _ = await asyncio.wait([self._task], timeout=grace_s)
            if not done:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._flush_cursor()

    def _save_cursor(self) -> None:
        """Save the cursor in the background; the next batch need not wait for SQLite's lock.

        Under heavy ingest the shard's write lock is busy, and waiting for it after every batch
        halved delivery. Only the newest cursor matters, so saves coalesce; a crash before a
        save lands repeats those batches (at-least-once), it never skips one.
        """
        if self._saver is None or self._saver.done():
            self._saver = asyncio.create_task(self._save_until_current())

    async def _save_until_current(self) -> None:
        saved = None
        try:
            while saved != self.cursor:
                saved = self.cursor
                await self.log.set_cursor(self.name, saved)
        except Exception:  # the next batch's save tries again; until then, at-least-once
            log.exception("router.cursor_save_failed", destination=self.name, shard=self.shard)

    async def _flush_cursor(self) -> None:
        if self._saver is not None:
            await self._saver
        await self._save_until_current()

    def _out_of_time(self) -> bool:
        return self._stopping and time.monotonic() >= self._deadline

    async def _idle(self, beyond: int, timeout_s: float) -> None:
        """Wait for an event newer than ``beyond``, for ``timeout_s``, or for a stop request."""
        if self._stopping:
            return
        waiters = [
            asyncio.ensure_future(self.log.wait_beyond(beyond, timeout_s)),
            asyncio.ensure_future(self._stop_requested.wait()),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _note_read(self, result: ReadResult) -> None:
        """Update the gauges a read tells about, and count the events it left out."""
        backlog = result.newest - self.cursor if result.backlog is None else result.backlog
        self._depth.set(self.shard, max(backlog, 0))
        if result.skipped:
            self._not_routed.inc(result.skipped)
        oldest = result.events[0].received_at if result.events else None
        self._age.set(self.shard, 0.0 if oldest is None else time.time() - oldest)

    async def _run(self) -> None:
        """Deliver until stopped; while the log cannot be read or written, wait and try again.

        A batch interrupted by the storage is read again from the saved cursor: delivered
        again, perhaps, never skipped.
        """
        while True:
            try:
                await self._deliver_until_stopped()
                return
            except StorageUnavailableError as exc:
                if self._stopping:
                    return
                log.warning(
                    "router.storage_unavailable",
                    destination=self.name,
                    shard=self.shard,
                    error=str(exc),
                    retry_s=_STORAGE_RETRY_S,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_requested.wait(), _STORAGE_RETRY_S)

    async def _deliver_until_stopped(self) -> None:
        batch_config = self.config.batch
        prefetch: asyncio.Future[ReadResult] | None = None
        try:
            while not self._out_of_time():
                if await self._deliver_due_retries():
                    continue
                if prefetch is not None:
                    result, prefetch = await prefetch, None
                else:
                    result = await self.log.read(self.cursor, batch_config.max_events, self.sources)
                self._note_read(result)
                events = result.events
                if not events:
                    if result.scanned_to > self.cursor:
                        self.cursor = result.scanned_to
                        self._save_cursor()
                    elif self._stopping:
                        return  # drained
                    else:
                        await self._idle(self.cursor, self._until_next_retry(_IDLE_WAIT_S))
                    continue
                if len(events) < batch_config.max_events:
                    if not self._stopping and events[0].received_at is not None:
                        wait_s = batch_config.max_age_s - (time.time() - events[0].received_at)
                        if wait_s > 0:
                            wait_s = self._until_next_retry(wait_s)
                            await self._idle(self.cursor + batch_config.max_events, wait_s)
                            continue
                else:
                    # A full batch means a backlog: read the next one while this one is sent.
                    prefetch = asyncio.ensure_future(
                        self.log.read(result.scanned_to, batch_config.max_events, self.sources)
                    )
                if not await self._deliver_first_attempt(events):
                    # The destination's circuit is open: the events stay in the log.
                    if prefetch is not None:
                        prefetch.cancel()
                        prefetch = None
                    if self._stopping:
                        return
                    await self._pause()
                    continue
                self.cursor = result.scanned_to
                self._save_cursor()
        except (asyncio.CancelledError, StorageUnavailableError):
            raise
        except Exception:
            log.exception("router.worker_crashed", destination=self.name)
            raise
        finally:
            if prefetch is not None:
                prefetch.cancel()

    def _until_next_retry(self, wait_s: float) -> float:
        """``wait_s``, shortened so the worker wakes when its next retry is due."""
        if self._next_retry_at is None:
            return wait_s
        return max(min(wait_s, self._next_retry_at - time.time()), 0.0)

    async def _pause(self) -> None:
        """Wait while the circuit is open (until a probe may go, or a stop is requested),
        keeping the queue-depth gauge current as the backlog grows."""
        wait_s = self.circuit.wait_s() if self.circuit is not None else 0.0
        # At least a moment: another worker's probe may be out, with nothing to wait for here.
        deadline = time.monotonic() + max(wait_s, _MIN_PAUSE_S)
        while True:
            newest = await self.log.refresh()
            self._depth.set(self.shard, max(newest - self.cursor, 0))
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stopping:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), min(remaining, _IDLE_WAIT_S))

    async def _deliver_first_attempt(self, events: Sequence[Event]) -> bool:
        """Deliver new events once; what fails goes to the retry table or the dead letters.

        The destination stage (integrations, filters, transformations) runs first; what it
        leaves out is counted by rule and is done. Returns ``False`` (nothing sent) while the
        destination's circuit is open.
        """
        if self.circuit is not None and self.circuit.wait_s() > 0:
            return False  # keep the events unjudged in the log until the circuit lets them go
        kept, left_out = self.stage.apply(events)
        for (source, rule, action), count in left_out.items():
            self.metrics.filtered.labels(source, self.name, rule, action).inc(count)
        if not kept:
            return True
        return await self._attempt(kept, None)

    async def _deliver_due_retries(self) -> bool:
        """Deliver up to a batch of this destination's due retries; return whether any were."""
        now = time.time()
        if self._next_retry_at is None or self._next_retry_at > now:
            if now < self._retries_checked_at + _IDLE_WAIT_S:
                return False
            # Retries may also come from elsewhere (a dead-letter replay by the CLI).
            self._retries_checked_at = now
            self._next_retry_at = await self.log.next_retry_at(self.name)
            if self._next_retry_at is None or self._next_retry_at > now:
                return False
        if self.circuit is not None and self.circuit.wait_s() > 0:
            return False  # paused; when a probe may go, it can be these retries
        due = await self.log.due_retries(self.name, now, self.config.batch.max_events)
        if not due:
            self._next_retry_at = await self.log.next_retry_at(self.name)
            return False
        suppressed = self.stage.suppressed()
        if suppressed:
            due = await self._forget_suppressed(due, suppressed)
            if not due:
                return True
        replays = sum(1 for item in due if item.reason == _REPLAYED)
        if replays:
            self.metrics.replayed.labels(self.name).inc(replays)
            log.info("delivery.replaying", destination=self.name, events=replays)
        self.metrics.retried.labels(self.name).inc(sum(1 for item in due if item.attempts))
        await self._attempt([item.event for item in due], due)
        self._next_retry_at = await self.log.next_retry_at(self.name)
        return True

    async def _forget_suppressed(
        self, due: list[PendingRetry], suppressed: frozenset[str]
    ) -> list[PendingRetry]:
        """Drop the due retries of suppressed users (counted); return the others."""
        kept: list[PendingRetry] = []
        gone: list[PendingRetry] = []
        for item in due:
            user_id = item.event.message.get("userId")
            (gone if user_id is not None and str(user_id) in suppressed else kept).append(item)
        if gone:
            await self.log.retries_done(self.name, [item.event.seq for item in gone])
            for item in gone:
                labels = (item.event.source, self.name, "suppression", "suppressed")
                self.metrics.filtered.labels(*labels).inc()
        return kept

    async def _attempt(
        self, events: Sequence[Event], previous: Sequence[PendingRetry] | None
    ) -> bool:
        """One delivery attempt for ``events``, then record every event's new state durably.

        ``previous`` holds the events' retry records when they come from the retry table
        (``None`` for a first attempt). Returns ``False`` without sending anything while the
        destination's circuit is open.
        """
        if self._per_user:
            events, previous = await self._hold_out_of_order(events, previous)
            if not events:
                return True
        if self.circuit is not None and not self.circuit.allows():
            return False
        failpoints.hit_soon("worker.retrying" if previous is not None else "worker.delivering")
        outcomes = await self._send(events)
        failpoints.hit("worker.delivered")
        now = time.time()
        latencies = [
            max(now - event.received_at, 0.0)
            for event, outcome in zip(events, outcomes, strict=True)
            if outcome is None and event.received_at is not None
        ]
        done: list[int] = []
        retries: list[PendingRetry] = []
        dead: list[DeadLetter] = []
        retryable = 0
        for index, (event, outcome) in enumerate(zip(events, outcomes, strict=True)):
            if outcome is None:
                if previous is not None:
                    done.append(event.seq)
                if self._observed:
                    self._observe(event, "delivered", None)
                continue
            self._observe(event, "failed", outcome.reason)
            prior = previous[index] if previous is not None else None
            attempts = 1 if prior is None else prior.attempts + 1
            first_attempt_at = now if prior is None else prior.first_attempt_at
            give_up = None
            if isinstance(outcome, RetryableDeliveryError):
                retryable += 1
                give_up = self.retry_policy.give_up_reason(attempts, first_attempt_at, now)
            will_retry = isinstance(outcome, RetryableDeliveryError) and give_up is None
            reason = outcome.reason if give_up is None else f"{outcome.reason}; {give_up}"
            self.tally.failed(
                self.name,
                now,
                event.message_id,
                reason,
                event.raw,
                outcome.request,
                outcome.response,
                dead=not will_retry,
            )
            if will_retry:
                retries.append(
                    PendingRetry(
                        destination=self.name,
                        event=event,
                        attempts=attempts,
                        first_attempt_at=first_attempt_at,
                        next_attempt_at=now + self.retry_policy.delay_s(attempts, outcome),
                        reason=reason,
                        request=outcome.request,
                        response=outcome.response,
                        user_key=self._user_key(event) if self._per_user else None,
                    )
                )
            else:
                dead.append(
                    DeadLetter(
                        destination=self.name,
                        event=event,
                        reason=reason,
                        attempts=attempts,
                        first_attempt_at=first_attempt_at,
                        last_attempt_at=now,
                        request=outcome.request,
                        response=outcome.response,
                    )
                )
        delivered = len(events) - len(retries) - len(dead)
        if self.circuit is not None:
            self.circuit.record(delivered=delivered, retryable_failures=retryable)
        if delivered:
            self._delivered.inc(delivered)
        if latencies:
            observe_many(self._latency, latencies)
            self.tally.delivered(self.name, latencies, now)
        if done:
            await self.log.retries_done(self.name, done)
        if retries:
            await self._schedule(retries)
        if dead:
            await self._bury(dead)
        return True

    @staticmethod
    def _user_key(event: Event) -> str | None:
        message = event.message
        user = message.get("userId") or message.get("anonymousId")
        return None if user is None else str(user)

    async def _hold_out_of_order(
        self, events: Sequence[Event], previous: Sequence[PendingRetry] | None
    ) -> tuple[list[Event], list[PendingRetry] | None]:
        """``ordering: per_user``: keep, per user, only their earliest pending event; write the
        others to the retry table behind it (due with it). Returns what may be sent now."""
        keys = [self._user_key(event) for event in events]
        users = sorted({key for key in keys if key is not None})
        pending = await self.log.first_pending_of(self.name, users) if users else {}
        head: dict[str, int] = {user: seq for user, (seq, _) in pending.items()}
        for event, key in zip(events, keys, strict=True):
            if key is not None:
                head[key] = min(head.get(key, event.seq), event.seq)
        now = time.time()
        send: list[Event] = []
        send_previous: list[PendingRetry] = []
        held: list[PendingRetry] = []
        for index, (event, key) in enumerate(zip(events, keys, strict=True)):
            prior = previous[index] if previous is not None else None
            if key is None or head[key] == event.seq:
                send.append(event)
                if prior is not None:
                    send_previous.append(prior)
                continue
            held.append(
                PendingRetry(
                    destination=self.name,
                    event=event,
                    attempts=0 if prior is None else prior.attempts,
                    first_attempt_at=now if prior is None else prior.first_attempt_at,
                    next_attempt_at=max(pending.get(key, (0, now))[1], now),
                    reason=_HELD if prior is None else prior.reason,
                    request=None if prior is None else prior.request,
                    response=None if prior is None else prior.response,
                    user_key=key,
                )
            )
        if held:
            await self.log.schedule_retries(held)
            first_due = min(h.next_attempt_at for h in held)
            if self._next_retry_at is None or first_due < self._next_retry_at:
                self._next_retry_at = first_due
        return send, (send_previous if previous is not None else None)

    async def _send(self, events: Sequence[Event]) -> list[DeliveryError | None]:
        """Hand ``events`` to the plugin within the destination's flow limits, timed."""
        self._in_flight.inc(len(events))
        started = time.monotonic()
        try:
            if self.flow is None:
                return await deliver(self.destination, events)
            async with self.flow.slot(len(events)):
                return await deliver(self.destination, events)
        finally:
            self._in_flight.dec(len(events))
            self._attempt_duration.observe(time.monotonic() - started)

    async def _schedule(self, retries: list[PendingRetry]) -> None:
        await self.log.schedule_retries(retries)
        self.metrics.delivery_failures.labels(self.name, "true").inc(len(retries))
        first_due = min(r.next_attempt_at for r in retries)
        if self._next_retry_at is None or first_due < self._next_retry_at:
            self._next_retry_at = first_due
        sample = retries[0]
        log.info(
            "delivery.retry_scheduled",
            destination=self.name,
            events=len(retries),
            attempt=sample.attempts,
            delay_s=round(sample.next_attempt_at - time.time(), 3),
            reason=sample.reason,
        )

    async def _bury(self, dead: list[DeadLetter]) -> None:
        await self.log.dead_letter(dead)
        self.metrics.delivery_failures.labels(self.name, "false").inc(len(dead))
        self.metrics.dead_lettered.labels(self.name).inc(len(dead))
        for letter in dead:
            log.warning(
                "delivery.dead_lettered",
                destination=self.name,
                message_id=letter.event.message_id,
                attempts=letter.attempts,
                reason=letter.reason,
            )

    def _observe(self, event: Event, outcome: str, reason: str | None) -> None:
        if self._observed:
            self._hook(
                destination=self.name,
                source=event.source,
                message_id=event.message_id,
                outcome=outcome,
                reason=reason,
            )
