"""The console in a real browser: headless Chromium against a running `eventgate serve`.

Screenshots of every page go to test-artifacts/console/ (gitignored), for people and the docs.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest

from tests.conftest import WRITE_KEY, basic
from tests.console.conftest import ADMIN_TOKEN, Receiver, screenshot
from tests.e2e.conftest import Gateway


def send(gateway: Gateway, message: dict[str, Any]) -> None:
    """POST one event to the gateway's /v1/track."""
    request = urllib.request.Request(
        f"{gateway.url}/v1/track",
        data=json.dumps(message).encode(),
        headers={**basic(WRITE_KEY), "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def send_invalid(gateway: Gateway) -> None:
    """POST an event the gateway refuses (no userId or anonymousId)."""
    request = urllib.request.Request(
        f"{gateway.url}/v1/track", data=b'{"event": "Anonymous"}', headers=basic(WRITE_KEY)
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    refused.value.close()
    assert refused.value.code == 400


def admin(gateway: Gateway, path: str) -> Any:
    """GET an admin API route as JSON."""
    request = urllib.request.Request(
        gateway.url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_for(check: Any, timeout_s: float = 30) -> Any:
    """Poll ``check`` until it returns something truthy (or fail after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("the condition never held")


def test_every_page_loads_without_errors(page: Any, console_gateway: Gateway) -> None:
    """Each console page renders its content with no console or page errors."""
    for number in range(12):
        send(
            console_gateway,
            {"event": ["Signed Up", "Order Completed"][number % 2], "userId": f"u{number % 5}"},
        )
    send(console_gateway, {"type": "track", "userId": "u1", "event": "Refused"})
    send_invalid(console_gateway)
    # The statistics are written every few seconds: wait for them, so the pages show data.
    wait_for(lambda: admin(console_gateway, "/api/overview")["totals"]["24h"]["received"] >= 13)
    wait_for(lambda: admin(console_gateway, "/api/destinations/hook/delivery")["errorSamples"])
    pages = [
        ("overview", "#/overview", "text=Top events"),
        ("debugger", "#/debugger/web", "[data-testid=events] tr"),
        ("destinations", "#/destinations", "text=Delivered, 24 h"),
        ("delivery-files", "#/destinations/files", "text=Recent errors"),
        ("delivery-hook", "#/destinations/hook", "text=Recent errors"),
        ("dead-letters", "#/dead-letters", "[data-testid=replay]"),
        ("violations", "#/violations", "text=Tracking-plan violations"),
    ]
    for name, fragment, ready in pages:
        page.goto(f"{console_gateway.url}/console/{fragment}")
        page.reload()  # the same fragment as before does not load the page again
        page.wait_for_selector(ready)
        if name == "debugger":
            page.locator("[data-testid=events] tr").first.click()
            page.wait_for_selector("[data-testid=detail] pre")
        screenshot(page, name)
    assert page.errors == []


def test_debugger_shows_a_new_event_within_two_seconds(page: Any, console_gateway: Gateway) -> None:
    """An event sent while the debugger is open appears in its list within 2 seconds."""
    page.goto(f"{console_gateway.url}/console/#/debugger/web")
    page.wait_for_selector("[data-testid=stream-status]:has-text('live')")
    name = f"Live {uuid.uuid4().hex[:8]}"
    send(console_gateway, {"event": name, "userId": "live-user"})
    # 2 s from the gateway's acknowledgement to the row in the page.
    page.wait_for_selector(f"[data-testid=events] tr:has-text('{name}')", timeout=2000)
    page.get_by_test_id("search").fill(name)
    assert page.locator("[data-testid=events] tr:visible").count() == 1
    page.locator(f"[data-testid=events] tr:has-text('{name}')").click()
    page.locator("[data-view=raw]").click()
    assert name in page.get_by_test_id("raw").inner_text()
    page.get_by_test_id("pause").click()
    assert page.get_by_test_id("pause").inner_text() == "Resume"
    screenshot(page, "debugger-search")
    assert page.errors == []


def test_replay_a_dead_letter_until_delivered(
    page: Any, console_gateway: Gateway, receiver: Receiver
) -> None:
    """A dead letter replayed with its button (once the receiver accepts) shows as delivered."""
    marker = f"replay-{uuid.uuid4().hex[:8]}"
    send(console_gateway, {"event": "Refused", "userId": marker})

    def letter() -> Any:
        letters = admin(console_gateway, "/api/dead-letters?destination=hook")["deadLetters"]
        shown = (admin(console_gateway, f"/api/dead-letters/{d['key']}") for d in letters)
        return next((d for d in shown if d["event"].get("userId") == marker), None)

    dead = wait_for(letter)
    receiver.accept_all = True
    try:
        page.goto(f"{console_gateway.url}/console/#/dead-letters?destination=hook")
        row = page.locator(f"tr[data-key='{dead['key']}']")
        row.get_by_test_id("replay").click()
        row.locator("[data-testid=replay-state]:has-text('delivered')").wait_for(timeout=30000)
        screenshot(page, "dead-letter-replayed")
    finally:
        receiver.accept_all = False
    assert any(m.get("userId") == marker for m in receiver.received)
    assert page.errors == []
