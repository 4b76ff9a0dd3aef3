"""Latency benchmark: single events at a constant rate, the gateway beside a bare aiohttp server.

Issue 8 asks for "p99 under 25 ms at half that rate", that rate being the bare aiohttp server's
single-event rate. One after the other, this starts bench/ingest.py's reference server and the
real ``eventgate serve`` (bench/ingest.py's config: one source, the file destination, default
ingress processes), finds each one's max single-event rate with a short closed-loop wrk run
(``/v1/track``, as bench/ingest.py does), then drives each with an open-loop load at a constant
rate: half the reference's max (the target), and, for the gateway, half its own max too.

Open loop: requests are due at fixed intervals whatever the answers, and a request's latency runs
from the moment it was due, so a slow answer cannot hold back the requests behind it
(no coordinated omission). The load comes from generator processes (raw HTTP/1.1 over
keep-alive connections on uvloop, one request in flight per connection; a request due while
every connection is busy waits for one, and that wait counts in its latency). Each generator
reports its lateness: how long after a request was due it got to it (they run at nice -10
where allowed, so that other processes on the machine delay them less). Lateness makes the
latencies pessimistic, never optimistic; past ``LATENESS_LIMIT_S`` at p99 the run is flagged.

    .venv/bin/python bench/latency.py [--duration 10] [--connections 64] [--rate R] [--out FILE]

The generators, wrk and the server under test share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter, deque
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from _common import (
    BENCH_DIR,
    ID_BYTES,
    ID_PLACEHOLDER,
    REPO_DIR,
    WRITE_KEY,
    Server,
    free_port,
    gateway_argv,
    gateway_metrics,
    machine_busy_s,
    process_cpu_s,
    process_label,
    reference_argv,
    single_event_template,
    write_gateway_config,
)

DEFAULT_OUT = BENCH_DIR / "results" / "latency.json"
PATH = "/v1/track"
WARMUP_S = 2
TARGET_P99_S = 0.025
TARGET_RATE_SHARE = 0.5  # of the reference's max rate
TARGET_MAX_RATIO = 0.8  # the issue's other half: the gateway's max against the reference's
# A generator later than this at p99 adds too much of its own delay to trust the latencies.
LATENESS_LIMIT_S = 0.005
# The generators wake at most this often: uvloop's timers have millisecond resolution, so a
# shorter sleep would spin a core. Requests due within one tick go out together.
TICK_S = 0.001
GENERATOR_START_S = 2.0  # from spawning the generators to the first request due
ANSWER_TIMEOUT_S = 10.0  # after the last request due, how long to wait for the last answers
DRAIN_TIMEOUT_S = 60.0
OTHER_CORES_LIMIT = 0.25
# Status codes the generator records for requests without an HTTP answer.
NO_ANSWER = 0  # still unanswered ANSWER_TIMEOUT_S after the last request was due
CONNECTION_LOST = 1  # the connection closed or the answer could not be parsed

WRK_MARKER = "LATENCY_BENCH_WRK "
# Unique messageIds (run, thread, counter) so dedup does not short-cut anything; one JSON line.
WRK_SCRIPT = r"""
local next_tid = 1
function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
end

local head, tail, run_id, headers
local counter = 0

function init(args)
  run_id = args[1]
  local f = assert(io.open(args[2], "rb"))
  local template = f:read("*a")
  f:close()
  local i, j = string.find(template, "@@ID@@", 1, true)
  head = string.sub(template, 1, i - 1)
  tail = string.sub(template, j + 1)
  headers = {["Content-Type"] = "application/json", ["Authorization"] = args[3]}
end

function request()
  counter = counter + 1
  return wrk.format("POST", nil, headers, head .. run_id .. "-t" .. tid .. "-" .. counter .. tail)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'LATENCY_BENCH_WRK {"duration_us":%d,"requests":%d,"non_2xx":%d,"socket_errors":%d,'
      .. '"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.duration, summary.requests, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


# -- the open-loop generator (runs in its own processes) ----------------------------------------


@dataclass(frozen=True, slots=True)
class GeneratorPlan:
    """What one generator process sends: ``requests`` POSTs, one every ``1 / rate_per_s``.

    Request ``i`` is due at ``start_at + offset_s + i / rate_per_s`` (``time.monotonic()``,
    the same clock in every process on Linux).
    """

    port: int
    path: str
    authorization: str
    body_template: str
    id_prefix: str
    rate_per_s: float
    offset_s: float
    start_at: float
    requests: int
    connections: int
    nice: int
    out: str


class _Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, run: _OpenLoop) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.index = -1  # the request in flight

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self.transport = cast("asyncio.Transport", transport)

    def send(self, index: int) -> None:
        self.index = index
        assert self.transport is not None
        self.transport.write(self.run.request(index))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buffer[:end]).lower()
        start = head.find(b"\r\ncontent-length:")
        if start < 0 or not head.startswith(b"http/1.1 "):
            # Both servers answer with a Content-Length; anything else ends the connection.
            assert self.transport is not None
            self.transport.close()
            return
        stop = head.find(b"\r\n", start + 2)
        size = end + 4 + int(head[start + 17 : stop if stop >= 0 else len(head)])
        if len(buffer) < size:
            return
        del buffer[:size]
        index, self.index = self.index, -1
        self.run.answered(self, index, int(head[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        index, self.index = self.index, -1
        self.run.lost(self, index)


class _OpenLoop:
    """Sends ``plan.requests`` requests on schedule and records what happened to each."""

    def __init__(self, plan: GeneratorPlan) -> None:
        self.plan = plan
        n = plan.requests
        self.interval_s = 1.0 / plan.rate_per_s
        self.first_due = plan.start_at + plan.offset_s
        # Per request, seconds: due -> the generator got to it; -> written; due -> answered.
        self.lateness = array("d", bytes(8 * n))
        self.wait = array("d", bytes(8 * n))
        self.latency = array("d", [math.nan]) * n
        self.status = array("H", bytes(2 * n))
        head = (
            f"POST {plan.path} HTTP/1.1\r\nHost: 127.0.0.1:{plan.port}\r\n"
            "Content-Type: application/json\r\n"
            f"Authorization: {plan.authorization}\r\n"
        )
        body_head, body_tail = plan.body_template.split(ID_PLACEHOLDER)
        digits = ID_BYTES - len(plan.id_prefix)
        length = len(body_head.encode()) + ID_BYTES + len(body_tail.encode())
        self.head = f"{head}Content-Length: {length}\r\n\r\n{body_head}{plan.id_prefix}".encode()
        self.tail = body_tail.encode()
        self.id_format = f"%0{digits}d".encode()
        self.idle: deque[_Connection] = deque()
        self.pending: deque[int] = deque()
        self.outstanding = 0
        self.scheduling = True
        self.closing = False
        self.max_pending = 0
        self.reconnects = 0
        self.finished = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.connections: set[_Connection] = set()

    def request(self, index: int) -> bytes:
        """The bytes of request ``index``: its messageId ends in the index."""
        return self.head + self.id_format % index + self.tail

    def due(self, index: int) -> float:
        """When request ``index`` is due (monotonic seconds)."""
        return self.first_due + index * self.interval_s

    async def connect(self) -> None:
        """Open one connection and put it in the idle pool (or give it a waiting request)."""
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: _Connection(self), "127.0.0.1", self.plan.port
        )
        self.connections.add(conn)
        self.release(conn, time.monotonic())

    def release(self, conn: _Connection, now: float) -> None:
        """``conn`` is free: send the oldest waiting request on it, or make it idle."""
        if self.pending:
            index = self.pending.popleft()
            self.wait[index] = now - self.due(index) - self.lateness[index]
            conn.send(index)
        else:
            # First in, first out: requests go round every connection, so round every ingress
            # process the kernel spread the connections over.
            self.idle.append(conn)

    def answered(self, conn: _Connection, index: int, status: int) -> None:
        """``conn`` got the answer to request ``index``."""
        now = time.monotonic()
        self.latency[index] = now - self.due(index)
        self.status[index] = status
        self.outstanding -= 1
        self.release(conn, now)
        self.check_finished()

    def lost(self, conn: _Connection, index: int) -> None:
        """``conn`` closed, with request ``index`` in flight (-1: none); open another."""
        self.connections.discard(conn)
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        if index >= 0 and not self.closing:  # closing: it timed out (NO_ANSWER)
            self.status[index] = CONNECTION_LOST
            self.outstanding -= 1
        if not self.closing:
            self.reconnects += 1
            task = asyncio.get_running_loop().create_task(self.connect())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        self.check_finished()

    def check_finished(self) -> None:
        """Wake :meth:`run` once everything scheduled has been answered."""
        if not self.scheduling and self.outstanding == 0:
            self.finished.set()

    async def schedule(self) -> None:
        """Hand every request to a connection when it is due, whatever the answers."""
        n = self.plan.requests
        index = 0
        while index < n:
            now = time.monotonic()
            due = self.due(index)
            if due > now:
                await asyncio.sleep(max(due - now, TICK_S))
                continue
            while index < n and (due := self.due(index)) <= now:
                self.lateness[index] = now - due
                self.outstanding += 1
                if self.idle:
                    self.idle.popleft().send(index)
                else:
                    self.pending.append(index)
                index += 1
            self.max_pending = max(self.max_pending, len(self.pending))
            await asyncio.sleep(0)
        self.scheduling = False
        self.check_finished()

    async def run(self) -> dict[str, Any]:
        """Connect, send everything, wait for the answers; return a summary."""
        for _ in range(self.plan.connections):
            await self.connect()
        ready_at = time.monotonic()
        await self.schedule()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.finished.wait(), ANSWER_TIMEOUT_S)
        self.closing = True
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.sleep(0)
        return {
            "ready_late_s": round(max(ready_at - self.plan.start_at, 0.0), 4),
            "requests": self.plan.requests,
            "unanswered": self.outstanding,
            "max_pending": self.max_pending,
            "reconnects": self.reconnects,
            "nice": os.getpriority(os.PRIO_PROCESS, 0),
        }


def generate(plan_path: Path) -> None:
    """Run one generator process: read its plan, run it, write the arrays and a summary."""
    plan = GeneratorPlan(**json.loads(plan_path.read_text(encoding="utf-8")))
    if plan.nice:
        # A raised priority (root only) keeps the machine's other processes from delaying the
        # schedule; without it the lateness shows what they cost.
        with contextlib.suppress(PermissionError):
            os.setpriority(os.PRIO_PROCESS, 0, plan.nice)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    async def main() -> tuple[_OpenLoop, dict[str, Any]]:
        run = _OpenLoop(plan)
        return run, await run.run()

    run, summary = asyncio.run(main())
    out = Path(plan.out)
    for name in ("lateness", "wait", "latency", "status"):
        out.with_suffix(f".{name}").write_bytes(getattr(run, name).tobytes())
    out.with_suffix(".json").write_text(json.dumps(summary), encoding="utf-8")


# -- statistics ---------------------------------------------------------------------------------


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50, p90, p99, p99.9 and max in milliseconds (nearest rank; ``None``: no answer)."""
    if not values:
        return dict.fromkeys(("p50", "p90", "p99", "p99.9", "max"))
    ordered = sorted(values)

    def rank(p: float) -> float | None:
        value = ordered[min(len(ordered) - 1, max(math.ceil(p / 100 * len(ordered)) - 1, 0))]
        return None if math.isinf(value) else round(value * 1000, 3)

    return {
        "p50": rank(50),
        "p90": rank(90),
        "p99": rank(99),
        "p99.9": rank(99.9),
        "max": rank(100),
    }


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    """CPU seconds used so far by each process of interest and by the whole machine."""

    t: float
    per_pid: dict[int, float]
    machine_s: float

    @classmethod
    def take(cls, pids: set[int]) -> CpuSnapshot:
        """Read /proc now."""
        return cls(time.monotonic(), process_cpu_s(pids), machine_busy_s())


def cpu_use(
    before: CpuSnapshot, after: CpuSnapshot, labels: dict[int, str], group: dict[int, str]
) -> dict[str, Any]:
    """Cores each process used between two snapshots, summed by ``group``, and everything else."""
    seconds = after.t - before.t
    per_process: dict[str, float] = {}
    groups: dict[str, float] = {}
    for pid, used in after.per_pid.items():
        cores = (used - before.per_pid.get(pid, 0.0)) / seconds
        per_process[labels.get(pid, str(pid))] = round(cores, 2)
        name = group.get(pid, "other")
        groups[name] = groups.get(name, 0.0) + cores
    known = sum(groups.values())
    busy = (after.machine_s - before.machine_s) / seconds
    return {
        "per_process_cores": dict(sorted(per_process.items())),
        **{f"{name}_cores": round(cores, 2) for name, cores in groups.items()},
        "machine_busy_cores": round(busy, 2),
        "other_cores": round(max(busy - known, 0.0), 2),
    }


# -- the runs -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Load:
    """The request every run sends: ``PATH`` with the single-event body and Basic auth."""

    template: Path
    body_template: str
    authorization: str


def run_wrk(
    wrk: str, script: Path, server: Server, load: Load, run_id: str, seconds: int, connections: int
) -> Any:
    """One closed-loop wrk run (2 threads); the JSON its ``done()`` printed, plus its CPU."""
    argv = [wrk, "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s"]
    argv += ["-s", str(script), f"{server.url}{PATH}", "--", run_id, str(load.template)]
    argv.append(load.authorization)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, timeout=seconds + 60, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    stdout = done.stdout.decode("utf-8", errors="replace")
    lines = [line for line in stdout.splitlines() if line.startswith(WRK_MARKER)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{stdout}\n{done.stderr.decode()}")
    result = json.loads(lines[-1].removeprefix(WRK_MARKER))
    result["wrk_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result


def max_rate(
    wrk: str, script: Path, server: Server, load: Load, stamp: str, args: argparse.Namespace
) -> dict[str, Any]:
    """The server's closed-loop single-event rate: a warm-up, then a measured wrk run."""
    print(f"  {server.name}: wrk warm-up {WARMUP_S} s ...", flush=True)
    run_wrk(wrk, script, server, load, f"max-{server.name}-w{stamp}", WARMUP_S, args.connections)
    if server.name == "gateway":
        wait_drained(server)
    seconds = args.max_duration
    print(f"  {server.name}: max rate, wrk {seconds} s ...", flush=True)
    pids = server.pids()
    before = CpuSnapshot.take(pids)
    run_id = f"max-{server.name}-m{stamp}"
    raw = run_wrk(wrk, script, server, load, run_id, seconds, args.connections)
    after = CpuSnapshot.take(pids)
    duration_s = raw["duration_us"] / 1e6
    ok = raw["requests"] - raw["non_2xx"]
    labels, group = server_labels(server, pids)
    cpu = cpu_use(before, after, labels, group)
    # wrk has been reaped, so it is no longer in /proc: its time comes from getrusage.
    cpu["wrk_cores"] = round(raw["wrk_cpu_s"] / duration_s, 2)
    cpu["other_cores"] = round(max(cpu["other_cores"] - cpu["wrk_cores"], 0.0), 2)
    return {
        "requests_per_s": round(ok / duration_s, 1),
        "duration_s": round(duration_s, 2),
        "non_2xx": raw["non_2xx"],
        "socket_errors": raw["socket_errors"],
        "latency_ms": {
            "p50": raw["p50_us"] / 1000,
            "p99": raw["p99_us"] / 1000,
            "max": raw["max_us"] / 1000,
        },
        "cpu": cpu,
    }


def server_labels(server: Server, pids: set[int]) -> tuple[dict[int, str], dict[int, str]]:
    """A label for each process of ``server`` (router, ingress-<n>), all in one group."""
    if server.name == "reference":
        labels = dict.fromkeys(pids, "reference")
    else:
        labels = {pid: process_label(pid) for pid in pids}
    return labels, dict.fromkeys(pids, "server")


def wait_drained(server: Server) -> None:
    """Wait until the gateway's file destination has delivered everything it received."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        metrics = gateway_metrics(server.url)
        if metrics.depth == 0 and metrics.delivered >= metrics.received:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the gateway's backlog did not drain within {DRAIN_TIMEOUT_S} s")


def open_loop(
    server: Server, load: Load, rate: float, code: str, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    """Drive ``server`` at ``rate`` requests/s (open loop) and measure the latencies."""
    workers = args.generators
    total_s = WARMUP_S + args.duration
    start_at = time.monotonic() + GENERATOR_START_S
    stamp = int(time.time()) % 10**8
    is_gateway = server.name == "gateway"
    received_before = settled_received(server) if is_gateway else 0.0
    procs: list[subprocess.Popen[bytes]] = []
    plans: list[GeneratorPlan] = []
    for k in range(workers):
        plan = GeneratorPlan(
            port=server.port,
            path=PATH,
            authorization=load.authorization,
            body_template=load.body_template,
            id_prefix=f"lat-{code}-{stamp:08d}-w{k}-",
            rate_per_s=rate / workers,
            offset_s=k / rate,
            start_at=start_at,
            requests=math.ceil((total_s - k / rate) * rate / workers),
            connections=args.connections // workers + (k < args.connections % workers),
            nice=args.generator_nice,
            out=str(tmp / f"gen-{code}-{k}"),
        )
        plan_path = tmp / f"gen-{code}-{k}.plan.json"
        plan_path.write_text(json.dumps(asdict(plan)), encoding="utf-8")
        argv = [sys.executable, str(Path(__file__).resolve()), "--generate", str(plan_path)]
        procs.append(subprocess.Popen(argv, cwd=REPO_DIR))
        plans.append(plan)
    print(
        f"  {server.name}: open loop at {rate:,.0f} req/s, {WARMUP_S} s warm-up + "
        f"{args.duration} s ({workers} generator processes, {args.connections} connections) ...",
        flush=True,
    )
    load_average = os.getloadavg()
    try:
        pids = server.pids() | {p.pid for p in procs}
        time.sleep(max(start_at + WARMUP_S - time.monotonic(), 0.0))
        before = CpuSnapshot.take(pids)
        time.sleep(max(start_at + total_s - time.monotonic(), 0.0))
        after = CpuSnapshot.take(pids)
        for proc in procs:
            proc.wait(timeout=ANSWER_TIMEOUT_S + 60)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if any(proc.returncode != 0 for proc in procs):
        raise RuntimeError(f"a generator failed: exit codes {[p.returncode for p in procs]}")
    labels, group = server_labels(server, server.pids())
    for k, proc in enumerate(procs):
        labels[proc.pid] = f"generator-{k}"
        group[proc.pid] = "generator"
    result = summarize_open_loop(plans, rate, args.duration)
    result["cpu"] = cpu_use(before, after, labels, group)
    result["load_average"] = [round(x, 2) for x in load_average]
    generator = result["generator"]
    generator["cores"] = result["cpu"].get("generator_cores", 0.0)
    if not server.alive():
        raise RuntimeError(f"{server.name} died during the run:\n{server.log()[-3000:]}")
    if is_gateway:
        # Those without an answer may have been stored all the same.
        acknowledged, unanswered = result["ok_all"], result["unanswered_all"]
        received = int(settled_received(server, received_before + acknowledged) - received_before)
        result["accounting"] = {
            "acknowledged_events": acknowledged,
            "received_events": received,
            "ok": acknowledged <= received <= acknowledged + unanswered,
        }
    return result


def settled_received(server: Server, at_least: float = 0.0) -> float:
    """The gateway's ``eventgate_events_received_total`` once it stops moving.

    The counter trails the answers a little (each ingress process keeps its own), so this reads
    it until it has reached ``at_least`` and held still for half a second (15 s at most).
    """
    previous = -1.0
    deadline = time.monotonic() + 15.0
    while True:
        received = gateway_metrics(server.url).received
        if (received >= at_least and received == previous) or time.monotonic() > deadline:
            return received
        previous = received
        time.sleep(0.5)


def summarize_open_loop(plans: list[GeneratorPlan], rate: float, duration_s: int) -> dict[str, Any]:
    """Rates, latencies, errors and the generators' lateness for the measured window."""
    window_start, window_end = float(WARMUP_S), float(WARMUP_S + duration_s)
    latencies: list[float] = []
    lateness: list[float] = []
    statuses: Counter[int] = Counter()
    waited = sent_in_window = answered_in_window = ok_all = unanswered_all = 0
    longest_wait = 0.0
    summaries = []
    for plan in plans:
        out = Path(plan.out)
        summaries.append(json.loads(out.with_suffix(".json").read_text(encoding="utf-8")))
        late, wait, latency, status = (array(code) for code in "dddH")
        for values, name in ((late, "lateness"), (wait, "wait"), (latency, "latency")):
            values.frombytes(out.with_suffix(f".{name}").read_bytes())
        status.frombytes(out.with_suffix(".status").read_bytes())
        interval = 1.0 / plan.rate_per_s
        for i in range(plan.requests):
            due = plan.offset_s + i * interval  # seconds after start_at
            ok_all += 200 <= status[i] < 300
            unanswered_all += status[i] < 100
            if status[i] >= 100:
                answered_at = due + latency[i]
                answered_in_window += window_start <= answered_at < window_end
                sent_at = due + late[i] + wait[i]
                sent_in_window += window_start <= sent_at < window_end
            if not window_start <= due < window_end:
                continue
            statuses[status[i]] += 1
            lateness.append(late[i])
            if wait[i] > 0:
                waited += 1
                longest_wait = max(longest_wait, wait[i])
            latencies.append(latency[i] if status[i] >= 100 else math.inf)
    scheduled = len(latencies)
    ok = sum(n for code, n in statuses.items() if 200 <= code < 300)
    late_ms = percentiles(lateness)
    kept_up = (late_ms["p99"] or 0.0) <= LATENESS_LIMIT_S * 1000 and all(
        s["ready_late_s"] < WARMUP_S for s in summaries
    )
    return {
        "rate_per_s": round(rate, 1),
        "scheduled": scheduled,
        "sent_per_s": round(sent_in_window / duration_s, 1),
        "answered_per_s": round(answered_in_window / duration_s, 1),
        "ok": ok,
        "non_2xx": sum(n for code, n in statuses.items() if code >= 100 and not 200 <= code < 300),
        "connection_lost": statuses[CONNECTION_LOST],
        "unanswered": statuses[NO_ANSWER],
        "statuses": {str(code): n for code, n in sorted(statuses.items())},
        "ok_all": ok_all,  # warm-up included
        "unanswered_all": unanswered_all,
        "latency_ms": percentiles(latencies),
        "generator": {
            "processes": len(plans),
            "connections": sum(p.connections for p in plans),
            "lateness_ms": late_ms,
            "kept_up": kept_up,
            "waited_for_connection": waited,
            "longest_connection_wait_ms": round(longest_wait * 1000, 3),
            "max_pending": max(s["max_pending"] for s in summaries),
            "reconnects": sum(s["reconnects"] for s in summaries),
            "nice": max(s["nice"] for s in summaries),
            "ready_late_s": max(s["ready_late_s"] for s in summaries),
        },
    }


def errors_of(run: dict[str, Any]) -> int:
    """Requests of an open-loop run that did not get a 2xx."""
    return int(run["non_2xx"] + run["connection_lost"] + run["unanswered"])


# -- the benchmark ------------------------------------------------------------------------------


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Measure the reference, then the gateway; return every figure."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (Debian package: wrk)")
    import aiohttp

    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": [Path(sys.executable).name, *sys.argv],
        "settings": {
            "duration_s": args.duration,
            "max_rate_duration_s": args.max_duration,
            "warmup_s": WARMUP_S,
            "connections": args.connections,
            "generators": args.generators,
            "generator_nice": args.generator_nice,
            "rate_override": args.rate,
            "path": PATH,
            "lateness_limit_ms": LATENESS_LIMIT_S * 1000,
        },
        "environment": {
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "aiohttp": aiohttp.__version__,
            "platform": platform.platform(),
            "gateway_commit": git_commit(),
        },
        "targets": {
            "p99_ms": TARGET_P99_S * 1000,
            "at_share_of_reference_max": TARGET_RATE_SHARE,
            "max_ratio": TARGET_MAX_RATIO,
        },
        "servers": {},
    }
    with tempfile.TemporaryDirectory(prefix="eventgate-latency-") as tmp_name:
        tmp = Path(tmp_name)
        now = datetime.now(UTC)
        stamp = now.strftime("%H%M%S")
        template = single_event_template(
            (now - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        )
        template_path = tmp / "single.json"
        template_path.write_text(template, encoding="utf-8")
        token = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
        load = Load(template_path, template, f"Basic {token}")
        script = tmp / "latency.lua"
        script.write_text(WRK_SCRIPT, encoding="utf-8")
        try:
            ref_port = free_port()
            reference = Server("reference", reference_argv(ref_port), ref_port, tmp)
            measure_server(
                results["servers"].setdefault("reference", {}),
                reference,
                load,
                args,
                tmp,
                wrk,
                script,
                stamp,
                target_rate=None,
            )
            target = results["servers"]["reference"]["target_rate_per_s"]
            gw_port = free_port()
            config = write_gateway_config(tmp, gw_port)
            gateway = Server("gateway", gateway_argv(config, gw_port, tmp / "data"), gw_port, tmp)
            measure_server(
                results["servers"].setdefault("gateway", {}),
                gateway,
                load,
                args,
                tmp,
                wrk,
                script,
                stamp,
                target_rate=target,
            )
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            results["error"] = f"{type(exc).__name__}: {exc}"
            print(f"benchmark failed: {results['error']}", file=sys.stderr)
    results["environment"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["verdicts"] = verdicts(results)
    return results


def measure_server(
    found: dict[str, Any],
    server: Server,
    load: Load,
    args: argparse.Namespace,
    tmp: Path,
    wrk: str,
    script: Path,
    stamp: str,
    target_rate: float | None,
) -> None:
    """Start ``server``, find its max rate, run the open-loop loads, stop it; fill in ``found``.

    ``target_rate``: the reference's target rate (``None`` while measuring the reference).
    """
    server.start()
    print(f"{server.name} on {server.url}", flush=True)
    try:
        found["max"] = max_rate(wrk, script, server, load, stamp, args)
        half = round(found["max"]["requests_per_s"] * TARGET_RATE_SHARE, 1)
        found["half_own_max_per_s"] = half
        if target_rate is None:
            target_rate = args.rate or half
            found["target_rate_per_s"] = target_rate
        runs = [("at_reference_half", target_rate)]
        if server.name == "gateway":
            runs.append(("at_own_half", args.rate_own or half))
        found["open_loop"] = {}
        for key, rate in runs:
            if server.name == "gateway":
                wait_drained(server)
            code = f"{server.name[0]}{len(found['open_loop'])}"
            found["open_loop"][key] = open_loop(server, load, rate, code, args, tmp)
            print_open_loop_line(server.name, key, found["open_loop"][key])
    finally:
        server.stop()
        found["exit_code"] = server.exit_code
        found["stderr"] = [
            line
            for line in server.log().splitlines()
            if line.strip() and not line.startswith("eventgate listening on")
        ][-50:]


def git_commit() -> str:
    """The repository's HEAD commit, or ``unknown``."""
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO_DIR), "rev-parse", "HEAD"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.decode().strip() or "unknown"


# -- verdicts and the printed report ------------------------------------------------------------


def verdicts(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The target (reported) and the checks (any failure makes the exit code 1)."""
    servers = results.get("servers", {})
    targets: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    reference = servers.get("reference", {})
    gateway = servers.get("gateway", {})
    run = gateway.get("open_loop", {}).get("at_reference_half")
    if run is not None:
        limit_ms = TARGET_P99_S * 1000
        p99 = run["latency_ms"]["p99"]
        late_max = run["generator"]["lateness_ms"]["max"] or 0.0
        sustained = run["answered_per_s"] >= 0.98 * run["rate_per_s"]
        met = p99 is not None and p99 < limit_ms and errors_of(run) == 0 and sustained
        source = "--rate" if results["settings"]["rate_override"] else "half the reference's"
        text = (
            f"gateway p99 {_with_ms(p99)} at {run['rate_per_s']:,.0f} req/s ({source} max of "
            f"{reference['max']['requests_per_s']:,.0f}), answered {run['answered_per_s']:,.0f}/s"
            f", {errors_of(run)} errors"
        )
        verdict = "MET" if met else "MISSED"
        if not run["generator"]["kept_up"]:
            # Lateness only adds to latencies: a pass stands; a miss the generator's own delay
            # could account for is no verdict.
            text += "; the generator fell behind, so these latencies are an upper bound"
            if not met and errors_of(run) == 0 and p99 is not None and p99 - late_max < limit_ms:
                verdict = "UNSURE"
        targets.append(
            {
                "name": f"p99 < {TARGET_P99_S * 1000:.0f} ms at half the reference's max rate",
                "verdict": verdict,
                "text": text,
            }
        )
    if "max" in reference and "max" in gateway:
        ratio = gateway["max"]["requests_per_s"] / reference["max"]["requests_per_s"]
        gateway["max_ratio"] = round(ratio, 3)
        targets.append(
            {
                "name": f"max single-event rate >= {TARGET_MAX_RATIO} x the reference's "
                "(short wrk runs; bench/ingest.py measures it properly)",
                "verdict": "MET" if ratio >= TARGET_MAX_RATIO else "MISSED",
                "text": f"{ratio:.2f} ({gateway['max']['requests_per_s']:,.0f} / "
                f"{reference['max']['requests_per_s']:,.0f} req/s)",
            }
        )
    for name, server in servers.items():
        for key, run in server.get("open_loop", {}).items():
            gen = run["generator"]
            late = gen["lateness_ms"]
            checks.append(
                {
                    "name": f"{name} {key}: every request answered 2xx",
                    "ok": errors_of(run) == 0,
                    "text": f"{run['scheduled']:,} requests, statuses {run['statuses']}",
                }
            )
            checks.append(
                {
                    "name": f"{name} {key}: the generator kept to its schedule",
                    "ok": gen["kept_up"],
                    "text": f"lateness p50 {_ms(late['p50'])} ms, p99 {_ms(late['p99'])} ms, "
                    f"max {_ms(late['max'])} ms (limit p99 {LATENESS_LIMIT_S * 1000:.0f} ms); "
                    f"sent {run['sent_per_s']:,.0f}/s of {run['rate_per_s']:,.0f}/s; "
                    f"generators used {gen['cores']:.2f} cores",
                }
            )
            acct = run.get("accounting")
            if acct is not None:
                checks.append(
                    {
                        "name": f"{name} {key}: received = 200s (warm-up included)",
                        "ok": acct["ok"],
                        "text": f"{acct['acknowledged_events']:,} answered 200; "
                        f"eventgate_events_received_total grew {acct['received_events']:,}",
                    }
                )
        if "exit_code" in server:
            checks.append(
                {
                    "name": f"{name} exits 0 on SIGTERM and its stderr stays quiet",
                    "ok": server["exit_code"] == 0 and not server["stderr"],
                    "text": f"exit code {server['exit_code']}, {len(server['stderr'])} stderr "
                    "line(s)"
                    + (f"; last: {server['stderr'][-1][:200]}" if server["stderr"] else ""),
                }
            )
    if "error" in results:
        checks.append({"name": "benchmark completed", "ok": False, "text": results["error"][:500]})
    return {"targets": targets, "checks": checks}


def _ms(value: float | None) -> str:
    """Milliseconds to print; ``None`` is a request never answered (``ANSWER_TIMEOUT_S``)."""
    return "timeout" if value is None else f"{value:,.1f}"


def _with_ms(value: float | None) -> str:
    return "timeout" if value is None else f"{value:,.1f} ms"


def print_open_loop_line(name: str, key: str, run: dict[str, Any]) -> None:
    """One line of progress after a run."""
    lat, late = run["latency_ms"], run["generator"]["lateness_ms"]
    print(
        f"    {name} {key}: p50 {_with_ms(lat['p50'])}, p99 {_with_ms(lat['p99'])}, max "
        f"{_with_ms(lat['max'])}; generator lateness p99 {_with_ms(late['p99'])}",
        flush=True,
    )


def print_report(results: dict[str, Any]) -> None:
    """The tables, the target and the checks, readable in a terminal."""
    settings, env = results["settings"], results["environment"]
    servers = results.get("servers", {})
    print()
    print(
        f"eventgate latency benchmark: one ~500 B track event per POST {settings['path']}, "
        f"{env['cpus']} cores; load average {fmt_load(env['load_average_at_start'])} at start, "
        f"{fmt_load(env['load_average_at_end'])} at end"
    )
    print(
        "NOTE: the generators (or wrk) and the server under test share this machine's cores, "
        "with whatever else runs on it; latencies on a busy machine are pessimistic."
    )
    print(
        f"\nmax rate: wrk -t2 -c{settings['connections']}, closed loop, "
        f"{settings['max_rate_duration_s']} s after a {settings['warmup_s']} s warm-up"
    )
    header = (
        f"{'server':<11}{'req/s':>10}{'half':>9}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}"
        f"{'cores: srv':>11}{'wrk':>6}{'other':>7}"
    )
    print(header)
    print("-" * len(header))
    for name, server in servers.items():
        found = server.get("max")
        if found is None:
            continue
        cpu = found["cpu"]
        print(
            f"{name:<11}{found['requests_per_s']:>10,.0f}{server['half_own_max_per_s']:>9,.0f}"
            f"{found['latency_ms']['p50']:>9.1f}{found['latency_ms']['p99']:>9.1f}"
            f"{found['non_2xx'] + found['socket_errors']:>9,}{cpu.get('server_cores', 0):>11.2f}"
            f"{cpu['wrk_cores']:>6.2f}{cpu['other_cores']:>7.2f}"
        )
    target = servers.get("reference", {}).get("target_rate_per_s")
    if target is not None:
        gateway_half = servers.get("gateway", {}).get("half_own_max_per_s")
        source = "--rate" if settings["rate_override"] else "half the reference's max"
        print(
            f"\ntarget rate: {target:,.0f} req/s ({source}); half the gateway's own max: "
            + (f"{gateway_half:,.0f} req/s" if gateway_half is not None else "-")
        )
    print(
        f"\nopen loop: constant rate, latency from each request's due time; "
        f"{settings['duration_s']} s after a {settings['warmup_s']} s warm-up, "
        f"{settings['generators']} generator processes (nice {settings['generator_nice']}), "
        f"{settings['connections']} connections"
    )
    header = (
        f"{'server':<11}{'at':<15}{'req/s':>8}{'answered':>10}{'p50 ms':>9}{'p90':>9}{'p99':>9}"
        f"{'p99.9':>9}{'max':>9}{'errors':>8}{'late p99/max ms':>17}{'waited':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, server in servers.items():
        for key, run in server.get("open_loop", {}).items():
            lat, gen = run["latency_ms"], run["generator"]
            late = f"{_ms(gen['lateness_ms']['p99'])}/{_ms(gen['lateness_ms']['max'])}"
            print(
                f"{name:<11}{key.removeprefix('at_'):<15}{run['rate_per_s']:>8,.0f}"
                f"{run['answered_per_s']:>10,.0f}{_ms(lat['p50']):>9}{_ms(lat['p90']):>9}"
                f"{_ms(lat['p99']):>9}{_ms(lat['p99.9']):>9}{_ms(lat['max']):>9}"
                f"{errors_of(run):>8,}{late:>17}{gen['waited_for_connection']:>8,}"
            )
    print(
        "req/s: the rate requests were due at; answered: answers per second during the window; "
        "latency from each request's due time\n(timeout: never answered, "
        f"{ANSWER_TIMEOUT_S:.0f} s after the last was due); late: the generator's lateness; "
        "waited: requests due while every connection was busy"
    )
    print("\nCPU during the open-loop runs (cores)")
    for name, server in servers.items():
        for key, run in server.get("open_loop", {}).items():
            cpu = run["cpu"]
            procs = ", ".join(
                f"{label} {cores:.2f}" for label, cores in cpu["per_process_cores"].items()
            )
            print(
                f"  {name} {key}: {procs}; other {cpu['other_cores']:.2f} "
                f"(machine {cpu['machine_busy_cores']:.2f}); load average before "
                f"{fmt_load(run['load_average'])}"
            )
            if cpu["other_cores"] > OTHER_CORES_LIMIT:
                print("    WARNING: other processes used the CPU during this run")
    verdict = results["verdicts"]
    print("\nTargets")
    for t in verdict["targets"]:
        print(f"  [{t['verdict']:<6}] {t['name']}: {t['text']}")
    print("\nChecks")
    for c in verdict["checks"]:
        print(f"  [{'ok' if c['ok'] else 'FAIL':<4}] {c['name']}: {c['text']}")


def fmt_load(values: list[float]) -> str:
    """A load average triple as ``uptime`` prints it."""
    return ", ".join(f"{v:.2f}" for v in values)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per open-loop run")
    parser.add_argument(
        "--max-duration", type=int, default=5, help="seconds of the closed-loop max-rate run"
    )
    parser.add_argument(
        "--connections", type=int, default=64, help="connections (wrk, and open loop in all)"
    )
    parser.add_argument(
        "--rate", type=float, help="target requests/s (default: half the reference's max)"
    )
    parser.add_argument(
        "--rate-own", type=float, help="the gateway's second run (default: half its own max)"
    )
    parser.add_argument(
        "--generators", type=int, default=2, help="open-loop generator processes (default 2)"
    )
    parser.add_argument(
        "--generator-nice",
        type=int,
        default=-10,
        help="the generators' niceness (default -10, needs root; 0: leave it)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON file")
    parser.add_argument("--generate", type=Path, metavar="PLAN", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.duration < 1 or args.max_duration < 1:
        parser.error("--duration and --max-duration must be >= 1")
    if args.generators < 1 or args.connections < max(2, args.generators):
        parser.error("--generators must be >= 1 and --connections >= 2 and >= --generators")
    if (args.rate is not None and args.rate <= 0) or (
        args.rate_own is not None and args.rate_own <= 0
    ):
        parser.error("--rate and --rate-own must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every check passed (the target is reported, not enforced)."""
    args = parse_args(argv)
    if args.generate is not None:
        generate(args.generate)
        return 0
    try:
        results = benchmark(args)
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
