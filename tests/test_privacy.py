"""Tests for gateway/control.py, gateway/privacy.py and the privacy admin API and CLI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from destinations.file import FileDestination, FileSettings
from destinations.warehouse import WarehouseDestination, WarehouseSettings
from destinations.webhook import WebhookDestination, WebhookSettings
from gateway.cli import main
from gateway.control import ControlStore, ViolationKey
from gateway.destination import Destination, deliver
from gateway.privacy import DeletionWorker
from gateway.testing import make_event

TOKEN = "admin-secret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(name="control")
def _control(tmp_path: Path) -> ControlStore:
    store = ControlStore(tmp_path / "data")
    store.open()
    return store


@pytest.fixture(name="receiver")
async def _receiver() -> AsyncIterator[tuple[str, list[Any]]]:
    """A real webhook receiver on 127.0.0.1 answering 204; yields its URL and what it got."""
    got: list[Any] = []

    async def hook(request: web.Request) -> web.Response:
        got.append((dict(request.headers), orjson.loads(await request.read())))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = TestServer(app)
    await server.start_server()
    yield str(server.make_url("/hook")), got
    await server.close()


def test_suppressions_are_shared_between_stores(control: ControlStore, tmp_path: Path) -> None:
    """A suppression written by one process's store is seen by another's on its next read."""
    other = ControlStore(tmp_path / "data")
    other.open()
    assert other.suppressed_ids() == frozenset()
    assert control.suppress(["u1", "u2"], "test") == 2
    assert control.suppress(["u1"], "again") == 0
    assert other.suppressed_ids() == {"u1", "u2"}
    assert control.unsuppress("u1")
    assert not control.unsuppress("u1")
    assert other.suppressed_ids() == {"u2"}
    other.close()


def test_violation_counts_accumulate(control: ControlStore) -> None:
    """Violation counts from several flushes add up per key; the latest description is kept."""
    key = ViolationKey("web", "plan", "track", "Order Completed", "Invalid Type", "properties.x")
    control.add_violations({key: (3, 10.0, "3 is not a string")})
    control.add_violations({key: (2, 20.0, "4 is not a string")})
    (row,) = control.violations("web")
    assert (row["count"], row["lastSeen"], row["description"]) == (5, 20.0, "4 is not a string")
    assert control.violations("ios") == []


async def test_deletion_reaches_every_destination_that_can_delete(
    control: ControlStore, tmp_path: Path, receiver: tuple[str, list[Any]]
) -> None:
    """A deletion empties the warehouse of the user, POSTs a delete to the webhook, and marks
    the file destination unsupported; the request ends completed."""
    url, got = receiver
    warehouse = WarehouseDestination("dw", WarehouseSettings(path=tmp_path / "w.duckdb"))
    webhook = WebhookDestination("hook", WebhookSettings(url=url, secrets=[]))
    files = FileDestination("files", FileSettings(directory=tmp_path / "files"))
    destinations: dict[str, Destination[Any]] = {"dw": warehouse, "hook": webhook, "files": files}
    for destination in destinations.values():
        await destination.open()
    await deliver(warehouse, [make_event(1, userId="u-gone"), make_event(2, userId="u-kept")])

    request = control.request_deletion("u-gone", sorted(destinations))
    assert "u-gone" in control.suppressed_ids()
    assert await DeletionWorker(control, destinations).process_due() == 3

    done = control.deletion(request.id)
    assert done is not None
    assert done.status == "completed"
    steps = {s.destination: (s.status, s.detail) for s in done.steps}
    assert steps == {
        "dw": ("done", "2 record(s) deleted"),
        "files": ("unsupported", "the file type cannot delete"),
        "hook": ("done", "1 record(s) deleted"),
    }
    ((headers, body),) = got
    assert body == {"type": "delete", "userId": "u-gone"}
    assert headers["webhook-id"].startswith("delete-")
    rows = await warehouse.backend.fetch("SELECT user_id FROM web.tracks")
    assert rows == [("u-kept",)]
    for destination in destinations.values():
        await destination.close()


async def test_unreachable_destination_is_retried_later(
    control: ControlStore, tmp_path: Path
) -> None:
    """A webhook that cannot be reached leaves the step pending with the reason, not failed."""
    webhook = WebhookDestination("hook", WebhookSettings(url="http://127.0.0.1:9/", secrets=[]))
    await webhook.open()
    request = control.request_deletion("u-gone", ["hook"])
    await DeletionWorker(control, {"hook": webhook}).process_due()
    pending = control.deletion(request.id)
    assert pending is not None
    assert pending.status == "pending"
    (step,) = pending.steps
    assert (step.status, step.attempts) == ("pending", 1)
    assert step.detail is not None
    assert "connection error" in step.detail
    assert control.due_deletion_steps(0) == []  # not due again before its backoff
    await webhook.close()


async def test_admin_privacy_api(make_config: Any, make_client: Any) -> None:
    """Suppressions and deletion requests through the admin API, followed to completion."""
    client: TestClient[Any, Any] = await make_client(
        make_config(
            server={"port": 0, "admin_token": TOKEN}, privacy={"suppressed_user_ids": ["c"]}
        )
    )
    async with client.post("/admin/suppressions", json={"userIds": ["a", "b"]}, headers=AUTH) as r:
        assert (r.status, await r.json()) == (200, {"suppressed": 2})
    async with client.get("/admin/suppressions", headers=AUTH) as r:
        listed = await r.json()
    assert sorted(s["userId"] for s in listed["suppressions"]) == ["a", "b"]
    assert listed["configured"] == ["c"]
    async with client.delete("/admin/suppressions/a", headers=AUTH) as r:
        assert r.status == 200
    async with client.delete("/admin/suppressions/a", headers=AUTH) as r:
        assert (r.status, (await r.json())["code"]) == (404, "not_found")
    async with client.post("/admin/suppressions", json={"userIds": []}, headers=AUTH) as r:
        assert (r.status, (await r.json())["code"]) == (400, "invalid_request")

    async with client.post("/admin/deletions", json={"userId": "u9"}, headers=AUTH) as r:
        assert r.status == 202
        created = await r.json()
    assert created["destinations"] == {
        "files": {"status": "pending", "detail": None, "attempts": 0}
    }
    for _ in range(50):
        async with client.get(f"/admin/deletions/{created['id']}", headers=AUTH) as r:
            found = await r.json()
        if found["status"] != "pending":
            break
        await asyncio.sleep(0.1)
    assert found["status"] == "completed"
    assert found["destinations"]["files"]["status"] == "unsupported"
    async with client.get("/admin/deletions/999", headers=AUTH) as r:
        assert r.status == 404
    async with client.get("/admin/violations", headers=AUTH) as r:
        assert await r.json() == {"violations": []}


def test_cli_privacy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`eventgate privacy` suppresses, lists, unsuppresses and records deletion requests."""
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"storage: {{data_dir: {tmp_path / 'data'}}}\n"
        "sources: [{name: web, write_keys: [k]}]\n"
        f"destinations: [{{name: files, type: file, settings: {{directory: {tmp_path}}}}}]\n"
    )
    assert main(["privacy", "suppress", "u1", "--config", str(config)]) == 0
    assert main(["privacy", "list", "--config", str(config)]) == 0
    assert "u1\tsuppressed with the CLI" in capsys.readouterr().out
    assert main(["privacy", "unsuppress", "u1", "--config", str(config)]) == 0
    assert main(["privacy", "unsuppress", "u1", "--config", str(config)]) == 1
    assert capsys.readouterr().out == "u1: unsuppressed\nu1: was not suppressed\n"
    assert main(["privacy", "delete", "u2", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert orjson.loads(out)["destinations"] == {
        "files": {"status": "pending", "detail": None, "attempts": 0}
    }
    assert "deletion request 1 recorded" in err
    assert main(["privacy", "status", "1", "--config", str(config)]) == 0
    status = orjson.loads(capsys.readouterr().out)
    assert (status["userId"], status["status"]) == ("u2", "pending")
    assert main(["privacy", "status", "x", "--config", str(config)]) == 2
