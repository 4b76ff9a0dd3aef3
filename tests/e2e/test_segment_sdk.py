"""Segment's own Python SDK against the real gateway process."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from segment.analytics import Client

from tests.conftest import WRITE_KEY
from tests.e2e.conftest import Gateway


@pytest.mark.parametrize("gzip", [pytest.param(False, id="plain"), pytest.param(True, id="gzip")])
def test_sdk_events_arrive_normalized_in_files(gateway: Gateway, gzip: bool) -> None:
    """Every call of segment-analytics-python gets a 200 and lands, normalized, in the files."""
    errors: list[Any] = []
    client = Client(
        WRITE_KEY,
        host=gateway.url,
        gzip=gzip,
        on_error=lambda error, _batch: errors.append(error),
        max_retries=1,
    )
    run = uuid.uuid4().hex[:8]
    ids = set()
    for i in range(120):
        message_id = f"{run}-track-{i}"
        client.track(
            user_id=f"user-{i % 7}",
            event="Order Completed",
            properties={"revenue": i, "currency": "EUR"},
            message_id=message_id,
        )
        ids.add(message_id)
    calls = {
        "identify": lambda m: client.identify("user-1", {"email": "a@example.com"}, message_id=m),
        "page": lambda m: client.page("user-1", "Docs", "Home", message_id=m),
        "screen": lambda m: client.screen("user-1", "App", "Main", message_id=m),
        "group": lambda m: client.group("user-1", "group-1", {"plan": "pro"}, message_id=m),
        "alias": lambda m: client.alias("anon-1", "user-1", message_id=m),
    }
    for kind, call in calls.items():
        call(f"{run}-{kind}")
        ids.add(f"{run}-{kind}")
    client.flush()
    client.shutdown()
    assert errors == []

    messages = {m["messageId"]: m for m in gateway.wait_for_files(ids)}
    order = messages[f"{run}-track-3"]
    assert order["type"] == "track"
    assert order["event"] == "Order Completed"
    assert order["properties"] == {"revenue": 3, "currency": "EUR"}
    assert order["context"]["library"]["name"] == "analytics-python"
    assert order["context"]["ip"] == "127.0.0.1"
    for key in ("timestamp", "originalTimestamp", "sentAt", "receivedAt"):
        assert order[key].endswith("Z"), key
    assert "writeKey" not in order
    assert messages[f"{run}-identify"]["traits"] == {"email": "a@example.com"}
    assert messages[f"{run}-group"]["groupId"] == "group-1"
    assert messages[f"{run}-alias"]["previousId"] == "anon-1"
    assert {m["type"] for m in messages.values()} == {
        "track",
        "identify",
        "page",
        "screen",
        "group",
        "alias",
    }
