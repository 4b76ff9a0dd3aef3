"""Tests for gateway/pipeline/fql_codegen.py: compiled FQL agrees with the reference evaluator."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import FqlEvaluationError, FqlSyntaxError
from gateway.pipeline.fql_codegen import compile_tree
from gateway.pipeline.fql_semantics import Evaluator, evaluator
from gateway.pipeline.fql_syntax import Node, Path, parse_tree
from tests.pipeline.test_fql import EVALUATION_ERRORS, MATCH_CASES, MESSAGE, VALUE_CASES

# The conditions docs/routing.md and bench/routing.py show, beside test_fql.py's cases.
DOCUMENTED = [
    "match(event, 'Test *') or properties.test = true",
    "exists(userId)",
    "type = 'page'",
    "event = 'Order Completed'",
    "typeof(properties.plan) = 'string' and lowercase(properties.plan) = 'pro'",
    "contains(lowercase(context.traits.email), '@example.com')",
    "userId in ['user-0000', 'user-1000']",
    "match(context.userAgent, '*[Bb]ot*')",
    "contains(context.page.url, '://internal.')",
    "exists(properties.total) and properties.total <= 0",
    "match(event, 'Product *') or event in ['Checkout Started', 'Order Completed']",
    "!(event = 'Test')",
    "!(properties.plan in ['free'])",
    "lowercase(properties.plan)",
]
EXAMPLES = [
    *DOCUMENTED,
    *(case.values[0] for case in [*VALUE_CASES, *MATCH_CASES, *EVALUATION_ERRORS]),
]

PATHS = [
    "type",
    "event",
    "userId",
    "properties",
    "properties.plan",
    "properties.price",
    "properties.tags",
    "properties.a.b",
    "context.library.name",
    "context.a.b.c.d.e.f.g",  # longer than the compiler inlines
    "x",
]
LITERALS = ["'a'", "'free'", "''", "'sale'", "1", "3.0", "-2", "0", "true", "false", "null"]
GLOBS = ["'*'", "'a*'", "'*a'", "'*a*'", "'?'", "'*?*'", "'[a-f]*'", "'[!x]?'", "'*[Bb]ot*'"]
GLOBS += ["'*.*'", "'a.*'", "'*\\\\*'", "'\\\\*'", "'[*]*'", "'Test *'", "'**'"]
FUNCTIONS_OF_ONE = ["length", "lowercase", "uppercase", "snakecase", "typeof"]
OPERATORS = ["=", "!=", "<", "<=", ">", ">="]


def _expressions(value: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    def pair(template: str) -> st.SearchStrategy[str]:
        return st.tuples(value, value).map(lambda ab: template.format(*ab))

    return st.one_of(
        st.tuples(st.sampled_from(FUNCTIONS_OF_ONE), value).map(lambda fa: f"{fa[0]}({fa[1]})"),
        st.sampled_from(PATHS).map(lambda p: f"exists({p})"),
        pair("contains({}, {})"),
        st.tuples(value, st.sampled_from(GLOBS)).map(lambda vg: f"match({vg[0]}, {vg[1]})"),
        st.tuples(value, st.sampled_from(OPERATORS), value).map(
            lambda c: f"({c[0]} {c[1]} {c[2]})"
        ),
        st.tuples(value, st.lists(st.sampled_from(LITERALS), max_size=3)).map(
            lambda vl: f"({vl[0]} in [{', '.join(vl[1])}])"
        ),
        pair("({} in {})"),
        value.map(lambda v: f"!({v})"),
        pair("({} and {})"),
        pair("({} or {})"),
    )


fql_text = st.recursive(st.sampled_from(PATHS + LITERALS), _expressions, max_leaves=8)
KEYS = ["type", "event", "userId", "properties", "context", "plan", "price", "tags", "library"]
keys = st.sampled_from([*KEYS, "name", *"abcdefgx"])


class Text(str):
    """A str subclass: not the exact type the fast paths take."""


leaves = (
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats(allow_nan=False)
    | st.sampled_from(["", "a", "free", "sale", "A b", "Free", "xa", "bot"])
    | st.text(max_size=4)
    | st.sampled_from(["free", ""]).map(Text)
    | st.just(datetime(2026, 1, 1, tzinfo=UTC))  # not a JSON value: an evaluation error
)
values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=3)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(keys, children, max_size=4)
        | st.dictionaries(keys, children, max_size=3).map(MappingProxyType)
    ),
    max_leaves=12,
)


def _shaped(shape: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Messages with some of the keys ``PATHS`` reach, each holding any value (or the shape)."""
    return st.fixed_dictionaries(
        {},
        optional={
            key: (_shaped(inner) | values) if isinstance(inner, dict) else values
            for key, inner in shape.items()
        },
    )


def _paths(node: Node) -> list[tuple[str, ...]]:
    """Every field path in a syntax tree."""
    if isinstance(node, Path):
        return [node.segments]
    children = [getattr(node, name) for name in getattr(node, "__slots__", ())]
    found: list[tuple[str, ...]] = []
    for child in children:
        for item in child if isinstance(child, tuple) else (child,):
            if isinstance(item, Node):
                found += _paths(item)
    return found


SHAPE: dict[str, Any] = {}  # every path the examples and PATHS reach, as nested keys
for _text in [*EXAMPLES, *PATHS]:
    with contextlib.suppress(FqlSyntaxError):
        for _segments in _paths(parse_tree(_text)):
            _node = SHAPE
            for _key in _segments[:-1]:
                _node = (
                    _node[_key] if isinstance(_node.get(_key), dict) else _node.setdefault(_key, {})
                )
            _node.setdefault(_segments[-1], None)


def _filled(shape: dict[str, Any], value: Any) -> dict[str, Any]:
    """``shape`` with ``value`` at every leaf, so every path meets the same odd value."""
    return {k: _filled(v, value) if isinstance(v, dict) else value for k, v in shape.items()}


messages = (
    _shaped(SHAPE)
    | st.dictionaries(keys, values, max_size=6)
    | values.map(lambda value: _filled(SHAPE, value))
)


def both(text: str) -> tuple[Evaluator, Evaluator]:
    """The reference and the compiled evaluator of ``text``; the compiler must not give up."""
    tree = parse_tree(text)
    reference = evaluator(tree, text)
    compiled = compile_tree(tree, text, reference)
    assert compiled is not None, f"did not compile: {text}"
    return reference, compiled


def outcome(evaluate: Evaluator, message: Mapping[str, Any]) -> tuple[str, Any]:
    """What ``evaluate`` makes of ``message``: its value and type, or the error it raises."""
    try:
        value = evaluate(message)
    except FqlEvaluationError as exc:
        return "error", str(exc)
    return "value", (type(value), value)


def assert_agree(text: str, message: Mapping[str, Any]) -> None:
    """The compiled evaluator of ``text`` gives what the reference gives for ``message``."""
    reference, compiled = both(text)
    assert outcome(compiled, message) == outcome(reference, message), text


@pytest.mark.parametrize("text", [t for t in EXAMPLES if t.strip() != "all"])
def test_examples_agree_on_the_test_message(text: str) -> None:
    """Every documented and tested expression compiles and agrees with the reference."""
    assert_agree(text, MESSAGE)


ODD_VALUES = [
    None, True, False, 0, 1, 1.0, -2.5, "", "free", Text("free"), [], ["sale", 3], ("sale",),
    {}, {"b": 1}, MappingProxyType({"b": 1}), datetime(2026, 1, 1, tzinfo=UTC),
]  # fmt: skip


@pytest.mark.parametrize("text", [t for t in EXAMPLES if t.strip() != "all"])
def test_examples_agree_when_every_path_holds_one_odd_value(text: str) -> None:
    """With each JSON type, a str subclass, a tuple, a mapping or a datetime at every path, the
    compiled form agrees with the reference."""
    for value in ODD_VALUES:
        assert_agree(text, _filled(SHAPE, value))


GLOB_SUBJECTS = [
    "",
    "a",
    "xa",
    "ax",
    "xax",
    "bot",
    "a robot!",
    "Test x",
    "Test",
    "a.b",
    "\\",
    "x\\y",
]


@pytest.mark.parametrize("pattern", GLOBS)
def test_globs_agree(pattern: str) -> None:
    """Each glob, searched or matched instead of fully matched, agrees with the reference."""
    for subject in GLOB_SUBJECTS:
        assert_agree(f"match(x, {pattern})", {"x": subject})


@settings(max_examples=300, deadline=None)
@given(text=st.sampled_from([t for t in EXAMPLES if t.strip() != "all"]), message=messages)
def test_examples_agree_on_generated_messages(text: str, message: dict[str, Any]) -> None:
    """On arbitrary messages, each example's compiled form agrees with the reference."""
    assert_agree(text, message)


@settings(max_examples=500, deadline=None)
@given(text=fql_text, message=messages)
def test_generated_expressions_agree(text: str, message: dict[str, Any]) -> None:
    """On generated expressions and messages, compiled and reference evaluators agree."""
    try:
        parse_tree(text)
    except FqlSyntaxError:
        return
    assert_agree(text, message)


@settings(deadline=None)  # compiling per example is slow on a busy machine; never judge time
@given(message=messages)
def test_a_message_that_is_not_a_dict_is_judged_by_the_reference(message: dict[str, Any]) -> None:
    """A read-only mapping as the message gets the reference evaluator's answer."""
    text = "properties.plan = 'free' or length(properties.tags) > 1"
    reference, compiled = both(text)
    proxy = MappingProxyType(message)
    assert outcome(compiled, proxy) == outcome(reference, proxy)


def test_deepest_expression_still_evaluates() -> None:
    """An expression at the parser's nesting limit compiles or falls back, and agrees."""
    text = "lowercase(" * 63 + "properties.plan" + ")" * 63
    tree = parse_tree(text)
    reference = evaluator(tree, text)
    compiled = compile_tree(tree, text, reference) or reference

    assert outcome(compiled, MESSAGE) == outcome(reference, MESSAGE)


def test_no_expression_text_reaches_the_generated_source() -> None:
    """A string literal that is Python code stays a value: it is bound by name, never pasted."""
    text = "event = '\\' or __import__(\"os\")' or properties.plan = 'x\\nraise'"
    assert_agree(text, {"event": '\' or __import__("os")', "properties": {"plan": "x\nraise"}})
