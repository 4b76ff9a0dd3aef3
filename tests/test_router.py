"""Tests for gateway/router.py and gateway/worker.py: workers, batching, retries, cursors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pluggy
import pytest
from pydantic import BaseModel, ConfigDict

from gateway import BatchDestination, Event, PermanentDeliveryError, RetryableDeliveryError, dlq
from gateway.config import GatewayConfig, parse_config
from gateway.dlq import DeadLetterFilter
from gateway.errors import DeliveryError
from gateway.events import NormalizedEvent
from gateway.log import SqliteEventLog
from gateway.metrics import Metrics
from gateway.plugins import hookimpl, make_plugin_manager
from gateway.retry import RetryPolicy
from gateway.router import Router

NO_WAIT = RetryPolicy(base_delay_s=0, max_delay_s=0)


class RecordingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fail_first: int = 0
    """Answer retryable for this many attempts before succeeding."""
    reject: list[str] = []
    """messageIds answered with a permanent error."""
    crash_first: int = 0
    """Raise a plain exception (a plugin bug) for this many attempts."""
    retry_after_s: float = 0
    """The retry hint sent with each retryable failure."""
    fail_ids: dict[str, int] = {}
    """messageId -> how many of its attempts fail (retryably) before it is accepted."""


class Recorder:
    """What every RecordingDestination of one test delivered, by destination name."""

    def __init__(self) -> None:
        self.delivered: dict[str, list[str]] = {}
        self.batches: dict[str, list[int]] = {}
        self.attempts = 0
        self.finished: list[tuple[str, str, str]] = []
        self.failures_left: dict[str, int] = {}

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
                    raise RetryableDeliveryError(
                        "HTTP 503", retry_after_s=self.settings.retry_after_s
                    )
                self.store.batches.setdefault(self.name, []).append(len(events))
                outcomes: list[DeliveryError | None] = []
                for event in events:
                    left = self.store.failures_left.setdefault(
                        event.message_id, self.settings.fail_ids.get(event.message_id, 0)
                    )
                    if left:
                        self.store.failures_left[event.message_id] = left - 1
                        outcomes.append(RetryableDeliveryError("HTTP 503", retry_after_s=0))
                    elif event.message_id in self.settings.reject:
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
        destinations: list[dict[str, Any]],
        sources: list[dict[str, Any]] | None = None,
        *,
        use_config_policy: bool = False,
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
        policy = None if use_config_policy else NO_WAIT
        router = Router(config, [event_log], Metrics(), plugin_manager, policy)
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


async def test_a_failing_event_does_not_hold_up_the_rest(
    start: Harness, recorder: Recorder
) -> None:
    """A batch that fails goes to the retry table; the events behind it are delivered."""
    router, event_log = await start([dest(max_events=2, fail_first=1, retry_after_s=3600)])
    await event_log.append(make_events(4))
    await eventually(lambda: recorder.delivered.get("rec") == ["m2", "m3"])
    assert await event_log.count_retries("rec") == 2
    [first, _] = await event_log.due_retries("rec", now=10**10, limit=10)
    assert (first.event.message_id, first.attempts, first.reason) == ("m0", 1, "HTTP 503")
    assert first.next_attempt_at > first.first_attempt_at + 3000  # the hint, not a backoff
    await eventually(lambda: router.workers["rec"][0].cursor == 4)


async def test_retries_give_up_into_dead_letters(
    start: Harness, recorder: Recorder, tmp_path: Path
) -> None:
    """After max_attempts the event is dead-lettered with the reason, and not retried again."""
    destination = dest(fail_first=10**9)
    destination["retry"] = {"max_attempts": 3, "base_delay_s": 0, "max_delay_s": 0}
    _, event_log = await start([destination], use_config_policy=True)
    await event_log.append(make_events(1))
    await eventually(lambda: recorder.attempts == 3)
    await asyncio.sleep(0.05)
    assert recorder.attempts == 3
    assert await event_log.count_retries("rec") == 0
    assert await event_log.count_dead_letters("rec") == 1


async def test_pending_retries_survive_a_restart(start: Harness, recorder: Recorder) -> None:
    """A retry scheduled before a stop is delivered after the next start."""
    router, event_log = await start([dest(fail_first=1, retry_after_s=0.5)])
    await event_log.append(make_events(1))
    await eventually(lambda: recorder.attempts == 1)
    await stop(router, event_log)
    assert "rec" not in recorder.delivered
    _, event_log = await start([dest(retry_after_s=0.5)])
    await eventually(lambda: recorder.delivered.get("rec") == ["m0"])
    for _ in range(500):  # the delivery's bookkeeping commits just after the send
        if await event_log.count_retries("rec") == 0:
            break
        await asyncio.sleep(0.01)
    assert await event_log.count_retries("rec") == 0


async def test_sources_feed_only_their_destinations(start: Harness, recorder: Recorder) -> None:
    """A destination receives only the sources configured to feed it; the others are counted
    as filtered with the rule that left them out."""
    sources = [
        {"name": "web", "write_keys": ["k1"], "destinations": ["a"]},
        {"name": "ios", "write_keys": ["k2"]},
    ]
    router, event_log = await start([dest("a"), dest("b")], sources)
    await event_log.append(make_events(2, "web") + make_events(2, "ios", start=2))
    await eventually(lambda: len(recorder.delivered.get("b", [])) == 2)
    await eventually(lambda: len(recorder.delivered.get("a", [])) == 4)
    assert recorder.delivered["b"] == ["m2", "m3"]
    filtered = router.metrics.filtered.labels("*", "b", "source_not_routed", "skipped")
    await eventually(lambda: filtered._value.get() == 2)
    routed = router.metrics.filtered.labels("*", "a", "source_not_routed", "skipped")
    assert routed._value.get() == 0


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
    error = RetryableDeliveryError("503")
    firsts = {policy.delay_s(1, error) for _ in range(50)}
    assert all(0 <= d <= 1 for d in firsts)
    assert len(firsts) > 1
    assert all(0 <= policy.delay_s(20, error) <= 8 for _ in range(50))
    assert max(policy.delay_s(4, error) for _ in range(200)) > 4  # 8 s ceiling at attempt 4


def test_retry_after_is_honoured_within_bounds() -> None:
    """A destination's Retry-After wins over the schedule, capped at max_retry_after_s."""
    policy = RetryPolicy(max_retry_after_s=300)
    assert policy.delay_s(1, RetryableDeliveryError("429", retry_after_s=12)) == 12
    assert policy.delay_s(1, RetryableDeliveryError("429", retry_after_s=10**6)) == 300
    assert policy.delay_s(1, RetryableDeliveryError("429", retry_after_s=-5)) == 0


@pytest.mark.parametrize(
    ("attempts", "age_s", "gives_up"),
    [
        pytest.param(1, 0, False, id="fresh"),
        pytest.param(29, 100, False, id="below-both"),
        pytest.param(30, 100, True, id="max-attempts"),
        pytest.param(2, 4 * 3600, True, id="max-age"),
    ],
)
def test_give_up_limits(attempts: int, age_s: float, gives_up: bool) -> None:
    """The default policy gives up at 30 attempts or 4 hours, whichever comes first."""
    reason = RetryPolicy().give_up_reason(attempts, first_attempt_at=0, now=age_s)
    assert (reason is not None) == gives_up


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
    assert [await saved_cursor_of(event_log) for event_log in logs] == [3, 2]


async def saved_cursor_of(event_log: SqliteEventLog) -> int | None:
    """The cursor of "rec" in ``event_log``'s shard, read by a fresh log."""
    reopened = SqliteEventLog(event_log.data_dir, disk_quota_bytes=1 << 30, shard=event_log.shard)
    await reopened.open()
    try:
        return await reopened.get_cursor("rec")
    finally:
        await reopened.close()


async def test_replayed_dead_letter_is_delivered_and_counted(
    start: Harness, recorder: Recorder, tmp_path: Path
) -> None:
    """A dead letter replayed (as by `eventgate dlq replay`) reaches its destination again."""
    router, event_log = await start([dest(reject=["m0"])])
    await event_log.append(make_events(1))
    await eventually(lambda: router.workers["rec"][0].cursor == 1)
    assert await event_log.count_dead_letters("rec") == 1
    await stop(router, event_log)
    assert dlq.replay(tmp_path, DeadLetterFilter(destination="rec")) == 1
    router, event_log = await start([dest()])
    await eventually(lambda: recorder.delivered.get("rec") == ["m0"])
    assert router.metrics.replayed.labels("rec")._value.get() == 1
    await eventually(lambda: router.workers["rec"][0]._next_retry_at is None)
    assert await event_log.count_retries("rec") == 0


async def test_circuit_pauses_a_failing_destination(start: Harness, recorder: Recorder) -> None:
    """A destination that keeps failing gets no more attempts while its circuit is open; the
    events wait in the log (not the retry table), and a probe resumes delivery when it heals."""
    destination = dest(max_events=1, fail_first=3)
    destination["circuit"] = {"failure_threshold": 3, "open_s": 0.5}
    router, event_log = await start([destination])
    await event_log.append(make_events(5))
    await eventually(lambda: recorder.attempts == 3)
    await asyncio.sleep(0.2)
    assert recorder.attempts == 3  # open: nothing more was sent
    assert router.metrics.circuit_open.labels("rec")._value.get() == 1
    # m0 failed three times (due retries go first, with zero delays); the rest wait in the log
    assert await event_log.count_retries("rec") == 1
    assert router.workers["rec"][0].cursor == 1
    await eventually(lambda: len(recorder.delivered.get("rec", [])) == 5)
    assert router.metrics.circuit_open.labels("rec")._value.get() == 0


async def test_delivery_gauges_and_attempt_durations(start: Harness, recorder: Recorder) -> None:
    """Attempts are timed, nothing is left in flight, and the oldest-pending age falls to 0
    once the destination has caught up."""
    router, event_log = await start([dest()])
    await event_log.append(make_events(3))
    await eventually(lambda: len(recorder.delivered.get("rec", [])) == 3)
    metrics = router.metrics
    assert metrics.attempt_duration.labels("rec")._sum.get() > 0
    assert metrics.in_flight.labels("rec")._value.get() == 0
    await eventually(lambda: metrics.oldest_pending_age.labels("rec")._value.get() == 0)


def user_events(*pairs: tuple[str, str]) -> list[NormalizedEvent]:
    """Track events with the given (messageId, userId) pairs."""
    return [
        NormalizedEvent(
            "web", message_id, time.time(), b'{"type":"track","userId":"%s"}' % user.encode()
        )
        for message_id, user in pairs
    ]


@pytest.mark.parametrize("ordering", ["per_user", "none"])
async def test_per_user_ordering(start: Harness, recorder: Recorder, ordering: str) -> None:
    """With ordering: per_user a user's later events wait behind their retrying event while
    other users flow; without it they overtake it."""
    destination = dest(fail_ids={"a1": 2})
    destination["ordering"] = ordering
    _, event_log = await start([destination])
    await event_log.append(
        user_events(("a1", "A"), ("b1", "B"), ("a2", "A"), ("b2", "B"), ("a3", "A"))
    )
    await eventually(lambda: len(recorder.delivered.get("rec", [])) == 5)
    delivered = recorder.delivered["rec"]
    user_a = [m for m in delivered if m.startswith("a")]
    if ordering == "per_user":
        assert user_a == ["a1", "a2", "a3"]
    else:
        assert user_a == ["a2", "a3", "a1"]
    assert delivered.index("b2") < delivered.index("a1")  # B never waited for A
    for _ in range(200):  # the last delivery's bookkeeping commits just after the send
        if await event_log.count_retries("rec") == 0:
            break
        await asyncio.sleep(0.01)
    assert await event_log.count_retries("rec") == 0


async def test_suppressed_users_are_not_retried_or_delivered_late(
    start: Harness, recorder: Recorder
) -> None:
    """After a user is suppressed, their events still in the log and their pending retries
    are left out (counted), while other users' events flow."""
    router, event_log = await start(
        [
            {
                "name": "d",
                "type": "recording",
                "batch": {"max_events": 10, "max_age_s": 0},
                "retry": {"max_attempts": 10**9},
                "circuit": {"enabled": False},
                "settings": {"fail_ids": {"gone-1": 10**9}},
            }
        ],
        use_config_policy=True,
    )

    def event(message_id: str, user: str) -> NormalizedEvent:
        body = orjson.dumps({"type": "track", "userId": user, "messageId": message_id})
        return NormalizedEvent("web", message_id, time.time(), body)

    await event_log.append([event("gone-1", "gone"), event("kept-1", "kept")])
    await eventually(lambda: recorder.delivered.get("d") == ["kept-1"])
    await eventually(lambda: recorder.failures_left.get("gone-1", 10**9) < 10**9 - 1)  # retried
    router.control.suppress(["gone"], "test")
    await eventually(lambda: "gone" in router.suppressed)
    await event_log.append([event("gone-2", "gone"), event("kept-2", "kept")])
    await eventually(lambda: recorder.delivered.get("d") == ["kept-1", "kept-2"])
    left_out = router.metrics.filtered.labels("web", "d", "suppression", "suppressed")
    await eventually(lambda: left_out._value.get() == 2)  # gone-2 unsent, gone-1's retry dropped
    assert await event_log.count_retries("d") == 0
