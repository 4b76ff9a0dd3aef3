"""Tests for gateway/pipeline/filters.py: destination filters with Segment's semantics."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.errors import ConfigError
from gateway.pipeline.filters import (
    PROTECTED_FIELDS,
    DestinationFilterConfig,
    DestinationFilters,
    FilterResult,
    split_path,
)

MESSAGE: dict[str, Any] = {
    "type": "track",
    "event": "Order Completed",
    "messageId": "m-1",
    "userId": "u1",
    "anonymousId": "a1",
    "timestamp": "2024-01-01T00:00:00Z",
    "sentAt": "2024-01-01T00:00:01Z",
    "properties": {"plan": "pro", "email": "a@b.c", "price": 10, "address": {"city": "X"}},
    "context": {"ip": "1.2.3.4", "traits": {"email": "a@b.c", "name": "A"}},
    "integrations": {"All": True},
}


def compile_filters(
    *configs: dict[str, Any], random: Callable[[], float] = lambda: 0.5
) -> DestinationFilters:
    """Validate ``configs`` as the config loader would and compile them."""
    models = [DestinationFilterConfig.model_validate(c) for c in configs]
    return DestinationFilters.compile(models, random=random)


def without(obj: dict[str, Any], *keys: str) -> dict[str, Any]:
    """``obj`` minus ``keys``."""
    return {k: v for k, v in obj.items() if k not in keys}


def edited(**changes: Any) -> dict[str, Any]:
    """MESSAGE with top-level ``changes``; a value of None removes the key."""
    result = {**MESSAGE, **changes}
    return {k: v for k, v in result.items() if v is not None}


ACTION_CASES = [
    pytest.param([{"name": "f", "drop": True}], "dropped", "f", None, id="drop-all"),
    pytest.param(
        [{"name": "f", "if": "event = 'Order Completed'", "drop": True}],
        "dropped",
        "f",
        None,
        id="drop-matching",
    ),
    pytest.param(
        [{"name": "f", "if": "event = 'Signed Up'", "drop": True}],
        "passed",
        None,
        MESSAGE,
        id="drop-not-matching",
    ),
    pytest.param(
        [{"name": "f", "if": "properties.plan = 'pro'", "only_send": True}],
        "passed",
        None,
        MESSAGE,
        id="only-send-matching",
    ),
    pytest.param(
        [{"name": "f", "if": "properties.plan = 'free'", "only_send": True}],
        "dropped",
        "f",
        None,
        id="only-send-not-matching",
    ),
    pytest.param(
        [
            {
                "name": "f",
                "drop_properties": {
                    "properties": ["email", "missing"],
                    "context": ["ip"],
                    "": ["integrations"],
                },
            }
        ],
        "passed",
        None,
        edited(
            properties=without(MESSAGE["properties"], "email"),
            context=without(MESSAGE["context"], "ip"),
            integrations=None,
        ),
        id="drop-properties-at-three-levels",
    ),
    pytest.param(
        [{"name": "f", "drop_properties": {"context.traits": ["email"]}}],
        "passed",
        None,
        edited(context={**MESSAGE["context"], "traits": {"name": "A"}}),
        id="drop-properties-nested-path",
    ),
    pytest.param(
        [{"name": "f", "drop_properties": {"traits": ["email"], "properties.plan": ["x"]}}],
        "passed",
        None,
        MESSAGE,
        id="drop-properties-missing-or-non-object-path",
    ),
    pytest.param(
        [{"name": "f", "if": "event = 'Nope'", "drop_properties": {"": ["context"]}}],
        "passed",
        None,
        MESSAGE,
        id="drop-properties-not-matching",
    ),
    pytest.param(
        [{"name": "f", "allow_properties": {"properties": ["plan", "price"], "context": []}}],
        "passed",
        None,
        edited(properties={"plan": "pro", "price": 10}, context={}),
        id="allow-properties",
    ),
    pytest.param(
        [{"name": "f", "allow_properties": {"": ["event"]}}],
        "passed",
        None,
        without(MESSAGE, "properties", "context", "integrations"),
        id="allow-top-level-keeps-ids-type-and-timestamps",
    ),
    pytest.param(
        [{"name": "f", "allow_properties": {"traits": ["email"]}}],
        "passed",
        None,
        MESSAGE,
        id="allow-properties-missing-object",
    ),
    pytest.param(
        [{"name": "f", "sample": {"percent": 100}}], "passed", None, MESSAGE, id="sample-all"
    ),
    pytest.param(
        [{"name": "f", "sample": {"percent": 0}}], "sampled_out", "f", None, id="sample-none"
    ),
    pytest.param(
        [{"name": "f", "sample": {"percent": 0, "path": "userId"}}],
        "sampled_out",
        "f",
        None,
        id="sample-none-by-path",
    ),
    pytest.param(
        [{"name": "f", "if": "type = 'identify'", "sample": {"percent": 0}}],
        "passed",
        None,
        MESSAGE,
        id="sample-not-matching",
    ),
]


@pytest.mark.parametrize(("configs", "outcome", "rule", "expected"), ACTION_CASES)
def test_each_action(
    configs: list[dict[str, Any]], outcome: str, rule: str | None, expected: dict[str, Any] | None
) -> None:
    """Each action gives its outcome and message, and never mutates the input."""
    message = copy.deepcopy(MESSAGE)
    result = compile_filters(*configs).apply(message)
    assert (result.outcome, result.rule, result.message) == (outcome, rule, expected)
    assert message == MESSAGE
    assert result.changed == (result.message is not None and result.message != MESSAGE)


def test_untouched_message_is_the_same_object() -> None:
    """When no filter changes the message, apply returns the very object it was given."""
    filters = compile_filters(
        {"name": "a", "if": "event = 'Nope'", "drop": True},
        {"name": "b", "drop_properties": {"properties": ["missing"]}},
    )
    result = filters.apply(MESSAGE)
    assert result == FilterResult(MESSAGE, "passed")
    assert result.message is MESSAGE


def test_edits_copy_only_what_they_change() -> None:
    """Dropping a property copies the message and properties but shares every other object."""
    result = compile_filters({"name": "f", "drop_properties": {"properties": ["email"]}}).apply(
        MESSAGE
    )
    assert result.message is not None
    assert result.message["properties"] is not MESSAGE["properties"]
    assert result.message["context"] is MESSAGE["context"]
    assert result.message["properties"]["address"] is MESSAGE["properties"]["address"]


ORDER_CASES = [
    pytest.param(
        [{"name": "drop", "drop": True}, {"name": "sample", "sample": {"percent": 0}}],
        "sampled_out",
        "sample",
        None,
        id="sample-runs-before-a-drop-listed-first",
    ),
    pytest.param(
        [
            {"name": "only", "if": "event = 'Nope'", "only_send": True},
            {"name": "drop", "drop": True},
        ],
        "dropped",
        "drop",
        None,
        id="drop-runs-before-only-send",
    ),
    pytest.param(
        [
            {"name": "strip", "drop_properties": {"properties": ["email"]}},
            {"name": "drop", "if": "exists(properties.email)", "drop": True},
        ],
        "dropped",
        "drop",
        None,
        id="drop-sees-properties-before-drop-properties",
    ),
    pytest.param(
        [
            {"name": "strip", "drop_properties": {"properties": ["email"]}},
            {"name": "only", "if": "exists(properties.email)", "only_send": True},
        ],
        "passed",
        None,
        edited(properties=without(MESSAGE["properties"], "email")),
        id="only-send-sees-properties-before-drop-properties",
    ),
    pytest.param(
        [
            {"name": "allow", "allow_properties": {"properties": ["plan", "email"]}},
            {"name": "strip", "drop_properties": {"properties": ["plan"]}},
        ],
        "passed",
        None,
        edited(properties={"email": "a@b.c"}),
        id="drop-properties-runs-before-allow-properties",
    ),
    pytest.param(
        [
            {
                "name": "allow",
                "if": "exists(properties.plan)",
                "allow_properties": {"": ["event"]},
            },
            {"name": "strip", "drop_properties": {"properties": ["plan"]}},
        ],
        "passed",
        None,
        edited(properties=without(MESSAGE["properties"], "plan")),
        id="allow-condition-sees-what-drop-properties-left",
    ),
]


@pytest.mark.parametrize(("configs", "outcome", "rule", "expected"), ORDER_CASES)
def test_segment_order_regardless_of_listing(
    configs: list[dict[str, Any]], outcome: str, rule: str | None, expected: dict[str, Any] | None
) -> None:
    """Filters run as sample, drop, only_send, drop_properties, allow_properties."""
    result = compile_filters(*configs).apply(MESSAGE)
    assert (result.outcome, result.rule, result.message) == (outcome, rule, expected)


def kept(filters: DestinationFilters, message: dict[str, Any]) -> bool:
    """Whether ``filters`` let ``message`` through."""
    return filters.apply(message).outcome == "passed"


def test_sample_by_path_is_deterministic() -> None:
    """The same userId gets the same decision every time and from every compiled copy."""
    config = {"name": "s", "sample": {"percent": 50, "path": "userId"}}
    first, second = compile_filters(config), compile_filters(config)
    for n in range(200):
        message = {**MESSAGE, "userId": f"user-{n}", "messageId": f"m-{n}"}
        decisions = {kept(first, message), kept(second, message)}
        decisions |= {kept(first, {**message, "messageId": "other"}) for _ in range(3)}
        assert len(decisions) == 1


@pytest.mark.parametrize("percent", [1, 10, 50, 90])
def test_sample_by_path_keeps_about_percent(percent: float) -> None:
    """Of 10,000 distinct user ids, the share kept is within 1.5 points of ``percent``."""
    filters = compile_filters({"name": "s", "sample": {"percent": percent, "path": "userId"}})
    count = sum(kept(filters, {**MESSAGE, "userId": f"user-{n}"}) for n in range(10_000))
    assert abs(count / 100 - percent) < 1.5


def test_smaller_samples_are_subsets_of_larger_ones() -> None:
    """A user in the 10 % sample is in the 20 % sample too: the hash ignores the filter."""
    ten = compile_filters({"name": "ten", "sample": {"percent": 10, "path": "userId"}})
    twenty = compile_filters({"name": "twenty", "sample": {"percent": 20, "path": "userId"}})
    users = [{**MESSAGE, "userId": f"user-{n}"} for n in range(2000)]
    assert all(kept(twenty, u) for u in users if kept(ten, u))


def test_sample_missing_value_uses_the_message_id() -> None:
    """A missing or null path value is sampled on the messageId instead."""
    filters = compile_filters({"name": "s", "sample": {"percent": 50, "path": "properties.key"}})
    for n in range(300):
        by_value = {**MESSAGE, "properties": {"key": f"id-{n}"}}
        missing = {**MESSAGE, "messageId": f"id-{n}", "properties": {}}
        null = {**missing, "properties": {"key": None}}
        assert kept(filters, by_value) == kept(filters, missing) == kept(filters, null)


def test_sample_hashes_non_string_values() -> None:
    """Numbers and objects at the path are sampled too, each value consistently."""
    filters = compile_filters({"name": "s", "sample": {"percent": 50, "path": "properties.n"}})
    decisions = [kept(filters, {**MESSAGE, "properties": {"n": n}}) for n in range(1000)]
    assert 400 < sum(decisions) < 600
    assert decisions == [kept(filters, {**MESSAGE, "properties": {"n": n}}) for n in range(1000)]
    assert kept(filters, {"properties": {"n": {"a": 1, "b": 2}}}) == kept(
        filters, {"properties": {"n": {"b": 2, "a": 1}}}
    )


@pytest.mark.parametrize(
    ("draw", "percent", "outcome"),
    [
        pytest.param(0.3, 40, "passed", id="draw-below-percent-kept"),
        pytest.param(0.3, 20, "sampled_out", id="draw-above-percent-sampled-out"),
        pytest.param(0.0, 0, "sampled_out", id="zero-percent-keeps-nothing"),
        pytest.param(0.999_999, 100, "passed", id="hundred-percent-keeps-everything"),
    ],
)
def test_sample_without_path_draws_from_random(draw: float, percent: float, outcome: str) -> None:
    """Without a path, each event is kept when the injected random draw is below percent."""
    draws = itertools.repeat(draw)
    filters = compile_filters(
        {"name": "s", "sample": {"percent": percent}}, random=lambda: next(draws)
    )
    assert filters.apply(MESSAGE).outcome == outcome


def test_sample_without_path_or_message_id_draws_from_random() -> None:
    """A path value and messageId both missing fall back to the random draw."""
    calls: list[None] = []

    def draw() -> float:
        calls.append(None)
        return 0.9

    filters = compile_filters({"name": "s", "sample": {"percent": 50, "path": "x"}}, random=draw)
    assert filters.apply({"type": "track"}).outcome == "sampled_out"
    assert filters.apply(MESSAGE).outcome in ("passed", "sampled_out")
    assert len(calls) == 1


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({"if": "lowercase(properties.price) = 'x'", "drop": True}, id="drop"),
        pytest.param({"if": "uppercase(properties.price) = 'x'", "only_send": True}, id="only"),
        pytest.param(
            {"if": "contains(properties.address, 'x')", "sample": {"percent": 50}}, id="s"
        ),
        pytest.param(
            {"if": "length(properties.price) > 1", "drop_properties": {"": ["x"]}}, id="props"
        ),
    ],
)
def test_evaluation_error_fails_closed(config: dict[str, Any]) -> None:
    """A condition that cannot be evaluated drops the event as filter_error, naming the filter."""
    result = compile_filters({"name": "broken", **config}).apply(MESSAGE)
    assert (result.message, result.outcome, result.rule) == (None, "filter_error", "broken")
    assert result.error is not None
    assert "position" in result.error


def test_more_than_ten_filters_are_rejected() -> None:
    """An eleventh filter on one destination is a ConfigError; ten are fine."""
    configs = [{"name": f"f{n}", "drop_properties": {"": [f"k{n}"]}} for n in range(11)]
    compile_filters(*configs[:10])
    with pytest.raises(ConfigError, match="11 filters on one destination; at most 10"):
        compile_filters(*configs)


def test_bad_fql_is_rejected_with_name_and_position() -> None:
    """Every filter with bad FQL is reported, each with its name and the position at fault."""
    with pytest.raises(ConfigError) as info:
        compile_filters(
            {"name": "good", "drop": True},
            {"name": "typo", "if": "event = 'a' annd true", "drop": True},
            {"name": "open", "if": "(type = 'track'", "only_send": True},
        )
    assert info.value.problems == [
        "filter 'typo': if: FQL syntax error at position 12: unexpected 'annd' after a complete"
        " expression (in: event = 'a' annd true)",
        "filter 'open': if: FQL syntax error at position 15: expected ')' (in: (type = 'track')",
    ]


def test_duplicate_names_are_rejected() -> None:
    """Two filters with one name are a ConfigError: the name is what reports and metrics show."""
    with pytest.raises(ConfigError, match="two filters are named 'f'"):
        compile_filters({"name": "f", "drop": True}, {"name": "f", "only_send": True})


@pytest.mark.parametrize(
    ("config", "error"),
    [
        pytest.param({"name": "f"}, "exactly one of", id="no-action"),
        pytest.param({"name": "f", "drop": True, "only_send": True}, "exactly one", id="two"),
        pytest.param({"name": "f", "drop": False}, "Input should be True", id="drop-false"),
        pytest.param({"name": "f", "sample": {"percent": 101}}, "less than or equal", id="101"),
        pytest.param({"name": "f", "sample": {"percent": -1}}, "greater than", id="negative"),
        pytest.param({"name": "f", "sample": {"percent": 5, "path": "a..b"}}, "path", id="path"),
        pytest.param({"name": "f", "drop_properties": {}}, "at least 1", id="empty-fields"),
        pytest.param({"name": "f", "drop_properties": {".x": ["a"]}}, "field path", id="bad"),
        pytest.param({"name": "f", "drop_properties": {"": ["messageId"]}}, "type or", id="mid"),
        pytest.param({"name": "", "drop": True}, "at least 1 character", id="empty-name"),
        pytest.param({"name": "f", "drop": True, "iff": "all"}, "Extra inputs", id="extra"),
    ],
)
def test_invalid_configs_are_rejected(config: dict[str, Any], error: str) -> None:
    """A filter config with no, several or malformed actions fails validation."""
    with pytest.raises(ValidationError, match=error):
        DestinationFilterConfig.model_validate(config)


def test_if_is_read_by_alias_and_by_name() -> None:
    """``if`` is the config key; ``if_`` works from Python; the default is ``all``."""
    by_alias = DestinationFilterConfig.model_validate({"name": "f", "if": "x = 1", "drop": True})
    by_name = DestinationFilterConfig(name="f", if_="x = 1", drop=True)
    assert by_alias == by_name
    assert DestinationFilterConfig(name="f", drop=True).if_ == "all"


@pytest.mark.parametrize(
    ("path", "keys"),
    [
        pytest.param("userId", ("userId",), id="one-key"),
        pytest.param("context.traits.email", ("context", "traits", "email"), id="nested"),
        pytest.param("properties.a\\.b", ("properties", "a.b"), id="escaped-dot"),
        pytest.param("properties.product name", ("properties", "product name"), id="space"),
    ],
)
def test_split_path(path: str, keys: tuple[str, ...]) -> None:
    """Field paths split on unescaped dots, as in FQL."""
    assert split_path(path) == keys


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=20,
)
KEYS = st.sampled_from(["type", "userId", "messageId", "event", "properties", "context", "x"])
MESSAGES = st.dictionaries(KEYS | st.text(max_size=5), JSON, max_size=8)
FIXED = compile_filters(
    {"name": "s1", "sample": {"percent": 80, "path": "userId"}},
    {"name": "s2", "if": "typeof(properties) = 'object'", "sample": {"percent": 70}},
    {"name": "d", "if": "lowercase(event) = 'spam'", "drop": True},
    {"name": "o", "if": "!(length(properties.tags) > 3)", "only_send": True},
    {"name": "dp", "drop_properties": {"": ["x"], "properties": ["email"], "context.a": ["b"]}},
    {"name": "ap", "if": "contains(userId, 'u')", "allow_properties": {"": [], "context": ["a"]}},
    random=lambda: 0.25,  # path-less samples keep everything, so the later filters run
)


@settings(max_examples=200)
@given(message=MESSAGES)
def test_apply_never_raises_or_mutates(message: dict[str, Any]) -> None:
    """On any JSON-like message, apply returns a result and leaves the input as it was."""
    before = copy.deepcopy(message)
    result = FIXED.apply(message)
    assert result.outcome in ("passed", "dropped", "sampled_out", "filter_error")
    assert (result.message is None) == (result.outcome != "passed")
    assert repr(message) == repr(before)  # repr: NaN != NaN would defeat ==


EDITS: list[dict[str, Any]] = [
    {"name": "dp", "drop_properties": {"context": ["ip", "userAgent"], "": ["x"]}},
    {"name": "ap", "allow_properties": {"": ["event", "properties", "context"]}},
    {"name": "ap2", "allow_properties": {"context.page": ["path", "url"], "context": ["page"]}},
    {"name": "dp2", "drop_properties": {"context.page": ["url"], "properties": ["a"]}},
]
EDIT_KEYS = st.sampled_from(["ip", "userAgent", "page", "path", "url", "a", "x", "event"])
EDIT_JSON = st.recursive(
    st.none() | st.integers() | st.text(max_size=3),
    lambda inner: st.dictionaries(EDIT_KEYS, inner, max_size=5),
    max_leaves=12,
)
EDIT_MESSAGES = st.dictionaries(
    st.sampled_from(["type", "messageId", "userId", "event", "properties", "context", "x"]),
    EDIT_JSON,
    max_size=7,
)


def edit_a_deep_copy(message: dict[str, Any], configs: list[dict[str, Any]]) -> dict[str, Any]:
    """What the property filters ``configs`` should make of ``message``, done plainly."""
    result = copy.deepcopy(message)
    ranked = sorted(configs, key=lambda c: "allow_properties" in c)  # Segment's order
    for config in ranked:
        allow = "allow_properties" in config
        for path, keys in config["allow_properties" if allow else "drop_properties"].items():
            target: Any = result
            for key in split_path(path) if path else ():
                target = target.get(key) if isinstance(target, dict) else None
            if not isinstance(target, dict):
                continue
            kept = set(keys) | (PROTECTED_FIELDS if allow and not path else set())
            for key in list(target):
                if (key not in kept) if allow else (key in keys):
                    del target[key]
    return result


@settings(max_examples=300, deadline=None)
@given(
    message=EDIT_MESSAGES,
    configs=st.lists(st.sampled_from(EDITS), min_size=1, unique_by=lambda c: c["name"]),
)
def test_edits_equal_editing_a_deep_copy(
    message: dict[str, Any], configs: list[dict[str, Any]]
) -> None:
    """Chained property filters, copying each object at most once, give what editing a deep copy
    gives, and leave the input as it was."""
    before = copy.deepcopy(message)

    result = compile_filters(*configs).apply(message)

    assert result.message == edit_a_deep_copy(message, configs)
    assert message == before
