"""``eventgate serve``: a router process that supervises ingress processes sharing one socket.

Python runs one core per process, so the gateway is several processes over the same SQLite log:

- the **router** (this process): opens the log, initializes destination cursors, binds the
  listening socket, starts the ingress processes, delivers to destinations, compacts the log,
  restarts an ingress process that dies, and on SIGTERM/SIGINT shuts everything down in order;
- **ingress** processes (``server.ingress_processes``, default one per CPU): each listens on
  the port with ``SO_REUSEPORT`` (the kernel spreads connections evenly over them) and
  group-commits what it accepts to its own log shard (``events-<n>.db``), so ingress processes
  never wait for each other's fsync. The router holds the port bound, without listening, so a
  second gateway cannot take it, and reads every shard.

Each ingress process dies with the router (``PR_SET_PDEATHSIG``), so a ``kill -9`` of the router
leaves nothing behind. Metrics from every process are summed through prometheus-client's
multiprocess mode. ``ingress_processes: 0`` runs everything in this one process instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pluggy
import structlog
from aiohttp import web
from prometheus_client import multiprocess

from gateway.app import SERVER_OPTIONS, create_app
from gateway.cluster import LeasedDelivery, jetstream_storage
from gateway.config import GatewayConfig
from gateway.errors import StorageUnavailableError
from gateway.log.sqlite import SqliteEventLog, shards_in
from gateway.metrics import Metrics, enable_multiprocess_metrics
from gateway.router import Router

__all__ = ["become_ingress_process", "ingress_process_count", "serve"]

log = structlog.get_logger("eventgate.supervisor")

_BIND_RETRY_S = 5.0
_RESPAWN_DELAY_S = 1.0
_PR_SET_PDEATHSIG = 1
_METRICS_PREFIX = "eventgate-metrics-"
# Connections the kernel queues per listening socket before the gateway accepts them (capped
# by net.core.somaxconn); a burst of new clients beyond it waits for SYN retransmits.
_BACKLOG = 1024


def use_event_loop(choice: str) -> str:
    """Make new event loops of this process ``uvloop`` or ``asyncio`` ones; return which.

    ``auto`` picks uvloop when it can be imported. Called before the process's loop starts.
    """
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: PLC0415 - optional: absent on Windows
    except ImportError:
        if choice == "uvloop":
            raise
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def ingress_process_count(config: GatewayConfig) -> int:
    """How many ingress processes ``server.ingress_processes`` asks for (0 = one process)."""
    wanted = config.server.ingress_processes
    return max(1, os.cpu_count() or 1) if wanted == "auto" else wanted


def serve(
    config: GatewayConfig,
    plugin_manager: pluggy.PluginManager,
    child_argv: Sequence[str],
    announce: str,
) -> int:
    """Run the gateway until SIGTERM or SIGINT; return the exit code.

    ``child_argv`` is the ``eventgate serve ...`` command line an ingress process is started
    with (config path and overrides); ``announce`` is printed once the socket listens.
    """
    count = ingress_process_count(config)
    _raise_open_files_limit()
    use_event_loop(config.server.event_loop)
    if count == 0:
        app = create_app(config, plugin_manager=plugin_manager)
        web.run_app(
            app,
            host=config.server.host,
            port=config.server.port,
            shutdown_timeout=config.server.shutdown_grace_s,
            keepalive_timeout=config.server.keepalive_timeout_s,
            backlog=_BACKLOG,
            access_log=None,
            print=lambda _: print(announce, file=sys.stderr, flush=True),
            **SERVER_OPTIONS,  # type: ignore[arg-type]
        )
        return 0
    metrics_dir = _metrics_dir()
    enable_multiprocess_metrics(metrics_dir)
    try:
        sock = _reserve(config.server.host, config.server.port)
    except OSError as exc:
        where = f"{config.server.host}:{config.server.port}"
        print(f"eventgate: cannot listen on {where}: {exc.strerror}", file=sys.stderr)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        return 1
    try:
        port = str(sock.getsockname()[1])
        command = [*child_argv, "--ingress-port", port, "--parent-pid", str(os.getpid())]
        ingress = _IngressProcesses(command, count, metrics_dir)
        return asyncio.run(_supervise(config, plugin_manager, ingress, announce))
    finally:
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def become_ingress_process(
    config: GatewayConfig,
    plugin_manager: pluggy.PluginManager,
    port: int,
    shard: int,
    parent_pid: int,
) -> int:
    """Serve ingress on ``port`` into log shard ``shard`` until SIGTERM."""
    _die_with_parent(parent_pid)
    structlog.contextvars.bind_contextvars(process=f"ingress-{shard}", pid=os.getpid())
    metrics_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    enable_multiprocess_metrics(metrics_dir)
    app = create_app(
        config,
        plugin_manager=plugin_manager,
        with_router=False,
        metrics=Metrics(metrics_dir),
        shard=shard,
    )
    sock = socket.create_server((config.server.host, port), backlog=_BACKLOG, reuse_port=True)
    use_event_loop(config.server.event_loop)
    web.run_app(
        app,
        sock=sock,
        shutdown_timeout=config.server.shutdown_grace_s,
        keepalive_timeout=config.server.keepalive_timeout_s,
        # The loop listens on ``sock`` again, with this backlog (aiohttp's default is 128).
        backlog=_BACKLOG,
        access_log=None,
        print=None,
        **SERVER_OPTIONS,  # type: ignore[arg-type]
    )
    return 0


class _IngressProcesses:
    """The ingress processes: started on the shared port, restarted when one dies."""

    def __init__(self, command: Sequence[str], count: int, metrics_dir: Path) -> None:
        self.command = list(command)
        self.count = count
        self.metrics_dir = metrics_dir
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        self.children = [self._spawn(shard) for shard in range(self.count)]

    def restart_dead(self) -> None:
        for i, child in enumerate(self.children):
            code = child.poll()
            if code is not None:
                log.error("supervisor.ingress_died", pid=child.pid, exit_code=code)
                multiprocess.mark_process_dead(child.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
                self.children[i] = self._spawn(i)

    def stop(self, grace_s: float) -> None:
        """SIGTERM every ingress process; they finish in-flight requests and commit, then exit."""
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s + 5
        for child in self.children:
            try:
                child.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.error("supervisor.ingress_killed", pid=child.pid)
                child.kill()
                child.wait()

    def _spawn(self, shard: int) -> subprocess.Popen[bytes]:
        # The command is our own interpreter and arguments, never user input.
        return subprocess.Popen([*self.command, "--ingress-shard", str(shard)])  # noqa: S603


async def _supervise(
    config: GatewayConfig,
    plugin_manager: pluggy.PluginManager,
    ingress: _IngressProcesses,
    announce: str,
) -> int:
    structlog.contextvars.bind_contextvars(process="router", pid=os.getpid())
    metrics = Metrics(ingress.metrics_dir)
    logs: list[SqliteEventLog] = []
    delivery: LeasedDelivery | None = None
    if config.storage.backend == "jetstream":
        partitions = config.storage.jetstream.partitions
        router = Router(config, [], metrics, plugin_manager, shard_count=partitions)
        delivery = LeasedDelivery(router, jetstream_storage(config))
    else:
        logs = _sqlite_shards(config, ingress.count)
        for event_log in logs:
            await event_log.open()
        router = Router(config, logs, metrics, plugin_manager)
    # Cursors of new destinations are saved here, before any ingress process accepts an event.
    await router.start(deliver=delivery is None)
    if delivery is not None:
        try:
            await delivery.start()
        except StorageUnavailableError as exc:
            print(f"eventgate: {exc}", file=sys.stderr)
            await router.stop(0)
            return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    ingress.start()
    print(announce, file=sys.stderr, flush=True)
    log.info("supervisor.started", ingress_processes=ingress.count)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _RESPAWN_DELAY_S)
            if not stop.is_set():
                ingress.restart_dead()
    finally:
        grace_s = config.server.shutdown_grace_s
        await asyncio.to_thread(ingress.stop, grace_s)
        if delivery is not None:
            await delivery.stop()
        await router.stop(grace_s)
        for event_log in logs:
            await event_log.close()
    log.info("supervisor.stopped")
    return 0


def _raise_open_files_limit() -> None:
    """Raise the soft limit of open files to the hard limit; ingress processes inherit it.

    Every client connection is a file descriptor: the usual soft default of 1,024 would refuse
    clients (``EMFILE``) long before memory or CPU runs out.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):  # e.g. macOS refuses "infinity"
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _metrics_dir() -> Path:
    """A new directory for this run's multiprocess metric files, off the data disk.

    prometheus-client keeps each process's values in sparse files mapped into memory; touching
    a page that has no block behind it on a full file system kills the process with SIGBUS.
    Metrics live only as long as the processes, so they go to a RAM-backed ``/dev/shm`` where
    there is one (else the temp dir), never beside the event log, whose disk may fill up.
    Directories left by routers that died are removed.
    """
    shm = Path("/dev/shm")  # noqa: S108 - a private directory made with mkdtemp below
    parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    for stale in parent.glob(f"{_METRICS_PREFIX}*-*"):
        pid = stale.name.removeprefix(_METRICS_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{_METRICS_PREFIX}{os.getpid()}-", dir=parent))


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (in this PID namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sqlite_shards(config: GatewayConfig, processes: int) -> list[SqliteEventLog]:
    """Every shard an ingress process will write, and any left by a run with more processes."""
    data_dir = config.storage.data_dir
    shards = sorted(set(range(processes)) | set(shards_in(data_dir)))
    quota = int(config.storage.disk_quota_mb * 1024 * 1024)
    window = config.storage.dedup_window_s
    return [
        SqliteEventLog(data_dir, disk_quota_bytes=quota, shard=n, dedup_window_s=window)
        for n in shards
    ]


def _reserve(host: str, port: int) -> socket.socket:
    """Bind (without listening) the port the ingress processes will share with SO_REUSEPORT.

    A bound socket that does not listen receives no connections, but keeps the port ours; it
    also turns port 0 into a concrete port. Retries briefly while a dying old process holds it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + _BIND_RETRY_S
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
        else:
            return sock


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when the router dies; exit if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)
