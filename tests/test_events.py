"""Tests for gateway/events.py: Spec validation and normalization."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from gateway.errors import EventRejectedError
from gateway.events import RequestContext, format_timestamp, normalize

RECEIVED = datetime(2026, 11, 23, 12, 0, 0, 500_000, tzinfo=UTC)


def run(item: Any, route_type: str | None = None, **request: Any) -> dict[str, Any]:
    context = RequestContext(
        source="web", received_at=RECEIVED, client_ip=request.pop("ip", "10.1.2.3"), **request
    )
    event = normalize(item, context, route_type=route_type)
    message: dict[str, Any] = orjson.loads(event.body)
    assert event.message_id == message["messageId"]
    return message


def test_clock_skew_is_corrected_from_sent_at() -> None:
    """timestamp = receivedAt - (sentAt - originalTimestamp), with offsets parsed to UTC."""
    message = run(
        {
            "type": "track",
            "userId": "u1",
            "event": "Signed Up",
            "timestamp": "2026-11-23T13:00:00+02:00",
            "sentAt": "2026-11-23T13:00:10+02:00",
        }
    )
    assert message["originalTimestamp"] == "2026-11-23T11:00:00.000Z"
    assert message["sentAt"] == "2026-11-23T11:00:10.000Z"
    assert message["timestamp"] == "2026-11-23T11:59:50.500Z"
    assert message["receivedAt"] == "2026-11-23T12:00:00.500Z"


def test_batch_level_sent_at_applies_to_items() -> None:
    """A batch's sentAt corrects each item's clock skew."""
    sent = datetime(2026, 11, 23, 10, 0, 1, tzinfo=UTC)
    message = run(
        {"type": "page", "anonymousId": "a", "timestamp": "2026-11-23T10:00:00Z"}, sent_at=sent
    )
    assert message["timestamp"] == "2026-11-23T11:59:59.500Z"


def test_timestamp_without_sent_at_is_kept() -> None:
    """With no sentAt, timestamp is the client's timestamp (microseconds truncated to ms)."""
    message = run({"type": "identify", "userId": "u", "timestamp": "2026-01-02T03:04:05.678901Z"})
    assert message["timestamp"] == message["originalTimestamp"] == "2026-01-02T03:04:05.678Z"
    assert "sentAt" not in message


def test_no_timestamp_means_received_at() -> None:
    """Without any client time, timestamp is receivedAt and originalTimestamp is absent."""
    message = run({"type": "identify", "userId": "u"})
    assert message["timestamp"] == message["receivedAt"]
    assert "originalTimestamp" not in message


def test_message_id_assigned_when_missing() -> None:
    """A missing messageId gets a unique api- id; a given one is kept."""
    first = run({"type": "track", "userId": "u", "event": "E"})
    second = run({"type": "track", "userId": "u", "event": "E"})
    assert first["messageId"].startswith("api-")
    assert first["messageId"] != second["messageId"]
    assert run({"type": "track", "userId": "u", "event": "E", "messageId": "m1"})["messageId"] == (
        "m1"
    )


def test_null_means_absent_and_unknown_keys_are_dropped() -> None:
    """``"userId": null`` with an anonymousId is fine; unknown top-level keys and writeKey go."""
    message = run(
        {
            "type": "track",
            "userId": None,
            "anonymousId": "anon",
            "event": "E",
            "writeKey": "secret",
            "somethingElse": 1,
            "properties": None,
        }
    )
    assert "userId" not in message
    assert "writeKey" not in message
    assert "somethingElse" not in message
    assert "properties" not in message


def test_route_type_wins_over_body_type() -> None:
    """A single-call route sets the type."""
    assert run({"type": "identify", "userId": "u", "event": "E"}, route_type="track")["type"] == (
        "track"
    )


def test_numeric_user_id_becomes_a_string() -> None:
    """Numbers in id fields are coerced to strings, as Segment does."""
    assert run({"type": "identify", "userId": 42})["userId"] == "42"


def test_context_ip_filled_unless_given() -> None:
    """context.ip comes from the request when absent or when context.direct is true."""
    assert run({"type": "identify", "userId": "u"})["context"]["ip"] == "10.1.2.3"
    given = run({"type": "identify", "userId": "u", "context": {"ip": "1.1.1.1"}})
    assert given["context"]["ip"] == "1.1.1.1"
    direct = run({"type": "identify", "userId": "u", "context": {"ip": "1.1.1.1", "direct": True}})
    assert direct["context"]["ip"] == "10.1.2.3"


def test_batch_context_and_integrations_are_merged() -> None:
    """Batch-level context and integrations apply to each item; the item's keys win."""
    message = run(
        {
            "type": "track",
            "userId": "u",
            "event": "E",
            "context": {"locale": "fr"},
            "integrations": {"files": False},
        },
        context={"locale": "en", "library": {"name": "analytics-python"}},
        integrations={"All": True, "files": True},
    )
    assert message["context"]["locale"] == "fr"
    assert message["context"]["library"] == {"name": "analytics-python"}
    assert message["integrations"] == {"All": True, "files": False}


@pytest.mark.parametrize(
    ("item", "code"),
    [
        pytest.param({"type": "track", "event": "E"}, "missing_identity", id="no-ids"),
        pytest.param({"type": "track", "userId": "", "event": "E"}, "missing_identity", id="empty"),
        pytest.param({"type": "track", "userId": "u"}, "missing_event", id="track-no-event"),
        pytest.param({"type": "group", "userId": "u"}, "missing_group_id", id="group-no-id"),
        pytest.param({"type": "alias", "userId": "u"}, "missing_previous_id", id="alias-no-prev"),
        pytest.param({"type": "alias", "previousId": "p"}, "missing_user_id", id="alias-no-user"),
        pytest.param({"userId": "u"}, "missing_type", id="no-type"),
        pytest.param({"type": "click", "userId": "u"}, "invalid_type", id="bad-type"),
        pytest.param(
            {"type": "track", "userId": "u", "event": "E", "timestamp": "yesterday"},
            "invalid_timestamp",
            id="bad-timestamp",
        ),
        pytest.param(
            {"type": "track", "userId": "u", "event": "E", "properties": "x"},
            "invalid_field",
            id="properties-not-object",
        ),
        pytest.param(
            {"type": "track", "userId": "u", "event": "E", "messageId": "m" * 101},
            "invalid_field",
            id="message-id-too-long",
        ),
        pytest.param(
            {"type": "track", "userId": "u", "event": "E" * 256}, "invalid_field", id="long-event"
        ),
        pytest.param(
            {"type": "identify", "userId": True}, "invalid_field", id="user-id-not-a-string"
        ),
        pytest.param(["not", "an", "object"], "invalid_event", id="not-an-object"),
    ],
)
def test_invalid_messages_are_rejected_with_a_code(item: Any, code: str) -> None:
    """Each Spec rule has its own rejection code."""
    with pytest.raises(EventRejectedError) as info:
        run(item)
    assert info.value.code == code
    assert info.value.message


def test_out_of_range_skew_is_rejected_not_crashing() -> None:
    """A skew that would leave the datetime range is a per-event rejection."""
    with pytest.raises(EventRejectedError) as info:
        run(
            {
                "type": "identify",
                "userId": "u",
                "timestamp": "0001-01-01T00:00:00Z",
                "sentAt": "9999-12-31T23:59:59Z",
            }
        )
    assert info.value.code == "invalid_timestamp"


def test_format_timestamp_treats_naive_as_utc() -> None:
    """A naive datetime is taken as UTC."""
    assert format_timestamp(datetime(2026, 1, 1, 0, 0)) == "2026-01-01T00:00:00.000Z"  # noqa: DTZ001
