"""Tests for gateway/pipeline/fql.py: Segment's Filter Query Language subset."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import ConfigError, FqlEvaluationError, FqlSyntaxError
from gateway.pipeline.fql import Expression, parse

MESSAGE: dict[str, Any] = {
    "type": "track",
    "event": "Order Completed",
    "userId": "u1",
    "properties": {
        "price": 19.99,
        "quantity": 3,
        "plan": "free",
        "coupon": None,
        "tags": ["sale", "new", 3],
        "items": {"sku": "A1"},
        "product name": "Red Shoes",
        "a.b": "dotted",
        "isVip": True,
        "isTest": False,
        "one": 1,
        "zero": 0,
        "label": "One",
    },
    "context": {"library": {"name": "analytics-python", "version": "2.3.1"}},
    "traits": {"email": "Jane@Example.com"},
}

VALUE_CASES = [
    # Paths
    pytest.param("type", "track", id="top-level-path"),
    pytest.param("context.library.version", "2.3.1", id="nested-path"),
    pytest.param("properties.missing", None, id="missing-path-is-null"),
    pytest.param("properties.price.cents", None, id="walk-through-number-is-null"),
    pytest.param("nothing.at.all", None, id="missing-parent-is-null"),
    pytest.param("properties.coupon", None, id="explicit-null"),
    pytest.param("properties.product\\ name", "Red Shoes", id="escaped-space-in-path"),
    pytest.param("properties.a\\.b", "dotted", id="escaped-dot-in-path"),
    # Literals
    pytest.param("'it\\'s'", "it's", id="single-quoted-with-escape"),
    pytest.param('"say \\"hi\\""', 'say "hi"', id="double-quoted-with-escape"),
    pytest.param("'back\\\\slash'", "back\\slash", id="escaped-backslash"),
    pytest.param("42", 42, id="int"),
    pytest.param("-1.5", -1.5, id="negative-float"),
    pytest.param("1e3", 1000.0, id="exponent"),
    pytest.param("true", True, id="true"),
    pytest.param("false", False, id="false"),
    pytest.param("null", None, id="null"),
    # Equality is strict
    pytest.param("type = 'track'", True, id="eq-string"),
    pytest.param('type = "track"', True, id="eq-double-quoted"),
    pytest.param("type != 'track'", False, id="ne-string"),
    pytest.param("properties.quantity = 3", True, id="eq-int"),
    pytest.param("properties.quantity = 3.0", True, id="eq-int-float"),
    pytest.param("1 = '1'", False, id="number-is-not-string"),
    pytest.param("'1' = 1", False, id="string-is-not-number"),
    pytest.param("1 != '1'", True, id="ne-across-types"),
    pytest.param("true = 1", False, id="true-is-not-1"),
    pytest.param("properties.isVip = properties.one", False, id="true-field-is-not-1-field"),
    pytest.param("properties.zero = false", False, id="0-is-not-false"),
    pytest.param("null = null", True, id="null-eq-null"),
    pytest.param("properties.missing = null", True, id="missing-eq-null"),
    pytest.param("properties.coupon != null", False, id="ne-null"),
    pytest.param("properties.tags = properties.tags", True, id="eq-array"),
    pytest.param("properties.items = properties.items", True, id="eq-object"),
    # Numeric comparisons, false for anything but two numbers
    pytest.param("properties.price > 10", True, id="gt"),
    pytest.param("properties.price < 10", False, id="lt"),
    pytest.param("properties.quantity >= 3", True, id="ge"),
    pytest.param("properties.quantity <= 2", False, id="le"),
    pytest.param("properties.quantity > -1", True, id="gt-negative"),
    pytest.param("'10' > 5", False, id="string-gt-number-is-false"),
    pytest.param("properties.plan < 'z'", False, id="strings-do-not-compare"),
    pytest.param("properties.missing < 1", False, id="null-lt-is-false"),
    pytest.param("properties.missing >= 0", False, id="null-ge-is-false"),
    pytest.param("true > false", False, id="booleans-do-not-compare"),
    # Logic: only exactly true counts as true
    pytest.param("true and false", False, id="and"),
    pytest.param("true and true and true", True, id="and-chain"),
    pytest.param("false or true", True, id="or"),
    pytest.param("false or false or false", False, id="or-chain"),
    pytest.param("!true", False, id="not-true"),
    pytest.param("!false", True, id="not-false"),
    pytest.param("!!true", True, id="double-not"),
    pytest.param("!properties.missing", True, id="not-null"),
    pytest.param("!'yes'", True, id="not-string"),
    pytest.param("properties.one and true", False, id="1-is-not-true"),
    pytest.param("false and lowercase(5)", False, id="and-short-circuits"),
    pytest.param("true or lowercase(5)", True, id="or-short-circuits"),
    # Precedence: ! > comparison > and > or
    pytest.param("true or true and false", True, id="and-binds-tighter-than-or"),
    pytest.param("false and true or true", True, id="and-binds-tighter-than-or-left"),
    pytest.param("(true or true) and false", False, id="parens-override"),
    pytest.param("!false and false", False, id="not-binds-tighter-than-and"),
    pytest.param("!'a' = false", False, id="not-binds-tighter-than-comparison"),
    pytest.param("!('a' = false)", True, id="parens-around-comparison"),
    pytest.param("((((type = 'track'))))", True, id="nested-parens"),
    pytest.param(
        "(type = 'track' and (event = 'x' or (properties.quantity = 3)))", True, id="deep-parens"
    ),
    # in
    pytest.param("properties.plan in ['free', 'trial']", True, id="in-list"),
    pytest.param("properties.plan in ['pro']", False, id="not-in-list"),
    pytest.param("properties.plan in []", False, id="in-empty-list"),
    pytest.param("properties.quantity in ['3', 4]", False, id="in-list-is-strict"),
    pytest.param("properties.quantity in [3]", True, id="in-list-number"),
    pytest.param("properties.isVip in [1]", False, id="in-list-true-is-not-1"),
    pytest.param("properties.missing in [null]", True, id="null-in-list"),
    pytest.param("'sale' in properties.tags", True, id="value-in-field"),
    pytest.param("3 in properties.tags", True, id="number-in-field"),
    pytest.param("'3' in properties.tags", False, id="value-in-field-is-strict"),
    pytest.param("'fr' in properties.plan", False, id="in-string-field-is-false"),
    pytest.param("'sale' in properties.missing", False, id="in-missing-field-is-false"),
    pytest.param("!(properties.plan in ['free', 'trial'])", False, id="not-in-list"),
    pytest.param("!(properties.plan in ['pro'])", True, id="not-in-list-true"),
    # contains
    pytest.param("contains(event, 'Completed')", True, id="contains"),
    pytest.param("contains(event, 'completed')", False, id="contains-is-case-sensitive"),
    pytest.param("contains('', '')", True, id="contains-empty"),
    pytest.param("contains(properties.missing, 'x')", False, id="contains-null-haystack"),
    pytest.param("contains(event, null)", False, id="contains-null-needle"),
    # length
    pytest.param("length(event)", 15, id="length-string"),
    pytest.param("length(properties.tags)", 3, id="length-array"),
    pytest.param("length(properties.items)", 1, id="length-object"),
    pytest.param("length(properties.missing)", 0, id="length-null"),
    pytest.param("length(event) > 10", True, id="length-compared"),
    # lowercase, uppercase
    pytest.param("lowercase(traits.email)", "jane@example.com", id="lowercase"),
    pytest.param("lowercase(null)", None, id="lowercase-null"),
    pytest.param("lowercase(properties.missing) = null", True, id="lowercase-missing"),
    pytest.param("uppercase(properties.plan)", "FREE", id="uppercase"),
    pytest.param("uppercase(null)", None, id="uppercase-null"),
    # snakecase
    pytest.param("snakecase('sampleText')", "sample_text", id="snakecase-camel"),
    pytest.param("snakecase('CStringRef')", "cstring_ref", id="snakecase-capital-run"),
    pytest.param("snakecase('2FA Enabled')", "2fa_enabled", id="snakecase-digits"),
    pytest.param("snakecase(event)", "order_completed", id="snakecase-title"),
    pytest.param("snakecase('checkout-step.v2')", "checkout_step_v2", id="snakecase-dash-dot"),
    pytest.param("snakecase('a - b')", "a_b", id="snakecase-separator-run"),
    pytest.param("snakecase(null)", None, id="snakecase-null"),
    # typeof
    pytest.param("typeof(event)", "string", id="typeof-string"),
    pytest.param("typeof(properties.price)", "number", id="typeof-number"),
    pytest.param("typeof(properties.isTest)", "boolean", id="typeof-boolean"),
    pytest.param("typeof(properties.items)", "object", id="typeof-object"),
    pytest.param("typeof(properties.tags)", "array", id="typeof-array"),
    pytest.param("typeof(properties.missing)", "null", id="typeof-null"),
    # match
    pytest.param("match(context.library.name, 'analytics-*')", True, id="match-star"),
    pytest.param("match(context.library.name, 'analytics')", False, id="match-whole-string"),
    pytest.param("match(context.library.version, '2.?.1')", True, id="match-question-mark"),
    pytest.param("match(properties.plan, '[a-f]ree')", True, id="match-class"),
    pytest.param("match(properties.plan, '[!f]ree')", False, id="match-negated-class"),
    pytest.param("match(properties.plan, '[^f]ree')", False, id="match-caret-negated-class"),
    pytest.param("match('axb', 'a.b')", False, id="match-dot-is-literal"),
    pytest.param("match('*', '[*]')", True, id="match-literal-star"),
    pytest.param("match('a[b', 'a[b')", True, id="match-unclosed-bracket-is-literal"),
    pytest.param("match('ABC', 'abc')", False, id="match-is-case-sensitive"),
    pytest.param("match('', '**')", True, id="match-empty"),
    pytest.param("match(properties.missing, '*')", False, id="match-null"),
    # exists
    pytest.param("exists(properties.plan)", True, id="exists"),
    pytest.param("exists(properties.isTest)", True, id="exists-false-value"),
    pytest.param("exists(properties.coupon)", False, id="exists-null-value"),
    pytest.param("exists(properties.missing)", False, id="exists-missing"),
    pytest.param("!exists(traits.phone)", True, id="not-exists"),
    # Nested calls
    pytest.param("lowercase(uppercase(properties.plan))", "free", id="nested-calls"),
    pytest.param("contains(lowercase(traits.email), 'example')", True, id="call-in-contains"),
    pytest.param("typeof(length(null))", "number", id="typeof-length"),
    pytest.param("typeof(exists(properties.plan))", "boolean", id="typeof-exists"),
    pytest.param("all", True, id="all"),
]

MATCH_CASES = [
    pytest.param("properties.isVip", True, id="bare-true-field"),
    pytest.param("properties.isTest", False, id="bare-false-field"),
    pytest.param("properties.one", False, id="bare-1-is-not-true"),
    pytest.param("properties.label", False, id="bare-string-is-not-true"),
    pytest.param("properties.missing", False, id="bare-missing"),
    pytest.param("exists(event)", True, id="bare-call"),
    pytest.param("typeof(event)", False, id="bare-call-string"),
    pytest.param("all", True, id="all"),
    pytest.param("  all ", True, id="all-with-spaces"),
    pytest.param("type = 'track' and event = 'Order Completed'", True, id="segment-track-event"),
    pytest.param("type = 'identify' or type = 'track'", True, id="segment-either-type"),
    pytest.param(
        "type = 'track' and (event = 'Click' or match(event, 'Order *'))", True, id="segment-doc"
    ),
    pytest.param("!contains(context.library.name, 'js')", True, id="segment-not-contains"),
    pytest.param("!(properties.plan in ['free', 'trial'])", False, id="segment-only-paid"),
]

SYNTAX_ERRORS = [
    pytest.param("(type = 'track'", 15, "expected ')'", id="unclosed-paren"),
    pytest.param("((type = 'track')", 17, "expected ')'", id="unclosed-outer-paren"),
    pytest.param("unknown(event)", 0, "unknown function 'unknown'", id="unknown-function"),
    pytest.param(
        "type = 'track' and frob(x)", 19, "unknown function 'frob'", id="unknown-function-later"
    ),
    pytest.param(
        "type = 'track' event",
        15,
        "unexpected 'event' after a complete expression",
        id="trailing-path",
    ),
    pytest.param(
        "type = 'track')", 14, "unexpected ')' after a complete expression", id="trailing-paren"
    ),
    pytest.param("a = 1 = 1", 6, "unexpected '=' after a complete expression", id="chained-eq"),
    pytest.param("properties.price(1)", 16, "unexpected '('", id="call-on-dotted-path"),
    pytest.param("event = 'Order", 8, "unterminated string", id="unterminated-string"),
    pytest.param('event = "Order\\"', 8, "unterminated string", id="escaped-closing-quote"),
    pytest.param("", 0, "empty expression", id="empty"),
    pytest.param("   ", 0, "empty expression", id="blank"),
    pytest.param("type =", 6, "expected a value, found the end", id="missing-operand"),
    pytest.param("type == 'track'", 6, "expected a value, found '='", id="double-equals"),
    pytest.param("type = 'a' && b", 11, "unexpected character '&'", id="ampersands"),
    pytest.param("properties.", 10, "unexpected character '.'", id="trailing-dot"),
    pytest.param("properties..price", 10, "unexpected character '.'", id="empty-segment"),
    pytest.param("a = -x", 4, "unexpected character '-'", id="minus-path"),
    pytest.param("[1]", 0, "expected a value, found '['", id="bare-list"),
    pytest.param(
        "contains(event)", 0, "contains() takes 2 arguments, got 1", id="too-few-arguments"
    ),
    pytest.param("length()", 0, "length() takes 1 argument, got 0", id="no-arguments"),
    pytest.param("contains(event 'x')", 15, "expected ',' or ')'", id="missing-comma"),
    pytest.param("lowercase(event", 15, "expected ',' or ')'", id="unclosed-call"),
    pytest.param("contains(event,)", 15, "expected a value, found ')'", id="trailing-comma"),
    pytest.param(
        "properties.plan in ['free' 'trial']", 27, "expected ',' or ']'", id="list-missing-comma"
    ),
    pytest.param(
        "properties.plan in ['free', plan]", 28, "expected a literal in the list", id="list-path"
    ),
    pytest.param("properties.plan in ['free'", 26, "expected ',' or ']'", id="unclosed-list"),
    pytest.param("exists('plan')", 7, "exists() takes a field path", id="exists-literal"),
    pytest.param(
        "match(event, properties.glob)",
        13,
        "match() takes a quoted glob pattern as its second argument",
        id="match-dynamic-pattern",
    ),
    pytest.param("match(event, '[z-a]')", 13, "invalid glob pattern", id="match-bad-range"),
    pytest.param("!" * 100 + "true", 64, "expression nested too deeply", id="too-deep"),
]

EVALUATION_ERRORS = [
    pytest.param("lowercase(5)", "lowercase() at position 0", id="lowercase-number"),
    pytest.param("uppercase(properties.price)", "uppercase() at position 0", id="uppercase"),
    pytest.param("snakecase(properties.tags)", "snakecase() at position 0", id="snakecase"),
    pytest.param("lowercase(properties.items)", "got object", id="lowercase-object"),
    pytest.param("contains(properties.price, '1')", "got number", id="contains-number"),
    pytest.param("contains(event, 5)", "contains() at position 0", id="contains-number-needle"),
    pytest.param("length(properties.price)", "got number", id="length-number"),
    pytest.param("length(true)", "got boolean", id="length-boolean"),
    pytest.param("match(properties.quantity, '3')", "match() at position 0", id="match-number"),
    pytest.param("length(lowercase(5))", "lowercase() at position 7", id="inner-call-named"),
    pytest.param("type = 'track' and lowercase(1) = 'x'", "at position 19", id="later-call"),
]


@pytest.mark.parametrize(("text", "expected"), VALUE_CASES)
def test_value(text: str, expected: Any) -> None:
    """Each expression evaluates to the expected JSON value, type included."""
    value = parse(text).value(MESSAGE)

    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(("text", "expected"), MATCH_CASES)
def test_matches(text: str, expected: bool) -> None:
    """matches() is true exactly when the expression's value is boolean true."""
    assert parse(text).matches(MESSAGE) is expected


@pytest.mark.parametrize(("text", "position", "message"), SYNTAX_ERRORS)
def test_syntax_error_names_the_position(text: str, position: int, message: str) -> None:
    """A malformed expression raises FqlSyntaxError at the 0-based position of the fault."""
    with pytest.raises(FqlSyntaxError) as caught:
        parse(text)

    assert caught.value.position == position
    assert caught.value.expression == text
    assert f"position {position}: {message}" in str(caught.value)


def test_syntax_error_is_a_config_error_with_one_problem_line() -> None:
    """FqlSyntaxError is a ConfigError whose single problem line quotes the expression."""
    with pytest.raises(ConfigError) as caught:
        parse("(type = 'track'")

    line = "FQL syntax error at position 15: expected ')' (in: (type = 'track')"
    assert isinstance(caught.value, FqlSyntaxError)
    assert caught.value.problems == [line]
    assert str(caught.value) == line


@pytest.mark.parametrize(("text", "fragment"), EVALUATION_ERRORS)
def test_evaluation_error(text: str, fragment: str) -> None:
    """A function given a type it cannot work on raises FqlEvaluationError naming the call."""
    expression = parse(text)

    with pytest.raises(FqlEvaluationError) as caught:
        expression.matches(MESSAGE)

    assert fragment in str(caught.value)
    assert str(caught.value).endswith(f"(in: {text})")


def test_evaluation_error_message_reads_whole() -> None:
    """The evaluation error says which call failed, where, why, and in which expression."""
    with pytest.raises(FqlEvaluationError) as caught:
        parse("lowercase(5)").value(MESSAGE)

    assert str(caught.value) == (
        "lowercase() at position 0 expects a string or null, got number (in: lowercase(5))"
    )


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("typeof(properties.when)", id="typeof"),
        pytest.param("properties.when = 'x'", id="equality"),
    ],
)
def test_non_json_value_is_an_evaluation_error(text: str) -> None:
    """A value that is not JSON (here a datetime) fails closed rather than guessing a type."""
    message = {"properties": {"when": datetime(2026, 1, 1, tzinfo=UTC)}}

    with pytest.raises(FqlEvaluationError, match="not a JSON value"):
        parse(text).matches(message)


def test_expression_keeps_its_text_and_is_frozen() -> None:
    """An Expression carries its source text, compares by it, and cannot be changed."""
    expression = parse("type = 'track'")

    assert expression.text == "type = 'track'"
    assert expression == parse("type = 'track'")
    with pytest.raises(dataclasses.FrozenInstanceError):
        expression.text = "all"  # type: ignore[misc]


def test_keyword_named_field_needs_an_escape() -> None:
    """A field named like a keyword is reached by escaping a character of its name."""
    message = {"in": "yes", "properties": {"and": 1}}

    assert parse("\\in").value(message) == "yes"
    assert parse("properties.and").value(message) == 1


FRAGMENTS = [
    "(", ")", "[", "]", ",", "!", "=", "!=", "<", "<=", ">", ">=", "and", "or", "in", "all",
    "'a'", '"b\\"', "'", "1", "-2.5", "1e3", "true", "false", "null", "\\", ".", " ",
    "type", "event", "properties.price", "properties.tags", "context.library.name",
    "contains", "length", "lowercase", "uppercase", "snakecase", "typeof", "match", "exists",
    "'*'", "'[a-'", "'[z-a]'", "'[!x]?'",
]  # fmt: skip
fql_like_text = st.lists(st.sampled_from(FRAGMENTS), max_size=20).map("".join)
json_keys = st.sampled_from(
    ["type", "event", "properties", "context", "library", "name", "price", "tags", "plan"]
) | st.text(max_size=3)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(json_keys, children),
    max_leaves=12,
)
KNOWN_EXPRESSIONS = [
    parse(case.values[0]) for case in [*VALUE_CASES, *MATCH_CASES, *EVALUATION_ERRORS]
]


@given(text=st.text() | fql_like_text)
def test_parse_raises_only_syntax_errors(text: str) -> None:
    """parse() on arbitrary text returns an Expression or raises FqlSyntaxError, nothing else."""
    position = None
    try:
        assert isinstance(parse(text), Expression)
    except FqlSyntaxError as exc:
        position = exc.position
    assert position is None or 0 <= position <= len(text)


@given(
    expression=st.sampled_from(KNOWN_EXPRESSIONS) | fql_like_text,
    message=st.dictionaries(json_keys, json_values, max_size=6),
)
def test_matches_raises_only_evaluation_errors(
    expression: Expression | str, message: dict[str, Any]
) -> None:
    """matches() on arbitrary JSON messages returns a bool or raises FqlEvaluationError."""
    if isinstance(expression, str):
        try:
            expression = parse(expression)
        except FqlSyntaxError:
            return
    try:
        result = expression.matches(message)
    except FqlEvaluationError:
        return
    assert isinstance(result, bool)
