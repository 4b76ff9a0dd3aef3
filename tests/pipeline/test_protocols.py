"""Tests for gateway/pipeline/protocols.py: tracking plans (Segment Protocols, WIRE.md §4)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.errors import ConfigError
from gateway.pipeline.protocols import (
    ProtocolsOptions,
    TrackingPlan,
    TrackingPlanConfig,
    Violation,
)

ORDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "order_id": {"type": "string"},
        "price": {"type": "number"},
        "coupon": {"type": "string", "maxLength": 10},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
    "required": ["order_id"],
}
WEB_PLAN = TrackingPlan.compile(
    TrackingPlanConfig(
        name="web-plan",
        track={
            "Order Completed": ORDER_SCHEMA,
            "Signed Up": {"patternProperties": {"^utm_": {"type": "string"}}, "required": ["plan"]},
            "Tagged": {"items": {"type": "string"}},  # array keywords: a list payload may pass
        },
        identify={
            "properties": {
                "email": {"type": "string", "format": "email"},
                "age": {"type": "integer"},
            }
        },
        group={"properties": {"plan": {"enum": ["free", "pro"]}}, "required": ["plan"]},
        page={"properties": {"path": {"type": "string"}}},
        screen={"properties": {"title": {"type": "string"}}},
    )
)
# Only a common schema and one event: identify, group, page and screen are unplanned here.
APP_PLAN = TrackingPlan.compile(
    TrackingPlanConfig(
        name="app-plan",
        common={
            "required": ["context"],
            "properties": {
                "context": {
                    "properties": {
                        "app": {
                            "properties": {"version": {"type": "string"}},
                            "required": ["version"],
                        }
                    }
                }
            },
        },
        track={"Order Completed": {"properties": {"order_id": {"type": "string"}}}},
    )
)
PLANS = {"web": WEB_PLAN, "app": APP_PLAN}
ORDER = {"order_id": "o1", "price": 9.5}
APP_CONTEXT = {"app": {"version": "1.2.0"}}


def track(properties: Any = ORDER, event: str = "Order Completed", **extra: Any) -> dict[str, Any]:
    """A track message as ingress stores it."""
    return {
        "type": "track",
        "event": event,
        "userId": "u1",
        "messageId": "m-1",
        "properties": properties,
        **extra,
    }


def call(kind: str, payload: Any, **extra: Any) -> dict[str, Any]:
    """An identify/group (``traits``) or page/screen (``properties``) message."""
    key = "traits" if kind in ("identify", "group") else "properties"
    return {"type": kind, "userId": "u1", "messageId": "m-1", key: payload, **extra}


class Expect(NamedTuple):
    """What one apply should produce; ``payload`` is the result's properties or traits."""

    payload: Any
    violations: Sequence[tuple[str, str]] = ()  # (field, type) of result.violations
    recorded: Sequence[tuple[str, str]] = ()  # (field, type) in context.protocols.violations
    omitted: Sequence[str] = ()
    blocked: str | None = None


def blocked(reason: str, violations: list[tuple[str, str]]) -> Expect:
    """The expectation of a blocked message."""
    return Expect(None, violations, blocked=reason)


PRICE_TYPE = [("properties.price", "Invalid Type")]
BAD_PRICE = {"order_id": "o1", "price": "9.50"}
COLOR = {**ORDER, "color": "red"}
UNPLANNED_COLOR = [("properties.color", "Unplanned Property")]
MISSING_ID = [("properties.order_id", "Required")]

APPLY_CASES = [
    # Planned track events
    pytest.param("web", track(), {}, Expect(ORDER), id="planned-valid-passes"),
    pytest.param(
        "web",
        track(BAD_PRICE),
        {},
        Expect(BAD_PRICE, PRICE_TYPE, PRICE_TYPE),
        id="wrong-type-allowed-and-recorded",
    ),
    pytest.param(
        "web",
        track(BAD_PRICE),
        {"violations": "omit"},
        Expect({"order_id": "o1"}, PRICE_TYPE, omitted=["properties.price"]),
        id="wrong-type-omitted",
    ),
    pytest.param(
        "web",
        track(BAD_PRICE),
        {"violations": "block"},
        blocked("violation", PRICE_TYPE),
        id="wrong-type-blocked",
    ),
    pytest.param(
        "web",
        track({"price": 1}),
        {"violations": "omit"},
        Expect({"price": 1}, MISSING_ID, MISSING_ID),
        id="missing-required-cannot-be-omitted-so-kept",
    ),
    pytest.param(
        "web",
        track({"price": 1}),
        {"violations": "block"},
        blocked("violation", MISSING_ID),
        id="missing-required-blocked",
    ),
    pytest.param(
        "web",
        track({"order_id": "o1", "address": {"zip": "1000"}}),
        {"violations": "omit"},
        Expect(
            {"order_id": "o1"},
            [("properties.address.city", "Required")],
            omitted=["properties.address"],
        ),
        id="nested-violation-omits-its-top-level-property",
    ),
    pytest.param(
        "web",
        track({"order_id": "o1", "coupon": "X" * 11}),
        {},
        Expect(
            {"order_id": "o1", "coupon": "X" * 11},
            [("properties.coupon", "Invalid Value")],
            [("properties.coupon", "Invalid Value")],
        ),
        id="other-keyword-is-invalid-value",
    ),
    pytest.param(
        "web", track(None), {}, Expect(None, MISSING_ID, MISSING_ID), id="null-properties-is-empty"
    ),
    pytest.param(
        "web",
        track("oops"),
        {"violations": "omit"},
        Expect("oops", [("properties", "Invalid Type")], [("properties", "Invalid Type")]),
        id="non-object-properties-cannot-be-omitted",
    ),
    # Unplanned events
    pytest.param(
        "web",
        track({"a": 1}, event="Cart Viewed"),
        {"violations": "block"},
        Expect({"a": 1}, [("event", "Unplanned Event")], [("event", "Unplanned Event")]),
        id="unplanned-event-allowed-whatever-violations-says",
    ),
    pytest.param(
        "web",
        track({"a": 1}, event="Cart Viewed"),
        {"unplanned_events": "block"},
        blocked("unplanned_event", [("event", "Unplanned Event")]),
        id="unplanned-event-blocked",
    ),
    pytest.param(
        "app",
        call("identify", {"email": "a@b.c"}, context=APP_CONTEXT),
        {"unplanned_events": "block"},
        blocked("unplanned_event", [("type", "Unplanned Event")]),
        id="call-without-schema-is-unplanned",
    ),
    pytest.param(
        "web",
        {"type": "alias", "userId": "u1", "previousId": "a1", "messageId": "m-1"},
        {"unplanned_events": "block"},
        Expect(None),
        id="alias-is-never-unplanned",
    ),
    # Unplanned properties
    pytest.param(
        "web",
        track(COLOR),
        {},
        Expect(COLOR, UNPLANNED_COLOR, UNPLANNED_COLOR),
        id="unplanned-prop-allowed",
    ),
    pytest.param(
        "web",
        track(COLOR),
        {"unplanned_properties": "omit"},
        Expect(ORDER, UNPLANNED_COLOR, omitted=["properties.color"]),
        id="unplanned-prop-omitted",
    ),
    pytest.param(
        "web",
        track(COLOR),
        {"violations": "block"},
        Expect(COLOR, UNPLANNED_COLOR, UNPLANNED_COLOR),
        id="unplanned-prop-is-not-blocked-by-violations-block",
    ),
    pytest.param(
        "web",
        track({**BAD_PRICE, "color": "red"}),
        {"unplanned_properties": "omit", "violations": "omit"},
        Expect(
            {"order_id": "o1"},
            [*UNPLANNED_COLOR, *PRICE_TYPE],
            omitted=["properties.color", "properties.price"],
        ),
        id="unplanned-and-invalid-both-omitted",
    ),
    pytest.param(
        "web",
        track({"plan": "free", "utm_source": "ads"}, event="Signed Up"),
        {"unplanned_properties": "omit"},
        Expect(None),
        id="pattern-and-required-properties-are-planned",
    ),
    pytest.param(
        "web",
        track([1], event="Tagged"),
        {"violations": "omit"},
        Expect([1], [("properties.0", "Invalid Type")], [("properties.0", "Invalid Type")]),
        id="violation-inside-list-payload-cannot-be-omitted",
    ),
    # identify, group, page, screen
    pytest.param(
        "web", call("identify", {"email": "a@b.c", "age": 3}), {}, Expect(None), id="identify-valid"
    ),
    pytest.param(
        "web",
        call("identify", {"email": "nobody", "age": 3}),
        {"violations": "omit"},
        Expect({"age": 3}, [("traits.email", "Invalid Value")], omitted=["traits.email"]),
        id="identify-format-omitted",
    ),
    pytest.param(
        "web",
        call("identify", {"age": 3.5}),
        {"violations": "block"},
        blocked("violation", [("traits.age", "Invalid Type")]),
        id="identify-type-blocked",
    ),
    pytest.param(
        "web",
        call("group", {"size": 3}, groupId="g1"),
        {"unplanned_properties": "omit", "violations": "omit"},
        Expect(
            {},
            [("traits.size", "Unplanned Property"), ("traits.plan", "Required")],
            [("traits.plan", "Required")],
            ["traits.size"],
        ),
        id="group-required-trait-kept-unplanned-omitted",
    ),
    pytest.param(
        "web",
        call("group", {"plan": "gold"}, groupId="g1"),
        {},
        Expect(
            {"plan": "gold"}, [("traits.plan", "Invalid Value")], [("traits.plan", "Invalid Value")]
        ),
        id="group-enum-allowed",
    ),
    pytest.param(
        "web", call("page", {"path": "/"}, name="Home"), {}, Expect(None), id="page-valid"
    ),
    pytest.param(
        "web",
        call("page", {"path": 5}),
        {"violations": "block"},
        blocked("violation", [("properties.path", "Invalid Type")]),
        id="page-type-blocked",
    ),
    pytest.param(
        "web",
        call("screen", {"title": ["x"]}),
        {"violations": "omit"},
        Expect({}, [("properties.title", "Invalid Type")], omitted=["properties.title"]),
        id="screen-type-omitted",
    ),
    # Common schema
    pytest.param(
        "app", track({"order_id": "o1"}, context=APP_CONTEXT), {}, Expect(None), id="common-valid"
    ),
    pytest.param(
        "app",
        track({"order_id": "o1"}, context={"app": {"version": 3}}),
        {"violations": "omit"},
        Expect(None, [("context.app.version", "Common")], [("context.app.version", "Common")]),
        id="common-violation-cannot-be-omitted",
    ),
    pytest.param(
        "app",
        track({"order_id": "o1"}),
        {},
        Expect(None, [("context", "Common")], [("context", "Common")]),
        id="common-required-context",
    ),
    pytest.param(
        "app",
        track({"order_id": "o1"}, context={"app": {}}),
        {"violations": "block"},
        blocked("violation", [("context.app.version", "Common")]),
        id="common-violation-blocked",
    ),
]


@pytest.mark.parametrize(("plan", "message", "options", "expected"), APPLY_CASES)
def test_apply(
    plan: str, message: dict[str, Any], options: dict[str, Any], expected: Expect
) -> None:
    """Each option combination keeps, omits, records or blocks exactly as the table says."""
    before = copy.deepcopy(message)
    result = PLANS[plan].apply(message, ProtocolsOptions(**options), source="web")
    assert message == before
    assert [(v.field, v.type) for v in result.violations] == list(expected.violations)
    assert result.blocked_reason == expected.blocked
    assert result.omitted == tuple(expected.omitted)
    assert result.extra_messages == ()
    if expected.blocked:
        assert result.message is None
        return
    assert result.message is not None
    key = "traits" if message["type"] in ("identify", "group") else "properties"
    if expected.payload is not None:
        assert result.message[key] == expected.payload
    else:
        assert result.message.get(key) == message.get(key)
    protocols = result.message.get("context", {}).get("protocols")
    if not expected.recorded and not expected.omitted:
        assert result.message is message
        return
    assert protocols["tracking_plan"] == PLANS[plan].name
    assert protocols.get("omitted", []) == list(expected.omitted)
    recorded = protocols.get("violations", [])
    assert [(v["field"], v["type"]) for v in recorded] == list(expected.recorded)
    assert all(set(v) == {"field", "type", "description"} for v in recorded)


def test_valid_planned_event_is_returned_without_copying() -> None:
    """A valid planned event comes back as the very same dict, context untouched."""
    message = track(context={"library": {"name": "analytics-python"}})
    result = WEB_PLAN.apply(message, ProtocolsOptions(violations="omit"), source="web")
    assert result.message is message
    assert "protocols" not in message["context"]


def test_annotation_keeps_the_rest_of_context() -> None:
    """context.protocols is added beside the original context keys, which stay as they were."""
    message = track(BAD_PRICE, context={"library": {"name": "x"}, "protocols": "spoofed"})
    result = WEB_PLAN.apply(message, ProtocolsOptions(), source="web")
    assert result.message is not None
    context = result.message["context"]
    assert context["library"] == {"name": "x"}
    assert context["protocols"] == {
        "tracking_plan": "web-plan",
        "violations": [
            {
                "field": "properties.price",
                "type": "Invalid Type",
                "description": "'9.50' is not of type 'number'",
            }
        ],
    }
    assert message["context"]["protocols"] == "spoofed"


def test_forwarded_violations_are_exact_and_deterministic() -> None:
    """Each violation becomes one Violation Generated track, its messageId stable across retries."""
    message = track(
        {**BAD_PRICE, "color": "red"},
        anonymousId="a1",
        timestamp="2024-05-01T10:00:00.000Z",
        originalTimestamp="2024-05-01T09:59:59.000Z",
        sentAt="2024-05-01T10:00:01.000Z",
        receivedAt="2024-05-01T10:00:02.000Z",
        context={"library": {"name": "analytics.js", "version": "2.1"}, "ip": "10.0.0.1"},
    )
    options = ProtocolsOptions(
        unplanned_properties="omit", violations="omit", forward_violations=True
    )
    first = WEB_PLAN.apply(message, options, source="web")
    common = {
        "type": "track",
        "event": "Violation Generated",
        "userId": "u1",
        "anonymousId": "a1",
        "timestamp": "2024-05-01T10:00:00.000Z",
        "originalTimestamp": "2024-05-01T09:59:59.000Z",
        "sentAt": "2024-05-01T10:00:01.000Z",
        "receivedAt": "2024-05-01T10:00:02.000Z",
        "context": {
            "protocols": {"tracking_plan": "web-plan"},
            "library": {"name": "analytics.js", "version": "2.1"},
        },
    }
    about = {
        "eventName": "Order Completed",
        "eventType": "track",
        "eventMessageID": "m-1",
        "trackingPlanName": "web-plan",
        "sourceName": "web",
    }
    assert first.extra_messages == (
        {
            **common,
            "messageId": "m-1-violation-0",
            "properties": {
                **about,
                "violationField": "properties.color",
                "violationType": "Unplanned Property",
                "violationDescription": "'color' is not declared in the plan",
            },
        },
        {
            **common,
            "messageId": "m-1-violation-1",
            "properties": {
                **about,
                "violationField": "properties.price",
                "violationType": "Invalid Type",
                "violationDescription": "'9.50' is not of type 'number'",
            },
        },
    )
    assert WEB_PLAN.apply(message, options, source="web").extra_messages == first.extra_messages


@pytest.mark.parametrize(
    ("message", "options", "expected_ids", "event_name"),
    [
        pytest.param(
            track(BAD_PRICE),
            {"violations": "block"},
            ["m-1-violation-0"],
            "Order Completed",
            id="blocked-still-forwards",
        ),
        pytest.param(
            track(event="Nope"),
            {"unplanned_events": "block"},
            ["m-1-violation-0"],
            "Nope",
            id="unplanned-event-forwards",
        ),
        pytest.param(
            call("page", {"path": 1}, name="Home"),
            {},
            ["m-1-violation-0"],
            "Home",
            id="page-uses-name",
        ),
        pytest.param(
            call("identify", {"age": "x"}), {}, ["m-1-violation-0"], None, id="identify-has-no-name"
        ),
        pytest.param(track(), {}, [], "Order Completed", id="valid-forwards-nothing"),
    ],
)
def test_forwarding_whatever_the_action(
    message: dict[str, Any],
    options: dict[str, Any],
    expected_ids: list[str],
    event_name: str | None,
) -> None:
    """Every violation is forwarded whether the event is allowed, omitted or blocked."""
    result = WEB_PLAN.apply(
        message, ProtocolsOptions(forward_violations=True, **options), source="web"
    )
    assert [m["messageId"] for m in result.extra_messages] == expected_ids
    assert all(m["properties"]["eventName"] == event_name for m in result.extra_messages)
    assert all("library" not in m["context"] for m in result.extra_messages)


def test_forwarding_without_message_id_or_timestamp_fills_them() -> None:
    """A message without messageId or timestamp still yields forwardable, timestamped violations."""
    message = track(BAD_PRICE)
    del message["messageId"]
    result = WEB_PLAN.apply(message, ProtocolsOptions(forward_violations=True), source="web")
    (forwarded,) = result.extra_messages
    assert forwarded["messageId"].startswith("api-")
    assert forwarded["messageId"].endswith("-violation-0")
    assert forwarded["timestamp"].endswith("Z")
    assert forwarded["properties"]["eventMessageID"] is None


def test_violations_are_capped_at_twenty() -> None:
    """A payload with many problems reports, records and forwards at most 20 violations."""
    message = track({"order_id": "o1", **{f"extra_{i}": i for i in range(30)}})
    result = WEB_PLAN.apply(message, ProtocolsOptions(forward_violations=True), source="web")
    assert result.message is not None
    assert len(result.violations) == 20
    assert len(result.message["context"]["protocols"]["violations"]) == 20
    assert len(result.extra_messages) == 20


def test_omit_still_removes_every_offender_beyond_the_cap() -> None:
    """The cap limits reporting only: every unplanned property is omitted."""
    message = track({"order_id": "o1", **{f"extra_{i}": i for i in range(30)}})
    result = WEB_PLAN.apply(message, ProtocolsOptions(unplanned_properties="omit"), source="web")
    assert result.message is not None
    assert result.message["properties"] == {"order_id": "o1"}
    assert len(result.omitted) == 30


def test_descriptions_are_truncated() -> None:
    """A violation description never exceeds 300 characters, however large the value."""
    result = WEB_PLAN.apply(track({"order_id": "x" * 5000}), ProtocolsOptions(), source="web")
    assert result.violations == ()
    result = WEB_PLAN.apply(track({"order_id": ["x" * 5000]}), ProtocolsOptions(), source="web")
    (violation,) = result.violations
    assert violation.type == "Invalid Type"
    assert len(violation.description) == 300


def test_deeply_nested_payload_on_recursive_schema_is_a_violation() -> None:
    """A recursive schema meeting a very deep payload reports a violation instead of raising."""
    plan = TrackingPlan.compile(
        TrackingPlanConfig(name="tree", track={"Tree": {"properties": {"child": {"$ref": "#"}}}})
    )
    deep: dict[str, Any] = {}
    for _ in range(5000):
        deep = {"child": deep}
    result = plan.apply(track(deep, event="Tree"), ProtocolsOptions(violations="block"), source="s")
    assert result.blocked_reason == "violation"
    assert result.violations == (
        Violation("properties", "Invalid Value", "cannot be validated: RecursionError"),
    )


CONFIG_ERROR_CASES = [
    pytest.param(
        {"track": {"Order Completed": {"properties": {"price": {"type": "strin"}}}}},
        'tracking_plans[web-plan].track["Order Completed"].properties.price.type: ',
        id="bad-type-keyword",
    ),
    pytest.param(
        {"identify": {"required": "email"}},
        "tracking_plans[web-plan].identify.required: 'email' is not of type 'array'",
        id="required-not-a-list",
    ),
    pytest.param(
        {"group": {"patternProperties": {"[": {}}}},
        "tracking_plans[web-plan].group.patternProperties: '[' is not a 'regex'",
        id="bad-regex",
    ),
    pytest.param(
        {"page": {"properties": {"x": {"$ref": "#/definitions/missing"}}}},
        "tracking_plans[web-plan].page: $ref '#/definitions/missing' does not resolve",
        id="dangling-ref",
    ),
    pytest.param(
        {"common": {"$ref": "https://example.com/schema.json"}},
        "tracking_plans[web-plan].common: $ref 'https://example.com/schema.json' does not resolve",
        id="remote-ref",
    ),
    pytest.param(
        {"screen": {"type": "array"}},
        'tracking_plans[web-plan].screen.type: must allow "object"',
        id="schema-not-of-an-object",
    ),
    pytest.param(
        {"track": {" ": {}}},
        'tracking_plans[web-plan].track[" "]: an event name must not be empty',
        id="blank-event-name",
    ),
]


@pytest.mark.parametrize(("fields", "expected"), CONFIG_ERROR_CASES)
def test_bad_plan_is_a_config_error(fields: dict[str, Any], expected: str) -> None:
    """compile raises ConfigError naming the plan and the key path of the problem."""
    with pytest.raises(ConfigError) as info:
        TrackingPlan.compile(TrackingPlanConfig(name="web-plan", **fields))
    (problem,) = info.value.problems
    assert problem.startswith(expected), problem


def test_every_bad_schema_is_reported_at_once() -> None:
    """compile lists every invalid schema, not just the first."""
    config = TrackingPlanConfig(
        name="web-plan", track={"A": {"type": 1}, "B": {"type": "object"}}, page={"type": "string"}
    )
    with pytest.raises(ConfigError) as info:
        TrackingPlan.compile(config)
    assert [p.split(":")[0] for p in info.value.problems] == [
        'tracking_plans[web-plan].track["A"].type',
        "tracking_plans[web-plan].page.type",
    ]


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        pytest.param(TrackingPlanConfig, {"name": "web plan!"}, id="plan-name-pattern"),
        pytest.param(TrackingPlanConfig, {"name": "p", "tracks": {}}, id="plan-unknown-key"),
        pytest.param(
            TrackingPlanConfig, {"name": "p", "track": {"A": []}}, id="plan-schema-not-object"
        ),
        pytest.param(ProtocolsOptions, {"violations": "drop"}, id="options-unknown-action"),
        pytest.param(ProtocolsOptions, {"unplanned_properties": "block"}, id="options-omit-only"),
        pytest.param(ProtocolsOptions, {"forward": True}, id="options-unknown-key"),
    ],
)
def test_bad_config_models_are_rejected(model: type[Any], fields: dict[str, Any]) -> None:
    """The config models reject bad names, unknown keys and unknown actions."""
    with pytest.raises(ValidationError):
        model(**fields)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
PAYLOAD = st.one_of(
    JSON,
    st.dictionaries(
        st.sampled_from(["order_id", "price", "address", "email", "age", "plan", "utm_x", "color"]),
        JSON,
        max_size=5,
    ),
)
MESSAGES = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["track", "identify", "group", "page", "screen", "alias"]) | JSON,
        "event": st.sampled_from(["Order Completed", "Signed Up", "Other"]) | JSON,
        "properties": PAYLOAD,
        "traits": PAYLOAD,
        "context": JSON | st.fixed_dictionaries({"app": JSON, "library": JSON}),
        "messageId": st.text(max_size=8) | JSON,
        "userId": JSON,
        "name": JSON,
        "timestamp": JSON,
    },
)
OPTIONS = st.builds(
    ProtocolsOptions,
    unplanned_events=st.sampled_from(["allow", "block"]),
    unplanned_properties=st.sampled_from(["allow", "omit"]),
    violations=st.sampled_from(["allow", "omit", "block"]),
    forward_violations=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(plan=st.sampled_from([WEB_PLAN, APP_PLAN]), message=MESSAGES, options=OPTIONS)
def test_apply_never_raises(
    plan: TrackingPlan, message: dict[str, Any], options: ProtocolsOptions
) -> None:
    """apply on any JSON-like message returns a dict or None, and leaves its input alone."""
    before = copy.deepcopy(message)
    result = plan.apply(message, options, source="fuzz")
    assert message == before
    assert result.message is None or isinstance(result.message, dict)
    assert (result.message is None) == (result.blocked_reason is not None)
    assert len(result.extra_messages) == (
        len(result.violations) if options.forward_violations else 0
    )
