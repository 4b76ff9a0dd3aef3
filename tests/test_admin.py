"""Tests for gateway/admin.py: the token-protected admin API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.log import DeadLetter, SqliteEventLog
from gateway.testing import make_event

TOKEN = "admin-secret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(name="admin")
async def _admin(make_config: Any, make_client: Any, tmp_path: Path) -> TestClient[Any, Any]:
    """A gateway with an admin token and two dead letters in shard 0."""
    event_log = SqliteEventLog(tmp_path / "data", disk_quota_bytes=1 << 30)
    await event_log.open()
    await event_log.dead_letter(
        [
            DeadLetter("hook", make_event(1), "HTTP 400", 1, 1.0, 2.0, "POST /", "400"),
            DeadLetter("files", make_event(2), "disk full", 5, 1.0, 3.0, None, None),
        ]
    )
    await event_log.close()
    config = make_config(server={"port": 0, "admin_token": TOKEN})
    client: TestClient[Any, Any] = await make_client(config)
    return client


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"Authorization": "Bearer wrong"}, id="wrong"),
        pytest.param({"Authorization": f"Basic {TOKEN}"}, id="wrong-scheme"),
    ],
)
async def test_admin_needs_the_token(admin: TestClient[Any, Any], headers: dict[str, str]) -> None:
    """Without the right bearer token every admin route answers 401 with a JSON reason."""
    async with admin.get("/admin/dead-letters", headers=headers) as response:
        assert response.status == 401
        assert (await response.json())["code"] == "unauthorized"


async def test_admin_is_off_without_a_token(client: TestClient[Any, Any]) -> None:
    """With no admin_token configured the admin API does not exist."""
    async with client.get("/admin/dead-letters", headers=AUTH) as response:
        assert response.status == 404


async def test_list_show_replay_purge(admin: TestClient[Any, Any]) -> None:
    """The admin API lists, shows, replays (with a filter) and purges dead letters."""
    async with admin.get("/admin/dead-letters?destination=hook", headers=AUTH) as response:
        letters = (await response.json())["deadLetters"]
    assert [(d["key"], d["reason"]) for d in letters] == [("0:1", "HTTP 400")]
    async with admin.get("/admin/dead-letters/0:1", headers=AUTH) as response:
        shown = await response.json()
    assert shown["event"]["messageId"] == "web-00000001"
    assert shown["response"] == "400"
    async with admin.get("/admin/dead-letters/0:99", headers=AUTH) as response:
        assert response.status == 404
    async with admin.post("/admin/dead-letters/replay", json={}, headers=AUTH) as response:
        assert response.status == 400
        assert (await response.json())["code"] == "filter_required"
    body = {"destination": "hook"}
    async with admin.post("/admin/dead-letters/replay", json=body, headers=AUTH) as response:
        assert await response.json() == {"replayed": 1}
    async with admin.post("/admin/dead-letters/purge", json={"all": True}, headers=AUTH) as r:
        assert await r.json() == {"purged": 1}
    async with admin.get("/admin/dead-letters", headers=AUTH) as response:
        assert (await response.json())["deadLetters"] == []


async def test_bad_filters_are_400(admin: TestClient[Any, Any]) -> None:
    """A malformed filter is a 400 naming the field."""
    body = {"since": "not a time"}
    async with admin.post("/admin/dead-letters/purge", json=body, headers=AUTH) as response:
        assert response.status == 400
        assert (await response.json())["message"].startswith("since:")
