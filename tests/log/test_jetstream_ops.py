"""Operating JetStream storage: dead letters (directly and through the CLI), and startup errors."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.cli import main
from gateway.config import GatewayConfig
from gateway.dlq import DeadLetterFilter
from gateway.log import jetstream_dlq
from gateway.log.base import DeadLetter
from gateway.log.jetstream import JetStreamEventLog
from tests.conftest import WRITE_KEY
from tests.log.conformance import events
from tests.log.conftest import OpenJetStreamLog, js_config, new_prefix
from tests.nats import NatsServer, free_port


async def bury(event_log: JetStreamEventLog, destination: str, count: int, start: int) -> None:
    """Append ``count`` events and dead-letter them for ``destination``."""
    await event_log.append(events(count, start=start))
    stored = (await event_log.read(0, 100, None)).events[-count:]
    now = time.time()
    await event_log.dead_letter(
        [
            DeadLetter(destination, e, "HTTP 400", 3, now - 5, now, "POST /", "400 no")
            for e in stored
        ]
    )


async def test_list_show_replay_purge(open_js_log: OpenJetStreamLog) -> None:
    """Listing filters by destination, show returns the body, replay makes a due retry in the
    event's own partition, and purge deletes for good."""
    event_log = await open_js_log(partition=2)
    storage = event_log.storage
    await bury(event_log, "hook", 3, start=0)
    await bury(event_log, "files", 1, start=10)
    hooks = await jetstream_dlq.list_letters(storage, DeadLetterFilter(destination="hook"))
    assert sorted(r.message_id for r in hooks) == ["m0", "m1", "m2"]
    shown = await jetstream_dlq.show(storage, hooks[0].key)
    assert shown is not None
    assert shown.response == "400 no"
    assert b'"messageId"' in shown.body
    assert await jetstream_dlq.show(storage, "999999") is None

    assert await jetstream_dlq.replay(storage, DeadLetterFilter(destination="hook")) == 3
    due = await event_log.due_retries("hook", time.time() + 1, 10)
    assert sorted(r.event.message_id for r in due) == ["m0", "m1", "m2"]
    assert {(r.attempts, r.reason) for r in due} == {(0, "replayed")}
    assert await jetstream_dlq.count_letters(storage, "hook") == 0

    assert await jetstream_dlq.purge(storage, DeadLetterFilter(reason="400")) == 1
    assert await jetstream_dlq.count_letters(storage) == 0


async def test_the_cli_reads_jetstream_dead_letters(
    open_js_log: OpenJetStreamLog,
    nats_server: NatsServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`eventgate dlq list` with a jetstream config lists the stream's dead letters."""
    event_log = await open_js_log()
    await bury(event_log, "hook", 2, start=0)
    config = {
        "storage": {
            "backend": "jetstream",
            "data_dir": str(tmp_path / "data"),
            "jetstream": {
                "servers": [nats_server.url],
                "stream_prefix": event_log.storage.config.stream_prefix,
                "partitions": event_log.storage.config.partitions,
            },
        },
        "sources": [{"name": "web", "write_keys": ["k"]}],
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    assert await asyncio.to_thread(main, ["dlq", "list", "--config", str(path)]) == 0
    out = capsys.readouterr()
    assert "m0" in out.out
    assert "m1" in out.out
    assert "2 dead letter(s)" in out.err


def test_serve_exits_clearly_when_jetstream_is_unreachable(tmp_path: Path) -> None:
    """`eventgate serve` on a JetStream nobody listens on exits 1 naming the servers."""
    url = f"nats://127.0.0.1:{free_port()}"
    config = {
        "server": {"port": free_port(), "ingress_processes": 1},
        "storage": {
            "backend": "jetstream",
            "data_dir": str(tmp_path / "data"),
            "jetstream": {"servers": [url], "timeout_s": 1},
        },
        "sources": [{"name": "web", "write_keys": ["k"]}],
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    # A process of its own: serve switches Prometheus into multiprocess mode for its process.
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert f"JetStream at {url} cannot be reached" in done.stderr


async def test_admin_api_and_debugger_on_jetstream(
    nats_server: NatsServer,
    make_config: Callable[..., GatewayConfig],
    make_client: Callable[..., Any],
) -> None:
    """On JetStream the debugger shows events, the admin API lists a dead letter from the
    stream, and replaying it with the console's button delivers it."""
    refusing = True
    received: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        if refusing:
            return web.Response(status=400, text="not yet")
        received.append(request.headers["webhook-id"])
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    server = TestServer(receiver, host="127.0.0.1")
    await server.start_server()
    config = make_config(
        server={"port": 0, "admin_token": "t" * 24},
        storage={
            "backend": "jetstream",
            "jetstream": js_config(nats_server.url, stream_prefix=new_prefix("A")).model_dump(),
        },
        destinations=[
            {
                "name": "hook",
                "type": "webhook",
                "batch": {"max_events": 10, "max_age_s": 0.01},
                "settings": {"url": str(server.make_url("/hook"))},
            }
        ],
    )
    client = await make_client(config)
    auth = {"Authorization": "Bearer " + "t" * 24}
    event = {"type": "track", "event": "Signed Up", "userId": "u1", "messageId": "dl-1"}
    answer = await client.post("/v1/track", json={**event, "writeKey": WRITE_KEY})
    assert answer.status == 200

    ready = await (await client.get("/api/health/ready", headers=auth)).json()
    assert (ready["status"], ready["storage"]["writable"]) == ("ready", True)
    debugger = await (await client.get("/api/sources/web/events", headers=auth)).json()
    assert [e["messageId"] for e in debugger["events"]] == ["dl-1"]

    deadline = time.monotonic() + 20
    while not (
        letters := (await (await client.get("/api/dead-letters", headers=auth)).json())[
            "deadLetters"
        ]
    ):
        assert time.monotonic() < deadline, "never dead-lettered"
        await asyncio.sleep(0.05)
    [letter] = letters
    assert (letter["messageId"], letter["destination"]) == ("dl-1", "hook")

    refusing = False
    replayed = await client.post(f"/api/dead-letters/{letter['key']}/replay", headers=auth)
    assert replayed.status == 200
    ref = (await replayed.json())["event"]
    while received != ["dl-1"]:
        assert time.monotonic() < deadline, "the replay was not delivered"
        await asyncio.sleep(0.05)
    state = await client.get(f"/api/destinations/hook/events/{ref}", headers=auth)
    assert (await state.json())["state"] in {"retrying", "done"}  # the cursor save may lag
    await server.close()
