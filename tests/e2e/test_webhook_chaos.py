"""A misbehaving webhook receiver against the real gateway: retries, Retry-After, dead letters,
and kill -9 while retries are pending."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway import dlq
from gateway.dlq import DeadLetterFilter
from tests.e2e.conftest import Gateway
from tests.e2e.test_lifecycle import post_batch, post_body

RETRY_AFTER_S = 1


class ChaosReceiver:
    """Answers each messageId by script: ``ok-*`` get 500, then 429 + Retry-After, then 200;
    ``bad-*`` always get 400."""

    def __init__(self) -> None:
        self.attempts: dict[str, list[float]] = defaultdict(list)
        self.delivered: set[str] = set()

    async def handle(self, request: web.Request) -> web.Response:
        message = orjson.loads(await request.read())
        message_id = request.headers["webhook-id"]
        assert message_id == message["messageId"]
        tries = self.attempts[message_id]
        tries.append(time.monotonic())
        if message_id.startswith("bad-"):
            return web.Response(status=400, text="unknown event")
        if len(tries) == 1:
            return web.Response(status=500, text="database down")
        if len(tries) == 2:
            return web.Response(status=429, headers={"Retry-After": str(RETRY_AFTER_S)})
        self.delivered.add(message_id)
        return web.Response(status=204)


async def test_every_event_ends_delivered_or_dead_lettered(tmp_path: Path) -> None:
    """Events that fail twice are delivered on the third attempt, after waiting out the
    Retry-After; events the receiver refuses are dead-lettered with the reason; a kill -9 while
    retries are pending loses none of them."""
    receiver = ChaosReceiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    gateway = Gateway(
        tmp_path,
        destinations=[
            {
                "name": "hook",
                "type": "webhook",
                "batch": {"max_events": 50, "max_age_s": 0.05},
                "retry": {"base_delay_s": 0.05, "max_delay_s": 0.2},
                # Every event fails twice by design here; the breaker has its own tests.
                "circuit": {"enabled": False},
                "settings": {"url": str(server.make_url("/hook")), "timeout_s": 5},
            }
        ],
    )
    try:
        await asyncio.to_thread(gateway.start)
        good = [f"ok-{i}" for i in range(40)]
        bad = [f"bad-{i}" for i in range(5)]
        assert await asyncio.to_thread(post_batch, gateway, good + bad) == 200
        # Once every good event has failed twice, their retries wait on disk: kill the gateway.
        deadline = time.monotonic() + 30
        while not all(len(receiver.attempts[m]) >= 2 for m in good):
            assert time.monotonic() < deadline, "the first two attempts never came"
            await asyncio.sleep(0.05)
        await asyncio.to_thread(gateway.kill)
        assert not receiver.delivered
        await asyncio.to_thread(gateway.start)
        while receiver.delivered != set(good):
            assert time.monotonic() < deadline, f"delivered {len(receiver.delivered)} of 40"
            await asyncio.sleep(0.05)
        for message_id in good:
            second, third = receiver.attempts[message_id][1:3]
            assert third - second >= RETRY_AFTER_S - 0.05  # Retry-After was respected
        letters = dlq.list_letters(gateway.root / "data", DeadLetterFilter(destination="hook"))
        assert sorted(letter.message_id for letter in letters) == sorted(bad)
        assert all(letter.reason.startswith("HTTP 400") for letter in letters)
        assert all(letter.response and "unknown event" in letter.response for letter in letters)
        assert all(len(receiver.attempts[m]) == 1 for m in bad)  # permanent: never retried
    finally:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.kill()
        await server.close()


async def test_kill_9_during_batch_delivery_loses_nothing(tmp_path: Path) -> None:
    """A gateway killed while a slow receiver is holding a batch redelivers it after restart:
    every acknowledged event arrives at least once, duplicates only from the batch in hand."""
    received: list[str] = []
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        batch = orjson.loads(await request.read())
        if not release.is_set():
            await asyncio.sleep(30)  # never answers before the kill
        received.extend(m["messageId"] for m in batch)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", slow)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    gateway = Gateway(
        tmp_path,
        destinations=[
            {
                "name": "hook",
                "type": "webhook",
                "batch": {"max_events": 100, "max_age_s": 0.05},
                "settings": {"url": str(server.make_url("/hook")), "mode": "batch"},
            }
        ],
    )
    ids = [f"inflight-{i}" for i in range(60)]
    try:
        await asyncio.to_thread(gateway.start)
        assert await asyncio.to_thread(post_batch, gateway, ids) == 200
        await asyncio.sleep(1.0)  # the batch is now held by the receiver
        assert received == []
        await asyncio.to_thread(gateway.kill)
        release.set()
        await asyncio.to_thread(gateway.start)
        deadline = time.monotonic() + 30
        while not set(ids) <= set(received):
            assert time.monotonic() < deadline, f"{len(set(received))} of 60 arrived"
            await asyncio.sleep(0.05)
        assert len(received) - len(set(received)) <= 100
    finally:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.kill()
        await server.close()


class MisbehavingReceiver:
    """Per messageId prefix: ``gone-*`` 410 always; ``slow-*`` answers the first attempt after
    the gateway's timeout; ``reset-*`` drops the connection on the first attempt; ``u-*``
    (one user's events, ordered) fail their first two attempts for ``u-0`` only."""

    def __init__(self) -> None:
        self.attempts: dict[str, int] = defaultdict(int)
        self.delivered: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        message_id = request.headers["webhook-id"]
        await request.read()
        self.attempts[message_id] += 1
        first = self.attempts[message_id] == 1
        if message_id.startswith("gone-"):
            return web.Response(status=410, text="this hook was deleted")
        if message_id.startswith("slow-") and first:
            await asyncio.sleep(3)
        if message_id.startswith("reset-") and first:
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=204)
        if message_id == "u-0" and self.attempts[message_id] <= 2:
            return web.Response(status=503)
        self.delivered.append(message_id)
        return web.Response(status=204)


async def test_timeouts_resets_410_and_per_user_order(tmp_path: Path) -> None:
    """Through the real process: a timed-out and a reset delivery are retried and arrive, a 410
    is dead-lettered as gone without a retry, and with ordering: per_user a user's later events
    wait behind their retrying first event while other users' events arrive."""
    receiver = MisbehavingReceiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    gateway = Gateway(
        tmp_path,
        ingress_processes=0,  # one shard: per-user order is kept per shard
        destinations=[
            {
                "name": "hook",
                "type": "webhook",
                "ordering": "per_user",
                "batch": {"max_events": 50, "max_age_s": 0.05},
                "retry": {"base_delay_s": 0.05, "max_delay_s": 0.2},
                "circuit": {"enabled": False},
                "settings": {"url": str(server.make_url("/hook")), "timeout_s": 1},
            }
        ],
    )
    ordered = [f"u-{i}" for i in range(4)]
    others = ["slow-1", "reset-1", "other-1", "other-2"]
    try:
        await asyncio.to_thread(gateway.start)
        body = orjson.dumps(
            {
                "batch": [
                    {"type": "track", "event": "E", "messageId": m, "userId": "user-u"}
                    for m in ordered
                ]
                + [
                    {"type": "track", "event": "E", "messageId": m, "userId": m}
                    for m in [*others, "gone-1"]
                ]
            }
        )
        status = await asyncio.to_thread(post_body, gateway, body)
        assert status == 200
        deadline = time.monotonic() + 30
        while not set(ordered + others) <= set(receiver.delivered):
            assert time.monotonic() < deadline, f"delivered {receiver.delivered}"
            await asyncio.sleep(0.05)
        assert [m for m in receiver.delivered if m.startswith("u-")] == ordered
        assert receiver.delivered.index("other-1") < receiver.delivered.index("u-0")
        assert receiver.attempts["slow-1"] >= 2
        assert receiver.attempts["reset-1"] >= 2
        while not dlq.list_letters(gateway.root / "data", DeadLetterFilter(destination="hook")):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        [gone] = dlq.list_letters(gateway.root / "data", DeadLetterFilter())
        assert gone.message_id == "gone-1"
        assert "410" in gone.reason
        assert receiver.attempts["gone-1"] == 1
    finally:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.kill()
        await server.close()
