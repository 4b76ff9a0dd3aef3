"""Fuzzing the pure ingress functions: JSON parsing, Spec normalization, the SegOps mapping, the
auth header parsers and key lookup.

Each may refuse input only with its documented error; none may raise anything else.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import EventRejectedError, RequestRejectedError
from gateway.events import RequestContext, format_timestamp, normalize
from gateway.ingress.auth import KeyRing, basic_auth_key, bearer_key
from gateway.ingress.body import parse_json
from gateway.ingress.segops import to_spec
from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.harness import check_normalized
from tests.fuzz.strategies import event_bytes, json_text, json_values

segops_dicts = st.dictionaries(
    st.sampled_from(["user_id", "event_type", "occurred_at", "payload"]),
    json_values | st.text(max_size=300),
)
ROUTE_TYPES = st.sampled_from([None, "track", "identify", "page", "screen", "group", "alias"])
datetimes = st.datetimes(timezones=st.none() | st.just(UTC)) | st.sampled_from(
    [
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))),
        datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-14))),
        datetime(1, 1, 1, tzinfo=UTC),
    ]
)


@st.composite
def request_contexts(draw: Any) -> RequestContext:
    """What a request adds: batch-level sentAt, context and integrations, a client IP."""
    return RequestContext(
        source="web",
        received_at=datetime.now(UTC),
        client_ip=draw(st.none() | st.just("127.0.0.1") | st.text(max_size=8)),
        sent_at=draw(st.none() | datetimes.filter(_in_utc_range)),
        context=draw(st.none() | st.dictionaries(st.text(max_size=4), json_values, max_size=3)),
        integrations=draw(st.none() | st.dictionaries(st.text(max_size=4), json_values)),
        keep_messages=draw(st.booleans()),
    )


def _in_utc_range(value: datetime) -> bool:
    """Whether ``value`` converts to UTC (the batch handler refuses a sentAt that does not)."""
    try:
        format_timestamp(value)
    except OverflowError:
        return False
    return True


def parsed(body: bytes) -> Any:
    """``body`` decoded as the gateway decodes it, or None if it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


@fuzz_settings(ci_examples=400)
@given(body=json_text | event_bytes | st.binary())
def test_parse_json_refuses_only_with_400(body: bytes) -> None:
    """parse_json returns a value or raises the 400 "malformed JSON" refusal, nothing else."""
    try:
        parse_json(body)
    except RequestRejectedError as exc:
        refusal = (exc.status, exc.code)
    else:
        return
    assert refusal == (400, "invalid_request")


@fuzz_settings(ci_examples=400)
@given(body=event_bytes | json_text, route_type=ROUTE_TYPES, request=request_contexts())
def test_normalize_accepts_or_rejects(
    body: bytes, route_type: str | None, request: RequestContext
) -> None:
    """normalize() on any parsed JSON returns a well-formed event or raises
    EventRejectedError with a code and a message."""
    item = parsed(body)
    try:
        event = normalize(item, request, route_type=route_type)
    except EventRejectedError as exc:
        reason = (exc.code, exc.message)
    else:
        check_normalized(event)
        if request.keep_messages:
            assert event.message == orjson.loads(event.body)
        return
    assert all(reason), reason


@fuzz_settings(ci_examples=400)
@given(item=json_values | segops_dicts, request=request_contexts())
def test_segops_events_map_or_are_rejected(item: Any, request: RequestContext) -> None:
    """to_spec() then normalize() on any JSON value gives an event or EventRejectedError."""
    try:
        event_type, message = to_spec(item)
        event = normalize(message, request, route_type=event_type)
    except EventRejectedError as exc:
        code = exc.code
    else:
        check_normalized(event)
        return
    assert code


header_text = st.text() | st.builds(
    lambda scheme, value: f"{scheme} {value}",
    st.sampled_from(["Basic", "basic", "Bearer", "BEARER", "Digest", ""]),
    st.text() | st.binary(max_size=30).map(lambda b: __import__("base64").b64encode(b).decode()),
)


@fuzz_settings(ci_examples=800)
@given(header=header_text)
def test_auth_headers_parse_or_give_none(header: str) -> None:
    """The Basic and Bearer parsers return a string or None for any header, never raise, and
    any key they return (or any other text) looks up without raising."""
    ring = KeyRing([("test-write-key", "web")])
    for key in (basic_auth_key(header), bearer_key(header), header):
        assert key is None or isinstance(key, str)
        if key is not None:
            assert ring.source_for(key) in (None, "web")
