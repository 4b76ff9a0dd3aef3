"""Fixtures for the console's whole-process tests: a real gateway with an admin token, a webhook
receiver that refuses what it is told to, and headless Chromium (skipped when absent)."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import Gateway

ADMIN_TOKEN = "console-e2e-admin-token"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"


class Receiver:
    """A webhook endpoint on 127.0.0.1: 400 for events named ``Refused`` until ``accept_all``."""

    def __init__(self) -> None:
        self.accept_all = False
        self.received: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                message = json.loads(body)
                refused = message.get("event") == "Refused" and not receiver.accept_all
                if not refused:
                    receiver.received.append(message)
                answer = b'{"error": "Refused events are not welcome"}' if refused else b"{}"
                self.send_response(400 if refused else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(name="receiver", scope="module")
def _receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture(name="console_gateway", scope="module")
def _console_gateway(
    tmp_path_factory: pytest.TempPathFactory, receiver: Receiver
) -> Iterator[Gateway]:
    """`eventgate serve` with two ingress processes, an admin token, files and a webhook."""
    root = tmp_path_factory.mktemp("console")
    gateway = Gateway(
        root,
        destinations=[
            {
                "name": "files",
                "type": "file",
                "batch": {"max_events": 500, "max_age_s": 0.05},
                "settings": {"directory": str(root / "files")},
            },
            {
                "name": "hook",
                "type": "webhook",
                "batch": {"max_events": 10, "max_age_s": 0.05},
                "settings": {
                    "url": receiver.url,
                    "secrets": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
                },
            },
        ],
        ingress_processes=2,
    )
    config = yaml.safe_load(gateway.config_path.read_text())
    config["server"]["admin_token"] = ADMIN_TOKEN
    gateway.config_path.write_text(yaml.safe_dump(config))
    gateway.start()
    yield gateway
    if gateway.process is not None and gateway.process.poll() is None:
        gateway.terminate()


def chromium_path() -> str | None:
    """Debian's Chromium, if installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(name="browser", scope="module")
def _browser() -> Iterator[Any]:
    """Headless Chromium driven by Playwright (the system's browser, never a downloaded one)."""
    executable = chromium_path()
    if executable is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); .ci/run installs it")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield browser
        browser.close()


@pytest.fixture(name="page")
def _page(browser: Any, console_gateway: Gateway) -> Iterator[Any]:
    """A signed-in console page; console errors and page errors are collected in ``errors``."""
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    page.goto(f"{console_gateway.url}/console/")
    page.get_by_test_id("token").fill(ADMIN_TOKEN)
    page.get_by_test_id("sign-in").click()
    page.wait_for_selector("text=Pipeline health")
    yield page
    context.close()


def screenshot(page: Any, name: str) -> None:
    """Save a screenshot of the whole page under test-artifacts/console/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
