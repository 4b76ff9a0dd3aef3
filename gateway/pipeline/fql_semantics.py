"""What FQL's values mean, and the reference evaluator (see :mod:`gateway.pipeline.fql`).

:func:`evaluator` turns a syntax tree into a tree of closures: the plain reading of the language,
kept as the reference that :mod:`gateway.pipeline.fql_codegen`'s compiled form is tested
against, and used wherever that form cannot be built. The helpers here (``kind``, ``same``, the
functions) are shared by both, so the two cannot disagree on what a value means.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from types import UnionType
from typing import Any

from gateway.errors import FqlEvaluationError
from gateway.pipeline.fql_syntax import (
    Call,
    Compare,
    Glob,
    InList,
    InValues,
    Literal,
    Logic,
    Node,
    Not,
    Path,
)

__all__ = [
    "COMPARISONS",
    "IMPLEMENTATIONS",
    "Evaluator",
    "at_call_site",
    "evaluator",
    "in_choices",
    "in_values",
    "kind",
    "lookup",
    "same",
]

Evaluator = Callable[[Mapping[str, Any]], Any]

# bool before number: in Python, True is an int.
_KINDS: tuple[tuple[str, type | UnionType], ...] = (
    ("null", type(None)),
    ("boolean", bool),
    ("number", int | float),
    ("string", str),
    ("object", Mapping),
    ("array", list | tuple),
)
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z])(?=[A-Z])")
_SEPARATORS = re.compile(r"[\s._-]+")


class _WrongTypeError(Exception):
    """A function got a value it cannot work on; its call site raises FqlEvaluationError."""


def evaluator(node: Node, text: str) -> Evaluator:
    """The reference evaluator of ``node``, a tree parsed from ``text`` (named in errors)."""
    if isinstance(node, Literal):
        value = node.value
        return lambda _message: value
    if isinstance(node, Path):
        segments = node.segments
        return lambda message: lookup(message, segments)
    if isinstance(node, Not):
        operand = evaluator(node.operand, text)
        return lambda message: operand(message) is not True
    if isinstance(node, Logic):
        operands = [evaluator(o, text) for o in node.operands]
        combine = any if node.keyword == "or" else all
        return lambda message: combine(operand(message) is True for operand in operands)
    if isinstance(node, Compare):
        test = COMPARISONS[node.op]
        left, right = evaluator(node.left, text), evaluator(node.right, text)
        return lambda message: test(left(message), right(message))
    if isinstance(node, InList):
        left, choices = evaluator(node.left, text), node.choices
        return lambda message: any(same(left(message), c) for c in choices)
    if isinstance(node, InValues):
        left, container = evaluator(node.left, text), evaluator(node.container, text)

        def member_of(message: Mapping[str, Any]) -> bool:
            values = container(message)
            return isinstance(values, list | tuple) and any(same(left(message), v) for v in values)

        return member_of
    return _call(node, text)


def _call(node: Call, text: str) -> Evaluator:
    implementation = at_call_site(node, text)
    arguments = [evaluator(argument, text) for argument in node.arguments]
    return lambda message: implementation(*[argument(message) for argument in arguments])


def at_call_site(node: Call, text: str) -> Callable[..., Any]:
    """``node``'s function, raising FqlEvaluationError that names the call and ``text``."""
    implementation = IMPLEMENTATIONS[node.name]

    def call(*arguments: Any) -> Any:
        try:
            return implementation(*arguments)
        except _WrongTypeError as exc:
            where = f"{node.name}() at position {node.position}"
            raise FqlEvaluationError(f"{where} {exc} (in: {text})") from exc

    return call


def lookup(message: Mapping[str, Any], segments: tuple[str, ...]) -> Any:
    """The value at a field path: None where a key is missing or the way is not an object."""
    value: Any = message
    for key in segments:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def kind(value: Any) -> str:
    """Name ``value``'s JSON type the way ``typeof`` does; FqlEvaluationError if it has none."""
    for name, types in _KINDS:
        if isinstance(value, types):
            return name
    raise FqlEvaluationError(f"cannot evaluate a {type(value).__name__}: not a JSON value")


def same(left: Any, right: Any) -> bool:
    """Strict equality: JSON types must agree, so ``1 != '1'`` and, unlike Python, ``true != 1``.

    Iterative, so values nested deeper than Python's recursion limit compare too.
    """
    pending = [(left, right)]
    while pending:
        a, b = pending.pop()
        a_kind = kind(a)
        if a_kind != kind(b):
            return False
        if a_kind == "array":
            if len(a) != len(b):
                return False
            pending.extend(zip(a, b, strict=True))
        elif a_kind == "object":
            if a.keys() != b.keys():
                return False
            pending.extend((a[k], b[k]) for k in a)
        elif a != b:
            return False
    return True


def in_choices(value: Any, choices: tuple[Any, ...]) -> bool:
    """``value in [choices]``, strictly; ``value`` is only judged if there are choices."""
    return any(same(value, c) for c in choices)


def in_values(value: Any, values: Any) -> bool:
    """``value in values``: false unless ``values`` is an array holding it, strictly."""
    return isinstance(values, list | tuple) and any(same(value, v) for v in values)


def _numeric(test: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    return lambda left, right: kind(left) == kind(right) == "number" and test(left, right)


COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "=": same,
    "!=": lambda left, right: not same(left, right),
    "<": _numeric(operator.lt),
    "<=": _numeric(operator.le),
    ">": _numeric(operator.gt),
    ">=": _numeric(operator.ge),
}
"""Each comparison operator's meaning, on two evaluated operands."""


def _string_or_null(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _WrongTypeError(f"expects a string or null, got {kind(value)}")
    return value


def _contains(haystack: Any, needle: Any) -> bool:
    haystack, needle = _string_or_null(haystack), _string_or_null(needle)
    return haystack is not None and needle is not None and needle in haystack


def _length(value: Any) -> int:
    if kind(value) in ("number", "boolean"):
        raise _WrongTypeError(f"expects a string, array, object or null, got {kind(value)}")
    return 0 if value is None else len(value)


def _transform(value: Any, transform: Callable[[str], str]) -> str | None:
    text = _string_or_null(value)
    return None if text is None else transform(text)


def _snakecase(text: str) -> str:
    """Split lower-to-upper camelCase boundaries, join runs of ``space . - _`` with ``_``, lower.

    So ``sampleText`` -> ``sample_text``, ``CStringRef`` -> ``cstring_ref``, ``2FA Enabled`` ->
    ``2fa_enabled``; capital runs stay one word, and leading or trailing separators stay ``_``.
    """
    return _SEPARATORS.sub("_", _CAMEL_BOUNDARY.sub("_", text)).lower()


def _match(value: Any, pattern: Glob) -> bool:
    text = _string_or_null(value)
    return text is not None and pattern.fullmatch(text) is not None


IMPLEMENTATIONS: dict[str, Callable[..., Any]] = {
    "contains": _contains,
    "length": _length,
    "lowercase": lambda value: _transform(value, str.lower),
    "uppercase": lambda value: _transform(value, str.upper),
    "snakecase": lambda value: _transform(value, _snakecase),
    "typeof": kind,
    "match": _match,
    "exists": lambda value: value is not None,
}
"""Each function, on evaluated arguments; a wrong type raises an error its call site words."""
