"""Helpers shared by the benchmarks that put the gateway beside ``bench/ingest.py``'s reference.

They mirror ``bench/ingest.py`` (the same ~500 B track event, the same one-source, one-file-
destination config, the same way of starting a server and reading its CPU time from /proc) so a
benchmark can use them without importing ingest.py itself. The reference server is not copied:
:func:`reference_argv` runs ingest.py's own (``--serve-reference``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BENCH_DIR",
    "DESTINATION",
    "ID_PLACEHOLDER",
    "REPO_DIR",
    "WRITE_KEY",
    "GatewayMetrics",
    "Server",
    "free_port",
    "gateway_argv",
    "gateway_metrics",
    "machine_busy_s",
    "process_cpu_s",
    "process_label",
    "reference_argv",
    "single_event_template",
    "write_gateway_config",
]

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent

# The same names and sizes as bench/ingest.py's.
WRITE_KEY = "bench-write-key"
SOURCE = "bench"
DESTINATION = "files"
EVENT_BYTES = 500
ID_PLACEHOLDER = "@@ID@@"
ID_BYTES = 32  # what replaces the placeholder; the event is padded so the whole is EVENT_BYTES
SHUTDOWN_TIMEOUT_S = 20.0


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def single_event_template(timestamp: str) -> str:
    """bench/ingest.py's ``/v1/track`` body: one ~500 B track event, messageId a placeholder.

    The placeholder is to be replaced by an id of ``ID_BYTES`` characters, unique per request.
    """
    event: dict[str, Any] = {
        "type": "track",
        "userId": "user-00000",
        "event": "Order Completed",
        "properties": {
            "orderId": "order-000000",
            "revenue": 42.5,
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
        "messageId": ID_PLACEHOLDER,
    }
    sent = len(_compact(event)) - len(ID_PLACEHOLDER) + ID_BYTES
    event["properties"]["note"] = "x" * max(EVENT_BYTES - sent, 0)
    return _compact(event)


def write_gateway_config(tmp: Path, port: int) -> Path:
    """bench/ingest.py's gateway config: one source, the ``file`` destination, under ``tmp``."""
    config = {
        "server": {"host": "127.0.0.1", "port": port},
        "storage": {"data_dir": str(tmp / "data")},
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


def gateway_argv(config: Path, port: int, data_dir: Path) -> list[str]:
    """``eventgate serve --log-level warning`` with ``config``: the console script beside Python."""
    script = Path(sys.executable).with_name("eventgate")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]
    serve = ["serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    return [*base, *serve, "--data-dir", str(data_dir), "--log-level", "warning"]


def reference_argv(port: int) -> list[str]:
    """bench/ingest.py's bare aiohttp reference server (aiohttp's default asyncio loop)."""
    ingest = BENCH_DIR / "ingest.py"
    return [sys.executable, str(ingest), "--serve-reference", str(port)]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _http_get(url: str, timeout_s: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        body: bytes = response.read()
        return body


# -- CPU time from /proc ------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def process_cpu_s(pids: set[int]) -> dict[int, float]:
    """User plus system CPU seconds (all threads) each process in ``pids`` has used so far."""
    hz = os.sysconf("SC_CLK_TCK")
    used = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            used[pid] = (int(fields[11]) + int(fields[12])) / hz
    return used


def process_label(pid: int) -> str:
    """A short name for a gateway process: ``ingress-<n>``, ``router``, else its executable's."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"pid {pid}"
    if b"--ingress-shard" in argv:
        return f"ingress-{argv[argv.index(b'--ingress-shard') + 1].decode()}"
    if b"serve" in argv:
        return "router"
    return Path(argv[0].decode(errors="replace")).name or f"pid {pid}"


def machine_busy_s() -> float:
    """CPU seconds every core has spent busy (not idle or waiting for I/O) since boot."""
    try:
        fields = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


# -- servers ------------------------------------------------------------------------------------


class Server:
    """A server subprocess with its output in a file, ready once ``GET /health`` answers."""

    def __init__(self, name: str, argv: list[str], port: int, tmp: Path) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = tmp / f"{name}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the process and poll ``GET /health`` until it answers 200.

        Raises ``RuntimeError`` when the process exits or does not answer in time.
        """
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=REPO_DIR
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                _http_get(f"{self.url}/health", timeout_s=1.0)
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
            fields = _stat_fields(int(stat.parent.name))
            if fields is not None:
                parents[int(stat.parent.name)] = int(fields[1])
        found = {self.proc.pid}
        grew = True
        while grew:
            new = {pid for pid, parent in parents.items() if parent in found} - found
            found |= new
            grew = bool(new)
        return found

    def stop(self) -> int | None:
        """SIGTERM (a graceful shutdown), SIGKILL if it takes too long; return the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
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
class GatewayMetrics:
    """The gateway counters a benchmark waits on (summed over sources and destinations)."""

    received: float
    delivered: float
    depth: float
    delivery_failures: float
    dead_lettered: float


def gateway_metrics(url: str) -> GatewayMetrics:
    """Read the gateway's ``/metrics`` (raises ``OSError`` when it does not answer)."""
    from prometheus_client.parser import text_string_to_metric_families

    totals = dict.fromkeys(
        (
            "eventgate_events_received_total",
            "eventgate_events_delivered_total",
            "eventgate_queue_depth",
            "eventgate_delivery_failures_total",
            "eventgate_events_dead_lettered_total",
        ),
        0.0,
    )
    for family in text_string_to_metric_families(_http_get(f"{url}/metrics").decode()):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return GatewayMetrics(
        received=totals["eventgate_events_received_total"],
        delivered=totals["eventgate_events_delivered_total"],
        depth=totals["eventgate_queue_depth"],
        delivery_failures=totals["eventgate_delivery_failures_total"],
        dead_lettered=totals["eventgate_events_dead_lettered_total"],
    )
