"""Distributed mode end to end: real gateway processes on a real NATS JetStream.

Two nodes share one JetStream and a webhook receiver on 127.0.0.1; the tests kill a node with
SIGKILL, stop NATS, and restart a member of a 3-node JetStream cluster, and check that every
acknowledged messageId reaches the receiver and that nothing is acknowledged that was not stored.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import WRITE_KEY
from tests.e2e.conftest import Gateway
from tests.nats import NatsCluster, NatsServer

BATCH = 20
_prefixes = itertools.count()


class Receiver:
    """A webhook endpoint that remembers every messageId delivered to it."""

    def __init__(self) -> None:
        self.delivered: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.delivered.append(request.headers["webhook-id"])
        return web.Response(status=204)

    async def wait_for(self, ids: set[str], timeout_s: float = 60) -> None:
        """Wait until every id in ``ids`` was delivered."""
        deadline = time.monotonic() + timeout_s
        while missing := ids - set(self.delivered):
            example = sorted(missing)[:5]
            assert time.monotonic() < deadline, f"{len(missing)} never delivered, e.g. {example}"
            await asyncio.sleep(0.1)


@pytest.fixture(name="receiver")
async def _receiver() -> AsyncIterator[tuple[Receiver, str]]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield receiver, str(server.make_url("/hook"))
    await server.close()


@pytest.fixture(name="nats_server")
def _nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    yield server
    server.kill()


def node(root: Path, servers: list[str], hook_url: str, prefix: str, **jetstream: Any) -> Gateway:
    """A gateway node on JetStream with one webhook destination and one ingress process."""
    storage = {
        "backend": "jetstream",
        "jetstream": {
            "servers": servers,
            "stream_prefix": prefix,
            "partitions": 4,
            "lease_ttl_s": 2,
            "timeout_s": 2,
            **jetstream,
        },
    }
    destination = {
        "name": "hook",
        "type": "webhook",
        "batch": {"max_events": 100, "max_age_s": 0.05},
        "retry": {"base_delay_s": 0.05, "max_delay_s": 0.5},
        "settings": {"url": hook_url, "timeout_s": 5},
    }
    root.mkdir(parents=True, exist_ok=True)
    return Gateway(root, destinations=[destination], ingress_processes=1, storage=storage)


def new_prefix() -> str:
    """Stream names of their own for each test."""
    return f"E{next(_prefixes)}_{time.time_ns()}"


async def send(
    urls: list[str], sender: int, stop: asyncio.Event, acknowledged: set[str], statuses: list[int]
) -> None:
    """Post batches of unique events to the nodes in turn until ``stop``; keep the 200s' ids."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for request in itertools.count():
            if stop.is_set():
                return
            url = urls[request % len(urls)]
            ids = [f"s{sender}-r{request}-e{i}" for i in range(BATCH)]
            body = {
                "writeKey": WRITE_KEY,
                "batch": [
                    {"type": "track", "userId": f"u{sender}-{i}", "event": "E", "messageId": m}
                    for i, m in enumerate(ids)
                ],
            }
            try:
                async with session.post(f"{url}/v1/batch", data=orjson.dumps(body)) as response:
                    statuses.append(response.status)
                    if response.status == 200:
                        acknowledged.update(ids)
                    else:
                        assert response.status == 503, await response.text()
                        assert (await response.json())["code"].startswith("storage_")
            except (aiohttp.ClientError, TimeoutError):
                statuses.append(0)  # that node is down: nothing acknowledged
            await asyncio.sleep(0.01)


def delivered_by(gateway: Gateway) -> float:
    """The node's ``eventgate_events_delivered_total`` for the webhook, from its /metrics."""
    import urllib.request

    with urllib.request.urlopen(f"{gateway.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.findall(
        r'^eventgate_events_delivered_total\{destination="hook"\} (\S+)$', text, re.M
    )
    return sum(float(v) for v in found)


async def load(
    urls: list[str], seconds: float, senders: int = 3
) -> tuple[set[str], list[int], asyncio.Event, list[asyncio.Task[None]]]:
    """Start ``senders`` concurrent senders; the caller stops them."""
    acknowledged: set[str] = set()
    statuses: list[int] = []
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(send(urls, n, stop, acknowledged, statuses)) for n in range(senders)
    ]
    await asyncio.sleep(seconds)
    return acknowledged, statuses, stop, tasks


async def test_two_nodes_share_the_load_and_survive_a_kill_9(
    tmp_path: Path, nats_server: NatsServer, receiver: tuple[Receiver, str]
) -> None:
    """Two nodes both deliver; one is killed with SIGKILL mid-load; the other takes over its
    partitions and every acknowledged event reaches the receiver."""
    hook, hook_url = receiver
    prefix = new_prefix()
    first = node(tmp_path / "a", [nats_server.url], hook_url, prefix)
    second = node(tmp_path / "b", [nats_server.url], hook_url, prefix)
    try:
        await asyncio.gather(asyncio.to_thread(first.start), asyncio.to_thread(second.start))
        acknowledged, _, stop, tasks = await load([first.url, second.url], 1.0)
        deadline = time.monotonic() + 30
        while True:  # until both nodes have delivered something, under load all along
            shares = await asyncio.gather(
                asyncio.to_thread(delivered_by, first), asyncio.to_thread(delivered_by, second)
            )
            if all(share > 0 for share in shares):
                break
            assert time.monotonic() < deadline, f"the nodes did not both deliver: {shares}"
            await asyncio.sleep(0.1)
        await asyncio.to_thread(first.kill)  # with acknowledged events not yet delivered
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.gather(*tasks)
        await hook.wait_for(acknowledged)
        assert len(acknowledged) > BATCH * 10
    finally:
        for gateway in (first, second):
            if gateway.process is not None and gateway.process.poll() is None:
                gateway.kill()


async def test_nats_down_answers_503_then_recovers(
    tmp_path: Path, nats_server: NatsServer, receiver: tuple[Receiver, str]
) -> None:
    """While NATS is down, ingress answers 503 with a JSON reason, never 200; once it is back,
    the same gateway accepts again by itself and every acknowledged event is delivered."""
    hook, hook_url = receiver
    gateway = node(tmp_path / "a", [nats_server.url], hook_url, new_prefix())
    try:
        await asyncio.to_thread(gateway.start)
        acknowledged, statuses, stop, tasks = await load([gateway.url], 1.0)
        await asyncio.to_thread(nats_server.kill)
        await asyncio.sleep(0.5)
        down_from = len(statuses)
        await asyncio.sleep(2.0)
        during = statuses[down_from:]
        assert during, "no request was answered while NATS was down"
        assert 200 not in during, during
        await asyncio.to_thread(nats_server.start)
        deadline = time.monotonic() + 30
        while statuses[-1] != 200:
            assert time.monotonic() < deadline, "ingress never recovered"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*tasks)
        await hook.wait_for(acknowledged)
    finally:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.kill()


async def test_a_restarted_cluster_member_is_survived(
    tmp_path: Path, receiver: tuple[Receiver, str]
) -> None:
    """On a 3-node JetStream cluster with 3 replicas, killing and restarting one NATS node
    loses no acknowledged event and the gateway keeps accepting without a restart."""
    hook, hook_url = receiver
    cluster = NatsCluster(tmp_path / "cluster")
    gateway = node(tmp_path / "a", cluster.urls, hook_url, new_prefix(), replicas=3)
    try:
        await asyncio.to_thread(gateway.start)
        acknowledged, statuses, stop, tasks = await load([gateway.url], 2.0)
        victim = cluster.servers[0]
        await asyncio.to_thread(victim.kill)
        await asyncio.sleep(3.0)
        await asyncio.to_thread(victim.start, True)
        deadline = time.monotonic() + 30  # stream leaders may move while the node rejoins
        while statuses[-1] != 200:
            assert time.monotonic() < deadline, f"ingress never recovered: {statuses[-20:]}"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*tasks)
        await hook.wait_for(acknowledged)
        assert gateway.process is not None
        assert gateway.process.poll() is None, gateway.output()
    finally:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.kill()
        cluster.stop()
