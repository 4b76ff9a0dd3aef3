"""Soak: a steady load into eventgate for a long time, with a webhook that keeps failing.

Runs on 127.0.0.1:

- the **gateway**: `eventgate serve` with its defaults (the embedded SQLite log in its own temp
  data dir, one ingress process per CPU beside the router process, messageId dedup on) and two
  destinations: `hook`, a `webhook` in batch mode, and `files`, a `file` destination;
- a **flapping receiver** for `hook` (aiohttp, in this script's process) that follows a fixed
  schedule (`--schedule`), by default a 90 s cycle: 60 s healthy (204), then 8 s of 500s, 7 s
  of 429 with `Retry-After: 5`, 7 s of requests held past the webhook's 2 s timeout and 8 s with
  its listener closed (connection refused; a request on a connection opened before gets a 503
  and the connection is closed); `reject400` (400s: permanent failures) is also available;
- a **load generator**: `--rate` events/s (default 2,000) as `/v1/batch` requests of `--batch`
  events (default 500) on a fixed clock, every event with its own messageId.

The webhook's circuit breaker is off by default (`--circuit default` keeps it), so every batch
meets the outage: it is retried (at most 8 attempts, delays up to 30 s) or dead-lettered, and
the retry table fills and empties once per cycle. With the breaker on, an outage mostly leaves
new events in the log (queue depth) and sends only probes.

Every `--sample-s` seconds (default 5) it notes, for the router process and each ingress
process (children of the serve process, found in /proc): RSS (VmRSS), open fds, threads and
CPU; and from `/metrics`: queue depth, oldest pending age, in flight and circuit state per
destination, the log's bytes, received / delivered / dead-lettered counters; plus the rows in
the log's retry table (read-only SQLite queries).

After `--duration` seconds the load stops and the receiver stays healthy; once everything has
drained the gateway gets SIGTERM and the script checks the oracle: every acknowledged messageId
was delivered to the webhook or dead-lettered for it (`eventgate dlq list --json`), and is in
the files. It writes the samples as CSV and an SVG plot and prints a summary: RSS and fds per
process (start, one third in, end, largest), whether each stayed flat over the last two thirds,
the queue's behaviour, drain time, delivered / duplicate / dead-lettered counts.

    .venv/bin/python bench/soak.py --duration 1800 --plot docs/soak.svg   # docs/soak.md
    .venv/bin/python bench/soak.py --duration 120                         # a quick look

Exit code 1 if an acknowledged event went missing, the gateway did not exit 0 on SIGTERM, or the
backlog did not drain; flatness is reported, not enforced.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import html
import itertools
import json
import math
import os
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import orjson
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
WRITE_KEY = "soak-write-key"
WEBHOOK_TIMEOUT_S = 2
SLOW_S = WEBHOOK_TIMEOUT_S + 1
RETRY_AFTER_S = 5
MAX_REQUESTS_IN_FLIGHT = 16
PHASES = ("healthy", "error500", "throttle429", "slow", "reject400", "refused")
DEFAULT_SCHEDULE = "healthy:60,error500:8,throttle429:7,slow:7,refused:8"
# The webhook gives up sooner than the 4-hour default, so a soak also exercises dead letters from
# exhausted retries, not only from 400s; 8 attempts with full jitter span about a minute.
RETRY = {"max_attempts": 8, "base_delay_s": 1, "max_delay_s": 30, "max_retry_after_s": 60}


@dataclass(frozen=True, slots=True)
class Phase:
    """One step of the receiver's schedule."""

    name: str
    duration_s: float


def parse_schedule(text: str) -> tuple[Phase, ...]:
    """``healthy:60,error500:8,...`` as phases; raises ValueError on an unknown phase."""
    phases = []
    for part in text.split(","):
        name, _, seconds = part.strip().partition(":")
        if name not in PHASES or float(seconds) <= 0:
            raise ValueError(f"bad phase {part!r}: use NAME:SECONDS with NAME in {PHASES}")
        phases.append(Phase(name, float(seconds)))
    return tuple(phases)


class Tally:
    """How many times each event number was seen (saturating at 255)."""

    def __init__(self) -> None:
        self.counts = bytearray()

    def add(self, n: int) -> None:
        """Count event ``n`` once more."""
        if n >= len(self.counts):
            self.counts.extend(bytes(n + 1 - len(self.counts) + 65536))
        if self.counts[n] < 255:
            self.counts[n] += 1

    def get(self, n: int) -> int:
        """How many times event ``n`` was seen."""
        return self.counts[n] if n < len(self.counts) else 0


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def event_number(message_id: str, prefix: str) -> int | None:
    """The number in ``<prefix><n>``, or None for another messageId."""
    if message_id.startswith(prefix) and message_id[len(prefix) :].isdigit():
        return int(message_id[len(prefix) :])
    return None


class FlappingReceiver:
    """The webhook's endpoint: healthy or failing on a fixed schedule."""

    def __init__(self, port: int, schedule: tuple[Phase, ...], prefix: str) -> None:
        self.port = port
        self.schedule = schedule
        self.prefix = prefix
        self.phase = "healthy"
        self.delivered = Tally()
        self.events = 0
        self.foreign = 0
        self.answers: Counter[str] = Counter()
        self.transitions: list[tuple[float, str]] = []
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._clock: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen (healthy until ``flap`` is called)."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        assert self._runner is not None
        if self._site is None:
            self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
            await self._site.start()

    async def _close_listener(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None

    def flap(self, started: float) -> None:
        """Follow the schedule from ``started`` (monotonic) on, cycle after cycle."""
        self._clock = asyncio.create_task(self._follow(started))

    async def _follow(self, started: float) -> None:
        at = started
        while True:
            for phase in self.schedule:
                await self._enter(phase.name, at - started)
                at += phase.duration_s
                await asyncio.sleep(max(at - time.monotonic(), 0))

    async def _enter(self, name: str, t_s: float) -> None:
        if name == "refused":
            await self._close_listener()
        else:
            await self._listen()
        if name != self.phase or not self.transitions:
            self.transitions.append((t_s, name))
        self.phase = name

    async def settle(self, t_s: float) -> None:
        """Stop flapping: healthy from now on."""
        if self._clock is not None:
            self._clock.cancel()
            await asyncio.gather(self._clock, return_exceptions=True)
        await self._enter("healthy", t_s)

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._clock is not None:
            self._clock.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _hook(self, request: web.Request) -> web.StreamResponse:
        phase = self.phase
        self.answers[phase] += 1
        if phase == "healthy":
            body = orjson.loads(await request.read())
            for message in body if isinstance(body, list) else [body]:
                n = event_number(str(message.get("messageId", "")), self.prefix)
                if n is None:
                    self.foreign += 1
                else:
                    self.delivered.add(n)
                    self.events += 1
            return web.Response(status=204)
        if phase == "error500":
            return web.Response(status=500, text="soak: outage")
        if phase == "throttle429":
            return web.Response(status=429, headers={"Retry-After": str(RETRY_AFTER_S)})
        if phase == "slow":
            await asyncio.sleep(SLOW_S)  # the gateway gave up after WEBHOOK_TIMEOUT_S
            return web.Response(status=503)
        if phase == "reject400":
            return web.Response(status=400, text="soak: permanent rejection")
        response = web.Response(status=503)  # refused: on a connection opened before the outage
        response.force_close()
        return response


class Load:
    """``rate`` events/s as /v1/batch requests of ``batch`` events on a fixed clock."""

    def __init__(
        self, session: aiohttp.ClientSession, url: str, rate: float, batch: int, prefix: str
    ) -> None:
        self.session = session
        self.url = url
        self.batch = batch
        self.interval_s = batch / rate
        self.prefix = prefix
        self.acked = Tally()
        self.next_number = 0
        self.acked_events = 0
        self.outcomes: Counter[str] = Counter()
        self.skipped_ticks = 0
        self.ack_s: list[float] = []
        self._in_flight: set[asyncio.Task[None]] = set()

    def _body(self, first: int) -> bytes:
        batch = [
            {
                "type": "track",
                "event": "Order Completed",
                "userId": f"user-{n % 5000}",
                "messageId": f"{self.prefix}{n}",
                "properties": {
                    "order_id": f"order-{n}",
                    "revenue": 42.5,
                    "currency": "EUR",
                    "products": [{"sku": "SKU-1", "name": "Monopoly", "price": 19.99}],
                },
                "context": {"library": {"name": "soak", "version": "1"}},
            }
            for n in range(first, first + self.batch)
        ]
        return orjson.dumps({"writeKey": WRITE_KEY, "batch": batch})

    async def run(self, until: float) -> None:
        """Send on the clock until ``until`` (monotonic), then wait for the answers."""
        started = time.monotonic()
        tick = 0
        while (at := started + tick * self.interval_s) < until:
            await asyncio.sleep(max(at - time.monotonic(), 0))
            tick += 1
            if len(self._in_flight) >= MAX_REQUESTS_IN_FLIGHT:
                self.skipped_ticks += 1
                continue
            task = asyncio.create_task(self._post(self.next_number))
            self.next_number += self.batch
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        await asyncio.gather(*self._in_flight)

    async def _post(self, first: int) -> None:
        body = self._body(first)
        started = time.monotonic()
        try:
            async with self.session.post(
                self.url, data=body, headers={"Content-Type": "application/json"}
            ) as response:
                answer = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.outcomes[type(exc).__name__] += 1
            return
        self.ack_s.append(time.monotonic() - started)
        if status != 200 or b'"rejected"' in answer:
            self.outcomes[f"HTTP {status}" + (" with rejections" if status == 200 else "")] += 1
            return
        self.outcomes["HTTP 200"] += 1
        for n in range(first, first + self.batch):
            self.acked.add(n)
        self.acked_events += self.batch


@dataclass(slots=True)
class ProcSample:
    """One process's figures from /proc."""

    pid: int
    rss_mb: float
    fds: int
    threads: int
    cpu_s: float


def gateway_processes(serve_pid: int) -> dict[str, ProcSample]:
    """The router (``serve_pid``) and its ingress children, by role, from /proc."""
    pids = {"router": serve_pid}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
            cmdline = (status.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = re.search(r"^PPid:\s+(\d+)", text, re.MULTILINE)
        if ppid is None or int(ppid.group(1)) != serve_pid:
            continue
        pid = int(status.parent.name)
        if b"--ingress-shard" in cmdline:
            shard = cmdline[cmdline.index(b"--ingress-shard") + 1].decode()
            pids[f"ingress-{shard}"] = pid
        else:
            pids[f"child-{pid}"] = pid
    samples = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for role, pid in sorted(pids.items()):
        try:
            text = Path(f"/proc/{pid}/status").read_text()
            fds = len(os.listdir(f"/proc/{pid}/fd"))
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        samples[role] = ProcSample(
            pid=pid,
            rss_mb=int(fields["VmRSS"].split()[0]) / 1024,
            fds=fds,
            threads=int(fields["Threads"]),
            cpu_s=(int(stat[11]) + int(stat[12])) / ticks,
        )
    return samples


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text as ``{'name{labels}': value}``."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def metric_sum(metrics: dict[str, float], name: str, **labels: str) -> float:
    """The sum of ``name``'s series whose labels include ``labels``."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for key, value in metrics.items():
        base, _, rest = key.partition("{")
        if base == name and all(w in rest for w in wanted):
            total += value
    return total


def log_rows(data_dir: Path) -> dict[str, int]:
    """Rows in the log's retry and dead-letter tables, summed over the shards (read-only)."""
    counts: Counter[str] = Counter()
    for path in sorted(data_dir.glob("events-*.db")):
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2) as conn:
            for destination, rows in conn.execute(
                "SELECT destination, count(*) FROM retries GROUP BY destination"
            ):
                counts[f"retry_rows_{destination}"] += rows
            counts["dead_letter_rows"] += conn.execute(
                "SELECT count(*) FROM dead_letters"
            ).fetchone()[0]
        conn.close()
    return dict(counts)


def table_bytes(data_dir: Path) -> dict[str, int]:
    """Bytes per table and index over the log's shards (SQLite's dbstat), after the run."""
    sizes: Counter[str] = Counter()
    for path in sorted(data_dir.glob("events-*.db")):
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            for name, size in conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
                sizes[name] += size
        conn.close()
    return dict(sizes)


@dataclass
class Sampler:
    """Samples the gateway every ``every_s`` seconds into ``rows``."""

    serve_pid: int
    gateway_url: str
    data_dir: Path
    started: float
    every_s: float
    receiver: FlappingReceiver
    load: Load
    rows: list[dict[str, Any]] = field(default_factory=list)
    roles: set[str] = field(default_factory=set)
    restarts: list[str] = field(default_factory=list)
    stage: str = "load"
    _last: tuple[float, int, dict[str, ProcSample]] | None = None

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Sample until cancelled."""
        k = 0
        while True:
            await asyncio.sleep(max(self.started + k * self.every_s - time.monotonic(), 0))
            k = max(k + 1, math.ceil((time.monotonic() - self.started) / self.every_s))
            self.rows.append(await self.sample(session))

    async def sample(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        """One row: /proc, /metrics and the log's retry rows."""
        now = time.monotonic()
        procs = await asyncio.to_thread(gateway_processes, self.serve_pid)
        row: dict[str, Any] = {
            "t_s": round(now - self.started, 1),
            "stage": self.stage,
            "phase": self.receiver.phase if self.stage == "load" else "healthy",
        }
        last_t, last_acked, last_procs = self._last or (now, self.load.acked_events, procs)
        dt = max(now - last_t, 1e-9)
        row["acked_events_per_s"] = round((self.load.acked_events - last_acked) / dt, 1)
        acks, self.load.ack_s = self.load.ack_s, []
        row["ack_ms_max"] = round(max(acks) * 1000, 1) if acks else ""
        row["requests_not_acked"] = sum(
            n for outcome, n in self.load.outcomes.items() if outcome != "HTTP 200"
        )
        for role, proc in procs.items():
            self.roles.add(role)
            before = last_procs.get(role)
            if before is not None and before.pid != proc.pid:
                self.restarts.append(f"{role}: pid {before.pid} -> {proc.pid} at {row['t_s']} s")
            cpu = (proc.cpu_s - before.cpu_s) / dt * 100 if before and before.pid == proc.pid else 0
            row |= {
                f"{role}_pid": proc.pid,
                f"{role}_rss_mb": round(proc.rss_mb, 1),
                f"{role}_fds": proc.fds,
                f"{role}_threads": proc.threads,
                f"{role}_cpu_pct": round(cpu, 1),
            }
        row["total_rss_mb"] = round(sum(p.rss_mb for p in procs.values()), 1)
        self._last = (now, self.load.acked_events, procs)
        scrape_started = time.monotonic()
        try:
            async with session.get(f"{self.gateway_url}/metrics") as response:
                metrics = parse_metrics(await response.text())
        except (aiohttp.ClientError, TimeoutError):
            metrics = {}
        row["metrics_ms"] = round((time.monotonic() - scrape_started) * 1000)
        if metrics:
            for destination in ("hook", "files"):
                d = {"destination": destination}
                row |= {
                    f"depth_{destination}": metric_sum(metrics, "eventgate_queue_depth", **d),
                    f"oldest_{destination}_s": metric_sum(
                        metrics, "eventgate_oldest_pending_age_seconds", **d
                    ),
                    f"in_flight_{destination}": metric_sum(metrics, "eventgate_in_flight", **d),
                    f"delivered_{destination}": metric_sum(
                        metrics, "eventgate_events_delivered_total", **d
                    ),
                    f"dead_lettered_{destination}": metric_sum(
                        metrics, "eventgate_events_dead_lettered_total", **d
                    ),
                }
            row["circuit_open_hook"] = metric_sum(
                metrics, "eventgate_circuit_open", destination="hook"
            )
            row["failures_hook"] = metric_sum(
                metrics, "eventgate_delivery_failures_total", destination="hook"
            )
            row["received"] = metric_sum(metrics, "eventgate_events_received_total")
            row["log_mb"] = round(metric_sum(metrics, "eventgate_log_bytes") / 1e6, 2)
        try:
            counts = await asyncio.to_thread(log_rows, self.data_dir)
        except sqlite3.Error:
            counts = {}
        row["retry_rows_hook"] = counts.get("retry_rows_hook", 0)
        row["retry_rows_files"] = counts.get("retry_rows_files", 0)
        row["dead_letter_rows"] = counts.get("dead_letter_rows", "")
        row["receiver_events"] = self.receiver.events
        return row


def drained(row: dict[str, Any]) -> bool:
    """True when nothing waits for either destination any more."""
    if "received" not in row:
        return False
    return all(
        row[f"depth_{d}"] == 0
        and row[f"in_flight_{d}"] == 0
        and row[f"retry_rows_{d}"] == 0
        and row[f"delivered_{d}"] + row[f"dead_lettered_{d}"] >= row["received"]
        for d in ("hook", "files")
    )


# --- the plot ------------------------------------------------------------------------------

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
OUTAGE_COLOURS = {
    "error500": "#fbd5d5",
    "throttle429": "#fde8c8",
    "slow": "#fff3b0",
    "reject400": "#e5d4f5",
    "refused": "#d6d6d6",
}


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering ``low``..``high``."""
    if high <= low:
        high = low + 1
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 2)]


def fmt(value: float) -> str:
    """A tick label."""
    if abs(value) >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def svg_plot(
    rows: list[dict[str, Any]],
    panels: list[tuple[str, list[tuple[str, str]]]],
    outages: list[tuple[float, float, str]],
    load_stop_s: float,
    title: str,
) -> str:
    """Stacked line charts sharing the time axis (minutes), outage periods shaded."""
    width, left, right, panel_h, gap, top = 960, 70, 170, 150, 40, 50
    plot_w = width - left - right
    height = top + len(panels) * (panel_h + gap) + 30
    t_max = max(row["t_s"] for row in rows) / 60 or 1
    x_ticks = [t for t in nice_ticks(0, t_max, 10) if t <= t_max]

    def x(minutes: float) -> float:
        return left + minutes / t_max * plot_w

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="22" font-size="14" font-weight="bold">{html.escape(title)}</text>',
    ]
    legend_x = left
    for name, colour in OUTAGE_COLOURS.items():
        out.append(
            f'<rect x="{legend_x}" y="30" width="12" height="10" fill="{colour}"/>'
            f'<text x="{legend_x + 16}" y="39">{name}</text>'
        )
        legend_x += 30 + 7 * len(name)
    out.append(
        f'<line x1="{legend_x}" y1="35" x2="{legend_x + 14}" y2="35" stroke="black" '
        f'stroke-dasharray="4 3"/><text x="{legend_x + 18}" y="39">load stops</text>'
    )
    for index, (label, series) in enumerate(panels):
        y0 = top + index * (panel_h + gap) + 10
        values = [
            float(row[key]) for key, _ in series for row in rows if row.get(key) not in (None, "")
        ]
        y_ticks = nice_ticks(0, max(values, default=1) or 1)
        y_max = y_ticks[-1]

        def y(value: float, y0: float = y0, y_max: float = y_max) -> float:
            return y0 + panel_h - value / y_max * panel_h

        for start, end, phase in outages:
            out.append(
                f'<rect x="{x(start / 60):.1f}" y="{y0}" '
                f'width="{max(x(end / 60) - x(start / 60), 0.5):.1f}" height="{panel_h}" '
                f'fill="{OUTAGE_COLOURS[phase]}"/>'
            )
        out.extend(
            f'<line x1="{left}" y1="{y(tick):.1f}" x2="{left + plot_w}" y2="{y(tick):.1f}" '
            f'stroke="#e0e0e0"/><text x="{left - 6}" y="{y(tick) + 4:.1f}" '
            f'text-anchor="end">{fmt(tick)}</text>'
            for tick in y_ticks
        )
        out.extend(
            f'<line x1="{x(tick):.1f}" y1="{y0 + panel_h}" x2="{x(tick):.1f}" '
            f'y2="{y0 + panel_h + 4}" stroke="black"/><text x="{x(tick):.1f}" '
            f'y="{y0 + panel_h + 16}" text-anchor="middle">{fmt(tick)}</text>'
            for tick in x_ticks
        )
        out.append(
            f'<rect x="{left}" y="{y0}" width="{plot_w}" height="{panel_h}" fill="none" '
            f'stroke="black"/><text x="{left}" y="{y0 - 4}" font-weight="bold">'
            f"{html.escape(label)}</text>"
        )
        stop = x(load_stop_s / 60)
        out.append(
            f'<line x1="{stop:.1f}" y1="{y0}" x2="{stop:.1f}" y2="{y0 + panel_h}" '
            f'stroke="black" stroke-dasharray="4 3"/>'
        )
        for number, (key, name) in enumerate(series):
            colour = COLOURS[number % len(COLOURS)]
            points = " ".join(
                f"{x(row['t_s'] / 60):.1f},{y(float(row[key])):.1f}"
                for row in rows
                if row.get(key) not in (None, "")
            )
            out.append(
                f'<polyline points="{points}" fill="none" stroke="{colour}" '
                f'stroke-width="1.3"/><rect x="{left + plot_w + 12}" y="{y0 + 8 + number * 16}" '
                f'width="14" height="3" fill="{colour}"/><text x="{left + plot_w + 30}" '
                f'y="{y0 + 13 + number * 16}">{html.escape(name)}</text>'
            )
    out.append(
        f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">'
        "minutes since the load started</text></svg>"
    )
    return "\n".join(out) + "\n"


def outage_spans(
    transitions: list[tuple[float, str]], end_s: float
) -> list[tuple[float, float, str]]:
    """(start, end, phase) for every phase but healthy."""
    spans = []
    for (start, phase), (end, _) in zip(transitions, [*transitions[1:], (end_s, "")], strict=True):
        if phase != "healthy":
            spans.append((start, end, phase))
    return spans


# --- the summary ---------------------------------------------------------------------------


def window(rows: list[dict[str, Any]], key: str, start: float, end: float) -> list[float]:
    """``key``'s values in the samples with ``start <= t_s <= end``."""
    return [
        float(row[key])
        for row in rows
        if start <= row["t_s"] <= end and row.get(key) not in (None, "")
    ]


def slope_per_hour(rows: list[dict[str, Any]], key: str, start: float, end: float) -> float:
    """Least-squares slope of ``key`` over ``start..end``, per hour."""
    points = [
        (float(row["t_s"]), float(row[key]))
        for row in rows
        if start <= row["t_s"] <= end and row.get(key) not in (None, "")
    ]
    if len(points) < 3:
        return 0.0
    return statistics.linear_regression(*zip(*points, strict=True)).slope * 3600


def uptime() -> str:
    """`uptime`'s line."""
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


async def wait_http(url: str, timeout_s: float = 60) -> None:
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
            await asyncio.sleep(0.2)


def dead_letters(data_dir: Path, prefix: str) -> dict[str, Tally]:
    """Dead-lettered event numbers per destination, from `eventgate dlq list --json`."""
    command = [sys.executable, "-m", "gateway", "dlq", "list", "--json"]
    command += ["--data-dir", str(data_dir), "--limit", "1000000000"]
    listing = subprocess.run(command, capture_output=True, check=True, cwd=ROOT).stdout
    letters: dict[str, Tally] = {"hook": Tally(), "files": Tally()}
    for line in listing.splitlines():
        letter = orjson.loads(line)
        n = event_number(letter["messageId"], prefix)
        if n is not None:
            letters.setdefault(letter["destination"], Tally()).add(n)
    return letters


def file_events(directory: Path, prefix: str) -> tuple[Tally, int]:
    """Event numbers in the file destination's output, and its line count."""
    tally = Tally()
    lines = 0
    pattern = re.compile(rb'"messageId":"' + re.escape(prefix.encode()) + rb'(\d+)"')
    for path in sorted(directory.rglob("*.jsonl")):
        data = path.read_bytes()
        lines += data.count(b"\n")
        for match in pattern.finditer(data):
            tally.add(int(match.group(1)))
    return tally, lines


def summarize(
    args: argparse.Namespace,
    sampler: Sampler,
    oracle: dict[str, Any],
    drain_s: float | None,
    load_stop_s: float,
) -> tuple[list[str], list[tuple[str, bool]]]:
    """The printed summary and the (target, met) flatness verdicts."""
    rows = [r for r in sampler.rows if r["stage"] == "load"]
    third = load_stop_s / 3
    w = max(3 * args.sample_s, load_stop_s / 15)
    lines = ["", "process     RSS MB: start  1/3 in    end    max  growth last 2/3  slope MB/h"]
    lines[-1] += "   fds: start  max 2nd/3 max 3rd/3  threads"
    verdicts = []
    for role in sorted(sampler.roles):
        rss, fds = f"{role}_rss_mb", f"{role}_fds"
        start = (window(rows, rss, 0, 0) or [math.nan])[0]
        fd_start = (window(rows, fds, 0, 0) or [math.nan])[0]
        early = statistics.median(window(rows, rss, third - w, third) or [math.nan])
        late = statistics.median(window(rows, rss, load_stop_s - w, load_stop_s) or [math.nan])
        growth = late - early
        slope = slope_per_hour(rows, rss, third, load_stop_s)
        fd_mid = max(window(rows, fds, third, 2 * third), default=math.nan)
        fd_last = max(window(rows, fds, 2 * third, load_stop_s), default=math.nan)
        threads = window(rows, f"{role}_threads", 0, load_stop_s)
        lines.append(
            f"{role:<12}{start:>14.1f} {early:>7.1f} {late:>6.1f} "
            f"{max(window(rows, rss, 0, load_stop_s)):>6.1f} {growth:>+13.1f} MB "
            f"{slope:>+11.1f}   {fd_start:>9.0f}"
            f" {fd_mid:>10.0f} {fd_last:>9.0f}  {min(threads):.0f}-{max(threads):.0f}"
        )
        verdicts.append(
            (
                f"{role}: RSS grows <= max(5 MB, 5%) over the last 2/3",
                growth <= max(5, early * 0.05),
            )
        )
        verdicts.append(
            (f"{role}: open fds in the last third <= the middle third's + 2", fd_last <= fd_mid + 2)
        )
    depth_mid = max(window(rows, "depth_hook", third, 2 * third), default=0)
    depth_last = max(window(rows, "depth_hook", 2 * third, load_stop_s), default=0)
    retry_mid = max(window(rows, "retry_rows_hook", third, 2 * third), default=0)
    retry_last = max(window(rows, "retry_rows_hook", 2 * third, load_stop_s), default=0)
    ends = []  # depth and retry rows at the last sample of each healthy phase
    for previous, row in itertools.pairwise(rows):
        if previous["phase"] == "healthy" and row["phase"] != "healthy":
            ends.append((previous.get("depth_hook", 0), previous.get("retry_rows_hook", 0)))
    log = window(rows, "log_mb", 0, load_stop_s)
    lines += [
        "",
        f"hook queue depth: max {max(window(rows, 'depth_hook', 0, load_stop_s), default=0):,.0f}"
        f" (middle third {depth_mid:,.0f}, last third {depth_last:,.0f}); retry rows: max "
        f"{max(window(rows, 'retry_rows_hook', 0, load_stop_s), default=0):,.0f} (middle third "
        f"{retry_mid:,.0f}, last third {retry_last:,.0f})",
        f"at the end of each healthy phase ({len(ends)}): depth <= "
        f"{max((e[0] for e in ends), default=0):,.0f}, retry rows <= "
        f"{max((e[1] for e in ends), default=0):,.0f}",
        f"files queue depth: max {max(window(rows, 'depth_files', 0, load_stop_s), default=0):,.0f}"
        f"; oldest pending: hook max "
        f"{max(window(rows, 'oldest_hook_s', 0, load_stop_s), default=0):.1f} s, files max "
        f"{max(window(rows, 'oldest_files_s', 0, load_stop_s), default=0):.1f} s",
        f"log: {log[0] if log else 0:.1f} MB at the start, {log[-1] if log else 0:.1f} MB at load "
        f"stop ({slope_per_hour(rows, 'log_mb', third, load_stop_s):+.0f} MB/h over the last 2/3)",
        "drain after the load stopped: "
        + (f"{drain_s:.0f} s" if drain_s is not None else "NOT drained"),
    ]
    verdicts.append(
        (
            "hook queue depth in the last third <= 1.5 x the middle third's + rate",
            depth_last <= 1.5 * depth_mid + args.rate,
        )
    )
    verdicts.append(
        (
            "hook queue back under 5 s of load at the end of every healthy phase",
            all(e[0] <= 5 * args.rate for e in ends),
        )
    )
    lines += [
        "",
        f"acknowledged events: {oracle['acked']:,} (requests not acknowledged: "
        f"{oracle['not_acked_requests']})",
        f"hook: delivered {oracle['hook_delivered']:,}, duplicates {oracle['hook_duplicates']:,}, "
        f"dead-lettered {oracle['hook_dead']:,}, both {oracle['hook_both']:,}, missing "
        f"{oracle['hook_missing']:,}",
        f"files: {oracle['file_lines']:,} lines, {oracle['file_distinct']:,} distinct, "
        f"duplicates {oracle['file_duplicates']:,}, dead-lettered {oracle['file_dead']:,}, missing "
        f"{oracle['file_missing']:,}",
        f"receiver answers by phase: {dict(oracle['answers'])}",
    ]
    return lines, verdicts


def start_gateway(config: Path, output: IO[bytes]) -> subprocess.Popen[bytes]:
    """`eventgate serve` with ``config``, its stdout and stderr to ``output``."""
    eventgate = Path(sys.executable).with_name("eventgate")
    command = [str(eventgate)] if eventgate.exists() else [sys.executable, "-m", "gateway"]
    return subprocess.Popen(
        [*command, "serve", "--config", str(config), "--log-level", "warning"],
        cwd=ROOT,
        stdout=output,
        stderr=output,
    )


async def soak(args: argparse.Namespace, tmp: Path) -> int:
    """Run the soak in ``tmp``; return the exit code."""
    schedule = parse_schedule(args.schedule)
    receiver_port, gateway_port = free_port(), free_port()
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    data_dir, files_dir = tmp / "data", tmp / "files"
    prefix = f"soak-{int(time.time())}-"
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": gateway_port},
        "storage": {"data_dir": str(data_dir), "dedup_window_s": args.dedup_window_s},
        "sources": [{"name": "soak", "write_keys": [WRITE_KEY]}],
        "destinations": [
            {
                "name": "hook",
                "type": "webhook",
                "batch": {"max_events": 500, "max_age_s": 0.2},
                "retry": RETRY,
                "settings": {
                    "url": f"http://127.0.0.1:{receiver_port}/hook",
                    "mode": "batch",
                    "timeout_s": WEBHOOK_TIMEOUT_S,
                },
            },
            {
                "name": "files",
                "type": "file",
                "batch": {"max_events": 1000, "max_age_s": 0.5},
                "settings": {"directory": str(files_dir)},
            },
        ],
    }
    if args.circuit == "off":
        config["destinations"][0]["circuit"] = {"enabled": False}
    (tmp / "gateway.yaml").write_text(json.dumps(config, indent=2))
    print(
        f"soak: {args.duration:.0f} s at {args.rate:,.0f} events/s ({args.batch}/request), "
        f"schedule {args.schedule}, circuit breaker {args.circuit}, samples every "
        f"{args.sample_s:g} s, in {tmp}"
    )
    uptime_start = uptime()
    print(f"uptime at start: {uptime_start}")
    receiver = FlappingReceiver(receiver_port, schedule, prefix)
    await receiver.start()
    stderr = (tmp / "gateway.stderr").open("wb")
    gateway = start_gateway(tmp / "gateway.yaml", stderr)
    exit_code: int | None = None
    drain_s: float | None = None
    try:
        await wait_http(f"{gateway_url}/health")
        await asyncio.sleep(2)  # the ingress processes
        timeout = aiohttp.ClientTimeout(total=60)
        connector = aiohttp.TCPConnector(limit=MAX_REQUESTS_IN_FLIGHT)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            load = Load(session, f"{gateway_url}/v1/batch", args.rate, args.batch, prefix)
            started = time.monotonic()
            sampler = Sampler(
                gateway.pid, gateway_url, data_dir, started, args.sample_s, receiver, load
            )
            sampler.rows.append(await sampler.sample(session))  # idle, before any load
            receiver.flap(started)
            sampling = asyncio.create_task(sampler.run(session))
            progress = asyncio.create_task(report_progress(sampler, args.progress_s))
            await load.run(started + args.duration)
            load_stop_s = time.monotonic() - started
            sampler.stage = "drain"
            await receiver.settle(load_stop_s)
            deadline = time.monotonic() + args.drain_timeout
            while time.monotonic() < deadline:
                await asyncio.sleep(1)
                if drained(await sampler.sample(session)):
                    drain_s = time.monotonic() - started - load_stop_s
                    break
            sampler.rows.append(await sampler.sample(session))
            for task in (sampling, progress):
                task.cancel()
            await asyncio.gather(sampling, progress, return_exceptions=True)
    finally:
        gateway.send_signal(signal.SIGTERM)
        try:
            exit_code = gateway.wait(timeout=60)
        except subprocess.TimeoutExpired:
            gateway.kill()
        stderr.close()
        await receiver.close()
    uptime_end = uptime()
    print(f"uptime at end:   {uptime_end}")

    letters = dead_letters(data_dir, prefix)
    in_files, file_lines = file_events(files_dir, prefix)
    oracle: dict[str, Any] = Counter()
    oracle["file_lines"] = file_lines
    for n in range(load.next_number):
        acked = load.acked.get(n)
        hook, hook_dead = receiver.delivered.get(n), letters["hook"].get(n)
        files, files_dead = in_files.get(n), letters["files"].get(n)
        oracle["hook_delivered"] += hook > 0
        oracle["hook_duplicates"] += max(hook - 1, 0)
        oracle["hook_dead"] += hook_dead > 0
        oracle["hook_both"] += hook > 0 and hook_dead > 0
        oracle["file_distinct"] += files > 0
        oracle["file_duplicates"] += max(files - 1, 0)
        oracle["file_dead"] += files_dead > 0
        if acked:
            oracle["acked"] += 1
            oracle["hook_missing"] += hook == 0 and hook_dead == 0
            oracle["file_missing"] += files == 0 and files_dead == 0
    oracle["not_acked_requests"] = dict((k, v) for k, v in load.outcomes.items() if k != "HTTP 200")
    oracle["answers"] = receiver.answers
    lines, verdicts = summarize(args, sampler, oracle, drain_s, load_stop_s)
    for line in lines:
        print(line)
    for role_restart in sampler.restarts:
        print(f"process restarted: {role_restart}")
    log_lines = (tmp / "gateway.stderr").read_bytes().splitlines()
    events: Counter[str] = Counter()
    for log_line in log_lines:
        try:
            entry = orjson.loads(log_line)
        except orjson.JSONDecodeError:
            entry = None
        events[str(entry.get("event")) if isinstance(entry, dict) else "(not JSON)"] += 1
    print(f"gateway stderr: {len(log_lines):,} lines {dict(events.most_common(8))}")
    sizes = table_bytes(data_dir)
    print(
        "log tables after the run (MB): "
        + ", ".join(f"{k} {v / 1e6:.1f}" for k, v in sorted(sizes.items(), key=lambda i: -i[1])[:8])
    )
    print(
        f"load: skipped ticks {load.skipped_ticks} (more than {MAX_REQUESTS_IN_FLIGHT} in flight)"
    )

    checks = [
        (
            "every acknowledged event delivered to the webhook or dead-lettered",
            oracle["hook_missing"] == 0,
        ),
        ("every acknowledged event in the files", oracle["file_missing"] == 0),
        ("the backlog drained", drain_s is not None),
        ("gateway exit code 0 on SIGTERM", exit_code == 0),
        ("no gateway process restarted", not sampler.restarts),
    ]
    print()
    for text, met in verdicts:
        print(f"  [{'FLAT  ' if met else 'GROWS '}] {text}")
    for text, met in checks:
        print(f"  [{'OK    ' if met else 'FAILED'}] {text}")

    write_outputs(args, sampler, receiver, load_stop_s, tmp)
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "uptime_start": uptime_start,
        "uptime_end": uptime_end,
        "oracle": {k: v for k, v in oracle.items() if k != "answers"},
        "answers": dict(receiver.answers),
        "drain_s": drain_s,
        "summary": lines,
        "verdicts": verdicts,
        "checks": checks,
        "log_table_bytes": sizes,
        "gateway_stderr_events": dict(events),
    }
    args.csv.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))
    return 0 if all(met for _, met in checks) else 1


async def report_progress(sampler: Sampler, every_s: float) -> None:
    """A line every ``every_s`` seconds while the soak runs."""
    while True:
        await asyncio.sleep(every_s)
        row = sampler.rows[-1]
        rss = " ".join(
            f"{role} {row.get(f'{role}_rss_mb', 0):.0f}MB/{row.get(f'{role}_fds', 0)}fd"
            for role in sorted(sampler.roles)
        )
        print(
            f"t={row['t_s']:>6.0f}s {row['phase']:<11} acked {row['acked_events_per_s']:>6,.0f}/s"
            f" depth hook {row.get('depth_hook', 0):>7,.0f}"
            f" files {row.get('depth_files', 0):>5,.0f}"
            f" retry {row['retry_rows_hook']:>6,} dead {row.get('dead_lettered_hook', 0):>7,.0f}"
            f" log {row.get('log_mb', 0):>6.0f}MB | {rss}",
            flush=True,
        )


def write_outputs(
    args: argparse.Namespace,
    sampler: Sampler,
    receiver: FlappingReceiver,
    load_stop_s: float,
    tmp: Path,
) -> None:
    """The samples as CSV and the SVG plot."""
    rows = sampler.rows
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with args.csv.open("w", newline="") as out:
        writer = csv.DictWriter(out, keys)
        writer.writeheader()
        writer.writerows(rows)
    roles = sorted(sampler.roles)
    panels = [
        ("RSS (MB)", [(f"{r}_rss_mb", r) for r in roles]),
        ("open file descriptors", [(f"{r}_fds", r) for r in roles]),
        (
            "webhook backlog (events)",
            [("depth_hook", "queue depth"), ("retry_rows_hook", "retry rows")],
        ),
        (
            "oldest pending event (s)",
            [("oldest_hook_s", "hook"), ("oldest_files_s", "files")],
        ),
        ("log on disk (MB)", [("log_mb", "eventgate_log_bytes")]),
    ]
    title = (
        f"eventgate soak: {args.rate:,.0f} events/s for {args.duration / 60:.0f} min, "
        f"webhook flapping ({args.schedule.split(',')[0]} then outages), circuit breaker "
        f"{args.circuit}, {time.strftime('%Y-%m-%d', time.gmtime())}"
    )
    spans = outage_spans(receiver.transitions, load_stop_s)
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    args.plot.write_text(svg_plot(rows, panels, spans, load_stop_s, title))
    print(f"samples: {args.csv}; plot: {args.plot}")


def main() -> int:
    """Parse the options and run the soak."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=1800, help="seconds of load")
    parser.add_argument("--rate", type=float, default=2000, help="events per second")
    parser.add_argument("--batch", type=int, default=500, help="events per /v1/batch request")
    parser.add_argument("--schedule", default=DEFAULT_SCHEDULE, help="the receiver's cycle")
    parser.add_argument("--sample-s", type=float, default=5, help="seconds between samples")
    parser.add_argument("--progress-s", type=float, default=30, help="seconds between lines")
    parser.add_argument("--drain-timeout", type=float, default=900, help="seconds")
    parser.add_argument(
        "--dedup-window-s", type=float, default=86400, help="storage.dedup_window_s"
    )
    parser.add_argument(
        "--circuit",
        choices=["off", "default"],
        default="off",
        help="the webhook's circuit breaker (off: every batch meets the outage)",
    )
    parser.add_argument("--csv", type=Path, default=ROOT / "bench/results/soak.csv")
    parser.add_argument("--plot", type=Path, default=ROOT / "bench/results/soak.svg")
    parser.add_argument("--workdir", type=Path, help="keep the data dir and files here")
    args = parser.parse_args()
    try:
        parse_schedule(args.schedule)
    except ValueError as exc:
        parser.error(str(exc))
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=False)
        return asyncio.run(soak(args, args.workdir.resolve()))
    with tempfile.TemporaryDirectory(prefix="eventgate-soak-") as tmp:
        return asyncio.run(soak(args, Path(tmp)))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
