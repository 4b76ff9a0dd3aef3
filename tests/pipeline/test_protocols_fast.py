"""The tracking plan's fast path (fastjsonschema) never disagrees with jsonschema."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pipeline.protocols import ProtocolsOptions, TrackingPlan, TrackingPlanConfig

SCHEMA = {
    "type": "object",
    "properties": {
        "order_id": {"type": "string", "minLength": 2, "pattern": "^o-"},
        "total": {"type": "number", "minimum": 0},
        "count": {"type": "integer"},
        "gift": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "plan": {"enum": ["free", "pro"]},
        "address": {
            "type": "object",
            "properties": {"zip": {"type": "string"}},
            "required": ["zip"],
        },
    },
    "required": ["order_id"],
    "additionalProperties": True,
}
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(-5, 5, allow_nan=False),
    st.sampled_from(["o-1", "o", "x", "free", "pro"]),
    st.lists(st.sampled_from(["a", 1]), max_size=4),
    st.fixed_dictionaries({}, optional={"zip": st.sampled_from(["1", 2])}),
)
PROPERTIES = st.dictionaries(
    st.sampled_from(["order_id", "total", "count", "gift", "tags", "plan", "address", "x"]),
    VALUES,
)

OPTIONS = st.builds(
    ProtocolsOptions,
    unplanned_events=st.sampled_from(["allow", "block"]),
    unplanned_properties=st.sampled_from(["allow", "omit"]),
    violations=st.sampled_from(["allow", "omit", "block"]),
    forward_violations=st.booleans(),
)


def _plans() -> tuple[TrackingPlan, TrackingPlan]:
    config = TrackingPlanConfig.model_validate({"name": "p", "track": {"Buy": SCHEMA}})
    fast = TrackingPlan.compile(config)
    slow = TrackingPlan.compile(config)
    for schema in slow._track.values():
        object.__setattr__(schema, "fast", None)  # jsonschema alone
    return fast, slow


FAST, SLOW = _plans()


def test_fast_path_is_in_use() -> None:
    """A schema without ``format`` gets fastjsonschema's check; one with it does not."""
    assert FAST._track["Buy"].fast is not None
    config = TrackingPlanConfig.model_validate(
        {"name": "p", "track": {"Buy": {"type": "object", "properties": {
            "email": {"type": "string", "format": "email"}}}}}
    )  # fmt: skip
    assert TrackingPlan.compile(config)._track["Buy"].fast is None


@settings(max_examples=400, deadline=None)
@given(properties=PROPERTIES, options=OPTIONS)
def test_fast_and_slow_agree(properties: dict[str, Any], options: ProtocolsOptions) -> None:
    """For any properties and options, the plan with the fast path (and the quick return for a
    planned, valid message) finds exactly what jsonschema finds."""
    message = {"type": "track", "event": "Buy", "messageId": "m", "properties": properties}
    message["timestamp"] = "2026-01-01T00:00:00.000Z"  # forwarded violations copy it, not now()
    assert FAST.apply(message, options, source="web") == SLOW.apply(message, options, source="web")


def test_a_valid_message_with_an_unplanned_key_goes_the_long_way() -> None:
    """An undeclared key in otherwise valid properties is still found as unplanned."""
    message = {"type": "track", "event": "Buy", "messageId": "m", "timestamp": "t"}
    message["properties"] = {"order_id": "o-1", "x": 1}
    options = ProtocolsOptions(unplanned_properties="omit")

    result = FAST.apply(message, options, source="web")

    assert result == SLOW.apply(message, options, source="web")
    assert result.omitted == ("properties.x",)
