"""What FQL must do on any text and any message, for the FQL fuzz test and ``fuzz/fql.py``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gateway.errors import FqlEvaluationError, FqlSyntaxError
from gateway.pipeline.fql import Expression, parse

__all__ = ["check_evaluation", "check_parse", "depth", "known_finding"]

_JSON_TYPES = (type(None), bool, int, float, str, list, dict)
# A glob with a star between two other parts: as a backtracking regex its time is a power of
# the subject's length (finding 8 in docs/fuzzing.md).
_INNER_STARS = re.compile(r"match\s*\(.*'[^']*[^*'][*][^*'][^']*[*]", re.DOTALL)


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


def known_finding(text: str, message: Mapping[str, Any] | None = None) -> bool:
    """Whether ``text`` (on ``message``) would hit an open finding, so a run skips it: a glob
    class holding ``--`` (a FutureWarning from re), a glob with inner stars on long strings, or
    values nested past Python's recursion limit."""
    if "match" in text and "--" in text:
        return True
    if message is None:
        return False
    if _INNER_STARS.search(text) is not None and _longest(message) > 64:
        return True
    return depth(message) > 400


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


def _longest(value: Any) -> int:
    longest, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            longest = max(longest, len(item))
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return longest
