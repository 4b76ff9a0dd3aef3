"""Routing controls through a real app: tracking plans, suppression, transformations at the
source, and the integrations object, filters and transformations per destination."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import INGRESS_KEY, METRICS_KEY
from gateway.cli import main
from gateway.config import GatewayConfig
from tests.conftest import WRITE_KEY, basic
from tests.test_ingress_segment import post, stored

Client = TestClient[Any, Any]
TOKEN = "admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

PLAN = {
    "name": "web-plan",
    "track": {
        "Order Completed": {
            "type": "object",
            "properties": {"order_id": {"type": "string"}, "total": {"type": "number"}},
            "required": ["order_id"],
        }
    },
}


PLANNED_SOURCE = {
    "name": "web",
    "write_keys": [WRITE_KEY],
    "tracking_plan": "web-plan",
    "protocols": {
        "unplanned_events": "block",
        "unplanned_properties": "omit",
        "violations": "block",
        "forward_violations": True,
    },
    "transformations": [{"name": "hash-email", "hash_properties": ["context.traits.email"]}],
}
"""A source checked against PLAN (omit unplanned, block violations, forward) that hashes the
email; the end-to-end tests use it too."""


def filtered(client: Client, source: str, destination: str, rule: str, action: str) -> float:
    """The filtered counter for these labels, after flushing the ingress counts."""
    client.app[INGRESS_KEY].flush_counts()
    metric = client.app[METRICS_KEY].filtered.labels(source, destination, rule, action)
    value: float = metric._value.get()
    return value


def file_messages(root: Path) -> list[dict[str, Any]]:
    """Every message the file destination wrote under ``root``."""
    return [
        json.loads(line)
        for path in sorted(root.rglob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]


async def wait_for(check: Callable[[], bool], timeout_s: float = 10) -> None:
    """Poll ``check`` until it holds."""
    for _ in range(int(timeout_s / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


@pytest.fixture(name="planned")
async def _planned(
    make_config: Callable[..., GatewayConfig], make_client: Callable[..., Any]
) -> Client:
    """A gateway whose source has a tracking plan (omit unplanned, block violations, forward)."""
    config = make_config(
        server={"port": 0, "admin_token": TOKEN},
        tracking_plans=[PLAN],
        sources=[PLANNED_SOURCE],
    )
    client: Client = await make_client(config)
    return client


async def test_tracking_plan_at_ingress(planned: Client) -> None:
    """Planned events are stored with unplanned properties omitted; violations and unplanned
    events are blocked, counted, forwarded and readable through the admin API."""
    batch = {
        "batch": [
            {"type": "track", "userId": "u1", "event": "Order Completed", "messageId": "ok",
             "properties": {"order_id": "o1", "total": 5, "coupon": "X"},
             "context": {"traits": {"email": "A@b.c"}}},
            {"type": "track", "userId": "u1", "event": "Order Completed", "messageId": "bad",
             "properties": {"order_id": 7}},
            {"type": "track", "userId": "u1", "event": "Signed Up", "messageId": "unplanned"},
        ]
    }  # fmt: skip
    status, answer = await post(planned, "/v1/batch", batch, headers=basic())
    assert (status, answer) == (200, {"success": True})
    messages = {m["messageId"]: m for m in await stored(planned)}
    kept = messages["ok"]
    assert kept["properties"] == {"order_id": "o1", "total": 5}
    assert kept["context"]["protocols"]["omitted"] == ["properties.coupon"]
    assert kept["context"]["traits"]["email"] == hashlib.sha256(b"a@b.c").hexdigest()
    assert "bad" not in messages
    assert "unplanned" not in messages
    forwarded = [m for m in messages.values() if m.get("event") == "Violation Generated"]
    # The omitted property is a violation too (Unplanned Property): all three are forwarded.
    assert {m["properties"]["eventMessageID"] for m in forwarded} == {"ok", "bad", "unplanned"}
    assert filtered(planned, "web", "", "tracking_plan:web-plan", "blocked") == 2
    assert filtered(planned, "web", "", "tracking_plan:web-plan", "omitted") == 1
    assert filtered(planned, "web", "", "transformation:hash-email", "transformed") == 1

    await planned.app[INGRESS_KEY].refresh()
    async with planned.get("/admin/violations?source=web", headers=AUTH) as response:
        violations = (await response.json())["violations"]
    kinds = {(v["eventName"], v["violationType"], v["field"]): v["count"] for v in violations}
    assert kinds[("Order Completed", "Invalid Type", "properties.order_id")] == 1
    assert kinds[("Signed Up", "Unplanned Event", "event")] == 1


async def test_suppressed_users_are_dropped_at_ingress(planned: Client) -> None:
    """After an operator suppresses a user, their events are acknowledged but not stored."""
    async with planned.post("/admin/suppressions", json={"userIds": ["u-bad"]}, headers=AUTH):
        pass
    await planned.app[INGRESS_KEY].refresh()
    event = {"userId": "u-bad", "event": "Order Completed", "properties": {"order_id": "o"}}
    assert (await post(planned, "/v1/track", event, headers=basic()))[0] == 200
    assert await stored(planned) == []
    assert filtered(planned, "web", "", "suppression", "suppressed") == 1


async def test_destination_controls(
    make_config: Callable[..., GatewayConfig], make_client: Callable[..., Any], tmp_path: Path
) -> None:
    """The integrations object, filters and destination transformations decide what each
    destination gets; every event left out is counted with its rule."""

    def files(name: str, **controls: Any) -> dict[str, Any]:
        return {"name": name, "type": "file", "batch": {"max_events": 100, "max_age_s": 0},
                "settings": {"directory": str(tmp_path / name)}, **controls}  # fmt: skip

    # A webhook-like destination kind is needed for integrations; the example type honours it.
    config = make_config(
        destinations=[
            files("archive"),
            files(
                "curated",
                filters=[
                    {"name": "no-tests", "if": "event = 'Test'", "drop": True},
                    {"name": "strip-ip", "drop_properties": {"context": ["ip"]}},
                ],
                transformations=[
                    {"name": "rename", "if": "event = 'Buy'", "new_event_name": "Purchase"}
                ],
            ),
            {"name": "lake", "type": "example_sqlite", "batch": {"max_events": 100,
             "max_age_s": 0}, "settings": {"path": str(tmp_path / "lake.db")}},
        ]
    )  # fmt: skip
    client: Client = await make_client(config)
    batch = {
        "batch": [
            {"type": "track", "userId": "u", "event": "Buy", "messageId": "buy"},
            {"type": "track", "userId": "u", "event": "Test", "messageId": "test"},
            {"type": "track", "userId": "u", "event": "Buy", "messageId": "private",
             "integrations": {"All": False}},
        ]
    }  # fmt: skip
    assert (await post(client, "/v1/batch", batch, headers=basic()))[0] == 200
    await wait_for(lambda: len(file_messages(tmp_path / "archive")) == 3)
    await wait_for(lambda: len(file_messages(tmp_path / "curated")) == 2)
    curated = {m["messageId"]: m for m in file_messages(tmp_path / "curated")}
    assert curated["buy"]["event"] == "Purchase"
    assert "ip" not in curated["buy"]["context"]
    assert "test" not in curated
    assert filtered(client, "web", "curated", "filter:no-tests", "dropped") == 1
    await wait_for(lambda: filtered(client, "web", "lake", "integrations", "disabled") == 1)


def test_check_reports_bad_fql_with_its_place(tmp_path: Path, capsys: Any) -> None:
    """`eventgate check` names the destination filter and the FQL position of a syntax error."""
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "sources: [{name: web, write_keys: [k]}]\n"
        "destinations:\n"
        "  - name: files\n"
        "    type: file\n"
        f"    settings: {{directory: {tmp_path}}}\n"
        "    filters: [{name: broken, if: \"event = 'x' and (\", drop: true}]\n"
    )
    assert main(["check", str(config)]) != 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert "destinations[0]" in text
    assert "broken" in text
    assert "position" in text
