"""Delivery benchmark: end to end into a batched webhook receiver, beside the receiver alone.

Runs, side by side on 127.0.0.1:

- a webhook **receiver** (aiohttp, its own process) that counts the events in each JSON-array
  request and notes, per event, when it arrived;
- the **reference**: this script POSTs the same 500-event arrays straight to the receiver, as
  fast as 8 concurrent connections allow (the receiver's own ceiling);
- the **gateway** (`eventgate serve`, its defaults) with a `webhook` destination in batch mode
  (500 events per request): this script POSTs the events to `/v1/batch` and measures from the
  first POST until the receiver has every event;
- a **latency** run: 5,000 events/s into the gateway (50 events every 10 ms) for the duration;
  the receiver reports the end-to-end latency (gateway receipt to webhook arrival) percentiles.

    .venv/bin/python bench/delivery.py [--events 300000] [--latency-s 10]

Prints events/s for both, the ratio, and p50/p95/p99 latency; exits 1 if an event went missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
WRITE_KEY = "bench-write-key"
BATCH = 500
CONCURRENCY = 8

RECEIVER = r"""
import sys, time, orjson
from aiohttp import web
count = 0
latencies = []
async def hook(request):
    global count
    events = orjson.loads(await request.read())
    if isinstance(events, dict):
        events = [events]
    now = time.time()
    count += len(events)
    for e in events:
        sent = e.get("properties", {}).get("sent_unix")
        if sent is not None:
            latencies.append(now - sent)
    return web.Response(status=204)
async def stats(request):
    return web.json_response({"count": count, "latencies": latencies})
async def reset(request):
    global count
    count = 0
    latencies.clear()
    return web.json_response({})
app = web.Application(client_max_size=64 * 1024 * 1024)
app.router.add_post("/hook", hook)
app.router.add_get("/stats", stats)
app.router.add_post("/reset", reset)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def event(run: str, i: int, *, sent_unix: float | None = None) -> dict[str, Any]:
    """A ~500-byte track event."""
    properties: dict[str, Any] = {
        "order_id": f"order-{i}",
        "revenue": 42.5,
        "currency": "EUR",
        "products": [{"sku": "SKU-1", "name": "Monopoly", "price": 19.99, "quantity": 2}],
    }
    if sent_unix is not None:
        properties["sent_unix"] = sent_unix
    return {
        "type": "track",
        "event": "Order Completed",
        "userId": f"user-{i % 1000}",
        "messageId": f"{run}-{i}",
        "properties": properties,
        "context": {"library": {"name": "bench", "version": "1"}, "page": {"path": "/checkout"}},
    }


async def wait_http(url: str, timeout_s: float = 30) -> None:
    """Wait until ``url`` answers."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as response:
                    if response.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up")
            await asyncio.sleep(0.1)


async def receiver_stats(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/stats") as response:
        stats: dict[str, Any] = await response.json()
        return stats


async def blast(session: aiohttp.ClientSession, url: str, bodies: list[bytes]) -> None:
    """POST every body with CONCURRENCY connections; every answer must be a success."""
    queue = list(reversed(bodies))

    async def worker() -> None:
        while queue:
            body = queue.pop()
            async with session.post(url, data=body) as response:
                if response.status not in (200, 204):
                    raise RuntimeError(f"{url} answered {response.status}")

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def wait_count(session: aiohttp.ClientSession, url: str, want: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while (await receiver_stats(session, url))["count"] < want:
        if time.monotonic() > deadline:
            raise RuntimeError("the receiver never got every event")
        await asyncio.sleep(0.05)


def start_processes(config: Path, receiver_port: int) -> tuple[Any, Any]:
    """Start the receiver and the gateway (each in its own process)."""
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(receiver_port)])
    serve = ["serve", "--config", str(config), "--log-level", "warning"]
    gateway = subprocess.Popen([sys.executable, "-m", "gateway", *serve], cwd=ROOT)
    return receiver, gateway


async def run(args: argparse.Namespace, tmp: Path) -> int:
    receiver_port, gateway_port = free_port(), free_port()
    receiver_url = f"http://127.0.0.1:{receiver_port}"
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    config = {
        "server": {"host": "127.0.0.1", "port": gateway_port},
        "storage": {"data_dir": str(tmp / "data")},
        "sources": [{"name": "bench", "write_keys": [WRITE_KEY]}],
        "destinations": [
            {
                "name": "hook",
                "type": "webhook",
                "batch": {"max_events": BATCH, "max_age_s": 0.05},
                "settings": {"url": f"{receiver_url}/hook", "mode": args.mode},
            }
        ],
    }
    (tmp / "gateway.yaml").write_text(json.dumps(config))
    receiver, gateway = start_processes(tmp / "gateway.yaml", receiver_port)
    try:
        await wait_http(f"{receiver_url}/stats")
        await wait_http(f"{gateway_url}/health")
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            n = args.events - args.events % BATCH
            arrays = [
                orjson.dumps([event("ref", i) for i in range(start, start + BATCH)])
                for start in range(0, n, BATCH)
            ]
            started = time.monotonic()
            await blast(session, f"{receiver_url}/hook", arrays)
            await wait_count(session, receiver_url, n, 120)
            reference = n / (time.monotonic() - started)
            await session.post(f"{receiver_url}/reset")

            batches = [
                orjson.dumps(
                    {"writeKey": WRITE_KEY, "batch": [event("gw", i) for i in range(s, s + BATCH)]}
                )
                for s in range(0, n, BATCH)
            ]
            started = time.monotonic()
            await blast(session, f"{gateway_url}/v1/batch", batches)
            ingested = time.monotonic() - started
            await wait_count(session, receiver_url, n, 300)
            end_to_end = n / (time.monotonic() - started)
            await session.post(f"{receiver_url}/reset")

            sent = 0
            ticks = int(args.latency_s * 100)
            started = time.monotonic()
            for tick in range(ticks):
                body = {
                    "writeKey": WRITE_KEY,
                    "batch": [event("lat", sent + i, sent_unix=time.time()) for i in range(50)],
                }
                async with session.post(f"{gateway_url}/v1/batch", data=orjson.dumps(body)) as r:
                    if r.status != 200:
                        raise RuntimeError(f"gateway answered {r.status}")
                sent += 50
                await asyncio.sleep(max(started + (tick + 1) / 100 - time.monotonic(), 0))
            rate = sent / (time.monotonic() - started)
            await wait_count(session, receiver_url, sent, 60)
            latencies = sorted((await receiver_stats(session, receiver_url))["latencies"])
    finally:
        for process in (gateway, receiver):
            process.send_signal(signal.SIGTERM)
        for process in (gateway, receiver):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()

    quantiles = statistics.quantiles(latencies, n=100)
    print(
        f"events: {n:,} of ~500 B, batches of {BATCH}, {CONCURRENCY} connections, "
        f"webhook mode {args.mode}, 2 cores"
    )
    print(f"reference  (straight to the receiver):  {reference:>10,.0f} events/s")
    print(
        f"gateway    (ingest -> log -> webhook):   {end_to_end:>10,.0f} events/s end to end "
        f"(ingest alone {n / ingested:,.0f} events/s)"
    )
    print(f"ratio gateway/reference:                {end_to_end / reference:>10.2f}")
    print(
        f"latency at {rate:,.0f} events/s: p50 {quantiles[49] * 1000:.0f} ms, "
        f"p95 {quantiles[94] * 1000:.0f} ms, p99 {quantiles[98] * 1000:.0f} ms "
        f"({len(latencies):,} events)"
    )
    targets = [("p95 end-to-end latency at 5,000 events/s <= 250 ms", quantiles[94] <= 0.25)]
    if args.mode == "batch":  # the throughput target is for a batched webhook
        targets.insert(
            0, ("end to end into a batched webhook >= 30,000 events/s", end_to_end >= 30_000)
        )
    for text, met in targets:
        print(f"  [{'MET   ' if met else 'MISSED'}] {text}")
    return 0


def tree_rss_mb(pid: int) -> tuple[float, float]:
    """(largest single process, sum) RSS in MB of ``pid`` and its children."""
    parents: dict[int, int] = {}
    rss: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/status"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        parents[int(stat.parent.name)] = int(fields["PPid"].strip())
        rss[int(stat.parent.name)] = int(fields.get("VmRSS", "0 kB").split()[0]) / 1024
    tree = {pid}
    while grown := {p for p, parent in parents.items() if parent in tree} - tree:
        tree |= grown
    sizes = [rss.get(p, 0.0) for p in tree]
    return max(sizes), sum(sizes)


def batch_template(run: str) -> bytes:
    """A /v1/batch body whose messageIds all contain ``@@`` (replaced per request)."""
    events = [event(run, i) for i in range(BATCH)]
    for e in events:
        e["messageId"] = f"@@-{e['messageId']}"
    return orjson.dumps({"writeKey": WRITE_KEY, "batch": events})


async def stream(session: aiohttp.ClientSession, url: str, template: bytes, n: int) -> None:
    """POST ``n`` events as unique copies of ``template``, CONCURRENCY at a time."""
    requests = iter(range(n // BATCH))

    async def worker() -> None:
        for r in requests:
            body = template.replace(b"@@", f"r{r}".encode())
            async with session.post(url, data=body) as response:
                if response.status != 200:
                    raise RuntimeError(f"{url} answered {response.status}")

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def run_backlog(args: argparse.Namespace, tmp: Path) -> int:
    """A healthy destination's throughput alone, then beside one that is down while a backlog
    of ``--backlog`` events builds for it; RSS sampled throughout."""
    receiver_port = free_port()
    receiver_url = f"http://127.0.0.1:{receiver_port}"
    healthy = {
        "name": "healthy",
        "type": "webhook",
        "batch": {"max_events": BATCH, "max_age_s": 0.05},
        "settings": {"url": f"{receiver_url}/hook", "mode": "batch"},
    }
    down = {**healthy, "name": "down", "settings": {"url": f"http://127.0.0.1:{free_port()}/"}}
    rates: dict[str, float] = {}
    peak = (0.0, 0.0)
    depth_text = ""
    timeout = aiohttp.ClientTimeout(total=300)
    for label, destinations, wanted in (
        ("alone", [healthy], args.events),
        ("beside a down one", [healthy, down], args.backlog),
    ):
        n = wanted - wanted % BATCH
        port = free_port()
        config = {
            "server": {"host": "127.0.0.1", "port": port},
            "storage": {"data_dir": str(tmp / label / "data")},
            "sources": [{"name": "bench", "write_keys": [WRITE_KEY]}],
            "destinations": destinations,
        }
        (tmp / label).mkdir()
        (tmp / label / "gateway.yaml").write_text(json.dumps(config))
        receiver, gateway = start_processes(tmp / label / "gateway.yaml", receiver_port)
        try:
            await wait_http(f"{receiver_url}/stats")
            await wait_http(f"http://127.0.0.1:{port}/health")
            async with aiohttp.ClientSession(timeout=timeout) as session:
                started = time.monotonic()
                sender = asyncio.create_task(
                    stream(session, f"http://127.0.0.1:{port}/v1/batch", batch_template(label), n)
                )
                while (await receiver_stats(session, receiver_url))["count"] < n:
                    if sender.done() and sender.exception():
                        raise RuntimeError(str(sender.exception()))
                    sizes = tree_rss_mb(gateway.pid)
                    peak = (max(peak[0], sizes[0]), max(peak[1], sizes[1]))
                    await asyncio.sleep(0.5)
                await sender
                rates[label] = n / (time.monotonic() - started)
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    depth_text = "\n".join(
                        line
                        for line in (await response.text()).splitlines()
                        if line.startswith(("eventgate_queue_depth", "eventgate_circuit_open"))
                    )
        finally:
            for process in (gateway, receiver):
                process.send_signal(signal.SIGTERM)
            for process in (gateway, receiver):
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
    ratio = rates["beside a down one"] / rates["alone"]
    print(f"healthy destination alone:              {rates['alone']:>10,.0f} events/s")
    print(
        f"healthy destination beside a down one:  {rates['beside a down one']:>10,.0f} events/s "
        f"while {args.backlog:,} events backlogged for the other ({ratio:.2f} of alone)"
    )
    print(f"peak RSS: largest gateway process {peak[0]:.0f} MB, all its processes {peak[1]:.0f} MB")
    print(depth_text)
    for text, met in (
        ("healthy destination keeps >= 90% of its solo throughput", ratio >= 0.9),
        ("RSS stays under 300 MB (largest process)", peak[0] < 300),
    ):
        print(f"  [{'MET   ' if met else 'MISSED'}] {text}")
    return 0


def main() -> int:
    """Run the benchmark; exit 1 on a missing event."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--latency-s", type=float, default=10)
    parser.add_argument(
        "--mode",
        choices=["batch", "per_event"],
        default="batch",
        help="the webhook destination's mode (per_event: one request per event)",
    )
    parser.add_argument(
        "--backlog",
        type=int,
        help="instead: a healthy destination alone, then beside a down one with this backlog",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="eventgate-delivery-") as tmp:
        try:
            scenario = run_backlog if args.backlog else run
            return asyncio.run(scenario(args, Path(tmp)))
        except RuntimeError as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
