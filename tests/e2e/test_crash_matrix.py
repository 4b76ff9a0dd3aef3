"""The crash matrix: kill -9 at chosen points under load, with misbehaving destinations.

Each case arms one failpoint (:mod:`gateway.failpoints`): the gateway kills itself during a
group commit, a delivery (the kill lands in the plugin's I/O: a webhook request, a file write,
a DuckDB warehouse load), right after a delivery before its outcome is saved, or while retries
are sent. The test restarts it each time, keeps sending uniquely identified events, then
restarts it without failpoints and checks the oracle: every acknowledged messageId reached the
files and the warehouse, and reached the webhook or is one of its dead letters; duplicates are
counted and bounded. The same runs on JetStream.

Short in CI (a few seconds of load per case); ``EVENTGATE_CRASH_S=120`` runs each case that
many seconds by hand.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import duckdb
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import WRITE_KEY
from tests.e2e.conftest import Gateway
from tests.nats import NatsServer

LOAD_S = float(os.environ.get("EVENTGATE_CRASH_S", "5"))
SENDERS = 4
BATCH = 20
_prefixes = itertools.count()


def fate(message_id: str) -> str:
    """What the webhook receiver does with an event: ``ok``, ``flaky`` (500 once), ``bad`` (400)."""
    bucket = zlib.crc32(message_id.encode()) % 100
    return "bad" if bucket == 0 else "flaky" if bucket < 20 else "ok"


class Receiver:
    """A webhook endpoint that fails some events once (retries) and refuses others (dead
    letters), remembering every event it accepted."""

    def __init__(self) -> None:
        self.accepted: Counter[str] = Counter()
        self.refused_once: set[str] = set()

    async def handle(self, request: web.Request) -> web.Response:
        message_id = request.headers["webhook-id"]
        kind = fate(message_id)
        if kind == "bad":
            return web.Response(status=400, text="unknown event")
        if kind == "flaky" and message_id not in self.refused_once:
            self.refused_once.add(message_id)
            return web.Response(status=500, text="try again")
        self.accepted[message_id] += 1
        return web.Response(status=204)


@pytest.fixture(name="receiver")
async def _receiver() -> AsyncIterator[tuple[Receiver, str]]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield receiver, str(server.make_url("/hook"))
    await server.close()


@pytest.fixture(name="nats_server", scope="module")
def _nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats-crash"))
    yield server
    server.kill()


def make_gateway(root: Path, hook_url: str, storage: dict[str, object] | None) -> Gateway:
    """A gateway with three destinations: files, a flaky webhook, a DuckDB warehouse."""
    fast = {"max_events": 50, "max_age_s": 0.05}
    destinations = [
        {
            "name": "files",
            "type": "file",
            "batch": fast,
            "settings": {"directory": str(root / "files")},
        },
        {
            "name": "hook",
            "type": "webhook",
            "batch": fast,
            "retry": {"base_delay_s": 0.05, "max_delay_s": 0.2},
            "circuit": {"enabled": False},
            "settings": {"url": hook_url, "timeout_s": 5},
        },
        {
            "name": "warehouse",
            "type": "warehouse",
            "batch": {"max_events": 200, "max_age_s": 0.2},
            "settings": {"path": str(root / "warehouse.duckdb")},
        },
    ]
    return Gateway(root, destinations=destinations, ingress_processes=2, storage=storage)


async def send_until(gateway: Gateway, sender: int, stop: asyncio.Event, acked: set[str]) -> None:
    """Post batches of unique events until ``stop``; remember the ids answered with 200."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for request in itertools.count():
            if stop.is_set():
                return
            ids = [f"s{sender}-r{request}-e{i}" for i in range(BATCH)]
            body = {
                "writeKey": WRITE_KEY,
                "batch": [
                    {"type": "track", "userId": f"u{i % 7}", "event": "Crash Test", "messageId": m}
                    for i, m in enumerate(ids)
                ],
            }
            try:
                async with session.post(
                    f"{gateway.url}/v1/batch", data=orjson.dumps(body)
                ) as response:
                    if response.status == 200:
                        acked.update(ids)
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.05)  # down (being restarted): not acknowledged


async def keep_alive(gateway: Gateway, stop: asyncio.Event) -> int:
    """Restart the gateway whenever a failpoint killed it; return how many restarts."""
    restarts = 0
    while not stop.is_set():
        assert gateway.process is not None
        if gateway.process.poll() is not None:
            restarts += 1
            try:
                await asyncio.to_thread(gateway.start)
            except AssertionError:  # killed again while starting: the next round restarts it
                continue
        await asyncio.sleep(0.05)
    return restarts


def dead_letter_ids(gateway: Gateway) -> set[str]:
    """The messageIds the CLI lists as dead letters of the webhook."""
    done = subprocess.run(  # the CLI, as an operator would run it
        [
            *(sys.executable, "-m", "gateway", "dlq", "list", "--json", "--limit", "100000"),
            *("--destination", "hook", "--config", str(gateway.config_path)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return {json.loads(line)["messageId"] for line in done.stdout.splitlines()}


def warehouse_ids(root: Path) -> Counter[str]:
    """Every id in the warehouse's ``tracks`` table (the gateway is stopped)."""
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as conn:
        rows = conn.execute("SELECT id FROM web.tracks").fetchall()
    return Counter(row[0] for row in rows)


async def wait_for(check: object, what: str, timeout_s: float = 90) -> None:
    """Poll ``check()`` (in a thread) until it returns an empty collection of missing ids."""
    deadline = time.monotonic() + timeout_s
    while missing := await asyncio.to_thread(check):  # type: ignore[arg-type]
        assert time.monotonic() < deadline, (
            f"{len(missing)} never reached {what}: {sorted(missing)[:5]}"
        )
        await asyncio.sleep(0.2)


CASES = [
    ("sqlite", "log.commit=20-200"),
    ("sqlite", "worker.delivering=3-40"),
    ("sqlite", "worker.delivered=3-40"),
    ("sqlite", "worker.retrying=1-8"),
    ("jetstream", "log.append=10-100"),
    pytest.param(
        "jetstream",
        "worker.delivering=3-40",
        marks=pytest.mark.xfail(
            strict=False,
            reason="open (issue 6): 1 run in 3 left acknowledged events undelivered to the "
            "webhook 90 s after kills during delivery on JetStream; loss or delay not yet known",
        ),
    ),
]


@pytest.mark.parametrize(("backend", "failpoint"), CASES)
async def test_kills_at_failpoints_lose_nothing_acknowledged(
    backend: str,
    failpoint: str,
    tmp_path: Path,
    receiver: tuple[Receiver, str],
    request: pytest.FixtureRequest,
) -> None:
    """Killed again and again at the failpoint under load, the gateway ends with every
    acknowledged event in the files and the warehouse, and delivered to the webhook or
    dead-lettered with its reason; duplicates stay bounded."""
    hook, hook_url = receiver
    storage: dict[str, object] | None = None
    if backend == "jetstream":
        nats: NatsServer = request.getfixturevalue("nats_server")
        jetstream = {"servers": [nats.url], "stream_prefix": f"C{next(_prefixes)}_{time.time_ns()}"}
        storage = {"backend": "jetstream", "jetstream": {**jetstream, "lease_ttl_s": 2}}
    gateway = make_gateway(tmp_path, hook_url, storage)
    gateway.env = {"EVENTGATE_FAILPOINTS": failpoint}
    acked: set[str] = set()
    stop = asyncio.Event()
    try:
        await asyncio.to_thread(gateway.start)
        keeper = asyncio.create_task(keep_alive(gateway, stop))
        senders = [asyncio.create_task(send_until(gateway, n, stop, acked)) for n in range(SENDERS)]
        await asyncio.sleep(LOAD_S)
        stop.set()
        await asyncio.gather(*senders)
        await keeper
        fired = gateway.output().count(f"failpoint {failpoint.partition('=')[0]} fired")
        assert fired >= 1, f"the failpoint never fired:\n{gateway.output()[-2000:]}"
        assert acked, "nothing was acknowledged"

        # Settle without failpoints: everything acknowledged must come out.
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.kill()
        gateway.env = {}
        await asyncio.to_thread(gateway.start)
        await asyncio.to_thread(gateway.wait_for_files, acked, 90)
        owed = {m for m in acked if fate(m) != "bad"}
        await wait_for(lambda: owed - set(hook.accepted), "the webhook")
        bad = {m for m in acked if fate(m) == "bad"}
        await wait_for(lambda: bad - dead_letter_ids(gateway), "the dead letters")
        assert gateway.terminate() == 0
        in_warehouse = warehouse_ids(tmp_path)
        assert acked <= set(in_warehouse), sorted(acked - set(in_warehouse))[:5]
    finally:
        stop.set()
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.kill()

    files = Counter(m["messageId"] for m in gateway.file_messages())
    copies = {
        "files": sum(n - 1 for n in files.values()),
        "webhook": sum(n - 1 for n in hook.accepted.values()),
        "warehouse": sum(n - 1 for n in in_warehouse.values()),
    }
    # At-least-once: each kill may repeat the batches in flight (the warehouse merges on id).
    assert copies["warehouse"] == 0, copies
    assert copies["files"] + copies["webhook"] <= (fired + 1) * 2000, (fired, copies)
    print(f"{backend} {failpoint}: {fired} kills, {len(acked)} acknowledged, copies {copies}")
