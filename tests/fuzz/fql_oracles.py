"""What FQL must do on any text and any message, for the FQL fuzz test and ``fuzz/fql.py``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.errors import FqlEvaluationError, FqlSyntaxError
from gateway.pipeline.fql import Expression, parse

__all__ = ["check_evaluation", "check_parse", "depth"]

_JSON_TYPES = (type(None), bool, int, float, str, list, dict)


def check_parse(text: str) -> Expression | None:
    """parse() returns an Expression or raises FqlSyntaxError naming a position in ``text``."""
    try:
        expression = parse(text)
    except FqlSyntaxError as exc:
        position = exc.position
    else:
        assert expression.text == text
        return expression
    assert 0 <= position <= len(text), (position, len(text))
    return None


def check_evaluation(expression: Expression, message: Mapping[str, Any]) -> None:
    """value() is a JSON value or FqlEvaluationError; matches() a bool or the same error."""
    try:
        value = expression.value(message)
    except FqlEvaluationError:
        return
    assert isinstance(value, _JSON_TYPES), type(value)
    assert isinstance(expression.matches(message), bool)


def depth(value: Any) -> int:
    """How deeply ``value`` nests arrays and objects (without recursion)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest
