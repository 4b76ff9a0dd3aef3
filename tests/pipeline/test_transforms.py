"""Tests for gateway/pipeline/transforms.py: transformations with Segment's semantics."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.errors import ConfigError, FqlEvaluationError
from gateway.pipeline.transforms import (
    Transform,
    TransformationConfig,
    Transformations,
    TransformResult,
)

# sha256("a@b.c"), computed independently (printf 'a@b.c' | sha256sum).
SHA256_A_B_C = "d648b243a3e817eaa3309e00e183483f2867baadf522099f0c2121770536b25a"

TRACK: dict[str, Any] = {
    "type": "track",
    "event": "Order Completed",
    "messageId": "m-1",
    "userId": "u1",
    "anonymousId": "a1",
    "properties": {"plan": "PRO", "email": "a@b.c", "price": 10, "address": {"city": "X"}},
    "context": {"ip": "1.2.3.4", "traits": {"email": " A@B.c "}},
}
IDENTIFY: dict[str, Any] = {
    "type": "identify",
    "messageId": "m-2",
    "userId": "u1",
    "traits": {"email": "a@b.c", "plan": "PRO", "userId": "old"},
}


def compile_transformations(
    *configs: dict[str, Any], named: Mapping[str, Transform] | None = None
) -> Transformations:
    """Validate ``configs`` as the config loader would and compile them."""
    models = [TransformationConfig.model_validate(c) for c in configs]
    return Transformations.compile(models, named)


def with_(message: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """``message`` with top-level ``changes``."""
    return {**message, **changes}


def props(**changes: Any) -> dict[str, Any]:
    """TRACK with its properties updated by ``changes``; a value of ... removes the key."""
    merged = {**TRACK["properties"], **changes}
    return with_(TRACK, properties={k: v for k, v in merged.items() if v is not ...})


ACTION_CASES = [
    pytest.param({"drop": True}, TRACK, None, "dropped", id="drop"),
    pytest.param(
        {"new_event_name": "Purchase"},
        TRACK,
        with_(TRACK, event="Purchase"),
        "transformed",
        id="new-event-name",
    ),
    pytest.param(
        {"new_event_name": "Purchase"},
        IDENTIFY,
        IDENTIFY,
        "transformed",
        id="new-event-name-only-for-track",
    ),
    pytest.param(
        {"property_renames": {"plan": "tier"}},
        TRACK,
        props(plan=..., tier="PRO"),
        "transformed",
        id="rename",
    ),
    pytest.param(
        {"property_renames": {"address.city": "city"}},
        TRACK,
        props(address={}, city="X"),
        "transformed",
        id="rename-nested-to-top",
    ),
    pytest.param(
        {"property_renames": {"plan": "billing.plan"}},
        TRACK,
        props(plan=..., billing={"plan": "PRO"}),
        "transformed",
        id="rename-into-new-object",
    ),
    pytest.param(
        {"property_renames": {"email": "price.email"}},
        TRACK,
        TRACK,
        "transformed",
        id="rename-blocked-by-non-object-keeps-old",
    ),
    pytest.param(
        {"property_renames": {"missing": "x"}}, TRACK, TRACK, "transformed", id="rename-missing"
    ),
    pytest.param(
        {"property_renames": {"userId": "previous_user"}},
        IDENTIFY,
        with_(IDENTIFY, traits={"email": "a@b.c", "plan": "PRO", "previous_user": "old"}),
        "transformed",
        id="rename-in-traits-never-top-level-userId",
    ),
    pytest.param(
        {"property_value_transformations": {"plan": "lowercase(properties.plan)"}},
        TRACK,
        props(plan="pro"),
        "transformed",
        id="value-fql-function",
    ),
    pytest.param(
        {"property_value_transformations": {"source": "'web'", "address.zip": "42"}},
        TRACK,
        props(source="web", address={"city": "X", "zip": 42}),
        "transformed",
        id="value-literals-and-nested",
    ),
    pytest.param(
        {"property_value_transformations": {"plan": "lowercase(traits.plan)"}},
        IDENTIFY,
        with_(IDENTIFY, traits={**IDENTIFY["traits"], "plan": "pro"}),
        "transformed",
        id="value-in-traits",
    ),
    pytest.param(
        {"property_value_transformations": {"name": "event"}},
        {"type": "track", "event": "E"},
        {"type": "track", "event": "E", "properties": {"name": "E"}},
        "transformed",
        id="value-creates-missing-properties",
    ),
    pytest.param(
        {"property_value_transformations": {"x": "properties.missing"}},
        TRACK,
        props(x=None),
        "transformed",
        id="value-null-is-set",
    ),
    pytest.param(
        {"drop_properties": ["email", "address.city", "missing"]},
        TRACK,
        props(email=..., address={}),
        "transformed",
        id="drop-properties",
    ),
    pytest.param(
        {"allow_properties": ["plan", "address.city", "missing"]},
        TRACK,
        with_(TRACK, properties={"plan": "PRO", "address": {"city": "X"}}),
        "transformed",
        id="allow-properties",
    ),
    pytest.param(
        {"allow_properties": []},
        TRACK,
        with_(TRACK, properties={}),
        "transformed",
        id="allow-nothing",
    ),
    pytest.param(
        {"allow_properties": ["email"]},
        IDENTIFY,
        with_(IDENTIFY, traits={"email": "a@b.c"}),
        "transformed",
        id="allow-in-traits",
    ),
    pytest.param(
        {"hash_properties": ["properties.email", "context.traits.email", "properties.price"]},
        TRACK,
        with_(
            props(email=SHA256_A_B_C, price=hashlib.sha256(b"10").hexdigest()),
            context={"ip": "1.2.3.4", "traits": {"email": SHA256_A_B_C}},
        ),
        "transformed",
        id="hash-strings-lowercased-stripped-and-numbers",
    ),
    pytest.param(
        {"hash_properties": ["traits.email", "traits.missing", "userId"]},
        IDENTIFY,
        with_(
            IDENTIFY,
            userId=hashlib.sha256(b"u1").hexdigest(),
            traits={**IDENTIFY["traits"], "email": SHA256_A_B_C},
        ),
        "transformed",
        id="hash-traits-and-top-level-id",
    ),
    pytest.param(
        {"hash_properties": ["properties.none"]},
        {"type": "track", "properties": {"none": None}},
        {"type": "track", "properties": {"none": None}},
        "transformed",
        id="hash-leaves-null",
    ),
    pytest.param(
        {"if": "event = 'Signed Up'", "drop": True}, TRACK, TRACK, "passed", id="if-not-matching"
    ),
    pytest.param(
        {"drop_properties": ["email"]},
        {"type": "alias", "userId": "u", "previousId": "p"},
        {"type": "alias", "userId": "u", "previousId": "p"},
        "transformed",
        id="no-properties-for-alias",
    ),
]


@pytest.mark.parametrize(("config", "message", "expected", "outcome"), ACTION_CASES)
def test_each_action(
    config: dict[str, Any],
    message: dict[str, Any],
    expected: dict[str, Any] | None,
    outcome: str,
) -> None:
    """Each action gives its result, and the input is never mutated."""
    before = copy.deepcopy(message)
    result = compile_transformations({"name": "t", **config}).apply(message)
    assert (result.message, result.outcome) == (expected, outcome)
    assert message == before


def test_nothing_applies_returns_the_same_object() -> None:
    """When no condition matches, the result holds the input object itself."""
    result = compile_transformations({"name": "t", "if": "type = 'page'", "drop": True}).apply(
        TRACK
    )
    assert result == TransformResult(TRACK, None, (), "passed")
    assert result.message is TRACK


def upper_plan(message: dict[str, Any]) -> dict[str, Any]:
    """A named transform that adds ``properties.Plan`` and ``properties.secret``."""
    message["properties"]["Plan"] = "Enterprise"
    message["properties"]["secret"] = "s"
    return message


def test_actions_run_in_the_fixed_order() -> None:
    """python, new_event_name, renames, values, drop, allow and hash run in that order."""
    config = {
        "name": "all",
        # Listed backwards on purpose: the order is fixed, not the listing order.
        "hash_properties": ["properties.email", "properties.plan"],
        "allow_properties": ["plan", "email", "secret", "label"],
        "drop_properties": ["secret"],
        "property_value_transformations": {"plan": "lowercase(properties.plan)", "label": "event"},
        "property_renames": {"Plan": "plan"},
        "new_event_name": "Purchase",
        "python": "upper_plan",
    }
    result = compile_transformations(config, named={"upper_plan": upper_plan}).apply(TRACK)
    assert result.message == with_(
        TRACK,
        event="Purchase",
        properties={
            "plan": hashlib.sha256(b"enterprise").hexdigest(),
            "email": SHA256_A_B_C,
            "label": "Purchase",
        },
    )
    assert (result.outcome, result.applied) == ("transformed", ("all",))


def test_drop_runs_before_python() -> None:
    """drop wins over a python transform that would have failed: it never runs."""

    def explode(message: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("must not run")

    result = compile_transformations(
        {"name": "t", "drop": True, "python": "explode"}, named={"explode": explode}
    ).apply(TRACK)
    assert (result.outcome, result.rule) == ("dropped", "t")


def test_transformations_run_in_listing_order_on_the_result() -> None:
    """A later transformation's condition and values see what the earlier ones did."""
    transformations = compile_transformations(
        {"name": "rename", "new_event_name": "Purchase"},
        {"name": "skip", "if": "event = 'Order Completed'", "drop": True},
        {
            "name": "tag",
            "if": "event = 'Purchase'",
            "property_value_transformations": {"e": "event"},
        },
        {"name": "drop", "if": "properties.e = 'Purchase'", "drop": True},
    )
    result = transformations.apply(TRACK)
    assert result == TransformResult(None, "drop", ("rename", "tag"), "dropped")


@pytest.mark.parametrize(
    ("transform", "outcome", "error"),
    [
        pytest.param(lambda m: None, "dropped", None, id="returns-none-drops"),
        pytest.param(
            lambda m: 1 / 0,
            "transform_error",
            "python transform raised ZeroDivisionError",
            id="raises",
        ),
        pytest.param(
            lambda m: [m],
            "transform_error",
            "python transform returned list; return a dict or None",
            id="returns-non-dict",
        ),
    ],
)
def test_named_transform_outcomes(transform: Transform, outcome: str, error: str | None) -> None:
    """None drops the event; raising or returning a non-dict fails closed as transform_error."""
    transformations = compile_transformations(
        {"name": "first", "new_event_name": "Purchase"},
        {"name": "py", "python": "f"},
        named={"f": transform},
    )
    result = transformations.apply(TRACK)
    assert (result.message, result.outcome, result.rule) == (None, outcome, "py")
    assert result.applied == ("first",)
    assert result.error == error


def test_named_transform_gets_a_copy() -> None:
    """A named transform may change its argument in place without touching the input."""

    def scrub(message: dict[str, Any]) -> dict[str, Any]:
        message["context"]["traits"].clear()
        message["properties"]["address"]["city"] = "?"
        return message

    before = copy.deepcopy(TRACK)
    result = compile_transformations({"name": "t", "python": "scrub"}, named={"scrub": scrub})
    assert result.apply(TRACK).message is not None
    assert before == TRACK


def test_unknown_named_transform_lists_the_available_names() -> None:
    """A python name no plugin registers is a ConfigError naming what is available."""
    with pytest.raises(ConfigError) as info:
        compile_transformations(
            {"name": "t", "python": "redact"}, named={"b": upper_plan, "a": upper_plan}
        )
    assert info.value.problems == [
        "transformation 't': python: no transform is named 'redact'; available: a, b"
    ]
    with pytest.raises(ConfigError, match="available: none"):
        compile_transformations({"name": "t", "python": "redact"})


def test_evaluation_error_fails_closed() -> None:
    """An FQL value that cannot be computed drops the event as transform_error."""
    result = compile_transformations(
        {"name": "t", "property_value_transformations": {"p": "lowercase(properties.price)"}}
    ).apply(TRACK)
    assert (result.message, result.outcome, result.rule) == (None, "transform_error", "t")
    assert result.error is not None
    assert "lowercase() at position 0" in result.error


def test_condition_error_fails_closed() -> None:
    """A condition that cannot be evaluated drops the event as transform_error."""
    result = compile_transformations(
        {"name": "t", "if": "uppercase(properties.address) = 'X'", "drop_properties": ["a"]}
    ).apply(TRACK)
    assert (result.outcome, result.rule) == ("transform_error", "t")


def test_bad_fql_is_rejected_with_name_and_position() -> None:
    """Bad FQL in a condition or a value is a ConfigError naming the field and the position."""
    with pytest.raises(ConfigError) as info:
        compile_transformations(
            {"name": "cond", "if": "event = ", "drop": True},
            {"name": "value", "property_value_transformations": {"p": "lowercase(event"}},
        )
    assert info.value.problems == [
        "transformation 'cond': if: FQL syntax error at position 8: expected a value, found the"
        " end of the expression (in: event = )",
        "transformation 'value': property_value_transformations.p: FQL syntax error at position"
        " 15: expected ',' or ')' (in: lowercase(event)",
    ]


def test_duplicate_names_are_rejected() -> None:
    """Two transformations with one name are a ConfigError."""
    with pytest.raises(ConfigError, match="two transformations are named 't'"):
        compile_transformations({"name": "t", "drop": True}, {"name": "t", "drop": True})


@pytest.mark.parametrize(
    ("config", "error"),
    [
        pytest.param({}, "at least one of", id="no-action"),
        pytest.param({"drop": False, "property_renames": {}}, "at least one of", id="empty"),
        pytest.param({"property_renames": {"properties.userId": "x"}}, "relative", id="abs-old"),
        pytest.param({"property_renames": {"a": "traits.b"}}, "relative", id="abs-new"),
        pytest.param({"property_renames": {"a": "c", "b": "c"}}, "same name", id="same-target"),
        pytest.param({"property_renames": {"a..b": "c"}}, "field path", id="bad-path"),
        pytest.param({"drop_properties": ["context.ip"]}, "relative", id="drop-absolute"),
        pytest.param({"allow_properties": ["properties.a"]}, "relative", id="allow-absolute"),
        pytest.param(
            {"property_value_transformations": {"properties.a": "1"}}, "relative", id="value-abs"
        ),
        pytest.param({"hash_properties": ["messageId"]}, "cannot hash", id="hash-message-id"),
        pytest.param({"new_event_name": ""}, "at least 1 character", id="empty-event-name"),
        pytest.param({"drop": True, "rename": {}}, "Extra inputs", id="extra"),
    ],
)
def test_invalid_configs_are_rejected(config: dict[str, Any], error: str) -> None:
    """Configs with no action, absolute or malformed paths, or unknown keys fail validation."""
    with pytest.raises(ValidationError, match=error):
        TransformationConfig.model_validate({"name": "t", **config})


def test_if_is_read_by_alias_and_by_name() -> None:
    """``if`` is the config key; ``if_`` works from Python; the default is ``all``."""
    by_alias = TransformationConfig.model_validate({"name": "t", "if": "x = 1", "drop": True})
    assert by_alias == TransformationConfig(name="t", if_="x = 1", drop=True)
    assert TransformationConfig(name="t", drop=True).if_ == "all"
    assert TransformationConfig(name="t", allow_properties=[]).allow_properties == []


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=20,
)
TYPES = st.sampled_from(["track", "identify", "group", "page", "alias"]) | JSON
KEYS = st.sampled_from(["userId", "messageId", "event", "properties", "traits", "context"])
MESSAGES = st.fixed_dictionaries({"type": TYPES}, optional={"x": JSON}).flatmap(
    lambda base: st.dictionaries(KEYS | st.text(max_size=5), JSON, max_size=6).map(
        lambda extra: {**extra, **base}
    )
)
FIXED = compile_transformations(
    {"name": "n", "if": "typeof(event) = 'string'", "new_event_name": "E"},
    {"name": "r", "property_renames": {"a": "b.c", "b": "d"}},
    {"name": "v", "property_value_transformations": {"l": "length(properties.tags)", "k": "'k'"}},
    {"name": "d", "drop_properties": ["x", "y.z"]},
    {"name": "a", "if": "contains(userId, 'u')", "allow_properties": ["k", "b.c"]},
    {"name": "h", "hash_properties": ["traits.email", "context.traits.email", "userId"]},
    {"name": "p", "python": "noop"},
    named={"noop": lambda message: message},
)


@settings(max_examples=200)
@given(message=MESSAGES)
def test_apply_never_raises_or_mutates(message: dict[str, Any]) -> None:
    """On any JSON-like message, apply returns a result and leaves the input as it was."""
    before = copy.deepcopy(message)
    result = FIXED.apply(message)
    assert result.outcome in ("passed", "transformed", "dropped", "transform_error")
    assert (result.message is None) == (result.outcome in ("dropped", "transform_error"))
    assert repr(message) == repr(before)  # repr: NaN != NaN would defeat ==


JSON_KEYS = st.sampled_from(["a", "b", "c", "d", "x", "y", "z", "k", "email", "traits", "plan"])
JSON_ONLY = st.recursive(  # what a decoded message can hold: no NaN, no infinity
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(JSON_KEYS | st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=16,
)
SHAPED = st.fixed_dictionaries(
    {"type": st.sampled_from(["track", "identify", "group", "page", "alias"])},
    optional={key: JSON_ONLY for key in ["userId", "event", "properties", "traits", "context"]},
)
COPY_ON_WRITE = [  # no python transform and no computed values: these copy what they change
    {"name": "n", "if": "typeof(event) = 'string'", "new_event_name": "E"},
    {"name": "r", "property_renames": {"a": "b.c", "b": "d"}},
    {"name": "r1", "property_renames": {"plan": "tier", "x": "y"}},
    {"name": "d", "drop_properties": ["x", "y.z"]},
    {"name": "d1", "drop_properties": ["x", "email"]},
    {"name": "a", "if": "contains(userId, 'u')", "allow_properties": ["k", "b.c"]},
    {"name": "a1", "allow_properties": ["k", "a"]},
    {"name": "h", "hash_properties": ["traits.email", "context.traits.email", "userId"]},
    {"name": "h1", "hash_properties": ["properties.a.b", "properties.email"]},
]


@settings(max_examples=300, deadline=None)
@given(
    message=SHAPED,
    configs=st.lists(
        st.sampled_from(COPY_ON_WRITE), min_size=1, max_size=4, unique_by=lambda c: c["name"]
    ),
)
def test_copying_what_changes_equals_changing_a_deep_copy(
    message: dict[str, Any], configs: list[dict[str, Any]]
) -> None:
    """Transformations that copy only the objects they change give what they would give
    changing a deep copy of the whole message, and leave the input as it was."""
    transformations = compile_transformations(*configs)
    before = copy.deepcopy(message)

    result = transformations.apply(message)

    expected: dict[str, Any] | None = copy.deepcopy(message)
    for t in transformations._transformations:
        try:
            if expected is not None and t.condition.matches(expected):
                expected = t.run(expected, private=True)
        except FqlEvaluationError:
            expected = None  # fails closed
    assert result.message == expected
    assert message == before


def test_a_transformation_that_changes_nothing_returns_the_input_and_counts_as_applied() -> None:
    """Hashing a missing field changes nothing: the very input comes back, still "transformed"."""
    transformations = compile_transformations(
        {"name": "h", "hash_properties": ["context.traits.phone"]},
        {"name": "n", "new_event_name": "Order Completed"},
    )

    result = transformations.apply(TRACK)

    assert result.message is TRACK
    assert result.applied == ("h", "n")
    assert result.outcome == "transformed"
