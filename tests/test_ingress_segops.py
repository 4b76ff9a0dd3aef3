"""Tests for gateway/ingress/segops.py: the /api/ingestion API."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import API_KEY
from tests.test_ingress_segment import post, stored

Client = TestClient[Any, Any]
BEARER = {"Authorization": f"Bearer {API_KEY}"}


async def test_track_answers_202_and_maps_to_spec(client: Client) -> None:
    """One SegOps event becomes a Spec track: userId, event, timestamp, properties."""
    event = {
        "user_id": "u1",
        "event_type": "order_placed",
        "occurred_at": "2026-11-20T10:00:00+01:00",
        "payload": {"total": 12.5},
    }
    status, answer = await post(client, "/api/ingestion/track/", event, headers=BEARER)
    assert (status, answer) == (202, {"success": True, "accepted": 1})
    [message] = await stored(client)
    assert message["type"] == "track"
    assert message["userId"] == "u1"
    assert message["event"] == "order_placed"
    assert message["originalTimestamp"] == "2026-11-20T09:00:00.000Z"
    assert message["properties"] == {"total": 12.5}


async def test_context_identified_is_an_identify(client: Client) -> None:
    """event_type context_identified maps to identify with the payload as traits."""
    event = {"user_id": "u1", "event_type": "context_identified", "payload": {"plan": "pro"}}
    status, _ = await post(client, "/api/ingestion/track/", event, headers=BEARER)
    assert status == 202
    [message] = await stored(client)
    assert (message["type"], message["traits"]) == ("identify", {"plan": "pro"})


@pytest.mark.parametrize("wrap", [pytest.param(True, id="object"), pytest.param(False, id="array")])
async def test_batch_keeps_valid_events(client: Client, wrap: bool) -> None:
    """A batch accepts {"events": [...]} or a bare array; invalid events get a reason."""
    events = [
        {"user_id": "u", "event_type": "order_placed"},
        {"user_id": "u", "event_type": "OrderPlaced"},
        {"event_type": "order_placed"},
        {"user_id": "u", "event_type": "x", "payload": [1]},
        {"user_id": "u", "event_type": "order_shipped", "occurred_at": "never"},
        {"user_id": "u", "event_type": "order_shipped"},
    ]
    body = {"events": events} if wrap else events
    status, answer = await post(client, "/api/ingestion/track/batch/", body, headers=BEARER)
    assert status == 202
    assert answer["accepted"] == 2
    assert [(r["index"], r["code"]) for r in answer["rejected"]] == [
        (1, "invalid_event_type"),
        (2, "missing_user_id"),
        (3, "invalid_payload"),
        (4, "invalid_timestamp"),
    ]
    assert len(await stored(client)) == 2


async def test_batch_over_500_events(client: Client) -> None:
    """More than 500 events per SegOps batch is a 413."""
    events = [{"user_id": "u", "event_type": "a"}] * 501
    status, answer = await post(client, "/api/ingestion/track/batch/", events, headers=BEARER)
    assert (status, answer["code"]) == (413, "too_many_events")


async def test_x_api_key_header(client: Client) -> None:
    """X-API-Key works as well as Bearer."""
    event = {"user_id": "u", "event_type": "a"}
    status, _ = await post(client, "/api/ingestion/track", event, headers={"X-API-Key": API_KEY})
    assert status == 202


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        pytest.param({}, "missing_api_key", id="missing"),
        pytest.param({"Authorization": "Bearer sk_wrong"}, "invalid_api_key", id="unknown"),
        pytest.param({"Authorization": "Bearer "}, "missing_api_key", id="empty"),
        pytest.param({"Authorization": "Basic abc"}, "missing_api_key", id="basic"),
    ],
)
async def test_bad_api_keys(client: Client, headers: dict[str, str], code: str) -> None:
    """SegOps routes need a known Bearer key; the write key is not accepted."""
    event = {"user_id": "u", "event_type": "a"}
    status, answer = await post(client, "/api/ingestion/track/", event, headers=headers)
    assert (status, answer["code"]) == (401, code)


async def test_invalid_single_event_is_400(client: Client) -> None:
    """A single invalid event is a 400 with its reason."""
    status, answer = await post(
        client, "/api/ingestion/track/", {"user_id": "u", "event_type": "Bad Name"}, headers=BEARER
    )
    assert (status, answer["code"]) == (400, "invalid_event_type")


async def test_malformed_json(client: Client) -> None:
    """Malformed JSON is a 400 invalid_request."""
    status, answer = await post(client, "/api/ingestion/track/", b"{", headers=BEARER)
    assert (status, answer["code"]) == (400, "invalid_request")
    assert orjson.dumps(answer)
