"""Whole-process fixtures: the real `eventgate serve` in a subprocess on a free port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import API_KEY, WRITE_KEY

# EVENTGATE_TEST_LOG_LEVEL=info keeps the gateways' info logs (in <tmp>/gateway-<n>.log).
_LOG_LEVEL = os.environ.get("EVENTGATE_TEST_LOG_LEVEL", "warning")


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Gateway:
    """One `eventgate serve` process and the directories it writes."""

    def __init__(
        self,
        root: Path,
        destinations: list[dict[str, Any]] | None = None,
        ingress_processes: int | str = "auto",
        storage: dict[str, Any] | None = None,
    ) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.files = root / "files"
        self.config_path = root / "gateway.yaml"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.env: dict[str, str] = {}
        """Extra environment of the next start (failpoints, for instance)."""
        config = {
            "server": {
                "host": "127.0.0.1",
                "port": self.port,
                "shutdown_grace_s": 5,
                "ingress_processes": ingress_processes,
            },
            "storage": {"data_dir": str(root / "data"), **(storage or {})},
            "sources": [{"name": "web", "write_keys": [WRITE_KEY], "api_keys": [API_KEY]}],
            "destinations": destinations
            or [
                {
                    "name": "files",
                    "type": "file",
                    "batch": {"max_events": 500, "max_age_s": 0.05},
                    "settings": {"directory": str(self.files)},
                }
            ],
        }
        self.config_path.write_text(yaml.safe_dump(config))

    def start(self) -> None:
        """Start the process and wait until it answers /health."""
        self.starts += 1
        with (self.root / f"gateway-{self.starts}.log").open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "EVENTGATE_LOG_LEVEL": _LOG_LEVEL, **self.env},
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"the gateway did not start:\n{self.output()}")

    def kill(self) -> None:
        """kill -9: no cleanup of any kind.

        Returns once the ingress processes died too (the kernel kills them with the router), so
        the next start cannot be answered by one of them while the new router starts.
        """
        assert self.process is not None
        children = _children(self.process.pid)
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in children):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)

    def terminate(self) -> int:
        """SIGTERM, wait for the graceful shutdown, return the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def output(self) -> str:
        """Everything every run of the process printed."""
        return "\n".join(p.read_text() for p in sorted(self.root.glob("gateway-*.log")))

    def file_messages(self) -> list[dict[str, Any]]:
        """Every message the file destination wrote (each line must parse)."""
        return [
            json.loads(line)
            for path in sorted(self.files.rglob("*.jsonl"))
            for line in path.read_bytes().splitlines()
        ]

    def wait_for_files(self, message_ids: set[str], timeout_s: float = 30) -> list[dict[str, Any]]:
        """Wait until every id in ``message_ids`` is in the files; return all messages."""
        deadline = time.monotonic() + timeout_s
        while True:
            messages = self.file_messages()
            missing = message_ids - {m["messageId"] for m in messages}
            if not missing:
                return messages
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(missing)} ids never reached the files, e.g. {missing}")
            time.sleep(0.1)


@pytest.fixture(name="gateway")
def _gateway(tmp_path: Path) -> Iterator[Gateway]:
    gateway = Gateway(tmp_path)
    gateway.start()
    yield gateway
    if gateway.process is not None and gateway.process.poll() is None:
        gateway.kill()


def _children(pid: int) -> list[int]:
    """The process ids of ``pid``'s children (Linux ``/proc``; empty elsewhere)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found.extend(int(p) for p in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status
