"""Tests for gateway/router.py: per-destination workers, batching, retries, cursors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pluggy
import pytest
from pydantic import BaseModel, ConfigDict

from gateway import BatchDestination, Event, PermanentDeliveryError, RetryableDeliveryError
from gateway.config import GatewayConfig, parse_config
from gateway.errors import DeliveryError
from gateway.events import NormalizedEvent
from gateway.log import SqliteEventLog
from gateway.metrics import Metrics
from gateway.plugins import hookimpl, make_plugin_manager
from gateway.router import RetryPolicy, Router

NO_WAIT = RetryPolicy(base_delay_s=0, max_delay_s=0)


class RecordingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fail_first: int = 0
    """Answer retryable for this many attempts before succeeding."""
    reject: list[str] = []
    """messageIds answered with a permanent error."""
    crash_first: int = 0
    """Raise a plain exception (a plugin bug) for this many attempts."""


class Recorder:
    """What every RecordingDestination of one test delivered, by destination name."""

    def __init__(self) -> None:
        self.delivered: dict[str, list[str]] = {}
        self.batches: dict[str, list[int]] = {}
        self.attempts = 0
        self.finished: list[tuple[str, str, str]] = []

    @hookimpl
    def register_destination_types(self) -> list[type[Any]]:
        recorder = self

        class RecordingDestination(BatchDestination[RecordingSettings]):
            type_name = "recording"
            settings_model = RecordingSettings
            store: ClassVar[Recorder] = recorder

            async def send_batch(
                self, events: Sequence[Event]
            ) -> Sequence[DeliveryError | None] | None:
                self.store.attempts += 1
                if self.store.attempts <= self.settings.crash_first:
                    raise RuntimeError("plugin bug")
                if self.store.attempts <= self.settings.fail_first:
                    raise RetryableDeliveryError("HTTP 503", retry_after_s=0)
                self.store.batches.setdefault(self.name, []).append(len(events))
                outcomes: list[DeliveryError | None] = []
                for event in events:
                    if event.message_id in self.settings.reject:
                        outcomes.append(PermanentDeliveryError("HTTP 400", response="bad"))
                    else:
                        self.store.delivered.setdefault(self.name, []).append(event.message_id)
                        outcomes.append(None)
                return outcomes

        return [RecordingDestination]

    @hookimpl
    def delivery_finished(self, destination: str, message_id: str, outcome: str) -> None:
        self.finished.append((destination, message_id, outcome))


def make_events(n: int, source: str = "web", start: int = 0) -> list[NormalizedEvent]:
    return [
        NormalizedEvent(source, f"m{start + i}", time.time(), b'{"type":"track"}') for i in range(n)
    ]


async def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait until ``check()`` holds (polling), failing after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


Harness = Callable[..., Awaitable[tuple[Router, SqliteEventLog]]]


@pytest.fixture(name="recorder")
def _recorder() -> Recorder:
    return Recorder()


@pytest.fixture(name="plugin_manager")
def _plugin_manager(recorder: Recorder) -> pluggy.PluginManager:
    pm = make_plugin_manager(load_entry_points=False)
    pm.register(recorder, name="recorder")
    return pm


@pytest.fixture(name="start")
async def _start(tmp_path: Path, plugin_manager: pluggy.PluginManager) -> AsyncIterator[Harness]:
    running: list[tuple[Router, SqliteEventLog]] = []

    async def start(
        destinations: list[dict[str, Any]], sources: list[dict[str, Any]] | None = None
    ) -> tuple[Router, SqliteEventLog]:
        config: GatewayConfig = parse_config(
            {
                "storage": {"data_dir": str(tmp_path)},
                "sources": sources or [{"name": "web", "write_keys": ["k"]}],
                "destinations": destinations,
            },
            env={},
            plugin_manager=plugin_manager,
        )
        event_log = SqliteEventLog(tmp_path, disk_quota_bytes=1 << 30)
        await event_log.open()
        router = Router(config, [event_log], Metrics(), plugin_manager, NO_WAIT)
        await router.start()
        running.append((router, event_log))
        return router, event_log

    yield start
    for router, event_log in running:
        await stop(router, event_log)


async def stop(router: Router, event_log: SqliteEventLog) -> None:
    if not event_log._closing:
        await router.stop(grace_s=5)
        await event_log.close()


def dest(name: str = "rec", max_events: int = 100, **settings: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "recording",
        "batch": {"max_events": max_events, "max_age_s": 0},
        "settings": settings,
    }


async def test_delivers_in_order_in_bounded_batches(start: Harness, recorder: Recorder) -> None:
    """Events arrive in log order in batches of at most max_events, and the cursor follows."""
    router, event_log = await start([dest(max_events=4)])
    await event_log.append(make_events(10))
    await eventually(lambda: len(recorder.delivered.get("rec", [])) == 10)
    assert recorder.delivered["rec"] == [f"m{i}" for i in range(10)]
    assert max(recorder.batches["rec"]) <= 4
    await eventually(lambda: router.workers["rec"][0].cursor == 10)
    assert await event_log.get_cursor("rec") == 10


async def test_batches_wait_for_max_age(start: Harness, recorder: Recorder) -> None:
    """An incomplete batch waits up to max_age_s for company, then goes."""
    destination = dest(max_events=1000)
    destination["batch"]["max_age_s"] = 0.3
    _, event_log = await start([destination])
    await event_log.append(make_events(3))
    await event_log.append(make_events(3, start=3))
    await eventually(lambda: len(recorder.delivered.get("rec", [])) == 6)
    assert recorder.batches["rec"] == [6]


async def test_retryable_failures_are_retried(start: Harness, recorder: Recorder) -> None:
    """A retryable failure is retried (zero delay via the policy) until delivered."""
    router, event_log = await start([dest(fail_first=3)])
    await event_log.append(make_events(2))
    await eventually(lambda: recorder.delivered.get("rec") == ["m0", "m1"])
    assert recorder.attempts == 4
    metric = router.metrics.delivery_failures.labels("rec", "true")._value.get()
    assert metric == 6


async def test_plugin_bug_is_retried_not_fatal(start: Harness, recorder: Recorder) -> None:
    """A plugin raising a plain exception is treated as retryable; the worker survives."""
    _, event_log = await start([dest(crash_first=2)])
    await event_log.append(make_events(1))
    await eventually(lambda: recorder.delivered.get("rec") == ["m0"])


async def test_permanent_failure_dead_letters_only_that_event(
    start: Harness, recorder: Recorder
) -> None:
    """One permanent failure in a batch is dead-lettered; its neighbours are delivered once."""
    router, event_log = await start([dest(reject=["m1"])])
    await event_log.append(make_events(3))
    await eventually(lambda: router.workers["rec"][0].cursor == 3)
    assert recorder.delivered["rec"] == ["m0", "m2"]
    assert await event_log.count_dead_letters("rec") == 1
    assert ("rec", "m1", "failed") in recorder.finished
    assert ("rec", "m0", "delivered") in recorder.finished


async def test_restart_resumes_from_the_cursor(start: Harness, recorder: Recorder) -> None:
    """After a restart a destination gets only what it had not handled."""
    router, event_log = await start([dest()])
    await event_log.append(make_events(5))
    await eventually(lambda: router.workers["rec"][0].cursor == 5)
    await stop(router, event_log)
    recorder.delivered.clear()
    _, event_log = await start([dest()])
    await event_log.append(make_events(2, start=5))
    await eventually(lambda: len(recorder.delivered.get("rec", [])) == 2)
    await asyncio.sleep(0.05)
    assert recorder.delivered["rec"] == ["m5", "m6"]


async def test_stop_while_retrying_keeps_the_event(start: Harness, recorder: Recorder) -> None:
    """Stopping with a retry outstanding leaves the event for the next start."""
    router, event_log = await start([dest(fail_first=10**9)])
    await event_log.append(make_events(1))
    await eventually(lambda: recorder.attempts >= 1)
    await stop(router, event_log)
    assert await saved_cursor_of(event_log) == 0


async def test_sources_feed_only_their_destinations(start: Harness, recorder: Recorder) -> None:
    """A destination receives only the sources configured to feed it."""
    sources = [
        {"name": "web", "write_keys": ["k1"], "destinations": ["a"]},
        {"name": "ios", "write_keys": ["k2"]},
    ]
    _, event_log = await start([dest("a"), dest("b")], sources)
    await event_log.append(make_events(2, "web") + make_events(2, "ios", start=2))
    await eventually(lambda: len(recorder.delivered.get("b", [])) == 2)
    await eventually(lambda: len(recorder.delivered.get("a", [])) == 4)
    assert recorder.delivered["b"] == ["m2", "m3"]


async def test_new_destination_starts_at_the_end(start: Harness, recorder: Recorder) -> None:
    """A destination added later does not replay history."""
    router, event_log = await start([dest("a")])
    await event_log.append(make_events(3))
    await eventually(lambda: router.workers["a"][0].cursor == 3)
    await stop(router, event_log)
    _, event_log = await start([dest("a"), dest("b")])
    await event_log.append(make_events(1, start=3))
    await eventually(lambda: recorder.delivered.get("b") == ["m3"])


async def test_disabled_destination_gets_nothing(start: Harness, recorder: Recorder) -> None:
    """enabled: false builds no worker."""
    disabled = {**dest("off"), "enabled": False}
    router, event_log = await start([dest("on"), disabled])
    await event_log.append(make_events(1))
    await eventually(lambda: recorder.delivered.get("on") == ["m0"])
    assert "off" not in router.workers
    assert "off" not in recorder.delivered


def test_retry_policy_delays_are_capped_and_jittered() -> None:
    """The schedule grows exponentially, with full jitter, never past max_delay_s."""
    policy = RetryPolicy(base_delay_s=1, max_delay_s=8)
    delays = policy.delays()
    sample = [next(delays) for _ in range(50)]
    assert all(0 <= d <= 8 for d in sample)
    assert len(set(sample)) > 1
    hinted = policy.delay_for(RetryableDeliveryError("429", retry_after_s=12), 0.5)
    assert hinted == 12
    assert policy.delay_for(RetryableDeliveryError("429", retry_after_s=10**6), 0.5) == 300
    assert policy.delay_for(RetryableDeliveryError("503"), 0.5) == 0.5


async def test_every_shard_is_delivered_with_one_destination_instance(
    tmp_path: Path, plugin_manager: pluggy.PluginManager, recorder: Recorder
) -> None:
    """With two log shards (two ingress processes), a destination gets both shards' events
    through one plugin instance, each shard with its own cursor."""
    config = parse_config(
        {
            "storage": {"data_dir": str(tmp_path)},
            "sources": [{"name": "web", "write_keys": ["k"]}],
            "destinations": [dest()],
        },
        env={},
        plugin_manager=plugin_manager,
    )
    logs = [SqliteEventLog(tmp_path, disk_quota_bytes=1 << 30, shard=n) for n in (0, 1)]
    for event_log in logs:
        await event_log.open()
    router = Router(config, logs, Metrics(), plugin_manager, NO_WAIT)
    await router.start()
    try:
        await logs[0].append(make_events(3))
        await logs[1].append(make_events(2, start=3))
        await eventually(lambda: len(recorder.delivered.get("rec", [])) == 5)
        assert sorted(recorder.delivered["rec"]) == [f"m{i}" for i in range(5)]
        assert len(router.destinations) == 1
        workers = router.workers["rec"]
        await eventually(lambda: [w.cursor for w in workers] == [3, 2])
    finally:
        await router.stop(grace_s=5)
        for event_log in logs:
            await event_log.close()
    assert [await saved_cursor_of(log) for log in logs] == [3, 2]


async def saved_cursor_of(event_log: SqliteEventLog) -> int | None:
    """The cursor of "rec" in ``event_log``'s shard, read by a fresh log."""
    reopened = SqliteEventLog(event_log.data_dir, disk_quota_bytes=1 << 30, shard=event_log.shard)
    await reopened.open()
    try:
        return await reopened.get_cursor("rec")
    finally:
        await reopened.close()
