"""Tests for gateway/console/api.py: the console's JSON API, in-process."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.console import CONSOLE_KEY
from gateway.log import DeadLetter, SqliteEventLog
from gateway.testing import make_event
from tests.conftest import basic

TOKEN = "console-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(name="console")
async def _console(make_config: Any, make_client: Any, tmp_path: Path) -> TestClient[Any, Any]:
    """A gateway with an admin token, a webhook destination with secrets, and a dead letter."""
    event_log = SqliteEventLog(tmp_path / "data", disk_quota_bytes=1 << 30)
    await event_log.open()
    await event_log.dead_letter(
        [DeadLetter("hook", make_event(1), "HTTP 400", 1, 1.0, 2.0, "POST /", "400 nope")]
    )
    await event_log.close()
    config = make_config(
        server={"port": 0, "admin_token": TOKEN},
        destinations=[
            {
                "name": "files",
                "type": "file",
                "batch": {"max_events": 100, "max_age_s": 0},
                "settings": {"directory": str(tmp_path / "files")},
            },
            {
                "name": "hook",
                "type": "webhook",
                "enabled": False,
                "settings": {
                    "url": "https://user:pa55word@hooks.example.com/in",
                    "secrets": ["whsec_c2VjcmV0c2VjcmV0c2VjcmV0"],
                    "headers": {"Authorization": "Bearer crm-token-123"},
                },
            },
        ],
    )
    client: TestClient[Any, Any] = await make_client(config)
    return client


async def _json(client: TestClient[Any, Any], path: str, status: int = 200) -> Any:
    async with client.get(path, headers=AUTH) as response:
        assert response.status == status, await response.text()
        return await response.json()


async def test_openapi_document_is_served(console: TestClient[Any, Any]) -> None:
    """/api/openapi.json is an OpenAPI 3.1 document naming every /api route."""
    document = await _json(console, "/api/openapi.json")
    assert document["openapi"].startswith("3.1")
    for path in ("/api/overview", "/api/sources/{name}/stream", "/api/dead-letters/{key}/replay"):
        assert path in document["paths"]


async def test_api_needs_the_token(console: TestClient[Any, Any]) -> None:
    """Every /api route but the document answers 401 without the admin token."""
    async with console.get("/api/sources") as response:
        assert response.status == 401
        assert (await response.json())["code"] == "unauthorized"


async def test_api_is_off_without_a_token(client: TestClient[Any, Any]) -> None:
    """With no admin_token the API and its document do not exist."""
    for path in ("/api/sources", "/api/openapi.json"):
        async with client.get(path, headers=AUTH) as response:
            assert response.status == 404


async def test_destination_config_is_redacted(console: TestClient[Any, Any]) -> None:
    """A destination's effective config shows defaults but never its secrets."""
    shown = await _json(console, "/api/destinations/hook")
    text = str(shown)
    for secret in ("pa55word", "whsec_c2Vj", "crm-token-123"):
        assert secret not in text
    assert shown["config"]["settings"]["url"] == "https://user:[REDACTED]@hooks.example.com/in"
    assert shown["config"]["retry"]["max_attempts"] == 120
    assert shown["sources"] == ["web"]


async def test_sources_redact_keys(console: TestClient[Any, Any]) -> None:
    """Sources list their destinations and key counts, never the keys."""
    listed = await _json(console, "/api/sources")
    (web,) = listed["sources"]
    assert web["writeKeys"] == 1
    assert web["destinations"] == ["files"]
    assert "test-write-key" not in str(listed)
    await _json(console, "/api/sources/nope", 404)


async def test_overview_counts_ingest(console: TestClient[Any, Any]) -> None:
    """Stored events, their types, users and refusals show in the overview once flushed."""
    batch = {
        "batch": [
            {"type": "track", "event": "Signed Up", "userId": "u1"},
            {"type": "track", "event": "Signed Up", "userId": "u2"},
            {"type": "identify", "userId": "u1"},
            {"type": "track", "userId": "u3"},
        ]
    }
    async with console.post("/v1/batch", json=batch, headers=basic()) as response:
        assert response.status == 200
    async with console.post("/v1/track", json={"event": "x"}, headers=basic()) as response:
        assert response.status == 400
    recorder = console.app[CONSOLE_KEY].recorder
    recorder.digest()
    recorder.flush()  # on the loop, as take() must be; waits for a background write
    everything = await _json(console, "/api/overview")
    assert everything["totals"]["24h"] == {"received": 3, "rejected": 2}
    overview = await _json(console, "/api/overview?source=web")
    assert overview["totals"]["24h"] == {"received": 3, "rejected": 1}
    assert overview["uniqueUsers"]["24h"] == 2
    top = {(t["type"], t["event"]): t["count"] for t in overview["topEvents"]["7d"]}
    assert top == {("track", "Signed Up"): 2, ("identify", ""): 1}
    codes = {(e["source"], e["code"]) for e in overview["errorCounts"]}
    assert codes == {("web", "missing_event"), (None, "missing_identity")}
    assert overview["recentErrors"][0]["status"] == 400
    assert sum(overview["volume"]["24h"]["received"]) == 3
    assert [d["name"] for d in overview["destinations"]] == ["files", "hook"]
    assert overview["destinations"][1]["deadLetters"] == 1


async def test_debugger_snapshot_and_after(console: TestClient[Any, Any]) -> None:
    """The events route gives the newest events and then only those after its position."""
    async with console.post("/v1/track", json={"event": "A", "userId": "u"}, headers=basic()):
        pass
    first = await _json(console, "/api/sources/web/events")
    assert [e["event"] for e in first["events"]][-1] == "A"
    async with console.post("/v1/track", json={"event": "B", "userId": "u"}, headers=basic()):
        pass
    later = await _json(console, f"/api/sources/web/events?after={first['position']}")
    assert [e["event"] for e in later["events"]] == ["B"]
    assert later["events"][0]["message"]["userId"] == "u"
    await _json(console, "/api/sources/web/events?after=bogus", 400)


async def test_stream_sends_snapshot_then_new_events(console: TestClient[Any, Any]) -> None:
    """The SSE stream starts with a snapshot and then sends each new event."""
    async with console.get("/api/sources/web/stream", headers=AUTH) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        snapshot = await response.content.readuntil(b"\n\n")
        assert b"event: snapshot" in snapshot
        live = {"event": "Live", "userId": "u"}
        async with console.post("/v1/track", json=live, headers=basic()):
            pass
        chunk = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 10)
        assert b"event: events" in chunk
        assert b'"event":"Live"' in chunk


async def test_replay_one_and_follow_its_state(console: TestClient[Any, Any]) -> None:
    """Replaying one dead letter answers a reference whose state is then retrying."""
    async with console.post("/api/dead-letters/0:1/replay", headers=AUTH) as response:
        replayed = await response.json()
    assert replayed == {"replayed": 1, "destination": "hook", "event": "0:1"}
    state = await _json(console, "/api/destinations/hook/events/0:1")
    assert state["state"] == "retrying"
    async with console.post("/api/dead-letters/0:1/replay", headers=AUTH) as response:
        assert response.status == 404
    await _json(console, "/api/destinations/hook/events/9:1", 404)


async def test_older_admin_paths_still_answer(console: TestClient[Any, Any]) -> None:
    """The /admin routes and their /api twins give the same dead letters."""
    old = await _json(console, "/admin/dead-letters")
    new = await _json(console, "/api/dead-letters")
    assert old == new
    assert new["deadLetters"][0]["key"] == "0:1"


async def test_delivery_has_trends_and_health(console: TestClient[Any, Any]) -> None:
    """A destination's delivery report carries chart series and its health."""
    report = await _json(console, "/api/destinations/files/delivery")
    assert len(report["trends"]["1h"]["delivered"]) == 60
    assert len(report["trends"]["24h"]["delivered"]) == 24
    assert report["health"]["circuitOpen"] is False
    await _json(console, "/api/destinations/nope/delivery", 404)


async def test_health(console: TestClient[Any, Any]) -> None:
    """Liveness answers ok; readiness reports writable storage and each enabled circuit."""
    assert (await _json(console, "/api/health/live"))["status"] == "ok"
    ready = await _json(console, "/api/health/ready")
    assert ready["status"] == "ready"
    assert ready["storage"]["writable"] is True
    assert ready["circuits"] == {"files": "closed"}


async def test_console_pages_are_served(console: TestClient[Any, Any]) -> None:
    """/console redirects to the page, which is served with a strict CSP; no other files."""
    async with console.get("/console", allow_redirects=False) as response:
        assert response.status == 302
    async with console.get("/console/") as response:
        assert response.status == 200
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        assert "<script" in await response.text()
    async with console.get("/console/console.js") as response:
        assert response.content_type == "text/javascript"
    for path in ("/console/..%2Fapi.py", "/console/api.py", "/console/nope.js"):
        async with console.get(path) as response:
            assert response.status == 404
