"""Tests for gateway/cli.py: check, plugins and send."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient

from gateway.cli import main
from tests.conftest import WRITE_KEY, config_data

ROOT = Path(__file__).parent.parent


def test_check_accepts_the_default_config(capsys: pytest.CaptureFixture[str]) -> None:
    """`eventgate check config/gateway.yaml` exits 0 and says ok."""
    assert main(["check", str(ROOT / "config" / "gateway.yaml")]) == 0
    assert ": ok (1 source(s), 2 destination(s))" in capsys.readouterr().out


def test_check_accepts_the_cluster_example(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`eventgate check config/cluster.yaml` (docs/deployment.md's example) passes once its
    secrets are in the environment."""
    for name, value in {
        "EVENTGATE_ADMIN_TOKEN": "a-long-admin-token",
        "EVENTGATE_WRITE_KEY": "wk",
        "EVENTGATE_WEBHOOK_URL": "https://hooks.example.com/in",
        "EVENTGATE_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    }.items():
        monkeypatch.setenv(name, value)
    assert main(["check", str(ROOT / "config" / "cluster.yaml")]) == 0
    assert ": ok (1 source(s), 1 destination(s))" in capsys.readouterr().out


def test_check_prints_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`eventgate check` prints each problem with file and key path and exits non-zero."""
    data = config_data(tmp_path)
    data["server"]["port"] = "x"
    data["destinations"][0]["type"] = "nope"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: server.port: Input should be a valid integer" in err
    assert "unknown destination type 'nope'" in err


def test_serve_refuses_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`eventgate serve` with a bad config prints the same problems and starts nothing."""
    path = tmp_path / "bad.yaml"
    path.write_text("sources: []\n")
    assert main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: sources: List should have at least 1 item" in err
    assert "nothing was started" in err


def test_plugins_lists_types_with_settings(capsys: pytest.CaptureFixture[str]) -> None:
    """`eventgate plugins` lists the file destination and its settings."""
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "file  (File; plugin destinations.file)" in out
    assert "    directory: string (required)" in out


async def test_send_posts_one_event(client: TestClient[Any, Any]) -> None:
    """`eventgate send` posts a test event to a running gateway and reports 200."""
    import asyncio

    url = str(client.make_url("")).rstrip("/")
    argv = ["send", "--url", url, "--write-key", WRITE_KEY, "--event", "CLI Test"]
    assert await asyncio.to_thread(main, argv) == 0
    from tests.test_ingress_segment import stored

    [message] = await stored(client)
    assert message["event"] == "CLI Test"


def test_event_loop_choice() -> None:
    """server.event_loop picks uvloop (installed here) or asyncio's own loop for a process."""
    script = (
        "import asyncio, sys\n"
        "from gateway.supervisor import use_event_loop\n"
        "print(use_event_loop(sys.argv[1]), type(asyncio.new_event_loop()).__module__)\n"
    )
    for choice, expected in (("auto", "uvloop uvloop"), ("asyncio", "asyncio asyncio.unix_events")):
        done = subprocess.run(
            [sys.executable, "-c", script, choice], capture_output=True, text=True, check=True
        )
        assert done.stdout.split() == expected.split()
