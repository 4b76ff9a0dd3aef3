"""Process lifecycle: graceful SIGTERM, and a third-party plugin loaded by its entry point."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import orjson

from tests.conftest import WRITE_KEY, basic
from tests.e2e.conftest import Gateway


def post_batch(gateway: Gateway, ids: list[str]) -> int:
    """POST one /v1/batch of track events with these messageIds; return the status."""
    return post_body(
        gateway,
        orjson.dumps(
            {"batch": [{"type": "track", "userId": "u", "event": "E", "messageId": m} for m in ids]}
        ),
    )


def post_body(gateway: Gateway, body: bytes) -> int:
    """POST a ready /v1/batch body with the standard library; return the status."""
    request = urllib.request.Request(
        f"{gateway.url}/v1/batch", data=body, headers=basic(WRITE_KEY), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        status: int = response.status
        return status


def test_sigterm_flushes_and_exits_cleanly(gateway: Gateway) -> None:
    """SIGTERM finishes delivery of what was accepted and exits 0; a restart repeats nothing."""
    ids = [f"term-{i}" for i in range(300)]
    assert post_batch(gateway, ids) == 200
    assert gateway.terminate() == 0
    assert {m["messageId"] for m in gateway.file_messages()} >= set(ids)
    gateway.start()
    assert post_batch(gateway, ["after-restart"]) == 200
    messages = gateway.wait_for_files({"after-restart"})
    assert len(messages) == len(ids) + 1


def test_example_plugin_delivers_through_its_entry_point(tmp_path: Path) -> None:
    """The example package, found through the `eventgate` entry point, receives events."""
    database = tmp_path / "example.db"
    gateway = Gateway(
        tmp_path,
        destinations=[
            {
                "name": "example",
                "type": "example_sqlite",
                "batch": {"max_events": 100, "max_age_s": 0.05},
                "settings": {"path": str(database)},
            }
        ],
    )
    gateway.start()
    try:
        assert post_batch(gateway, ["ex-1", "ex-2"]) == 200
        assert gateway.terminate() == 0
    finally:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.kill()
    with sqlite3.connect(database) as conn:
        rows = conn.execute("SELECT message_id, source FROM events ORDER BY message_id").fetchall()
    assert rows == [("ex-1", "web"), ("ex-2", "web")]


def test_single_process_mode(tmp_path: Path) -> None:
    """ingress_processes: 0 serves ingress and delivery from one process, shard 0 only."""
    gateway = Gateway(tmp_path, ingress_processes=0)
    gateway.start()
    try:
        assert post_batch(gateway, ["one-1", "one-2"]) == 200
        gateway.wait_for_files({"one-1", "one-2"})
        assert gateway.terminate() == 0
    finally:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.kill()
    assert sorted(p.name for p in (tmp_path / "data").glob("events-*.db")) == ["events-0.db"]


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    """A port another program listens on gives a one-line error and exit code 1."""
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        gateway = Gateway(tmp_path)
        command = [sys.executable, "-m", "gateway", "serve", "--config", str(gateway.config_path)]
        completed = subprocess.run(
            [*command, "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert completed.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in completed.stderr


def test_retried_requests_are_stored_once_across_processes(gateway: Gateway) -> None:
    """The same batch sent again on new connections (which land on either ingress process) is
    acknowledged each time and delivered once."""
    ids = [f"retry-{i}" for i in range(20)]
    for _ in range(6):
        assert post_batch(gateway, ids) == 200
    messages = gateway.wait_for_files(set(ids))
    assert sorted(m["messageId"] for m in messages) == sorted(ids)
