"""Ingest benchmark: the real ``eventgate serve`` beside a bare aiohttp server, driven by wrk.

Two scenarios run against both servers in one go: ``/v1/batch`` with 500 track events of about
500 bytes per request, and ``/v1/track`` with one such event per request. For the gateway it also
checks the accounting (``eventgate_events_received_total`` against 200 responses x events per
request), samples the ``files`` destination's queue depth while the load runs, measures how long
the backlog takes to drain once the load stops, and counts the lines the destination wrote.

    .venv/bin/python bench/ingest.py [--duration 10] [--connections 64] [--out FILE]

wrk, the reference server and the gateway share the machine's cores; see bench/README.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
DEFAULT_OUT = BENCH_DIR / "results" / "ingest.json"

WRITE_KEY = "bench-write-key"
SOURCE = "bench"
DESTINATION = "files"
EVENTS_PER_BATCH = 500
EVENT_BYTES = 500
WARMUP_S = 2
ID_PLACEHOLDER = "@@ID@@"
# What wrk puts in its place, typically: "<scenario>-<server>-m<unix time>-t<thread>-<counter>".
ID_PREFIX_BYTES = 32
RESULT_MARKER = "EVENTGATE_BENCH_RESULT "
SAMPLE_INTERVAL_S = 0.25
GATEWAY_SHUTDOWN_GRACE_S = 10.0

# Cores used by anything but the server and wrk during a run above which its figures are suspect.
OTHER_CORES_LIMIT = 0.25

TARGET_BATCH_EVENTS_PER_S = 40_000
TARGET_SINGLE_RATIO = 0.6

# Every route the gateway's Segment API serves, so both servers route the same table.
SINGLE_ROUTES = ("track", "t", "identify", "i", "page", "p", "screen", "s", "group", "g")
SINGLE_ROUTES += ("alias", "a")
BATCH_ROUTES = ("/v1/batch", "/v1/b", "/v1/import", "/v1/import/")

# One POST per request; messageIds unique per run (run id, thread, counter, index in the
# batch); every status counted in response() and reported by done() as one JSON line.
WRK_SCRIPT = r"""
local threads = {}
local next_tid = 1

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  table.insert(threads, thread)
end

local pieces, path, headers, run_id
local counter = 0
statuses = {}
rejected_in_2xx = 0
error_sample = ""

function init(args)
  run_id = args[1]
  local f = assert(io.open(args[2], "rb"))
  local template = f:read("*a")
  f:close()
  pieces = {}
  local start = 1
  while true do
    local i, j = string.find(template, "@@ID@@", start, true)
    if not i then break end
    table.insert(pieces, string.sub(template, start, i - 1))
    start = j + 1
  end
  table.insert(pieces, string.sub(template, start))
  path = args[3]
  headers = {["Content-Type"] = "application/json"}
  if args[4] ~= nil and args[4] ~= "-" then
    headers["Authorization"] = args[4]
  end
end

function request()
  counter = counter + 1
  local prefix = run_id .. "-t" .. tid .. "-" .. counter
  local parts = {}
  local n = #pieces
  for k = 1, n - 1 do
    parts[2 * k - 1] = pieces[k]
    parts[2 * k] = prefix
  end
  parts[2 * n - 1] = pieces[n]
  return wrk.format("POST", path, headers, table.concat(parts))
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status >= 200 and status < 300 then
    if body and string.find(body, '"rejected"', 1, true) then
      rejected_in_2xx = rejected_in_2xx + 1
    end
  elseif error_sample == "" then
    error_sample = status .. " " .. string.sub(body or "", 1, 300)
  end
end

local function num(x)
  if x == nil or x ~= x or x == math.huge or x == -math.huge then return "null" end
  return string.format("%.17g", x)
end

local function str(s)
  local escaped = string.gsub(s, '[%z\1-\31"\\\127-\255]', function(c)
    return string.format("\\u%04x", string.byte(c))
  end)
  return '"' .. escaped .. '"'
end

function done(summary, latency, requests)
  local codes = {}
  local rejected, sample = 0, ""
  for _, thread in ipairs(threads) do
    for code, n in pairs(thread:get("statuses")) do
      codes[code] = (codes[code] or 0) + n
    end
    rejected = rejected + thread:get("rejected_in_2xx")
    if sample == "" then sample = thread:get("error_sample") end
  end
  local status_parts = {}
  for code, n in pairs(codes) do
    table.insert(status_parts, '"' .. code .. '":' .. num(n))
  end
  local e = summary.errors
  local out = {
    '"duration_us":' .. num(summary.duration),
    '"requests":' .. num(summary.requests),
    '"bytes":' .. num(summary.bytes),
    '"errors":{"connect":' .. num(e.connect) .. ',"read":' .. num(e.read)
      .. ',"write":' .. num(e.write) .. ',"status":' .. num(e.status)
      .. ',"timeout":' .. num(e.timeout) .. '}',
    '"latency_us":{"min":' .. num(latency.min) .. ',"max":' .. num(latency.max)
      .. ',"mean":' .. num(latency.mean) .. ',"stdev":' .. num(latency.stdev)
      .. ',"p50":' .. num(latency:percentile(50)) .. ',"p75":' .. num(latency:percentile(75))
      .. ',"p90":' .. num(latency:percentile(90)) .. ',"p99":' .. num(latency:percentile(99))
      .. ',"p99.9":' .. num(latency:percentile(99.9)) .. '}',
    '"statuses":{' .. table.concat(status_parts, ",") .. '}',
    '"rejected_in_2xx":' .. num(rejected),
    '"error_sample":' .. str(sample),
  }
  io.write("EVENTGATE_BENCH_RESULT {" .. table.concat(out, ",") .. "}\n")
end
"""


# -- the reference server (runs in its own process) --------------------------------------------


def serve_reference(port: int, loop: str = "asyncio") -> None:
    """Serve the gateway's routes with a handler that reads the body and answers success.

    ``loop`` is the event loop: asyncio's own (the default) or ``uvloop``.
    """
    from aiohttp import web

    if loop == "uvloop":
        import asyncio

        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    ok = b'{"success":true}'

    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=ok, content_type="application/json")

    async def health(_request: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    app = web.Application(client_max_size=1024 * 1024)
    for suffix in SINGLE_ROUTES:
        app.router.add_post(f"/v1/{suffix}", accept)
    for path in BATCH_ROUTES:
        app.router.add_post(path, accept)
    app.router.add_get("/health", health)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# -- request bodies, wrk script, gateway config -------------------------------------------------


def _iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def make_event(index: int, timestamp: str) -> dict[str, Any]:
    """A realistic track event of about ``EVENT_BYTES`` of JSON; its messageId has a placeholder."""
    event: dict[str, Any] = {
        "type": "track",
        "userId": f"user-{index % 97:05d}",
        "event": "Order Completed",
        "properties": {
            "orderId": f"order-{index:06d}",
            "revenue": 42.5 + index % 10,
            "currency": "USD",
            "products": [{"sku": "SKU-1042", "price": 89.99, "quantity": 1}],
            "note": "",
        },
        "context": {
            "library": {"name": "analytics-python", "version": "2.3.3"},
            "page": {"path": "/checkout", "url": "https://shop.example.com/checkout"},
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64)",
        },
        "timestamp": timestamp,
        "messageId": f"{ID_PLACEHOLDER}-{index}",
    }
    sent = len(_compact(event)) - len(ID_PLACEHOLDER) + ID_PREFIX_BYTES
    event["properties"]["note"] = "x" * max(EVENT_BYTES - sent, 0)
    return event


def write_bodies(tmp: Path) -> dict[str, Any]:
    """Write the batch and single request templates; return their paths and sizes."""
    now = datetime.now(UTC)
    timestamp = _iso(now - timedelta(seconds=1))
    events = [make_event(i, timestamp) for i in range(EVENTS_PER_BATCH)]
    batch = {"batch": events, "sentAt": _iso(now), "writeKey": WRITE_KEY}
    batch_path = tmp / "batch.json"
    batch_path.write_text(_compact(batch), encoding="utf-8")
    single = make_event(0, timestamp)
    single_path = tmp / "single.json"
    single_path.write_text(_compact(single), encoding="utf-8")
    id_growth = ID_PREFIX_BYTES - len(ID_PLACEHOLDER)
    return {
        "batch_template": batch_path,
        "single_template": single_path,
        "event_bytes": len(_compact(single)) + id_growth,
        "batch_body_bytes": len(_compact(batch)) + id_growth * EVENTS_PER_BATCH,
    }


def write_gateway_config(
    tmp: Path, port: int, dedup_window_s: float | None = None, event_loop: str | None = None
) -> Path:
    """A config with one source and the ``file`` destination, everything under ``tmp``.

    ``dedup_window_s`` overrides the gateway's default messageId dedup window (0: off),
    ``event_loop`` its ``server.event_loop`` (default: auto, i.e. uvloop where installed).
    """
    storage: dict[str, Any] = {"data_dir": str(tmp / "data")}
    if dedup_window_s is not None:
        storage["dedup_window_s"] = dedup_window_s
    config = {
        "server": {"host": "127.0.0.1", "port": port}
        | ({"event_loop": event_loop} if event_loop else {}),
        "storage": storage,
        "sources": [{"name": SOURCE, "write_keys": [WRITE_KEY]}],
        "destinations": [
            {
                "name": DESTINATION,
                "type": "file",
                "batch": {"max_events": 1000, "max_age_s": 0.2},
                "settings": {"directory": str(tmp / "files")},
            }
        ],
    }
    path = tmp / "gateway.yaml"
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")  # JSON is valid YAML
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- processes ----------------------------------------------------------------------------------


def http_get(url: str, timeout_s: float = 5.0) -> bytes:
    """GET ``url`` and return the body (raises ``OSError`` on any failure)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        body: bytes = response.read()
        return body


class Server:
    """A server subprocess with its stderr in a file and its CPU time readable from /proc."""

    def __init__(self, name: str, argv: list[str], port: int, tmp: Path) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = tmp / f"{name}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the process and poll ``GET /health`` until it answers 200."""
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=REPO_DIR
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                http_get(f"{self.url}/health", timeout_s=1.0)
            except OSError:
                time.sleep(0.1)
            else:
                return
        raise RuntimeError(f"{self.name} did not answer /health within {timeout_s} s")

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> set[int]:
        """The process and its descendants (the gateway runs ingress processes as children)."""
        if self.proc is None:
            return set()
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            parents[int(stat.parent.name)] = int(text.rsplit(")", 1)[1].split()[1])
        found = {self.proc.pid}
        grew = True
        while grew:
            new = {pid for pid, parent in parents.items() if parent in found} - found
            found |= new
            grew = bool(new)
        return found

    def cpu_s(self) -> float:
        """User plus system CPU seconds the process tree (all threads) has used so far."""
        total = 0.0
        for pid in self.pids():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def stop(self) -> int | None:
        """SIGTERM (a graceful shutdown), SIGKILL if it takes too long; return the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=GATEWAY_SHUTDOWN_GRACE_S + 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.exit_code = proc.returncode
        return self.exit_code

    def log(self) -> str:
        """What the process wrote to stdout and stderr."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


# -- gateway metrics ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricsSample:
    """The gateway metrics this benchmark follows, at one moment (``t``: monotonic seconds)."""

    t: float
    received: float
    delivered: float
    depth: float
    events_rejected: float
    requests_rejected: float
    delivery_failures: float
    dead_lettered: float


def scrape(url: str) -> MetricsSample:
    """Read the gateway's ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    t = time.monotonic()
    text = http_get(f"{url}/metrics").decode()
    totals: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            destination = sample.labels.get("destination")
            if sample.name == "eventgate_events_received_total":
                totals["received"] += sample.value
            elif sample.name == "eventgate_events_rejected_total":
                totals["events_rejected"] += sample.value
            elif sample.name == "eventgate_requests_rejected_total":
                totals["requests_rejected"] += sample.value
            elif destination != DESTINATION:
                continue
            elif sample.name == "eventgate_events_delivered_total":
                totals["delivered"] += sample.value
            elif sample.name == "eventgate_queue_depth":
                totals["depth"] += sample.value
            elif sample.name == "eventgate_delivery_failures_total":
                totals["delivery_failures"] += sample.value
            elif sample.name == "eventgate_events_dead_lettered_total":
                totals["dead_lettered"] += sample.value
    return MetricsSample(
        t=t,
        received=totals["received"],
        delivered=totals["delivered"],
        depth=totals["depth"],
        events_rejected=totals["events_rejected"],
        requests_rejected=totals["requests_rejected"],
        delivery_failures=totals["delivery_failures"],
        dead_lettered=totals["dead_lettered"],
    )


class MetricsSampler(threading.Thread):
    """Scrapes the gateway's metrics every ``SAMPLE_INTERVAL_S`` for as long as it runs."""

    def __init__(self, url: str) -> None:
        super().__init__(name="metrics-sampler", daemon=True)
        self.url = url
        self.samples: list[MetricsSample] = []
        self.failures = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        """Sample until :meth:`stop`."""
        while not self._stop_event.is_set():
            try:
                self.samples.append(scrape(self.url))
            except OSError:
                self.failures += 1
            self._stop_event.wait(SAMPLE_INTERVAL_S)

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._stop_event.set()
        if self.ident is not None:  # started
            self.join(timeout=10)

    def between(self, start: float, end: float) -> list[MetricsSample]:
        """The samples taken from ``start`` to ``end``."""
        return [s for s in list(self.samples) if start <= s.t <= end]

    def wait_drained(self, after: float, received: float, timeout_s: float) -> MetricsSample | None:
        """The first sample after ``after`` with depth 0 and all ``received`` events delivered."""
        deadline = time.monotonic() + timeout_s
        while True:
            for sample in list(self.samples):
                if sample.t > after and sample.depth == 0 and sample.delivered >= received:
                    return sample
            if time.monotonic() > deadline or not self.is_alive():
                return None
            time.sleep(0.05)


def settle(url: str, timeout_s: float = 15.0) -> MetricsSample:
    """Scrape until ``received`` stops changing (requests still in flight have landed)."""
    previous = scrape(url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.5)
        current = scrape(url)
        if current.received == previous.received:
            return current
        previous = current
    return previous


def machine_busy_s() -> float:
    """CPU seconds every core has spent busy (not idle or waiting for I/O) since boot."""
    try:
        fields = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def process_ticks() -> dict[int, tuple[int, str]]:
    """CPU clock ticks used so far and the name of every process on the machine."""
    found: dict[int, tuple[int, str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        name = text[text.find("(") + 1 : text.rfind(")")]
        fields = text.rsplit(")", 1)[1].split()
        found[int(stat.parent.name)] = (int(fields[11]) + int(fields[12]), name)
    return found


def busy_processes(
    before: dict[int, tuple[int, str]],
    after: dict[int, tuple[int, str]],
    seconds: float,
    exclude: set[int],
    threshold_cores: float = 0.1,
) -> list[str]:
    """Processes (bar ``exclude``) that used over ``threshold_cores`` between two snapshots.

    Processes that started and ended between the snapshots are not seen.
    """
    hz = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, (ticks, name) in after.items():
        if pid in exclude:
            continue
        cores = (ticks - before.get(pid, (0, name))[0]) / hz / seconds
        if cores > threshold_cores:
            busy.append(f"{name} (pid {pid}, {cores:.2f} cores)")
    return busy


def other_processes() -> list[str]:
    """Processes other than this one that used over a fifth of a core in the last 0.5 s."""
    before = process_ticks()
    time.sleep(0.5)
    return busy_processes(before, process_ticks(), 0.5, {os.getpid()}, threshold_cores=0.2)


# -- wrk ----------------------------------------------------------------------------------------


def run_wrk(
    *,
    wrk: str,
    script: Path,
    url: str,
    duration_s: int,
    connections: int,
    run_id: str,
    template: Path,
    path: str,
    authorization: str | None,
) -> dict[str, Any]:
    """Run wrk once; return the JSON its ``done()`` printed plus its CPU time and output."""
    argv = [wrk, "-t2", f"-c{connections}", f"-d{duration_s}s", "--timeout", "30s", "--latency"]
    argv += ["-s", str(script), f"{url}{path}", "--", run_id, str(template), path]
    argv.append(authorization or "-")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    completed = subprocess.run(
        argv, capture_output=True, timeout=duration_s + 60, check=False, cwd=REPO_DIR
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    stdout = completed.stdout.decode("utf-8", errors="replace")
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if completed.returncode != 0 or not lines:
        stderr = completed.stderr.decode("utf-8", errors="replace")
        raise RuntimeError(f"wrk failed ({completed.returncode}):\n{stdout}\n{stderr}")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix(RESULT_MARKER))
    result["wrk_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result["wrk_output"] = [line for line in stdout.splitlines() if line not in lines]
    return result


def summarize(raw: dict[str, Any], events_per_request: int, server_cpu_s: float) -> dict[str, Any]:
    """Rates, latency in milliseconds and error counts from one wrk result."""
    seconds = raw["duration_us"] / 1e6
    statuses = {int(code): int(n) for code, n in raw["statuses"].items()}
    ok = sum(n for code, n in statuses.items() if 200 <= code < 300)
    non_2xx = sum(n for code, n in statuses.items() if not 200 <= code < 300)
    socket_errors = {k: int(v) for k, v in raw["errors"].items() if k != "status" and v}
    latency = {k: (None if v is None else round(v / 1000, 3)) for k, v in raw["latency_us"].items()}
    return {
        "duration_s": round(seconds, 3),
        "requests": int(raw["requests"]),
        "ok_responses": ok,
        "non_2xx": non_2xx,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "socket_errors": socket_errors,
        "rejected_in_2xx": int(raw["rejected_in_2xx"]),
        "error_sample": raw["error_sample"] or None,
        "requests_per_s": round(ok / seconds, 1),
        "events_per_s": round(ok * events_per_request / seconds, 1),
        "latency_ms": latency,
        "server_cpu_s": round(server_cpu_s, 2),
        "server_cores": round(server_cpu_s / seconds, 2),
        "wrk_cpu_s": round(raw["wrk_cpu_s"], 2),
        "wrk_cores": round(raw["wrk_cpu_s"] / seconds, 2),
        "wrk_output": raw["wrk_output"],
    }


# -- profiling (optional) -----------------------------------------------------------------------


def start_profile(pid: int, duration_s: int, out: Path) -> subprocess.Popen[bytes] | None:
    """Start ``py-spy record`` on ``pid`` for ``duration_s``; ``None`` when py-spy is missing."""
    py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if py_spy is None:
        print("--profile: py-spy not found (pip install py-spy); not profiling")
        return None
    argv = [py_spy, "record", "--pid", str(pid), "--duration", str(duration_s), "--rate", "200"]
    argv += ["--format", "raw", "--nonblocking", "--output", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# Where a sampled stack runs, told by a frame it contains (the event loop is the main thread).
_THREAD_MARKERS = (
    ("log writer thread", "_write_loop ("),
    ("executor threads (log reads, file writes)", "concurrent/futures/thread.py"),
    ("event loop (main thread)", "run_forever ("),
)


def _function(frame: str) -> str:
    """``name (file:line)`` without the line: ``name (file)``."""
    head, sep, tail = frame.rpartition(":")
    return f"{head})" if sep and tail.rstrip(")").isdigit() else frame


def top_frames(collapsed: Path, limit: int = 15) -> dict[str, Any]:
    """Where the samples of py-spy's raw output fall: by thread, by function, by project code."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    project: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    try:
        lines = collapsed.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return {}
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        # Inclusive time is per function: py-spy names a frame by its current line.
        for function in {_function(frame) for frame in frames}:
            inclusive[function] += count
            if "gateway/" in function or "destinations/" in function:
                project[function] += count
        where = next((name for name, mark in _THREAD_MARKERS if mark in stack), "other")
        threads[where] += count

    def share(counter: Counter[str]) -> list[list[Any]]:
        return [[f, round(100 * n / total, 1)] for f, n in counter.most_common(limit)]

    return {
        "samples": total,
        "threads_pct": share(threads),
        "self_pct": share(own),
        "project_inclusive_pct": share(project),
        "inclusive_pct": share(inclusive),
    }


# -- the benchmark ------------------------------------------------------------------------------


@dataclass(slots=True)
class Scenario:
    """One kind of load: a path, a body template and how many events each request carries."""

    key: str
    title: str
    path: str
    template: Path
    events_per_request: int
    authorization: str | None
    results: dict[str, Any] = field(default_factory=dict)


def run_scenario(
    scenario: Scenario,
    servers: list[Server],
    sampler: MetricsSampler,
    args: argparse.Namespace,
    *,
    wrk: str,
    script: Path,
    tmp: Path,
    stamp: str,
) -> None:
    """Warm up and measure ``scenario`` against each server; gateway checks go with it."""
    for server in servers:
        is_gateway = server.name == "gateway"
        common: dict[str, Any] = {
            "wrk": wrk,
            "script": script,
            "url": server.url,
            "connections": args.connections,
            "template": scenario.template,
            "path": scenario.path,
            "authorization": scenario.authorization,
        }
        print(f"  {scenario.key}: {server.name}: warm-up {WARMUP_S} s ...", flush=True)
        run_wrk(duration_s=WARMUP_S, run_id=f"{scenario.key}-{server.name}-w{stamp}", **common)
        before = None
        if is_gateway:
            before = settle(server.url)
            sampler.wait_drained(0, before.received, args.drain_timeout)
            before = settle(server.url)
        print(f"  {scenario.key}: {server.name}: measuring {args.duration} s ...", flush=True)
        profile = None
        if is_gateway and args.profile and server.proc is not None:
            profile_path = tmp / f"profile-{scenario.key}.txt"
            profile = start_profile(server.proc.pid, args.duration, profile_path)
        cpu_before, machine_before, procs_before = server.cpu_s(), machine_busy_s(), process_ticks()
        t_start = time.monotonic()
        raw = run_wrk(
            duration_s=args.duration, run_id=f"{scenario.key}-{server.name}-m{stamp}", **common
        )
        t_stop = time.monotonic()
        cpu_used = server.cpu_s() - cpu_before
        result = summarize(raw, scenario.events_per_request, cpu_used)
        busy = machine_busy_s() - machine_before
        # Whatever else ran (this script's sampler, other people's processes) took this much.
        other = busy - cpu_used - raw["wrk_cpu_s"]
        result["machine_busy_cores"] = round(busy / (t_stop - t_start), 2)
        result["other_cores"] = round(max(other, 0.0) / (t_stop - t_start), 2)
        if result["other_cores"] > OTHER_CORES_LIMIT:
            exclude = {os.getpid(), *(pid for s in servers for pid in s.pids())}
            result["other_processes"] = busy_processes(
                procs_before, process_ticks(), t_stop - t_start, exclude
            )
        if not server.alive():
            result["crashed"] = True
            scenario.results[server.name] = result
            raise RuntimeError(f"{server.name} died during {scenario.key}:\n{server.log()[-3000:]}")
        if profile is not None:
            try:
                profile.wait(timeout=30)
            except subprocess.TimeoutExpired:
                profile.kill()
                profile.wait()
            result["profile"] = top_frames(tmp / f"profile-{scenario.key}.txt")
        if is_gateway and before is not None:
            after = settle(server.url)
            result["accounting"] = accounting(scenario, result, before, after, args.connections)
            result["backlog"] = backlog(sampler, t_start, t_stop, after, args.drain_timeout)
        scenario.results[server.name] = result
    reference = scenario.results["reference"]["requests_per_s"]
    gateway = scenario.results["gateway"]["requests_per_s"]
    scenario.results["ratio"] = round(gateway / reference, 3) if reference else None


def accounting(
    scenario: Scenario,
    result: dict[str, Any],
    before: MetricsSample,
    after: MetricsSample,
    connections: int,
) -> dict[str, Any]:
    """Events the gateway counted as received during the run against what it acknowledged."""
    acknowledged = result["ok_responses"] * scenario.events_per_request
    received = int(after.received - before.received)
    # Requests in flight when wrk stopped were stored but their 200 was never counted.
    in_flight_bound = connections * scenario.events_per_request
    return {
        "acknowledged_events": acknowledged,
        "received_events": received,
        "unacknowledged_extra": received - acknowledged,
        "in_flight_bound": in_flight_bound,
        "events_rejected": int(after.events_rejected - before.events_rejected),
        "requests_rejected": int(after.requests_rejected - before.requests_rejected),
        "ok": acknowledged <= received <= acknowledged + in_flight_bound,
    }


def backlog(
    sampler: MetricsSampler, t_start: float, t_stop: float, after: MetricsSample, timeout_s: float
) -> dict[str, Any]:
    """How deep the destination's queue got, and how long it took to drain after the load."""
    drained = sampler.wait_drained(t_stop, after.received, timeout_s)
    end = drained.t if drained is not None else time.monotonic()
    window = sampler.between(t_start, end)
    during = [s for s in window if s.t <= t_stop]
    last = sampler.samples[-1] if sampler.samples else None
    return {
        "max_depth": int(max((s.depth for s in window), default=0)),
        "depth_at_load_stop": int(during[-1].depth) if during else None,
        "drained": drained is not None,
        "drain_s": round(drained.t - t_stop, 2) if drained is not None else None,
        "depth_at_timeout": None if drained is not None or last is None else int(last.depth),
        "delivery_failures": int(last.delivery_failures) if last else 0,
        "dead_lettered": int(last.dead_lettered) if last else 0,
        "max_sample_gap_s": round(
            max((b.t - a.t for a, b in itertools.pairwise(window)), default=0), 2
        ),
        "depth_timeline": [[round(s.t - t_start, 2), int(s.depth)] for s in window],
    }


def count_output(directory: Path) -> dict[str, Any]:
    """Lines in the destination's JSON-lines files and how many distinct messageIds they hold."""
    import orjson

    lines = 0
    ids: set[str] = set()
    unreadable = 0
    files = sorted(p for p in directory.rglob("*.jsonl") if p.is_file())
    for path in files:
        for line in path.read_bytes().splitlines():
            if not line:
                continue
            lines += 1
            try:
                ids.add(orjson.loads(line)["messageId"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                unreadable += 1
    return {"files": len(files), "lines": lines, "unique_message_ids": len(ids), "bad": unreadable}


def stderr_findings(text: str) -> list[str]:
    """The gateway's stderr lines other than its start-up banner."""
    return [
        line
        for line in text.splitlines()
        if line.strip() and not line.startswith("eventgate listening on")
    ]


def tool_version(argv: list[str]) -> str:
    """The first line a ``--version``-like command prints, or ``unknown``."""
    try:
        done = subprocess.run(argv, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (done.stdout or done.stderr).decode("utf-8", errors="replace").strip()
    return text.splitlines()[0] if text else "unknown"


def gateway_argv(config: Path, port: int, data_dir: Path) -> list[str]:
    """How to run ``eventgate serve``: the console script next to this Python."""
    script = Path(sys.executable).with_name("eventgate")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]
    serve = ["serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    return [*base, *serve, "--data-dir", str(data_dir), "--log-level", "warning"]


def measure(
    results: dict[str, Any],
    scenarios: list[Scenario],
    servers: list[Server],
    sampler: MetricsSampler,
    args: argparse.Namespace,
    wrk: str,
    script: Path,
    tmp: Path,
    stamp: str,
) -> None:
    """Start the servers, run every scenario, then count what the gateway received and wrote."""
    reference, gateway = servers
    reference.start()
    gateway.start()
    results["gateway_pid"] = gateway.proc.pid if gateway.proc else None
    print(
        f"reference on {reference.url}, gateway on {gateway.url} (pid "
        f"{results['gateway_pid']}), temp dir {tmp}",
        flush=True,
    )
    sampler.start()
    for scenario in scenarios:
        try:
            run_scenario(
                scenario, servers, sampler, args, wrk=wrk, script=script, tmp=tmp, stamp=stamp
            )
        finally:
            results.setdefault("scenarios", {})[scenario.key] = {
                "title": scenario.title,
                "events_per_request": scenario.events_per_request,
                **scenario.results,
            }
    final = settle(gateway.url)
    drained = sampler.wait_drained(0, final.received, args.drain_timeout)
    results["totals"] = {
        "events_received": int(final.received),
        "events_delivered": int((drained or scrape(gateway.url)).delivered),
        "events_rejected": int(final.events_rejected),
        "requests_rejected": int(final.requests_rejected),
        "delivery_failures": int(final.delivery_failures),
        "dead_lettered": int(final.dead_lettered),
        "output": count_output(tmp / "files"),
        "sampler_failures": sampler.failures,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start both servers, run both scenarios, check the gateway; return every figure."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (Debian package: wrk)")
    import aiohttp

    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {
            "duration_s": args.duration,
            "warmup_s": WARMUP_S,
            "connections": args.connections,
            "wrk_threads": 2,
            "events_per_batch": EVENTS_PER_BATCH,
            "reference_loop": args.reference_loop,
            "gateway_loop": args.gateway_loop or "gateway default (auto)",
        },
        "environment": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "aiohttp": aiohttp.__version__,
            "wrk": tool_version([wrk, "-v"]),
            "platform": platform.platform(),
            "gateway_commit": tool_version(["git", "-C", str(REPO_DIR), "rev-parse", "HEAD"]),
            "note": "wrk, the reference server and the gateway share the same CPU cores",
            "busy_processes_at_start": [],
        },
        "targets": {
            "batch_events_per_s": TARGET_BATCH_EVENTS_PER_S,
            "single_ratio_to_reference": TARGET_SINGLE_RATIO,
            "backlog_drains_within_s": args.drain_timeout,
        },
    }
    with tempfile.TemporaryDirectory(prefix="eventgate-bench-") as tmp_name:
        tmp = Path(tmp_name)
        bodies = write_bodies(tmp)
        results["settings"]["event_bytes"] = bodies["event_bytes"]
        results["settings"]["batch_body_bytes"] = bodies["batch_body_bytes"]
        script = tmp / "ingest.lua"
        script.write_text(WRK_SCRIPT, encoding="utf-8")
        ref_port, gw_port = free_port(), free_port()
        reference = Server(
            "reference",
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--serve-reference",
                str(ref_port),
                "--reference-loop",
                args.reference_loop,
            ],
            ref_port,
            tmp,
        )
        config = write_gateway_config(tmp, gw_port, args.dedup_window_s, args.gateway_loop)
        gateway = Server("gateway", gateway_argv(config, gw_port, tmp / "data"), gw_port, tmp)
        token = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
        scenarios = [
            Scenario(
                "batch", "/v1/batch", "/v1/batch", bodies["batch_template"], EVENTS_PER_BATCH, None
            ),
            Scenario(
                "single", "/v1/track", "/v1/track", bodies["single_template"], 1, f"Basic {token}"
            ),
        ]
        sampler = MetricsSampler(gateway.url)
        stamp = str(int(time.time()))
        busy = other_processes()
        results["environment"]["busy_processes_at_start"] = busy
        if busy:
            print(f"WARNING: the machine is not idle: {', '.join(busy)}", flush=True)
        with contextlib.ExitStack() as cleanup:
            # Callbacks run last-registered first, each even if another raised.
            cleanup.callback(gateway.stop)
            cleanup.callback(reference.stop)
            cleanup.callback(sampler.stop)
            try:
                measure(
                    results, scenarios, [reference, gateway], sampler, args, wrk, script, tmp, stamp
                )
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                results["error"] = f"{type(exc).__name__}: {exc}"
                print(f"benchmark failed: {results['error']}", file=sys.stderr)
        results["gateway_exit_code"] = gateway.exit_code
        results["gateway_stderr"] = stderr_findings(gateway.log())[-200:]
        results["reference_stderr"] = stderr_findings(reference.log())[-50:]
        if args.keep_tmp:
            kept = Path(tempfile.mkdtemp(prefix="eventgate-bench-kept-"))
            shutil.copytree(tmp, kept, dirs_exist_ok=True)
            results["kept_tmp"] = str(kept)
    results["verdicts"] = verdicts(results)
    return results


# -- verdicts and the printed report ------------------------------------------------------------


def verdicts(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Targets (performance) and checks (correctness), each with a pass flag and a line of text."""
    scenarios = results.get("scenarios", {})
    batch = scenarios.get("batch", {})
    single = scenarios.get("single", {})
    targets: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []

    if "gateway" in batch:
        rate = batch["gateway"]["events_per_s"]
        targets.append(
            {
                "name": f"batched ingest >= {TARGET_BATCH_EVENTS_PER_S:,} events/s",
                "ok": rate >= TARGET_BATCH_EVENTS_PER_S,
                "text": f"gateway {rate:,.0f} events/s "
                f"(reference {batch['reference']['events_per_s']:,.0f})",
            }
        )
    if "gateway" in single and single.get("ratio") is not None:
        targets.append(
            {
                "name": f"single events >= {TARGET_SINGLE_RATIO} x reference req/s",
                "ok": single["ratio"] >= TARGET_SINGLE_RATIO,
                "text": f"ratio {single['ratio']:.2f} (gateway "
                f"{single['gateway']['requests_per_s']:,.0f} req/s, reference "
                f"{single['reference']['requests_per_s']:,.0f} req/s)",
            }
        )
    drains = [(k, s["gateway"].get("backlog")) for k, s in scenarios.items() if "gateway" in s]
    drains = [(k, b) for k, b in drains if b is not None]
    if drains:
        parts = []
        for key, b in drains:
            if b["drained"]:
                parts.append(
                    f"{key}: drained {b['drain_s']} s after load (max depth {b['max_depth']:,})"
                )
            else:
                parts.append(f"{key}: NOT drained (depth {b['depth_at_timeout']:,} at timeout)")
        targets.append(
            {
                "name": "file destination backlog drains after the load",
                "ok": all(b["drained"] for _, b in drains),
                "text": "; ".join(parts),
            }
        )

    for key, scenario in scenarios.items():
        for name in ("reference", "gateway"):
            run = scenario.get(name)
            if run is None:
                continue
            bad = run["non_2xx"] or run["socket_errors"] or run["rejected_in_2xx"]
            text = f"{run['requests']:,} responses, statuses {run['statuses']}"
            if run["socket_errors"]:
                text += f", socket errors {run['socket_errors']}"
            if run["rejected_in_2xx"]:
                text += f", {run['rejected_in_2xx']} 200s with rejected events"
            if run["error_sample"]:
                text += f"; first error: {run['error_sample'][:160]}"
            checks.append(
                {"name": f"{key} {name}: every response 2xx", "ok": not bad, "text": text}
            )
        acct = scenario.get("gateway", {}).get("accounting")
        if acct:
            checks.append(
                {
                    "name": f"{key} gateway: received = 200s x events/request",
                    "ok": acct["ok"],
                    "text": f"200s x {scenario['events_per_request']} = "
                    f"{acct['acknowledged_events']:,}; eventgate_events_received_total grew "
                    f"{acct['received_events']:,} (+{acct['unacknowledged_extra']:,} from requests"
                    f" in flight when wrk stopped, at most {acct['in_flight_bound']:,})",
                }
            )
    totals = results.get("totals")
    if totals:
        out = totals["output"]
        ok = out["lines"] == totals["events_received"] == out["unique_message_ids"]
        checks.append(
            {
                "name": "file lines = events received",
                "ok": ok and not out["bad"],
                "text": f"{out['lines']:,} lines in {out['files']} file(s), "
                f"{out['unique_message_ids']:,} unique messageIds; "
                f"eventgate_events_received_total {totals['events_received']:,}; "
                f"delivered {totals['events_delivered']:,}",
            }
        )
        failures = totals["delivery_failures"] + totals["dead_lettered"]
        checks.append(
            {
                "name": "no delivery failures or dead letters",
                "ok": failures == 0,
                "text": f"failures {totals['delivery_failures']}, "
                f"dead letters {totals['dead_lettered']}",
            }
        )
    noisy = [
        f"{key} {name}: {run['other_cores']:.2f}"
        + (f" ({', '.join(run['other_processes'])})" if run.get("other_processes") else "")
        for key, scenario in scenarios.items()
        for name in ("reference", "gateway")
        if (run := scenario.get(name)) and run.get("other_cores", 0) > OTHER_CORES_LIMIT
    ]
    busy = results["environment"].get("busy_processes_at_start")
    checks.append(
        {
            "name": "nothing else used the CPU during the runs",
            "ok": not noisy,
            "text": (f"other processes used cores ({'; '.join(noisy)})" if noisy else "quiet")
            + (f"; busy at start: {', '.join(busy)}" if busy else ""),
        }
    )
    if "error" in results:
        checks.append({"name": "benchmark completed", "ok": False, "text": results["error"][:500]})
    stderr = results.get("gateway_stderr", [])
    checks.append(
        {
            "name": "gateway stderr quiet (log level warning)",
            "ok": not stderr,
            "text": f"{len(stderr)} line(s)" + (f"; last: {stderr[-1][:200]}" if stderr else ""),
        }
    )
    code = results.get("gateway_exit_code")
    checks.append(
        {"name": "gateway exits 0 on SIGTERM", "ok": code == 0, "text": f"exit code {code}"}
    )
    return {"targets": targets, "checks": checks}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def print_report(results: dict[str, Any]) -> None:
    """The table, targets and checks, readable in a terminal."""
    settings = results["settings"]
    print()
    print(
        f"eventgate ingest benchmark: wrk -t2 -c{settings['connections']} "
        f"-d{settings['duration_s']}s per run ({settings['warmup_s']} s warm-up not reported); "
        f"events ~{settings.get('event_bytes', '?')} B, batch body "
        f"~{settings.get('batch_body_bytes', 0) // 1024} KiB"
    )
    print(
        f"NOTE: wrk (2 threads) and the server under test share this machine's "
        f"{results['environment']['cpus']} CPU cores; absolute figures are lower than on a "
        f"machine where the load generator runs elsewhere. Compare the ratios."
    )
    header = (
        f"{'scenario':<22}{'server':<11}{'req/s':>10}{'events/s':>11}{'p50 ms':>9}"
        f"{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}{'non-2xx':>9}{'cores: srv':>11}{'wrk':>6}"
        f"{'other':>7}"
    )
    print()
    print(header)
    print("-" * len(header))
    for scenario in results.get("scenarios", {}).values():
        title = f"{scenario['title']} ({scenario['events_per_request']}/req)"
        for name in ("reference", "gateway"):
            run = scenario.get(name)
            if run is None:
                continue
            lat = run["latency_ms"]
            errors = run["non_2xx"] + sum(run["socket_errors"].values())
            print(
                f"{title:<22}{name:<11}{run['requests_per_s']:>10,.0f}{run['events_per_s']:>11,.0f}"
                f"{_ms(lat['p50']):>9}{_ms(lat['p90']):>9}{_ms(lat['p99']):>9}{_ms(lat['max']):>9}"
                f"{errors:>9,}{run['server_cores']:>11.2f}{run['wrk_cores']:>6.2f}"
                f"{run.get('other_cores', 0):>7.2f}"
            )
            title = ""
        if scenario.get("ratio") is not None:
            print(f"{'':<22}{'gw/ref':<11}{scenario['ratio']:>10.2f}x")
        print()
    for key, scenario in results.get("scenarios", {}).items():
        gateway = scenario.get("gateway", {})
        b = gateway.get("backlog")
        if b:
            received = gateway.get("accounting", {}).get("received_events") or 0
            behind = b["depth_at_load_stop"] or 0
            share = f" = {100 * behind / received:.0f}% of the run's events" if received else ""
            print(
                f"{key}: files queue depth max {b['max_depth']:,}; at load stop {behind:,}{share}; "
                + (
                    f"drained {b['drain_s']} s after the load stopped"
                    if b["drained"]
                    else "NOT drained"
                )
                + f" (samples every {SAMPLE_INTERVAL_S} s, largest gap {b['max_sample_gap_s']} s)"
            )
    for key, scenario in results.get("scenarios", {}).items():
        profile = scenario.get("gateway", {}).get("profile")
        if profile:
            print(f"\n{key}: gateway py-spy profile ({profile['samples']} non-idle samples)")
            for title, rows in (
                ("by thread", profile["threads_pct"]),
                ("self time", profile["self_pct"][:10]),
                ("eventgate code, inclusive", profile["project_inclusive_pct"][:10]),
            ):
                print(f"  {title}:")
                for frame, pct in rows:
                    print(f"    {pct:5.1f}%  {frame[:110]}")
    verdict = results["verdicts"]
    print("\nTargets")
    for t in verdict["targets"]:
        print(f"  [{'MET' if t['ok'] else 'MISSED':<6}] {t['name']}: {t['text']}")
    print("\nChecks")
    for c in verdict["checks"]:
        print(f"  [{'ok' if c['ok'] else 'FAIL':<4}] {c['name']}: {c['text']}")
    if results.get("gateway_stderr"):
        print("\nGateway stderr (last lines):")
        for line in results["gateway_stderr"][-10:]:
            print(f"  {line[:300]}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON file")
    parser.add_argument(
        "--drain-timeout", type=float, default=60.0, help="seconds to wait for the backlog"
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the gateway during its measured runs"
    )
    parser.add_argument("--keep-tmp", action="store_true", help="keep a copy of the temp dir")
    parser.add_argument(
        "--dedup-window-s",
        type=float,
        help="the gateway's storage.dedup_window_s (default: the gateway's, 24 h; 0: off)",
    )
    parser.add_argument(
        "--reference-loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="the reference server's event loop (default asyncio, aiohttp's own default)",
    )
    parser.add_argument(
        "--gateway-loop",
        choices=["asyncio", "uvloop"],
        help="the gateway's server.event_loop (default: the gateway's, uvloop where installed)",
    )
    parser.add_argument("--serve-reference", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.duration < 1 or args.connections < 2:
        parser.error("--duration must be >= 1 and --connections >= 2 (wrk runs 2 threads)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every check passed (targets are reported, not enforced)."""
    args = parse_args(argv)
    if args.serve_reference is not None:
        serve_reference(args.serve_reference, args.reference_loop)
        return 0
    try:
        results = run(args)
    except RuntimeError as exc:  # before any server started: nothing to report
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    print_report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"\nresults written to {args.out}")
    return 0 if all(c["ok"] for c in results["verdicts"]["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
