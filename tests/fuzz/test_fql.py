"""Fuzzing FQL beyond tests/pipeline/test_fql.py's property tests: nesting far past the parser's
limit, long chains, arbitrary globs, and evaluation on deep, long and odd JSON messages."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import FqlSyntaxError
from gateway.pipeline.fql import parse
from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.fql_oracles import check_evaluation, check_parse
from tests.fuzz.strategies import json_values
from tests.pipeline.test_fql import FRAGMENTS

OPENERS = ["(", "!", "!(", "lowercase(", "contains(", "length(", "exists(", "match(", "[", "-"]
PATHS = ["event", "properties.plan", "properties.tags", "context.library.name", "x", "\\ y"]


@st.composite
def nested_text(draw: Any) -> str:
    """An expression nested 1 to 10,000 levels deep by one kind of opener, closed or not."""
    opener = draw(st.sampled_from(OPENERS))
    depth = draw(st.integers(1, 10_000))
    closer = ")" * opener.count("(") + "]" * opener.count("[")
    inner = draw(st.sampled_from([*PATHS, "'a'", "1"]))
    tail = closer * depth if draw(st.booleans()) else closer * draw(st.integers(0, depth))
    return opener * depth + inner + tail


chains = st.builds(
    lambda parts, keyword: f" {keyword} ".join(parts),
    st.lists(st.sampled_from([*PATHS, "x = 1", "!x", "exists(x)"]), min_size=1, max_size=3000),
    st.sampled_from(["and", "or", "in", "="]),
)
glob_text = st.text(st.sampled_from("*?[]!^-az.\\'\" "), max_size=12).map(
    lambda g: "match(x, '" + g.replace("\\", "\\\\").replace("'", "\\'") + "')"
)
fql_text = (
    st.text()
    | st.lists(st.sampled_from(FRAGMENTS), max_size=40).map(" ".join)
    | nested_text()
    | chains
    | glob_text
)


def _nested(depth: int) -> Any:
    """Arrays and objects alternating ``depth`` levels deep around "free"."""
    value: Any = "free"
    for level in range(depth):
        value = [value] if level % 2 else {"plan": value}
    return value


messages = st.dictionaries(
    st.sampled_from(["type", "event", "properties", "context", "x"]), json_values, max_size=5
) | st.builds(
    lambda deep, text: {"properties": {"plan": deep, "tags": [text]}, "x": text, "event": text},
    st.integers(1, 1000).map(_nested),
    st.text(max_size=2000) | st.sampled_from(["a" * 30_000, "é" * 10_000, "A_b" * 5000, ""]),
)


@fuzz_settings(ci_examples=400)
@given(text=fql_text)
def test_any_text_parses_or_is_a_syntax_error(text: str) -> None:
    """parse() on any text, however deep or long, returns an Expression or raises FqlSyntaxError
    at a position inside the text, never RecursionError."""
    check_parse(text)


@fuzz_settings(ci_examples=300)
@given(text=fql_text, message=messages)
def test_any_expression_evaluates_or_is_an_evaluation_error(
    text: str, message: dict[str, Any]
) -> None:
    """An expression's value on any message (nested up to 1,000 deep, as deep as orjson reads,
    strings up to 30,000 characters) is a JSON value or FqlEvaluationError."""
    expression = check_parse(text)
    if expression is None:
        return
    check_evaluation(expression, message)


@pytest.mark.parametrize("opener", ["(", "!", "!(", "lowercase(", "contains(", "exists("])
def test_ten_thousand_deep_nesting_is_a_syntax_error(opener: str) -> None:
    """An expression nested 10,000 deep is refused as "nested too deeply" at level 64 (the
    parser stops there: its work is one pass over the tokens), never a RecursionError."""
    closer = ")" * opener.count("(")
    text = opener * 10_000 + "x" + closer * 10_000
    with pytest.raises(FqlSyntaxError, match="nested too deeply"):
        parse(text)
